import { Ajv, type ValidateFunction } from 'ajv'
import addFormats from 'ajv-formats'
import type { FastifyInstance, FastifyReply, FastifyRequest, HookHandlerDoneFunction, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import { apiError } from '../errors.ts'
import { replaceJsonParser, unsupportedUnlessEmpty } from './body-parsers.ts'
import { isDisplayText } from '../schemas/common.ts'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The route's body schema applies when a body is sent; a request without one gets `{}`. */
    bodyOptional?: true
  }
}

const common = { useDefaults: true, removeAdditional: false } as const

/**
 * Bodies are JSON and get no type coercion: `{"refresh_token": 42}` is a validation error, not the
 * string "42". Querystrings and params are text, so they are coerced (`?limit=20`). Unknown body
 * properties are refused, not dropped (removeAdditional: false).
 */
async function validationPlugin (app: FastifyInstance) {
  const withFormats = (ajv: Ajv) => addFormats.default(ajv).addFormat('http-url', isHttpUrl).addFormat('display-text', isDisplayText)
  // Every error of a body (8 KiB at most), so a message can name a misspelt property
  // (`refreshToken`) rather than the property it was meant to be, missing (errors.ts).
  const bodies = withFormats(new Ajv({ ...common, coerceTypes: false, allErrors: true }))
  const textParts = withFormats(new Ajv({ ...common, coerceTypes: 'array', allErrors: false }))
  app.setValidatorCompiler(({ schema, httpPart }) =>
    httpPart === 'body' ? bodies.compile(schema) : decimalIntegers(schema, textParts.compile(schema)))
  replaceJsonParser(app)
  app.addContentTypeParser('*', unsupportedUnlessEmpty)
  app.addHook('onRoute', (route) => {
    const takesBody = takesBodyMethod(route)
    if (takesBody && route.config?.bodyOptional) {
      route.preValidation = [bodyOrEmptyObject, ...[route.preValidation ?? []].flat()]
    }
    const uuids = uuidParameters(route.schema?.params)
    if (uuids.length > 0) route.preValidation = [lowerCaseUuids(uuids), ...[route.preValidation ?? []].flat()]
    // Before the body is read: such a path is answered as one no route has, whatever its body.
    if (route.url.includes(':')) route.onRequest = [emptyParameterNotFound, ...[route.onRequest ?? []].flat()]
    if (takesBody || route.schema?.querystring || route.schema?.params) {
      // Fastify validates before any preHandler: keep its verdict and give it after the access
      // checks, so a caller who may not ask gets 401 or 403, never a lesson in the schema.
      route.attachValidation = true
      const handlers = [route.preHandler ?? []].flat()
      let accessChecks = 0
      while (accessChecks < handlers.length && ACCESS_CHECKS.has(handlers[accessChecks]!)) accessChecks++
      const checks = needsBody(route)
        ? [requireBody, rejectInvalidRequest]
        : takesBody && !route.schema?.body ? [rejectInvalidRequest, rejectBody] : [rejectInvalidRequest]
      route.preHandler = [...handlers.slice(0, accessChecks), ...checks, ...handlers.slice(accessChecks)]
    }
  })
}

const DECIMAL_INTEGER = /^-?\d+$/

/**
 * Integers in a querystring or path as decimal digits only: Ajv coerces text with Number(), which
 * reads `0x10`, `1e1`, `+5`, `10.0` and ` 5` as numbers, so `?limit=0x10` would list 16.
 */
function decimalIntegers (schema: unknown, validate: ValidateFunction): ValidateFunction {
  const properties = (schema as { properties?: Record<string, { type?: unknown }> }).properties ?? {}
  const integers = Object.keys(properties).filter((name) => properties[name]!.type === 'integer')
  if (integers.length === 0) return validate
  const checked = ((data: Record<string, unknown>) => {
    const notDecimal = integers.find((name) => typeof data[name] === 'string' && !DECIMAL_INTEGER.test(data[name]))
    checked.errors = notDecimal === undefined
      ? (validate(data) ? null : validate.errors)
      : [{ instancePath: `/${notDecimal}`, schemaPath: `#/properties/${notDecimal}/type`, keyword: 'type', params: { type: 'integer' }, message: 'must be integer' }]
    return checked.errors === null
  }) as ValidateFunction
  return checked
}

/**
 * Whether a route matched with a named path parameter left empty: the router gives `/videos/` to
 * `/videos/:id` with an id of ''. Such a path names no resource, so it is answered as one no route
 * matches (404, or 405 where another method serves it), not as a bad id. A wildcard's (`*`) may
 * be empty: `/docs/static/` is Swagger UI's page.
 */
export const hasEmptyParameter = (params: unknown) =>
  Object.entries(params as Record<string, unknown>).some(([name, value]) => name !== '*' && value === '')

function emptyParameterNotFound (request: FastifyRequest, reply: FastifyReply, done: HookHandlerDoneFunction) {
  // Not returned: a hook that returns the reply, a thenable, would go on to the next one.
  if (hasEmptyParameter(request.params)) reply.callNotFound()
  else done()
}

/** The path parameters whose schema is a UUID (`format: 'uuid'`). */
function uuidParameters (schema: unknown): string[] {
  const properties = (schema as { properties?: Record<string, { format?: unknown }> } | undefined)?.properties ?? {}
  return Object.keys(properties).filter((name) => properties[name]!.format === 'uuid')
}

/**
 * RFC 9562 §4: UUIDs are case-insensitive on input. Ids are stored as randomUUID() writes them,
 * lower case, so `/videos/E404D462-…` finds the video `/videos/e404d462-…` does.
 */
function lowerCaseUuids (names: string[]) {
  return function lowerCaseUuids (request: FastifyRequest, _reply: FastifyReply, done: HookHandlerDoneFunction) {
    const params = request.params as Record<string, unknown>
    for (const name of names) {
      const value = params[name]
      if (typeof value === 'string') params[name] = value.toLowerCase()
    }
    done()
  }
}

const URI_FORMAT = addFormats.default.get('uri') as (text: string) => boolean
/** http or https, then an authority that is not empty and holds no `user:password@` (RFC 3986 §3.2). */
const HTTP_AUTHORITY = /^https?:\/\/[^/?#@]+(?:[/?#]|$)/i

/**
 * `format: 'http-url'`: an absolute URI (RFC 3986, as `format: 'uri'` has it) of http or https
 * whose authority names a host the WHATWG URL parser, a browser's, accepts; without credentials,
 * which every reader of a list that shows it would see.
 */
const isHttpUrl = (text: string): boolean => HTTP_AUTHORITY.test(text) && URI_FORMAT(text) && URL.canParse(text)

const ACCESS_CHECKS = new WeakSet<object>()

/**
 * Marks a preHandler that reads nothing the request schema checks (the bearer token, the caller's
 * account and roles): at the start of a route's preHandler list, it runs before the request's
 * validation error is answered. Checks that need the validated request (ownership of `:id`) come
 * after it.
 */
export function accessCheck<T extends object> (handler: T): T {
  ACCESS_CHECKS.add(handler)
  return handler
}

/**
 * How many lines of a header the request sent (`name` in lower case). Node keeps only the first of
 * a repeated Authorization or Host, so request.headers cannot tell; its raw lines can.
 */
export function timesSent (request: FastifyRequest, name: string): number {
  const raw = request.raw.rawHeaders
  let count = 0
  for (let index = 0; index < raw.length; index += 2) {
    const line = raw[index]!
    if (line.length === name.length && line.toLowerCase() === name) count++
  }
  return count
}

const BODY_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE'])
/** Whether a route has a method that may carry a body. */
export const takesBodyMethod = (route: Pick<RouteOptions, 'method'>) => [route.method].flat().some((method) => BODY_METHODS.has(method))
/** Whether a route refuses a request without a body: it has a body schema, not marked optional. */
export const needsBody = (route: Pick<RouteOptions, 'method' | 'schema' | 'config'>) =>
  takesBodyMethod(route) && route.schema?.body !== undefined && !route.config?.bodyOptional

/** preHandler of a route that needs a body: a request without one is refused as such. */
function requireBody (request: FastifyRequest, _reply: FastifyReply, done: HookHandlerDoneFunction) {
  done(request.body === undefined ? apiError(400, 'invalid_body', 'This endpoint needs a body.') : undefined)
}

function bodyOrEmptyObject (request: FastifyRequest, _reply: FastifyReply, done: HookHandlerDoneFunction) {
  // Only a missing body: JSON null is a body, and the schema refuses it.
  if (request.body === undefined) request.body = {}
  done()
}

/**
 * What is wrong with the first string that cannot be stored as sent, or undefined: a NUL
 * character (PostgreSQL cannot store one, and nothing legitimate sends it), or a lone surrogate
 * (`"\ud800"` in JSON: well-formed JSON, but no Unicode text; stored or hashed, it would become
 * U+FFFD, and passwords that differ would match).
 */
function textProblem (value: unknown, path: string): string | undefined {
  // Depth first, in the order sent, on a stack of its own: a body nested thousands deep still fits
  // the 8 KiB limit, and recursion would overflow the call stack (a 500).
  const pending: Array<[unknown, string]> = [[value, path]]
  while (pending.length > 0) {
    const [item, itemPath] = pending.pop()!
    if (typeof item === 'string') {
      if (item.includes('\u0000')) return `${itemPath} must not contain NUL characters`
      if (!item.isWellFormed()) return `${itemPath} must not contain lone surrogates`
    } else if (item !== null && typeof item === 'object') {
      const entries = Object.entries(item)
      for (let index = entries.length - 1; index >= 0; index--) {
        const [key, child] = entries[index]!
        pending.push([child, `${itemPath}/${key}`])
      }
    }
  }
  return undefined
}

/**
 * preHandler: 400 for the schema's validation error, or for text in the body or querystring that
 * cannot be stored as sent (textProblem; refused alike on both databases), as a validation error
 * naming the field.
 */
function rejectInvalidRequest (request: FastifyRequest, _reply: FastifyReply, done: HookHandlerDoneFunction) {
  if (request.validationError) return done(request.validationError)
  const found = textProblem(request.body, 'body') ?? textProblem(request.query, 'querystring')
  done(found ? apiError(400, 'validation_error', found) : undefined)
}

/**
 * preHandler of a route that takes no body (a DELETE, say): a body it was sent is refused, not
 * ignored, as unknown properties are everywhere (`{"dry_run": true}` must not delete anything).
 * `{}` is no body: some clients send it with every request.
 */
function rejectBody (request: FastifyRequest, _reply: FastifyReply, done: HookHandlerDoneFunction) {
  const { body } = request
  if (body === undefined || (isPlainObject(body) && Object.keys(body).length === 0)) return done()
  const first = isPlainObject(body) ? Object.keys(body)[0] : undefined
  done(apiError(400, 'validation_error', first === undefined ? 'body must be empty: this endpoint takes none' : `body/${first} is not allowed`))
}

const isPlainObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value)

export default fp(validationPlugin, { name: 'validation' })
