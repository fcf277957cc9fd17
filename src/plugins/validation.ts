import { Ajv } from 'ajv'
import addFormats from 'ajv-formats'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'

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
}

export default fp(validationPlugin, { name: 'validation' })
