-- The scope of the request that started a saga (docs/SAGAS.md, Async sagas: the status URL): a
-- keyed hash of its idempotency.scope_headers values, never the values. Only a request with the
-- same values reads the saga's status URL; NULL (no scope headers configured): any request may.
ALTER TABLE saga_instances ADD COLUMN client_scope TEXT;
