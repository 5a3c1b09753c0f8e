//! The Lua scripts that make an entry's changes atomic. Each names the
//! entry's key in KEYS and touches only keys with its hash tag, so in a
//! cluster it runs on the one node that holds the entry.
//!
//! Entry fields: `g` the generation (hex), `n` the number of chunk keys,
//! `h` the head, `b` an inline body. Chunk keys are ARGV prefix .. g .. ':' .. i.

use std::sync::LazyLock;

use redis::Script;

/// Switch the entry to a new generation whose chunks are already written.
/// The old generation's chunks get a short grace TTL for readers still
/// streaming them. KEYS[1] entry; ARGV: gen, chunk count, head, inline body
/// ('' for none), TTL ms, grace ms, chunk key prefix, has-inline flag.
pub(crate) static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local old = redis.call('HMGET', KEYS[1], 'g', 'n')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'g', ARGV[1], 'n', ARGV[2], 'h', ARGV[3])
if ARGV[8] == '1' then redis.call('HSET', KEYS[1], 'b', ARGV[4]) end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
if old[1] and old[1] ~= ARGV[1] then
  for i = 0, (tonumber(old[2]) or 0) - 1 do
    redis.call('PEXPIRE', ARGV[7] .. old[1] .. ':' .. i, ARGV[6])
  end
end
return 1
",
    )
});

/// Remove the entry and its chunks, if its generation is ARGV[1] (or any,
/// when ARGV[1] is ''). Returns the removed generation, or false.
/// KEYS[1] entry; ARGV: generation or '', chunk key prefix.
pub(crate) static PURGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('HMGET', KEYS[1], 'g', 'n')
if not cur[1] then return false end
if ARGV[1] ~= '' and cur[1] ~= ARGV[1] then return false end
redis.call('UNLINK', KEYS[1])
for i = 0, (tonumber(cur[2]) or 0) - 1 do
  redis.call('UNLINK', ARGV[2] .. cur[1] .. ':' .. i)
end
return cur[1]
",
    )
});

/// Replace the head of generation ARGV[1], if it is still current; with a
/// TTL in ARGV[3] (0 keeps the TTLs), set it on the entry and its chunks.
/// KEYS[1] entry; ARGV: generation, head, TTL ms, chunk key prefix.
pub(crate) static SET_HEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('HMGET', KEYS[1], 'g', 'n')
if not cur[1] or cur[1] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'h', ARGV[2])
if tonumber(ARGV[3]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  for i = 0, (tonumber(cur[2]) or 0) - 1 do
    redis.call('PEXPIRE', ARGV[4] .. cur[1] .. ':' .. i, ARGV[3])
  end
end
return 1
",
    )
});
