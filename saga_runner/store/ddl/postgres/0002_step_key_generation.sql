-- The generation of a step's compensation key (docs/SAGAS.md, Idempotency keys): 1 keeps the
-- key <saga>:<step>:compensation; an operator retry after a replayed failed answer bumps it.
ALTER TABLE saga_steps ADD COLUMN key_generation INTEGER NOT NULL DEFAULT 1;
