import rateLimit, { type FastifyRateLimitStore } from '@fastify/rate-limit'
import type { FastifyBaseLogger, FastifyInstance, FastifyRequest, onRequestHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import type { Redis } from 'ioredis'
import ipaddr from 'ipaddr.js'
import { createRequire } from 'node:module'
import { isIPv4 } from 'node:net'
import {
  failureCounterWithFallback, memoryFailureCounter, rateLimited, redisFailureCounter, type FailureCounter, type RedisOutage
} from '../auth/sign-in-limit.ts'
import { redactUrl } from '../config.ts'
import { boundedIp, withoutPort } from '../request-client.ts'

// The plugin's own stores, to put a fallback between them (they are not re-exported by its index).
type StoreCtor = new (continueExceeding: boolean, exponentialBackoff: boolean, ...rest: unknown[]) => FastifyRateLimitStore
const require = createRequire(import.meta.url)
const LocalStore = require('@fastify/rate-limit/store/LocalStore.js') as StoreCtor
const RedisStore = require('@fastify/rate-limit/store/RedisStore.js') as StoreCtor

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

/**
 * Per-IP counts one process keeps (300–400 bytes each, measured: up to about 40 MB when full,
 * which takes that many clients within a minute), the least recently used dropped past it.
 * @fastify/rate-limit keeps 5,000 by default: traffic from that many other addresses within a
 * minute, a small IPv6 allocation's worth, would reset every count and so every client's budget.
 */
const MAX_IP_COUNTS = 100_000

/** How long the limits keep to memory after Redis failed, before asking it again. */
const REDIS_RETRY_MS = 5_000

/**
 * While Redis is unreachable, limits fall back to this process's memory: each instance then limits
 * on its own, weaker than shared limits but never unlimited, and requests keep being served.
 * After a failure Redis is left alone for REDIS_RETRY_MS: a Redis that stops answering costs one
 * request its command timeouts then, not every sign-in (three commands, 1.5 s). One log line when
 * the outage starts and one when it ends, not one per request.
 */
function redisOutage (log: FastifyBaseLogger): RedisOutage {
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
    ? failureCounterWithFallback(redisFailureCounter(redis, limits.accountMax, KEY_PREFIX), localFailures, outage)
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
