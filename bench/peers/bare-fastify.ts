// The ceiling: Fastify 5 with nothing on it, answering a small JSON object. With
// GATEHOUSE_ANSWER=1 it answers the way Gatehouse answers: the same security headers and
// Cache-Control: no-store on the response, and a pino logger at warn (a child per request), so
// the gap between it and Gatehouse's stateless route is Gatehouse's own per-request work.
import Fastify from 'fastify'
import { API_HEADERS, helmetHeaders } from '../../src/plugins/security.ts'

const dressed = process.env.GATEHOUSE_ANSWER === '1'
const app = Fastify({ logger: dressed ? { level: 'warn' } : false })
if (dressed) {
  const headers = { ...helmetHeaders(API_HEADERS), 'cache-control': 'no-store' }
  app.addHook('onRequest', (_request, reply, done) => {
    reply.headers(headers)
    done()
  })
}
app.get('/', async () => ({ hello: 'world' }))

process.once('SIGTERM', () => { app.close().then(() => process.exit(0), () => process.exit(1)) })
await app.listen({ port: Number(process.env.PORT), host: '127.0.0.1' })
