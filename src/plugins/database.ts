import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { openDatabase, type Database } from '../db/index.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** SQLite or PostgreSQL, by DATABASE_URL; only the repositories and /health query it. */
    database: Database
  }
}

async function databasePlugin (app: FastifyInstance) {
  const database = await openDatabase(app.config.databaseUrl, {
    onMigrationWait: () => app.log.info('waiting for another instance to finish migrating the database')
  })
  app.decorate('database', database)
  app.addHook('onClose', async () => database.close())
}

export default fp(databasePlugin, { name: 'database', dependencies: ['config'] })
