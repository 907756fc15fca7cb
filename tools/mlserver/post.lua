-- wrk script for tools/mlserver/compare.sh: POSTs one OIP v2 JSON body, read from the file
-- named after `--`, on every request, and prints one machine-readable result line.
--
--   wrk -t2 -c8 -d10s -s post.lua http://127.0.0.1:PORT/v2/models/gbr/infer -- body.json
--
-- The body is read in init(), which wrk runs in every thread before it builds that thread's
-- request, so every connection sends the same bytes.

function init(args)
  local path = args[1]
  if not path then
    error("post.lua: give the body file after --")
  end
  local f = assert(io.open(path, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

-- No response() callback: wrk would then hand every answer to Lua, which costs the client
-- CPU that the servers share on this machine. Answers with a status of 400 or more are
-- counted by wrk itself (errors.status), and any error fails the run.

-- wrk reports latencies and the duration in microseconds.
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d seconds=%.3f rps=%.1f p50_us=%d p99_us=%d errors=%d\n",
    summary.requests,
    summary.duration / 1e6,
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50),
    latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
