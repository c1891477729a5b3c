// @ts-check
// A toy downstream store that uses fencing tokens the way the README describes: a write carries
// the writer's fence and is accepted only if no higher fence was seen. Atomic in Redis (Lua); its
// two keys share a slot, so it runs on a cluster too.

const WRITE = `
local highest = tonumber(redis.call("get", KEYS[1]) or "0")
local fence = tonumber(ARGV[1])
if fence < highest then return 0 end
redis.call("set", KEYS[1], ARGV[1])
redis.call("rpush", KEYS[2], ARGV[2])
return 1`;

/**
 * @param {import('ioredis').Redis} redis
 * @param {number} fence
 * @param {string} value
 * @returns {Promise<boolean>} whether the store accepted the write
 */
export async function writeWithFence(redis, fence, value) {
  return (await redis.eval(WRITE, 2, '{store}:highest-fence', '{store}:writes', String(fence), value)) === 1;
}
