import { defineConfig } from 'drizzle-kit'

// Generates SQL migrations from a dialect's schema: `npm run db:generate` runs it for both
// (DB_DIALECT=sqlite, the default, and DB_DIALECT=postgres). They are applied at start-up and by
// `npm run db:migrate`.
const dialect = process.env.DB_DIALECT === 'postgres' ? 'postgresql' : 'sqlite'
const folder = dialect === 'postgresql' ? 'postgres' : 'sqlite'

export default defineConfig({
  dialect,
  schema: `./src/db/${folder}/schema.ts`,
  out: `./migrations/${folder}`
})
