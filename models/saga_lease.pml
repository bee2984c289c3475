/*
 * Saga leases: claim, renew, fenced write, expiry, crash and recovery, with two replicas whose
 * wall clocks disagree by SKEW ticks. Checked by `make verify` (scripts/verify-models.sh).
 *
 * mirrors: saga_runner/store/postgres.py saga_runner/store/pg_batches.py saga_runner/store/pg_awaits.py saga_runner/store/sqlite.py saga_runner/store/sqlite_rows.py saga_runner/store/sqlite_awaits.py saga_runner/leases.py
 * mirrors-sha256: e2479d56fd080af65113f2465a978ca8a36ea0ed56f2525cdb4d7a2a07eb059b
 * counterexample: -DWALL_CLOCK_LEASES
 *
 * What the code does, and what each part of the model stands for:
 *  - claim (SagaStore.claim_due / claim, the recovery loop and triggers): one statement sets
 *    owner, lease_version + 1 and lease_expires_at = <clock> + lease, only where the lease is
 *    free or lease_expires_at <= <clock>. The fix: <clock> is the DATABASE's clock, read in the
 *    statement that writes it. WALL_CLOCK_LEASES: <clock> is the replica's own wall clock, sent
 *    as a parameter (the code before the fix).
 *  - renew (LeaseRenewer, SagaStore.renew_many): the same arithmetic, fenced on owner and
 *    version only (an expired lease nobody claimed yet may still be renewed); a refused
 *    renewal means the lease is lost and the run is cancelled at once.
 *  - self-fencing (LeaseHold): a run whose lease was not renewed in time stops calling before
 *    the lease can expire: the replica measures elapsed time on its monotonic clock (skew in the
 *    wall clock does not change a duration), from the moment it SENT the claim or renewal, which
 *    is no later than the moment the database wrote the expiry.
 *  - fenced write (every WriteBatch): commits only where lease_version is the writer's.
 *  - crash: the replica stops; its lease stays until it expires, then recovery claims it.
 *  - an awaited outcome (pg_awaits / sqlite_awaits): a callback or a wait's end only makes the
 *    saga due (next_run_at); it never writes owner, lease_version or lease_expires_at, so the
 *    replica that continues the saga goes through the same claim as recovery does.
 *  - when to look (SagaStore.next_run, the recovery loop's sleep): a read of next_run_at of
 *    the sagas nobody holds; it only decides when the next claim is tried, never what it
 *    takes, so it is not modelled (the claim's condition is the model's).
 * Time is the database's clock `now`, advanced by the clock process. The clock does not pass a
 * calling replica's self-fencing deadline: timers fire on time (a process frozen longer than a
 * lease is outside the model; its calls are still fenced at its next write).
 *
 * Invariants (assertions): no two replicas have a step call in flight for the saga at once;
 * a fenced write commits only for the current lease holder.
 */

#define N      2
#define L      4        /* lease length, in ticks */
#define MAXT   14       /* time horizon */
#define SKEW   6        /* replica 1's wall clock is ahead by this much (more than a lease) */
#define NOBODY 255

byte now = 0;           /* the database's clock */
byte owner = NOBODY;    /* saga_instances.owner */
byte version = 0;       /* saga_instances.lease_version */
byte expires = 0;       /* saga_instances.lease_expires_at */

bool held[N];           /* the replica believes it holds the lease */
bool calling[N];        /* a step call of this saga is in flight from the replica */
byte myver[N];          /* the lease version the replica holds */
byte deadline[N];       /* self-fencing deadline, on the database's time axis */

#define WALL(r)   (now + (r == 1 -> SKEW : 0))
#ifdef WALL_CLOCK_LEASES
#define CLOCK(r)  WALL(r)
#else
#define CLOCK(r)  now
#endif

#define FREE(r)   (owner == NOBODY || expires <= CLOCK(r))
#define OTHER(r)  (1 - r)

active proctype clock() {
  do
  :: atomic {
       now < MAXT &&
       !(calling[0] && now + 1 >= deadline[0]) &&
       !(calling[1] && now + 1 >= deadline[1]) ->
       now++
     }
  :: now >= MAXT -> break
  od
}

proctype replica(byte r) {
  do
  :: atomic {                                   /* claim: recovery loop or operator */
       !held[r] && FREE(r) && now < MAXT ->
       owner = r; version++; myver[r] = version;
       expires = CLOCK(r) + L; deadline[r] = now + L - 1; held[r] = true
     }
  :: atomic {                                   /* start a step call */
       held[r] && !calling[r] && now + 1 < deadline[r] ->
       calling[r] = true;
       assert(!calling[OTHER(r)])
     }
  :: atomic { calling[r] -> calling[r] = false }          /* the call ends */
  :: atomic {                                   /* self-fencing: the lease was not renewed */
       calling[r] && now + 1 >= deadline[r] -> calling[r] = false
     }
  :: atomic {                                   /* renew, fenced on owner and version */
       held[r] ->
       if
       :: owner == r && version == myver[r] ->
            expires = CLOCK(r) + L; deadline[r] = now + L - 1
       :: else -> held[r] = false; calling[r] = false       /* lost: the run is cancelled */
       fi
     }
  :: atomic {                                   /* a fenced write (step outcome, release) */
       held[r] && !calling[r] ->
       if
       :: version == myver[r] -> assert(owner == r)
       :: else -> held[r] = false                            /* refused: fenced off */
       fi
     }
  :: atomic { held[r] -> held[r] = false; calling[r] = false }   /* crash; lease left behind */
  :: now >= MAXT -> break
  od
}

init {
  atomic {
    run replica(0);
    run replica(1)
  }
}
