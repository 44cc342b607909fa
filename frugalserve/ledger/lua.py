"""Lua scripts of the Redis ledger: each operation is one script, so it is atomic on the server
and timed by the server's clock (`TIME`). Loaded by `redis_backend.RedisLedger`.

Keys (prefix P): P..'tenant:'..name (hash), P..'tenants' (set), P..'req:'..id (hash),
P..'leases' (sorted set of open request ids by expiry), P..'settlements' (stream),
P..'totals' (hash of all-time sums: field 'TENANT MODEL prompt|completion|cost'; neither
names nor models contain spaces).
Numbers are passed and stored as decimal strings; `istr` avoids Lua's %.14g formatting.
Each script replies with one string of space-separated words, cheap for the client to parse."""

PRELUDE = r"""
local function istr(x) return string.format('%d', x) end

local function now_us(offset_us)
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(offset_us)
end

local function fetch(key)
  local flat = redis.call('HGETALL', key)
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  return h
end
"""

PERIOD_BOUNDS = r"""
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m
end

-- [start, end) of the UTC period holding now_s, in seconds; end is -1 for 'never'
local function period_bounds(period, now_s)
  if period == 'hourly' then return now_s - now_s % 3600, now_s - now_s % 3600 + 3600 end
  if period == 'daily' then return now_s - now_s % 86400, now_s - now_s % 86400 + 86400 end
  local day = math.floor(now_s / 86400)
  if period == 'weekly' then
    local s = (day - (day + 3) % 7) * 86400
    return s, s + 7 * 86400
  end
  if period == 'monthly' then
    local y, m = civil_from_days(day)
    local ny, nm = y, m + 1
    if nm == 13 then ny, nm = y + 1, 1 end
    return days_from_civil(y, m, 1) * 86400, days_from_civil(ny, nm, 1) * 86400
  end
  return now_s, -1
end
"""

TENANT = r"""
-- the tenant hash's fields that operations change, written back together by save()
local STATE = {'period', 'period_start_us', 'period_end_us', 'spent_micros',
  'reserved_micros', 'tokens_prompt', 'tokens_completion', 'reserved_tokens', 'in_flight',
  'window_start_us', 'window_requests', 'window_tokens'}

local function save(key, t)
  local args = {}
  for _, f in ipairs(STATE) do
    args[#args + 1] = f
    args[#args + 1] = t[f]
  end
  redis.call('HSET', key, unpack(args))
end

local function add(t, field, n) t[field] = istr(tonumber(t[field]) + n) end

local function start_period(t, period, now)
  local s, e = period_bounds(period, math.floor(now / 1000000))
  t.period, t.period_start_us, t.period_end_us = period, istr(s * 1000000), ''
  if e >= 0 then t.period_end_us = istr(e * 1000000) end
end

-- start a new period, resetting spent usage, when the current one has ended
local function roll(t, now)
  if t.period_end_us ~= '' and now >= tonumber(t.period_end_us) then
    start_period(t, t.period, now)
    t.spent_micros, t.tokens_prompt, t.tokens_completion = '0', '0', '0'
  end
end

-- drop one reservation's hold on its tenant
local function unreserve(t, r)
  add(t, 'reserved_micros', -tonumber(r.cost_max))
  add(t, 'reserved_tokens', -tonumber(r.tokens_max))
  add(t, 'in_flight', -1)
end

-- move a reservation into spent usage and append its settlement event
local function charge(prefix, req_key, id, r, cost, prompt, completion, now, clamped, expired)
  local tkey = prefix .. 'tenant:' .. r.tenant
  local t = fetch(tkey)
  roll(t, now)
  unreserve(t, r)
  add(t, 'spent_micros', cost)
  add(t, 'tokens_prompt', prompt)
  add(t, 'tokens_completion', completion)
  save(tkey, t)
  local total = r.tenant .. ' ' .. r.model .. ' '
  redis.call('HINCRBY', prefix .. 'totals', total .. 'prompt', istr(prompt))
  redis.call('HINCRBY', prefix .. 'totals', total .. 'completion', istr(completion))
  redis.call('HINCRBY', prefix .. 'totals', total .. 'cost', istr(cost))
  local state = 'settled'
  if expired == 1 then state = 'expired' end
  local fields = {'request_id', id, 'tenant', r.tenant, 'model', r.model,
    'prompt_tokens', istr(prompt), 'completion_tokens', istr(completion),
    'cost_micros', istr(cost), 'price_version', r.price_version, 'at_us', istr(now),
    'clamped', istr(clamped), 'expired', istr(expired)}
  redis.call('HSET', req_key, 'state', state, unpack(fields))
  redis.call('ZREM', prefix .. 'leases', id)
  redis.call('XADD', prefix .. 'settlements', '*', unpack(fields))
  return fields
end

local function charge_in_full(prefix, req_key, id, r, now)
  return charge(prefix, req_key, id, r, tonumber(r.cost_max), 0, tonumber(r.tokens_max),
    now, 0, 1)
end

-- a reply: its words joined by spaces (no name, label or number contains one)
local function words(...) return table.concat({...}, ' ') end
"""

# KEYS: tenant, tenants set. ARGV: offset_us, name, limit_micros, limit_tokens, period,
# requests_per_minute, tokens_per_minute ('' means unlimited)
CONFIGURE = r"""
local now = now_us(ARGV[1])
local key = KEYS[1]
local t = fetch(key)
if t.period == nil then
  t = {spent_micros = '0', reserved_micros = '0', tokens_prompt = '0', tokens_completion = '0',
    reserved_tokens = '0', in_flight = '0', window_start_us = '0', window_requests = '0',
    window_tokens = '0'}
  start_period(t, ARGV[5], now)
end
roll(t, now)
if t.period ~= ARGV[5] then start_period(t, ARGV[5], now) end
save(key, t)
redis.call('HSET', key, 'limit_micros', ARGV[3], 'limit_tokens', ARGV[4],
  'requests_per_minute', ARGV[6], 'tokens_per_minute', ARGV[7])
redis.call('SADD', KEYS[2], ARGV[2])
return 'ok'
"""

# KEYS: tenant, req, leases. ARGV: offset_us, request_id, cost_max, tokens_max, lease_us,
# model, price_version, tenant
RESERVE = r"""
local now = now_us(ARGV[1])
local key = KEYS[1]
local t = fetch(key)
if t.period == nil then return 'unknown_tenant' end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'duplicate' end
roll(t, now)
local cost, tokens = tonumber(ARGV[3]), tonumber(ARGV[4])
local used_m = tonumber(t.spent_micros) + tonumber(t.reserved_micros)
local used_t = tonumber(t.tokens_prompt) + tonumber(t.tokens_completion)
  + tonumber(t.reserved_tokens)
local function refuse(reason)
  local rem_m, rem_t = '', ''
  if t.limit_micros ~= '' then rem_m = istr(math.max(0, tonumber(t.limit_micros) - used_m)) end
  if t.limit_tokens ~= '' then rem_t = istr(math.max(0, tonumber(t.limit_tokens) - used_t)) end
  return words('budget', reason, rem_m, rem_t, t.period_end_us)
end
if t.limit_micros ~= '' and used_m + cost > tonumber(t.limit_micros) then
  return refuse('budget_usd')
end
if t.limit_tokens ~= '' and used_t + tokens > tonumber(t.limit_tokens) then
  return refuse('budget_tokens')
end
local window = now - now % 60000000
if tonumber(t.window_start_us) ~= window then
  t.window_start_us, t.window_requests, t.window_tokens = istr(window), '0', '0'
end
local retry = istr(window + 60000000 - now)
if t.requests_per_minute ~= '' and
    tonumber(t.window_requests) + 1 > tonumber(t.requests_per_minute) then
  return words('rate', 'requests_per_minute', retry)
end
if t.tokens_per_minute ~= '' and
    tonumber(t.window_tokens) + tokens > tonumber(t.tokens_per_minute) then
  return words('rate', 'tokens_per_minute', retry)
end
local expires = istr(now + tonumber(ARGV[5]))
add(t, 'window_requests', 1)
add(t, 'window_tokens', tokens)
add(t, 'reserved_micros', cost)
add(t, 'reserved_tokens', tokens)
add(t, 'in_flight', 1)
save(key, t)
redis.call('HSET', KEYS[2], 'tenant', ARGV[8], 'cost_max', ARGV[3], 'tokens_max', ARGV[4],
  'expires_us', expires, 'model', ARGV[6], 'price_version', ARGV[7], 'state', 'reserved')
redis.call('ZADD', KEYS[3], expires, ARGV[2])
return words('ok', expires)
"""

# KEYS: req. ARGV: offset_us, request_id, cost, prompt, completion, prefix
SETTLE = r"""
local now = now_us(ARGV[1])
local r = fetch(KEYS[1])
if r.state == nil then return 'unknown' end
if r.state == 'released' then return 'released' end
if r.state ~= 'reserved' then
  return words('again', 'request_id', ARGV[2], 'tenant', r.tenant, 'model', r.model,
    'prompt_tokens', r.prompt_tokens, 'completion_tokens', r.completion_tokens,
    'cost_micros', r.cost_micros, 'price_version', r.price_version, 'at_us', r.at_us,
    'clamped', r.clamped, 'expired', r.expired)
end
if now >= tonumber(r.expires_us) then
  return words('ok', unpack(charge_in_full(ARGV[6], KEYS[1], ARGV[2], r, now)))
end
local cost, prompt, completion = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local cost_max, tokens_max = tonumber(r.cost_max), tonumber(r.tokens_max)
local clamped = 0
if cost > cost_max or prompt + completion > tokens_max then clamped = 1 end
cost = math.min(cost, cost_max)
prompt = math.min(prompt, tokens_max)
completion = math.min(completion, tokens_max - prompt)
return words('ok', unpack(charge(ARGV[6], KEYS[1], ARGV[2], r, cost, prompt, completion, now,
  clamped, 0)))
"""

# KEYS: req. ARGV: offset_us, request_id, prefix
RELEASE = r"""
local now = now_us(ARGV[1])
local r = fetch(KEYS[1])
if r.state == nil then return 'unknown' end
if r.state ~= 'reserved' then return 'noop' end
if now >= tonumber(r.expires_us) then
  charge_in_full(ARGV[3], KEYS[1], ARGV[2], r, now)
  return 'expired'
end
local tkey = ARGV[3] .. 'tenant:' .. r.tenant
local t = fetch(tkey)
unreserve(t, r)
save(tkey, t)
redis.call('HSET', KEYS[1], 'state', 'released')
redis.call('ZREM', ARGV[3] .. 'leases', ARGV[2])
return 'released'
"""

# KEYS: leases. ARGV: offset_us, prefix, batch size. Returns how many it charged.
EXPIRE = r"""
local now = now_us(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', istr(now), 'LIMIT', 0,
  tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  local req_key = ARGV[2] .. 'req:' .. id
  charge_in_full(ARGV[2], req_key, id, fetch(req_key), now)
end
return istr(#ids)
"""

# KEYS: tenant. ARGV: offset_us. Returns the tenant's fields and values as seen after any
# rollover (which it does not write: the next write does), or 'unknown'.
USAGE = r"""
local t = fetch(KEYS[1])
if t.period == nil then return 'unknown' end
roll(t, now_us(ARGV[1]))
local out = {}
for f, v in pairs(t) do
  out[#out + 1] = f
  out[#out + 1] = v
end
return table.concat(out, ' ')
"""


def script(body: str) -> str:
    """A complete script: the shared helpers, then `body`."""
    return PRELUDE + PERIOD_BOUNDS + TENANT + body
