import { Ajv, type ValidateFunction } from 'ajv'
import addFormats from 'ajv-formats'
import { errorCodes, type FastifyBodyParser, type FastifyInstance, type FastifyReply, type FastifyRequest, type HookHandlerDoneFunction, type RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import { isUtf8 } from 'node:buffer'
import { apiError } from '../errors.ts'
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

// RFC 9110 §15.5.16: Accept-Encoding tells the client which coding would do.
const unsupportedCoding = () => apiError(415, 'unsupported_media_type', 'Send the body without a Content-Encoding: none is decoded.',
  { 'accept-encoding': 'identity' })
const unsupportedCharset = () => apiError(415, 'unsupported_media_type', 'Send the body in UTF-8, with charset=utf-8 or no charset.')

/** The charset parameters of a Content-Type (RFC 9110 §8.3.1), lower-cased: one, none, or several. */
const CHARSET_PARAMETER = /;\s*charset\s*=\s*(?:"([^"]*)"|([^;\s]*))/gi
const charsetsOf = (contentType = '') => [...contentType.matchAll(CHARSET_PARAMETER)].map((found) => (found[1] ?? found[2]!).toLowerCase())
/** UTF-8, by either name, and US-ASCII, its subset. */
const UTF8_CHARSETS = new Set(['utf-8', 'utf8', 'us-ascii'])

/** A client's name for a field, parameter or member, as a message may show it: plain, and short. */
const isPlainName = (name: string) => /^[\w.-]{1,64}$/.test(name)

/**
 * The first member name repeated within one object of a JSON text JSON.parse accepted, or
 * undefined; with `only`, the first of those names repeated in the outermost object. JSON.parse
 * keeps the last of them, which a proxy, a firewall or a log reading the first would not see
 * (RFC 8259 §4: such names SHOULD be unique, and readers differ).
 */
function repeatedJsonName (text: string, only?: ReadonlySet<string>): string | undefined {
  // The names seen in each open object, innermost last; null for an array.
  const open: Array<Set<string> | null> = []
  let nameNext = false
  for (let index = 0; index < text.length; index++) {
    const char = text[index]
    if (char === '"') {
      let end = index + 1
      while (text[end] !== '"') end += text[end] === '\\' ? 2 : 1
      if (nameNext) {
        // Decoded only when it holds an escape: `"\u0061"` and `"a"` name the same member.
        const raw = text.slice(index + 1, end)
        const name = raw.includes('\\') ? JSON.parse(text.slice(index, end + 1)) as string : raw
        const names = open.at(-1)!
        if (names.has(name) && (!only || (open.length === 1 && only.has(name)))) return name
        names.add(name)
        nameNext = false
      }
      index = end
    } else if (char === '{' || char === '[') {
      open.push(char === '{' ? new Set() : null)
      nameNext = char === '{'
    } else if (char === '}' || char === ']') {
      open.pop()
      nameNext = false
    } else if (char === ',') {
      nameNext = open.at(-1) instanceof Set
    }
  }
  return undefined
}

/**
 * JSON is read as UTF-8 whatever its Content-Type says, so JSON that says another charset, and
 * would be misread where its bytes happen to be UTF-8 too (Latin-1 `Ã©` as `é`), is refused, before
 * its bytes are checked. Forms are not held to their label: theirs is ASCII, and the escapes in it
 * are read as UTF-8 or refused (RFC 6749 Appendix B), whatever a client library writes there by default.
 */
function declaredUtf8 (parse: FastifyBodyParser<Buffer>): FastifyBodyParser<Buffer> {
  return (request, body, done) => body.length === 0 || charsetsOf(request.headers['content-type']).every((charset) => UTF8_CHARSETS.has(charset))
    ? parse(request, body, done)
    : done(unsupportedCharset(), undefined)
}

/**
 * The JSON body parser: UTF-8 only, by its bytes and by its label, and each member named once
 * (`onlyRepeatsOf`: uniqueNames). A route's plugin calls it again for its own routes.
 */
export function replaceJsonParser (app: FastifyInstance, onlyRepeatsOf?: ReadonlySet<string>) {
  app.removeContentTypeParser('application/json')
  app.addContentTypeParser('application/json', { parseAs: 'buffer' },
    declaredUtf8(utf8Body(uniqueNames(prototypeKeysNamed(app.getDefaultJsonParser('error', 'error')), onlyRepeatsOf))))
}

/**
 * Fastify's parser refuses a `__proto__` or `constructor.prototype` key (prototype pollution) with
 * its message for JSON that does not parse: JSON that does gets told what was refused instead.
 */
function prototypeKeysNamed (parse: FastifyBodyParser<string>): FastifyBodyParser<string> {
  return (request, body, done) => parse(request, body, (error, value) => {
    if (!error || !isJson(body)) return done(error, value)
    done(apiError(400, 'invalid_body', 'The body holds a __proto__ or constructor.prototype key, which no request may send.'), undefined)
  })
}

function isJson (text: string): boolean {
  try {
    JSON.parse(text)
    return true
  } catch {
    return false
  }
}

/**
 * JSON whose objects name each member once (repeatedJsonName says why); with `only`, the body's
 * own members of those names: a route that reads no other has nothing to misread in the rest.
 */
function uniqueNames (parse: FastifyBodyParser<string>, only?: ReadonlySet<string>): FastifyBodyParser<string> {
  return (request, body, done) => parse(request, body, (error, value) => {
    const repeated = error ? undefined : repeatedJsonName(body, only)
    if (repeated === undefined) return done(error, value)
    const member = isPlainName(repeated) ? `"${repeated}"` : 'a member'
    done(apiError(400, 'invalid_body', `The body names ${member} more than once; each may appear once.`), undefined)
  })
}

/**
 * A body parser that first refuses a body which is not UTF-8 (JSON must be, RFC 8259 §8.1; form
 * bodies are held to it too, stricter than the WHATWG decoding). Node's decoding would quietly
 * turn each bad byte into U+FFFD, and a name or password would be stored or hashed as something
 * the client never sent.
 *
 * A request with nothing in it has no body, whatever its Content-Type says and however it says
 * so (Content-Length: 0, none, or an empty chunked body): a fetch() client that sends
 * `Content-Type: application/json` on every call must not get 400 "empty JSON body" from a DELETE
 * or a logout, which need no body; and a route that needs one answers the same `invalid_body`
 * (requireBody) whether the empty request said JSON, form, another type or nothing.
 */
export function utf8Body (parse: FastifyBodyParser<string>): FastifyBodyParser<Buffer> {
  return (request, body, done) => {
    if (body.length === 0) return done(null, undefined)
    // RFC 9110 §8.4: a content coding we do not decode is refused, not read as if it were none.
    const coding = request.headers['content-encoding']
    if (coding !== undefined && coding.trim().toLowerCase() !== 'identity') return done(unsupportedCoding(), undefined)
    return isUtf8(body)
      ? parse(request, body.toString(), done)
      : done(apiError(400, 'invalid_body', 'The body is not valid UTF-8.'), undefined)
  }
}

/**
 * The parser of every other Content-Type, and of none: 415 without reading the body, as Fastify
 * answers, unless nothing was sent (utf8Body says why that is no body). Only a chunked body has
 * to be read for that, and only until its first byte. A request no route takes goes on to its 404
 * or 405, as Fastify sends it there when it has no parser.
 */
function unsupportedUnlessEmpty (request: FastifyRequest, payload: FastifyRequest['raw'], done: (error: Error | null, body?: undefined) => void) {
  if (request.is404) return done(null, undefined)
  const length = request.headers['content-length']
  // Node keeps the header as sent: `00` is no body either, as it is to Fastify's own reading.
  if (length !== undefined) return done(/^0+$/.test(length) ? null : new errorCodes.FST_ERR_CTP_INVALID_MEDIA_TYPE(), undefined)
  const answer = (error: Error | null) => {
    payload.off('data', onData).off('end', onEnd).off('error', onError)
    done(error, undefined)
  }
  const onData = () => answer(new errorCodes.FST_ERR_CTP_INVALID_MEDIA_TYPE())
  const onEnd = () => answer(null)
  // A client that went away, or a malformed chunk: the client's doing (400), as Fastify's own
  // body reading counts it, not a server error.
  const onError = (error: Error) => answer(Object.assign(error, { statusCode: 400 }))
  payload.on('data', onData).on('end', onEnd).on('error', onError)
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
