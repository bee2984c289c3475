-- The 2-step payment saga (sync): a new order number and key every request. A script that sets
-- SAGA_PATH first and then runs this one sends the same requests to another saga's trigger.
local report = dofile("bench/lua/report.lua")
done = report.done
setup = report.setup
local path = SAGA_PATH or "/api/v1/payments"
local prefix, n = "o", 0
function init(args)
  prefix = (args[1] or "run") .. "-" .. tostring(tid) .. "-"
end
function request()
  n = n + 1
  local key = prefix .. n
  return wrk.format("POST", path,
    {["Content-Type"] = "application/json", ["Idempotency-Key"] = key},
    '{"order_no":"' .. key .. '","amount":42.5}')
end
