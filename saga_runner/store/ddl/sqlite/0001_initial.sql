-- Saga records (docs/SAGAS.md, Records) for SQLite. Runs inside one BEGIN IMMEDIATE transaction.
-- Timestamps are ISO-8601 UTC text with microseconds (fixed width, so they sort and compare as
-- text); JSON columns hold JSON text.

CREATE TABLE saga_definitions (
    hash        TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE saga_instances (
    id                TEXT PRIMARY KEY,
    business_id       TEXT,
    business_type     TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN
                          ('running', 'compensating', 'completed', 'compensated', 'failed')),
    current_step      INTEGER,
    input             TEXT,
    definition_hash   TEXT NOT NULL REFERENCES saga_definitions (hash),
    idempotency_key   TEXT,
    mode              TEXT NOT NULL,
    failure_reason    TEXT,
    failed_step       INTEGER,
    response          TEXT,
    owner             TEXT,
    lease_expires_at  TEXT,
    lease_version     INTEGER NOT NULL DEFAULT 0,
    next_run_at       TEXT,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    completed_at      TEXT,
    compensated_at    TEXT,
    CONSTRAINT saga_instances_idempotency_key UNIQUE (business_type, idempotency_key)
);

CREATE INDEX saga_instances_created ON saga_instances (created_at, id);
CREATE INDEX saga_instances_status ON saga_instances (status, created_at, id);
CREATE INDEX saga_instances_business_id ON saga_instances (business_id);
CREATE INDEX saga_instances_type ON saga_instances (business_type, created_at, id);
CREATE INDEX saga_instances_next_run ON saga_instances (status, next_run_at);
CREATE INDEX saga_instances_lease ON saga_instances (status, lease_expires_at);
CREATE INDEX saga_instances_finished ON saga_instances (COALESCE(completed_at, compensated_at))
    WHERE status IN ('completed', 'compensated');

CREATE TABLE saga_steps (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    saga_id          TEXT NOT NULL REFERENCES saga_instances (id) ON DELETE CASCADE,
    step_order       INTEGER NOT NULL,
    step_name        TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'failed',
                         'compensating', 'compensated', 'compensation_failed')),
    execute_data     TEXT,
    compensate_data  TEXT,
    result           TEXT,
    retry_count      INTEGER NOT NULL DEFAULT 0,
    max_retry_count  INTEGER NOT NULL DEFAULT 0,
    next_retry_at    TEXT,
    error            TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    CONSTRAINT saga_steps_order UNIQUE (saga_id, step_order)
);

CREATE INDEX saga_steps_next_retry ON saga_steps (next_retry_at) WHERE next_retry_at IS NOT NULL;

CREATE TABLE saga_step_attempts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    saga_id      TEXT NOT NULL,
    step_order   INTEGER NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('action', 'compensation')),
    attempt      INTEGER NOT NULL,
    started_at   TEXT NOT NULL,
    duration_ms  REAL NOT NULL,
    status_code  INTEGER,
    error        TEXT,
    FOREIGN KEY (saga_id, step_order)
        REFERENCES saga_steps (saga_id, step_order) ON DELETE CASCADE
);

CREATE INDEX saga_step_attempts_step ON saga_step_attempts (saga_id, step_order);

CREATE TABLE saga_events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    saga_id  TEXT NOT NULL REFERENCES saga_instances (id) ON DELETE CASCADE,
    at       TEXT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    detail   TEXT NOT NULL
);

CREATE INDEX saga_events_saga ON saga_events (saga_id, at);
