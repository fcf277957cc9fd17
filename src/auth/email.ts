import addFormats from 'ajv-formats'

/** The one email normalisation (trim, lower-case): `A@X.io ` and `a@x.io` are the same account. */
export function normaliseEmail (email: string): string {
  return email.trim().toLowerCase()
}

/** The `format: 'email'` of the request schemas (ajv-formats, full mode). */
const EMAIL_FORMAT = addFormats.default.get('email') as RegExp

/**
 * The schemas' email rule, where no schema checks it (ADMIN_EMAIL, the user:create CLI, the token
 * endpoint's username): an account created here can always sign in at /auth/login.
 */
export const looksLikeEmail = (email: string) => email.length <= 254 && EMAIL_FORMAT.test(email)
