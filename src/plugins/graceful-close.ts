import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { Server } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'

/** How long a closing server waits for its keep-alive clients' next requests. */
const DRAIN_MS = 1000

const openConnections = (server: Server) =>
  new Promise<number>((resolve) => server.getConnections((error, count) => resolve(error ? 0 : count)))

/**
 * How the server lets go of its keep-alive connections when it closes (a rolling deploy sends
 * SIGTERM while a load balancer's connections are busy). It stops accepting connections but,
 * unlike http.Server.close(), does not drop the idle ones at once: an idle connection's next
 * request may already be on its way, and dropping it answers that client ECONNRESET, with no way
 * to know whether its request ran. Instead each request arriving on an open connection meanwhile
 * is answered (buildApp turns Fastify's bare 503 off) with `Connection: close`, which Fastify adds
 * once closing has begun, so each client moves to a new connection, to another instance. After
 * DRAIN_MS the connections still open are closed as soon as they are idle, so none holds the
 * close open until its keep-alive timeout.
 */
async function gracefulClosePlugin (app: FastifyInstance) {
  let closeIdle: NodeJS.Timeout | undefined
  app.addHook('preClose', async () => {
    if (!app.server.listening) return
    Server.prototype.close.call(app.server)
    const until = Date.now() + DRAIN_MS
    while (Date.now() < until && await openConnections(app.server) > 0) await sleep(20)
    closeIdle = setInterval(() => app.server.closeIdleConnections(), 100).unref()
  })
  app.addHook('onClose', (_instance, done) => {
    clearInterval(closeIdle)
    done()
  })
}

export default fp(gracefulClosePlugin, { name: 'graceful-close' })
