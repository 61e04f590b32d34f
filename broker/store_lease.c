/* SPDX-License-Identifier: Apache-2.0 */
/* store_lease.c: cluster-wide leases on the database layer's locks. */
#include "store_lease.h"

#include <stdio.h>

#include "db.h"
#include "store_int.h"

/* Every lock of ours is prefixed, so other users of the database (and
 * PostgreSQL's own advisory locks) do not collide with them. */
static enum kb_err
take(struct store *s, const char *name, int wait, struct store_lease **out)
{
	char full[160];

	snprintf(full, sizeof(full), "keybroker.%s", name);
	return db_lock(s->db, full, wait, (struct db_lock **)out);
}

enum kb_err
store_lease_take(struct store *s, const char *name, struct store_lease **out)
{
	return take(s, name, 0, out);
}

enum kb_err
store_lease_wait(struct store *s, const char *name, struct store_lease **out)
{
	return take(s, name, 1, out);
}

int
store_lease_held(struct store_lease *l)
{
	return db_lock_alive((struct db_lock *)l);
}

void
store_lease_drop(struct store_lease *l)
{
	db_unlock((struct db_lock *)l);
}
