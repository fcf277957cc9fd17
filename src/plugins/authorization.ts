import type { FastifyInstance, FastifyRequest, RouteOptions } from 'fastify'
import fp from 'fastify-plugin'
import { hasPermission, type Permission } from '../auth/permissions.ts'
import { apiError } from '../errors.ts'
import { accountGone } from './auth.ts'
import { noStore } from './security.ts'
import { accessCheck } from './validation.ts'

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Declares a route open to anyone. Every other route must start its preHandler with authenticate. */
    access?: 'public'
  }
  interface FastifyInstance {
    /** Every route the audit saw, with its declared policy: the app's access table. */
    accessPolicies: ReadonlyArray<{ method: string, url: string, access: 'public' | 'guarded' }>
    /** preHandler after authenticate: 403 unless the caller's roles grant the permission. */
    requirePermission (permission: Permission): (request: FastifyRequest) => Promise<void>
    /**
     * preHandler after authenticate for one resource: 404 when `ownerOf` finds none, 403 unless
     * the caller owns it or holds `permission`; with `{ othersSee: 'not_found' }`, 404 for
     * someone else's too, where whether an id exists must stay private; 401 `invalid_token`
     * instead of either refusal when the caller's account has been deleted.
     */
    requireOwnerOr (
      permission: Permission,
      ownerOf: (request: FastifyRequest) => Promise<{ ownerId: string | null } | undefined>,
      options?: { othersSee: 'forbidden' | 'not_found' }
    ): (request: FastifyRequest) => Promise<void>
  }
}

/** Its `insufficient_scope` challenge is added where every error is answered (errors.ts). */
const forbidden = () => apiError(403, 'forbidden', 'You are not allowed to do this.')
/** 404 for an id that names nothing the caller may see: `what` says of which kind. */
export const notFound = (what = 'resource') => apiError(404, 'not_found', `No such ${what}.`)

const preHandlersOf = (route: Pick<RouteOptions, 'preHandler'>) => [route.preHandler ?? []].flat()

/** A guarded route is one whose preHandler list starts with authenticate. */
export function isGuardedRoute (app: FastifyInstance, route: Pick<RouteOptions, 'preHandler'>): boolean {
  const first = preHandlersOf(route)[0]
  return first !== undefined && first === app.authenticate
}

/**
 * Deny by default (OWASP ASVS 4.1.3): a route that declares no access policy, or both, stops the
 * app from starting, so a forgotten guard is a start-up error rather than an open endpoint.
 */
function auditAccessPolicy (app: FastifyInstance, route: RouteOptions): 'public' | 'guarded' {
  const guarded = isGuardedRoute(app, route)
  const declaredPublic = route.config?.access === 'public'
  if (guarded === declaredPublic) {
    const methods = [route.method].flat().join(',')
    throw new Error(
      `Route ${methods} ${route.url} must declare one access policy: config.access = 'public', ` +
      'or a preHandler list that starts with app.authenticate'
    )
  }
  return guarded ? 'guarded' : 'public'
}

/** RFC 9110 §9.2.1: a method other than these may change something on the server. */
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE'])

/**
 * A guarded route that may change something re-reads the caller first: its preHandler list runs
 * app.loadAccount right after app.authenticate, so the permission checks after it see the roles
 * held now, and a demoted, disabled or signed-out caller is refused at once, not when the access
 * token expires (ASVS 4.1.1: access rules enforced on the trusted service layer, per request).
 */
function auditFreshAccount (app: FastifyInstance, route: RouteOptions) {
  const methods = [route.method].flat()
  if (methods.every((method) => SAFE_METHODS.has(method)) || preHandlersOf(route)[1] === app.loadAccount) return
  throw new Error(
    `Route ${methods.join(',')} ${route.url} may change data: its preHandler list must run app.loadAccount ` +
    'right after app.authenticate, so the caller\'s roles, account and session are read fresh'
  )
}

/**
 * The audit of every route's access policy. buildApp registers it before anything else, so it
 * sees every route, whichever plugin adds it; it judges them once all are added (app.ready), when
 * app.authenticate exists.
 */
export const accessAudit = fp(async (app: FastifyInstance) => {
  const routes: RouteOptions[] = []
  const policies: Array<{ method: string, url: string, access: 'public' | 'guarded' }> = []
  app.decorate('accessPolicies', policies)
  app.addHook('onRoute', (route) => {
    // The options object that later onRoute hooks may still amend (validation.ts): read when ready.
    routes.push(route)
    // An answer for one signed-in caller is kept by no cache (ASVS 8.2.1), errors included.
    if (isGuardedRoute(app, route)) route.onRequest = [...[route.onRequest ?? []].flat(), noStore]
  })
  app.addHook('onReady', async () => {
    for (const route of routes) {
      const access = auditAccessPolicy(app, route)
      if (access === 'guarded') auditFreshAccount(app, route)
      for (const method of [route.method].flat()) policies.push({ method, url: route.url, access })
    }
  })
}, { name: 'access-audit' })

async function authorizationPlugin (app: FastifyInstance) {
  // The freshly read roles when loadAccount ran, else the token's (stateless routes).
  const rolesOf = (request: FastifyRequest) => request.account?.user.roles ?? request.user.roles

  app.decorate('requirePermission', (permission: Permission) => accessCheck(async (request: FastifyRequest) => {
    if (!hasPermission(rolesOf(request), permission)) throw forbidden()
  }))

  app.decorate('requireOwnerOr', (
    permission: Permission,
    ownerOf: (request: FastifyRequest) => Promise<{ ownerId: string | null } | undefined>,
    { othersSee }: { othersSee: 'forbidden' | 'not_found' } = { othersSee: 'forbidden' }
  ) => async (request: FastifyRequest) => {
    const resource = await ownerOf(request)
    const allowed = resource !== undefined &&
      (resource.ownerId === request.user.id || hasPermission(rolesOf(request), permission))
    if (allowed) return
    // A token can outlive its deleted user (stateless until it expires). Deleting a user leaves
    // their resources ownerless, so that token is told its account is gone, as on the routes that
    // write for it, rather than that it may not touch what it once owned. Asked on every refusal
    // alike, so the answer says nothing about which resources exist.
    if (!await app.usersRepository.findById(request.user.id)) throw accountGone()
    // OWASP ASVS 4.2.1 (IDOR): the same answer as for no such resource reveals nothing.
    throw !resource || othersSee === 'not_found' ? notFound() : forbidden()
  })
}

export default fp(authorizationPlugin, { name: 'authorization', dependencies: ['auth', 'access-audit', 'users-repository'] })
