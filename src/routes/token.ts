import { HttpError } from '@fastify/sensible'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { parse as parseQuerystring } from 'fast-querystring'
import type { FastifyBodyParser, FastifyError } from 'fastify'
import { Type } from 'typebox'
import { looksLikeEmail, normaliseEmail } from '../auth/email.ts'
import { hasPasswordLength } from '../auth/passwords.ts'
import { apiError } from '../errors.ts'
import { DATABASE_UNAVAILABLE, closeIfBodyUnread, isDatabaseUnavailable, validationMessage } from '../plugins/errors.ts'
import { SIGN_IN_IP_LIMIT } from '../plugins/rate-limits.ts'
import { replaceJsonParser, utf8Body } from '../plugins/body-parsers.ts'
import { REFRESH_TOKEN_MAX_LENGTH, SessionResponse } from '../schemas/common.ts'

/**
 * What standard clients send besides the grant. Gatehouse's clients are public first-party clients,
 * so these are accepted and ignored, whatever their value (a JSON client may send null, or a scope
 * as an array): never a reason for 400, as the contract says.
 */
const Ignored = (description: string) => Type.Optional(Type.Unknown({ description: `${description}: accepted and ignored, whatever its value` }))

/**
 * The parameters the endpoint reads. Any other, the ignored ones above included, is dropped before
 * anything looks at it (RFC 6749 §3.2: "MUST ignore unrecognized request parameters"): however
 * often it is sent (RFC 8707 §2 clients send `resource` once per resource) and whatever text it
 * holds. The body around them must still be one the endpoint can read: UTF-8, its escapes too,
 * and JSON without a `__proto__` key.
 */
const READ_PARAMETERS: ReadonlySet<string> = new Set(['grant_type', 'username', 'password', 'refresh_token'])

/** RFC 6749 §4.3.2 and §6. */
const TokenRequest = Type.Object({
  // Left optional and open here so that a missing or other grant gets RFC 6749's own errors
  // (invalid_request, unsupported_grant_type) from the handler, not a schema's validation_error.
  grant_type: Type.Optional(Type.String({
    maxLength: 64,
    examples: ['password', 'refresh_token'],
    description: 'Required: password (with username and password) or refresh_token (with refresh_token); any other is unsupported_grant_type'
  })),
  username: Type.Optional(Type.String({ maxLength: 4096, description: 'The email, for grant_type=password' })),
  password: Type.Optional(Type.String({ maxLength: 4096 })),
  // The limit of /auth/refresh; empty counts as left out (RFC 6749 §3.1), so no minimum here.
  refresh_token: Type.Optional(Type.String({ maxLength: REFRESH_TOKEN_MAX_LENGTH })),
  client_id: Ignored('The client id (Swagger UI, Postman)'),
  client_secret: Ignored('A client secret (Postman may send one)'),
  scope: Ignored('Scopes; Gatehouse grants by roles, not scopes')
})

/** RFC 6749 §5.2's codes this endpoint answers, and rate_limited and temporarily_unavailable (§4.1.2.1's, for a 503). */
const OAUTH_ERROR_CODES = ['invalid_request', 'invalid_grant', 'unsupported_grant_type', 'rate_limited', 'temporarily_unavailable', 'server_error'] as const

const OAuthError = Type.Object({
  error: Type.String({ enum: [...OAUTH_ERROR_CODES], description: 'RFC 6749 §5.2 error code' }),
  error_description: Type.String()
}, { title: 'OAuthError' })

/** Contract codes from the shared sign-in flows, as RFC 6749 §5.2 names them. */
const OAUTH_ERRORS: Record<string, [number, string]> = {
  invalid_credentials: [400, 'invalid_grant'],
  user_disabled: [400, 'invalid_grant'],
  invalid_refresh_token: [400, 'invalid_grant'],
  rate_limited: [429, 'rate_limited']
}
/** Codes the flows raise that are RFC 6749 §5.2's already: passed on as they are. */
const OAUTH_NATIVE_CODES = new Set(['invalid_request', 'invalid_grant', 'unsupported_grant_type'])

function toOAuthError (error: FastifyError): { status: number, body: { error: string, error_description: string } } {
  if (error.validation) {
    return { status: 400, body: { error: 'invalid_request', error_description: validationMessage(error) } }
  }
  if (error instanceof HttpError) {
    const mapped = OAUTH_ERRORS[error.code]
    if (mapped) return { status: mapped[0], body: { error: mapped[1], error_description: error.message } }
    if (OAUTH_NATIVE_CODES.has(error.code)) return { status: error.statusCode, body: { error: error.code, error_description: error.message } }
    // Any other refusal of ours keeps its status, a 501 for a transfer coding included.
    return { status: error.statusCode, body: { error: 'invalid_request', error_description: error.message } }
  }
  const status = error.statusCode && error.statusCode >= 400 && error.statusCode < 500 ? error.statusCode : 500
  return status === 500
    ? { status, body: { error: 'server_error', error_description: 'Something went wrong on our side.' } }
    : { status, body: { error: 'invalid_request', error_description: error.message } }
}

const invalidRequest = (description: string) => apiError(400, 'invalid_request', description)

/**
 * RFC 6749 §5.2: an error_description is printable ASCII without `"` or `\`. A validation message
 * may quote a schema's words and name the client's own keys, in any characters: quotes become `'`,
 * a backslash `/`, anything else outside the set `?`.
 */
const asErrorDescription = (text: string) =>
  text.replaceAll('"', "'").replaceAll('\\', '/').replace(/[^\x20-\x7E]/g, '?')

/**
 * application/x-www-form-urlencoded, parsed as @fastify/formbody does (fast-querystring) but
 * strictly: an escape that is not UTF-8 (`%E9`, a Latin-1 é) is refused, where fast-querystring
 * would keep the three characters `%E9` as the password; and so is a parameter it reads sent
 * twice (RFC 6749 §3.1), which fast-querystring would make a list.
 */
const parseForm: FastifyBodyParser<string> = (_request, text, done) => {
  try {
    decodeURIComponent(text.replaceAll('+', ' '))
  } catch {
    return done(apiError(400, 'invalid_body', 'The form body has an escape that is not UTF-8.'), undefined)
  }
  const form = parseQuerystring(text) as Record<string, unknown>
  const repeated = Object.keys(form).find((name) => READ_PARAMETERS.has(name) && Array.isArray(form[name]))
  if (repeated !== undefined) {
    return done(invalidRequest(`The parameter ${repeated} is sent more than once; each may be sent once.`), undefined)
  }
  done(null, form)
}

const tokenRoutes: FastifyPluginAsyncTypebox = async (app) => {
  // Only the token endpoint takes form bodies (what Postman and Swagger UI send).
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'buffer' }, utf8Body(parseForm))
  replaceJsonParser(app, READ_PARAMETERS)
  app.addHook('preValidation', async (request) => {
    const body = request.body
    if (typeof body === 'object' && body !== null && !Array.isArray(body)) {
      request.body = Object.fromEntries(Object.entries(body).filter(([name]) => READ_PARAMETERS.has(name)))
    }
  })

  app.setErrorHandler((error: FastifyError & { headers?: Record<string, string> }, request, reply) => {
    closeIfBodyUnread(request, reply)
    if (isDatabaseUnavailable(app, error)) {
      request.log.error({ err: error }, 'token request failed')
      return reply.code(503).header('retry-after', DATABASE_UNAVAILABLE.retryAfter)
        .send({ error: 'temporarily_unavailable', error_description: DATABASE_UNAVAILABLE.message })
    }
    const { status, body } = toOAuthError(error)
    if (status >= 500) request.log.error({ err: error }, 'token request failed')
    if (error.headers) reply.headers(error.headers)
    return reply.code(status).send({ ...body, error_description: asErrorDescription(body.error_description) })
  })

  app.post('/token', {
    // The contract: the token endpoint shares login's limits, per account and per IP.
    config: { access: 'public', ipLimitGroup: SIGN_IN_IP_LIMIT },
    schema: {
      tags: ['auth'],
      summary: 'OAuth2 token endpoint: password and refresh_token grants',
      description: 'Accepts application/x-www-form-urlencoded or JSON. Errors follow RFC 6749 §5.2.',
      consumes: ['application/x-www-form-urlencoded', 'application/json'],
      body: TokenRequest,
      response: {
        200: SessionResponse,
        400: { ...OAuthError, description: 'invalid_request, invalid_grant (also a disabled user) or unsupported_grant_type' },
        413: { ...OAuthError, description: 'Body over 8 KiB: invalid_request' },
        415: { ...OAuthError, description: 'Neither form-urlencoded nor JSON, JSON labelled with a charset other than UTF-8, or sent with a Content-Encoding: invalid_request' },
        429: { ...OAuthError, description: 'Too many requests: rate_limited, with Retry-After (one per-IP count with POST /auth/login)' },
        503: { ...OAuthError, description: 'The database is unavailable: temporarily_unavailable, with Retry-After' }
      }
    }
  }, async (request) => {
    const { grant_type: grantType, username, password, refresh_token: refreshToken } = request.body
    switch (grantType) {
      case 'password': {
        if (!username || !password) throw invalidRequest('The password grant needs username and password.')
        const email = normaliseEmail(username)
        // Refused before hashing and before counting, by the rules of /auth/login's schema: no
        // account has such an email or password, and each distinct email would hold a window of
        // the account limit.
        if (!looksLikeEmail(email) || !hasPasswordLength(password)) {
          throw apiError(400, 'invalid_grant', 'The email or password is wrong.')
        }
        return app.signInFlows.signIn(request, email, password)
      }
      case 'refresh_token':
        if (!refreshToken) throw invalidRequest('The refresh_token grant needs refresh_token.')
        return app.signInFlows.refresh(request, refreshToken)
      case undefined:
      case '':
        throw invalidRequest('grant_type is required.')
      default:
        throw apiError(400, 'unsupported_grant_type', 'grant_type must be password or refresh_token.')
    }
  })
}

export default tokenRoutes
