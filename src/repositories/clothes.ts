import { asc } from 'drizzle-orm'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { randomUUID } from 'node:crypto'
import type { Db } from '../db/index.ts'
import { clothes, type ClothingRow } from '../db/schema.ts'

export type Clothing = ClothingRow
export interface ClothingFields {
  name: string
  color: string | null
  size: string | null
  price: number
}

export function createClothingRepository (db: Db) {
  return {
    async list (): Promise<Clothing[]> {
      return db.select().from(clothes).orderBy(asc(clothes.name), asc(clothes.id)).all()
    },

    async create (fields: ClothingFields): Promise<Clothing> {
      const at = new Date()
      return db.insert(clothes).values({ id: randomUUID(), ...fields, createdAt: at, updatedAt: at }).returning().get()
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
  app.decorate('clothesRepository', createClothingRepository(app.db))
}, { name: 'clothes-repository', dependencies: ['database'] })
