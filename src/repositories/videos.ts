import { desc, eq } from 'drizzle-orm'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { randomUUID } from 'node:crypto'
import { hasPermission, type Role } from '../auth/permissions.ts'
import type { Database, Db, VideoRow } from '../db/index.ts'
import { actingAs, type Actor, type ActorEnded } from './users.ts'

export type Video = VideoRow
export interface VideoFields {
  title: string
  author: string
  url: string
  isMemberOnly: boolean
}

export function createVideoRepository (database: Database) {
  const { db, tables: { videos } } = database
  // The two lists, built and prepared once, not per request.
  const listed = (memberOnly: boolean) => db.select().from(videos)
    .where(eq(videos.isMemberOnly, memberOnly)).orderBy(desc(videos.createdAt), desc(videos.id))
    .prepare(memberOnly ? 'videos_member_only' : 'videos_free')
  const lists = { free: listed(false), memberOnly: listed(true) }

  const insert = async (executor: Db, ownerId: string | null, fields: VideoFields): Promise<Video> => {
    const at = new Date()
    const [video] = await executor.insert(videos).values({ id: randomUUID(), userId: ownerId, ...fields, createdAt: at, updatedAt: at }).returning()
    return video!
  }

  /**
   * Whether the actor may still change the video in this transaction: they own it, or their roles as
   * stored grant videos:manage-any. The route's guard judged the roles loadAccount read; this sees a
   * change made by hand since. A video gone meanwhile is left to the write, which finds none (404).
   */
  const mayChange = async (tx: Db, actor: Actor, roles: Role[], id: string) => {
    if (hasPermission(roles, 'videos:manage-any')) return true
    const [video] = await tx.select({ ownerId: videos.userId }).from(videos).where(eq(videos.id, id))
    return !video || video.ownerId === actor.userId
  }

  return {
    async list (memberOnly: boolean): Promise<Video[]> {
      return (memberOnly ? lists.memberOnly : lists.free).execute()
    },

    /** A video the actor publishes and owns (actingAs), while they may. */
    async create (actor: Actor, fields: VideoFields): Promise<Video | ActorEnded> {
      return actingAs(database, actor, (tx) => insert(tx, actor.userId, fields), { permission: 'videos:publish' })
    },

    /** A video with no owner, which admins manage: db:seed's, in the transaction it opens. */
    async seed (fields: VideoFields): Promise<Video> {
      return insert(db, null, fields)
    },

    /** Who owns the video, for the ownership guard; undefined when there is no such video. */
    async findOwner (id: string): Promise<{ ownerId: string | null } | undefined> {
      const [owner] = await db.select({ ownerId: videos.userId }).from(videos).where(eq(videos.id, id))
      return owner
    },

    /**
     * The video changed for the actor (actingAs); undefined when it no longer exists;
     * 'session_ended' when they may change it no more (mayChange).
     */
    async update (actor: Actor, id: string, fields: Partial<VideoFields>): Promise<Video | undefined | ActorEnded> {
      return actingAs(database, actor, async (tx, roles) => {
        if (!await mayChange(tx, actor, roles, id)) return 'session_ended'
        const [video] = await tx.update(videos).set({ ...fields, updatedAt: new Date() }).where(eq(videos.id, id)).returning()
        return video
      })
    },

    /** Whether the video existed and was deleted for the actor (actingAs, mayChange as for update). */
    async delete (actor: Actor, id: string): Promise<boolean | ActorEnded> {
      return actingAs(database, actor, async (tx, roles) => {
        if (!await mayChange(tx, actor, roles, id)) return 'session_ended'
        return (await tx.delete(videos).where(eq(videos.id, id)).returning({ id: videos.id })).length > 0
      })
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
