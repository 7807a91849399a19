-- wrk script of tests/bench.py: one file, the workload picked by environment variables.
--
--   BENCH_MODE     settings | user | put | refresh | password | signup | admin | mix
--   BENCH_DATA     a file, one item a line: access tokens (user, put, mix), refresh tokens
--                  (refresh; mix uses BENCH_DATA2), emails (password). Thread i of n takes
--                  lines i, i+n, i+2n, ...: disjoint slices, so no two threads share an item.
--   BENCH_DATA2    mix only: the refresh tokens
--   BENCH_THREADS  wrk's -t (how the lines are dealt)
--   BENCH_PASSWORD password of the seeded users (password)
--   BENCH_NONCE    makes this run's signup emails unique (signup)
--   BENCH_ADMIN    an admin bearer (admin)
--   BENCH_QUOTA    stop each thread after this many responses, and touch BENCH_FLAG<id> so that
--                  bench.py can end wrk (wrk itself always sleeps its -d): count-limited runs
--   BENCH_SKIP     count only the answers that arrive after this many seconds, within the
--                  next BENCH_WINDOW seconds (one run whose warm-up is not counted, as the
--                  bcrypt floor counts its checks; for answers that take most of a second)
--   BENCH_OUT      where done() writes the run's figures as JSON
--
-- Refresh tokens are each presented exactly once: a thread starts from its slice of the
-- pre-issued tokens and queues the refresh_token of every answer for a later request, so the
-- supply never runs out and no token is sent twice (a failed answer costs one pooled token).

local mode = os.getenv("BENCH_MODE") or "settings"
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "1")
local quota = tonumber(os.getenv("BENCH_QUOTA") or "0")
local out = os.getenv("BENCH_OUT")
local skip = tonumber(os.getenv("BENCH_SKIP") or "0")
local window = tonumber(os.getenv("BENCH_WINDOW") or "0")

local ffi = require("ffi")  -- wrk's Lua is LuaJIT: a monotonic clock shared by every thread
ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } bench_ts; int clock_gettime(int, bench_ts *); ]]
local ts = ffi.new("bench_ts")
local function now()
   ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
   return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end

-- main state: number the threads and collect them for done()
local threads = {}
local next_id = 0

local opens_at = now() + skip  -- main state: the counted window opens then, for every thread

function setup(thread)
   thread:set("id", next_id)
   thread:set("opens", opens_at)  -- the global `opens` of the thread's state
   next_id = next_id + 1
   table.insert(threads, thread)
end

-- thread states ---------------------------------------------------------------------------

local items, refresh = {}, {}
local n, queued = 0, 0
local pool, pool_next = {}, 1
local answered = 0
stats = {empty = 0, chained = 0, ok = 0, bad = 0}  -- global: done() reads it with thread:get

local function slice(path)
   local mine, i = {}, 0
   if not path then return mine end
   local f = assert(io.open(path, "r"))
   for line in f:lines() do
      if line ~= "" then
         if i % nthreads == id then table.insert(mine, line) end
         i = i + 1
      end
   end
   f:close()
   return mine
end

local form = {["Content-Type"] = "application/x-www-form-urlencoded"}
local function bearer(token, json)
   local h = {Authorization = "Bearer " .. token}
   if json then h["Content-Type"] = "application/json" end
   return h
end

-- refresh tokens: a FIFO fed by the answers, topped up from the pre-issued pool
local queue, qhead, qtail = {}, 1, 0
local function push(token)
   qtail = qtail + 1
   queue[qtail] = token
end
local function pop()
   if qhead <= qtail then
      local t = queue[qhead]
      queue[qhead] = nil
      qhead = qhead + 1
      return t
   end
   local t = pool[pool_next]
   if t then
      pool_next = pool_next + 1
      return t
   end
   stats.empty = stats.empty + 1
   return "exhausted"  -- a 400, counted as non-2xx: the pool was too small
end

local function refresh_request()
   return wrk.format("POST", "/token", form, "grant_type=refresh_token&refresh_token=" .. pop())
end

function init(args)
   if mode == "user" or mode == "put" or mode == "mix" then
      items = slice(os.getenv("BENCH_DATA"))
   elseif mode == "password" then
      items = slice(os.getenv("BENCH_DATA"))
   elseif mode == "refresh" then
      pool = slice(os.getenv("BENCH_DATA"))
   end
   if mode == "mix" then pool = slice(os.getenv("BENCH_DATA2")) end
   if mode == "user" then
      -- requests built once: the client's cost per request stays a table lookup
      for i, token in ipairs(items) do
         items[i] = wrk.format("GET", "/user", bearer(token))
      end
   elseif mode == "password" then
      local password = os.getenv("BENCH_PASSWORD")
      for i, email in ipairs(items) do
         items[i] = wrk.format("POST", "/token", form,
            "grant_type=password&username=" .. email .. "&password=" .. password)
      end
   elseif mode == "settings" then
      wrk.method, wrk.path = "GET", "/settings"
   elseif mode == "admin" then
      wrk.method, wrk.path = "GET", "/admin/users?page=1&per_page=50"
      wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_ADMIN")
   end
end

local function next_item()
   n = n + 1
   return items[(n % #items) + 1]
end

local builders = {
   user = next_item,
   password = next_item,
   put = function()
      local token = next_item()
      return wrk.format("PUT", "/user", bearer(token, true),
         string.format('{"data":{"bench_n":%d,"bench_thread":%d}}', n, id))
   end,
   refresh = refresh_request,
   signup = function()
      n = n + 1
      local email = string.format("s-%s-%d-%d@bench.example", os.getenv("BENCH_NONCE"), id, n)
      return wrk.format("POST", "/signup", {["Content-Type"] = "application/json"},
         '{"email":"' .. email .. '","password":"bench-pw","data":{"full_name":"Bench Signup"}}')
   end,
   mix = function()
      -- a quarter each: GET /settings, GET /user, PUT /user, refresh grant
      n = n + 1
      local k = n % 4
      if k == 0 then return wrk.format("GET", "/settings") end
      local token = items[(n % #items) + 1]
      if k == 1 then return wrk.format("GET", "/user", bearer(token)) end
      if k == 2 then
         return wrk.format("PUT", "/user", bearer(token, true),
            string.format('{"data":{"bench_n":%d}}', n))
      end
      return refresh_request()
   end,
}

-- no request(): wrk sends one prebuilt request (settings, admin), the cheapest client
if builders[mode] then request = builders[mode] end

local flagged = false
local function count_answer(status)
   if skip > 0 then
      local t = now()
      if t >= opens and t < opens + window then
         if status >= 200 and status < 300 then stats.ok = stats.ok + 1 else stats.bad = stats.bad + 1 end
      end
   end
   answered = answered + 1
   if quota > 0 and answered >= quota and not flagged then
      flagged = true
      local f = io.open(os.getenv("BENCH_FLAG") .. id, "w")
      if f then f:write(answered) f:close() end
      wrk.thread:stop()
   end
end

-- a response() hook costs the client a Lua call per answer: only where it is needed
if mode == "refresh" or mode == "mix" then
   response = function(status, headers, body)
      local token = body:match('"refresh_token"%s*:%s*"([^"]+)"')
      if token then
         push(token)
         stats.chained = stats.chained + 1
      end
      count_answer(status)
   end
elseif quota > 0 or skip > 0 then
   response = function(status, headers, body) count_answer(status) end
end

-- main state again: the figures, as JSON
function done(summary, latency, requests)
   local empty, chained, ok, bad = 0, 0, 0, 0
   for _, t in ipairs(threads) do
      local s = t:get("stats")
      if s then
         empty = empty + (s.empty or 0)
         chained = chained + (s.chained or 0)
         ok, bad = ok + (s.ok or 0), bad + (s.bad or 0)
      end
   end
   local e = summary.errors
   local fields = {
      string.format('"requests":%d', summary.requests),
      string.format('"duration_us":%d', summary.duration),
      string.format('"bytes":%d', summary.bytes),
      string.format('"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}',
         e.connect, e.read, e.write, e.status, e.timeout),
      string.format('"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d}',
         latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max),
      string.format('"pool_exhausted":%d', empty),
      string.format('"chained":%d', chained),
   }
   if skip > 0 then
      table.insert(fields, string.format('"window":{"ok":%d,"bad":%d,"seconds":%.3f}', ok, bad, window))
   end
   local text = "{" .. table.concat(fields, ",") .. "}\n"
   if out then
      local f = assert(io.open(out, "w"))
      f:write(text)
      f:close()
   else
      io.write(text)
   end
end
