// npm run db:migrate: applies pending migrations to DATABASE_URL and exits. The server also
// migrates at start; this is for deployments that migrate once before starting instances.
import { DEFAULT_DATABASE_URL } from '../config.ts'
import { openDatabase } from '../db/index.ts'

const databaseUrl = process.env.DATABASE_URL?.trim() || DEFAULT_DATABASE_URL
await (await openDatabase(databaseUrl)).close()
console.log(`Migrations applied to ${databaseUrl.replace(/\/\/[^@/]*@/, '//')}`)
