"""Lua code of the Redis ledger: each operation is one function of one Redis Functions library
(`library()`), so it is atomic on the server and timed by the server's clock (`TIME`); the
shared helpers are defined once when the library is loaded, not on every call. Loaded and
called (`FCALL`) by `redis_backend.RedisLedger`.

Keys (prefix P): P..'tenant:'..name (hash), P..'tenants' (set), P..'req:'..id (hash),
P..'leases' (sorted set of open request ids by expiry), P..'settlements' (stream),
P..'totals' (hash of all-time sums: field 'TENANT MODEL prompt|completion|cost'; neither
names nor models contain spaces).
Numbers are passed and stored as decimal strings; `istr` avoids Lua's %.14g formatting.
Functions read only the hash fields they use (`HMGET`) and write back only those they changed
(each command a function runs, with its arguments, is also appended to the AOF). Each replies
with one string of space-separated words, cheap for the client to parse."""

PRELUDE = r"""
local function istr(x) return string.format('%d', x) end

local function now_us(offset_us)
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(offset_us)
end

-- the named fields of a hash (false for a missing one; a missing key has all false)
local function fetch(key, names)
  local values = redis.call('HMGET', key, unpack(names))
  local h = {}
  for i, f in ipairs(names) do h[f] = values[i] end
  return h
end

-- a reservation's hash: what reserve writes, then what its settlement adds
local REQ = {'state', 'tenant', 'cost_max', 'tokens_max', 'expires_us', 'model',
  'price_version', 'prompt_tokens', 'completion_tokens', 'cost_micros', 'at_us', 'clamped',
  'expired'}
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
-- a tenant hash's fields: all of them, and those a charge (settle or expiry) reads
local ALL = {'limit_micros', 'limit_tokens', 'requests_per_minute', 'tokens_per_minute',
  'period', 'period_start_us', 'period_end_us', 'spent_micros', 'reserved_micros',
  'tokens_prompt', 'tokens_completion', 'reserved_tokens', 'in_flight', 'window_start_us',
  'window_requests', 'window_tokens'}
local CHARGED = {'period', 'period_end_us', 'spent_micros', 'reserved_micros',
  'tokens_prompt', 'tokens_completion', 'reserved_tokens', 'in_flight'}

-- a tenant's fields `names`, and (`changed`) those changed since, which save() writes back
local function load(key, names)
  local t = fetch(key, names)
  t.changed = {}
  return t
end

local function set(t, field, value)
  t[field] = value
  t.changed[field] = true
end

local function add(t, field, n) set(t, field, istr(tonumber(t[field]) + n)) end

local function save(key, t)
  local args = {}
  for f in pairs(t.changed) do
    args[#args + 1] = f
    args[#args + 1] = t[f]
  end
  if #args > 0 then redis.call('HSET', key, unpack(args)) end
end

local function start_period(t, period, now)
  local s, e = period_bounds(period, math.floor(now / 1000000))
  set(t, 'period', period)
  set(t, 'period_start_us', istr(s * 1000000))
  set(t, 'period_end_us', e >= 0 and istr(e * 1000000) or '')
end

-- start a new period, resetting spent usage, when the current one has ended
local function roll(t, now)
  if t.period_end_us ~= '' and now >= tonumber(t.period_end_us) then
    start_period(t, t.period, now)
    for _, f in ipairs({'spent_micros', 'tokens_prompt', 'tokens_completion'}) do
      set(t, f, '0')
    end
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
  local t = load(tkey, CHARGED)
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
  -- the hash keeps what the record adds to it, which a repeated settle returns
  redis.call('HSET', req_key, 'state', state, unpack(fields, 7))
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
local t = load(key, ALL)
if not t.period then
  for _, f in ipairs(ALL) do set(t, f, '0') end
  start_period(t, ARGV[5], now)
end
roll(t, now)
if t.period ~= ARGV[5] then start_period(t, ARGV[5], now) end
set(t, 'limit_micros', ARGV[3])
set(t, 'limit_tokens', ARGV[4])
set(t, 'requests_per_minute', ARGV[6])
set(t, 'tokens_per_minute', ARGV[7])
save(key, t)
redis.call('SADD', KEYS[2], ARGV[2])
return 'ok'
"""

# KEYS: tenant, req, leases. ARGV: offset_us, request_id, cost_max, tokens_max, lease_us,
# model, price_version, tenant
RESERVE = r"""
local now = now_us(ARGV[1])
local key = KEYS[1]
local t = load(key, ALL)
if not t.period then return 'unknown_tenant' end
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
local window = istr(now - now % 60000000)
if t.window_start_us ~= window then
  set(t, 'window_start_us', window)
  set(t, 'window_requests', '0')
  set(t, 'window_tokens', '0')
end
local retry = istr(tonumber(window) + 60000000 - now)
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
local r = fetch(KEYS[1], REQ)
if not r.state then return 'unknown' end
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
local r = fetch(KEYS[1], REQ)
if not r.state then return 'unknown' end
if r.state ~= 'reserved' then return 'noop' end
if now >= tonumber(r.expires_us) then
  charge_in_full(ARGV[3], KEYS[1], ARGV[2], r, now)
  return 'expired'
end
local tkey = ARGV[3] .. 'tenant:' .. r.tenant
local t = load(tkey, {'reserved_micros', 'reserved_tokens', 'in_flight'})
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
  charge_in_full(ARGV[2], req_key, id, fetch(req_key, REQ), now)
end
return istr(#ids)
"""

# KEYS: tenant. ARGV: offset_us. Returns the tenant's fields and values as seen after any
# rollover (which it does not write: the next write does), or 'unknown'.
USAGE = r"""
local t = load(KEYS[1], ALL)
if not t.period then return 'unknown' end
roll(t, now_us(ARGV[1]))
local out = {}
for _, f in ipairs(ALL) do
  out[#out + 1] = f
  out[#out + 1] = t[f]
end
return table.concat(out, ' ')
"""

OPERATIONS = {
    "configure": CONFIGURE,
    "reserve": RESERVE,
    "settle": SETTLE,
    "release": RELEASE,
    "expire": EXPIRE,
    "usage": USAGE,
}
"""Each operation's function body; KEYS and ARGV are its arguments."""


def library(name: str) -> str:
    """The Redis Functions library `name` (for `FUNCTION LOAD`): the shared helpers, then one
    function `<name>_<operation>` per operation."""
    functions = "".join(
        f"redis.register_function('{name}_{op}', function(KEYS, ARGV)\n{body}end)\n"
        for op, body in OPERATIONS.items()
    )
    return f"#!lua name={name}\n" + PRELUDE + PERIOD_BOUNDS + TENANT + functions
