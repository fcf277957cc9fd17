import type { AuthenticatedUser } from './tokens.ts'

/**
 * The app's cache size: a few thousand active clients each reuse one token for its lifetime. Full,
 * it holds about 10 MB (about 1 KB an entry, the token and its user; measured with 400-byte tokens).
 */
export const VERIFIED_TOKENS_CACHED = 10_000

/**
 * Access tokens already verified, until they expire. Verification depends only on the token and
 * the configured secrets (which change only with a restart), so a repeat token costs one lookup
 * instead of a decode, an HMAC and the claim checks. Past `capacity` the oldest entry goes, so a
 * flood of distinct valid tokens cannot grow memory without bound.
 */
export function verifiedTokenCache (capacity: number) {
  const entries = new Map<string, { user: AuthenticatedUser, expiresAt: number }>()
  return {
    /** The token's user, if it was verified and has not expired (times in milliseconds). */
    get (token: string, now: number): AuthenticatedUser | undefined {
      const entry = entries.get(token)
      if (!entry) return undefined
      if (entry.expiresAt > now) return entry.user
      entries.delete(token)
      return undefined
    },
    remember (token: string, user: AuthenticatedUser, expiresAt: number): void {
      entries.set(token, { user, expiresAt })
      if (entries.size > capacity) entries.delete(entries.keys().next().value!)
    },
    get size () { return entries.size }
  }
}
