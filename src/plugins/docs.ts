import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import type { FastifyInstance, FastifySchema, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import { STATUS_CODES } from 'node:http'
import { createRequire } from 'node:module'
import { ErrorResponse } from '../schemas/common.ts'
import { isGuardedRoute } from './authorization.ts'
import { needsBody, takesBodyMethod } from './validation.ts'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Declares a route that never reads the database: the OpenAPI document lists no 503 for it. */
    database?: false
  }
}

const { version } = createRequire(import.meta.url)('../../package.json') as { version: string }

const DESCRIPTION = `Stateless JWT authentication and authorization.

Sign in with **Authorize → oauth2 (password)**: your email as username, your password; Swagger UI
then sends the access token as \`Authorization: Bearer …\` on every "Try it out".

Errors have the shape \`{"statusCode", "error", "message", "code"}\`; \`code\` is stable. The
token endpoint alone answers RFC 6749 errors: \`{"error", "error_description"}\`. Any route that
reads or writes the database may answer 503 \`database_unavailable\` with \`Retry-After\` while it
cannot be reached (the token endpoint: \`temporarily_unavailable\`).`

const SWAGGER_LOGO_STYLE_HASH = 'sha256-RL3ie0nH+Lzz2YNqQN83mnU0J1ot4QL7b99vMdIX99w='

type Schema = Record<string, unknown> & {
  response?: Record<string, unknown>
  body?: unknown
  params?: unknown
  querystring?: unknown
  security?: unknown
}

const GENERIC_ERRORS: Record<number, string> = {
  403: 'Not allowed (the roles do not grant it, or the resource is not the caller\'s): forbidden, with WWW-Authenticate: Bearer error="insufficient_scope"',
  404: 'No such resource: not_found'
}

const challenge = (description: string) => ({ 'WWW-Authenticate': { type: 'string', description } })
const retryAfter = (description: string) => ({ 'Retry-After': { type: 'integer', description } })
const perIpLimit = (description: string) => ({ type: 'integer', description: `${description}; only when the per-IP limit answered` })
/** Headers the contract puts on an answer of this status, wherever it comes from. */
const STATUS_HEADERS: Record<number, Record<string, unknown>> = {
  401: challenge('Bearer challenge (RFC 6750 §3), with error= for a token that failed'),
  429: {
    ...retryAfter('Seconds until a request may succeed'),
    'X-RateLimit-Limit': perIpLimit('Requests allowed per window'),
    'X-RateLimit-Remaining': perIpLimit('Requests left in the window'),
    'X-RateLimit-Reset': perIpLimit('Seconds until the window resets')
  },
  503: retryAfter('Seconds until the database is worth trying again')
}
/** On the answers of a route that reads a bearer token (guarded, or /auth/logout's optional one). */
const BEARER_HEADERS: Record<number, Record<string, unknown>> = {
  400: challenge('Bearer error="invalid_request" with invalid_request (a malformed Authorization header); none with validation_error')
}
const GUARDED_HEADERS: Record<number, Record<string, unknown>> = {
  403: challenge('Bearer error="insufficient_scope" with forbidden')
}
/** On every answer of a guarded route or of /auth (security.ts noStore), errors included. */
const NO_STORE_HEADERS = {
  'Cache-Control': { type: 'string', const: 'no-store', description: 'No cache may keep the answer: it carries tokens or personal data' }
}
/** Headers always sent where they are documented (the rate-limit counts are not, nor a 400's challenge). */
const REQUIRED_HEADERS = new Set(['Cache-Control', 'Retry-After', 'WWW-Authenticate'])
const isRequiredHeader = (status: string, name: string) => REQUIRED_HEADERS.has(name) && !(status === '400' && name === 'WWW-Authenticate')

const pascalCase = (text: string) => text.split(/[^A-Za-z0-9]+/).filter(Boolean)
  .map((word) => word[0]!.toUpperCase() + word.slice(1)).join('')
/** `patch /admin/users/{id}` → `patchAdminUsersById`: a name for generated clients' methods. */
const operationIdOf = (method: string, path: string) => method + path.split('/')
  .map((part) => part.startsWith('{') ? `By${pascalCase(part)}` : pascalCase(part)).join('')

/** Guarded routes take a bearer token, which Swagger UI gets from the oauth2 password flow. */
const BEARER_SECURITY = [{ bearerAuth: [] }, { oauth2: [] }]

/**
 * What every route shares, documented once from its access policy rather than repeated in each
 * route: its security requirement, and the answers it can give besides its own (validation 400,
 * 413/415 for bodies, 401 when guarded, 429 under /auth, 503 when it reads the database), with the
 * headers that come with them.
 */
function documentShared (schema: Schema, route: RouteOptions, isGuarded: boolean): Schema {
  const response = { ...schema.response }
  // A route's own answer for the status keeps its schema and its description, and gets this one
  // added, unless it answers in a shape of its own (the token endpoint's RFC 6749 errors).
  const add = (status: number, description: string) => {
    const declared = response[status] as { description?: string, properties?: object } | undefined
    if (declared && !(declared.properties && 'code' in declared.properties)) return
    response[status] = { ...(declared ?? ErrorResponse), description: declared?.description ? `${declared.description}; ${description}` : description }
  }
  const takesBody = takesBodyMethod(route)
  const invalid = [
    ...schema.body || schema.params || schema.querystring ? ['validation_error names the field'] : [],
    ...takesBody && !schema.body ? ['validation_error for a body other than {}, as it takes none'] : [],
    ...takesBody ? [`invalid_body for a body that is not JSON or not UTF-8, or names a member twice${needsBody(route) ? ', or none' : ''}`] : [],
    ...isGuarded ? ['invalid_request for a malformed Authorization header, or one sent twice'] : []
  ]
  if (invalid.length > 0) add(400, `Invalid request: ${invalid.join('; ')}`)
  if (takesBody) {
    add(413, 'Body over 8 KiB: payload_too_large')
    add(415, 'Not JSON, JSON labelled with a charset other than UTF-8, or sent with a Content-Encoding: unsupported_media_type')
  }
  if (isGuarded) add(401, 'No, invalid or expired bearer token: missing_token, invalid_token, token_expired')
  if (route.url.startsWith('/auth')) add(429, 'Too many requests: rate_limited, with Retry-After')
  if (route.config?.database !== false && !response[503]) add(503, 'The database is unavailable: database_unavailable, with Retry-After')
  // Declared without a word of their own: what they mean on every route.
  for (const [status, description] of Object.entries(GENERIC_ERRORS)) {
    if (response[status] && !(response[status] as { description?: string }).description) add(Number(status), description)
  }
  const storesNothing = isGuarded || route.url.startsWith('/auth')
  const readsBearer = isGuarded || (schema.security as object[] | undefined)?.some((requirement) => 'bearerAuth' in requirement)
  for (const [status, answer] of Object.entries(response) as Array<[string, { description?: string }]>) {
    const headers = {
      ...storesNothing ? NO_STORE_HEADERS : {},
      ...STATUS_HEADERS[Number(status)] ?? (readsBearer ? BEARER_HEADERS[Number(status)] : undefined) ?? (isGuarded ? GUARDED_HEADERS[Number(status)] : undefined)
    }
    response[status] = { ...answer, description: answer.description ?? STATUS_CODES[status], ...Object.keys(headers).length > 0 ? { headers } : {} }
  }
  return {
    ...schema,
    response,
    security: schema.security ?? (isGuarded ? BEARER_SECURITY : [])
  }
}

type Responses = Record<string, { headers?: Record<string, object> }>
/** @fastify/swagger cannot mark a response header required: done here, on copies. */
function requireHeaders (responses: Responses | undefined): Responses | undefined {
  if (!responses) return responses
  return Object.fromEntries(Object.entries(responses).map(([status, answer]) => [status, answer.headers
    ? { ...answer, headers: Object.fromEntries(Object.entries(answer.headers).map(([name, header]) => [name, isRequiredHeader(status, name) ? { ...header, required: true } : header])) }
    : answer]))
}

const EXAMPLE_KEYS = new Set(['example', 'examples'])

/**
 * Every object schema with a title (`{ title: 'User' }` on its TypeBox definition) becomes a named
 * component, referenced wherever @fastify/swagger inlined it: a generated client gets one `User`
 * type, not an anonymous copy per route. The description an answer gave it stays beside the
 * reference. Two different schemas under one title are a mistake, refused here.
 */
function nameTitledSchemas (paths: unknown): { paths: unknown, schemas: Record<string, object> } {
  const schemas: Record<string, object> = {}
  const visit = (node: unknown): unknown => {
    if (Array.isArray(node)) return node.map(visit)
    if (node === null || typeof node !== 'object') return node
    // Examples are data, not schemas, whatever keys they hold.
    const visited = Object.fromEntries(Object.entries(node).map(([key, value]) => [key, EXAMPLE_KEYS.has(key) ? value : visit(value)]))
    const { description, ...schema } = visited
    if (typeof schema.title !== 'string' || schema.type !== 'object') return visited
    const known = schemas[schema.title] ??= schema
    if (JSON.stringify(known) !== JSON.stringify(schema)) throw new Error(`Two different schemas are titled ${schema.title}`)
    return { $ref: `#/components/schemas/${schema.title}`, ...description === undefined ? {} : { description } }
  }
  return { paths: visit(paths), schemas }
}

async function docsPlugin (app: FastifyInstance) {
  /** Routes whose body may be left out (config.bodyOptional), as the document is generated. */
  const optionalBodies: Array<{ url: string, method: string }> = []
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'Gatehouse', version, description: DESCRIPTION },
      // The API is served where this document is.
      servers: [{ url: '/' }],
      tags: [
        { name: 'auth', description: 'Sign-up, sign-in, tokens and the signed-in account' },
        { name: 'sessions', description: 'The signed-in user\'s sessions' },
        { name: 'videos', description: 'Free and member-only videos' },
        { name: 'clothes', description: 'The clothes catalogue' },
        { name: 'admin', description: 'User management (admins)' },
        { name: 'health', description: 'Readiness: the database answers' }
      ],
      components: {
        securitySchemes: {
          bearerAuth: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT', description: 'An access token from any session response' },
          oauth2: {
            type: 'oauth2',
            description: 'Password grant at /auth/token: username is the email',
            flows: { password: { tokenUrl: '/auth/token', refreshUrl: '/auth/token', scopes: {} } }
          }
        }
      }
    },
    transform: ({ schema, url, route }) => {
      if (route.config?.bodyOptional) for (const method of [route.method].flat()) optionalBodies.push({ url, method })
      return { schema: documentShared((schema ?? {}) as Schema, route, isGuardedRoute(app, route)) as FastifySchema, url }
    },
    transformObject: (document) => {
      if (!('openapiObject' in document)) return document.swaggerObject
      const paths = document.openapiObject.paths as Record<string, Record<string, { requestBody?: { required?: boolean }, operationId?: string, responses?: Responses }>>
      // @fastify/swagger marks every body it documents as required.
      for (const { url, method } of optionalBodies) {
        const body = paths[url.replace(/:(\w+)/g, '{$1}')]?.[method.toLowerCase()]?.requestBody
        if (body) body.required = false
      }
      // One per operation: the methods of one route share an operation object, so each gets a copy.
      for (const [path, operations] of Object.entries(paths)) {
        for (const [method, operation] of Object.entries(operations)) {
          operations[method] = { ...operation, operationId: operation.operationId ?? operationIdOf(method, path), responses: requireHeaders(operation.responses) }
        }
      }
      const named = nameTitledSchemas(paths)
      return {
        ...document.openapiObject,
        paths: named.paths as typeof paths,
        components: { ...document.openapiObject.components, schemas: named.schemas }
      }
    }
  })

  // Its pages are public: declared so for the access audit, in a scope of their own.
  await app.register(async (ui) => {
    ui.addHook('onRoute', (route) => { route.config = { ...route.config, access: 'public' } })
    await ui.register(swaggerUi, {
      routePrefix: '/docs',
      uiConfig: { persistAuthorization: false, tryItOutEnabled: true },
      // Swagger UI's own CSP (hashes of its inline scripts), plus the hash of the inline <style> in
      // swagger-ui-dist's default top-bar logo, drawn for a moment before ours replaces it; without
      // upgrade-insecure-requests so the docs also work over plain http on a developer's machine.
      // test/swagger-ui.test.ts fails on any CSP violation, so an upgrade that changes it shows.
      staticCSP: true,
      transformStaticCSP: (header) => header
        .replace(/\s*upgrade-insecure-requests;?/, '')
        .replace("style-src 'self'", `style-src 'self' '${SWAGGER_LOGO_STYLE_HASH}'`)
    })
  })

  // Built once at start (it is cached): a mistake in it, such as one title on two schemas, stops
  // the start instead of failing the first request for the document.
  app.addHook('onReady', async () => { app.swagger() })

  app.get('/openapi.json', {
    config: { access: 'public' },
    schema: { hide: true }
  }, async () => app.swagger())
}

export default fp(docsPlugin, { name: 'docs', dependencies: ['auth'] })
