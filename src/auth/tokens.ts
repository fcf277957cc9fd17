import { createHash, randomBytes, randomUUID } from 'node:crypto'
import { ROLES, type Role } from './permissions.ts'

/** RFC 9068 §2.1: access tokens say what they are, so no other JWT can stand in for one. */
export const ACCESS_TOKEN_TYP = 'at+jwt'
/** RFC 8725 §3.1: one algorithm, pinned for signing and verifying. */
export const ACCESS_TOKEN_ALG = 'HS256'
/** How far apart two clocks may be; `exp`, `nbf` and `iat` are judged with it. */
export const CLOCK_TOLERANCE_SECONDS = 10
export const REQUIRED_CLAIMS = ['sub', 'sid', 'roles', 'jti', 'iat', 'exp', 'iss', 'aud']

/** Who the bearer of a verified access token is. */
export interface AuthenticatedUser {
  id: string
  sid: string
  roles: Role[]
}

export interface AccessTokenPayload {
  sub: string
  sid: string
  roles: Role[]
  jti: string
}

/**
 * The `kid` naming a secret: a short digest, so tokens can say which secret signed them without
 * carrying it. It lets a guess of the secret be checked, as any token's HMAC already does, so it
 * gives nothing away that a token does not (RFC 8725 §3.5: the secret must not be guessable).
 */
export function kidFor (secret: string): string {
  return createHash('sha256').update(`gatehouse-kid:${secret}`).digest('base64url').slice(0, 16)
}

export function accessTokenPayload (user: { id: string, roles: Role[] }, sessionId: string): AccessTokenPayload {
  return { sub: user.id, sid: sessionId, roles: user.roles, jti: randomUUID() }
}

/** Far above any token we issue (~500 bytes); longer ones are refused before any crypto. */
export const MAX_ACCESS_TOKEN_LENGTH = 4096

/**
 * True when the token is spelled exactly as our signer spells it: each segment canonical base64url
 * (the last character's unused bits zero, so no token has a second spelling that verifies alike:
 * RFC 7515 §2, RFC 4648 §3.5), and header and payload exactly what JSON.stringify writes. The JSON
 * check refuses duplicate claim names (RFC 7519 §4 asks to reject them or take the last; a
 * verifier and a logger taking different ones is an attack) with any other hand-made encoding.
 */
export function isCanonicalToken (token: string): boolean {
  const segments = token.split('.')
  return segments.length === 3 && segments.every((segment, index) => {
    const bytes = Buffer.from(segment, 'base64url')
    if (bytes.toString('base64url') !== segment) return false
    if (index === 2) return true
    const text = bytes.toString()
    try {
      return JSON.stringify(JSON.parse(text)) === text
    } catch {
      return false
    }
  })
}

const isRole = (value: unknown): value is Role => ROLES.includes(value as Role)

/**
 * The checks the JWT library does not make: claim types, whole-second times, and `iat` not in the
 * future (RFC 8725 §3.10: validate every claim used). Returns undefined for a token to refuse.
 */
export function readAccessClaims (payload: Record<string, unknown>, nowSeconds: number): AuthenticatedUser | undefined {
  const { sub, sid, roles, jti, iat, exp } = payload
  if (typeof sub !== 'string' || typeof sid !== 'string' || typeof jti !== 'string') return undefined
  if (!Array.isArray(roles) || !roles.every(isRole)) return undefined
  if (!Number.isInteger(iat) || !Number.isInteger(exp)) return undefined
  if ((iat as number) > nowSeconds + CLOCK_TOLERANCE_SECONDS) return undefined
  return { id: sub, sid, roles }
}

/** An opaque refresh token: 256 random bits, base64url (RFC 9700 §4.14; ASVS 3.2.2). */
export function newRefreshToken (): string {
  return randomBytes(32).toString('base64url')
}

/** What the database keeps of a refresh token: a leaked table yields no usable token. */
export function hashRefreshToken (token: string): string {
  return createHash('sha256').update(token).digest('base64url')
}
