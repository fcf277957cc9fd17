import { hash, parseOptions, verify, type Options } from '@node-rs/argon2'
import { dictionary } from '@zxcvbn-ts/language-common'
import { randomBytes } from 'node:crypto'
import { availableParallelism } from 'node:os'
import { apiError } from '../errors.ts'

// The hasher is @node-rs/argon2, not the `argon2` package: the same PHC strings (each verifies
// the other's hashes), less CPU per verify here, and a prebuilt binary instead of a compile at
// install (BENCHMARKS.md, "Password hashing").

/** argon2id (Algorithm.Argon2id, a const enum the compiler cannot import). */
const ARGON2ID = 2

/** OWASP Password Storage Cheat Sheet, argon2id: 19 MiB, 2 iterations, 1 lane. */
export const HASH_OPTIONS: Options = {
  algorithm: ARGON2ID,
  memoryCost: 19_456,
  timeCost: 2,
  parallelism: 1
}

/**
 * Hashes run on libuv's thread pool (UV_THREADPOOL_SIZE threads, 4 by default); at most one fewer
 * than the cores or than the pool's threads at once, so a burst of logins queues here instead of
 * taking every core (and 19 MiB each) from the requests around it, or every pool thread from the
 * DNS lookups and file reads that share the pool.
 */
export const hashSlots = (cores: number, poolThreads: number) => Math.max(1, Math.min(cores, poolThreads) - 1)

/** The pool's size as libuv reads UV_THREADPOOL_SIZE: a whole number from 1 to 1024, 4 when unset. */
export function poolThreads (setting: string | undefined): number {
  if (setting === undefined) return 4
  const threads = Number.parseInt(setting, 10)
  return Number.isNaN(threads) || threads < 1 ? 1 : Math.min(threads, 1024)
}

export const HASH_SLOTS = hashSlots(availableParallelism(), poolThreads(process.env.UV_THREADPOOL_SIZE))
let hashesRunning = 0
const waitingForSlot: Array<() => void> = []

/** Whether the client a hash is for still waits for its answer. */
export type StillWaiting = () => boolean
const always: StillWaiting = () => true

/**
 * Instead of a hash whose client closed the connection while it queued: nginx's 499, "client
 * closed request", which only the request log sees.
 */
const clientGone = () => apiError(499, 'client_closed_request', 'The client closed the connection before its password could be checked.')

async function inHashSlot<T> (work: () => Promise<T>, stillWaiting: StillWaiting): Promise<T> {
  if (hashesRunning < HASH_SLOTS) hashesRunning++
  else await new Promise<void>((resolve) => waitingForSlot.push(resolve))
  try {
    // A flood of sign-ins that drops its connections must not keep the slots busy after it left.
    if (!stillWaiting()) throw clientGone()
    return await work()
  } finally {
    // Hand the slot straight to the next in line, so no newcomer can slip in between.
    const next = waitingForSlot.shift()
    if (next) next()
    else hashesRunning--
  }
}

export const PASSWORD_MIN_LENGTH = 8
/** Refused before hashing, so an attacker cannot make us hash megabytes (ASVS 2.1.2). */
export const PASSWORD_MAX_LENGTH = 128

/**
 * The form a password is hashed, compared and judged in: Unicode NFKC (NIST SP 800-63B §5.1.1.2),
 * so a password typed where é is one code point or an e and a combining accent is one password,
 * and fullwidth letters spell the password they look like.
 */
const normalised = (password: string) => password.normalize('NFKC')

/** The argon2id hash of a password; 499 instead when `stillWaiting` says its client left while it queued. */
export function hashPassword (password: string, stillWaiting = always): Promise<string> {
  return inHashSlot(() => hash(normalised(password), HASH_OPTIONS), stillWaiting)
}

/**
 * How a password matches a stored hash: `as-typed` for a hash made of it as typed, before
 * passwords were normalised, which a sign-in replaces; false when it does not match.
 */
export type PasswordMatch = 'normalised' | 'as-typed' | false

/** How the password matches the stored hash; 499 instead when `stillWaiting` says its client left while it queued. */
export async function matchPassword (stored: string, password: string, stillWaiting = always): Promise<PasswordMatch> {
  const form = normalised(password)
  return inHashSlot(async () => {
    if (await verifies(stored, form)) return 'normalised'
    // A second verify only for a password normalisation changes, whose hash may predate it; an
    // unknown email's dummyVerify comes here too, so the time spent tells no one which is which.
    return form !== password && await verifies(stored, password) ? 'as-typed' : false
  }, stillWaiting)
}

/** Whether the password matches the stored hash (matchPassword). */
export async function verifyPassword (stored: string, password: string, stillWaiting = always): Promise<boolean> {
  return await matchPassword(stored, password, stillWaiting) !== false
}

async function verifies (stored: string, password: string): Promise<boolean> {
  try {
    return await verify(stored, password)
  } catch {
    // A malformed stored hash must fail closed, not answer 500.
    return false
  }
}

/**
 * The stored hash `current` when it is no longer `verified`, the one this request checked the
 * password against, yet still verifies that password: another sign-in upgraded it meanwhile
 * (needsRehash, or a hash of the password as typed), and the password is unchanged. Undefined
 * when the password itself changed, or the account is gone. One more verify, spent only when a
 * conditional write lost such a race.
 */
export async function rehashedMeanwhile (current: string | undefined, verified: string, password: string, stillWaiting = always): Promise<string | undefined> {
  return current !== undefined && current !== verified && await verifyPassword(current, password, stillWaiting) ? current : undefined
}

/**
 * True when the hash is weaker than HASH_OPTIONS (another argon2 variant, an older version, less
 * memory or fewer passes): upgrade it at the next login. A stronger hash is left alone.
 */
export function needsRehash (stored: string): boolean {
  try {
    const params = parseOptions(stored)
    return params.algorithm !== ARGON2ID ||
      params.version !== 1 || // Version.V0x13, the current one
      params.memoryCost < HASH_OPTIONS.memoryCost! ||
      params.timeCost < HASH_OPTIONS.timeCost!
  } catch {
    return true
  }
}

let dummyHash: Promise<string> | undefined

/** Builds the dummy hash ahead of the first login, so the first unknown email is not slower. */
export async function prepareDummyVerify (): Promise<void> {
  dummyHash ??= hashPassword(randomBytes(16).toString('base64url'))
  await dummyHash
}

/**
 * Spends the same time as a real verify for an email we do not know, so login timing does not
 * reveal which emails have accounts (ASVS 2.2.x, OWASP Authentication Cheat Sheet).
 */
export async function dummyVerify (password: string, stillWaiting = always): Promise<false> {
  await prepareDummyVerify()
  await verifyPassword(await dummyHash!, password, stillWaiting)
  return false
}

/**
 * The 49,233 most common passwords of @zxcvbn-ts/language-common (maintained with zxcvbn-ts,
 * drawn from breach corpora), kept where long enough to pass the length rule (ASVS 2.1.7).
 */
const COMMON_PASSWORDS = new Set(dictionary['passwords-common']
  .map((password) => password.toLowerCase())
  .filter((password) => password.length >= PASSWORD_MIN_LENGTH))

const isCommonPassword = (password: string) => COMMON_PASSWORDS.has(password.toLowerCase())

/** Length in characters (code points), as JSON Schema's maxLength counts, not UTF-16 units. */
const characterCount = (text: string) => [...text].length

/** The length every password must have, set or presented (the schemas' Password and NewPassword). */
export function hasPasswordLength (password: string): boolean {
  const length = characterCount(password)
  return length >= PASSWORD_MIN_LENGTH && length <= PASSWORD_MAX_LENGTH
}

/**
 * Why a password is refused, or undefined when it is fine. HTTP routes check the length in their
 * schema first (validation_error); the CLI and ADMIN_PASSWORD rely on this alone.
 */
export function passwordProblem (password: string, email: string): string | undefined {
  if (!hasPasswordLength(password)) {
    return `The password must be ${PASSWORD_MIN_LENGTH} to ${PASSWORD_MAX_LENGTH} characters long.`
  }
  // Whitespace around a password adds nothing a guesser would not try: ` password123 ` is as weak,
  // and ` 123456 ` is no 8-character password.
  const trimmed = normalised(password).trim()
  if (characterCount(trimmed) < PASSWORD_MIN_LENGTH) {
    return `The password must have ${PASSWORD_MIN_LENGTH} characters besides any whitespace around it.`
  }
  if (trimmed.toLowerCase() === email) return 'The password must not be the email address.'
  if (isCommonPassword(trimmed)) return 'This password is one of the most commonly used; choose another.'
  return undefined
}
