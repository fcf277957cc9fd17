import rateLimit, { type FastifyRateLimitStore } from '@fastify/rate-limit'
import type { FastifyBaseLogger, FastifyInstance, FastifyRequest, onRequestHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import type { Redis } from 'ioredis'
import ipaddr from 'ipaddr.js'
import { createHash, randomUUID } from 'node:crypto'
import { createRequire } from 'node:module'
import { isIPv4 } from 'node:net'
import { redactUrl } from '../config.ts'
import { apiError } from '../errors.ts'
import { boundedIp, withoutPort } from '../request-client.ts'

// The plugin's own stores, to put a fallback between them (they are not re-exported by its index).
type StoreCtor = new (continueExceeding: boolean, exponentialBackoff: boolean, ...rest: unknown[]) => FastifyRateLimitStore
const require = createRequire(import.meta.url)
const LocalStore = require('@fastify/rate-limit/store/LocalStore.js') as StoreCtor
const RedisStore = require('@fastify/rate-limit/store/RedisStore.js') as StoreCtor

/**
 * Counts sign-in attempts per account (normalised email): the brute-force guard of the contract.
 * An attempt is counted before its password is checked, so a burst of parallel guesses cannot
 * all pass a check made before any of them failed; a correct password clears the count.
 */
export interface FailureCounter {
  /** Counts one attempt. */
  attempt (account: string): Promise<CountedAttempt>
  /** A successful sign-in starts the count afresh. */
  reset (account: string): Promise<void>
}

export interface CountedAttempt {
  /** The seconds until this account may try again, or 0 when it may now. */
  retryAfter: number
  /**
   * Takes the attempt back, from the count that holds it, when its check never ran (its client
   * left while it queued): it tested no password.
   */
  withdraw (): Promise<void>
}

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Routes naming the same group share one per-IP count; any other route counts on its own. */
    ipLimitGroup?: string
  }
  interface FastifyInstance {
    signInFailures: FailureCounter
    /** onRequest hook: RATE_LIMIT_IP_MAX requests a minute per IP on each route (or ipLimitGroup) it guards. */
    limitPerIp: onRequestHookHandler
  }
}

/** The per-IP group of the endpoints that sign in with a password: login and the token endpoint. */
export const SIGN_IN_IP_LIMIT = 'sign-in'

const ACCOUNT_WINDOW_MS = 15 * 60 * 1000
const IP_WINDOW_MS = 60 * 1000
const KEY_PREFIX = 'gatehouse:'

/**
 * Who a per-IP limit counts: an IPv4 address, or an IPv6 client's /64. One IPv6 host is usually
 * given a whole /64 and may send from any address in it, so counting addresses would give it
 * endless budgets. An IPv4 address written as IPv6 (::ffff:a.b.c.d, in any spelling) counts as
 * IPv4; text that is no address (a proxy's odd X-Forwarded-For) counts as itself.
 */
export function ipLimitSubject (ip: string): string {
  // IPv4, most clients: one cheap check (ipaddr.js's parse costs a few microseconds).
  if (isIPv4(ip)) return ip
  const address = withoutPort(ip)
  if (isIPv4(address)) return address
  let parsed: ipaddr.IPv4 | ipaddr.IPv6
  try {
    parsed = ipaddr.process(address.split('%')[0]!)
  } catch {
    return ip
  }
  return parsed.kind() === 'ipv4'
    ? parsed.toString()
    : `${(parsed as ipaddr.IPv6).parts.slice(0, 4).map((group) => group.toString(16)).join(':')}::/64`
}

const rateLimited = (retryAfterSeconds: number) => apiError(429, 'rate_limited',
  `Too many attempts. Try again in ${retryAfterSeconds} seconds.`, { 'retry-after': String(retryAfterSeconds) })

/**
 * What the counters key an account by: a digest of the email, so a store never holds an email
 * and every key has one small size, however long the name it was asked about.
 */
const accountDigest = (account: string) => createHash('sha256').update(account).digest('base64url')

/** A withdraw that takes back its attempt once, however often it is called. */
function once (withdraw: () => Promise<void>): () => Promise<void> {
  let done = false
  return async () => {
    if (done) return
    done = true
    await withdraw()
  }
}

/** Accounts under the limit that one process tracks at once: about 160 bytes each. */
const MAX_OPEN_WINDOWS = 100_000

/**
 * Per-IP counts one process keeps (300–400 bytes each, measured: up to about 40 MB when full,
 * which takes that many clients within a minute), the least recently used dropped past it.
 * @fastify/rate-limit keeps 5,000 by default: traffic from that many other addresses within a
 * minute, a small IPv6 allocation's worth, would reset every count and so every client's budget.
 */
const MAX_IP_COUNTS = 100_000

/** In one process: a fixed window per account, started by its first attempt. */
export function memoryFailureCounter (max: number): FailureCounter {
  type Window = { count: number, endsAt: number }
  // Accounts under the limit, oldest window first. Bounded: a flood of distinct emails drops the
  // oldest of these windows, costing memory only up to a point.
  const open = new Map<string, Window>()
  // Accounts over the limit, kept until their window ends: never dropped to make room, so such a
  // flood cannot unlock an account. Each cost RATE_LIMIT_ACCOUNT_MAX + 1 attempts in its window.
  const locked = new Map<string, Window>()
  return {
    async attempt (account) {
      const now = Date.now()
      // Lockouts in the order they began, about the order they end: sweep the ended ones.
      for (const [key, window] of locked) {
        if (window.endsAt > now) break
        locked.delete(key)
      }
      const key = accountDigest(account)
      let window = locked.get(key) ?? open.get(key)
      if (!window || window.endsAt <= now) {
        locked.delete(key)
        open.delete(key)
        window = { count: 0, endsAt: now + ACCOUNT_WINDOW_MS }
        open.set(key, window)
        if (open.size > MAX_OPEN_WINDOWS) open.delete(open.keys().next().value!)
      }
      window.count++
      const counted = window
      // From the window that counted it: one ended or cleared since is no longer read.
      const withdraw = once(async () => { if (counted.count > 0) counted.count-- })
      if (window.count <= max) return { retryAfter: 0, withdraw }
      if (open.delete(key)) locked.set(key, window)
      return { retryAfter: Math.ceil((window.endsAt - now) / 1000), withdraw }
    },
    async reset (account) {
      const key = accountDigest(account)
      open.delete(key)
      locked.delete(key)
    }
  }
}

/** The count in Redis, with what the memory fallback needs of it after an outage. */
export interface SharedFailureCounter extends FailureCounter {
  /**
   * Clears the account's count if its window began more than `ageMs` ago, so it holds attempts
   * from before a correct sign-in that long ago, which could not tell Redis; one begun since holds
   * only later ones (another instance's), which that sign-in must not clear.
   */
  resetIfBegunBefore (account: string, ageMs: number): Promise<void>
}

/** Shared by every instance through Redis. */
function redisFailureCounter (redis: Redis, max: number): SharedFailureCounter {
  // The count, and beside it, living as long, the id of the window it counts: an attempt is taken
  // back only from its own window, never from one a reset or the window's end began since.
  const keys = (account: string) => {
    const count = `${KEY_PREFIX}signin-failures:${accountDigest(account)}`
    return [count, `${count}:window`] as const
  }
  return {
    async resetIfBegunBefore (account, ageMs) {
      // The window's age is read off its remaining time, in Redis: no clock but the instance's own measures ageMs.
      await redis.eval("local left = redis.call('PTTL', KEYS[1]) if left > 0 and tonumber(ARGV[1]) - left > tonumber(ARGV[2]) then redis.call('DEL', KEYS[1], KEYS[2]) end return 0",
        2, ...keys(account), ACCOUNT_WINDOW_MS, ageMs)
    },
    async attempt (account) {
      // One round trip, atomic: count, start the window (and name it) on the first attempt, read what is left.
      const [count, ttl, windowId] = await redis.eval(
        "local c = redis.call('INCR', KEYS[1]) if c == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[1]) end " +
        "return {c, redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[2])}",
        2, ...keys(account), ACCOUNT_WINDOW_MS, randomUUID()) as [number, number, string | null]
      return {
        retryAfter: count > max ? Math.max(1, Math.ceil(ttl / 1000)) : 0,
        // DECR keeps the window's expiry. A window without an id (begun by an older version) is left alone.
        withdraw: once(async () => {
          if (windowId === null) return
          await redis.eval("if redis.call('GET', KEYS[2]) == ARGV[1] then local c = tonumber(redis.call('GET', KEYS[1])) if c and c > 0 then redis.call('DECR', KEYS[1]) end end return 0",
            2, ...keys(account), windowId)
        })
      }
    },
    async reset (account) {
      await redis.del(...keys(account))
    }
  }
}

/** The password checks of each account running in this process, per counter (an app has one). */
const checksRunning = new WeakMap<FailureCounter, Map<string, Set<Promise<boolean>>>>()

/**
 * Checks a password for an account under the per-account limit: 429 once the account is past
 * RATE_LIMIT_ACCOUNT_MAX attempts, whatever the password (after `onBlocked`, which logs it);
 * a correct one clears the count.
 *
 * Attempts are counted before their check, so a burst can be past the limit only because its
 * first checks have not finished. A refused attempt whose account has checks running in this
 * process waits for them and asks again: if one was correct, the count was cleared and it goes
 * on (a client signing one account in many times at once is served, not told to wait out the
 * window); if none was, it is refused as before. No more checks run than the limit allows.
 */
export async function checkPasswordLimited (
  failures: FailureCounter, account: string, check: () => Promise<boolean>, onBlocked: () => void
): Promise<boolean> {
  let accounts = checksRunning.get(failures)
  if (!accounts) checksRunning.set(failures, accounts = new Map())
  let attempt: CountedAttempt
  for (;;) {
    attempt = await failures.attempt(account)
    if (attempt.retryAfter === 0) break
    const running = accounts.get(account)
    if (!running) {
      onBlocked()
      throw rateLimited(attempt.retryAfter)
    }
    await Promise.allSettled(running)
    // Refused only for the checks it waited for, it tested nothing: asked again, it counts afresh.
    await attempt.withdraw()
  }
  const checked = (async () => {
    let correct: boolean
    try {
      correct = await check()
    } catch (error) {
      // No verdict (the client left before its hash ran): the attempt tested nothing, so it must
      // not count against the account, as a correct one would otherwise have cleared it.
      await attempt.withdraw()
      throw error
    }
    if (correct) await failures.reset(account)
    return correct
  })()
  const running = accounts.get(account) ?? new Set()
  accounts.set(account, running.add(checked))
  try {
    return await checked
  } finally {
    running.delete(checked)
    if (running.size === 0 && accounts.get(account) === running) accounts.delete(account)
  }
}

/** How long the limits keep to memory after Redis failed, before asking it again. */
const REDIS_RETRY_MS = 5_000

/**
 * While Redis is unreachable, limits fall back to this process's memory: each instance then limits
 * on its own, weaker than shared limits but never unlimited, and requests keep being served.
 * After a failure Redis is left alone for REDIS_RETRY_MS: a Redis that stops answering costs one
 * request its command timeouts then, not every sign-in (three commands, 1.5 s). One log line when
 * the outage starts and one when it ends, not one per request.
 */
function redisOutage (log: FastifyBaseLogger) {
  let failing = false
  let retryAt = 0
  return {
    /** Whether to go straight to memory: Redis failed less than REDIS_RETRY_MS ago. */
    get waiting () { return failing && Date.now() < retryAt },
    failed (error: unknown) {
      if (!failing) log.error({ err: error }, 'Redis unreachable: rate limits fall back to per-instance memory')
      failing = true
      retryAt = Date.now() + REDIS_RETRY_MS
    },
    recovered () {
      if (failing) log.warn('Redis reachable again: rate limits are shared again')
      failing = false
    }
  }
}
type RedisOutage = ReturnType<typeof redisOutage>

/** Correct sign-ins while Redis failed whose clearing Redis is still to be told: about 300 bytes each. */
const MAX_OWED_RESETS = 10_000

export function failureCounterWithFallback (primary: SharedFailureCounter, fallback: FailureCounter, outage: RedisOutage): FailureCounter {
  // A correct sign-in while Redis failed cleared only this instance's count. Redis is told before
  // it is next asked anything, or the account would find its count from before the outage there;
  // failures other instances counted after that sign-in stay (resetIfBegunBefore).
  // Account → when its sign-in succeeded (performance.now(): a clock that only moves forward).
  const owedResets = new Map<string, number>()
  // One settling at a time, which every request then waits for: after an outage, each of the
  // sign-ins arriving at once would otherwise send Redis every owed reset (up to MAX_OWED_RESETS).
  let settling: Promise<void> | undefined
  const settleOnce = async () => {
    const owed = [...owedResets]
    await Promise.all(owed.map(([account, at]) => primary.resetIfBegunBefore(account, performance.now() - at)))
    for (const [account, at] of owed) if (owedResets.get(account) === at) owedResets.delete(account)
  }
  const settleOwedResets = async () => {
    // Again while any is owed: one owed after the running settling took its list is not in it.
    while (owedResets.size > 0) {
      settling ??= settleOnce().finally(() => { settling = undefined })
      await settling
    }
  }
  const guarded = <R>(run: (counter: FailureCounter, account: string) => Promise<R>, onFallback?: (account: string) => void) =>
    async (account: string): Promise<R> => {
      if (!outage.waiting) {
        try {
          await settleOwedResets()
          const result = await run(primary, account)
          outage.recovered()
          return result
        } catch (error) {
          outage.failed(error)
        }
      }
      onFallback?.(account)
      return run(fallback, account)
    }
  /**
   * An attempt Redis counted is taken back from Redis, or not at all while Redis fails: it stays
   * counted until its window ends or a correct sign-in clears it, as memory never held it (and an
   * attempt memory counted is taken back from memory, never from a Redis that recovered meanwhile).
   */
  const sharedAttempt = ({ retryAfter, withdraw }: CountedAttempt): CountedAttempt => ({
    retryAfter,
    withdraw: async () => {
      if (outage.waiting) return
      try {
        await withdraw()
        outage.recovered()
      } catch (error) {
        outage.failed(error)
      }
    }
  })
  return {
    attempt: guarded(async (counter, account) => counter === primary ? sharedAttempt(await counter.attempt(account)) : counter.attempt(account)),
    reset: guarded((counter, account) => counter.reset(account), (account) => {
      owedResets.delete(account)
      owedResets.set(account, performance.now())
      if (owedResets.size > MAX_OWED_RESETS) owedResets.delete(owedResets.keys().next().value!)
    })
  }
}

/** @fastify/rate-limit store: its Redis store, or its memory store while Redis fails. */
class FallbackStore implements FastifyRateLimitStore {
  constructor (
    private readonly primary: FastifyRateLimitStore,
    private readonly fallback: FastifyRateLimitStore,
    private readonly outage: RedisOutage
  ) {}

  incr (key: string, callback: Parameters<FastifyRateLimitStore['incr']>[1], timeWindow: number, max: number) {
    if (this.outage.waiting) return this.fallback.incr(key, callback, timeWindow, max)
    this.primary.incr(key, (error, result) => {
      if (!error) {
        this.outage.recovered()
        return callback(null, result)
      }
      this.outage.failed(error)
      this.fallback.incr(key, callback, timeWindow, max)
    }, timeWindow, max)
  }

  // The key generator already names the route, so the Redis keys need no per-route prefix.
  child (routeOptions: Parameters<FastifyRateLimitStore['child']>[0]) {
    return new FallbackStore(this.primary, this.fallback.child(routeOptions), this.outage)
  }
}

/** Replies that say REDIS_URL itself is wrong, as opposed to a Redis that is busy or full. */
const REFUSES_URL = /^(WRONGPASS|NOAUTH|ERR DB index is out of range|ERR invalid DB index|ERR SELECT is not allowed in cluster mode)/
const REDIS_OPTIONS = { maxRetriesPerRequest: 1, enableOfflineQueue: false, connectTimeout: 2000, commandTimeout: 500 }
/** How long start-up waits for Redis's first answer before starting without it. */
const FIRST_ANSWER_MS = REDIS_OPTIONS.connectTimeout + REDIS_OPTIONS.commandTimeout

/**
 * Waits a moment for Redis's first answer: undefined once Redis is ready, else why it is not (its
 * error, or none within FIRST_ANSWER_MS). A Redis that cannot be reached, is loading or busy is
 * no reason not to start (the limits fall back to memory until it answers), but one that refuses
 * REDIS_URL is: a wrong password, or a database number it does not have, which is only an
 * 'error' event to ioredis before it shares database 0 with whatever else uses it.
 */
function firstAnswer (redis: Redis): Promise<Error | undefined> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => settle(new Error(`no answer within ${FIRST_ANSWER_MS} ms`)), FIRST_ANSWER_MS)
    function settle (error?: Error) {
      clearTimeout(timer)
      redis.off('ready', settle).off('error', settle)
      if (error?.name === 'ReplyError' && REFUSES_URL.test(error.message)) {
        redis.disconnect()
        return reject(new Error(`Redis refused REDIS_URL: ${error.message}`))
      }
      resolve(error)
    }
    redis.on('ready', settle).on('error', settle)
  })
}

async function rateLimitsPlugin (app: FastifyInstance) {
  const { rateLimit: limits, redisUrl } = app.config
  // Its log lines name the Redis (without its password): an operator's first question.
  const outage = redisOutage(redisUrl ? app.log.child({ redis: redactUrl(redisUrl) }) : app.log)

  // ioredis is loaded only when Redis is configured: a single instance never needs its 5 MiB.
  const redis = redisUrl
    // A Redis that stops answering must fail fast too (commandTimeout), so the fallback takes over.
    ? new (await import('ioredis')).Redis(redisUrl, REDIS_OPTIONS)
    : undefined
  if (redis) {
    // Connection errors surface through redisOutage when a limit is checked; ioredis stays quiet.
    redis.on('error', () => {})
    const unavailable = await firstAnswer(redis)
    // Said at start, not at the first sign-in, which then goes straight to memory.
    if (unavailable) outage.failed(unavailable)
    app.addHook('onClose', async () => { redis.disconnect() })
  }

  const localFailures = memoryFailureCounter(limits.accountMax)
  app.decorate('signInFailures', redis
    ? failureCounterWithFallback(redisFailureCounter(redis, limits.accountMax), localFailures, outage)
    : localFailures)

  await app.register(rateLimit, {
    global: false,
    ...(redis
      ? {
          store: class extends FallbackStore {
            constructor () {
              super(new RedisStore(false, false, redis, `${KEY_PREFIX}ip-limit:`), new LocalStore(false, false), outage)
            }
          }
        }
      : {}),
    errorResponseBuilder: (_request, context) => rateLimited(Math.max(1, Math.ceil(context.ttl / 1000))),
    // The limit is a brute-force guard, not a quota to budget: a refused request gets Retry-After
    // (and the x-ratelimit-* headers); the others carry no headers about it.
    addHeadersOnExceeding: { 'x-ratelimit-limit': false, 'x-ratelimit-remaining': false, 'x-ratelimit-reset': false }
  })

  app.decorate('limitPerIp', app.rateLimit({
    // This limiter's own store (a child of the plugin's) reads its size from these options.
    cache: MAX_IP_COUNTS,
    max: limits.ipMax,
    timeWindow: IP_WINDOW_MS,
    // Per IP and per endpoint, as the contract says: signups do not use up the login budget. The
    // endpoints of one group share a count (login and the token endpoint: "shares login's limits"),
    // and a HEAD counts with its GET: it costs the same, and must not double the budget.
    keyGenerator: (request: FastifyRequest) =>
      `${ipLimitSubject(boundedIp(request.ip))}|${request.routeOptions.config.ipLimitGroup ?? `${request.method === 'HEAD' ? 'GET' : request.method} ${request.routeOptions.url}`}`
  }))
}

export default fp(rateLimitsPlugin, { name: 'rate-limits', dependencies: ['config'] })
