// npm test: the whole suite on SQLite; then the database-backed files again on PostgreSQL when
// one is reachable (TEST_DATABASE_URL, or the local default), saying clearly which ran.
import { spawnSync } from 'node:child_process'
import { readdirSync } from 'node:fs'
import { POSTGRES_URL as postgresUrl, postgresReachable } from '../test/services.ts'

/**
 * Files the PostgreSQL pass leaves out: they choose their databases themselves (migrations,
 * multi-instance, outages), test processes, sockets or the browser rather than the database, or
 * restore SQLite's state with raw SQL (fuzz). Every other file runs again on PostgreSQL, so a
 * new test file is run on both databases unless it is named here.
 */
const SQLITE_PASS_ONLY = new Set([
  'cli', 'config', 'crash', 'driver-loading', 'fuzz', 'http-parser-errors', 'migrations',
  'multi-instance', 'outages', 'shutdown', 'swagger-ui', 'verified-tokens'
])
const DATABASE_TESTS = readdirSync(new URL('../test/', import.meta.url))
  .filter((file) => file.endsWith('.test.ts') && !SQLITE_PASS_ONLY.has(file.slice(0, -'.test.ts'.length)))
  .sort()
  .map((file) => `test/${file}`)

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
