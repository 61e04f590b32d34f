/* SPDX-License-Identifier: Apache-2.0 */
/* store.c: SQLite persistence for tenants, environments, DEKs and keys. */
#include "store.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kb_secmem.h"
#include "store_int.h"

/* Migrations: index i brings the schema from version i to i + 1. Never edit
 * a released migration; append a new one. */
static const char *const migrations[] = {
    /* 1: tenants, keys, environments, DEKs. */
    "CREATE TABLE meta ("
    "  key TEXT PRIMARY KEY,"
    "  value TEXT NOT NULL);"
    "CREATE TABLE tenants ("
    "  id TEXT PRIMARY KEY,"
    "  display_name TEXT NOT NULL,"
    "  create_time_us INTEGER NOT NULL);"
    "CREATE TABLE keys ("
    "  id TEXT PRIMARY KEY,"
    "  tenant_id TEXT REFERENCES tenants(id),"
    "  purpose TEXT NOT NULL,"
    "  origin TEXT NOT NULL,"
    "  state TEXT NOT NULL,"
    "  fingerprint TEXT NOT NULL,"
    "  wrap_alg TEXT NOT NULL DEFAULT '',"
    "  create_time_us INTEGER NOT NULL,"
    "  update_time_us INTEGER NOT NULL);"
    "CREATE INDEX keys_tenant ON keys(tenant_id, state);"
    "CREATE TABLE environments ("
    "  id INTEGER PRIMARY KEY,"
    "  tenant_id TEXT NOT NULL REFERENCES tenants(id),"
    "  name TEXT NOT NULL,"
    "  mode TEXT NOT NULL CHECK (mode IN ('platform', 'customer')),"
    "  state TEXT NOT NULL CHECK (state IN ('enabled', 'locked', 'deleted')),"
    "  dek_version INTEGER NOT NULL,"
    "  create_time_us INTEGER NOT NULL,"
    "  update_time_us INTEGER NOT NULL,"
    "  UNIQUE (tenant_id, name));"
    "CREATE TABLE deks ("
    "  env_id INTEGER NOT NULL REFERENCES environments(id),"
    "  version INTEGER NOT NULL,"
    "  key_id TEXT NOT NULL REFERENCES keys(id),"
    "  wrap_alg TEXT NOT NULL,"
    "  wrapped BLOB NOT NULL,"
    "  create_time_us INTEGER NOT NULL,"
    "  PRIMARY KEY (env_id, version));"
    "CREATE INDEX deks_key ON deks(key_id);",

    /* 2: tenant keys, lock state, activation jobs, backups. */
    "ALTER TABLE tenants ADD COLUMN state TEXT NOT NULL DEFAULT 'active'"
    "  CHECK (state IN ('active', 'locked'));"
    "ALTER TABLE tenants ADD COLUMN last_activation_us INTEGER NOT NULL "
    "DEFAULT 0;"
    "ALTER TABLE tenants ADD COLUMN last_key_change_us INTEGER NOT NULL "
    "DEFAULT 0;"
    "ALTER TABLE tenants ADD COLUMN lock_time_us INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE tenants ADD COLUMN lock_key_id TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE keys ADD COLUMN bits INTEGER NOT NULL DEFAULT 2048;"
    "ALTER TABLE keys ADD COLUMN activate_time_us INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE keys ADD COLUMN lock_time_us INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE keys ADD COLUMN delete_time_us INTEGER NOT NULL DEFAULT 0;"
    "CREATE INDEX keys_fingerprint ON keys(tenant_id, fingerprint);"
    "ALTER TABLE environments ADD COLUMN lock_time_us INTEGER NOT NULL DEFAULT "
    "0;"
    "CREATE INDEX environments_state ON environments(state, lock_time_us);"
    "CREATE INDEX environments_tenant_mode ON environments(tenant_id, mode);"
    "CREATE TABLE jobs ("
    "  id TEXT PRIMARY KEY,"
    "  tenant_id TEXT NOT NULL REFERENCES tenants(id),"
    "  kind TEXT NOT NULL,"
    "  key_id TEXT NOT NULL,"
    "  previous_key_id TEXT NOT NULL DEFAULT '',"
    "  state TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed')),"
    "  total INTEGER NOT NULL DEFAULT 0,"
    "  done INTEGER NOT NULL DEFAULT 0,"
    "  error TEXT NOT NULL DEFAULT '',"
    "  create_time_us INTEGER NOT NULL,"
    "  update_time_us INTEGER NOT NULL);"
    "CREATE INDEX jobs_state ON jobs(state);"
    "CREATE TABLE backups ("
    "  id TEXT PRIMARY KEY,"
    "  env_id INTEGER NOT NULL REFERENCES environments(id),"
    "  dek_version INTEGER NOT NULL,"
    "  mode TEXT NOT NULL,"
    "  key_id TEXT NOT NULL,"
    "  create_time_us INTEGER NOT NULL);"
    "CREATE INDEX backups_env ON backups(env_id);",

    /* 3: envelope v2. Environments get an id that is never reused (the
     * sealed DEKs' associated data names it); the BYOK key-exchange keys
     * become purpose 'exchange' and 'kek' now names a tenant's AES KEK,
     * stored wrapped under its parent tenant key; jobs may be
     * platform-wide (no tenant) and name the key they re-seal under. */
    "ALTER TABLE environments ADD COLUMN uid TEXT;"
    "UPDATE environments SET uid = lower(hex(randomblob(16)));"
    "CREATE UNIQUE INDEX environments_uid ON environments(uid);"
    "UPDATE keys SET purpose = 'exchange' WHERE purpose = 'kek';"
    "ALTER TABLE keys ADD COLUMN parent_id TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE keys ADD COLUMN wrapped BLOB;"
    "CREATE INDEX keys_parent ON keys(parent_id);"
    "CREATE TABLE jobs3 ("
    "  id TEXT PRIMARY KEY,"
    "  tenant_id TEXT,"
    "  kind TEXT NOT NULL,"
    "  key_id TEXT NOT NULL,"
    "  previous_key_id TEXT NOT NULL DEFAULT '',"
    "  target_key_id TEXT NOT NULL DEFAULT '',"
    "  state TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed')),"
    "  total INTEGER NOT NULL DEFAULT 0,"
    "  done INTEGER NOT NULL DEFAULT 0,"
    "  error TEXT NOT NULL DEFAULT '',"
    "  create_time_us INTEGER NOT NULL,"
    "  update_time_us INTEGER NOT NULL);"
    "INSERT INTO jobs3(id, tenant_id, kind, key_id, previous_key_id, state,"
    "  total, done, error, create_time_us, update_time_us)"
    "  SELECT id, tenant_id, kind, key_id, previous_key_id, state, total,"
    "  done, error, create_time_us, update_time_us FROM jobs;"
    "DROP TABLE jobs;"
    "ALTER TABLE jobs3 RENAME TO jobs;"
    "CREATE INDEX jobs_state ON jobs(state);"
    "CREATE INDEX deks_alg ON deks(wrap_alg);"
    "ALTER TABLE deks ADD COLUMN damaged TEXT NOT NULL DEFAULT '';",

    /* 4: policy time's durable high-water mark, so that a wall clock set
     * back cannot take policy time back across a restart; seeded with the
     * newest time the database records (an upgrade from 3 keeps that
     * promise too). A forward jump beyond clock_jump_limit_s waits here
     * for an admin's confirmation. */
    "CREATE TABLE clock ("
    "  id INTEGER PRIMARY KEY CHECK (id = 1),"
    "  mark_us INTEGER NOT NULL,"
    "  kept INTEGER NOT NULL DEFAULT 0,"
    "  jump_from_us INTEGER NOT NULL DEFAULT 0,"
    "  jump_to_us INTEGER NOT NULL DEFAULT 0,"
    "  confirm_time_us INTEGER NOT NULL DEFAULT 0,"
    "  confirm_by TEXT NOT NULL DEFAULT '');"
    "INSERT INTO clock(id, mark_us) VALUES (1, max("
    "  coalesce((SELECT max(max(create_time_us, last_activation_us,"
    "    last_key_change_us, lock_time_us)) FROM tenants), 0),"
    "  coalesce((SELECT max(max(create_time_us, update_time_us,"
    "    activate_time_us, lock_time_us, delete_time_us)) FROM keys), 0),"
    "  coalesce((SELECT max(max(create_time_us, update_time_us,"
    "    lock_time_us)) FROM environments), 0),"
    "  coalesce((SELECT max(update_time_us) FROM jobs), 0),"
    "  coalesce((SELECT max(create_time_us) FROM backups), 0)));",

    /* 5: quorum (issue 15). A policy per tenant ('' = the platform
     * default), approval requests and their approvals. Requests, approvals
     * and policies carry a seal made in the token (quorum.c): a row edited
     * or inserted by hand does not count. Self-contained: it touches no
     * other table. */
    "CREATE TABLE quorum_policies ("
    "  tenant_id TEXT PRIMARY KEY,"
    "  approvals INTEGER NOT NULL,"
    "  approvers TEXT NOT NULL DEFAULT '',"
    "  update_time_us INTEGER NOT NULL,"
    "  updated_by TEXT NOT NULL DEFAULT '',"
    "  seal BLOB);"
    "CREATE TABLE approval_requests ("
    "  id TEXT PRIMARY KEY,"
    "  method TEXT NOT NULL,"
    "  tenant_id TEXT NOT NULL DEFAULT '',"
    "  environment TEXT NOT NULL DEFAULT '',"
    "  arguments TEXT NOT NULL DEFAULT '',"
    "  call BLOB,"
    "  proof_fingerprint TEXT NOT NULL DEFAULT '',"
    "  target TEXT NOT NULL DEFAULT '',"
    "  requester TEXT NOT NULL,"
    "  create_time_us INTEGER NOT NULL,"
    "  expire_time_us INTEGER NOT NULL,"
    "  approvals_needed INTEGER NOT NULL,"
    "  approvers TEXT NOT NULL DEFAULT '',"
    "  state TEXT NOT NULL CHECK (state IN ('pending', 'executing',"
    "    'executed', 'failed', 'denied', 'expired')),"
    "  result TEXT NOT NULL DEFAULT '',"
    "  update_time_us INTEGER NOT NULL,"
    "  seal BLOB);"
    "CREATE INDEX approval_requests_state ON approval_requests(state);"
    "CREATE TABLE approvals ("
    "  request_id TEXT NOT NULL,"
    "  approver TEXT NOT NULL,"
    "  decision TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),"
    "  time_us INTEGER NOT NULL,"
    "  seal BLOB,"
    "  PRIMARY KEY (request_id, approver));",

    /* 6: deletion with a way back (issue 14). An environment or a tenant
     * key pending deletion carries when it was asked and when it becomes
     * final; the environment keeps its state (enabled or locked: what an
     * undelete gives back), a key is in state 'pending_deletion'.
     * Self-contained: only these columns and their indexes. */
    "ALTER TABLE environments ADD COLUMN delete_request_us INTEGER NOT NULL "
    "DEFAULT 0;"
    "ALTER TABLE environments ADD COLUMN delete_final_us INTEGER NOT NULL "
    "DEFAULT 0;"
    "CREATE INDEX environments_delete ON environments(delete_final_us) "
    "WHERE delete_final_us != 0;"
    "ALTER TABLE keys ADD COLUMN delete_request_us INTEGER NOT NULL "
    "DEFAULT 0;"
    "ALTER TABLE keys ADD COLUMN delete_final_us INTEGER NOT NULL DEFAULT 0;"
    "CREATE INDEX keys_delete ON keys(delete_final_us) "
    "WHERE delete_final_us != 0;",

    /* 7: DEK rotation per environment (issue 14). Versions below
     * min_dek_version were destroyed by RetireDataKeys: GetDataKey refuses
     * them by number even if a row comes back from an old copy.
     * Self-contained: one column. */
    ("ALTER TABLE environments ADD COLUMN min_dek_version INTEGER NOT NULL "
     "DEFAULT 0;"),
    /* 8: quorum, second part. A policy names the operations
     * it covers ('' = every covered one, those added later included); a
     * request names the key a GenerateKey/UploadKey made for it (kept in
     * the token as pending_approval until it is approved) and carries a
     * second seal over its state, re-made at each move (quorum.c). A
     * request without one was made before states were sealed: it cannot
     * be decided, so pending ones expire here. Self-contained: it touches
     * only the quorum tables. */
    "ALTER TABLE quorum_policies ADD COLUMN operations TEXT NOT NULL "
    "DEFAULT '';"
    "ALTER TABLE approval_requests ADD COLUMN key_id TEXT NOT NULL "
    "DEFAULT '';"
    "ALTER TABLE approval_requests ADD COLUMN state_seal BLOB;"
    "UPDATE approval_requests SET state = 'expired', result = 'made before "
    "request states were sealed (schema upgrade): make it again' WHERE "
    "state = 'pending';",

    /* 9: a retired tenant key (issue 14) keeps when it was retired: its
     * retirement schedules its deletion, and an undelete gives it back
     * retired, never available (a retired key is not activated again).
     * Self-contained: one column. */
    ("ALTER TABLE keys ADD COLUMN retire_time_us INTEGER NOT NULL "
     "DEFAULT 0;"),
};

#define N_MIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))

enum kb_err
store_sql_err(sqlite3 *db, int rc, const char *what)
{
	const char *msg = db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
	int sys = db != NULL ? sqlite3_system_errno(db) : 0;

	/* The operating system's reason, when there is one, decides: a full
	 * disk and a read-only file system need different actions. */
	if (sys == ENOSPC || sys == EDQUOT || (rc & 0xff) == SQLITE_FULL)
		return kb_errf(KB_ERR_STORAGE_FULL,
		    "%s: the database disk is "
		    "full (%s); free space and retry",
		    what, msg);
	if (sys == EROFS)
		return kb_errf(KB_ERR_READ_ONLY,
		    "%s: the database's file system "
		    "is read-only (%s)",
		    what, msg);
	switch (rc & 0xff) {
	case SQLITE_READONLY:
	case SQLITE_PERM:
		return kb_errf(KB_ERR_READ_ONLY,
		    "%s: the database cannot be "
		    "written (%s)",
		    what, msg);
	case SQLITE_CANTOPEN:
		return kb_errf(KB_ERR_READ_ONLY,
		    "%s: the database cannot be "
		    "opened for writing: is it, its directory or its file "
		    "system "
		    "read-only or missing? (%s%s%s)",
		    what, msg, sys ? ": " : "", sys ? strerror(sys) : "");
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return kb_errf(KB_ERR_UNAVAILABLE,
		    "%s: the database is busy "
		    "(%s); retry",
		    what, msg);
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB:
		return kb_errf(KB_ERR_CORRUPT,
		    "%s: the database is corrupt (%s)", what, msg);
	case SQLITE_IOERR:
		return kb_errf(KB_ERR_UNAVAILABLE,
		    "%s: database I/O error (%s%s%s)", what, msg,
		    sys ? ": " : "", sys ? strerror(sys) : "");
	default: return kb_errf(KB_ERR_STORE, "%s: %s", what, msg);
	}
}

enum kb_err
store_exec(sqlite3 *db, const char *sql, const char *what)
{
	int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);

	return rc == SQLITE_OK ? KB_OK : store_sql_err(db, rc, what);
}

static enum kb_err
conn_open(const char *path, struct conn *c)
{
	enum kb_err e;
	int rc;

	memset(c, 0, sizeof(*c));
	rc = sqlite3_open_v2(path, &c->db,
	    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
	    NULL);
	if (rc != SQLITE_OK) {
		e = store_sql_err(c->db, rc, "opening the database");
		kb_err_wrap(e, "%s", path);
		sqlite3_close(c->db);
		c->db = NULL;
		return e;
	}
	sqlite3_busy_timeout(c->db, 10000);
	sqlite3_extended_result_codes(c->db, 1);
	/* WAL for concurrent readers; FULL sync so an acknowledged change
	 * survives power loss. */
	if ((e = store_exec(c->db,
	         "PRAGMA journal_mode=WAL; "
	         "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
	         "configuring the database"))
	    != KB_OK)
		return kb_err_wrap(e, "%s", path);
	return KB_OK;
}

static void
conn_close(struct conn *c)
{
	int i;

	for (i = 0; i < c->ncache; i++)
		sqlite3_finalize(c->cache[i].st);
	c->ncache = 0;
	sqlite3_close(c->db);
	c->db = NULL;
}

/* A cached prepared statement for `sql` (a static string), reset and with
 * bindings cleared. */
enum kb_err
store_stmt(struct conn *c, const char *sql, sqlite3_stmt **out)
{
	sqlite3_stmt *st;
	int i, rc;

	for (i = 0; i < c->ncache; i++) {
		if (c->cache[i].sql == sql) {
			sqlite3_reset(c->cache[i].st);
			sqlite3_clear_bindings(c->cache[i].st);
			*out = c->cache[i].st;
			return KB_OK;
		}
	}
	rc = sqlite3_prepare_v3(
	    c->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, NULL);
	if (rc != SQLITE_OK)
		return store_sql_err(c->db, rc, "preparing a query");
	if (c->ncache < STMT_CACHE) {
		c->cache[c->ncache].sql = sql;
		c->cache[c->ncache].st = st;
		c->ncache++;
	} else {
		/* Should not happen: STMT_CACHE exceeds our distinct queries.
		 */
		sqlite3_finalize(c->cache[0].st);
		c->cache[0].sql = sql;
		c->cache[0].st = st;
	}
	*out = st;
	return KB_OK;
}

struct conn *
store_conn_get(struct store *s)
{
	struct conn *c;

	pthread_mutex_lock(&s->mu);
	while (s->nfree == 0)
		pthread_cond_wait(&s->cv, &s->mu);
	c = s->free_list[--s->nfree];
	pthread_mutex_unlock(&s->mu);
	return c;
}

void
store_conn_put(struct store *s, struct conn *c)
{
	pthread_mutex_lock(&s->mu);
	s->free_list[s->nfree++] = c;
	pthread_cond_signal(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

static enum kb_err
migrate(struct conn *c, const char *path)
{
	sqlite3_stmt *st = NULL;
	enum kb_err e = KB_ERR_INTERNAL;
	int version, v;

	if (sqlite3_prepare_v2(c->db, "PRAGMA user_version", -1, &st, NULL)
	        != SQLITE_OK
	    || sqlite3_step(st) != SQLITE_ROW) {
		e = store_sql_err(c->db, sqlite3_errcode(c->db),
		    "reading the schema version");
		goto out;
	}
	version = sqlite3_column_int(st, 0);
	/* An open statement would keep DROP TABLE from running. */
	sqlite3_finalize(st);
	st = NULL;
	if (version > N_MIGRATIONS) {
		e = kb_errf(KB_ERR_CONFIG,
		    "database %s has schema version %d, "
		    "newer than this keybroker knows (%d): use a newer "
		    "keybrokerd",
		    path, version, N_MIGRATIONS);
		goto out;
	}
	for (v = version; v < N_MIGRATIONS; v++) {
		char bump[64];

		snprintf(bump, sizeof(bump), "PRAGMA user_version=%d;", v + 1);
		if ((e = store_exec(c->db, "BEGIN IMMEDIATE", "migrating"))
		    != KB_OK)
			goto out;
		if ((e = store_exec(c->db, migrations[v], "migrating")) != KB_OK
		    || (e = store_exec(c->db, bump, "migrating")) != KB_OK
		    || (e = store_exec(c->db, "COMMIT", "migrating"))
		        != KB_OK) {
			store_exec(c->db, "ROLLBACK", "rollback");
			kb_err_wrap(
			    e, "schema migration %d of %s", v + 1, path);
			goto out;
		}
	}
	e = KB_OK;
out:
	sqlite3_finalize(st);
	return e;
}

enum kb_err
store_open(const char *path, unsigned conns, struct store **out)
{
	struct store *s = NULL;
	enum kb_err e = KB_ERR_INTERNAL;
	unsigned i;

	*out = NULL;
	if (conns == 0)
		conns = 4;
	if ((s = calloc(1, sizeof(*s))) == NULL
	    || (s->path = strdup(path)) == NULL
	    || (s->conns = calloc(conns, sizeof(*s->conns))) == NULL
	    || (s->free_list = calloc(conns, sizeof(*s->free_list))) == NULL) {
		e = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	for (i = 0; i < conns; i++) {
		if ((e = conn_open(path, &s->conns[i])) != KB_OK)
			goto out;
		s->nconns++;
		if (i == 0 && (e = migrate(&s->conns[0], path)) != KB_OK)
			goto out;
		s->free_list[s->nfree++] = &s->conns[i];
	}
	*out = s;
	s = NULL;
	e = KB_OK;
out:
	store_close(s);
	return e;
}

void
store_close(struct store *s)
{
	unsigned i;

	if (s == NULL)
		return;
	for (i = 0; i < s->nconns; i++)
		conn_close(&s->conns[i]);
	if (s->conns != NULL)
		pthread_mutex_destroy(&s->mu);
	if (s->conns != NULL)
		pthread_cond_destroy(&s->cv);
	free(s->conns);
	free(s->free_list);
	free(s->path);
	free(s);
}

int
store_schema_version(struct store *s)
{
	(void)s;
	return N_MIGRATIONS;
}

void
store_copy_text(char *dst, size_t len, sqlite3_stmt *st, int col)
{
	const unsigned char *t = sqlite3_column_text(st, col);

	snprintf(dst, len, "%s", t != NULL ? (const char *)t : "");
}

/* Step a statement that changes rows; map constraint failures. */
enum kb_err
store_step_done(struct conn *c, sqlite3_stmt *st, const char *what)
{
	int rc = sqlite3_step(st);

	sqlite3_reset(st);
	if (rc == SQLITE_DONE)
		return KB_OK;
	if (rc == SQLITE_CONSTRAINT_PRIMARYKEY
	    || rc == SQLITE_CONSTRAINT_UNIQUE)
		return kb_errf(
		    KB_ERR_ALREADY_EXISTS, "%s: already exists", what);
	return store_sql_err(c->db, rc, what);
}

enum kb_err
store_meta_get(struct store *s, const char *key, char *buf, size_t len)
{
	static const char sql[] = "SELECT value FROM meta WHERE key = ?";
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;
	int rc;

	if ((e = store_stmt(c, sql, &st)) != KB_OK)
		goto out;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		store_copy_text(buf, len, st, 0);
		e = KB_OK;
	} else if (rc == SQLITE_DONE) {
		e = kb_errf(KB_ERR_NOT_FOUND, "setting %s not found", key);
	} else {
		e = store_sql_err(c->db, rc, "reading a setting");
	}
	sqlite3_reset(st);
out:
	store_conn_put(s, c);
	return e;
}

enum kb_err
store_meta_set(struct store *s, const char *key, const char *value)
{
	static const char sql[] =
	    "INSERT INTO meta(key, value) VALUES (?, ?) "
	    "ON CONFLICT(key) DO UPDATE SET value = excluded.value";
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;

	if ((e = store_stmt(c, sql, &st)) == KB_OK) {
		sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
		e = store_step_done(c, st, "writing a setting");
	}
	store_conn_put(s, c);
	return e;
}

enum kb_err
store_clock_get(struct store *s, struct store_clock *out)
{
	static const char sql[] =
	    "SELECT mark_us, kept, jump_from_us, "
	    "jump_to_us, confirm_time_us, confirm_by FROM clock WHERE id = 1";
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;
	int rc;

	memset(out, 0, sizeof(*out));
	if ((e = store_stmt(c, sql, &st)) != KB_OK)
		goto out;
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		out->mark_us = sqlite3_column_int64(st, 0);
		out->kept = sqlite3_column_int(st, 1) != 0;
		out->jump_from_us = sqlite3_column_int64(st, 2);
		out->jump_to_us = sqlite3_column_int64(st, 3);
		out->confirm_time_us = sqlite3_column_int64(st, 4);
		store_copy_text(
		    out->confirm_by, sizeof(out->confirm_by), st, 5);
		e = KB_OK;
	} else if (rc == SQLITE_DONE) {
		e = kb_errf(KB_ERR_CORRUPT,
		    "database %s has no clock row (schema "
		    "4 makes it): restore the database from a backup",
		    s->path);
	} else {
		e = store_sql_err(c->db, rc, "reading the clock's mark");
	}
	sqlite3_reset(st);
out:
	store_conn_put(s, c);
	return e;
}

enum kb_err
store_clock_put(struct store *s, const struct store_clock *k)
{
	static const char sql[] =
	    "UPDATE clock SET mark_us = max(mark_us, ?), "
	    "kept = 1, jump_from_us = ?, jump_to_us = ?, confirm_time_us = ?, "
	    "confirm_by = ? WHERE id = 1";
	struct conn *c = store_conn_get(s);
	enum kb_err e;

	e = store_run(c, sql, "storing the clock's mark", "iiiit", k->mark_us,
	    k->jump_from_us, k->jump_to_us, k->confirm_time_us, k->confirm_by);
	if (e == KB_OK && sqlite3_changes(c->db) != 1)
		e = kb_errf(KB_ERR_CORRUPT,
		    "database %s has no clock row (schema "
		    "4 makes it): restore the database from a backup",
		    s->path);
	store_conn_put(s, c);
	return e;
}

enum kb_err
store_token_bind(struct store *s, const char *label, const char *serial)
{
	char have_label[64], have_serial[64];
	enum kb_err e;

	e = store_meta_get(s, "token_label", have_label, sizeof(have_label));
	if (e == KB_ERR_NOT_FOUND) {
		kb_err_clear();
		if ((e = store_meta_set(s, "token_label", label)) != KB_OK
		    || (e = store_meta_set(s, "token_serial", serial)) != KB_OK)
			return e;
		return KB_OK;
	}
	if (e != KB_OK)
		return e;
	if ((e = store_meta_get(
	         s, "token_serial", have_serial, sizeof(have_serial)))
	    != KB_OK)
		return e;
	if (strcmp(have_label, label) != 0 || strcmp(have_serial, serial) != 0)
		return kb_errf(KB_ERR_TOKEN_MISMATCH,
		    "database %s belongs to token '%s' (serial %s), but the "
		    "configured token is '%s' (serial %s): its keys cannot "
		    "unwrap "
		    "this database; point token_uri at the right token or use "
		    "another database",
		    s->path, have_label, have_serial, label, serial);
	return KB_OK;
}

/* ---- tenants ---- */

#define TENANT_COLS                                                            \
	"t.id, t.display_name, t.create_time_us, "                             \
	"(SELECT count(*) FROM environments e WHERE e.tenant_id = t.id "       \
	"AND e.state != 'deleted'), t.state, t.last_activation_us, "           \
	"t.last_key_change_us, t.lock_time_us, t.lock_key_id, "                \
	"(SELECT count(*) FROM environments e WHERE e.tenant_id = t.id "       \
	"AND e.state = 'locked'), "                                            \
	"coalesce((SELECT k.id FROM keys k WHERE k.tenant_id = t.id AND "      \
	"k.purpose = 'tenant' AND k.state = 'active'), ''), "                  \
	"coalesce((SELECT k.id FROM keys k WHERE k.tenant_id = t.id AND "      \
	"((k.purpose = 'tenant' AND k.state = 'installing') OR "               \
	"k.state = 'retiring') LIMIT 1), ''), "                                \
	"coalesce((SELECT max(e.lock_time_us) FROM environments e WHERE "      \
	"e.tenant_id = t.id AND e.state = 'locked'), 0)"

static void
tenant_row(sqlite3_stmt *st, void *elem)
{
	struct store_tenant *t = elem;
	char state[16];

	store_copy_text(t->id, sizeof(t->id), st, 0);
	store_copy_text(t->display_name, sizeof(t->display_name), st, 1);
	t->create_time_us = sqlite3_column_int64(st, 2);
	t->env_count = (uint32_t)sqlite3_column_int64(st, 3);
	store_copy_text(state, sizeof(state), st, 4);
	t->locked = strcmp(state, "locked") == 0;
	t->last_activation_us = sqlite3_column_int64(st, 5);
	t->last_key_change_us = sqlite3_column_int64(st, 6);
	t->lock_time_us = sqlite3_column_int64(st, 7);
	store_copy_text(t->lock_key_id, sizeof(t->lock_key_id), st, 8);
	t->locked_env_count = (uint32_t)sqlite3_column_int64(st, 9);
	store_copy_text(t->active_key_id, sizeof(t->active_key_id), st, 10);
	store_copy_text(
	    t->installing_key_id, sizeof(t->installing_key_id), st, 11);
	t->last_env_lock_us = sqlite3_column_int64(st, 12);
}

enum kb_err
store_tenant_create(struct store *s, const struct store_tenant *t)
{
	static const char sql[] = "INSERT INTO tenants(id, display_name, "
	                          "create_time_us) VALUES (?, ?, ?)";
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;

	if ((e = store_stmt(c, sql, &st)) == KB_OK) {
		sqlite3_bind_text(st, 1, t->id, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, t->display_name, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 3, t->create_time_us);
		e = store_step_done(c, st, "creating the tenant");
		if (e == KB_ERR_ALREADY_EXISTS)
			e = kb_errf(e, "tenant \"%s\" already exists", t->id);
	}
	store_conn_put(s, c);
	return e;
}

enum kb_err
store_tenant_get(struct store *s, const char *id, struct store_tenant *out)
{
	static const char sql[] =
	    "SELECT " TENANT_COLS " FROM tenants t WHERE t.id = ?";

	return store_get_one(s, sql, id, NULL, tenant_row, out, "tenant");
}

enum kb_err
store_tenant_list(struct store *s, const char *after, unsigned limit,
    struct store_tenant **out, size_t *n, int *more)
{
	static const char sql[] =
	    "SELECT " TENANT_COLS
	    " FROM tenants t WHERE t.id > ? ORDER BY t.id LIMIT ?";
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;

	*out = NULL;
	*n = 0;
	*more = 0;
	if ((e = store_stmt(c, sql, &st)) != KB_OK)
		goto out;
	sqlite3_bind_text(st, 1, after != NULL ? after : "", -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)limit + 1);
	e = store_collect(c, st, sizeof(**out), tenant_row, (void **)out, n,
	    "listing tenants");
	/* One row past the page says there is another page. */
	if (e == KB_OK && *n > limit) {
		*n = limit;
		*more = 1;
	}
out:
	store_conn_put(s, c);
	return e;
}

/* ---- environments ---- */

const char *
store_env_mode_name(enum store_env_mode m)
{
	switch (m) {
	case STORE_MODE_PLATFORM: return "platform";
	case STORE_MODE_CUSTOMER: return "customer";
	}
	return "unknown";
}

const char *
store_env_state_name(enum store_env_state st)
{
	switch (st) {
	case STORE_ENV_ENABLED: return "enabled";
	case STORE_ENV_LOCKED: return "locked";
	case STORE_ENV_DELETED: return "deleted";
	case STORE_ENV_PENDING_DELETION: return "pending deletion";
	}
	return "unknown";
}

static enum store_env_mode
mode_parse(const char *s)
{
	return strcmp(s, "customer") == 0 ? STORE_MODE_CUSTOMER
	                                  : STORE_MODE_PLATFORM;
}

static enum store_env_state
state_parse(const char *s)
{
	if (strcmp(s, "locked") == 0)
		return STORE_ENV_LOCKED;
	if (strcmp(s, "deleted") == 0)
		return STORE_ENV_DELETED;
	return STORE_ENV_ENABLED;
}

void
store_env_row(sqlite3_stmt *st, void *elem)
{
	struct store_env *env = elem;
	char buf[16];

	store_copy_text(env->tenant_id, sizeof(env->tenant_id), st, 0);
	store_copy_text(env->name, sizeof(env->name), st, 1);
	store_copy_text(buf, sizeof(buf), st, 2);
	env->mode = mode_parse(buf);
	store_copy_text(buf, sizeof(buf), st, 3);
	env->state = state_parse(buf);
	env->dek_version = (uint32_t)sqlite3_column_int64(st, 4);
	store_copy_text(env->key_id, sizeof(env->key_id), st, 5);
	store_copy_text(env->wrap_alg, sizeof(env->wrap_alg), st, 6);
	env->create_time_us = sqlite3_column_int64(st, 7);
	env->update_time_us = sqlite3_column_int64(st, 8);
	env->lock_time_us = sqlite3_column_int64(st, 9);
	store_copy_text(env->uid, sizeof(env->uid), st, 10);
	snprintf(env->seal_key_id, sizeof(env->seal_key_id), "%s", env->key_id);
	/* A customer-managed environment's key is its tenant key, the
	 * parent of the KEK that seals its DEK. */
	if (sqlite3_column_bytes(st, 11) > 0)
		store_copy_text(env->key_id, sizeof(env->key_id), st, 11);
	env->delete_request_us = sqlite3_column_int64(st, 12);
	env->delete_final_us = sqlite3_column_int64(st, 13);
	/* Pending deletion overlays the stored state, which stays what an
	 * undelete gives back (a lock meanwhile changes it). */
	env->state_before_deletion = env->state;
	if (env->delete_final_us != 0 && env->state != STORE_ENV_DELETED)
		env->state = STORE_ENV_PENDING_DELETION;
}

enum kb_err
store_tenant_exists(struct conn *c, const char *tenant)
{
	static const char sql[] = "SELECT 1 FROM tenants WHERE id = ?";
	sqlite3_stmt *st;
	enum kb_err e;
	int rc;

	if ((e = store_stmt(c, sql, &st)) != KB_OK)
		return e;
	sqlite3_bind_text(st, 1, tenant, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	sqlite3_reset(st);
	if (rc == SQLITE_ROW)
		return KB_OK;
	if (rc == SQLITE_DONE)
		return kb_errf(
		    KB_ERR_NOT_FOUND, "tenant \"%s\" does not exist", tenant);
	return store_sql_err(c->db, rc, "reading the tenant");
}

enum kb_err
store_env_create(
    struct store *s, struct store_env *env, const struct store_dek *dek)
{
	static const char ins_env[] =
	    "INSERT INTO environments(tenant_id, "
	    "name, mode, state, dek_version, create_time_us, update_time_us, "
	    "uid) VALUES (?, ?, ?, ?, ?, ?, ?, ?)";
	static const char ins_dek[] =
	    "INSERT INTO deks(env_id, version, "
	    "key_id, wrap_alg, wrapped, create_time_us) VALUES (?, ?, ?, ?, ?, "
	    "?)";
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	sqlite3_int64 env_id;
	enum kb_err e;

	if ((e = store_exec(
	         c->db, "BEGIN IMMEDIATE", "creating the environment"))
	    != KB_OK)
		goto out;
	if ((e = store_tenant_exists(c, env->tenant_id)) != KB_OK)
		goto rollback;
	if ((e = store_stmt(c, ins_env, &st)) != KB_OK)
		goto rollback;
	sqlite3_bind_text(st, 1, env->tenant_id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, env->name, -1, SQLITE_STATIC);
	sqlite3_bind_text(
	    st, 3, store_env_mode_name(env->mode), -1, SQLITE_STATIC);
	sqlite3_bind_text(
	    st, 4, store_env_state_name(env->state), -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 5, dek->version);
	sqlite3_bind_int64(st, 6, env->create_time_us);
	sqlite3_bind_int64(st, 7, env->update_time_us);
	sqlite3_bind_text(st, 8, env->uid, -1, SQLITE_STATIC);
	if ((e = store_step_done(c, st, "creating the environment")) != KB_OK) {
		if (e == KB_ERR_ALREADY_EXISTS)
			e = kb_errf(e,
			    "environment \"%s\" already exists in "
			    "tenant \"%s\"",
			    env->name, env->tenant_id);
		goto rollback;
	}
	env_id = sqlite3_last_insert_rowid(c->db);
	if ((e = store_stmt(c, ins_dek, &st)) != KB_OK)
		goto rollback;
	sqlite3_bind_int64(st, 1, env_id);
	sqlite3_bind_int64(st, 2, dek->version);
	sqlite3_bind_text(st, 3, dek->key_id, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, dek->wrap_alg, -1, SQLITE_STATIC);
	sqlite3_bind_blob(
	    st, 5, dek->wrapped, (int)dek->wrapped_len, SQLITE_STATIC);
	sqlite3_bind_int64(st, 6, env->create_time_us);
	if ((e = store_step_done(c, st, "storing the wrapped data key"))
	    != KB_OK)
		goto rollback;
	if ((e = store_exec(c->db, "COMMIT", "creating the environment"))
	    != KB_OK)
		goto rollback;
	env->dek_version = dek->version;
	snprintf(env->key_id, sizeof(env->key_id), "%s", dek->key_id);
	snprintf(env->seal_key_id, sizeof(env->seal_key_id), "%s", dek->key_id);
	snprintf(env->wrap_alg, sizeof(env->wrap_alg), "%s", dek->wrap_alg);
	goto out;
rollback:
	(void)sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
out:
	store_conn_put(s, c);
	return e;
}

enum kb_err
store_env_get(struct store *s, const char *tenant, const char *name,
    struct store_env *out)
{
	static const char sql[] = "SELECT " ENV_COLS " " ENV_JOIN
	                          " WHERE e.tenant_id = ? AND e.name = ?";
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;
	int rc;

	if ((e = store_stmt(c, sql, &st)) != KB_OK)
		goto out;
	sqlite3_bind_text(st, 1, tenant, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		store_env_row(st, out);
		e = KB_OK;
	} else if (rc == SQLITE_DONE) {
		sqlite3_reset(st);
		if ((e = store_tenant_exists(c, tenant)) == KB_OK)
			e = kb_errf(KB_ERR_NOT_FOUND,
			    "environment \"%s\" does "
			    "not exist in tenant \"%s\"",
			    name, tenant);
	} else {
		e = store_sql_err(c->db, rc, "reading the environment");
	}
	sqlite3_reset(st);
out:
	store_conn_put(s, c);
	return e;
}

enum kb_err
store_env_list(struct store *s, const char *tenant, const char *after,
    unsigned limit, struct store_env **out, size_t *n, int *more)
{
	static const char sql[] =
	    "SELECT " ENV_COLS " " ENV_JOIN
	    " WHERE e.tenant_id = ? AND e.name > ? ORDER BY e.name LIMIT ?";
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;

	*out = NULL;
	*n = 0;
	*more = 0;
	if ((e = store_tenant_exists(c, tenant)) != KB_OK
	    || (e = store_stmt(c, sql, &st)) != KB_OK)
		goto out;
	sqlite3_bind_text(st, 1, tenant, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, after != NULL ? after : "", -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)limit + 1);
	e = store_collect(c, st, sizeof(**out), store_env_row, (void **)out, n,
	    "listing environments");
	if (e == KB_OK && *n > limit) {
		*n = limit;
		*more = 1;
	}
out:
	store_conn_put(s, c);
	return e;
}

enum kb_err
store_env_with_dek(struct store *s, const char *tenant, const char *name,
    uint32_t version, struct store_env *env, struct store_dek *dek)
{
	/* The environment row, and the DEK row of the asked version (current
	 * when 0) in the same read. */
	static const char sql[] =
	    "SELECT " ENV_COLS ", v.version, v.key_id, "
	    "v.wrap_alg, v.wrapped, v.damaged, e.min_dek_version " ENV_JOIN
	    " LEFT JOIN deks v ON "
	    "v.env_id = e.id AND v.version = (CASE WHEN ?3 = 0 THEN "
	    "e.dek_version ELSE ?3 END) WHERE e.tenant_id = ?1 AND e.name = ?2";
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;
	const void *blob;
	int rc, len;

	if ((e = store_stmt(c, sql, &st)) != KB_OK)
		goto out;
	sqlite3_bind_text(st, 1, tenant, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, version);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		store_env_row(st, env);
		env->min_dek_version = (uint32_t)sqlite3_column_int64(st, 19);
		blob = sqlite3_column_blob(st, 17);
		len = sqlite3_column_bytes(st, 17);
		if (sqlite3_column_type(st, 14) == SQLITE_NULL) {
			if (version != 0)
				e = kb_errf(KB_ERR_NOT_FOUND,
				    "environment \"%s/%s\" "
				    "has no data key version %u (current is "
				    "%u)",
				    tenant, name, version, env->dek_version);
			else
				e = kb_errf(KB_ERR_NOT_FOUND,
				    "environment \"%s/%s\" "
				    "has no data key (it was deleted)",
				    tenant, name);
		} else if (blob == NULL || len <= 0
		    || (size_t)len > sizeof(dek->wrapped)) {
			e = kb_errf(KB_ERR_CORRUPT,
			    "environment \"%s/%s\" has no "
			    "valid wrapped data key",
			    tenant, name);
		} else {
			dek->version = (uint32_t)sqlite3_column_int64(st, 14);
			store_copy_text(
			    dek->key_id, sizeof(dek->key_id), st, 15);
			store_copy_text(
			    dek->wrap_alg, sizeof(dek->wrap_alg), st, 16);
			memcpy(dek->wrapped, blob, (size_t)len);
			dek->wrapped_len = (size_t)len;
			store_copy_text(
			    dek->damaged, sizeof(dek->damaged), st, 18);
			e = KB_OK;
		}
	} else if (rc == SQLITE_DONE) {
		sqlite3_reset(st);
		if ((e = store_tenant_exists(c, tenant)) == KB_OK)
			e = kb_errf(KB_ERR_NOT_FOUND,
			    "environment \"%s\" does "
			    "not exist in tenant \"%s\"",
			    name, tenant);
	} else {
		e = store_sql_err(c->db, rc, "reading the data key");
	}
	sqlite3_reset(st);
out:
	store_conn_put(s, c);
	return e;
}

/* ---- keys ---- */

void
store_key_row(sqlite3_stmt *st, void *elem)
{
	struct store_key *k = elem;
	int len;

	store_copy_text(k->id, sizeof(k->id), st, 0);
	store_copy_text(k->tenant_id, sizeof(k->tenant_id), st, 1);
	store_copy_text(k->purpose, sizeof(k->purpose), st, 2);
	store_copy_text(k->origin, sizeof(k->origin), st, 3);
	store_copy_text(k->state, sizeof(k->state), st, 4);
	store_copy_text(k->fingerprint, sizeof(k->fingerprint), st, 5);
	store_copy_text(k->wrap_alg, sizeof(k->wrap_alg), st, 6);
	k->create_time_us = sqlite3_column_int64(st, 7);
	k->update_time_us = sqlite3_column_int64(st, 8);
	k->bits = (unsigned)sqlite3_column_int(st, 9);
	k->activate_time_us = sqlite3_column_int64(st, 10);
	k->lock_time_us = sqlite3_column_int64(st, 11);
	k->delete_time_us = sqlite3_column_int64(st, 12);
	store_copy_text(k->parent_id, sizeof(k->parent_id), st, 13);
	len = sqlite3_column_bytes(st, 14);
	if (len > 0 && (size_t)len <= sizeof(k->wrapped)) {
		memcpy(k->wrapped, sqlite3_column_blob(st, 14), (size_t)len);
		k->wrapped_len = (size_t)len;
	}
	k->delete_request_us = sqlite3_column_int64(st, 15);
	k->delete_final_us = sqlite3_column_int64(st, 16);
	k->retire_time_us = sqlite3_column_int64(st, 17);
}

enum kb_err
store_key_create(struct store *s, const struct store_key *k)
{
	struct conn *c = store_conn_get(s);
	enum kb_err e;

	e = store_key_insert_conn(c, k);
	store_conn_put(s, c);
	return e;
}

enum kb_err
store_key_insert_conn(struct conn *c, const struct store_key *k)
{
	static const char sql[] =
	    "INSERT INTO keys(id, tenant_id, purpose, "
	    "origin, state, fingerprint, wrap_alg, create_time_us, "
	    "update_time_us, bits, parent_id, wrapped) VALUES (?, nullif(?, "
	    "''), "
	    "?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
	sqlite3_stmt *st;
	enum kb_err e;

	if ((e = store_stmt(c, sql, &st)) == KB_OK) {
		sqlite3_bind_text(st, 1, k->id, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, k->tenant_id, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, k->purpose, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 4, k->origin, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 5, k->state, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 6, k->fingerprint, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 7, k->wrap_alg, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 8, k->create_time_us);
		sqlite3_bind_int64(st, 9, k->update_time_us);
		sqlite3_bind_int(st, 10, (int)(k->bits ? k->bits : 2048));
		sqlite3_bind_text(st, 11, k->parent_id, -1, SQLITE_STATIC);
		if (k->wrapped_len > 0)
			sqlite3_bind_blob(st, 12, k->wrapped,
			    (int)k->wrapped_len, SQLITE_STATIC);
		else
			sqlite3_bind_null(st, 12);
		e = store_step_done(c, st, "recording the key");
		if (e == KB_ERR_ALREADY_EXISTS)
			e = kb_errf(e, "key \"%s\" already exists", k->id);
	}
	return e;
}

enum kb_err
store_key_get(struct store *s, const char *id, struct store_key *out)
{
	static const char sql[] = "SELECT " KEY_COLS " FROM keys WHERE id = ?";

	return store_get_one(s, sql, id, NULL, store_key_row, out, "key");
}

enum kb_err
store_key_broker(struct store *s, const char *purpose, struct store_key *out)
{
	static const char sql[] =
	    "SELECT " KEY_COLS " FROM keys WHERE "
	    "tenant_id IS NULL AND purpose = ? AND state = 'active' "
	    "ORDER BY create_time_us DESC LIMIT 1";

	return store_get_one(
	    s, sql, purpose, NULL, store_key_row, out, "broker key for");
}

enum kb_err
store_txn(struct store *s, enum kb_err (*fn)(struct conn *c, void *arg),
    void *arg, const char *what)
{
	struct conn *c = store_conn_get(s);
	enum kb_err e;

	if ((e = store_exec(c->db, "BEGIN IMMEDIATE", what)) != KB_OK)
		goto out;
	if ((e = fn(c, arg)) != KB_OK
	    || (e = store_exec(c->db, "COMMIT", what)) != KB_OK) {
		/* Keep fn's message: the rollback's outcome does not matter
		 * to the caller. */
		(void)sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL);
	}
out:
	store_conn_put(s, c);
	return e;
}

enum kb_err
store_collect(struct conn *c, sqlite3_stmt *st, size_t size, store_row_fn fn,
    void **out, size_t *n, const char *what)
{
	char *v = NULL, *nv;
	size_t cnt = 0, cap = 0;
	int rc;

	*out = NULL;
	*n = 0;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (cnt == cap) {
			cap = cap ? cap * 2 : 8;
			if ((nv = realloc(v, cap * size)) == NULL) {
				sqlite3_reset(st);
				free(v);
				return kb_errf(KB_ERR_NOMEM, "out of memory");
			}
			v = nv;
		}
		memset(v + cnt * size, 0, size);
		fn(st, v + cnt * size);
		cnt++;
	}
	sqlite3_reset(st);
	if (rc != SQLITE_DONE) {
		free(v);
		return store_sql_err(c->db, rc, what);
	}
	*out = v;
	*n = cnt;
	return KB_OK;
}

enum kb_err
store_get_one(struct store *s, const char *sql, const char *a1, const char *a2,
    store_row_fn fn, void *out, const char *noun)
{
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;
	int rc;

	if ((e = store_stmt(c, sql, &st)) != KB_OK)
		goto out;
	sqlite3_bind_text(st, 1, a1, -1, SQLITE_STATIC);
	if (a2 != NULL)
		sqlite3_bind_text(st, 2, a2, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		fn(st, out);
		e = KB_OK;
	} else if (rc == SQLITE_DONE) {
		e = kb_errf(
		    KB_ERR_NOT_FOUND, "%s \"%s\" does not exist", noun, a1);
	} else {
		e = store_sql_err(c->db, rc, "reading the database");
	}
	sqlite3_reset(st);
out:
	store_conn_put(s, c);
	return e;
}
