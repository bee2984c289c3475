-- Polls (docs/SAGAS.md, Polling instead): each poll of a step that awaits its outcome by polling
-- is an attempt row of its own kind.
ALTER TABLE saga_step_attempts DROP CONSTRAINT saga_step_attempts_kind_check;
ALTER TABLE saga_step_attempts ADD CONSTRAINT saga_step_attempts_kind_check
    CHECK (kind IN ('action', 'compensation', 'try', 'confirm', 'cancel', 'poll'));
