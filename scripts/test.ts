// npm test: the whole suite on SQLite; then the database-backed files again on PostgreSQL when
// one is reachable (TEST_DATABASE_URL, or the local default), saying clearly which ran.
import { spawnSync } from 'node:child_process'
import { POSTGRES_URL as postgresUrl, postgresReachable } from '../test/services.ts'

/** The route and repository tests: everything that reads or writes through the database. */
const DATABASE_TESTS = [
  'access-tokens', 'admin-users', 'auth', 'authorization', 'logging', 'passwords', 'races',
  'rate-limits', 'refresh', 'sessions', 'token-endpoint'
].map((name) => `test/${name}.test.ts`)

function tap (files: string[], env: Record<string, string | undefined>): boolean {
  const { TEST_DATABASE_URL: _ignored, ...inherited } = process.env
  return spawnSync('npx', ['tap', ...files], { stdio: 'inherit', env: { ...inherited, ...env } }).status === 0
}

const results: string[] = []
const sqlite = tap([], {})
results.push(`sqlite: ${sqlite ? 'passed' : 'FAILED'} (every test file)`)

let postgres = true
if (await postgresReachable()) {
  postgres = tap(DATABASE_TESTS, { TEST_DATABASE_URL: postgresUrl })
  results.push(`postgres: ${postgres ? 'passed' : 'FAILED'} (${DATABASE_TESTS.length} database test files on ${new URL(postgresUrl).host})`)
} else {
  results.push(`postgres: not run, nothing reachable at ${new URL(postgresUrl).host} (set TEST_DATABASE_URL, or start PostgreSQL)`)
}

console.log(`\n${results.join('\n')}`)
process.exitCode = sqlite && postgres ? 0 : 1
