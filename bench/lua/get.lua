-- Pass-through GET of a 200-byte JSON response.
local report = dofile("bench/lua/report.lua")
done = report.done
wrk.method = "GET"
wrk.path = "/item"
