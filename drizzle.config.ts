import { defineConfig } from 'drizzle-kit'

// Generates SQL migrations from the schema: `npm run db:generate`. They are applied at start-up
// and by `npm run db:migrate`.
export default defineConfig({
  dialect: 'sqlite',
  schema: './src/db/schema.ts',
  out: './migrations/sqlite'
})
