-- The 2-step payment saga (sync): a new order number and key every request.
local report = dofile("bench/lua/report.lua")
done = report.done
setup = report.setup
local prefix, n = "o", 0
function init(args)
  prefix = (args[1] or "run") .. "-" .. tostring(tid) .. "-"
end
function request()
  n = n + 1
  local key = prefix .. n
  return wrk.format("POST", "/api/v1/payments",
    {["Content-Type"] = "application/json", ["Idempotency-Key"] = key},
    '{"order_no":"' .. key .. '","amount":42.5}')
end
