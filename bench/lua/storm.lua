-- 409 storm: every request repeats the key of a request still in flight (held by bench/run.py).
local report = dofile("bench/lua/report.lua")
done = report.done
local req
function init(args)
  req = wrk.format("POST", "/slow?ms=600000",
    {["Content-Type"] = "application/json", ["Idempotency-Key"] = "storm-" .. (args[1] or "run")},
    report.body)
end
function request()
  return req
end
