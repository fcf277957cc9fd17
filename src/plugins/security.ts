import cors from '@fastify/cors'
import type { FastifyInstance, FastifyRequest, onRequestHookHandler } from 'fastify'
import fp from 'fastify-plugin'
import helmet, { type HelmetOptions } from 'helmet'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { apiError } from '../errors.ts'
import { queryStart } from '../request-client.ts'
import { timesSent } from './validation.ts'

/**
 * The API answers JSON that no browser renders as a page, so it gets the headers of the OWASP REST
 * Security Cheat Sheet ("Security headers"): no content may load or frame it, no MIME sniffing,
 * HSTS. The headers that only matter to an HTML document (cross-origin isolation, referrer,
 * DNS prefetch, legacy IE and Flash switches) are left to the docs pages.
 */
export const API_HEADERS: HelmetOptions = {
  contentSecurityPolicy: { useDefaults: false, directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] } },
  xFrameOptions: { action: 'deny' },
  crossOriginOpenerPolicy: false,
  // A no-cors read from another origin cannot send the bearer token, so it only ever gets what
  // an anonymous request gets: Cross-Origin-Resource-Policy would protect nothing here.
  crossOriginResourcePolicy: false,
  originAgentCluster: false,
  referrerPolicy: false,
  xDnsPrefetchControl: false,
  xDownloadOptions: false,
  xPermittedCrossDomainPolicies: false,
  xXssProtection: false
}

/** Swagger UI's pages get helmet's full defaults (its plugin sets their script and style CSP). */
const DOCUMENT_HEADERS: HelmetOptions = {
  // Plain-http development servers must keep working; production sits behind TLS anyway.
  contentSecurityPolicy: { directives: { upgradeInsecureRequests: null } }
}

/**
 * The headers helmet sets for these options. They depend on nothing in the request, so they are
 * computed once here instead of running helmet for every request (@fastify/helmet does that,
 * which cost about 5 µs a request in bench/micro.ts).
 */
export function helmetHeaders (options: HelmetOptions): Record<string, string> {
  const headers: Record<string, string> = {}
  const response = {
    setHeader: (name: string, value: string) => { headers[name.toLowerCase()] = value },
    removeHeader: (name: string) => { delete headers[name.toLowerCase()] }
  }
  helmet(options)({} as IncomingMessage, response as unknown as ServerResponse, () => {})
  return headers
}

/** What every API answer carries; also sent by the answers Fastify gives before routing. */
export const API_RESPONSE_HEADERS = helmetHeaders(API_HEADERS)

export const NO_STORE_HEADERS = { 'cache-control': 'no-store', pragma: 'no-cache' }

/**
 * onRequest hook for answers that carry tokens or personal data: every guarded route's (added by
 * the access audit) and `/auth`'s. No cache may keep them, error answers included
 * (RFC 9111 §5.2.2.5; RFC 6749 §5.1 for token responses).
 */
export const noStore: onRequestHookHandler = (_request, reply, done) => {
  // Two calls, not reply.headers(): this runs on every guarded request, and that lists the keys each time.
  reply.header('cache-control', NO_STORE_HEADERS['cache-control']).header('pragma', NO_STORE_HEADERS.pragma)
  done()
}

/**
 * RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, and for any with more than one (Node
 * keeps the first and drops the rest, so a proxy reading the last would route it elsewhere).
 * Node's own check for a missing Host (off in app.ts) answered with an empty body, without these headers.
 */
function hostProblem (request: FastifyRequest): Error | undefined {
  const hosts = timesSent(request, 'host')
  if (hosts > 1) return apiError(400, 'invalid_request', 'The Host header must be sent once.')
  if (hosts === 0 && request.raw.httpVersion === '1.1') return apiError(400, 'invalid_request', 'An HTTP/1.1 request needs a Host header.')
  return undefined
}

/**
 * RFC 9112 §6.1: 501 for a transfer coding other than chunked before it. Node's parser takes a
 * body sent `gzip, chunked` as chunked and leaves the gzip bytes in it, to be read as if uncoded.
 * Codings that do not end in chunked are the parser's to refuse (400): it cannot find the body's end.
 */
function transferCodingProblem (request: FastifyRequest): Error | undefined {
  const header = request.headers['transfer-encoding']
  if (header === undefined) return undefined
  const codings = header.split(',').map((coding) => coding.trim().toLowerCase())
  return codings.at(-1) === 'chunked' && codings.some((coding) => coding !== 'chunked')
    ? apiError(501, 'not_implemented', 'No transfer coding other than chunked is decoded: send the body chunked or with a Content-Length.')
    : undefined
}

/**
 * A query with a %-escape that is not UTF-8 (`?email=%FF`, `?email=a%zz`), which the query parser
 * would keep as its three characters, searching for text the client never meant: refused as a
 * path that cannot be decoded is (errors.ts frameworkErrorHandler).
 */
function queryProblem (url: string): Error | undefined {
  const start = queryStart(url)
  if (start === -1 || !url.includes('%', start)) return undefined
  try {
    decodeURIComponent(url.slice(start + 1))
    return undefined
  } catch {
    return apiError(400, 'invalid_request', 'The URL cannot be decoded.')
  }
}

const isDocsPage = (url: string) => url === '/docs' || url.startsWith('/docs/') || url.startsWith('/docs?')

/**
 * Security headers on every response, errors included, and CORS for the browser origins in
 * CORS_ORIGINS only (none by default: no CORS headers, no `Vary: Origin`). Clients send bearer
 * tokens, never cookies, so credentials stay off.
 */
async function securityPlugin (app: FastifyInstance) {
  const documentHeaders = helmetHeaders(DOCUMENT_HEADERS)
  app.addHook('onRequest', (request, reply, done) => {
    reply.headers(isDocsPage(request.url) ? documentHeaders : API_RESPONSE_HEADERS)
    const problem = hostProblem(request) ?? transferCodingProblem(request) ?? queryProblem(request.url)
    // Before /auth's own no-store hook, which an error here skips.
    if (problem) reply.headers(NO_STORE_HEADERS)
    done(problem)
  })

  if (app.config.corsOrigins.length === 0) return
  const allowed = new Set(app.config.corsOrigins)
  // @fastify/cors answers preflights on a route of its own: public for the access audit, as a
  // preflight never carries credentials (Fetch standard, CORS protocol). Only that one route.
  let preflightRoutePending = true
  app.addHook('onRoute', (route) => {
    if (preflightRoutePending && route.method === 'OPTIONS' && route.url === '*') {
      route.config = { ...route.config, access: 'public' }
      preflightRoutePending = false
    }
  })
  await app.register(cors, {
    origin: (origin, callback) => callback(null, origin !== undefined && allowed.has(origin)),
    methods: ['GET', 'POST', 'PATCH', 'DELETE'],
    allowedHeaders: ['Authorization', 'Content-Type'],
    // What a client script acts on: the 401/403 challenge, and when and how it may retry a 429/503.
    exposedHeaders: ['WWW-Authenticate', 'Retry-After', 'X-RateLimit-Limit', 'X-RateLimit-Remaining', 'X-RateLimit-Reset'],
    credentials: false,
    maxAge: 600,
    // An OPTIONS request from an allowed origin is answered as a preflight even without
    // Access-Control-Request-Method, rather than with a text/plain 400 "Invalid Preflight Request"
    // outside the contract's shape.
    strictPreflight: false
  })
}

export default fp(securityPlugin, { name: 'security', dependencies: ['config'] })
