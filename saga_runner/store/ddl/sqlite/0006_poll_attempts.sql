-- Polls (docs/SAGAS.md, Polling instead): each poll of a step that awaits its outcome by polling
-- is an attempt row of its own kind, so the attempts table is rebuilt with the wider CHECK
-- (SQLite cannot alter a constraint; no table refers to the attempts).
CREATE TABLE saga_step_attempts_new (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    saga_id      TEXT NOT NULL,
    step_order   INTEGER NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('action', 'compensation', 'try', 'confirm',
                     'cancel', 'poll')),
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
