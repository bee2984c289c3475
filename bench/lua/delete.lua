-- DELETE answered 204 No Content: the sidecar never reuses an upstream connection after it.
local report = dofile("bench/lua/report.lua")
done = report.done
wrk.method = "DELETE"
wrk.path = "/orders/1"
