import { asc } from 'drizzle-orm'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { randomUUID } from 'node:crypto'
import type { ClothingRow, Database, Db } from '../db/index.ts'
import { actingAs, type Actor, type ActorEnded } from './users.ts'

export type Clothing = ClothingRow
export interface ClothingFields {
  name: string
  color: string | null
  size: string | null
  price: number
}

export function createClothingRepository (database: Database) {
  const { db, tables: { clothes }, dialect } = database
  // Built and prepared once, not per request.
  const catalogue = db.select().from(clothes).orderBy(...dialect.textOrder(clothes.name), asc(clothes.id)).prepare('clothes_all')

  const insert = async (executor: Db, fields: ClothingFields): Promise<Clothing> => {
    const at = new Date()
    const [item] = await executor.insert(clothes).values({ id: randomUUID(), ...fields, createdAt: at, updatedAt: at }).returning()
    return item!
  }

  return {
    async list (): Promise<Clothing[]> {
      return catalogue.execute()
    },

    /** An item the actor adds (actingAs), while they may. */
    async create (actor: Actor, fields: ClothingFields): Promise<Clothing | ActorEnded> {
      return actingAs(database, actor, (tx) => insert(tx, fields), { permission: 'clothes:write' })
    },

    /** An item db:seed adds, in the transaction it opens (a repository on that transaction's builder). */
    async seed (fields: ClothingFields): Promise<Clothing> {
      return insert(db, fields)
    }
  }
}

export type ClothingRepository = ReturnType<typeof createClothingRepository>

declare module 'fastify' {
  interface FastifyInstance {
    clothesRepository: ClothingRepository
  }
}

export default fp(async function clothesRepositoryPlugin (app: FastifyInstance) {
  app.decorate('clothesRepository', app.database.serialise(createClothingRepository(app.database)))
}, { name: 'clothes-repository', dependencies: ['database'] })
