import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import fp from 'fastify-plugin'
import { actorEnded, actorOf } from '../plugins/auth.ts'
import type { Clothing } from '../repositories/clothes.ts'
import { isActorEnded } from '../repositories/users.ts'
import { DisplayText, ErrorResponse, Timestamp, Uuid, guardedErrors } from '../schemas/common.ts'

const Price = Type.Integer({ minimum: 0, maximum: 100_000_000, description: 'Price in cents (integer): 1999 is 19.99', examples: [1999] })

const ClothingResponse = Type.Object({
  id: Uuid,
  name: Type.String(),
  color: Type.Union([Type.String(), Type.Null()]),
  size: Type.Union([Type.String(), Type.Null()]),
  price: Price,
  created_at: Timestamp,
  updated_at: Timestamp
}, { title: 'Clothing' })
const NewClothing = Type.Object({
  name: DisplayText(200),
  // null as the answer shows an item without one: a client may send back what it got.
  color: Type.Optional(Type.Union([DisplayText(50), Type.Null()])),
  size: Type.Optional(Type.Union([DisplayText(20, { examples: ['M', '42', 'XL'] }), Type.Null()])),
  price: Price
}, { additionalProperties: false })

const presentClothing = (item: Clothing) => ({
  id: item.id,
  name: item.name,
  color: item.color,
  size: item.size,
  price: item.price,
  created_at: item.createdAt.toISOString(),
  updated_at: item.updatedAt.toISOString()
})

const clothesRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.get('', {
    preHandler: [app.authenticate, app.requirePermission('clothes:read')],
    schema: {
      tags: ['clothes'],
      summary: 'The catalogue, by name (any signed-in user)',
      response: { 200: Type.Array(ClothingResponse), ...guardedErrors }
    }
  }, async () => (await app.clothesRepository.list()).map(presentClothing))

  app.post('', {
    preHandler: [app.authenticate, app.loadAccount, app.requirePermission('clothes:write')],
    schema: {
      tags: ['clothes'],
      summary: 'Add an item to the catalogue (admins)',
      body: NewClothing,
      response: { 201: ClothingResponse, 400: ErrorResponse, ...guardedErrors }
    }
  }, async (request, reply) => {
    const { name, color, size, price } = request.body
    const item = await app.clothesRepository.create(actorOf(request), { name, color: color ?? null, size: size ?? null, price })
    if (isActorEnded(item)) throw actorEnded(item)
    return reply.code(201).send(presentClothing(item))
  })
}

export default fp(clothesRoutes, { name: 'clothes-routes', dependencies: ['authorization', 'clothes-repository'], encapsulate: true })
