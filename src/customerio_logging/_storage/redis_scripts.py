"""The Redis backlog's Lua scripts: each change to its keys is one script, so it is atomic
and one round trip. ``redis.py`` says what the keys hold and passes the arguments.

Every script gets the same five keys (``KEYS``): the ``ops`` stream, the ``ids`` hash,
the ``reserved`` hash, the ``meta`` hash and the ``dead`` stream, all of one namespace
(one Redis Cluster slot). Times are milliseconds; a script's ``now`` argument is the
caller's clock in seconds, or empty for the server's own (``TIME``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

__all__ = ["GROUP", "RELEASED", "Scripts"]

GROUP = "senders"
"""The consumer group every process of the fleet claims through."""
RELEASED = "released"
"""The consumer holding rows given back: their delivery time is 0, claimable at once."""

_PRELUDE = """
local OPS, IDS, RESERVED, META, DEAD = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local GROUP, RELEASED = '%(group)s', '%(released)s'

local function int(n) return string.format('%%d', n) end

local function ensure_group()
  if redis.call('EXISTS', OPS) == 0 then
    redis.call('XGROUP', 'CREATE', OPS, GROUP, '0', 'MKSTREAM')
  end
end

-- The server's time in milliseconds, and in seconds as text.
local function server_time()
  local t = redis.call('TIME')
  local usec = tonumber(t[2])
  local text = t[1] .. '.' .. string.format('%%06d', usec)
  return tonumber(t[1]) * 1000 + math.floor(usec / 1000), text
end

-- ``given`` (seconds as text, or '' for the server's clock) in milliseconds, and as text.
local function clock(given)
  if given == '' then return server_time() end
  return math.floor(tonumber(given) * 1000 + 0.5), given
end

local function fields(flat)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  return f
end

-- Give the pending rows ``eids`` to ``consumer`` with the delivery time ``at``: a lease
-- ends when its row's idle time reaches the horizon (see redis.py). Rows that are not
-- pending are left alone.
local function hand(consumer, at, eids)
  for i = 1, #eids, 500 do
    local args = {'XCLAIM', OPS, GROUP, consumer, '0'}
    for j = i, math.min(i + 499, #eids) do args[#args + 1] = eids[j] end
    args[#args + 1] = 'TIME'
    args[#args + 1] = int(math.max(0, at))
    args[#args + 1] = 'JUSTID'
    redis.call(unpack(args))
  end
end

local function drop(eid, id, size)
  redis.call('XACK', OPS, GROUP, eid)
  redis.call('XDEL', OPS, eid)
  redis.call('HDEL', IDS, id)
  redis.call('HDEL', RESERVED, eid)
  redis.call('HINCRBY', META, 'bytes', int(-size))
end

-- Delete the waiting row of operation ``id``, if there is one.
local function drop_id(id)
  local row = redis.call('HGET', IDS, id)
  if row then
    local eid, size = string.match(row, '^(%%S+) (%%d+)$')
    drop(eid, id, tonumber(size))
  end
end

local function append(id, action, name, body, created)
  local args = {'XADD', OPS, '*', 'id', id, 'action', action, 'body', body, 'created', created}
  if name then
    args[#args + 1] = 'name'
    args[#args + 1] = name
  end
  local eid = redis.call(unpack(args))
  redis.call('HSET', IDS, id, eid .. ' ' .. #body)
  redis.call('HINCRBY', META, 'bytes', #body)
  return eid
end

local function meta_int(field)
  return tonumber(redis.call('HGET', META, field) or '0')
end

-- A dead letter's size as its bound counts it: every field but its time.
local function letter_size(flat)
  local size = 0
  for i = 1, #flat, 2 do
    if flat[i] ~= 'at' then size = size + #flat[i + 1] end
  end
  return size
end
"""

_OPEN = """
local made = redis.pcall('XGROUP', 'CREATE', OPS, GROUP, '0', 'MKSTREAM')
if type(made) == 'table' and made.err and not string.find(made.err, 'BUSYGROUP') then
  return redis.error_reply(made.err)
end
if ARGV[1] == '1' then
  redis.call('HSETNX', META, 'site_id', ARGV[2])
  redis.call('HSETNX', META, 'track_url', ARGV[3])
end
return redis.call('HMGET', META, 'site_id', 'track_url')
"""

_EVICT = """
-- What ``bytes`` of bodies (or dead letters) in ``rows`` take in Redis, by ARGV's model:
-- per row an overhead, and on the bytes a share (0: none).
local function weight(bytes, rows, overhead, share)
  return bytes + (share > 0 and math.floor(bytes / share) or 0) + rows * overhead
end

-- Delete the oldest waiting rows while the backlog weighs more than ``bound``, down to a
-- 20th below it; how many.
local function evict(bound, row_overhead, letter_overhead, share)
  local used = weight(meta_int('bytes'), redis.call('XLEN', OPS), row_overhead, share)
    + weight(meta_int('dead_bytes'), redis.call('XLEN', DEAD), letter_overhead, share)
  if used <= bound then return 0 end
  local want = used - bound + math.floor(bound / 20)
  local freed, evicted, start = 0, 0, '-'
  while freed < want do
    local page = redis.call('XRANGE', OPS, start, '+', 'COUNT', 100)
    if #page == 0 then break end
    for _, entry in ipairs(page) do
      local f = fields(entry[2])
      drop(entry[1], f.id, #f.body)
      freed = freed + weight(#f.body, 1, row_overhead, share)
      evicted = evicted + 1
      if freed >= want then break end
    end
    start = '(' .. page[#page][1]
  end
  redis.call('HINCRBY', META, 'evicted', evicted)
  return evicted
end
"""

_ADD = """
ensure_group()
local now, created = clock(ARGV[1])
local owner = ARGV[2]
local lease_end = now + tonumber(ARGV[3])
if owner ~= '' then
  -- Listed from now on, so that a claimer can tell when this owner is gone.
  redis.call('XGROUP', 'CREATECONSUMER', OPS, GROUP, owner)
end
for i = 8, #ARGV, 5 do
  local id = ARGV[i]
  local row = redis.call('HGET', IDS, id)
  if not row then
    local name = ARGV[i + 2] == '1' and ARGV[i + 3] or nil
    local eid = append(id, ARGV[i + 1], name, ARGV[i + 4], created)
    if owner ~= '' then redis.call('HSET', RESERVED, eid, owner .. ' ' .. int(lease_end)) end
  elseif owner == '' then
    -- The queue gave up on it: released to replay, whoever held it.
    local eid = string.match(row, '^(%S+)')
    hand(RELEASED, 0, {eid})
    redis.call('HDEL', RESERVED, eid)
  end
end
return evict(tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
"""

_CLAIM = """
ensure_group()
local me, limit, most = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = clock(ARGV[5])
local lease, horizon = tonumber(ARGV[6]), tonumber(ARGV[7])
local gone_count = tonumber(ARGV[8])

-- Owners known to be gone: their rows are claimable at once.
local gone = {}
for i = 9, 8 + gone_count do
  local owner = ARGV[i]
  gone[owner] = true
  local start = '-'
  while true do
    local page = redis.call('XPENDING', OPS, GROUP, start, '+', 500, owner)
    if #page == 0 then break end
    local eids = {}
    for _, p in ipairs(page) do eids[#eids + 1] = p[1] end
    hand(RELEASED, 0, eids)
    start = '(' .. eids[#eids]
  end
end
-- Consumers long idle with nothing pending: one per process that ever claimed.
for i = 9 + gone_count, #ARGV do
  if #redis.call('XPENDING', OPS, GROUP, '-', '+', 1, ARGV[i]) == 0 then
    redis.call('XGROUP', 'DELCONSUMER', OPS, GROUP, ARGV[i])
  end
end

-- Rows read at a time, at least: a row read past the batch is given back, but reading
-- one at a time costs more.
local PAGE = 100
local taken, rows, back = {}, {}, {}
local size, full = tonumber(ARGV[4]), limit <= 0
local function offer(entry)
  if full then
    back[#back + 1] = entry[1]
    return
  end
  local f = fields(entry[2])
  local grow = #f.body + (#taken > 0 and 1 or 0)
  if #taken > 0 and size + grow > most then
    full = true
    back[#back + 1] = entry[1]
    return
  end
  size = size + grow
  taken[#taken + 1] = entry[1]
  rows[#rows + 1] = f.id
  rows[#rows + 1] = f.action
  rows[#rows + 1] = f.name or false
  rows[#rows + 1] = f.body
  full = #taken >= limit
end

-- 1. Pending rows whose lease ended, or that were given back (oldest first).
local min_idle = math.max(0, horizon + server_time() - now)
local cursor = '0-0'
while not full do
  local res = redis.call(
    'XAUTOCLAIM', OPS, GROUP, me, int(min_idle), cursor, 'COUNT', math.max(PAGE, limit - #taken))
  for _, entry in ipairs(res[2]) do
    if entry and entry[2] then offer(entry) end
  end
  cursor = res[1]
  if cursor == '0-0' then break end
end

-- 2. Rows never delivered, newer than every pending one; a live reservation goes back
-- to its owner, under its lease. At most MOST_HANDED of those a claim (15 ms): Redis
-- serves no one else meanwhile, and the next claim goes on from there.
local MOST_HANDED, handed = 1000, 0
while not full and handed < MOST_HANDED do
  local res = redis.call('XREADGROUP', 'GROUP', GROUP, me,
    'COUNT', math.min(math.max(PAGE, limit - #taken), MOST_HANDED - handed), 'STREAMS', OPS, '>')
  if not res or #res[1][2] == 0 then break end
  for _, entry in ipairs(res[1][2]) do
    local reservation = redis.call('HGET', RESERVED, entry[1])
    local owner, ends
    if reservation then
      redis.call('HDEL', RESERVED, entry[1])
      owner, ends = string.match(reservation, '^(.*) (%d+)$')
      ends = tonumber(ends)
    end
    if reservation and ends > now and not gone[owner] then
      hand(owner, ends - horizon, {entry[1]})
      handed = handed + 1
    else
      offer(entry)
    end
  end
end

-- 3. The taken rows under this claim's lease; those past the batch's bytes given back.
hand(me, now + lease - horizon, taken)
hand(RELEASED, 0, back)
return rows
"""

_RELEASE = """
ensure_group()
local mine = {}
for i = 2, #ARGV do
  local row = redis.call('HGET', IDS, ARGV[i])
  if row then
    local eid = string.match(row, '^(%S+)')
    if #redis.call('XPENDING', OPS, GROUP, eid, eid, 1, ARGV[1]) > 0 then
      mine[#mine + 1] = eid
    end
  end
end
hand(RELEASED, 0, mine)
"""

_ACK = """
ensure_group()
for i = 1, #ARGV do drop_id(ARGV[i]) end
"""

_DEAD_LETTER = """
ensure_group()
-- Delete the oldest dead letters: ``rows`` of them, then on until the rest take at most
-- ``bytes``; how many.
local function shed(rows, bytes)
  local total = meta_int('dead_bytes')
  local count, freed, start = 0, 0, '-'
  while count < rows or total - freed > bytes do
    local page = redis.call('XRANGE', DEAD, start, '+', 'COUNT', 100)
    if #page == 0 then break end
    for _, entry in ipairs(page) do
      if count >= rows and total - freed <= bytes then break end
      redis.call('XDEL', DEAD, entry[1])
      freed = freed + letter_size(entry[2])
      count = count + 1
    end
    start = '(' .. page[#page][1]
  end
  redis.call('HINCRBY', META, 'dead_bytes', int(-freed))
  return count
end

if redis.call('HSETNX', META, 'dead_seq', 0) == 1 and redis.call('EXISTS', DEAD) == 1 then
  -- The count was lost, not the stream: go on after its last id.
  local info = fields(redis.call('XINFO', 'STREAM', DEAD))
  redis.call('HSET', META, 'dead_seq', string.match(info['last-generated-id'], '^(%d+)'))
end
local bound, most = tonumber(ARGV[1]), tonumber(ARGV[2])
local i = 3
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local seq = redis.call('HINCRBY', META, 'dead_seq', 1)
  local args = {'XADD', DEAD, int(seq) .. '-0'}
  for j = i + 1, i + 2 * n do args[#args + 1] = ARGV[j] end
  redis.call(unpack(args))
  local flat = {unpack(args, 4)}
  redis.call('HINCRBY', META, 'dead_bytes', letter_size(flat))
  local f = fields(flat)
  if f.id then drop_id(f.id) end
  i = i + 1 + 2 * n
end
local evicted = shed(math.max(0, redis.call('XLEN', DEAD) - most), math.huge)
if meta_int('dead_bytes') > bound then
  evicted = evicted + shed(0, bound - math.floor(bound / 20))
end
redis.call('HINCRBY', META, 'dead_evicted', evicted)
return evicted
"""

_EACH_LETTER = """
-- Call ``fn`` on each dead letter chosen by ARGV from ``first`` on: a reason flag and the
-- reason, then 'all', or 'some' and the letters' seqs.
local function each_letter(first, fn)
  local reason = ARGV[first] == '1' and ARGV[first + 1] or nil
  local function visit(entry)
    local f = fields(entry[2])
    if reason == nil or f.reason == reason then fn(entry, f) end
  end
  if ARGV[first + 2] == 'some' then
    for i = first + 3, #ARGV do
      local eid = ARGV[i] .. '-0'
      local page = redis.call('XRANGE', DEAD, eid, eid)
      if #page > 0 then visit(page[1]) end
    end
    return
  end
  local start = '-'
  while true do
    local page = redis.call('XRANGE', DEAD, start, '+', 'COUNT', 500)
    if #page == 0 then break end
    for _, entry in ipairs(page) do visit(entry) end
    start = '(' .. page[#page][1]
  end
end

local function forget_letter(entry)
  redis.call('XDEL', DEAD, entry[1])
  redis.call('HINCRBY', META, 'dead_bytes', int(-letter_size(entry[2])))
end
"""

_REQUEUE = """
ensure_group()
local _, created = clock(ARGV[1])
local moved = 0
each_letter(2, function(entry, f)
  if f.id and f.body and f.action then
    if redis.call('HEXISTS', IDS, f.id) == 0 then
      append(f.id, f.action, f.name, f.body, created)
    end
    forget_letter(entry)
    moved = moved + 1
  end
end)
return moved
"""

_PURGE_DEAD_LETTERS = """
if ARGV[1] == '0' and ARGV[3] == 'all' then
  local count = redis.call('XLEN', DEAD)
  redis.call('DEL', DEAD)
  redis.call('HSET', META, 'dead_bytes', 0)
  return count
end
local count = 0
each_letter(1, function(entry)
  forget_letter(entry)
  count = count + 1
end)
return count
"""

_PURGE = """
local count = redis.call('XLEN', OPS)
redis.call('DEL', OPS, IDS, RESERVED)
ensure_group()
redis.call('HSET', META, 'bytes', 0)
return count
"""

_STATUS = """
ensure_group()
local now = clock(ARGV[1])
local min_idle = math.max(0, tonumber(ARGV[2]) + server_time() - now)
-- Pending rows under a live lease: all but those idle past the horizon...
local leased = redis.call('XPENDING', OPS, GROUP)[1]
local start = '-'
while true do
  local page = redis.call('XPENDING', OPS, GROUP, 'IDLE', int(min_idle), start, '+', 1000)
  leased = leased - #page
  if #page < 1000 then break end
  start = '(' .. page[#page][1]
end
-- ...and reservations not yet seen by a claim.
for _, reservation in ipairs(redis.call('HVALS', RESERVED)) do
  if tonumber(string.match(reservation, ' (%d+)$')) > now then leased = leased + 1 end
end
local first = redis.call('XRANGE', OPS, '-', '+', 'COUNT', 1)[1]
local last = redis.call('XREVRANGE', OPS, '+', '-', 'COUNT', 1)[1]
local memory = 0
for _, key in ipairs(KEYS) do
  memory = memory + (redis.call('MEMORY', 'USAGE', key) or 0)
end
return {
  redis.call('XLEN', OPS), leased, meta_int('bytes'),
  first and fields(first[2]).created or false, last and fields(last[2]).created or false,
  redis.call('XLEN', DEAD), meta_int('dead_bytes'), meta_int('dead_evicted'),
  redis.call('HGET', META, 'site_id'), memory,
}
"""


def _script(*parts: str) -> str:
    prelude = _PRELUDE % {"group": GROUP, "released": RELEASED}
    return "\n".join((prelude, *parts))


class Scripts:
    """The scripts, registered with a client (each is loaded into Redis on its first use,
    and again if Redis forgot it); call one with ``client=`` to use another client."""

    def __init__(self, client: redis.Redis) -> None:
        def register(*parts: str) -> Script:
            return client.register_script(_script(*parts))

        self.open = register(_OPEN)
        self.add = register(_EVICT, _ADD)
        self.claim = register(_CLAIM)
        self.release = register(_RELEASE)
        self.ack = register(_ACK)
        self.dead_letter = register(_DEAD_LETTER)
        self.requeue = register(_EACH_LETTER, _REQUEUE)
        self.purge_dead_letters = register(_EACH_LETTER, _PURGE_DEAD_LETTERS)
        self.purge = register(_PURGE)
        self.status = register(_STATUS)
