import addFormats from 'ajv-formats'

/** The one email normalisation (trim, lower-case): `A@X.io ` and `a@x.io` are the same account. */
export function normaliseEmail (email: string): string {
  return email.trim().toLowerCase()
}

/** The `format: 'email'` of the request schemas (ajv-formats, full mode). */
const EMAIL_FORMAT = addFormats.default.get('email') as RegExp

/** RFC 5321 §4.5.3.1.3 caps a path at 256 octets, angle brackets included. */
export const EMAIL_MAX_LENGTH = 254

/**
 * The schemas' email rule, where no schema checks it (ADMIN_EMAIL, the user:create CLI, the token
 * endpoint's username): an account created here can always sign in at /auth/login.
 */
export const looksLikeEmail = (email: string) => email.length <= EMAIL_MAX_LENGTH && EMAIL_FORMAT.test(email)

/** RFC 5321 §4.5.3.1.1; the format allows ASCII only before the @, so characters are octets. */
export const EMAIL_LOCAL_PART_MAX_LENGTH = 64

/**
 * The email of a new account (sign-up, user:create, ADMIN_EMAIL): the schemas' rule and at most 64
 * characters before the @, as no mail server takes more. Sign-in asks only looksLikeEmail, so an
 * account made before this rule still signs in.
 */
export const isNewAccountEmail = (email: string) => looksLikeEmail(email) && email.indexOf('@') <= EMAIL_LOCAL_PART_MAX_LENGTH
