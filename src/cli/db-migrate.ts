// npm run db:migrate: applies pending migrations to DATABASE_URL and exits. The server also
// migrates at start; this is for deployments that migrate once before starting instances.
import { databaseName, openDatabaseOrExit } from './open-database.ts'

await (await openDatabaseOrExit()).close()
console.log(`Migrations applied to ${databaseName()}`)
