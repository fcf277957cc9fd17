import rateLimit, { type FastifyRateLimitStore } from '@fastify/rate-limit'
import type { FastifyBaseLogger, FastifyInstance, FastifyRequest, onRequestHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import { Redis } from 'ioredis'
import { createHash } from 'node:crypto'
import { createRequire } from 'node:module'
import { apiError } from '../errors.ts'

// The plugin's own stores, to put a fallback between them (they are not re-exported by its index).
type StoreCtor = new (continueExceeding: boolean, exponentialBackoff: boolean, ...rest: unknown[]) => FastifyRateLimitStore
const require = createRequire(import.meta.url)
const LocalStore = require('@fastify/rate-limit/store/LocalStore.js') as StoreCtor
const RedisStore = require('@fastify/rate-limit/store/RedisStore.js') as StoreCtor

/** Counts failed sign-ins per account (normalised email): the brute-force guard of the contract. */
export interface FailureCounter {
  /** Seconds until this account may try again; 0 when it may try now. */
  blockedFor (account: string): Promise<number>
  recordFailure (account: string): Promise<void>
  /** A successful sign-in starts the count afresh. */
  reset (account: string): Promise<void>
}

declare module 'fastify' {
  interface FastifyInstance {
    signInFailures: FailureCounter
    /** onRequest hook: RATE_LIMIT_IP_MAX requests per minute per IP on each route it guards. */
    limitPerIp: onRequestHookHandler
  }
}

export const ACCOUNT_WINDOW_MS = 15 * 60 * 1000
const IP_WINDOW_MS = 60 * 1000
const KEY_PREFIX = 'gatehouse:'

export const rateLimited = (retryAfterSeconds: number) => apiError(429, 'rate_limited',
  `Too many attempts. Try again in ${retryAfterSeconds} seconds.`, { 'retry-after': String(retryAfterSeconds) })

/** In one process: a fixed window per account, started by its first failure. */
export function memoryFailureCounter (max: number, windowMs = ACCOUNT_WINDOW_MS): FailureCounter {
  const windows = new Map<string, { count: number, endsAt: number }>()
  const live = (account: string) => {
    const window = windows.get(account)
    if (window && window.endsAt > Date.now()) return window
    windows.delete(account)
    return undefined
  }
  return {
    async blockedFor (account) {
      const window = live(account)
      return window && window.count >= max ? Math.ceil((window.endsAt - Date.now()) / 1000) : 0
    },
    async recordFailure (account) {
      const window = live(account)
      if (window) window.count++
      else windows.set(account, { count: 1, endsAt: Date.now() + windowMs })
      // Bounded memory: a flood of distinct emails evicts the oldest windows first.
      if (windows.size > 100_000) windows.delete(windows.keys().next().value!)
    },
    async reset (account) {
      windows.delete(account)
    }
  }
}

/** Shared by every instance through Redis; keys hold a digest of the email, not the email. */
export function redisFailureCounter (redis: Redis, max: number, windowMs = ACCOUNT_WINDOW_MS): FailureCounter {
  const key = (account: string) => `${KEY_PREFIX}signin-failures:${createHash('sha256').update(account).digest('base64url')}`
  return {
    async blockedFor (account) {
      const [count, ttl] = await Promise.all([redis.get(key(account)), redis.pttl(key(account))])
      return Number(count) >= max && ttl > 0 ? Math.ceil(ttl / 1000) : 0
    },
    async recordFailure (account) {
      // The window starts at the first failure and is not extended by later ones.
      await redis.eval("if redis.call('INCR', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end", 1, key(account), windowMs)
    },
    async reset (account) {
      await redis.del(key(account))
    }
  }
}

/**
 * While Redis is unreachable, limits fall back to this process's memory: each instance then limits
 * on its own, weaker than shared limits but never unlimited, and requests keep being served.
 * One log line when the outage starts and one when it ends, not one per request.
 */
function outageLog (log: FastifyBaseLogger) {
  let failing = false
  return {
    failed (error: unknown) {
      if (!failing) log.error({ err: error }, 'Redis unreachable: rate limits fall back to per-instance memory')
      failing = true
    },
    recovered () {
      if (failing) log.warn('Redis reachable again: rate limits are shared again')
      failing = false
    }
  }
}

function failureCounterWithFallback (primary: FailureCounter, fallback: FailureCounter, outage: ReturnType<typeof outageLog>): FailureCounter {
  const guarded = <A extends unknown[], R>(run: (counter: FailureCounter, ...args: A) => Promise<R>) =>
    async (...args: A): Promise<R> => {
      try {
        const result = await run(primary, ...args)
        outage.recovered()
        return result
      } catch (error) {
        outage.failed(error)
        return run(fallback, ...args)
      }
    }
  return {
    blockedFor: guarded((counter, account: string) => counter.blockedFor(account)),
    recordFailure: guarded((counter, account: string) => counter.recordFailure(account)),
    reset: guarded((counter, account: string) => counter.reset(account))
  }
}

/** @fastify/rate-limit store: its Redis store, or its memory store while Redis fails. */
function storeWithFallback (primary: FastifyRateLimitStore, fallback: FastifyRateLimitStore, outage: ReturnType<typeof outageLog>): FastifyRateLimitStore {
  return {
    incr (key, callback, timeWindow, max) {
      primary.incr(key, (error, result) => {
        if (!error) {
          outage.recovered()
          return callback(null, result)
        }
        outage.failed(error)
        fallback.incr(key, callback, timeWindow, max)
      }, timeWindow, max)
    },
    // The key generator already names the route, so the Redis keys need no per-route prefix.
    child (routeOptions) {
      return storeWithFallback(primary, fallback.child(routeOptions), outage)
    }
  }
}

async function rateLimitsPlugin (app: FastifyInstance) {
  const { rateLimit: limits, redisUrl } = app.config
  const outage = outageLog(app.log)

  const redis = redisUrl
    ? new Redis(redisUrl, { maxRetriesPerRequest: 1, enableOfflineQueue: false, connectTimeout: 2000 })
    : undefined
  if (redis) {
    // Connection errors surface through outageLog when a limit is checked; ioredis stays quiet.
    redis.on('error', () => {})
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
          store: class {
            constructor () {
              return storeWithFallback(new RedisStore(false, false, redis, `${KEY_PREFIX}ip-limit:`), new LocalStore(false, false), outage)
            }
          } as unknown as new () => FastifyRateLimitStore
        }
      : {}),
    errorResponseBuilder: (_request, context) => rateLimited(Math.max(1, Math.ceil(context.ttl / 1000)))
  })

  app.decorate('limitPerIp', app.rateLimit({
    max: limits.ipMax,
    timeWindow: IP_WINDOW_MS,
    // Per IP and per endpoint, as the contract says: signups do not use up the login budget.
    keyGenerator: (request: FastifyRequest) => `${request.ip}|${request.method} ${request.routeOptions.url}`
  }))
}

export default fp(rateLimitsPlugin, { name: 'rate-limits', dependencies: ['config'] })
