// npm run test:postman: starts a throw-away Gatehouse (temporary SQLite database, random secret,
// an admin from ADMIN_EMAIL/ADMIN_PASSWORD) on a free 127.0.0.1 port, runs the Postman collection
// against it with newman, stops the server and exits non-zero when any assertion failed or the run
// left more behind in the database than the README says.
import Database from 'better-sqlite3'
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { freePort } from '../bench/lib/processes.ts'

interface NewmanCounts { total: number, pending: number, failed: number }
interface NewmanSummary {
  run: {
    stats: { requests: NewmanCounts, assertions: NewmanCounts, testScripts: NewmanCounts, prerequestScripts: NewmanCounts }
    timings: { started?: number, completed?: number }
    failures: Array<{ error: { name?: string, message?: string, test?: string }, source?: { name?: string } }>
    error?: unknown
  }
}
interface NewmanRunOptions {
  collection: string
  environment: string
  envVar: Array<{ key: string, value: string }>
  reporters: string[]
  timeout: number
  timeoutRequest: number
  ignoreRedirects: boolean
}
interface Newman {
  run (options: NewmanRunOptions, callback: (error: Error | null, summary: NewmanSummary) => void): unknown
}

// newman ships no type declarations: load it through require with the small interface above.
const newman = createRequire(import.meta.url)('newman') as Newman

const HOST = '127.0.0.1'
const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..')
const COLLECTION = join(ROOT, 'postman', 'gatehouse.postman_collection.json')
const ENVIRONMENT = join(ROOT, 'postman', 'gatehouse.postman_environment.json')
const START_TIMEOUT_MS = 30_000
const STOP_TIMEOUT_MS = 5_000
/** Configuration the server would otherwise inherit from this shell (a REDIS_URL would leave 127.0.0.1). */
const INHERITED_CONFIG = [
  'NODE_ENV', 'PORT', 'HOST', 'DATABASE_URL', 'JWT_SECRET', 'JWT_PREVIOUS_SECRETS', 'JWT_ISSUER', 'JWT_AUDIENCE',
  'ACCESS_TOKEN_TTL', 'REFRESH_TOKEN_TTL', 'REFRESH_REUSE_GRACE', 'SESSION_MAX_AGE', 'ADMIN_EMAIL', 'ADMIN_PASSWORD', 'CORS_ORIGINS',
  'RATE_LIMIT_IP_MAX', 'RATE_LIMIT_ACCOUNT_MAX', 'REDIS_URL', 'TRUST_PROXY', 'REQUEST_TIMEOUT', 'LOG_LEVEL'
]

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

function exited (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => child.once('exit', () => resolve()))
}

async function waitForHealth (baseUrl: string, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`the server exited before it was ready (code ${child.exitCode}, signal ${child.signalCode})`)
    }
    try {
      const response = await fetch(`${baseUrl}/health`, { signal: AbortSignal.timeout(2_000) })
      if (response.status === 200) return
    } catch {}
    await sleep(200)
  }
  throw new Error(`the server did not answer GET /health with 200 within ${START_TIMEOUT_MS / 1000} s`)
}

async function stop (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  child.kill('SIGTERM')
  let timer: NodeJS.Timeout | undefined
  const stopped = await Promise.race([
    exited(child).then(() => true),
    new Promise<boolean>((resolve) => { timer = setTimeout(() => resolve(false), STOP_TIMEOUT_MS) })
  ])
  clearTimeout(timer)
  if (!stopped) {
    child.kill('SIGKILL')
    await exited(child)
  }
}

/**
 * What the README promises a run leaves behind: only the clothing item it added (the API has no way
 * to delete one) beside the admin; undefined when that holds, else what it left.
 */
function leftBehind (file: string): string | undefined {
  const database = new Database(file, { readonly: true })
  try {
    const count = (from: string) => (database.prepare(`select count(*) as n from ${from}`).get() as { n: number }).n
    const left = { users: count('users'), sessions: count('sessions where revoked_at is null'), videos: count('videos'), clothes: count('clothes') }
    return left.users === 1 && left.sessions === 0 && left.videos === 0 && left.clothes === 1
      ? undefined
      : `the run left ${JSON.stringify(left)} behind: expected the admin (signed out) and one clothing item`
  } finally {
    database.close()
  }
}

function runCollection (options: NewmanRunOptions): Promise<NewmanSummary> {
  return new Promise((resolve, reject) => {
    newman.run(options, (error, summary) => error ? reject(error) : resolve(summary))
  })
}

async function main (): Promise<number> {
  const dataDir = mkdtempSync(join(tmpdir(), 'gatehouse-postman-'))
  const adminEmail = 'admin@example.com'
  const adminPassword = `Admin-${randomBytes(18).toString('base64url')}`
  const port = await freePort()
  const baseUrl = `http://${HOST}:${port}`

  const databaseFile = join(dataDir, 'gatehouse.db')
  const env: NodeJS.ProcessEnv = { ...process.env }
  for (const name of INHERITED_CONFIG) delete env[name]
  Object.assign(env, {
    HOST,
    PORT: String(port),
    DATABASE_URL: `file:${databaseFile}`,
    JWT_SECRET: randomBytes(48).toString('base64url'),
    ADMIN_EMAIL: adminEmail,
    ADMIN_PASSWORD: adminPassword,
    RATE_LIMIT_IP_MAX: '10000',
    LOG_LEVEL: 'warn'
  })

  const serverOutput: string[] = []
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/server.ts'], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] })
  child.stdout?.on('data', (chunk: Buffer) => serverOutput.push(chunk.toString()))
  child.stderr?.on('data', (chunk: Buffer) => serverOutput.push(chunk.toString()))

  const interrupted = (signal: NodeJS.Signals) => {
    stop(child).finally(() => {
      rmSync(dataDir, { recursive: true, force: true })
      process.exit(signal === 'SIGINT' ? 130 : 143)
    })
  }
  process.once('SIGINT', interrupted)
  process.once('SIGTERM', interrupted)

  let passed = 0
  let failed = 0
  let ok = false
  try {
    await waitForHealth(baseUrl, child)
    const summary = await runCollection({
      collection: COLLECTION,
      environment: ENVIRONMENT,
      envVar: [
        { key: 'baseUrl', value: baseUrl },
        { key: 'adminEmail', value: adminEmail },
        { key: 'adminPassword', value: adminPassword }
      ],
      reporters: ['cli'],
      timeout: 5 * 60_000,
      timeoutRequest: 15_000,
      ignoreRedirects: true
    })
    const { assertions } = summary.run.stats
    failed = assertions.failed
    passed = assertions.total - assertions.failed - assertions.pending
    ok = failed === 0 && summary.run.failures.length === 0 && !summary.run.error
    if (summary.run.error) console.error('postman: the run stopped early:', summary.run.error)
  } catch (error) {
    console.error(`postman: ${(error as Error).message}`)
  } finally {
    await stop(child)
    if (ok) {
      const problem = leftBehind(databaseFile)
      if (problem) console.error(`postman: ${problem}`)
      ok = problem === undefined
    }
    rmSync(dataDir, { recursive: true, force: true })
    process.off('SIGINT', interrupted)
    process.off('SIGTERM', interrupted)
  }

  if (!ok && serverOutput.length > 0) {
    console.error('--- server output ---')
    console.error(serverOutput.join('').trimEnd())
  }
  console.log(`postman: ${passed} passed, ${failed} failed`)
  return ok ? 0 : 1
}

process.exitCode = await main()
