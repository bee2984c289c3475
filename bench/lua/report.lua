-- Shared by every scenario: done() prints one line that bench/run.py parses.
local M = {}

function M.done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end

-- Every wrk thread gets a number, so keys made from (run, thread, counter) never repeat.
local threads = 0
function M.setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

M.body = '{"customer":"cus_0001","amount":4200,"currency":"eur","description":"' ..
  string.rep("x", 120) .. '"}'

return M
