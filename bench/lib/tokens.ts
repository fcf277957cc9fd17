// Access tokens the server has never seen, for measuring a first verification over HTTP.
import { createHmac, randomUUID } from 'node:crypto'

/**
 * `count` copies of an access token the app issued, each with its own `jti` and signed again with
 * the app's HS256 secret: the claims stay exactly what the app writes (issuer, audience, roles,
 * expiry), so each copy verifies, and no two are alike, so none is in the verified-token cache.
 */
export function reissuedTokens (issued: string, secret: string, count: number): string[] {
  const [header, payload] = issued.split('.') as [string, string]
  const claims = JSON.parse(Buffer.from(payload, 'base64url').toString()) as Record<string, unknown>
  return Array.from({ length: count }, () => {
    const signed = `${header}.${Buffer.from(JSON.stringify({ ...claims, jti: randomUUID() })).toString('base64url')}`
    return `${signed}.${createHmac('sha256', secret).update(signed).digest('base64url')}`
  })
}
