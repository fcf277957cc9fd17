// The per-account sign-in limit (the contract's brute-force guard): attempts counted per account
// in this process or in Redis, and a password checked under that count.
import type { Redis } from 'ioredis'
import { createHash, randomUUID } from 'node:crypto'
import { apiError } from '../errors.ts'

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

const ACCOUNT_WINDOW_MS = 15 * 60 * 1000

/** 429 with Retry-After: the per-account limit's answer, and the per-IP limit's. */
export const rateLimited = (retryAfterSeconds: number) => apiError(429, 'rate_limited',
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
export function redisFailureCounter (redis: Redis, max: number, keyPrefix: string): SharedFailureCounter {
  // The count, and beside it, living as long, the id of the window it counts: an attempt is taken
  // back only from its own window, never from one a reset or the window's end began since.
  const keys = (account: string) => {
    const count = `${keyPrefix}signin-failures:${accountDigest(account)}`
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

/** Whether Redis is to be asked, as the rate-limits plugin watches it (redisOutage). */
export interface RedisOutage {
  /** Go straight to memory: Redis failed a moment ago. */
  readonly waiting: boolean
  failed (error: unknown): void
  recovered (): void
}

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
