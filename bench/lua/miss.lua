-- Idempotent POST with a new key every request (lock, forward, store the answer).
local report = dofile("bench/lua/report.lua")
done = report.done
setup = report.setup
local prefix, n = "k", 0
function init(args)
  prefix = (args[1] or "run") .. "-" .. tostring(tid) .. "-"
end
function request()
  n = n + 1
  return wrk.format("POST", "/echo",
    {["Content-Type"] = "application/json", ["Idempotency-Key"] = prefix .. n}, report.body)
end
