import { asc } from 'drizzle-orm'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { randomUUID } from 'node:crypto'
import type { ClothingRow, Database } from '../db/index.ts'

export type Clothing = ClothingRow
export interface ClothingFields {
  name: string
  color: string | null
  size: string | null
  price: number
}

export function createClothingRepository ({ db, tables: { clothes }, dialect }: Database) {
  // Built and prepared once, not per request.
  const catalogue = db.select().from(clothes).orderBy(...dialect.textOrder(clothes.name), asc(clothes.id)).prepare('clothes_all')

  return {
    async list (): Promise<Clothing[]> {
      return catalogue.execute()
    },

    async create (fields: ClothingFields): Promise<Clothing> {
      const at = new Date()
      const [item] = await db.insert(clothes).values({ id: randomUUID(), ...fields, createdAt: at, updatedAt: at }).returning()
      return item!
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
