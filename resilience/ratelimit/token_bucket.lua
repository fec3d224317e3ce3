-- Token buckets as GCRA (one stored number per bucket: its theoretical arrival time, TAT),
-- several buckets per call, all-or-nothing. See adr/0004-rate-limit-storage-and-algorithm.md.
--
-- KEYS[i]      one bucket per policy that applies to the request
-- ARGV[1]      "now" in microseconds, or "" to use Redis' own clock (production; tests
--              inject a clock so they never sleep)
-- ARGV[1 + i]  bucket i as "capacity interval cost enforce": capacity in tokens, emission
--              interval in microseconds per token, cost in tokens, enforce 1 (0: dry run)
--
-- Returns one string of integers, "allowed" then per bucket "ok remaining retry_us
-- next_us reset_us": one bulk reply is much cheaper for the client to parse than an
-- array (about 20 us of Python per call, measured with redis-py 8).
--   allowed   1 when every enforced bucket had room; only then is anything consumed
--   ok        1 when this bucket alone had room
--   remaining whole tokens left after this request
--   retry_us  microseconds until this bucket has room for the request (0 when ok)
--   next_us   microseconds until one more token is added (RateLimit's "t")
--   reset_us  microseconds until the bucket is full again

local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end

local count = #KEYS
local tats, new_tats, oks = {}, {}, {}
local allowed = 1

local capacities, intervals = {}, {}
for i = 1, count do
  local capacity, interval, cost, enforce = string.match(ARGV[i + 1], '^(%S+) (%S+) (%S+) (%S+)$')
  capacity, interval, cost = tonumber(capacity), tonumber(interval), tonumber(cost)
  capacities[i], intervals[i] = capacity, interval
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then
    tat = now -- a bucket never holds more than its capacity
  end
  local new_tat = tat + cost * interval
  local ok = (new_tat - now) <= capacity * interval
  tats[i], new_tats[i], oks[i] = tat, new_tat, ok
  if enforce == '1' and not ok then
    allowed = 0
  end
end

local result = { tostring(allowed) }
for i = 1, count do
  local capacity, interval = capacities[i], intervals[i]
  local stored = tats[i]
  if allowed == 1 and oks[i] then
    stored = new_tats[i]
    -- %.17g round-trips a double exactly; the key lives until the bucket is full again.
    local ttl_ms = math.ceil((stored - now) / 1000) + 1
    redis.call('SET', KEYS[i], string.format('%.17g', stored), 'PX', ttl_ms)
  end
  local tokens = capacity - (stored - now) / interval
  local remaining = math.floor(tokens + 1e-9)
  if remaining < 0 then
    remaining = 0
  end
  local retry_us = 0
  if not oks[i] then
    retry_us = math.ceil(new_tats[i] - now - capacity * interval)
  end
  local next_us = math.floor(((remaining + 1) - tokens) * interval)
  local reset_us = math.ceil(stored - now)
  result[#result + 1] = string.format(
    '%d %.0f %.0f %.0f %.0f', oks[i] and 1 or 0, remaining, retry_us, next_us, reset_us
  )
end
return table.concat(result, ' ')
