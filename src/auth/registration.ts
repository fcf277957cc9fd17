import { isNewAccountEmail, normaliseEmail } from './email.ts'
import { hashPassword, passwordProblem, type StillWaiting } from './passwords.ts'
import { normaliseRoles, type Role } from './permissions.ts'
import type { NewUser } from '../repositories/users.ts'

export type Registration<Created> =
  | { outcome: 'created', created: Created }
  | { outcome: 'invalid_email' }
  | { outcome: 'weak_password', message: string }
  | { outcome: 'email_taken' }

/**
 * Creates an account the one way: normalised email, password policy, argon2id hash. `create`
 * stores it (a user, a user and their first session, the first admin), or answers null when the
 * email is taken.
 */
export async function registerUser<Created> (
  create: (user: NewUser) => Promise<Created | null>,
  input: { email: string, password: string, name?: string | null | undefined, roles?: Role[] },
  stillWaiting?: StillWaiting
): Promise<Registration<Created>> {
  const email = normaliseEmail(input.email)
  if (!isNewAccountEmail(email)) return { outcome: 'invalid_email' }
  const problem = passwordProblem(input.password, email)
  if (problem) return { outcome: 'weak_password', message: problem }
  const created = await create({
    email,
    name: input.name ?? null,
    passwordHash: await hashPassword(input.password, stillWaiting),
    roles: normaliseRoles(input.roles ?? [])
  })
  return created === null ? { outcome: 'email_taken' } : { outcome: 'created', created }
}
