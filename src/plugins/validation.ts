import { Ajv } from 'ajv'
import addFormats from 'ajv-formats'
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction } from 'fastify'
import fp from 'fastify-plugin'
import { apiError } from '../errors.ts'

const common = { useDefaults: true, removeAdditional: false, allErrors: false } as const

/**
 * Bodies are JSON and get no type coercion: `{"refresh_token": 42}` is a validation error, not the
 * string "42". Querystrings and params are text, so they are coerced (`?limit=20`). Unknown body
 * properties are refused, not dropped (removeAdditional: false).
 */
async function validationPlugin (app: FastifyInstance) {
  const bodies = addFormats.default(new Ajv({ ...common, coerceTypes: false }))
  const textParts = addFormats.default(new Ajv({ ...common, coerceTypes: 'array' }))
  app.setValidatorCompiler(({ schema, httpPart }) =>
    (httpPart === 'body' ? bodies : textParts).compile(schema))
  // Where text can reach the database: request bodies, and the querystrings routes declare.
  app.addHook('onRoute', (route) => {
    const methods = [route.method].flat()
    if (!route.schema?.querystring && !methods.some((method) => BODY_METHODS.has(method))) return
    route.preValidation = [refuseNul, ...[route.preValidation ?? []].flat()]
  })
}

const BODY_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE'])

/** The path of the first string holding a NUL character, or undefined. */
function nulPath (value: unknown, path: string): string | undefined {
  if (typeof value === 'string') return value.includes('\u0000') ? path : undefined
  if (value === null || typeof value !== 'object') return undefined
  for (const [key, item] of Object.entries(value)) {
    const found = nulPath(item, `${path}/${key}`)
    if (found) return found
  }
  return undefined
}

/**
 * No text field takes a NUL character: PostgreSQL cannot store one, and nothing legitimate sends
 * it. Refused alike on both databases, as a validation error naming the field.
 */
function refuseNul (request: FastifyRequest, _reply: FastifyReply, done: HookHandlerDoneFunction) {
  const found = nulPath(request.body, 'body') ?? nulPath(request.query, 'querystring')
  done(found ? apiError(400, 'validation_error', `${found} must not contain NUL characters`) : undefined)
}

export default fp(validationPlugin, { name: 'validation' })
