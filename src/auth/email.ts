/** The one email normalisation (trim, lower-case): `A@X.io ` and `a@x.io` are the same account. */
export function normaliseEmail (email: string): string {
  return email.trim().toLowerCase()
}

/** The shape an email must have where no schema checks it (ADMIN_EMAIL, the user:create CLI). */
export const looksLikeEmail = (email: string) => email.length <= 254 && /^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(email)
