import { dictionary } from '@zxcvbn-ts/language-common'
import argon2 from 'argon2'
import { randomBytes } from 'node:crypto'

/** OWASP Password Storage Cheat Sheet, argon2id: 19 MiB, 2 iterations, 1 lane. */
export const HASH_OPTIONS = {
  type: argon2.argon2id,
  memoryCost: 19_456,
  timeCost: 2,
  parallelism: 1
} as const

export const PASSWORD_MIN_LENGTH = 8
/** Refused before hashing, so an attacker cannot make us hash megabytes (ASVS 2.1.2). */
export const PASSWORD_MAX_LENGTH = 128

export function hashPassword (password: string): Promise<string> {
  return argon2.hash(password, HASH_OPTIONS)
}

export async function verifyPassword (hash: string, password: string): Promise<boolean> {
  try {
    return await argon2.verify(hash, password)
  } catch {
    // A malformed stored hash must fail closed, not answer 500.
    return false
  }
}

const PHC_ARGON2 = /^\$(argon2(?:id|i|d))\$v=(\d+)\$([^$]+)\$/

/**
 * True when the hash is weaker than HASH_OPTIONS (another argon2 variant, an older version, less
 * memory or fewer passes): upgrade it at the next login. A stronger hash is left alone, where
 * argon2.needsRehash would "upgrade" it down to exactly HASH_OPTIONS.
 */
export function needsRehash (hash: string): boolean {
  const match = PHC_ARGON2.exec(hash)
  if (!match) return true
  const params = Object.fromEntries(match[3]!.split(',').map((pair) => pair.split('=')))
  return match[1] !== 'argon2id' ||
    Number(match[2]) < 0x13 ||
    !(Number(params.m) >= HASH_OPTIONS.memoryCost) ||
    !(Number(params.t) >= HASH_OPTIONS.timeCost)
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
export async function dummyVerify (password: string): Promise<false> {
  await prepareDummyVerify()
  await verifyPassword(await dummyHash!, password)
  return false
}

/**
 * The 49,233 most common passwords of @zxcvbn-ts/language-common (maintained with zxcvbn-ts,
 * drawn from breach corpora), kept where long enough to pass the length rule (ASVS 2.1.7).
 */
const COMMON_PASSWORDS = new Set(dictionary['passwords-common']
  .map((password) => password.toLowerCase())
  .filter((password) => password.length >= PASSWORD_MIN_LENGTH))

export const isCommonPassword = (password: string) => COMMON_PASSWORDS.has(password.toLowerCase())

/** Length in characters (code points), as JSON Schema's maxLength counts, not UTF-16 units. */
export const characterCount = (text: string) => [...text].length

/**
 * Why a password is refused, or undefined when it is fine. HTTP routes check the length in their
 * schema first (validation_error); the CLI and ADMIN_PASSWORD rely on this alone.
 */
export function passwordProblem (password: string, email: string): string | undefined {
  const length = characterCount(password)
  if (length < PASSWORD_MIN_LENGTH || length > PASSWORD_MAX_LENGTH) {
    return `The password must be ${PASSWORD_MIN_LENGTH} to ${PASSWORD_MAX_LENGTH} characters long.`
  }
  if (password.trim().toLowerCase() === email) return 'The password must not be the email address.'
  if (isCommonPassword(password)) return 'This password is one of the most commonly used; choose another.'
  return undefined
}
