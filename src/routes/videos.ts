import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import fp from 'fastify-plugin'
import { actorEnded, actorOf } from '../plugins/auth.ts'
import { notFound } from '../plugins/authorization.ts'
import type { Video } from '../repositories/videos.ts'
import { isActorEnded } from '../repositories/users.ts'
import { DisplayText, ErrorResponse, Timestamp, Uuid, guardedErrors } from '../schemas/common.ts'

const Title = DisplayText(200)
const Author = DisplayText(100)
const Url = Type.String({
  format: 'http-url',
  maxLength: 2048,
  description: 'An http or https URL with a host and no user:password@ (plugins/validation.ts)',
  examples: ['https://videos.example.com/intro.mp4']
})

const VideoResponse = Type.Object({
  id: Uuid,
  title: Type.String(),
  author: Type.String(),
  url: Type.String({ format: 'uri' }),
  is_member_only: Type.Boolean(),
  user_id: Type.Union([Uuid, Type.Null()], { description: 'The publisher; null once their account is deleted' }),
  created_at: Timestamp,
  updated_at: Timestamp
}, { title: 'Video' })
const NewVideo = Type.Object({
  title: Title,
  author: Author,
  url: Url,
  is_member_only: Type.Optional(Type.Boolean({ default: false }))
}, { additionalProperties: false })
const VideoChange = Type.Partial(Type.Object({
  title: Title,
  author: Author,
  url: Url,
  is_member_only: Type.Boolean()
}), { additionalProperties: false, minProperties: 1 })
const VideoParams = Type.Object({ id: Uuid })

const presentVideo = (video: Video) => ({
  id: video.id,
  title: video.title,
  author: video.author,
  url: video.url,
  is_member_only: video.isMemberOnly,
  user_id: video.userId,
  created_at: video.createdAt.toISOString(),
  updated_at: video.updatedAt.toISOString()
})

const videoRoutes: FastifyPluginAsyncTypebox = async (app) => {
  // Runs after params validation, so the id is a UUID.
  const ownerOrAdmin = app.requireOwnerOr('videos:manage-any', async (request) =>
    app.videosRepository.findOwner((request.params as { id: string }).id))

  app.get('', {
    config: { access: 'public' },
    schema: {
      tags: ['videos'],
      summary: 'Free videos, newest first',
      response: { 200: Type.Array(VideoResponse) }
    }
  }, async () => (await app.videosRepository.list(false)).map(presentVideo))

  app.get('/member', {
    preHandler: [app.authenticate, app.requirePermission('videos:watch-member')],
    schema: {
      tags: ['videos'],
      summary: 'Member-only videos, newest first (members, developers, admins)',
      response: { 200: Type.Array(VideoResponse), ...guardedErrors }
    }
  }, async () => (await app.videosRepository.list(true)).map(presentVideo))

  app.post('', {
    preHandler: [app.authenticate, app.loadAccount, app.requirePermission('videos:publish')],
    schema: {
      tags: ['videos'],
      summary: 'Publish a video (developers, admins); the caller owns it',
      body: NewVideo,
      response: { 201: VideoResponse, 400: ErrorResponse, ...guardedErrors }
    }
  }, async (request, reply) => {
    const { title, author, url, is_member_only: isMemberOnly = false } = request.body
    const video = await app.videosRepository.create(actorOf(request), { title, author, url, isMemberOnly })
    if (isActorEnded(video)) throw actorEnded(video)
    return reply.code(201).send(presentVideo(video))
  })

  app.patch('/:id', {
    preHandler: [app.authenticate, app.loadAccount, ownerOrAdmin],
    schema: {
      tags: ['videos'],
      summary: 'Change a video (its owner or an admin)',
      params: VideoParams,
      body: VideoChange,
      response: { 200: VideoResponse, 400: ErrorResponse, ...guardedErrors, 404: ErrorResponse }
    }
  }, async (request) => {
    const { title, author, url, is_member_only: isMemberOnly } = request.body
    const video = await app.videosRepository.update(actorOf(request), request.params.id, { title, author, url, isMemberOnly })
    if (isActorEnded(video)) throw actorEnded(video)
    // Deleted since the ownership check: the answer a request after the delete gets.
    if (!video) throw notFound()
    return presentVideo(video)
  })

  app.delete('/:id', {
    preHandler: [app.authenticate, app.loadAccount, ownerOrAdmin],
    schema: {
      tags: ['videos'],
      summary: 'Delete a video (its owner or an admin)',
      params: VideoParams,
      response: { 204: Type.Null(), 400: ErrorResponse, ...guardedErrors, 404: ErrorResponse }
    }
  }, async (request, reply) => {
    const deleted = await app.videosRepository.delete(actorOf(request), request.params.id)
    if (isActorEnded(deleted)) throw actorEnded(deleted)
    if (!deleted) throw notFound()
    return reply.code(204).send(null)
  })
}

export default fp(videoRoutes, { name: 'video-routes', dependencies: ['authorization', 'videos-repository'], encapsulate: true })
