-- Long-running steps (docs/SAGAS.md, Steps that finish later): a step that awaits its outcome is
-- 'waiting' once its action was accepted; the await's timing and the outcome that ended it
-- (success or failure from a callback, or timeout, deadline) live on the step, and the callback
-- tokens of its calls (only their sha256, never the tokens) in a table of their own. A saga's
-- deadline is an instant fixed when it starts.
ALTER TABLE saga_steps DROP CONSTRAINT saga_steps_status_check;
ALTER TABLE saga_steps ADD CONSTRAINT saga_steps_status_check CHECK (status IN ('pending',
    'running', 'waiting', 'succeeded', 'failed', 'compensating', 'compensated',
    'compensation_failed'));
ALTER TABLE saga_steps ADD COLUMN await_kind TEXT;
ALTER TABLE saga_steps ADD COLUMN waiting_since TIMESTAMPTZ;
ALTER TABLE saga_steps ADD COLUMN wait_until TIMESTAMPTZ;
ALTER TABLE saga_steps ADD COLUMN wait_seconds DOUBLE PRECISION;
ALTER TABLE saga_steps ADD COLUMN await_outcome TEXT;
ALTER TABLE saga_steps ADD COLUMN await_result JSONB;
CREATE INDEX saga_steps_waiting ON saga_steps (saga_id) WHERE status = 'waiting';
ALTER TABLE saga_instances ADD COLUMN deadline_at TIMESTAMPTZ;

CREATE TABLE saga_callback_tokens (
    token_hash  TEXT PRIMARY KEY,
    saga_id     TEXT NOT NULL,
    step_order  INTEGER NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    FOREIGN KEY (saga_id, step_order)
        REFERENCES saga_steps (saga_id, step_order) ON DELETE CASCADE
);
CREATE INDEX saga_callback_tokens_step ON saga_callback_tokens (saga_id, step_order);
