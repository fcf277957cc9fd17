import { desc, eq } from 'drizzle-orm'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { randomUUID } from 'node:crypto'
import type { Db } from '../db/index.ts'
import { videos, type VideoRow } from '../db/schema.ts'

export type Video = VideoRow
export interface VideoFields {
  title: string
  author: string
  url: string
  isMemberOnly: boolean
}

export function createVideoRepository (db: Db) {
  return {
    async list (memberOnly: boolean): Promise<Video[]> {
      return db.select().from(videos).where(eq(videos.isMemberOnly, memberOnly)).orderBy(desc(videos.createdAt)).all()
    },

    async create (ownerId: string | null, fields: VideoFields): Promise<Video> {
      const at = new Date()
      return db.insert(videos).values({ id: randomUUID(), userId: ownerId, ...fields, createdAt: at, updatedAt: at }).returning().get()
    },

    /** Who owns the video, for the ownership guard; undefined when there is no such video. */
    async findOwner (id: string): Promise<{ ownerId: string | null } | undefined> {
      return db.select({ ownerId: videos.userId }).from(videos).where(eq(videos.id, id)).get()
    },

    async update (id: string, fields: Partial<VideoFields>): Promise<Video | undefined> {
      return db.update(videos).set({ ...fields, updatedAt: new Date() }).where(eq(videos.id, id)).returning().get()
    },

    async delete (id: string): Promise<boolean> {
      return db.delete(videos).where(eq(videos.id, id)).run().changes > 0
    }
  }
}

export type VideoRepository = ReturnType<typeof createVideoRepository>

declare module 'fastify' {
  interface FastifyInstance {
    videosRepository: VideoRepository
  }
}

export default fp(async function videosRepositoryPlugin (app: FastifyInstance) {
  app.decorate('videosRepository', createVideoRepository(app.db))
}, { name: 'videos-repository', dependencies: ['database'] })
