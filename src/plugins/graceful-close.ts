import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { ServerResponse, type IncomingMessage, type OutgoingHttpHeader, type OutgoingHttpHeaders } from 'node:http'
import { Server, type Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'

type Headers = OutgoingHttpHeaders | OutgoingHttpHeader[]

/** How long a closing server waits for its keep-alive clients' next requests. */
const DRAIN_MS = 1000

const openConnections = (server: Server) =>
  new Promise<number>((resolve) => server.getConnections((error, count) => resolve(error ? 0 : count)))

/**
 * How the server lets go of its keep-alive connections when it closes (a rolling deploy sends
 * SIGTERM while a load balancer's connections are busy). It stops accepting connections but,
 * unlike http.Server.close(), does not drop the idle ones at once: an idle connection's next
 * request may already be on its way, and dropping it answers that client ECONNRESET, with no way
 * to know whether its request ran. Instead the requests in flight and those arriving on an open
 * connection meanwhile are answered (buildApp turns Fastify's bare 503 off), and the last answer
 * on each connection carries `Connection: close` and ends it, so each client moves to a new
 * connection, to another instance. After DRAIN_MS the connections still open are closed as
 * soon as they are idle, so none holds the close open until its keep-alive timeout.
 *
 * Returns the plugin and the response class to give Fastify (`http: { ServerResponse }`): Node
 * decides a response's keep-alive when its request arrives, and Fastify adds `Connection: close`
 * only to requests that arrive after closing has begun, so an answer to a request already in
 * flight would still say keep-alive. The class checks one flag as the answer's head is written,
 * and ends the connection only after its newest request's answer.
 */
export function gracefulClose () {
  let closing = false

  // The newest response of each connection: only it may end the connection. Node parses pipelined
  // requests at once and queues their answers, so ending the connection after an earlier answer
  // would drop the answers queued behind it, of requests that ran.
  const newestOnConnection = new WeakMap<Socket, ServerResponse>()

  class ClosingAwareResponse<Request extends IncomingMessage = IncomingMessage> extends ServerResponse<Request> {
    // A rest parameter: Node also passes the server's response options, which @types/node leaves out.
    constructor (...args: ConstructorParameters<typeof ServerResponse<Request>>) {
      super(...args)
      newestOnConnection.set(this.req.socket, this)
    }

    override writeHead (statusCode: number, statusMessage?: string, headers?: Headers): this
    override writeHead (statusCode: number, headers?: Headers): this
    override writeHead (statusCode: number, messageOrHeaders?: string | Headers, headers?: Headers): this {
      if (closing && newestOnConnection.get(this.req.socket) === this) this.shouldKeepAlive = false
      return typeof messageOrHeaders === 'string'
        ? super.writeHead(statusCode, messageOrHeaders, headers)
        : super.writeHead(statusCode, headers ?? messageOrHeaders)
    }
  }

  const plugin = fp(async (app: FastifyInstance) => {
    let closeIdle: NodeJS.Timeout | undefined
    app.addHook('preClose', async () => {
      if (!app.server.listening) return
      closing = true
      Server.prototype.close.call(app.server)
      const until = Date.now() + DRAIN_MS
      while (Date.now() < until && await openConnections(app.server) > 0) await sleep(20)
      closeIdle = setInterval(() => app.server.closeIdleConnections(), 100).unref()
    })
    app.addHook('onClose', (_instance, done) => {
      clearInterval(closeIdle)
      done()
    })
  }, { name: 'graceful-close' })

  return { plugin, ServerResponse: ClosingAwareResponse }
}
