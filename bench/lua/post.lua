-- Pass-through POST (no Idempotency-Key): a 200-byte body up, a 200-byte answer back.
local report = dofile("bench/lua/report.lua")
done = report.done
wrk.method = "POST"
wrk.path = "/echo"
wrk.body = report.body
wrk.headers["Content-Type"] = "application/json"
