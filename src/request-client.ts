// What the server knows of a request's client, as the sign-in flows, the per-IP limit and the
// request log use it.
import type { FastifyRequest } from 'fastify'

/**
 * Whether the request's client still waits for the answer: false once it closed the connection.
 * Work queued for a while (password hashes) asks before it starts.
 */
export const stillWaiting = (request: FastifyRequest) => () => request.raw.socket?.destroyed !== true

/** The longest text form of an IP address: an IPv6 address with an IPv4 tail. */
const MAX_IP_LENGTH = 45

/**
 * request.ip as it is stored with a session, logged and counted by the per-IP limit: cut to the
 * longest address's length. With TRUST_PROXY=true it is whatever the client wrote first in
 * X-Forwarded-For, which may be kilobytes of anything (up to the 16 KiB header limit).
 */
export const boundedIp = (ip: string): string => ip.length > MAX_IP_LENGTH ? ip.slice(0, MAX_IP_LENGTH) : ip

/**
 * Text (a path, a query's names) with what looks like a token masked: a JWT (`eyJ…`, three
 * dot-separated parts), or a run of 40 or more base64url characters, as a refresh token is (43)
 * and a JWT's signature (43 for HS256), each character maybe percent-encoded (`%65yJ…` is `eyJ…`
 * to the router). A client that puts its token in the path must not get it logged; UUIDs (36
 * characters) are kept.
 */
const TOKEN_CHARACTER = String.raw`(?:[\w-]|%[\dA-Fa-f]{2})`
const TOKEN_LIKE = new RegExp(String.raw`eyJ${TOKEN_CHARACTER}*\.${TOKEN_CHARACTER}*\.${TOKEN_CHARACTER}*|${TOKEN_CHARACTER}{40,}`, 'g')
export const maskTokenLike = (text: string) => text.replace(TOKEN_LIKE, '[redacted]')

/**
 * Where a URL's query starts, as the router reads it: at the first `?` or `#` (a client that
 * sends a fragment gets it read as the query), or -1.
 */
export function queryStart (url: string): number {
  const question = url.indexOf('?')
  const hash = url.indexOf('#')
  return question === -1 ? hash : hash === -1 ? question : Math.min(question, hash)
}

/** A URL's path, without its query. */
export const pathOf = (url: string) => {
  const start = queryStart(url)
  return start === -1 ? url : url.slice(0, start)
}

/**
 * A value written into the path as `name=value`: a matrix parameter (`;password=…`), or a query
 * percent-encoded into the path (`/auth/token%3Fpassword%3D…`, or twice, `%253D`), which no route
 * reads. Masked from the first such `=` to the end of the path: a password there is as secret as
 * in a real query string, and may hold a `/`.
 */
const PATH_PARAMETER_VALUE = /(=|%(?:25)*3D)[\s\S]*$/i

/** A URL's path as the request log and the answers that name a path (404, 405) show it. */
export const maskPath = (path: string) => maskTokenLike(path).replace(PATH_PARAMETER_VALUE, '$1[redacted]')

/**
 * An address as some proxies write it into X-Forwarded-For, with its client's port (`a.b.c.d:port`,
 * `[v6]:port`) or in brackets (`[v6]`): the address, so the per-IP limit counts it, not new text
 * at each port, and a proxy list (TRUST_PROXY) recognises it.
 */
const ADDRESS_WITH_PORT = /^(?:\[([^\]]+)\](?::\d+)?|(\d{1,3}(?:\.\d{1,3}){3}):\d+)$/
export function withoutPort (ip: string): string {
  const match = ADDRESS_WITH_PORT.exec(ip)
  return match ? (match[1] ?? match[2])! : ip
}
