import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { registerUser } from '../auth/registration.ts'

/**
 * ADMIN_EMAIL and ADMIN_PASSWORD create the first admin at start, and only while no enabled admin
 * exists. An existing account with that email is never promoted: whoever signed up first with it
 * would otherwise become admin.
 */
async function bootstrapAdminPlugin (app: FastifyInstance) {
  const { admin } = app.config
  if (!admin) return
  // Said at every start that sets ADMIN_EMAIL, so an operator who set it on a running deployment
  // learns why no account was made.
  const adminExists = () => app.log.info({ event: 'admin_bootstrap_skipped' }, 'ADMIN_EMAIL is not used: an enabled admin exists')
  if (await app.usersRepository.hasEnabledAdmin()) return adminExists()
  const registration = await registerUser((user) => app.usersRepository.createFirstAdmin(user), { ...admin, roles: ['admin'] })
  switch (registration.outcome) {
    case 'created':
      app.log.info({ event: 'admin_bootstrapped', userId: registration.created.id }, 'created the first admin from ADMIN_EMAIL')
      return
    // loadConfig refuses both before any database is opened.
    case 'invalid_email':
      throw new Error('ADMIN_EMAIL is not an email address')
    case 'weak_password':
      throw new Error(`ADMIN_PASSWORD is refused: ${registration.message}`)
    case 'email_taken':
      // Or not created: another instance starting at the same moment made an admin first (this
      // very one, or one of its own ADMIN_EMAIL).
      if (await app.usersRepository.hasEnabledAdmin()) return adminExists()
      app.log.warn('ADMIN_EMAIL belongs to an existing account, which is not promoted: create the first admin with another email (ADMIN_EMAIL or `npm run user:create`), who can then give this account roles (PATCH /admin/users/{id})')
  }
}

export default fp(bootstrapAdminPlugin, { name: 'bootstrap-admin', dependencies: ['config', 'users-repository'] })
