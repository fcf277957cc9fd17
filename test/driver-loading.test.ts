import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { test } from 'tap'

const run = promisify(execFile)

// Whether a driver was loaded: the CommonJS module cache of a fresh process that built the app.
// Importing pg afterwards checks that the cache would show it (the test can fail). test/helper.ts
// imports pg itself, so the probe builds its own configuration.
const PROBE = `
import { createRequire } from 'node:module'
import { buildApp } from './src/app.ts'
import { loadConfig } from './src/config.ts'
const cache = createRequire(import.meta.url).cache
const loaded = (name) => Object.keys(cache).some((path) => path.includes('/node_modules/' + name + '/'))
const app = await buildApp(loadConfig({ DATABASE_URL: ':memory:', JWT_SECRET: 'x'.repeat(48), LOG_LEVEL: 'silent' }))
await app.ready()
const afterStart = { pg: loaded('pg'), ioredis: loaded('ioredis'), betterSqlite3: loaded('better-sqlite3') }
await app.close()
await import('pg')
console.log(JSON.stringify({ afterStart, pgAfterImport: loaded('pg') }))
`

test('the SQLite default loads neither node-postgres nor ioredis', async (t) => {
  const { stdout } = await run(process.execPath, ['--import', 'tsx', '--input-type=module', '--eval', PROBE])
  t.same(JSON.parse(stdout), {
    afterStart: { pg: false, ioredis: false, betterSqlite3: true },
    pgAfterImport: true
  })
})
