import { compile as compileProxyTrust } from '@fastify/proxy-addr'
import { randomBytes } from 'node:crypto'
import { linkSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { isIP } from 'node:net'
import { EMAIL_LOCAL_PART_MAX_LENGTH, isNewAccountEmail, normaliseEmail } from './auth/email.ts'
import { passwordProblem } from './auth/passwords.ts'
import { withoutPort } from './request-client.ts'
import { dirname, join, resolve } from 'node:path'

type Env = Record<string, string | undefined>

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'

export interface Config {
  production: boolean
  port: number
  host: string
  /** `file:PATH`, a bare path or `:memory:` for SQLite; `postgres://…` for PostgreSQL. */
  databaseUrl: string
  jwt: {
    secret: string
    previousSecrets: string[]
    /** Set when the secret was generated or read from the data folder rather than JWT_SECRET. */
    secretFile?: string
    issuer: string
    audience: string
  }
  /** Lifetimes in whole seconds. */
  accessTokenTtl: number
  refreshTokenTtl: number
  refreshReuseGrace: number
  /** Seconds after sign-in that a session ends, refreshed or not; 0: no limit. */
  sessionMaxAge: number
  /** How long a request may take to arrive, headers and body, in whole seconds. */
  requestTimeout: number
  admin?: { email: string, password: string }
  corsOrigins: string[]
  rateLimit: { ipMax: number, accountMax: number }
  redisUrl?: string
  /** Fastify's trustProxy: whose X-Forwarded-For to believe for the client IP (rate limits, sessions). */
  trustProxy: boolean | ((address: string, hop: number) => boolean)
  logLevel: LogLevel
}

export class ConfigError extends Error {
  constructor (readonly problems: string[]) {
    super(`Invalid configuration:\n  - ${problems.join('\n  - ')}`)
    this.name = 'ConfigError'
  }
}

/** The shortest signing secret we accept (RFC 7518 §3.2: an HS256 key must be at least 256 bits). */
const MIN_SECRET_BYTES = 32
const DEFAULT_DATABASE_URL = 'file:./data/gatehouse.db'
const LOG_LEVELS: LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']
/** Ten years: longer lifetimes are mistakes, and would overflow the dates they produce. */
const MAX_DURATION_SECONDS = 10 * 365 * 86400
const DURATION_UNITS: Record<string, number> = { '': 1, s: 1, m: 60, h: 3600, d: 86400 }

/** `900`, `900s`, `15m`, `12h`, `30d` → seconds; undefined when the text is not a duration. */
export function parseDuration (text: string): number | undefined {
  const match = /^(\d+)\s*([smhd]?)$/.exec(text.trim())
  if (!match) return undefined
  return Number(match[1]) * DURATION_UNITS[match[2]!]!
}

// Schemes are case-insensitive (RFC 3986 §3.1): POSTGRES:// is postgres://.
export const isPostgresUrl = (url: string) => /^postgres(ql)?:\/\//i.test(url)

/**
 * Whether the URL parser cut a user name or password short at an unencoded `@` followed by a `/`,
 * `?` or `#`, taking the rest for the path, query or fragment (`postgres://u:p@ss#x@db/g` names the
 * host `ss`): an `@` in the fragment (no database or Redis URL has one), in a query parameter's
 * name, or in the path before a `:port` or another `/` (`/x@db:5432/g`). An `@` in a value
 * (`?application_name=api@eu`) or a database's name (`/my@db`) is the URL's own.
 */
const misreadUserInfo = (parsed: URL) => parsed.hash.includes('@') ||
  [...parsed.searchParams.keys()].some((name) => name.includes('@')) || /@[^/]*[:/]/.test(parsed.pathname)

/** What DATABASE_URL and REDIS_URL say of a password that the URL parser would misread. */
const ENCODE_AT = 'percent-encode @, /, ? and # in its user name and password (@ as %40)'

/**
 * The URL without its password, in the userinfo or in a query parameter (`?password=`,
 * `?sslpassword=`), for messages and logs. A path (SQLite) has none; a URL that does not parse
 * (`u:pa/ss@…`) is shown by its scheme alone, as where its password ends cannot be told, and one
 * the parser misread (misreadUserInfo) from its last `@` on.
 */
export function redactUrl (url: string): string {
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(url)?.[0]
  if (!scheme) return url
  try {
    const parsed = new URL(url)
    if (misreadUserInfo(parsed)) return `${scheme}…@${redactUrl(scheme + url.slice(url.lastIndexOf('@') + 1)).slice(scheme.length)}`
    parsed.password = ''
    for (const key of [...parsed.searchParams.keys()]) if (/pass/i.test(key)) parsed.searchParams.set(key, 'redacted')
    return parsed.toString()
  } catch {
    return `${scheme}…`
  }
}

/**
 * Why DATABASE_URL cannot be used, or undefined. A mistyped scheme (`postgress://`, `mysql://`,
 * `postgres:/db` with one slash) must not quietly become a SQLite file of that name: each instance
 * of a cluster would get its own. A one-letter "scheme" is a Windows drive.
 */
function databaseUrlProblem (url: string): string | undefined {
  const scheme = /^([a-z][a-z0-9+.-]+):/i.exec(url)?.[1]?.toLowerCase()
  // `postgres//db/x` is a relative path to SQLite, but surely a URL that lost its colon.
  const got = scheme === undefined
    ? /^(postgres(ql)?|file)\/\//i.test(url) ? 'a URL without the colon after its scheme' : undefined
    : scheme === 'file' ? fileUrlProblem(url.slice('file:'.length)) : isPostgresUrl(url) ? undefined : `a "${scheme}:" URL that is neither`
  if (got) return `DATABASE_URL must be postgres://… (or postgresql://…) for PostgreSQL, or file:PATH or a path for SQLite (got ${got})`
  if (isPostgresUrl(url) && URL.canParse(url) && misreadUserInfo(new URL(url))) return `DATABASE_URL has an @ after its host: ${ENCODE_AT}`
  return undefined
}

/**
 * What is wrong with the part after `file:`, or undefined. `file://./data/g.db` names a host
 * (`.`): read as a path it is /data/g.db, at the filesystem root. SQLite's URI parameters
 * (`?mode=memory`) are not read: they would become part of the file's name.
 */
function fileUrlProblem (path: string): string | undefined {
  if (path.startsWith('//') && !path.startsWith('///')) return 'a file:// URL with a host; write file:PATH, or file:///ABSOLUTE/PATH'
  if (path.includes('?')) return 'a file: URL with a query string, which SQLite would not read'
  return undefined
}

/** Why REDIS_URL cannot be used, or undefined: ioredis would crash on a bad database number. */
function redisUrlProblem (url: string): string | undefined {
  let parsed: URL | undefined
  try {
    parsed = new URL(url)
  } catch {}
  if (!parsed || !['redis:', 'rediss:'].includes(parsed.protocol) || parsed.hostname === '' ||
    !/^(\/\d*)?$/.test(parsed.pathname)) {
    return `REDIS_URL must be redis://[user:password@]host[:port][/database number], or rediss://… for TLS (got "${redactUrl(url)}")`
  }
  if (misreadUserInfo(parsed)) return `REDIS_URL has an @ after its host: ${ENCODE_AT}`
  return undefined
}

/**
 * Why a CORS_ORIGINS entry is not an origin, or undefined. Browsers send `Origin` as scheme, host
 * and port only, compared exactly: `http://localhost:5173/` or `*` would silently match nothing.
 */
function corsOriginProblem (entry: string): string | undefined {
  let origin: string | undefined
  try {
    origin = new URL(entry).origin
  } catch {}
  if (origin === entry) return undefined
  const hint = origin && origin !== 'null' ? `; the origin of that URL is "${origin}"` : ''
  return `CORS_ORIGINS must list origins such as https://app.example.com, without a path or a trailing slash (got "${entry}"${hint})`
}

/** DATABASE_URL as set (spaces around it dropped), or the SQLite default, and why it cannot be used if it cannot. */
function readDatabaseUrl (env: Env): { url: string, problem: string | undefined } {
  const url = env.DATABASE_URL?.trim() || DEFAULT_DATABASE_URL
  return { url, problem: databaseUrlProblem(url) }
}

/** DATABASE_URL, or the SQLite default; a ConfigError when it cannot be used. For the CLI tools. */
export function databaseUrlFrom (env: Env = process.env): string {
  const { url, problem } = readDatabaseUrl(env)
  if (problem) throw new ConfigError([problem])
  return url
}

/** `file:PATH`, a bare path, or `:memory:` → what the SQLite driver opens. */
export function sqlitePath (databaseUrl: string): string {
  if (/^(file:)?:memory:$/i.test(databaseUrl)) return ':memory:'
  return resolve(/^file:/i.test(databaseUrl) ? databaseUrl.slice('file:'.length) : databaseUrl)
}

const PROXY_KEYWORDS = new Set(['loopback', 'linklocal', 'uniquelocal'])

/**
 * `false` (default), `true`, a hop count (trust that many proxies in front), or their addresses,
 * CIDR ranges and the keywords loopback, linklocal, uniquelocal; undefined when none of these.
 * A list is matched as Fastify would (@fastify/proxy-addr), with any port an X-Forwarded-For entry
 * carries taken off first: read whole, `10.0.0.5:41000` is no address, so a trusted proxy written
 * with its port would be taken for the client.
 */
function parseTrustProxy (text: string): Config['trustProxy'] | undefined {
  const value = text.toLowerCase()
  if (value === 'false') return false
  if (value === 'true') return true
  if (/^\d+$/.test(value)) {
    const hops = Number(value)
    return (_address, hop) => hop < hops
  }
  const entries = value.split(',').map((entry) => entry.trim())
  const valid = entries.every((entry) => {
    const [address = '', bits, extra] = entry.split('/')
    return extra === undefined && (PROXY_KEYWORDS.has(entry) ||
      (isIP(address) !== 0 && (bits === undefined || (/^\d+$/.test(bits) && Number(bits) <= (isIP(address) === 4 ? 32 : 128)))))
  })
  if (!valid) return undefined
  const trusted = compileProxyTrust(entries)
  return (address, hop) => trusted(withoutPort(address), hop)
}

/**
 * Reads the environment into a typed Config. Every bad variable is reported at once, by name,
 * so an operator fixes them in one go rather than one restart at a time.
 */
export function loadConfig (env: Env = process.env): Config {
  const problems: string[] = []
  const text = (name: string, fallback: string): string => {
    const value = env[name]?.trim()
    return value === undefined || value === '' ? fallback : value
  }
  const integer = (name: string, fallback: number, min: number, max: number): number => {
    const raw = text(name, String(fallback))
    const value = /^\d+$/.test(raw) ? Number(raw) : NaN
    if (!(value >= min && value <= max)) {
      problems.push(`${name} must be a whole number from ${min} to ${max} (got "${raw}")`)
      return fallback
    }
    return value
  }
  const duration = (name: string, fallback: string, min: number): number => {
    const raw = text(name, fallback)
    const value = parseDuration(raw)
    if (value === undefined || value < min || value > MAX_DURATION_SECONDS) {
      problems.push(`${name} must be a duration from ${min}s to 10 years such as 900, 15m or 30d (got "${raw}")`)
      return parseDuration(fallback)!
    }
    return value
  }
  const list = (name: string): string[] =>
    (env[name] ?? '').split(',').map((item) => item.trim()).filter(Boolean)

  // As written in a compose file or .env: `Production`, or with a space after it, is production too.
  const production = env.NODE_ENV?.trim().toLowerCase() === 'production'
  const { url: databaseUrl, problem: databaseProblem } = readDatabaseUrl(env)
  if (databaseProblem) problems.push(databaseProblem)
  const redisUrl = env.REDIS_URL?.trim()
  const redisProblem = redisUrl ? redisUrlProblem(redisUrl) : undefined
  if (redisProblem) problems.push(redisProblem)
  const corsOrigins = list('CORS_ORIGINS')
  for (const origin of corsOrigins) {
    const problem = corsOriginProblem(origin)
    if (problem) problems.push(problem)
  }

  const logLevel = text('LOG_LEVEL', 'info') as LogLevel
  if (!LOG_LEVELS.includes(logLevel)) problems.push(`LOG_LEVEL must be one of ${LOG_LEVELS.join(', ')} (got "${logLevel}")`)

  const previousSecrets = list('JWT_PREVIOUS_SECRETS')
  for (const [index, secret] of previousSecrets.entries()) {
    if (Buffer.byteLength(secret) < MIN_SECRET_BYTES) {
      problems.push(`JWT_PREVIOUS_SECRETS: entry ${index + 1} is shorter than ${MIN_SECRET_BYTES} bytes`)
    }
  }

  const adminEmail = env.ADMIN_EMAIL?.trim()
  const adminPassword = env.ADMIN_PASSWORD
  if (Boolean(adminEmail) !== Boolean(adminPassword)) {
    problems.push('ADMIN_EMAIL and ADMIN_PASSWORD must be set together')
  }
  // Checked as sign-up checks them (normalised email, password policy), so that a refused one
  // opens no database.
  if (adminEmail && !isNewAccountEmail(normaliseEmail(adminEmail))) problems.push(`ADMIN_EMAIL is not an email address with at most ${EMAIL_LOCAL_PART_MAX_LENGTH} characters before the @ (got "${adminEmail}")`)
  const adminPasswordProblem = adminEmail && adminPassword ? passwordProblem(adminPassword, normaliseEmail(adminEmail)) : undefined
  if (adminPasswordProblem) problems.push(`ADMIN_PASSWORD is refused: ${adminPasswordProblem}`)
  // Whitespace around a password is part of it; around a variable's value (a secret file's
  // newline) it is almost surely not, and the admin could never sign in as typed.
  else if (adminPassword && adminPassword !== adminPassword.trim()) {
    problems.push('ADMIN_PASSWORD has whitespace (a newline?) before or after it, which would be part of the password: remove it')
  }

  const trustProxyText = text('TRUST_PROXY', 'false')
  const trustProxy = parseTrustProxy(trustProxyText)
  if (trustProxy === undefined) {
    problems.push(`TRUST_PROXY must be true, false, a hop count, or proxy addresses/CIDRs (got "${trustProxyText}")`)
  }

  const config: Omit<Config, 'jwt'> & { jwt: Omit<Config['jwt'], 'secret'> } = {
    production,
    port: integer('PORT', 3000, 0, 65535),
    host: text('HOST', '127.0.0.1'),
    databaseUrl,
    jwt: {
      previousSecrets,
      issuer: text('JWT_ISSUER', 'gatehouse'),
      audience: text('JWT_AUDIENCE', 'gatehouse')
    },
    accessTokenTtl: duration('ACCESS_TOKEN_TTL', '15m', 1),
    refreshTokenTtl: duration('REFRESH_TOKEN_TTL', '30d', 1),
    refreshReuseGrace: duration('REFRESH_REUSE_GRACE', '10s', 0),
    sessionMaxAge: duration('SESSION_MAX_AGE', '0', 0),
    requestTimeout: duration('REQUEST_TIMEOUT', '30s', 1),
    ...(adminEmail && adminPassword ? { admin: { email: adminEmail, password: adminPassword } } : {}),
    corsOrigins,
    rateLimit: {
      ipMax: integer('RATE_LIMIT_IP_MAX', 30, 1, 1_000_000),
      accountMax: integer('RATE_LIMIT_ACCOUNT_MAX', 10, 1, 1_000_000)
    },
    ...(redisUrl ? { redisUrl } : {}),
    trustProxy: trustProxy ?? false,
    logLevel
  }

  if (config.accessTokenTtl > config.refreshTokenTtl) {
    // An access token would outlive the session it belongs to on every stateless route.
    problems.push(`ACCESS_TOKEN_TTL (${config.accessTokenTtl}s) must not be longer than REFRESH_TOKEN_TTL (${config.refreshTokenTtl}s)`)
  }
  if (config.sessionMaxAge > 0 && config.accessTokenTtl > config.sessionMaxAge) {
    problems.push(`ACCESS_TOKEN_TTL (${config.accessTokenTtl}s) must not be longer than SESSION_MAX_AGE (${config.sessionMaxAge}s)`)
  }
  const secret = resolveSecret(env.JWT_SECRET, production, databaseUrl, problems)
  if (problems.length > 0) throw new ConfigError(problems)
  return { ...config, jwt: { ...config.jwt, ...secret! } }
}

/**
 * JWT_SECRET when set. Outside production a missing secret is generated once and kept beside the
 * database (mode 0600), so tokens survive restarts; production refuses to start without one.
 */
function resolveSecret (
  configured: string | undefined,
  production: boolean,
  databaseUrl: string,
  problems: string[]
): { secret: string, secretFile?: string } | undefined {
  if (configured) {
    // Spaces around it are not part of it (a secret file's trailing newline), as for
    // JWT_PREVIOUS_SECRETS and the kept file: moved there verbatim at a rotation, it is the same key.
    const secret = configured.trim()
    if (Buffer.byteLength(secret) < MIN_SECRET_BYTES) {
      problems.push(`JWT_SECRET must be at least ${MIN_SECRET_BYTES} bytes`)
      return undefined
    }
    return { secret }
  }
  if (production) {
    problems.push(`JWT_SECRET is required in production (at least ${MIN_SECRET_BYTES} bytes)`)
    return undefined
  }
  // A refused configuration leaves nothing behind: no folder, no secret file named after a typo.
  if (problems.length > 0) return undefined
  // Beside the SQLite file, or in ./data for PostgreSQL.
  const path = isPostgresUrl(databaseUrl) ? resolve('data', 'gatehouse.db') : sqlitePath(databaseUrl)
  if (path === ':memory:') return { secret: randomBytes(48).toString('base64url') }
  const secretFile = join(dirname(path), 'jwt-secret')
  try {
    return { secret: readKeptSecret(secretFile) ?? keepSecret(secretFile, randomBytes(48).toString('base64url')), secretFile }
  } catch (error) {
    problems.push(`JWT_SECRET is not set and ${(error as Error).message}`)
    return undefined
  }
}

/** The secret kept in `secretFile`, or undefined when there is none yet. */
function readKeptSecret (secretFile: string): string | undefined {
  let kept: string
  try {
    kept = readFileSync(secretFile, 'utf8').trim()
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    throw new Error(`${secretFile} cannot be read: ${(error as Error).message}`)
  }
  // Never replaced silently: tokens signed with what it held would stop verifying.
  if (Buffer.byteLength(kept) < MIN_SECRET_BYTES) {
    throw new Error(`${secretFile} holds fewer than ${MIN_SECRET_BYTES} bytes: delete it to generate a new secret, or set JWT_SECRET`)
  }
  return kept
}

/**
 * Keeps `secret` in `secretFile` (mode 0600) unless another process starting at the same moment
 * kept its own first, and returns the secret that is kept, so every process signs with the same
 * one. The file appears whole or not at all: it is written under a draft name, then hard-linked
 * into place, which fails when the name is taken.
 */
export function keepSecret (secretFile: string, secret: string): string {
  const draft = `${secretFile}.${process.pid}-${randomBytes(6).toString('hex')}`
  try {
    mkdirSync(dirname(secretFile), { recursive: true, mode: 0o700 })
    writeFileSync(draft, secret + '\n', { mode: 0o600, flag: 'wx' })
    linkSync(draft, secretFile)
    return secret
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') {
      throw new Error(`${secretFile} cannot be written: ${(error as Error).message}`)
    }
    const kept = readKeptSecret(secretFile)
    if (kept === undefined) throw new Error(`${secretFile} vanished while it was being created`)
    return kept
  } finally {
    rmSync(draft, { force: true })
  }
}
