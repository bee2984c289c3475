/*
 * The idempotency lock protocol: N concurrent requests for one key through Redis.
 *
 * mirrors: proxy/idempotency/acquire.lua proxy/idempotency/renew.lua proxy/idempotency/complete.lua proxy/idempotency/release.lua proxy/idempotency/lease.py
 * mirrors-sha256: 518de7d78c14e7464cafe138d1bc9cc442ee11f72b00988dddb60ea253382744
 * counterexample: -DBUGGY_RENEWAL
 *
 * What is modelled, in units of lease/6 (a lease is LEASE units, renewals are due every
 * INTERVAL = lease/3):
 *   acquire  (acquire.lua)   empty key -> our lock, expiry = store clock + LEASE; another owner's
 *                            lapsed lock -> 'hold': the key becomes ABANDONED (the unknown-outcome
 *                            answer is stored over it), 'release': the lock is taken over;
 *   renew    (renew.lua, lease.py)  owner-checked, new expiry from the store clock; a failure
 *                            (store down) is retried RETRY units later (lease.py's RETRY_INTERVAL);
 *   complete (complete.lua)  stored over our own lock or an empty key, refused otherwise;
 *   release  (release.lua)   an answer saying "not processed" (503...) drops our own lock;
 *   a holder crash (it stops renewing, its lock stays as the may-have-been-sent marker), and one
 *   store outage of at most OUTAGE units (shorter than half the lease, like 1.6 s of a 3 s lease),
 *   during which every store call fails. The policy (hold or release) is chosen at start.
 * Not modelled: Redis losing its data (an empty key lets a retry execute again; documented).
 *
 * Invariants (assertions):
 *   1. the app executes the key at most once, plus once per lapsed lease taken over under
 *      'release' (the configured policy releasing it);
 *   2. no answer is stored by a holder whose lease was lapsed and taken over or abandoned;
 *   3. a lease lapses only when its holder stopped renewing (crashed or gave up): an outage
 *      shorter than the lease never costs a live holder its lock.
 * -DBUGGY_RENEWAL: the renewal timing before the fix, a failed renewal retried only at the next
 * lease/3 tick; two failed ticks reach the expiry and invariant 3 (and with 'release' 1) breaks.
 */

#define N 3
#define LEASE 6
#define INTERVAL 2
#ifdef BUGGY_RENEWAL
#define RETRY INTERVAL
#else
#define RETRY 1
#endif
#define OUTAGE 3
#define MAXT 12
#define NOBODY 255

mtype = { EMPTY, LOCK, ABANDONED, RECORD };

mtype key = EMPTY;
byte owner = NOBODY;
byte expiry = 0;          /* the lock's lease expiry, store clock */
byte clock = 0;
bool down = false;
bool outage_used = false;
byte outage_end = 0;
bool release_policy;
byte executions = 0;
byte takeovers = 0;
bool renewing[N];           /* holds the lock and still renews it */
byte next_try[N];
bool lapsed_of[N];        /* another request found this holder's lease lapsed */

#define DUE(i) (renewing[i] && next_try[i] <= clock)

active proctype Clock() {
  do
  :: atomic {
       clock < MAXT && !DUE(0) && !DUE(1) && !DUE(2) ->
       clock++;
       if
       :: down && clock >= outage_end -> down = false
       :: else -> skip
       fi;
       if
       :: !outage_used && clock < MAXT - OUTAGE ->
          outage_used = true; down = true;
          if
          :: outage_end = clock + 1
          :: outage_end = clock + 2
          :: outage_end = clock + OUTAGE
          fi
       :: true -> skip
       fi
     }
  :: clock >= MAXT -> break
  od
}

proctype Req(byte i) {
  bool held = false;
  atomic {
    if
    :: down -> skip                       /* on_store_error: 503, nothing sent */
    :: !down && key == EMPTY ->
       key = LOCK; owner = i; expiry = clock + LEASE; held = true
    :: !down && key == LOCK && owner != i && expiry <= clock ->
       assert(!renewing[owner]);            /* invariant 3 */
       lapsed_of[owner] = true;
       if
       :: release_policy -> owner = i; expiry = clock + LEASE; held = true; takeovers++
       :: !release_policy -> key = ABANDONED /* 504 outcome unknown, stored */
       fi
    :: !down && !(key == EMPTY || (key == LOCK && owner != i && expiry <= clock)) ->
       skip                               /* 409, replay, or the stored 504 */
    fi;
    if
    :: held -> renewing[i] = true; next_try[i] = clock + INTERVAL; executions++
    :: else -> skip
    fi
  }
  if
  :: !held -> goto done
  :: else -> skip
  fi;
  assert(executions <= 1 + takeovers);   /* invariant 1 */
  do
  :: atomic {                             /* the lease renewer (lease.py) */
       DUE(i) ->
       if
       :: down -> next_try[i] = clock + RETRY
       :: !down && key == LOCK && owner == i -> expiry = clock + LEASE; next_try[i] = clock + INTERVAL
       :: !down && !(key == LOCK && owner == i) -> renewing[i] = false  /* lost: stop */
       fi
     }
  :: atomic {                             /* the app answered: store it (complete.lua) */
       renewing[i] || lapsed_of[i] ->
       if
       :: down -> skip                    /* not stored; the lock lapses later */
       :: !down && ((key == LOCK && owner == i) || key == EMPTY) ->
          assert(!lapsed_of[i]);          /* invariant 2 */
          key = RECORD; owner = NOBODY
       :: !down && !((key == LOCK && owner == i) || key == EMPTY) -> skip  /* refused */
       fi;
       renewing[i] = false
     }; break
  :: atomic {                             /* "not processed" (503...): release.lua */
       renewing[i] && !down && key == LOCK && owner == i ->
       key = EMPTY; owner = NOBODY; executions--; renewing[i] = false
     }; break
  :: renewing[i] -> renewing[i] = false; break  /* the sidecar is killed */
  :: !renewing[i] -> break
  od;
done:
  skip
}

init {
  if
  :: release_policy = true
  :: release_policy = false
  fi;
  atomic {
    run Req(0); run Req(1); run Req(2)
  }
}
