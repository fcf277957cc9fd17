import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { openDatabase, type DatabaseHandle, type Db } from '../db/index.ts'

declare module 'fastify' {
  interface FastifyInstance {
    db: Db
    database: Pick<DatabaseHandle, 'ping'>
  }
}

async function databasePlugin (app: FastifyInstance) {
  const handle = openDatabase(app.config.databaseUrl)
  app.decorate('db', handle.db)
  app.decorate('database', { ping: handle.ping })
  app.addHook('onClose', async () => handle.close())
}

export default fp(databasePlugin, { name: 'database', dependencies: ['config'] })
