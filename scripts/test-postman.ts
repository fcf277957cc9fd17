// npm run test:postman: starts a throw-away Gatehouse (temporary SQLite database, random secret,
// an admin from ADMIN_EMAIL/ADMIN_PASSWORD) on a free 127.0.0.1 port, as the bench starts its servers, runs the Postman collection
// against it with newman, stops the server and exits non-zero when any assertion failed or the run
// left more behind in the database than the README says.
import Database from 'better-sqlite3'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { ROOT, startServer, type Server } from '../bench/lib/processes.ts'

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

const COLLECTION = join(ROOT, 'postman', 'gatehouse.postman_collection.json')
const ENVIRONMENT = join(ROOT, 'postman', 'gatehouse.postman_environment.json')

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
  // Also when an interrupt ends the run (startServer then stops the server).
  process.once('exit', () => rmSync(dataDir, { recursive: true, force: true }))
  const adminEmail = 'admin@example.com'
  const adminPassword = `Admin-${randomBytes(18).toString('base64url')}`
  const databaseFile = join(dataDir, 'gatehouse.db')

  let server: Server | undefined
  let passed = 0
  let failed = 0
  let ok = false
  try {
    // Only the configuration given here: none inherited from this shell (a REDIS_URL would leave 127.0.0.1).
    server = await startServer({
      name: 'gatehouse',
      script: 'src/server.ts',
      readyPath: '/health',
      env: {
        DATABASE_URL: `file:${databaseFile}`,
        JWT_SECRET: randomBytes(48).toString('base64url'),
        ADMIN_EMAIL: adminEmail,
        ADMIN_PASSWORD: adminPassword,
        RATE_LIMIT_IP_MAX: '10000',
        LOG_LEVEL: 'warn'
      }
    })
    const summary = await runCollection({
      collection: COLLECTION,
      environment: ENVIRONMENT,
      envVar: [
        { key: 'baseUrl', value: server.url },
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
    await server?.stop()
    if (ok) {
      const problem = leftBehind(databaseFile)
      if (problem) console.error(`postman: ${problem}`)
      ok = problem === undefined
    }
  }

  const output = server?.output().trim()
  if (!ok && output) {
    console.error('--- server output ---')
    console.error(output)
  }
  console.log(`postman: ${passed} passed, ${failed} failed`)
  return ok ? 0 : 1
}

process.exitCode = await main()
