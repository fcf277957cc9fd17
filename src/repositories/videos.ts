import { desc, eq } from 'drizzle-orm'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { randomUUID } from 'node:crypto'
import type { Database, VideoRow } from '../db/index.ts'

export type Video = VideoRow
export interface VideoFields {
  title: string
  author: string
  url: string
  isMemberOnly: boolean
}

export function createVideoRepository ({ db, tables: { videos }, dialect }: Database) {
  // The two lists, built and prepared once, not per request.
  const listed = (memberOnly: boolean) => db.select().from(videos)
    .where(eq(videos.isMemberOnly, memberOnly)).orderBy(desc(videos.createdAt), desc(videos.id))
    .prepare(memberOnly ? 'videos_member_only' : 'videos_free')
  const lists = { free: listed(false), memberOnly: listed(true) }

  return {
    async list (memberOnly: boolean): Promise<Video[]> {
      return (memberOnly ? lists.memberOnly : lists.free).execute()
    },

    /** The new video, or null when the owner no longer exists (a token outliving its user). */
    async create (ownerId: string | null, fields: VideoFields): Promise<Video | null> {
      const at = new Date()
      try {
        const [video] = await db.insert(videos).values({ id: randomUUID(), userId: ownerId, ...fields, createdAt: at, updatedAt: at }).returning()
        return video!
      } catch (error) {
        if (dialect.isForeignKeyViolation(error)) return null
        throw error
      }
    },

    /** Who owns the video, for the ownership guard; undefined when there is no such video. */
    async findOwner (id: string): Promise<{ ownerId: string | null } | undefined> {
      const [owner] = await db.select({ ownerId: videos.userId }).from(videos).where(eq(videos.id, id))
      return owner
    },

    async update (id: string, fields: Partial<VideoFields>): Promise<Video | undefined> {
      const [video] = await db.update(videos).set({ ...fields, updatedAt: new Date() }).where(eq(videos.id, id)).returning()
      return video
    },

    async delete (id: string): Promise<boolean> {
      return (await db.delete(videos).where(eq(videos.id, id)).returning({ id: videos.id })).length > 0
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
  app.decorate('videosRepository', app.database.serialise(createVideoRepository(app.database)))
}, { name: 'videos-repository', dependencies: ['database'] })
