-- Saga shapes (docs/SAGAS.md, Parallel groups and TCC): each step's stage (the position of its
-- item in the saga's steps; the members of a parallel group share it) and a TCC step's phase
-- (try, confirm or cancel); attempts of TCC calls are kinds of their own, so the attempts table
-- is rebuilt with the wider CHECK (SQLite cannot alter a constraint).
ALTER TABLE saga_steps ADD COLUMN stage INTEGER NOT NULL DEFAULT 0;
UPDATE saga_steps SET stage = step_order;
ALTER TABLE saga_steps ADD COLUMN phase TEXT CHECK (phase IN ('try', 'confirm', 'cancel'));

CREATE TABLE saga_step_attempts_new (
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
INSERT INTO saga_step_attempts_new
    (id, saga_id, step_order, kind, attempt, started_at, duration_ms, status_code, error)
SELECT id, saga_id, step_order, kind, attempt, started_at, duration_ms, status_code, error
FROM saga_step_attempts;
DROP TABLE saga_step_attempts;
ALTER TABLE saga_step_attempts_new RENAME TO saga_step_attempts;
CREATE INDEX saga_step_attempts_step ON saga_step_attempts (saga_id, step_order);
