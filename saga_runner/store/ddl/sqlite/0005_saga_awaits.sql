-- Long-running steps (docs/SAGAS.md, Steps that finish later): a step that awaits its outcome is
-- 'waiting' once its action was accepted; the await's timing and the outcome that ended it
-- (success or failure from a callback, or timeout, deadline) live on the step, and the callback
-- tokens of its calls (only their sha256, never the tokens) in a table of their own. A saga's
-- deadline is an instant fixed when it starts.
--
-- SQLite cannot alter the steps' status CHECK: the steps table is rebuilt. Its only child (the
-- attempts) is moved aside first, so dropping the old steps cascades to nothing.
CREATE TABLE saga_step_attempts_aside AS SELECT * FROM saga_step_attempts;
DROP TABLE saga_step_attempts;

CREATE TABLE saga_steps_new (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    saga_id          TEXT NOT NULL REFERENCES saga_instances (id) ON DELETE CASCADE,
    step_order       INTEGER NOT NULL,
    step_name        TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'running', 'waiting',
                         'succeeded', 'failed', 'compensating', 'compensated',
                         'compensation_failed')),
    execute_data     TEXT,
    compensate_data  TEXT,
    result           TEXT,
    retry_count      INTEGER NOT NULL DEFAULT 0,
    max_retry_count  INTEGER NOT NULL DEFAULT 0,
    next_retry_at    TEXT,
    error            TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    key_generation   INTEGER NOT NULL DEFAULT 1,
    stage            INTEGER NOT NULL DEFAULT 0,
    phase            TEXT CHECK (phase IN ('try', 'confirm', 'cancel')),
    await_kind       TEXT,
    waiting_since    TEXT,
    wait_until       TEXT,
    wait_seconds     REAL,
    await_outcome    TEXT,
    await_result     TEXT,
    CONSTRAINT saga_steps_order UNIQUE (saga_id, step_order)
);
INSERT INTO saga_steps_new
    (id, saga_id, step_order, step_name, status, execute_data, compensate_data, result,
     retry_count, max_retry_count, next_retry_at, error, created_at, updated_at, key_generation,
     stage, phase)
SELECT id, saga_id, step_order, step_name, status, execute_data, compensate_data, result,
       retry_count, max_retry_count, next_retry_at, error, created_at, updated_at, key_generation,
       stage, phase
FROM saga_steps;
DROP TABLE saga_steps;
ALTER TABLE saga_steps_new RENAME TO saga_steps;
CREATE INDEX saga_steps_next_retry ON saga_steps (next_retry_at) WHERE next_retry_at IS NOT NULL;
CREATE INDEX saga_steps_waiting ON saga_steps (saga_id) WHERE status = 'waiting';

CREATE TABLE saga_step_attempts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    saga_id      TEXT NOT NULL,
    step_order   INTEGER NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('action', 'compensation', 'try', 'confirm',
                     'cancel')),
    attempt      INTEGER NOT NULL,
    started_at   TEXT NOT NULL,
    duration_ms  REAL NOT NULL,
    status_code  INTEGER,
    error        TEXT,
    FOREIGN KEY (saga_id, step_order)
        REFERENCES saga_steps (saga_id, step_order) ON DELETE CASCADE
);
INSERT INTO saga_step_attempts
    (id, saga_id, step_order, kind, attempt, started_at, duration_ms, status_code, error)
SELECT id, saga_id, step_order, kind, attempt, started_at, duration_ms, status_code, error
FROM saga_step_attempts_aside;
DROP TABLE saga_step_attempts_aside;
CREATE INDEX saga_step_attempts_step ON saga_step_attempts (saga_id, step_order);

ALTER TABLE saga_instances ADD COLUMN deadline_at TEXT;

CREATE TABLE saga_callback_tokens (
    token_hash  TEXT PRIMARY KEY,
    saga_id     TEXT NOT NULL,
    step_order  INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    FOREIGN KEY (saga_id, step_order)
        REFERENCES saga_steps (saga_id, step_order) ON DELETE CASCADE
);
CREATE INDEX saga_callback_tokens_step ON saga_callback_tokens (saga_id, step_order);
