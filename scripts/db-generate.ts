// npm run db:generate [-- --name <name>]: a migration for each dialect from its schema
// (drizzle.config.ts), under the same name, with the arguments given to both.
import { spawnSync } from 'node:child_process'
import { readFileSync, readdirSync, writeFileSync } from 'node:fs'

const POSTGRES_MIGRATIONS = new URL('../migrations/postgres/', import.meta.url)
const sqlFiles = () => new Set(readdirSync(POSTGRES_MIGRATIONS).filter((file) => file.endsWith('.sql')))

const before = sqlFiles()
for (const dialect of ['sqlite', 'postgres']) {
  const { status } = spawnSync('npx', ['drizzle-kit', 'generate', ...process.argv.slice(2)], {
    stdio: 'inherit',
    env: { ...process.env, DB_DIALECT: dialect }
  })
  if (status !== 0) process.exit(status ?? 1)
}

// drizzle-kit names the schema in what it writes (`REFERENCES "public"."users"`, an enum's
// `"public"."role"`), but the tables live in the connection's current schema, whichever that is
// (README, Database).
for (const file of sqlFiles()) {
  if (before.has(file)) continue
  const url = new URL(file, POSTGRES_MIGRATIONS)
  const sql = readFileSync(url, 'utf8')
  const unqualified = sql.replaceAll('"public".', '')
  if (unqualified !== sql) {
    writeFileSync(url, unqualified)
    console.log(`migrations/postgres/${file}: no longer names the "public" schema`)
  }
}
