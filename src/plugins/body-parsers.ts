// The body parsers: what a request body must be before any schema reads it (UTF-8, no content
// coding, JSON naming each member once and no prototype keys), and the answer to a Content-Type
// no route reads.
import { errorCodes, type FastifyBodyParser, type FastifyInstance, type FastifyRequest } from 'fastify'
import { isUtf8 } from 'node:buffer'
import { apiError } from '../errors.ts'

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
export function unsupportedUnlessEmpty (request: FastifyRequest, payload: FastifyRequest['raw'], done: (error: Error | null, body?: undefined) => void) {
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
