-- The 3-member parallel checkout saga (sync): saga.lua's requests, sent to its trigger.
SAGA_PATH = "/api/v1/checkouts"
dofile("bench/lua/saga.lua")
