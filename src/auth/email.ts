/** The one email normalisation (trim, lower-case): `A@X.io ` and `a@x.io` are the same account. */
export function normaliseEmail (email: string): string {
  return email.trim().toLowerCase()
}
