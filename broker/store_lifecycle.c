/* SPDX-License-Identifier: Apache-2.0 */
/* store_lifecycle.c: environment encryption changes, backups, tenant lock and
 * unlock, and the retention sweep, each one transaction. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_int.h"

/* The row id and current DEK version of an environment. */
static enum kb_err
env_lookup(struct db_conn *c, const char *tenant, const char *name,
    int64_t *env_id, uint32_t *max_version)
{
	static const char sql[] =
	    "SELECT e.id, coalesce((SELECT max(version) "
	    "FROM deks d WHERE d.env_id = e.id), e.dek_version) FROM "
	    "environments e WHERE e.tenant_id = ? AND e.name = ?";
	struct db_stmt *st;
	enum kb_err e;
	enum db_step rc;

	if ((e = db_prepare(c, sql, &st)) != KB_OK)
		return e;
	db_bind_text(st, 1, tenant);
	db_bind_text(st, 2, name);
	rc = db_step(st);
	if (rc == DB_ROW) {
		*env_id = db_column_int64(st, 0);
		if (max_version != NULL)
			*max_version = (uint32_t)db_column_int64(st, 1);
	}
	db_reset(st);
	if (rc == DB_ROW)
		return KB_OK;
	if (rc == DB_DONE) {
		if ((e = store_tenant_exists(c, tenant)) != KB_OK)
			return e;
		return kb_errf(KB_ERR_NOT_FOUND,
		    "environment \"%s\" does not "
		    "exist in tenant \"%s\"",
		    name, tenant);
	}
	return db_err(c, "reading the environment");
}

static enum kb_err
insert_dek(
    struct db_conn *c, int64_t env_id, const struct store_dek *d, int64_t now)
{
	static const char sql[] =
	    "INSERT INTO deks(env_id, version, key_id, "
	    "wrap_alg, wrapped, create_time_us) VALUES (?, ?, ?, ?, ?, ?)";
	struct db_stmt *st;
	enum kb_err e;

	if ((e = db_prepare(c, sql, &st)) != KB_OK)
		return e;
	db_bind_int64(st, 1, env_id);
	db_bind_int64(st, 2, d->version);
	db_bind_text(st, 3, d->key_id);
	db_bind_text(st, 4, d->wrap_alg);
	db_bind_blob(st, 5, d->wrapped, d->wrapped_len);
	db_bind_int64(st, 6, now);
	return store_step_done(c, st, "storing the data key");
}

static void
dek_row(struct db_stmt *st, void *elem)
{
	struct store_dek *d = elem;
	size_t len;

	d->version = (uint32_t)db_column_int64(st, 0);
	store_copy_text(d->key_id, sizeof(d->key_id), st, 1);
	store_copy_text(d->wrap_alg, sizeof(d->wrap_alg), st, 2);
	len = db_column_bytes(st, 3);
	d->wrapped_len = 0;
	if (len > 0 && len <= sizeof(d->wrapped)) {
		memcpy(d->wrapped, db_column_blob(st, 3), len);
		d->wrapped_len = len;
	}
}

enum kb_err
store_env_dek_list(struct store *s, const char *tenant, const char *name,
    struct store_dek **out, size_t *n)
{
	static const char sql[] =
	    "SELECT version, key_id, wrap_alg, wrapped "
	    "FROM deks WHERE env_id = ? ORDER BY version DESC";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	int64_t env_id;
	enum kb_err e;

	*out = NULL;
	*n = 0;
	if ((e = env_lookup(c, tenant, name, &env_id, NULL)) == KB_OK
	    && (e = db_prepare(c, sql, &st)) == KB_OK) {
		db_bind_int64(st, 1, env_id);
		e = store_collect(c, st, sizeof(**out), dek_row, (void **)out,
		    n, "reading data keys");
	}
	db_conn_put(s->db, c);
	return e;
}

/* A count(*) query about one row id, into *n. */
static enum kb_err
count_of(struct db_conn *c, const char *sql, int64_t id, int64_t *n)
{
	struct db_stmt *st;
	enum kb_err e;
	enum db_step rc;

	if ((e = db_prepare(c, sql, &st)) != KB_OK)
		return e;
	db_bind_int64(st, 1, id);
	rc = db_step(st);
	*n = rc == DB_ROW ? db_column_int64(st, 0) : 0;
	db_reset(st);
	return rc == DB_ROW ? KB_OK : db_err(c, "counting rows");
}

struct env_rewrap {
	const char *tenant, *name;
	enum store_env_mode mode;
	const struct store_dek *deks;
	size_t n;
	int64_t now;
};

static enum kb_err
env_rewrap_txn(struct db_conn *c, void *arg)
{
	static const char sql[] =
	    "UPDATE deks SET key_id = ?, wrap_alg = ?, "
	    "wrapped = ? WHERE env_id = ? AND version = ?";
	struct env_rewrap *a = arg;
	struct db_stmt *st;
	int64_t env_id, have = 0;
	enum kb_err e;
	size_t i;

	if ((e = env_lookup(c, a->tenant, a->name, &env_id, NULL)) != KB_OK)
		return e;
	/* Every version the environment has, each exactly once: a version
	 * retired or added since the caller read them is a race, and a mode
	 * set over a row still sealed for the other mode would not open. */
	if ((e = count_of(c, "SELECT count(*) FROM deks WHERE env_id = ?",
	         env_id, &have))
	    != KB_OK)
		return e;
	if (a->n == 0 || have != (int64_t)a->n)
		return kb_errf(KB_ERR_UNAVAILABLE,
		    "environment %s/%s changed meanwhile (%lld data key "
		    "versions stored, %zu re-sealed); retry",
		    a->tenant, a->name, (long long)have, a->n);
	for (i = 0; i < a->n; i++) {
		if ((e = db_prepare(c, sql, &st)) != KB_OK)
			return e;
		db_bind_text(st, 1, a->deks[i].key_id);
		db_bind_text(st, 2, a->deks[i].wrap_alg);
		db_bind_blob(st, 3, a->deks[i].wrapped, a->deks[i].wrapped_len);
		db_bind_int64(st, 4, env_id);
		db_bind_int64(st, 5, a->deks[i].version);
		if ((e = store_step_done(c, st, "re-wrapping the data key"))
		    != KB_OK)
			return e;
		if (db_changes(c) != 1)
			return kb_errf(KB_ERR_UNAVAILABLE,
			    "environment %s/%s changed meanwhile (data key "
			    "version %u is gone); retry",
			    a->tenant, a->name, a->deks[i].version);
	}
	return store_run(c,
	    "UPDATE environments SET mode = ?, update_time_us = ? "
	    "WHERE id = ?",
	    "changing the encryption mode", "tii", store_env_mode_name(a->mode),
	    a->now, env_id);
}

enum kb_err
store_env_rewrap(struct store *s, const char *tenant, const char *name,
    enum store_env_mode mode, const struct store_dek *deks, size_t n,
    int64_t now)
{
	struct env_rewrap a = {tenant, name, mode, deks, n, now};

	return store_txn(s, env_rewrap_txn, &a, "re-wrapping the environment");
}

struct env_version {
	const char *tenant, *name;
	struct store_dek *dek;
	int64_t now;
	int reset;
};

static enum kb_err
env_version_txn(struct db_conn *c, void *arg)
{
	struct env_version *a = arg;
	uint32_t max = 0;
	int64_t env_id, gone = 0;
	enum kb_err e;

	if ((e = env_lookup(c, a->tenant, a->name, &env_id, &max)) != KB_OK)
		return e;
	if ((e = count_of(c,
	         "SELECT count(*) FROM environments WHERE id = ? AND state = "
	         "'deleted'",
	         env_id, &gone))
	    != KB_OK)
		return e;
	if (gone > 0)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "environment %s/%s was deleted and its data keys "
		    "destroyed: it takes no new data key",
		    a->tenant, a->name);
	/* The caller sealed the DEK for version max + 1 (its associated data
	 * names it) under the tenant lock: anything else is a race. */
	if (a->dek->version != max + 1)
		return kb_errf(KB_ERR_UNAVAILABLE,
		    "environment %s/%s changed "
		    "meanwhile (data key version %u taken); retry",
		    a->tenant, a->name, a->dek->version);
	if (a->reset) {
		/* Reset destroys the data key and its backups for good. */
		if ((e = store_run(c, "DELETE FROM backups WHERE env_id = ?",
		         "destroying backups", "i", env_id))
		        != KB_OK
		    || (e = store_run(c, "DELETE FROM deks WHERE env_id = ?",
		            "destroying data keys", "i", env_id))
		        != KB_OK)
			return e;
	}
	if ((e = insert_dek(c, env_id, a->dek, a->now)) != KB_OK)
		return e;
	if (a->reset)
		return store_run(c,
		    "UPDATE environments SET dek_version = ?, "
		    "mode = 'platform', update_time_us = ? WHERE id = ?",
		    "resetting the environment", "iii",
		    (int64_t)a->dek->version, a->now, env_id);
	return store_run(c,
	    "UPDATE environments SET dek_version = ?, "
	    "update_time_us = ? WHERE id = ?",
	    "setting the data key version", "iii", (int64_t)a->dek->version,
	    a->now, env_id);
}

enum kb_err
store_env_next_version(
    struct store *s, const char *tenant, const char *name, uint32_t *version)
{
	struct db_conn *c = db_conn_get(s->db);
	int64_t env_id;
	uint32_t max = 0;
	enum kb_err e;

	if ((e = env_lookup(c, tenant, name, &env_id, &max)) == KB_OK)
		*version = max + 1;
	db_conn_put(s->db, c);
	return e;
}

enum kb_err
store_env_add_version(struct store *s, const char *tenant, const char *name,
    struct store_dek *dek, int64_t now)
{
	struct env_version a = {tenant, name, dek, now, 0};

	return store_txn(s, env_version_txn, &a, "adding a data key version");
}

enum kb_err
store_env_reset(struct store *s, const char *tenant, const char *name,
    struct store_dek *dek, int64_t now)
{
	struct env_version a = {tenant, name, dek, now, 1};

	return store_txn(s, env_version_txn, &a, "resetting the environment");
}

enum kb_err
store_env_set_state(struct store *s, const char *tenant, const char *name,
    enum store_env_state from, enum store_env_state to, int64_t now)
{
	struct db_conn *c = db_conn_get(s->db);
	int64_t env_id;
	enum kb_err e;

	if ((e = env_lookup(c, tenant, name, &env_id, NULL)) != KB_OK)
		goto out;
	e = store_run(c,
	    "UPDATE environments SET state = ?, lock_time_us = ?, "
	    "update_time_us = ? WHERE id = ? AND state = ?",
	    "changing the environment state", "tiiit", store_env_state_name(to),
	    to == STORE_ENV_LOCKED ? now : (int64_t)0, now, env_id,
	    store_env_state_name(from));
	if (e == KB_OK && db_changes(c) != 1)
		e = kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "environment %s/%s is not "
		    "%s",
		    tenant, name, store_env_state_name(from));
out:
	db_conn_put(s->db, c);
	return e;
}

/* ---- backups ---- */

#define BACKUP_COLS                                                            \
	"b.id, e.tenant_id, e.name, b.dek_version, b.mode, "                   \
	"b.key_id, b.create_time_us"

static void
backup_row(struct db_stmt *st, void *elem)
{
	struct store_backup *b = elem;
	char mode[16];

	store_copy_text(b->id, sizeof(b->id), st, 0);
	store_copy_text(b->tenant_id, sizeof(b->tenant_id), st, 1);
	store_copy_text(b->env, sizeof(b->env), st, 2);
	b->dek_version = (uint32_t)db_column_int64(st, 3);
	store_copy_text(mode, sizeof(mode), st, 4);
	b->mode = strcmp(mode, "customer") == 0 ? STORE_MODE_CUSTOMER
	                                        : STORE_MODE_PLATFORM;
	store_copy_text(b->key_id, sizeof(b->key_id), st, 5);
	b->create_time_us = db_column_int64(st, 6);
}

enum kb_err
store_backup_create(struct store *s, const char *tenant, const char *name,
    const char *id, int64_t now, struct store_backup *out)
{
	/* The backup records the environment's encryption state now: its
	 * mode and the key wrapping its current DEK. */
	static const char sql[] =
	    "INSERT INTO backups(id, env_id, dek_version, "
	    "mode, key_id, create_time_us) SELECT CAST(? AS TEXT), e.id, "
	    "e.dek_version, e.mode, coalesce((SELECT nullif(k.parent_id, '') "
	    "FROM keys k WHERE k.id = d.key_id AND k.purpose = 'kek'), "
	    "d.key_id), CAST(? AS BIGINT) " ENV_JOIN
	    " WHERE e.tenant_id = ? AND e.name = ? AND d.key_id IS NOT NULL";
	struct db_conn *c = db_conn_get(s->db);
	int64_t env_id;
	enum kb_err e;

	if ((e = env_lookup(c, tenant, name, &env_id, NULL)) != KB_OK)
		goto out;
	if ((e = store_run(
	         c, sql, "recording the backup", "titt", id, now, tenant, name))
	    != KB_OK)
		goto out;
	if (db_changes(c) != 1) {
		e = kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "environment %s/%s has no "
		    "data key to back up",
		    tenant, name);
		goto out;
	}
	db_conn_put(s->db, c);
	return store_backup_get(s, tenant, id, out);
out:
	db_conn_put(s->db, c);
	return e;
}

enum kb_err
store_backup_get(struct store *s, const char *tenant, const char *id,
    struct store_backup *out)
{
	static const char sql[] =
	    "SELECT " BACKUP_COLS " FROM backups b JOIN "
	    "environments e ON e.id = b.env_id WHERE b.id = ?1 AND "
	    "e.tenant_id = ?2";
	enum kb_err e;

	e = store_get_one(s, sql, id, tenant, backup_row, out, "backup");
	if (e == KB_ERR_NOT_FOUND)
		kb_errf(e, "backup \"%s\" does not exist in tenant \"%s\"", id,
		    tenant);
	return e;
}

enum kb_err
store_backup_list(struct store *s, const char *tenant, const char *name,
    struct store_backup **out, size_t *n)
{
	/* A deleted environment's backups are records only: not listed. */
	static const char sql[] =
	    "SELECT " BACKUP_COLS " FROM backups b JOIN "
	    "environments e ON e.id = b.env_id WHERE e.id = ? AND "
	    "e.state != 'deleted' ORDER BY b.create_time_us, b.id";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	int64_t env_id;
	enum kb_err e;

	*out = NULL;
	*n = 0;
	if ((e = env_lookup(c, tenant, name, &env_id, NULL)) == KB_OK
	    && (e = db_prepare(c, sql, &st)) == KB_OK) {
		db_bind_int64(st, 1, env_id);
		e = store_collect(c, st, sizeof(**out), backup_row,
		    (void **)out, n, "listing backups");
	}
	db_conn_put(s->db, c);
	return e;
}

/* ---- lock, unlock, retention ---- */

struct tenant_lock {
	const char *tenant, *key_id;
	int64_t now;
	char (*destroy)[STORE_KEY_ID_MAX];
	size_t ndestroy;
};

static enum kb_err
tenant_lock_txn(struct db_conn *c, void *arg)
{
	/* The tenant keys (those pending deletion or approval too: the
	 * approval's request then fails) and the KEK objects in the token: all
	 * go. The KEK stays in the database, wrapped under the lock key, for
	 * unlock. */
	static const char sel[] =
	    "SELECT id FROM keys WHERE tenant_id = ? AND "
	    "((purpose = 'tenant' AND state IN ('active', 'available', "
	    "'pending_deletion', 'retired', 'pending_approval')) OR "
	    "(purpose = 'kek' AND state IN ('active', 'installing'))) "
	    "ORDER BY id";
	/* Data keys sealed under a KEK of another tenant key (an activation
	 * that failed part way leaves its re-sealed rows under the new key's
	 * KEK): the lock would destroy that key, and they would be lost for
	 * good. */
	static const char stray[] =
	    "SELECT count(*), min(k.id), min(k.parent_id) FROM deks d JOIN "
	    "environments e ON e.id = d.env_id JOIN keys k ON k.id = d.key_id "
	    "WHERE e.tenant_id = ?1 AND e.mode = 'customer' AND d.damaged = '' "
	    "AND k.purpose = 'kek' AND k.parent_id != ?2";
	struct tenant_lock *a = arg;
	struct db_stmt *st;
	enum kb_err e;
	void *nv;
	enum db_step rc;
	int64_t n;
	char kek[STORE_KEY_ID_MAX], parent[STORE_KEY_ID_MAX];

	if ((e = store_tenant_exists(c, a->tenant)) != KB_OK)
		return e;
	if ((e = db_prepare(c, stray, &st)) != KB_OK)
		return e;
	db_bind_text(st, 1, a->tenant);
	db_bind_text(st, 2, a->key_id);
	if ((rc = db_step(st)) != DB_ROW) {
		db_reset(st);
		return db_err(c, "counting the tenant's data keys");
	}
	n = db_column_int64(st, 0);
	store_copy_text(kek, sizeof(kek), st, 1);
	store_copy_text(parent, sizeof(parent), st, 2);
	db_reset(st);
	if (n > 0)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "%lld data keys of tenant \"%s\" are sealed under KEK %s "
		    "of key %s, not under the active key %s (an activation "
		    "that failed part way): the lock would destroy key %s and "
		    "lose them; activate a key again (kbctl keys activate) so "
		    "they move under it, then lock",
		    (long long)n, a->tenant, kek, parent, a->key_id, parent);
	/* A rerun (db_txn, on a conflict) lists them again from the start. */
	a->ndestroy = 0;
	if ((e = db_prepare(c, sel, &st)) != KB_OK)
		return e;
	db_bind_text(st, 1, a->tenant);
	while ((rc = db_step(st)) == DB_ROW) {
		if ((nv = realloc(
		         a->destroy, (a->ndestroy + 1) * sizeof(*a->destroy)))
		    == NULL) {
			db_reset(st);
			return kb_errf(KB_ERR_NOMEM, "out of memory");
		}
		a->destroy = nv;
		store_copy_text(
		    a->destroy[a->ndestroy++], STORE_KEY_ID_MAX, st, 0);
	}
	db_reset(st);
	if (rc != DB_DONE)
		return db_err(c, "listing the tenant's keys");
	if ((e = store_run(c,
	         "UPDATE keys SET state = 'locked', lock_time_us = ?, "
	         "update_time_us = ? WHERE id = ? AND tenant_id = ? AND "
	         "purpose = 'tenant' AND state = 'active'",
	         "locking the key", "iitt", a->now, a->now, a->key_id,
	         a->tenant))
	    != KB_OK)
		return e;
	if (db_changes(c) != 1)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "key \"%s\" is no "
		    "longer the active key of tenant \"%s\"",
		    a->key_id, a->tenant);
	if ((e = store_run(c,
	         "UPDATE keys SET state = 'deleted', "
	         "delete_time_us = ?, update_time_us = ? WHERE tenant_id = ? "
	         "AND "
	         "purpose = 'tenant' AND state IN ('available', "
	         "'pending_deletion', 'retired', 'pending_approval')",
	         "deleting keys", "iit", a->now, a->now, a->tenant))
	    != KB_OK)
		return e;
	if ((e = store_run(c,
	         "UPDATE keys SET state = 'locked', "
	         "lock_time_us = ?, update_time_us = ? WHERE tenant_id = ? AND "
	         "purpose = 'kek' AND state = 'active' AND parent_id = ?",
	         "locking the KEK", "iitt", a->now, a->now, a->tenant,
	         a->key_id))
	    != KB_OK)
		return e;
	if ((e = store_run(c,
	         "UPDATE environments SET state = 'locked', "
	         "lock_time_us = ?, update_time_us = ? WHERE tenant_id = ? AND "
	         "mode = 'customer' AND state = 'enabled'",
	         "locking environments", "iit", a->now, a->now, a->tenant))
	    != KB_OK)
		return e;
	return store_run(c,
	    "UPDATE tenants SET state = 'locked', lock_time_us = ?, "
	    "lock_key_id = ? WHERE id = ?",
	    "locking the tenant", "itt", a->now, a->key_id, a->tenant);
}

enum kb_err
store_tenant_lock(struct store *s, const char *tenant, const char *lock_key_id,
    int64_t now, char (**destroy)[STORE_KEY_ID_MAX], size_t *ndestroy)
{
	struct tenant_lock a = {tenant, lock_key_id, now, NULL, 0};
	enum kb_err e;

	e = store_txn(s, tenant_lock_txn, &a, "locking the tenant");
	if (e != KB_OK) {
		free(a.destroy);
		return e;
	}
	*destroy = a.destroy;
	*ndestroy = a.ndestroy;
	return KB_OK;
}

struct tenant_unlock {
	const char *tenant;
	int64_t now;
};

static enum kb_err
tenant_unlock_txn(struct db_conn *c, void *arg)
{
	struct tenant_unlock *a = arg;
	enum kb_err e;

	if ((e = store_run(c,
	         "UPDATE keys SET state = 'active', lock_time_us = 0, "
	         "activate_time_us = ?, update_time_us = ? WHERE id = (SELECT "
	         "lock_key_id FROM tenants WHERE id = ?) AND state = 'locked'",
	         "reactivating the key", "iit", a->now, a->now, a->tenant))
	    != KB_OK)
		return e;
	if (db_changes(c) != 1)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "tenant \"%s\" has no "
		    "locked key to reactivate",
		    a->tenant);
	if ((e = store_run(c,
	         "UPDATE keys SET state = 'active', lock_time_us = 0, "
	         "update_time_us = ? WHERE tenant_id = ? AND purpose = 'kek' "
	         "AND "
	         "state = 'locked' AND parent_id = (SELECT lock_key_id FROM "
	         "tenants "
	         "WHERE id = ?)",
	         "reactivating the KEK", "itt", a->now, a->tenant, a->tenant))
	    != KB_OK)
		return e;
	return store_run(c,
	    "UPDATE tenants SET state = 'active', lock_time_us = 0, "
	    "lock_key_id = '', last_key_change_us = ? WHERE id = ? AND "
	    "state = 'locked'",
	    "unlocking the tenant", "it", a->now, a->tenant);
}

enum kb_err
store_tenant_unlock(struct store *s, const char *tenant, int64_t now)
{
	struct tenant_unlock a = {tenant, now};

	return store_txn(s, tenant_unlock_txn, &a, "unlocking the tenant");
}

enum kb_err
store_envs_locked_before(struct store *s, int64_t cutoff,
    struct store_env **out, size_t *n, size_t max)
{
	static const char sql[] = "SELECT " ENV_COLS " " ENV_JOIN " WHERE "
	                          "e.state = 'locked' AND e.lock_time_us <= ? "
	                          "ORDER BY e.lock_time_us, e.id "
	                          "LIMIT ?";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;

	*out = NULL;
	*n = 0;
	if ((e = db_prepare(c, sql, &st)) == KB_OK) {
		db_bind_int64(st, 1, cutoff);
		db_bind_int64(st, 2, (int64_t)max);
		e = store_collect(c, st, sizeof(**out), store_env_row,
		    (void **)out, n, "listing locked environments");
	}
	db_conn_put(s->db, c);
	return e;
}

struct env_purge {
	const char *tenant, *name;
	int64_t now;
};

static enum kb_err
env_purge_txn(struct db_conn *c, void *arg)
{
	struct env_purge *a = arg;
	int64_t env_id;
	enum kb_err e;

	if ((e = env_lookup(c, a->tenant, a->name, &env_id, NULL)) != KB_OK)
		return e;
	if ((e = store_run(c,
	         "UPDATE environments SET state = 'deleted', "
	         "update_time_us = ? WHERE id = ? AND state = 'locked'",
	         "deleting the environment", "ii", a->now, env_id))
	    != KB_OK)
		return e;
	if (db_changes(c) != 1)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "environment %s/%s is "
		    "no longer locked",
		    a->tenant, a->name);
	/* The backups' data keys go with the environment's; their records
	 * (no key material) stay, unlisted, so that a restore of one is
	 * refused naming why rather than "no such backup". */
	return store_run(c, "DELETE FROM deks WHERE env_id = ?",
	    "destroying data keys", "i", env_id);
}

enum kb_err
store_env_purge(
    struct store *s, const char *tenant, const char *name, int64_t now)
{
	struct env_purge a = {tenant, name, now};

	return store_txn(s, env_purge_txn, &a, "deleting the environment");
}
