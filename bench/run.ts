// npm run bench: Gatehouse beside bare Fastify and an Express 5 + jsonwebtoken peer, driven by
// autocannon over loopback in interleaved rounds; prints the table and the issue's ratios and
// writes BENCHMARKS.md. See `npm run bench -- --help`.
import type autocannon from 'autocannon'
import { execFileSync } from 'node:child_process'
import { randomBytes, randomInt } from 'node:crypto'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { HASHERS, compatibility, hashWith, hasherInUse, measureVerify, type Compatibility, type HasherName, type HasherRound } from './lib/hasher.ts'
import { inBatches, measure, openLoop, percentile, postJson, type Measurement, type Target } from './lib/load.ts'
import { HASH_SLOTS } from '../src/auth/passwords.ts'
import { VERIFIED_TOKENS_CACHED } from '../src/auth/verified-tokens.ts'
import { isPostgresUrl, redactUrl } from '../src/config.ts'
import { DEFAULT_POSTGRES_URL, postgresInfo, type PostgresInfo } from './lib/postgres.ts'
import { ROOT, rssBytes, startServer, waitIdle, type Server } from './lib/processes.ts'
import { reissuedTokens } from './lib/tokens.ts'
import {
  HASHER_HEADERS, RATIO_HEADERS, ROW_HEADERS, compatibilityLines, hasherCells, machine, markdownTable, median, ms,
  ratio, ratioCells, rowCells, summarise, textTable, verdict, versions, type Machine, type Ratio, type Row
} from './lib/report.ts'
import {
  BENCH_PASSWORD, DATABASE_NAMES, emailOf, prepareDatabase, type DatabaseChoice, type DatabaseKind, type SeededDatabase
} from './lib/seed.ts'

const HELP = `npm run bench [-- options]

  (no option)        full run: 100,000 users, 10 interleaved rounds of 5 s per target (new server
                     processes each round); writes BENCHMARKS.md
  --quick            CI smoke run: 1,000 users, 1 round of 1 s; prints only (--write: writes its results, marked quick)
  --database URL     Gatehouse (and the Express peer) on a fresh PostgreSQL database created on that server
                     for the run and dropped after (URL of any existing database there, used to create it);
                     "--database sqlite" or no option: a SQLite file, the default
  --postgres         the same with ${DEFAULT_POSTGRES_URL} (or the --database URL)
                     each database writes its own section of BENCHMARKS.md
  --users N          scale mode: GET /auth/me and POST /auth/login with N users against ${'10,000'}
                     (with --quick or --suite: the user count of that run instead)
  --suite            run the full suite even with --users
  --rounds R, --duration S, --connections C, --targets id,id   override the defaults
  --profile          run the app with --cpu-prof; the profile lands in bench/profiles/
  --app-env K=V      extra environment for the app (repeatable), e.g. --app-env MALLOC_ARENA_MAX=2
  --note TEXT        a line about the conditions of the run, written into its section of BENCHMARKS.md
  --write / --no-write
                     write BENCHMARKS.md or not (full runs write by default; --targets and --profile runs never do)
`

const { values: args } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    database: { type: 'string' },
    postgres: { type: 'boolean', default: false },
    suite: { type: 'boolean', default: false },
    users: { type: 'string' },
    baseline: { type: 'string', default: '10000' },
    rounds: { type: 'string' },
    duration: { type: 'string' },
    connections: { type: 'string', default: '50' },
    targets: { type: 'string' },
    profile: { type: 'boolean', default: false },
    'app-env': { type: 'string', multiple: true, default: [] },
    note: { type: 'string' },
    write: { type: 'boolean' },
    'no-write': { type: 'boolean', default: false },
    help: { type: 'boolean', default: false }
  }
})
if (args.help) {
  console.log(HELP)
  process.exit(0)
}

const count = (text: string | undefined, fallback: number) => {
  if (text === undefined) return fallback
  const value = Number(text.replace(/[_,]/g, ''))
  if (!(value > 0)) throw new Error(`not a positive number: ${text}`)
  return value
}

const quick = args.quick
const databaseChoice: DatabaseChoice = (() => {
  const url = args.database ?? (args.postgres ? DEFAULT_POSTGRES_URL : 'sqlite')
  if (url === 'sqlite') {
    if (args.postgres) throw new Error('--postgres with --database sqlite: pick one')
    return { kind: 'sqlite' }
  }
  if (!isPostgresUrl(url)) throw new Error(`--database takes a postgres:// URL or "sqlite", not ${url}`)
  return { kind: 'postgres', adminUrl: url }
})()
const databaseName = DATABASE_NAMES[databaseChoice.kind]
const scaleMode = args.users !== undefined && !quick && !args.suite
const settings = {
  users: count(args.users, quick ? 1_000 : 100_000),
  rounds: count(args.rounds, quick ? 1 : 10),
  // autocannon stops on its one-second tick: whole seconds only.
  seconds: Math.max(1, Math.round(count(args.duration, quick ? 1 : 5))),
  warmupSeconds: quick ? 0 : 1,
  /** Distinct signed-in users whose access tokens the guarded routes cycle through. */
  tokenUsers: quick ? 10 : 50,
  hasherSeconds: quick ? 0.5 : 2,
  connections: count(args.connections, 50),
  stormLoginsPerSecond: 20,
  /** Every server is a new process in every round (see runRounds). */
  freshProcessesEachRound: true
}
/** A run of some targets, or of a profiled app, is not the whole measurement BENCHMARKS.md reports. */
const partial = args.targets !== undefined || args.profile
const write = !args['no-write'] && !partial && (args.write ?? !quick)
if (partial && args.write) process.stderr.write('--targets and --profile runs print only: BENCHMARKS.md is not written\n')
const RESULTS = join(ROOT, 'bench/results')
const PROFILES = join(ROOT, 'bench/profiles')
const begun = performance.now()
const say = (line: string) => process.stderr.write(`[${((performance.now() - begun) / 1000).toFixed(1).padStart(5)} s] ${line}\n`)

/** The guarded route that reads nothing but the access token. */
const STATELESS_ROUTE = '/me/permissions'
const STATELESS_NOTE = 'The stateless guarded route is GET /me/permissions: authenticate (signature and claims, or the ' +
  'verified-token cache), then the roles of the token mapped through the permission table; no database read. ' +
  'Its answer carries the security headers every API answer carries (CSP, HSTS, nosniff, X-Frame-Options) and ' +
  'Cache-Control: no-store; bare Fastify sends none of them, and the app logs at warn through a per-request child logger.'

interface Session { access: string, refresh: string }

interface App {
  server: Server
  database: SeededDatabase
  users: number
  /** Access tokens of `tokenUsers` distinct users, for the guarded routes. */
  sessions: Session[]
  /** Refresh tokens never presented yet, newest last (from logins). */
  freshRefresh: string[]
  loginBody (): { email: string, password: string }
}

const appEnv = (databaseUrl: string, secret: string): Record<string, string> => ({
  NODE_ENV: 'production',
  LOG_LEVEL: 'warn',
  JWT_SECRET: secret,
  DATABASE_URL: databaseUrl,
  ACCESS_TOKEN_TTL: '2h',
  RATE_LIMIT_IP_MAX: '1000000',
  RATE_LIMIT_ACCOUNT_MAX: '1000000',
  ...Object.fromEntries(args['app-env'].map((pair) => [pair.slice(0, pair.indexOf('=')), pair.slice(pair.indexOf('=') + 1)]))
})

async function login (app: { server: Server }, index: number): Promise<Session> {
  const { status, body } = await postJson(app.server.url, '/auth/login', { email: emailOf(index), password: BENCH_PASSWORD })
  if (status !== 200) throw new Error(`login of ${emailOf(index)} answered ${status}: ${JSON.stringify(body)}`)
  const { access_token: access, refresh_token: refresh } = body as { access_token: string, refresh_token: string }
  return { access, refresh }
}

/** `n` distinct user indexes spread over the whole table. */
function distinctUsers (n: number, users: number): number[] {
  const picked = new Set<number>()
  while (picked.size < Math.min(n, users)) picked.add(randomInt(users))
  return [...picked]
}

async function startApp (name: string, database: SeededDatabase, secret: string): Promise<App> {
  const users = database.users
  const { script, nodeArgs } = builtServer()
  const server = await startServer({
    name,
    script,
    env: appEnv(database.url, secret),
    readyPath: '/health',
    nodeArgs: [...nodeArgs, ...(args.profile ? ['--cpu-prof', `--cpu-prof-dir=${PROFILES}`] : [])]
  })
  const app: App = {
    server,
    database,
    users,
    sessions: [],
    freshRefresh: [],
    loginBody: () => ({ email: emailOf(randomInt(users)), password: BENCH_PASSWORD })
  }
  app.sessions = await inBatches(distinctUsers(settings.tokenUsers, users), 4, (index) => login(app, index))
  return app
}

let built: { script: string, nodeArgs: string[] } | undefined
/**
 * The app as `npm start` runs it: compiled once per run by `npm run build` into dist/, started
 * with the node flags of package.json's start script.
 */
function builtServer (): { script: string, nodeArgs: string[] } {
  if (!built) {
    const start = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts.start ?? ''
    const command = /^(?:exec\s+)?node((?:\s+--\S+)*)\s+(dist\/\S+\.js)$/.exec(start.trim())
    if (!command) throw new Error(`package.json's start script is not "[exec] node [--flags] dist/<file>.js": ${start}`)
    execFileSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', join(ROOT, 'tsconfig.build.json')], { cwd: ROOT, stdio: 'inherit' })
    built = { script: command[2]!, nodeArgs: command[1]!.trim().split(/\s+/).filter(Boolean) }
  }
  return built
}

/** The app's database as a Target field, when it is a process of its own whose CPU can be read. */
const dbOf = (app: App): Pick<Target, 'database'> => app.database.cpu ? { database: app.database.cpu } : {}

const bearerRequests = (app: App, path: string): autocannon.Request[] =>
  app.sessions.map(({ access }) => ({ method: 'GET', path, headers: { authorization: `Bearer ${access}` } }))

/**
 * The stateless route with a token the app has not verified before on every request: twice as many
 * tokens as its verified-token cache holds, taken in turn by all connections, so each has left the
 * cache (oldest first) before it comes round again. Every request pays the decode, the HMAC and the
 * claim checks; the load generator also builds each request anew, which costs it some CPU.
 */
function newTokensTarget (app: App, secret: string): Target {
  const tokens = reissuedTokens(app.sessions[0]!.access, secret, 2 * VERIFIED_TOKENS_CACHED)
  let next = 0
  return {
    id: 'guarded-new-tokens',
    label: `Gatehouse GET ${STATELESS_ROUTE}, every token new`,
    server: app.server,
    ...dbOf(app),
    requests: () => [{
      method: 'GET',
      path: STATELESS_ROUTE,
      setupRequest: (request) => ({ ...request, headers: { authorization: `Bearer ${tokens[next++ % tokens.length]}` } })
    }]
  }
}

const collectRefresh = (app: App) => (body: unknown) => {
  const token = (body as { refresh_token?: unknown }).refresh_token
  if (typeof token === 'string') app.freshRefresh.push(token)
  if (app.freshRefresh.length > 2000) app.freshRefresh.splice(0, 1000)
}

function loginTarget (id: string, label: string, app: App, connections?: number): Target {
  const onOk = collectRefresh(app)
  return {
    id,
    label,
    server: app.server,
    ...dbOf(app),
    ...(connections ? { connections } : {}),
    requests: () => [{
      method: 'POST',
      path: '/auth/login',
      headers: { 'content-type': 'application/json' },
      setupRequest: (request) => ({ ...request, body: JSON.stringify(app.loginBody()) }),
      onResponse: (status, body) => { if (status === 200) onOk(JSON.parse(body)) }
    }]
  }
}

/**
 * Each refresh uses up its token and answers the next: every connection takes an unused token
 * from the chain and puts back the one it gets. A round starts from tokens that logins issued
 * and nobody presented; what is left at its end is thrown away (an answer may have been lost).
 */
function refreshTarget (app: App): Target {
  return {
    id: 'refresh',
    label: 'Gatehouse POST /auth/refresh',
    server: app.server,
    ...dbOf(app),
    requests: async () => {
      const needed = settings.connections + 5
      if (app.freshRefresh.length < needed) {
        const more = await inBatches(distinctUsers(needed - app.freshRefresh.length, app.users), 4, (index) => login(app, index))
        app.freshRefresh.push(...more.map((session) => session.refresh))
      }
      const chain = app.freshRefresh.splice(-needed)
      return [{
        method: 'POST',
        path: '/auth/refresh',
        headers: { 'content-type': 'application/json' },
        setupRequest: (request) => ({ ...request, body: JSON.stringify({ refresh_token: chain.shift() ?? 'chain-exhausted' }) }),
        onResponse: (status, body) => {
          if (status === 200) chain.push((JSON.parse(body) as { refresh_token: string }).refresh_token)
        }
      }]
    }
  }
}

/** The servers' pids and, on PostgreSQL, their databases' backends (their pools may have reconnected). */
const watchedPids = (servers: Server[], databases: SeededDatabase[]) => async () =>
  [...servers.map((server) => server.pid), ...(await Promise.all(databases.map((database) => database.cpu?.pids() ?? []))).flat()]

/**
 * Every target once per round, in order in odd rounds and in reverse order in even ones, so a
 * target's place in the round favours none (the scale run's pairs measured back to back showed a
 * consistent gap for the second of each pair). From the second round on, every server first
 * restarts as a new process: identical server processes measured here kept differences of up to
 * 20% in CPU per request for as long as they lived, so one process per server would carry its
 * luck into every round. Fresh processes turn that into round-to-round noise, which the medians
 * absorb. Each round warms every target up first (new processes' JIT and token caches are cold).
 */
async function runRounds (targets: Target[], servers: Server[], pidsNow: () => Promise<number[]>, onRoundEnd?: (round: number) => Promise<void>): Promise<Measurement[]> {
  const measurements: Measurement[] = []
  for (let round = 1; round <= settings.rounds; round++) {
    if (round > 1) {
      say(`round ${round}/${settings.rounds}  restarting ${servers.length} servers`)
      await Promise.all(servers.map((server) => server.restart()))
    }
    const inOrder = round % 2 === 1 ? targets : [...targets].reverse()
    for (const target of settings.warmupSeconds > 0 ? inOrder : []) {
      await waitIdle(await pidsNow())
      const warm = await measure(target, 0, settings.warmupSeconds, settings.connections)
      say(`warm-up    ${target.label.padEnd(44)} ${Math.round(warm.rps).toString().padStart(6)} req/s`)
    }
    for (const target of inOrder) {
      if (!await waitIdle(await pidsNow())) say(`round ${round}/${settings.rounds}  servers still busy after 5 s; measuring ${target.label} anyway`)
      const result = await measure(target, round, settings.seconds, settings.connections)
      measurements.push(result)
      const bad = result.non2xx + result.errors
      say(`round ${round}/${settings.rounds}  ${target.label.padEnd(44)} ${Math.round(result.rps).toString().padStart(6)} req/s  p99 ${ms(result.p99)} ms` +
        `  ${Math.round(result.cpuUs)} µs/req${result.dbCpuUs !== undefined ? ` + DB ${Math.round(result.dbCpuUs)}` : ''}${bad ? `  (${bad} non-2xx/errors)` : ''}`)
    }
    await onRoundEnd?.(round)
  }
  return measurements
}

/** The database Gatehouse ran on in one result; results written before it existed ran on SQLite. */
interface DatabaseInfo {
  kind: DatabaseKind
  /** 'SQLite' or 'PostgreSQL', as the tables say. */
  name: string
  /** Server version and settings (PostgreSQL). */
  postgres?: PostgresInfo
  /** What the Express peer read. */
  expressPeer: string
}

const SQLITE_INFO: DatabaseInfo = { kind: 'sqlite', name: 'SQLite', expressPeer: 'the same SQLite file, read-only, through better-sqlite3' }

async function databaseInfo (choice: DatabaseChoice): Promise<DatabaseInfo> {
  if (choice.kind === 'sqlite') return SQLITE_INFO
  return {
    kind: 'postgres',
    name: DATABASE_NAMES.postgres,
    postgres: await postgresInfo(choice.adminUrl!),
    expressPeer: 'the same PostgreSQL database, through a pg pool of 10 with named prepared statements'
  }
}

interface SuiteResult {
  kind: 'suite'
  database?: DatabaseInfo
  /** --note: the conditions of the run, in the operator's words. */
  note?: string
  quick: boolean
  date: string
  machine: Machine
  versions: Record<string, string>
  settings: typeof settings
  hasherInUse: HasherName
  /** How the app was started: the command of package.json's start script. */
  appCommand: string
  appEnv: string[]
  statelessRoute: string
  rows: Row[]
  ratios: Ratio[]
  hashers: HasherRound[]
  hashersAtAppSlots?: HasherRound[]
  compatibility: Compatibility
  rss: { idleAfterStartMiB: number, peakUnderLoadMiB: number, hwmMiB: number }
  storm: Record<string, number>
  measurements: Measurement[]
  seedSeconds: number
  /** 1-minute load average of the machine when the run started and ended (others share it). */
  load: { start: number, end: number }
}

interface ScaleResult {
  kind: 'scale'
  database?: DatabaseInfo
  date: string
  machine: Machine
  /** loginConnections: absent in results from before it was recorded, which sent 4. */
  settings: typeof settings & { baseline: number, loginConnections?: number }
  rows: Row[]
  /** change: the median per-round ratio of the large run to the baseline, minus 1; middle: its quartiles, minus 1. */
  checks: Array<{ name: string, baseline: number, large: number, change: number, middle: [number, number], within: boolean }>
  met: boolean
  rssPeakMiB: Record<string, number>
}

const MiB = (bytes: number) => Math.round(bytes / 2 ** 20 * 10) / 10

/** Per-round ratios between two targets (paired: same round, same conditions). */
function perRoundRatios (measurements: Measurement[], numerator: string, denominator: string, field: 'rps' | 'p50' | 'p99'): number[] {
  const values: number[] = []
  for (const m of measurements.filter((x) => x.id === numerator)) {
    const other = measurements.find((x) => x.id === denominator && x.round === m.round)
    if (other) values.push(m[field] / other[field])
  }
  return values
}

/** Median over rounds of a per-round ratio between two targets. */
const pairedRatio = (measurements: Measurement[], numerator: string, denominator: string, field: 'rps' | 'p99'): number =>
  median(perRoundRatios(measurements, numerator, denominator, field))

/**
 * A temporary folder and the servers and databases a run starts in it, all stopped, dropped and
 * removed when the run ends, however it ends.
 */
async function withBenchResources<T> (run: (resources: { work: string, servers: Server[], databases: SeededDatabase[] }) => Promise<T>): Promise<T> {
  const resources = { work: mkdtempSync(join(tmpdir(), 'gatehouse-bench-')), servers: [] as Server[], databases: [] as SeededDatabase[] }
  try {
    return await run(resources)
  } finally {
    await Promise.all(resources.servers.map((server) => server.stop()))
    await Promise.all(resources.databases.map((database) => database.drop().catch((error: unknown) => say(`could not drop a bench database: ${String(error)}`))))
    rmSync(resources.work, { recursive: true, force: true })
  }
}

async function runSuite (): Promise<SuiteResult> {
  const started = performance.now()
  const loadAtStart = loadavg()[0]!
  try {
    return await withBenchResources(async ({ work, servers, databases }) => {
      const dbInfo = await databaseInfo(databaseChoice)
      const inUse = hasherInUse()
      say(`hashing the bench password with ${inUse} (argon2id m=19456 t=2 p=1)`)
      const passwordHash = await hashWith(inUse, BENCH_PASSWORD)
      const compat = await compatibility(BENCH_PASSWORD)
      say(`seeding ${settings.users.toLocaleString('en-US')} users into ${databaseName}` +
        (databaseChoice.adminUrl ? ` (a new database on ${redactUrl(databaseChoice.adminUrl)})` : ''))
      const database = await prepareDatabase(databaseChoice, work, 'gatehouse', settings.users, passwordHash)
      databases.push(database)
      say(`seeded in ${database.seedSeconds.toFixed(1)} s; starting Gatehouse, bare Fastify and the Express peer (both on ${databaseName})`)
      const secret = randomBytes(48).toString('base64url')
      const [app, bare, bareDressed, express] = await Promise.all([
        startApp('gatehouse', database, secret),
        startServer({ name: 'bare-fastify', script: 'bench/peers/bare-fastify.ts', env: { NODE_ENV: 'production' }, readyPath: '/' }),
        startServer({ name: 'bare-fastify-dressed', script: 'bench/peers/bare-fastify.ts', env: { NODE_ENV: 'production', GATEHOUSE_ANSWER: '1' }, readyPath: '/' }),
        startServer({
          name: 'express-jsonwebtoken',
          script: 'bench/peers/express-jsonwebtoken.ts',
          env: { NODE_ENV: 'production', JWT_SECRET: secret, ...(database.path ? { DATABASE_PATH: database.path } : { DATABASE_URL: database.url }) },
          readyPath: '/health'
        })
      ])
      servers.push(app.server, bare, bareDressed, express)
      const pidsNow = watchedPids(servers, databases)
      await waitIdle([app.server.pid])
      const idleRss = rssBytes(app.server.pid)
      const onDb = dbOf(app)

      const onLogin = collectRefresh(app)
      const all: Target[] = [
        { id: 'bare', label: 'bare Fastify GET /', server: bare, requests: () => [{ method: 'GET', path: '/' }] },
        { id: 'bare-dressed', label: 'bare Fastify GET /, Gatehouse\'s headers and logger', server: bareDressed, requests: () => [{ method: 'GET', path: '/' }] },
        { id: 'guarded', label: `Gatehouse GET ${STATELESS_ROUTE} (guarded)`, server: app.server, ...onDb, requests: () => bearerRequests(app, STATELESS_ROUTE) },
        newTokensTarget(app, secret),
        { id: 'express-guarded', label: `Express+jsonwebtoken GET ${STATELESS_ROUTE}`, server: express, ...onDb, requests: () => bearerRequests(app, STATELESS_ROUTE) },
        { id: 'me', label: 'Gatehouse GET /auth/me', server: app.server, ...onDb, requests: () => bearerRequests(app, '/auth/me') },
        { id: 'express-me', label: 'Express+jsonwebtoken GET /auth/me', server: express, ...onDb, requests: () => bearerRequests(app, '/auth/me') },
        { id: 'clothes', label: 'Gatehouse GET /clothes', server: app.server, ...onDb, requests: () => bearerRequests(app, '/clothes') },
        loginTarget('login', 'Gatehouse POST /auth/login', app),
        refreshTarget(app),
        {
          id: 'storm',
          label: `Gatehouse GET ${STATELESS_ROUTE} + ${settings.stormLoginsPerSecond} logins/s`,
          server: app.server,
          ...onDb,
          requests: () => bearerRequests(app, STATELESS_ROUTE),
          background: () => openLoop(app.server.url, '/auth/login', settings.stormLoginsPerSecond, app.loginBody, onLogin)
        }
      ]
      const wanted = args.targets?.split(',').map((id) => id.trim())
      const targets = wanted ? all.filter((target) => wanted.includes(target.id)) : all

      const hashers: HasherRound[] = []
      /** The hasher in use with only as many verifies in flight as the app allows itself. */
      const hashersAtAppSlots: HasherRound[] = []
      const measurements = await runRounds(targets, servers, pidsNow, async (round) => {
        // The hashers' rounds, interleaved with the HTTP ones, while every server is idle.
        await waitIdle(await pidsNow())
        for (const hasher of HASHERS) {
          const result = await measureVerify(hasher, passwordHash, BENCH_PASSWORD, settings.hasherSeconds, 4, quick ? 1 : 3)
          hashers.push(result)
          say(`round ${round}/${settings.rounds}  raw verify ${hasher.padEnd(31)} ${result.perSecond.toFixed(1).padStart(6)} /s     alone ${ms(result.singleMs)} ms`)
        }
        const atSlots = await measureVerify(inUse, passwordHash, BENCH_PASSWORD, settings.hasherSeconds, HASH_SLOTS, 0)
        hashersAtAppSlots.push(atSlots)
        say(`round ${round}/${settings.rounds}  raw verify ${inUse}, ${HASH_SLOTS} in flight ${atSlots.perSecond.toFixed(1).padStart(6)} /s`)
      })
      const hwm = app.server.peakRssBytes()

      const labels = new Map(targets.map((target) => [target.id, target.label]))
      const rows = summarise(measurements, labels, new Map(targets.filter((target) => !target.id.startsWith('bare')).map((target) => [target.id, databaseName])))
      const row = (id: string) => rows.find((r) => r.id === id)
      const hasherRate = (name: HasherName) => median(hashers.filter((h) => h.hasher === name).map((h) => h.perSecond))
      const appIds = new Set(['guarded', 'guarded-new-tokens', 'me', 'clothes', 'login', 'refresh', 'storm'])
      const peakUnderLoad = Math.max(0, ...measurements.filter((m) => appIds.has(m.id)).map((m) => m.rssMaxBytes))

      const ratios: Ratio[] = []
      const ran = new Set(measurements.map((m) => m.id))
      /**
       * A ratio between the targets in `involves`, when they all ran. One that rests on a failed
       * answer (or on none) is reported, never met: a peer answering 401 must not look fast.
       */
      const add = (name: string, value: number, target: string, met: boolean | null, note: string, involves: string[]) => {
        if (!involves.every((id) => ran.has(id))) return
        const bad = measurements.filter((m) => involves.includes(m.id)).reduce((sum, m) => sum + m.non2xx + m.errors, 0)
        const invalid = bad > 0 ? `${bad} non-2xx answers or errors: not a valid measurement` : Number.isFinite(value) ? '' : 'no 2xx answers'
        ratios.push({ name, value, target, met: met === null ? null : met && !invalid, ...(note || invalid ? { note: [note, invalid].filter(Boolean).join('; ') } : {}) })
      }
      /** A ratio reported for what it explains, with no goal of its own. */
      const addInfo = (name: string, value: number, note: string, involves: string[]) => add(name, value, 'info', null, note, involves)
      const guardedVsBare = pairedRatio(measurements, 'guarded', 'bare', 'rps')
      add('guarded route vs bare Fastify, throughput', guardedVsBare, '≥ 0.80×', guardedVsBare >= 0.8, `GET ${STATELESS_ROUTE}`, ['guarded', 'bare'])
      const p99VsBare = pairedRatio(measurements, 'guarded', 'bare', 'p99')
      add('guarded route vs bare Fastify, p99', p99VsBare, '≤ 2.00×', p99VsBare <= 2,
        `${ms(row('guarded')?.p99 ?? NaN)} vs ${ms(row('bare')?.p99 ?? NaN)} ms`, ['guarded', 'bare'])
      addInfo('guarded route vs bare Fastify with Gatehouse\'s headers and logger', pairedRatio(measurements, 'guarded', 'bare-dressed', 'rps'),
        'Gatehouse\'s own per-request work', ['guarded', 'bare-dressed'])
      addInfo('bare Fastify with Gatehouse\'s headers and logger vs bare', pairedRatio(measurements, 'bare-dressed', 'bare', 'rps'),
        'the cost of the headers and logger alone', ['bare-dressed', 'bare'])
      addInfo('guarded route, every token new vs repeat tokens', pairedRatio(measurements, 'guarded-new-tokens', 'guarded', 'rps'),
        'a first verification against a verified-token cache lookup', ['guarded-new-tokens', 'guarded'])
      const meVsBare = pairedRatio(measurements, 'me', 'bare', 'rps')
      add('GET /auth/me vs bare Fastify', meVsBare, '≥ 0.60×', meVsBare >= 0.6, '', ['me', 'bare'])
      const guardedVsExpress = pairedRatio(measurements, 'guarded', 'express-guarded', 'rps')
      add(`Gatehouse vs Express peer, GET ${STATELESS_ROUTE}`, guardedVsExpress, '≥ 4.00×', guardedVsExpress >= 4, '', ['guarded', 'express-guarded'])
      addInfo(`Gatehouse with every token new vs Express peer, GET ${STATELESS_ROUTE}`, pairedRatio(measurements, 'guarded-new-tokens', 'express-guarded', 'rps'),
        'the peer verifies every token; it has no cache', ['guarded-new-tokens', 'express-guarded'])
      const meVsExpress = pairedRatio(measurements, 'me', 'express-me', 'rps')
      add('Gatehouse vs Express peer, GET /auth/me', meVsExpress, '≥ 4.00×', meVsExpress >= 4, '', ['me', 'express-me'])
      const loginRps = row('login')?.rps ?? NaN
      const loginVsHasher = loginRps / hasherRate(inUse)
      add(`POST /auth/login vs raw verify of ${inUse} (in use)`, loginVsHasher, '≥ 0.90×', loginVsHasher >= 0.9,
        `${loginRps.toFixed(1)} vs ${hasherRate(inUse).toFixed(1)} /s`, ['login'])
      const slotRate = median(hashersAtAppSlots.map((h) => h.perSecond))
      addInfo(`POST /auth/login vs raw verify of ${inUse}, ${HASH_SLOTS} in flight as in the app`, loginRps / slotRate,
        `${slotRate.toFixed(1)} /s: what login adds to the hashes it may run at once`, ['login'])
      for (const other of HASHERS.filter((name) => name !== inUse)) {
        addInfo(`POST /auth/login vs raw verify of ${other} (not in use)`, loginRps / hasherRate(other), `${hasherRate(other).toFixed(1)} /s`, ['login'])
      }
      const stormVsIdle = pairedRatio(measurements, 'storm', 'guarded', 'rps')
      const stormP99 = pairedRatio(measurements, 'storm', 'guarded', 'p99')
      // Measured rounds only (warm-ups are not in `measurements`), each counting the logins answered within it.
      const stormLogins = measurements.filter((m) => m.id === 'storm' && m.extra).map((m) => m.extra!)
      const loginsServed = median(stormLogins.map((s) => s.perSecond ?? NaN))
      const loginsFailed = stormLogins.reduce((sum, s) => sum + (s.failed ?? 0), 0)
      const loginsKept = loginsServed >= 0.95 * settings.stormLoginsPerSecond && loginsFailed === 0
      add(`guarded route under ${settings.stormLoginsPerSecond} logins/s vs idle`, stormVsIdle, '≥ 0.75×', stormVsIdle >= 0.75 && loginsKept,
        `p99 ×${stormP99.toFixed(1)}; logins served ${loginsServed.toFixed(1)}/s within the rounds` +
        (loginsFailed > 0 ? `, ${loginsFailed} failed` : '') + (loginsKept ? '' : ': the storm did not run as asked'), ['storm', 'guarded'])
      if (peakUnderLoad > 0) {
        const roundPeaks = [...new Set(measurements.map((m) => m.round))].map((round) =>
          Math.max(...measurements.filter((m) => m.round === round && appIds.has(m.id)).map((m) => m.rssMaxBytes)))
        ratios.push({
          name: 'Gatehouse RSS under load, highest round',
          value: MiB(peakUnderLoad),
          unit: 'MiB',
          target: '≤ 150 MB (143 MiB)',
          met: peakUnderLoad <= 150e6,
          note: `median round ${MiB(median(roundPeaks)).toFixed(0)} MiB; idle ${MiB(idleRss)} MiB, VmHWM ${MiB(hwm)} MiB`
        })
      }

      return {
        kind: 'suite',
        database: dbInfo,
        ...(args.note ? { note: args.note } : {}),
        quick,
        date: new Date().toISOString(),
        machine: machine(),
        versions: versions(),
        settings,
        hasherInUse: inUse,
        appCommand: ['node', ...builtServer().nodeArgs, builtServer().script].join(' '),
        appEnv: args['app-env'],
        statelessRoute: STATELESS_ROUTE,
        rows,
        ratios,
        hashers,
        hashersAtAppSlots,
        compatibility: compat,
        rss: { idleAfterStartMiB: MiB(idleRss), peakUnderLoadMiB: MiB(peakUnderLoad), hwmMiB: MiB(hwm) },
        storm: Object.fromEntries(Object.keys(stormLogins[0] ?? {}).map((key) => [key, median(stormLogins.map((s) => s[key]!))])),
        measurements,
        seedSeconds: database.seedSeconds,
        load: { start: loadAtStart, end: loadavg()[0]! }
      }
    })
  } finally {
    say(`done in ${((performance.now() - started) / 1000).toFixed(0)} s`)
  }
}

/** As many logins in flight as the app hashes at once: the latency of a login, with no queue in front of it. */
const SCALE_LOGIN_CONNECTIONS = HASH_SLOTS

async function runScale (): Promise<ScaleResult> {
  const baseline = count(args.baseline, 10_000)
  if (baseline === settings.users) throw new Error(`--users ${settings.users} is the scale mode's baseline: pick another count, or add --suite for the full suite with it`)
  return withBenchResources(async ({ work, servers, databases }) => {
    const dbInfo = await databaseInfo(databaseChoice)
    const inUse = hasherInUse()
    const passwordHash = await hashWith(inUse, BENCH_PASSWORD)
    const sizes = [baseline, settings.users]
    const apps: App[] = []
    for (const users of sizes) {
      say(`seeding ${users.toLocaleString('en-US')} users into ${databaseName}`)
      const database = await prepareDatabase(databaseChoice, work, `users_${users}`, users, passwordHash)
      databases.push(database)
      say(`seeded in ${database.seedSeconds.toFixed(1)} s`)
      const app = await startApp(`gatehouse-${users}`, database, randomBytes(48).toString('base64url'))
      servers.push(app.server)
      apps.push(app)
    }
    const name = (users: number) => users.toLocaleString('en-US')
    const targets: Target[] = apps.flatMap((app) => [
      { id: `me-${app.users}`, label: `GET /auth/me, ${name(app.users)} users`, server: app.server, ...dbOf(app), requests: () => bearerRequests(app, '/auth/me') },
      loginTarget(`login-${app.users}`, `POST /auth/login, ${name(app.users)} users (-c ${SCALE_LOGIN_CONNECTIONS})`, app, SCALE_LOGIN_CONNECTIONS)
    ])
    // me, me, login, login: each pair back to back, its order flipping from round to round (runRounds).
    targets.sort((a, b) => a.id.split('-')[0]!.localeCompare(b.id.split('-')[0]!) * -1)
    const measurements = await runRounds(targets, servers, watchedPids(servers, databases))
    const rows = summarise(measurements, new Map(targets.map((target) => [target.id, target.label])), new Map(targets.map((target) => [target.id, databaseName])))
    const checks: ScaleResult['checks'] = []
    for (const route of ['me', 'login']) {
      for (const field of ['p50', 'rps'] as const) {
        const of = (users: number) => measurements.filter((m) => m.id === `${route}-${users}`).map((m) => m[field])
        // Each round measures both sizes back to back, so their ratio in that round shares its
        // conditions. A change is noise when it is under 5% or when the rounds show no consistent
        // direction: the middle half of the per-round ratios spans 1.
        const ratios = Float64Array.from(perRoundRatios(measurements, `${route}-${settings.users}`, `${route}-${baseline}`, field)).sort()
        const change = median([...ratios]) - 1
        const middle: [number, number] = [percentile(ratios, 0.25) - 1, percentile(ratios, 0.75) - 1]
        checks.push({
          name: `${route === 'me' ? 'GET /auth/me' : 'POST /auth/login'} ${field === 'p50' ? 'p50 latency' : 'req/s'}`,
          baseline: median(of(baseline)),
          large: median(of(settings.users)),
          change,
          middle,
          within: Math.abs(change) <= 0.05 || (middle[0] <= 0 && middle[1] >= 0)
        })
      }
    }
    return {
      kind: 'scale',
      database: dbInfo,
      date: new Date().toISOString(),
      machine: machine(),
      settings: { ...settings, baseline, loginConnections: SCALE_LOGIN_CONNECTIONS },
      rows,
      checks,
      met: checks.filter((check) => check.name.includes('latency')).every((check) => check.within),
      rssPeakMiB: Object.fromEntries(apps.map((app) => [name(app.users), MiB(app.server.peakRssBytes())]))
    }
  })
}

function printSuite (result: SuiteResult) {
  console.log(`\nGatehouse bench (${result.quick ? 'quick' : 'full'}) on ${databaseLine(dbOfResult(result))}: ${result.settings.users.toLocaleString('en-US')} users, ` +
    `${result.settings.rounds} round(s) × ${result.settings.seconds} s per target, -c ${result.settings.connections}\n`)
  console.log(textTable(ROW_HEADERS, result.rows.map(rowCells)))
  console.log('\n' + textTable(HASHER_HEADERS, HASHERS.map((name) => hasherCells(result.hashers, name, result.hasherInUse))))
  for (const line of compatibilityLines(result.compatibility)) console.log('  ' + line)
  console.log('\n' + textTable(RATIO_HEADERS, result.ratios.map(ratioCells)))
  console.log(`\n${STATELESS_NOTE}`)
}

const percent = (fraction: number) => `${fraction >= 0 ? '+' : ''}${(fraction * 100).toFixed(1)}%`

function scaleTables (result: ScaleResult) {
  const checks = result.checks.map((check) => [
    check.name,
    check.name.includes('latency') ? `${ms(check.baseline)} ms` : check.baseline.toFixed(0),
    check.name.includes('latency') ? `${ms(check.large)} ms` : check.large.toFixed(0),
    percent(check.change),
    check.middle.map(percent).join(' … '),
    check.within ? 'within noise' : 'outside noise'
  ])
  const headers = ['measure', `${result.settings.baseline.toLocaleString('en-US')} users`, `${result.settings.users.toLocaleString('en-US')} users`, 'change', 'middle half of rounds', 'result']
  return { rows: result.rows.map(rowCells), checks, headers }
}

function printScale (result: ScaleResult) {
  const tables = scaleTables(result)
  console.log(`\nScale on ${databaseLine(dbOfResult(result))}: ${result.settings.users.toLocaleString('en-US')} users against ${result.settings.baseline.toLocaleString('en-US')}\n`)
  console.log(textTable(ROW_HEADERS, tables.rows))
  console.log('\n' + textTable(tables.headers, tables.checks))
  console.log(`\n/auth/me and login latency within noise: ${verdict(result.met)}; peak RSS (MiB): ${JSON.stringify(result.rssPeakMiB)}`)
}

function readJson<T> (file: string): T | undefined {
  return existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) as T : undefined
}

/** Results written before PostgreSQL existed carry no database: they ran on SQLite. */
const dbOfResult = (result: SuiteResult | ScaleResult): DatabaseInfo => result.database ?? SQLITE_INFO

function databaseLine (info: DatabaseInfo): string {
  if (!info.postgres) return 'SQLite'
  return `PostgreSQL ${info.postgres.version} at ${info.postgres.server}`
}

const KINDS: DatabaseKind[] = ['sqlite', 'postgres']
/** SQLite keeps the file names it had before there was a choice. */
const resultFile = (what: 'suite' | 'scale', kind: DatabaseKind) => join(RESULTS, kind === 'sqlite' ? `${what}.json` : `${what}-${kind}.json`)
const when = (date: string) => `${date.slice(0, 16).replace('T', ' ')} UTC`

function databaseBullets (info: DatabaseInfo): string[] {
  if (!info.postgres) {
    return ['- Database: **SQLite** (better-sqlite3, WAL) in a file of the run\'s temporary folder, inside the app process;',
      `  the Express peer reads ${info.expressPeer}. SQLite's CPU is part of each server's own CPU µs/req.`]
  }
  const p = info.postgres
  return [
    `- Database: **PostgreSQL ${p.version}** at ${p.server}${p.local ? ' on this machine (its backends share the cores with the servers and the load generator)' : ''},`,
    '  in a database created for the run (`gatehouse_bench_<host>_<pid>_…`) and dropped after; Gatehouse\'s own pg pool (10 connections);',
    `  the Express peer reads ${info.expressPeer}.`,
    `- Server settings: ${Object.entries(p.settings).map(([name, value]) => `${name}=${value}`).join(', ')}`,
    '- DB CPU µs/req is the CPU of the PostgreSQL backends serving that database (from /proc, over the same window),',
    '  per answer: add it to CPU µs/req for the whole cost of a request on this machine.'
  ]
}

function suiteSection (suite: SuiteResult, scale: ScaleResult | undefined): string[] {
  const info = dbOfResult(suite)
  const m = suite.machine
  const s = suite.settings
  const out = [
    `## ${info.name}${info.kind === 'sqlite' ? ' (the default)' : ''}: run of ${when(suite.date)}${suite.quick ? ' (quick mode)' : ''}`, '',
    `\`npm run bench${info.kind === 'sqlite' ? '' : ' -- --postgres'}\`${info.kind === 'sqlite' ? '' : ' (or `--database postgres://…`)'}.`, '',
    ...databaseBullets(info),
    `- Machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB memory, Linux ${m.kernel}`,
    `- Node ${m.node}; ${Object.entries(suite.versions).map(([name, version]) => `${name} ${version}`).join(', ')}`,
    `- ${s.users.toLocaleString('en-US')} seeded users (seeded in ${suite.seedSeconds.toFixed(1)} s); autocannon -c ${s.connections}; ${s.rounds} interleaved round(s) of ${s.seconds} s per target after a ${s.warmupSeconds} s warm-up each` +
      (s.freshProcessesEachRound ? ', every server a new process in each round' : ''),
    `- Gatehouse ran as \`npm start\` runs it: \`${suite.appCommand}\`, compiled by \`npm run build\``,
    ...(suite.appEnv.length > 0 ? [`- Extra app environment: ${suite.appEnv.join(' ')}`] : []),
    `- Machine load average (1 min) ${suite.load.start.toFixed(1)} at the start and ${suite.load.end.toFixed(1)} at the end: other work shared the ${m.cores} cores`,
    ...(suite.note ? [`- Note: ${suite.note}`] : []),
    '',
    markdownTable(ROW_HEADERS, suite.rows.map(rowCells)), '',
    'req/s counts 2xx answers only; p50/p99 are the 2xx latencies seen by autocannon; CPU µs/req is the server',
    'process\'s user+system time (all threads, from /proc/<pid>/stat) over the round divided by the answers it',
    'gave; server CPU is that time as a share of one core; rps spread is (max − min) / median over the rounds.', '',
    `### Targets (Gatehouse on ${info.name})`, '',
    markdownTable(RATIO_HEADERS, [
      ...suite.ratios.map(ratioCells),
      scale
        ? [`/auth/me and login p50 latency, ${scale.settings.users.toLocaleString('en-US')} vs ${scale.settings.baseline.toLocaleString('en-US')} users`,
            'see Scale', 'within noise', verdict(scale.met), `separate run, ${scale.date.slice(0, 10)}`]
        : ['/auth/me and login latency, 1,000,000 vs 10,000 users', 'not run', 'within noise', 'n/a',
            `\`npm run bench -- --users 1000000${info.kind === 'sqlite' ? '' : ' --postgres'}\``]
    ]), '',
    'Ratios of throughput and p99 are medians of per-round ratios (both targets measured in the same round); login',
    'against a hasher is the median login rate over the hasher\'s median rate. A ratio resting on a non-2xx answer or',
    'an error is never met. The storm row\'s CPU µs/req includes the logins\' CPU, divided by the guarded answers.', '',
    `### Password hashing (${info.name} run)`, '',
    markdownTable(HASHER_HEADERS, HASHERS.map((name) => hasherCells(suite.hashers, name, suite.hasherInUse))), '',
    ...compatibilityLines(suite.compatibility).map((line) => `- ${line}`), '',
    'Both verify the same PHC string (the seeded hash) with 4 verifies in flight (the size of the libuv pool), in',
    'the bench\'s own process while every server is idle; "alone" is one verify at a time. The app lets at most',
    'one fewer than the cores (and than libuv\'s pool threads) run at once, here ' + HASH_SLOTS + '; the info row "in flight as in the app"',
    'measures the hasher in use that way.', ''
  ]
  return out
}

function scaleSection (scale: ScaleResult, level: string): string[] {
  const info = dbOfResult(scale)
  const tables = scaleTables(scale)
  return [`${level} Scale on ${info.name}: ${scale.settings.users.toLocaleString('en-US')} users against ${scale.settings.baseline.toLocaleString('en-US')} (${when(scale.date)})`, '',
    `Two app instances, one per database, measured in ${scale.settings.rounds} interleaved round(s) of ${scale.settings.seconds} s (-c ${scale.settings.connections} for /auth/me, -c ${scale.settings.loginConnections ?? 4} for login). ` +
    'The change is the median of the per-round ratios (both sizes measured back to back in each round); it counts as ' +
    'noise when it is under 5% or when the middle half of the per-round ratios spans no change.', '',
    markdownTable(ROW_HEADERS, tables.rows), '',
    markdownTable(tables.headers, tables.checks), '',
    `Result: ${verdict(scale.met)}. Peak RSS (MiB): ${Object.entries(scale.rssPeakMiB).map(([users, mib]) => `${users} users ${mib}`).join(', ')}.`, '']
}

/** The same rows of two suites side by side: what moving Gatehouse (and the peer) to PostgreSQL costs. */
function comparisonSection (sqlite: SuiteResult, postgres: SuiteResult): string[] {
  const headers = ['target', 'SQLite req/s', 'PostgreSQL req/s', 'PostgreSQL ÷ SQLite', 'SQLite CPU µs/req', 'PostgreSQL app µs/req', 'PostgreSQL DB µs/req', 'PostgreSQL total µs/req']
  const digits = (value: number | undefined) => value !== undefined && Number.isFinite(value) ? Math.round(value).toLocaleString('en-US') : '—'
  const rows = sqlite.rows.flatMap((a) => {
    const b = postgres.rows.find((row) => row.id === a.id)
    if (!b) return []
    return [[
      a.label, digits(a.rps), digits(b.rps), ratio(b.rps / a.rps), digits(a.cpuUs), digits(b.cpuUs), digits(b.dbCpuUs),
      b.dbCpuUs !== undefined ? digits(b.cpuUs + b.dbCpuUs) : digits(b.cpuUs)
    ]]
  })
  const day = (suite: SuiteResult) => suite.date.slice(0, 10)
  return ['## SQLite against PostgreSQL', '',
    `The two runs above side by side (SQLite ${when(sqlite.date)}, load ${sqlite.load.start.toFixed(1)}–${sqlite.load.end.toFixed(1)}; ` +
    `PostgreSQL ${when(postgres.date)}, load ${postgres.load.start.toFixed(1)}–${postgres.load.end.toFixed(1)})` +
    `${day(sqlite) === day(postgres) ? '' : ': **not the same day**, compare with care'}. They are separate runs, so this`,
    'table compares across runs (the bare Fastify row shows how alike the machine was); the targets above compare within a run.', '',
    markdownTable(headers, rows), ''
  ]
}

function renderMarkdown (suites: Partial<Record<DatabaseKind, SuiteResult>>, scales: Partial<Record<DatabaseKind, ScaleResult>>): string {
  const out: string[] = ['# Benchmarks', '',
    'Generated by `npm run bench` (bench/run.ts); rerun it to refresh this file. There is one section per database',
    'Gatehouse ran on: SQLite (`npm run bench`, the default) and PostgreSQL (`npm run bench -- --postgres`, or',
    '`--database postgres://…`); each run rewrites only its own section. `npm run bench -- --quick` (with or without',
    '`--postgres`) is the CI smoke run and prints only; `npm run bench -- --users 1000000` is the scale comparison.', '']
  for (const kind of KINDS) {
    const suite = suites[kind]
    const scale = scales[kind]
    if (suite) out.push(...suiteSection(suite, scale))
    else if (scale) out.push(`## ${DATABASE_NAMES[kind]}`, '', 'No suite run on this database yet.', '')
    if (scale) out.push(...scaleSection(scale, '###'))
  }
  if (suites.sqlite && suites.postgres) out.push(...comparisonSection(suites.sqlite, suites.postgres))
  out.push('## The stateless guarded route', '', STATELESS_NOTE, '')
  out.push('## Method', '',
    '- Every server is a child process on 127.0.0.1: Gatehouse as `node dist/server.js` (built by `npm run build`; NODE_ENV=production,',
    '  LOG_LEVEL=warn, a random JWT_SECRET, rate limits raised so they never answer 429, a fresh database migrated',
    '  by `src/cli/db-migrate.ts`, demo rows from `src/cli/db-seed.ts`, users inserted directly with one precomputed',
    '  argon2id hash: on SQLite a temporary file, one transaction; on PostgreSQL a database created for the run, batched',
    '  multi-row inserts through `pg`, then VACUUM ANALYZE), bare Fastify (`bench/peers/bare-fastify.ts`) and Express 5 +',
    '  jsonwebtoken with a KeyObject secret and the same token checks and reads (`bench/peers/express-jsonwebtoken.ts`),',
    '  reading the same database as Gatehouse in each run.',
    '- Targets run one after another in rounds; each round visits every target, so drift of the shared machine hits all',
    '  of them alike, in order in odd rounds and in reverse order in even ones, so no target always follows the same',
    '  one. Before each round after the first, every server restarts as a new process: identical server',
    '  processes measured here kept differences of up to 20% in CPU per request for as long as they lived, so one',
    '  process per server would carry its luck into every round. Each round then warms every target up. Before each',
    '  target the bench waits until no server (and no PostgreSQL backend of the run\'s database) spends CPU.',
    `- Guarded routes cycle through the access tokens of ${suites.sqlite?.settings.tokenUsers ?? suites.postgres?.settings.tokenUsers ?? 50} distinct users (their sessions exist), which each`,
    '  warm-up puts in the verified-token cache: the guarded rows measure the cached path. The "every token new" row',
    `  sends each request a token the app has not seen: ${(2 * VERIFIED_TOKENS_CACHED).toLocaleString('en-US')} copies of one issued token, each with its own \`jti\` and`,
    '  signed again with the app\'s secret, taken in turn, twice what the cache holds. Logins pick a random',
    '  seeded user per request; refreshes chain tokens (each answer\'s refresh token is presented next), starting',
    '  from tokens issued by logins and never presented.',
    '- The storm case is the guarded route under load while an open loop sends 20 logins/s to the same process;',
    '  logins served counts the answers within each measured round, and the target is met only if at least 95%',
    '  of them came and none failed.',
    '- RSS is VmRSS of the app sampled every 200 ms while it is under load; VmHWM is the highest of its processes.',
    '- The load generator (autocannon, in the runner process) shares the 2 cores with the server under test (and, on',
    '  PostgreSQL, with the database server), so absolute numbers are lower than on separate machines; the ratios are',
    '  what the targets are about.',
    '')
  return out.join('\n')
}

function writeOutputs (suite: SuiteResult | undefined, scale: ScaleResult | undefined) {
  mkdirSync(RESULTS, { recursive: true })
  const kind = databaseChoice.kind
  if (suite) writeFileSync(resultFile('suite', kind), JSON.stringify(suite, null, 2) + '\n')
  if (scale) writeFileSync(resultFile('scale', kind), JSON.stringify(scale, null, 2) + '\n')
  const suites: Partial<Record<DatabaseKind, SuiteResult>> = {}
  const scales: Partial<Record<DatabaseKind, ScaleResult>> = {}
  for (const each of KINDS) {
    const savedSuite = each === kind && suite ? suite : readJson<SuiteResult>(resultFile('suite', each))
    const savedScale = each === kind && scale ? scale : readJson<ScaleResult>(resultFile('scale', each))
    if (savedSuite) suites[each] = savedSuite
    if (savedScale) scales[each] = savedScale
  }
  writeFileSync(join(ROOT, 'BENCHMARKS.md'), renderMarkdown(suites, scales))
  say(`wrote BENCHMARKS.md (${DATABASE_NAMES[kind]} section)`)
}

if (args.profile) mkdirSync(PROFILES, { recursive: true })
/**
 * Every request the bench sends is one the app must answer with 2xx: anything else means the
 * bench measured something other than what its tables say. CI runs --quick to prove exactly that.
 */
function exitOnFailedRequests (rows: Row[], stormLoginsFailed = 0) {
  const failed = rows.filter((row) => !(row.rps > 0) || row.non2xx + row.errors > 0)
  for (const row of failed) say(`${row.label}: ${row.non2xx} non-2xx answers, ${row.errors} errors${row.rps > 0 ? '' : ', no 2xx answer'}`)
  if (stormLoginsFailed > 0) say(`${stormLoginsFailed} of the storm's logins failed`)
  if (failed.length > 0 || stormLoginsFailed > 0) process.exitCode = 1
}

if (scaleMode) {
  const result = await runScale()
  printScale(result)
  if (write) writeOutputs(undefined, result)
  exitOnFailedRequests(result.rows)
} else {
  const result = await runSuite()
  printSuite(result)
  if (write) writeOutputs(result, undefined)
  exitOnFailedRequests(result.rows, result.measurements.reduce((sum, m) => sum + (m.extra?.failed ?? 0), 0))
}
if (args.profile) say(`CPU profile(s) in ${PROFILES}; summarise with: node --import tsx bench/profile-summary.ts ${PROFILES}`)
