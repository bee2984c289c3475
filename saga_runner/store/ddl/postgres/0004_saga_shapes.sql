-- Saga shapes (docs/SAGAS.md, Parallel groups and TCC): each step's stage (the position of its
-- item in the saga's steps; the members of a parallel group share it) and a TCC step's phase
-- (try, confirm or cancel); attempts of TCC calls are kinds of their own.
ALTER TABLE saga_steps ADD COLUMN stage INTEGER NOT NULL DEFAULT 0;
UPDATE saga_steps SET stage = step_order;
ALTER TABLE saga_steps ADD COLUMN phase TEXT CHECK (phase IN ('try', 'confirm', 'cancel'));
ALTER TABLE saga_step_attempts DROP CONSTRAINT saga_step_attempts_kind_check;
ALTER TABLE saga_step_attempts ADD CONSTRAINT saga_step_attempts_kind_check
    CHECK (kind IN ('action', 'compensation', 'try', 'confirm', 'cancel'));
