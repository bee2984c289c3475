-- Idempotent POST repeating one key: after the first answer, every request is a replay.
local report = dofile("bench/lua/report.lua")
done = report.done
local req
function init(args)
  req = wrk.format("POST", "/echo",
    {["Content-Type"] = "application/json", ["Idempotency-Key"] = "replay-" .. (args[1] or "run")},
    report.body)
end
function request()
  return req
end
