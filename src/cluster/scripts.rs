//! The Lua scripts unpoll runs in Redis. Each is atomic, which is what makes the cluster
//! sequence work: numbering an event, storing it in its channel's stream and publishing it
//! happen at one point of Redis's single order, and a barrier published to one instance
//! comes after every event numbered before it on that instance's pub/sub connection.
//!
//! Every script first reads the epoch (creating it from the caller's candidate when Redis
//! has none: first start, or Redis lost its data) and returns it, so an instance notices
//! that the sequence started over.

use std::sync::LazyLock;

/// KEYS: epoch, seq, stream, outbox mark. ARGV: candidate epoch, pub/sub channel, event,
/// data, maxlen, stream ttl (ms), outbox row id or "". Returns `{epoch, seq}`, seq 0 when
/// the event is an outbox row at or below the mark: published already (by an instance that
/// then died before saving its outbox position), so skipped. The mark is set in the same
/// step as the publish, which is what makes a row exactly once across instances.
pub static PUBLISH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local ep = redis.call('GET', KEYS[1])
if not ep then ep = ARGV[1]; redis.call('SET', KEYS[1], ep) end
if ARGV[7] ~= '' then
  local row = tonumber(ARGV[7])
  if row <= tonumber(redis.call('GET', KEYS[4]) or '-1') then return {ep, 0} end
  redis.call('SET', KEYS[4], ARGV[7], 'PX', ARGV[6])
end
local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], seq .. '-0', 'e', ARGV[3], 'd', ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
redis.call('PUBLISH', ARGV[2], ep .. '\n' .. seq .. '\n' .. ARGV[3] .. '\n' .. ARGV[4])
return {ep, seq}
",
    )
});

/// A source lost events on channels matching a pattern. KEYS: epoch, seq, lost list, lost
/// floor. ARGV: candidate epoch, reset channel, pattern, reason, marks kept. The mark is
/// kept so a history read on any instance knows; the oldest marks fold into the floor
/// (resets more often, never less). Returns `{epoch, seq}`.
pub static RESET: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local ep = redis.call('GET', KEYS[1])
if not ep then ep = ARGV[1]; redis.call('SET', KEYS[1], ep) end
local seq = redis.call('INCR', KEYS[2])
redis.call('LPUSH', KEYS[3], seq .. ' ' .. ARGV[3])
while redis.call('LLEN', KEYS[3]) > tonumber(ARGV[5]) do
  local old = redis.call('RPOP', KEYS[3])
  local oldseq = tonumber(string.match(old, '^(%d+)'))
  local floor = tonumber(redis.call('GET', KEYS[4]) or '0')
  if oldseq > floor then redis.call('SET', KEYS[4], oldseq) end
end
redis.call('PUBLISH', ARGV[2], ep .. '\n' .. seq .. '\n' .. ARGV[3] .. '\n' .. ARGV[4])
return {ep, seq}
",
    )
});

/// The position now, delivered to one instance as a barrier. KEYS: epoch, seq. ARGV:
/// candidate epoch, the instance's own channel, token. Returns `{epoch, seq}`.
pub static BARRIER: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local ep = redis.call('GET', KEYS[1])
if not ep then ep = ARGV[1]; redis.call('SET', KEYS[1], ep) end
local seq = redis.call('GET', KEYS[2]) or '0'
redis.call('PUBLISH', ARGV[2], ARGV[3] .. '\n' .. ep .. '\n' .. seq)
return {ep, tonumber(seq)}
",
    )
});

/// A channel's history up to the position now, with what bounds its completeness, and a
/// barrier at that position. KEYS: epoch, seq, stream, lost list, lost floor. ARGV:
/// candidate epoch, the instance's own channel, token, count. Returns `{epoch, seq,
/// max deleted id, lost floor, lost marks, newest-first entries}`.
pub static HISTORY: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local ep = redis.call('GET', KEYS[1])
if not ep then ep = ARGV[1]; redis.call('SET', KEYS[1], ep) end
local seq = redis.call('GET', KEYS[2]) or '0'
local entries = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', ARGV[4])
local deleted = '0-0'
if redis.call('EXISTS', KEYS[3]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[3])
  for i = 1, #info, 2 do
    if info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end
  end
end
local lost = redis.call('LRANGE', KEYS[4], 0, -1)
local lostfloor = redis.call('GET', KEYS[5]) or '0'
redis.call('PUBLISH', ARGV[2], ARGV[3] .. '\n' .. ep .. '\n' .. seq)
return {ep, tonumber(seq), deleted, lostfloor, lost, entries}
",
    )
});
