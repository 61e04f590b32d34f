/* SPDX-License-Identifier: Apache-2.0 */
/* store.c: persistence for tenants, environments, DEKs and keys, on the
 * database layer (db/db.h): SQLite or PostgreSQL. */
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kb_secmem.h"
#include "store_int.h"

/* Migrations: index i brings the schema from version i to i + 1. Never edit
 * a released migration; append a new one (with its PostgreSQL text in `pg`
 * where the dialects differ). PostgreSQL starts from pg_base below. */
static const struct db_migration migrations[] = {
    /* 1: tenants, keys, environments, DEKs. */
    {"CREATE TABLE meta ("
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
        NULL},

    /* 2: tenant keys, lock state, activation jobs, backups. */
    {"ALTER TABLE tenants ADD COLUMN state TEXT NOT NULL DEFAULT 'active'"
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
     "ALTER TABLE environments ADD COLUMN lock_time_us INTEGER NOT NULL "
     "DEFAULT "
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
        NULL},

    /* 3: envelope v2. Environments get an id that is never reused (the
     * sealed DEKs' associated data names it); the BYOK key-exchange keys
     * become purpose 'exchange' and 'kek' now names a tenant's AES KEK,
     * stored wrapped under its parent tenant key; jobs may be
     * platform-wide (no tenant) and name the key they re-seal under. */
    {"ALTER TABLE environments ADD COLUMN uid TEXT;"
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
        NULL},

    /* 4: policy time's durable high-water mark, so that a wall clock set
     * back cannot take policy time back across a restart; seeded with the
     * newest time the database records (an upgrade from 3 keeps that
     * promise too). A forward jump beyond clock_jump_limit_s waits here
     * for an admin's confirmation. */
    {"CREATE TABLE clock ("
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
        NULL},

    /* 5: quorum (issue 15). A policy per tenant ('' = the platform
     * default), approval requests and their approvals. Requests, approvals
     * and policies carry a seal made in the token (quorum.c): a row edited
     * or inserted by hand does not count. Self-contained: it touches no
     * other table. */
    {"CREATE TABLE quorum_policies ("
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
        NULL},

    /* 6: deletion with a way back (issue 14). An environment or a tenant
     * key pending deletion carries when it was asked and when it becomes
     * final; the environment keeps its state (enabled or locked: what an
     * undelete gives back), a key is in state 'pending_deletion'.
     * Self-contained: only these columns and their indexes. */
    {"ALTER TABLE environments ADD COLUMN delete_request_us INTEGER NOT NULL "
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
        NULL},

    /* 7: DEK rotation per environment (issue 14). Versions below
     * min_dek_version were destroyed by RetireDataKeys: GetDataKey refuses
     * them by number even if a row comes back from an old copy.
     * Self-contained: one column. */
    {("ALTER TABLE environments ADD COLUMN min_dek_version INTEGER NOT NULL "
      "DEFAULT 0;"),
        NULL},
    /* 8: quorum, second part. A policy names the operations
     * it covers ('' = every covered one, those added later included); a
     * request names the key a GenerateKey/UploadKey made for it (kept in
     * the token as pending_approval until it is approved) and carries a
     * second seal over its state, re-made at each move (quorum.c). A
     * request without one was made before states were sealed: it cannot
     * be decided, so pending ones expire here. Self-contained: it touches
     * only the quorum tables. */
    {"ALTER TABLE quorum_policies ADD COLUMN operations TEXT NOT NULL "
     "DEFAULT '';"
     "ALTER TABLE approval_requests ADD COLUMN key_id TEXT NOT NULL "
     "DEFAULT '';"
     "ALTER TABLE approval_requests ADD COLUMN state_seal BLOB;"
     "UPDATE approval_requests SET state = 'expired', result = 'made before "
     "request states were sealed (schema upgrade): make it again' WHERE "
     "state = 'pending';",
        NULL},

    /* 9: a retired tenant key (issue 14) keeps when it was retired: its
     * retirement schedules its deletion, and an undelete gives it back
     * retired, never available (a retired key is not activated again).
     * Self-contained: one column. */
    {("ALTER TABLE keys ADD COLUMN retire_time_us INTEGER NOT NULL "
      "DEFAULT 0;"),
        NULL},
};

#define N_MIGRATIONS ((int)(sizeof(migrations) / sizeof(migrations[0])))

/* The schema at version 9 (migrations 1 to 9 on an empty database) in
 * PostgreSQL's dialect: BIGINT for every INTEGER (times in microseconds,
 * ids), BYTEA for BLOB, an identity column for environments.id (SQLite's
 * rowid), the same constraints and indexes, and the rows the migrations
 * make on a new database (the clock's). */
static const char pg_base[] =
    "CREATE TABLE meta ("
    "  key TEXT PRIMARY KEY,"
    "  value TEXT NOT NULL);"
    "CREATE TABLE tenants ("
    "  id TEXT PRIMARY KEY,"
    "  display_name TEXT NOT NULL,"
    "  create_time_us BIGINT NOT NULL,"
    "  state TEXT NOT NULL DEFAULT 'active'"
    "    CHECK (state IN ('active', 'locked')),"
    "  last_activation_us BIGINT NOT NULL DEFAULT 0,"
    "  last_key_change_us BIGINT NOT NULL DEFAULT 0,"
    "  lock_time_us BIGINT NOT NULL DEFAULT 0,"
    "  lock_key_id TEXT NOT NULL DEFAULT '');"
    "CREATE TABLE keys ("
    "  id TEXT PRIMARY KEY,"
    "  tenant_id TEXT REFERENCES tenants(id),"
    "  purpose TEXT NOT NULL,"
    "  origin TEXT NOT NULL,"
    "  state TEXT NOT NULL,"
    "  fingerprint TEXT NOT NULL,"
    "  wrap_alg TEXT NOT NULL DEFAULT '',"
    "  create_time_us BIGINT NOT NULL,"
    "  update_time_us BIGINT NOT NULL,"
    "  bits BIGINT NOT NULL DEFAULT 2048,"
    "  activate_time_us BIGINT NOT NULL DEFAULT 0,"
    "  lock_time_us BIGINT NOT NULL DEFAULT 0,"
    "  delete_time_us BIGINT NOT NULL DEFAULT 0,"
    "  parent_id TEXT NOT NULL DEFAULT '',"
    "  wrapped BYTEA,"
    "  delete_request_us BIGINT NOT NULL DEFAULT 0,"
    "  delete_final_us BIGINT NOT NULL DEFAULT 0,"
    "  retire_time_us BIGINT NOT NULL DEFAULT 0);"
    "CREATE INDEX keys_tenant ON keys(tenant_id, state);"
    "CREATE INDEX keys_fingerprint ON keys(tenant_id, fingerprint);"
    "CREATE INDEX keys_parent ON keys(parent_id);"
    "CREATE INDEX keys_delete ON keys(delete_final_us) "
    "WHERE delete_final_us != 0;"
    "CREATE TABLE environments ("
    "  id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    "  tenant_id TEXT NOT NULL REFERENCES tenants(id),"
    "  name TEXT NOT NULL,"
    "  mode TEXT NOT NULL CHECK (mode IN ('platform', 'customer')),"
    "  state TEXT NOT NULL CHECK (state IN ('enabled', 'locked', 'deleted')),"
    "  dek_version BIGINT NOT NULL,"
    "  create_time_us BIGINT NOT NULL,"
    "  update_time_us BIGINT NOT NULL,"
    "  lock_time_us BIGINT NOT NULL DEFAULT 0,"
    "  uid TEXT,"
    "  delete_request_us BIGINT NOT NULL DEFAULT 0,"
    "  delete_final_us BIGINT NOT NULL DEFAULT 0,"
    "  min_dek_version BIGINT NOT NULL DEFAULT 0,"
    "  UNIQUE (tenant_id, name));"
    "CREATE INDEX environments_state ON environments(state, lock_time_us);"
    "CREATE INDEX environments_tenant_mode ON environments(tenant_id, mode);"
    "CREATE UNIQUE INDEX environments_uid ON environments(uid);"
    "CREATE INDEX environments_delete ON environments(delete_final_us) "
    "WHERE delete_final_us != 0;"
    "CREATE TABLE deks ("
    "  env_id BIGINT NOT NULL REFERENCES environments(id),"
    "  version BIGINT NOT NULL,"
    "  key_id TEXT NOT NULL REFERENCES keys(id),"
    "  wrap_alg TEXT NOT NULL,"
    "  wrapped BYTEA NOT NULL,"
    "  create_time_us BIGINT NOT NULL,"
    "  damaged TEXT NOT NULL DEFAULT '',"
    "  PRIMARY KEY (env_id, version));"
    "CREATE INDEX deks_key ON deks(key_id);"
    "CREATE INDEX deks_alg ON deks(wrap_alg);"
    "CREATE TABLE backups ("
    "  id TEXT PRIMARY KEY,"
    "  env_id BIGINT NOT NULL REFERENCES environments(id),"
    "  dek_version BIGINT NOT NULL,"
    "  mode TEXT NOT NULL,"
    "  key_id TEXT NOT NULL,"
    "  create_time_us BIGINT NOT NULL);"
    "CREATE INDEX backups_env ON backups(env_id);"
    "CREATE TABLE jobs ("
    "  id TEXT PRIMARY KEY,"
    "  tenant_id TEXT,"
    "  kind TEXT NOT NULL,"
    "  key_id TEXT NOT NULL,"
    "  previous_key_id TEXT NOT NULL DEFAULT '',"
    "  target_key_id TEXT NOT NULL DEFAULT '',"
    "  state TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed')),"
    "  total BIGINT NOT NULL DEFAULT 0,"
    "  done BIGINT NOT NULL DEFAULT 0,"
    "  error TEXT NOT NULL DEFAULT '',"
    "  create_time_us BIGINT NOT NULL,"
    "  update_time_us BIGINT NOT NULL);"
    "CREATE INDEX jobs_state ON jobs(state);"
    "CREATE TABLE clock ("
    "  id BIGINT PRIMARY KEY CHECK (id = 1),"
    "  mark_us BIGINT NOT NULL,"
    "  kept BIGINT NOT NULL DEFAULT 0,"
    "  jump_from_us BIGINT NOT NULL DEFAULT 0,"
    "  jump_to_us BIGINT NOT NULL DEFAULT 0,"
    "  confirm_time_us BIGINT NOT NULL DEFAULT 0,"
    "  confirm_by TEXT NOT NULL DEFAULT '');"
    /* A new database records no time yet: the mark starts at 0. */
    "INSERT INTO clock(id, mark_us) VALUES (1, 0);"
    "CREATE TABLE quorum_policies ("
    "  tenant_id TEXT PRIMARY KEY,"
    "  approvals BIGINT NOT NULL,"
    "  approvers TEXT NOT NULL DEFAULT '',"
    "  update_time_us BIGINT NOT NULL,"
    "  updated_by TEXT NOT NULL DEFAULT '',"
    "  seal BYTEA,"
    "  operations TEXT NOT NULL DEFAULT '');"
    "CREATE TABLE approval_requests ("
    "  id TEXT PRIMARY KEY,"
    "  method TEXT NOT NULL,"
    "  tenant_id TEXT NOT NULL DEFAULT '',"
    "  environment TEXT NOT NULL DEFAULT '',"
    "  arguments TEXT NOT NULL DEFAULT '',"
    "  call BYTEA,"
    "  proof_fingerprint TEXT NOT NULL DEFAULT '',"
    "  target TEXT NOT NULL DEFAULT '',"
    "  requester TEXT NOT NULL,"
    "  create_time_us BIGINT NOT NULL,"
    "  expire_time_us BIGINT NOT NULL,"
    "  approvals_needed BIGINT NOT NULL,"
    "  approvers TEXT NOT NULL DEFAULT '',"
    "  state TEXT NOT NULL CHECK (state IN ('pending', 'executing',"
    "    'executed', 'failed', 'denied', 'expired')),"
    "  result TEXT NOT NULL DEFAULT '',"
    "  update_time_us BIGINT NOT NULL,"
    "  seal BYTEA,"
    "  key_id TEXT NOT NULL DEFAULT '',"
    "  state_seal BYTEA);"
    "CREATE INDEX approval_requests_state ON approval_requests(state);"
    "CREATE TABLE approvals ("
    "  request_id TEXT NOT NULL,"
    "  approver TEXT NOT NULL,"
    "  decision TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),"
    "  time_us BIGINT NOT NULL,"
    "  seal BYTEA,"
    "  PRIMARY KEY (request_id, approver));";

static const struct db_schema store_schema = {
    "store", migrations, N_MIGRATIONS, pg_base, 9};

const struct db_schema *
store_db_schema(void)
{
	return &store_schema;
}

enum kb_err
store_open_with(const struct store_open_opts *o, struct store **out)
{
	struct db_config cfg;
	struct store *s;
	enum kb_err e;

	*out = NULL;
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	memset(&cfg, 0, sizeof(cfg));
	cfg.target = o->target;
	cfg.password_file = o->password_file;
	cfg.conns = o->conns != 0 ? o->conns : 4;
	cfg.schema = &store_schema;
	if ((e = db_open(&cfg, &s->db)) != KB_OK) {
		free(s);
		return e;
	}
	s->nconns = cfg.conns;
	*out = s;
	return KB_OK;
}

enum kb_err
store_open(const char *target, unsigned conns, struct store **out)
{
	struct store_open_opts o = {target, NULL, conns};

	return store_open_with(&o, out);
}

void
store_close(struct store *s)
{
	if (s == NULL)
		return;
	db_close(s->db);
	free(s);
}

int
store_is_postgres(const struct store *s)
{
	return db_engine(s->db) == DB_POSTGRES;
}

enum kb_err
store_ping(struct store *s)
{
	return db_ping(s->db);
}

int
store_schema_version(struct store *s)
{
	(void)s;
	return N_MIGRATIONS;
}

void
store_copy_text(char *dst, size_t len, struct db_stmt *st, int col)
{
	const char *t = db_column_text(st, col);

	snprintf(dst, len, "%s", t != NULL ? t : "");
}

enum kb_err
store_step_done(struct db_conn *c, struct db_stmt *st, const char *what)
{
	enum kb_err e = KB_OK;

	/* The failure is read before the reset. */
	if (db_step(st) == DB_FAIL)
		e = db_failed_unique(c)
		    ? kb_errf(KB_ERR_ALREADY_EXISTS, "%s: already exists", what)
		    : db_err(c, what);
	db_reset(st);
	return e;
}

enum kb_err
store_meta_get(struct store *s, const char *key, char *buf, size_t len)
{
	static const char sql[] = "SELECT value FROM meta WHERE key = ?";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;
	enum db_step r;

	if ((e = db_prepare(c, sql, &st)) != KB_OK)
		goto out;
	db_bind_text(st, 1, key);
	r = db_step(st);
	if (r == DB_ROW) {
		store_copy_text(buf, len, st, 0);
		e = KB_OK;
	} else if (r == DB_DONE) {
		e = kb_errf(KB_ERR_NOT_FOUND, "setting %s not found", key);
	} else {
		e = db_err(c, "reading a setting");
	}
	db_reset(st);
out:
	db_conn_put(s->db, c);
	return e;
}

/* Set a setting on `c` (inside the caller's transaction, if any). */
static enum kb_err
meta_put(struct db_conn *c, const char *key, const char *value)
{
	return store_run(c,
	    "INSERT INTO meta(key, value) VALUES (?, ?) "
	    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
	    "writing a setting", "tt", key, value);
}

enum kb_err
store_meta_set(struct store *s, const char *key, const char *value)
{
	struct db_conn *c = db_conn_get(s->db);
	enum kb_err e = meta_put(c, key, value);

	db_conn_put(s->db, c);
	return e;
}

enum kb_err
store_clock_get(struct store *s, struct store_clock *out)
{
	static const char sql[] =
	    "SELECT mark_us, kept, jump_from_us, "
	    "jump_to_us, confirm_time_us, confirm_by FROM clock WHERE id = 1";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;
	enum db_step r;

	memset(out, 0, sizeof(*out));
	if ((e = db_prepare(c, sql, &st)) != KB_OK)
		goto out;
	r = db_step(st);
	if (r == DB_ROW) {
		out->mark_us = db_column_int64(st, 0);
		out->kept = db_column_int64(st, 1) != 0;
		out->jump_from_us = db_column_int64(st, 2);
		out->jump_to_us = db_column_int64(st, 3);
		out->confirm_time_us = db_column_int64(st, 4);
		store_copy_text(
		    out->confirm_by, sizeof(out->confirm_by), st, 5);
		e = KB_OK;
	} else if (r == DB_DONE) {
		e = kb_errf(KB_ERR_CORRUPT,
		    "database %s has no clock row (schema "
		    "4 makes it): restore the database from a backup",
		    db_target(s->db));
	} else {
		e = db_err(c, "reading the clock's mark");
	}
	db_reset(st);
out:
	db_conn_put(s->db, c);
	return e;
}

enum kb_err
store_clock_put(struct store *s, const struct store_clock *k)
{
	/* The mark never goes back: the greater of the two. */
	static const char sql[] =
	    "UPDATE clock SET mark_us = CASE WHEN mark_us >= ?1 THEN mark_us "
	    "ELSE ?1 END, kept = 1, jump_from_us = ?2, jump_to_us = ?3, "
	    "confirm_time_us = ?4, confirm_by = ?5 WHERE id = 1";
	struct db_conn *c = db_conn_get(s->db);
	enum kb_err e;

	e = store_run(c, sql, "storing the clock's mark", "iiiit", k->mark_us,
	    k->jump_from_us, k->jump_to_us, k->confirm_time_us, k->confirm_by);
	if (e == KB_OK && db_changes(c) != 1)
		e = kb_errf(KB_ERR_CORRUPT,
		    "database %s has no clock row (schema "
		    "4 makes it): restore the database from a backup",
		    db_target(s->db));
	db_conn_put(s->db, c);
	return e;
}

/* The first bind: label and serial in one transaction. (Brokers on one
 * database start one at a time: startup_open holds the startup lease.) */
static enum kb_err
bind_txn(struct db_conn *c, void *arg)
{
	const char **pair = arg;
	enum kb_err e;

	if ((e = meta_put(c, "token_label", pair[0])) != KB_OK)
		return e;
	return meta_put(c, "token_serial", pair[1]);
}

enum kb_err
store_token_bind(struct store *s, const char *label, const char *serial)
{
	char have_label[64], have_serial[64];
	const char *pair[2] = {label, serial};
	enum kb_err e;

	e = store_meta_get(s, "token_label", have_label, sizeof(have_label));
	if (e == KB_ERR_NOT_FOUND) {
		kb_err_clear();
		/* Both or neither: a label without its serial would refuse
		 * every later start. */
		return store_txn(s, bind_txn, pair, "binding the database");
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
		    db_target(s->db), have_label, have_serial, label, serial);
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
	"k.purpose = 'tenant' AND k.state = 'active' ORDER BY k.id LIMIT 1), " \
	"''), "                                                                \
	"coalesce((SELECT k.id FROM keys k WHERE k.tenant_id = t.id AND "      \
	"((k.purpose = 'tenant' AND k.state = 'installing') OR "               \
	"k.state = 'retiring') ORDER BY k.id LIMIT 1), ''), "                  \
	"coalesce((SELECT max(e.lock_time_us) FROM environments e WHERE "      \
	"e.tenant_id = t.id AND e.state = 'locked'), 0)"

static void
tenant_row(struct db_stmt *st, void *elem)
{
	struct store_tenant *t = elem;
	char state[16];

	store_copy_text(t->id, sizeof(t->id), st, 0);
	store_copy_text(t->display_name, sizeof(t->display_name), st, 1);
	t->create_time_us = db_column_int64(st, 2);
	t->env_count = (uint32_t)db_column_int64(st, 3);
	store_copy_text(state, sizeof(state), st, 4);
	t->locked = strcmp(state, "locked") == 0;
	t->last_activation_us = db_column_int64(st, 5);
	t->last_key_change_us = db_column_int64(st, 6);
	t->lock_time_us = db_column_int64(st, 7);
	store_copy_text(t->lock_key_id, sizeof(t->lock_key_id), st, 8);
	t->locked_env_count = (uint32_t)db_column_int64(st, 9);
	store_copy_text(t->active_key_id, sizeof(t->active_key_id), st, 10);
	store_copy_text(
	    t->installing_key_id, sizeof(t->installing_key_id), st, 11);
	t->last_env_lock_us = db_column_int64(st, 12);
}

enum kb_err
store_tenant_create(struct store *s, const struct store_tenant *t)
{
	static const char sql[] = "INSERT INTO tenants(id, display_name, "
	                          "create_time_us) VALUES (?, ?, ?)";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;

	if ((e = db_prepare(c, sql, &st)) == KB_OK) {
		db_bind_text(st, 1, t->id);
		db_bind_text(st, 2, t->display_name);
		db_bind_int64(st, 3, t->create_time_us);
		e = store_step_done(c, st, "creating the tenant");
		if (e == KB_ERR_ALREADY_EXISTS)
			e = kb_errf(e, "tenant \"%s\" already exists", t->id);
	}
	db_conn_put(s->db, c);
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
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;

	*out = NULL;
	*n = 0;
	*more = 0;
	if ((e = db_prepare(c, sql, &st)) != KB_OK)
		goto out;
	db_bind_text(st, 1, after != NULL ? after : "");
	db_bind_int64(st, 2, (int64_t)limit + 1);
	e = store_collect(c, st, sizeof(**out), tenant_row, (void **)out, n,
	    "listing tenants");
	/* One row past the page says there is another page. */
	if (e == KB_OK && *n > limit) {
		*n = limit;
		*more = 1;
	}
out:
	db_conn_put(s->db, c);
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
store_env_row(struct db_stmt *st, void *elem)
{
	struct store_env *env = elem;
	char buf[16];

	store_copy_text(env->tenant_id, sizeof(env->tenant_id), st, 0);
	store_copy_text(env->name, sizeof(env->name), st, 1);
	store_copy_text(buf, sizeof(buf), st, 2);
	env->mode = mode_parse(buf);
	store_copy_text(buf, sizeof(buf), st, 3);
	env->state = state_parse(buf);
	env->dek_version = (uint32_t)db_column_int64(st, 4);
	store_copy_text(env->key_id, sizeof(env->key_id), st, 5);
	store_copy_text(env->wrap_alg, sizeof(env->wrap_alg), st, 6);
	env->create_time_us = db_column_int64(st, 7);
	env->update_time_us = db_column_int64(st, 8);
	env->lock_time_us = db_column_int64(st, 9);
	store_copy_text(env->uid, sizeof(env->uid), st, 10);
	snprintf(env->seal_key_id, sizeof(env->seal_key_id), "%s", env->key_id);
	/* A customer-managed environment's key is its tenant key, the
	 * parent of the KEK that seals its DEK. */
	if (db_column_bytes(st, 11) > 0)
		store_copy_text(env->key_id, sizeof(env->key_id), st, 11);
	env->delete_request_us = db_column_int64(st, 12);
	env->delete_final_us = db_column_int64(st, 13);
	/* Pending deletion overlays the stored state, which stays what an
	 * undelete gives back (a lock meanwhile changes it). */
	env->state_before_deletion = env->state;
	if (env->delete_final_us != 0 && env->state != STORE_ENV_DELETED)
		env->state = STORE_ENV_PENDING_DELETION;
}

enum kb_err
store_tenant_exists(struct db_conn *c, const char *tenant)
{
	static const char sql[] = "SELECT 1 FROM tenants WHERE id = ?";
	struct db_stmt *st;
	enum kb_err e;
	enum db_step r;

	if ((e = db_prepare(c, sql, &st)) != KB_OK)
		return e;
	db_bind_text(st, 1, tenant);
	r = db_step(st);
	if (r == DB_ROW)
		e = KB_OK;
	else if (r == DB_DONE)
		e = kb_errf(
		    KB_ERR_NOT_FOUND, "tenant \"%s\" does not exist", tenant);
	else
		e = db_err(c, "reading the tenant");
	db_reset(st);
	return e;
}

struct env_create {
	const struct store_env *env;
	const struct store_dek *dek;
};

static enum kb_err
env_create_txn(struct db_conn *c, void *arg)
{
	/* The new row's id comes back from the insert (RETURNING): the DEK
	 * row names it. */
	static const char ins_env[] =
	    "INSERT INTO environments(tenant_id, "
	    "name, mode, state, dek_version, create_time_us, update_time_us, "
	    "uid) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id";
	static const char ins_dek[] =
	    "INSERT INTO deks(env_id, version, "
	    "key_id, wrap_alg, wrapped, create_time_us) VALUES (?, ?, ?, ?, ?, "
	    "?)";
	struct env_create *a = arg;
	const struct store_env *env = a->env;
	const struct store_dek *dek = a->dek;
	struct db_stmt *st;
	int64_t env_id = 0;
	enum kb_err e;
	enum db_step r;

	if ((e = store_tenant_exists(c, env->tenant_id)) != KB_OK)
		return e;
	if ((e = db_prepare(c, ins_env, &st)) != KB_OK)
		return e;
	db_bind_text(st, 1, env->tenant_id);
	db_bind_text(st, 2, env->name);
	db_bind_text(st, 3, store_env_mode_name(env->mode));
	db_bind_text(st, 4, store_env_state_name(env->state));
	db_bind_int64(st, 5, dek->version);
	db_bind_int64(st, 6, env->create_time_us);
	db_bind_int64(st, 7, env->update_time_us);
	db_bind_text(st, 8, env->uid);
	if ((r = db_step(st)) == DB_ROW) {
		env_id = db_column_int64(st, 0);
		r = db_step(st);
	}
	if (r == DB_FAIL) {
		e = db_failed_unique(c) ? kb_errf(KB_ERR_ALREADY_EXISTS,
		        "environment \"%s\" already exists in tenant \"%s\"",
		        env->name, env->tenant_id)
		                        : db_err(c, "creating the environment");
		db_reset(st);
		return e;
	}
	db_reset(st);
	if ((e = db_prepare(c, ins_dek, &st)) != KB_OK)
		return e;
	db_bind_int64(st, 1, env_id);
	db_bind_int64(st, 2, dek->version);
	db_bind_text(st, 3, dek->key_id);
	db_bind_text(st, 4, dek->wrap_alg);
	db_bind_blob(st, 5, dek->wrapped, dek->wrapped_len);
	db_bind_int64(st, 6, env->create_time_us);
	return store_step_done(c, st, "storing the wrapped data key");
}

enum kb_err
store_env_create(
    struct store *s, struct store_env *env, const struct store_dek *dek)
{
	struct env_create a = {env, dek};
	enum kb_err e;

	if ((e = store_txn(s, env_create_txn, &a, "creating the environment"))
	    != KB_OK)
		return e;
	env->dek_version = dek->version;
	snprintf(env->key_id, sizeof(env->key_id), "%s", dek->key_id);
	snprintf(env->seal_key_id, sizeof(env->seal_key_id), "%s", dek->key_id);
	snprintf(env->wrap_alg, sizeof(env->wrap_alg), "%s", dek->wrap_alg);
	return KB_OK;
}

enum kb_err
store_env_get(struct store *s, const char *tenant, const char *name,
    struct store_env *out)
{
	static const char sql[] = "SELECT " ENV_COLS " " ENV_JOIN
	                          " WHERE e.tenant_id = ? AND e.name = ?";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;
	enum db_step r;

	if ((e = db_prepare(c, sql, &st)) != KB_OK)
		goto out;
	db_bind_text(st, 1, tenant);
	db_bind_text(st, 2, name);
	r = db_step(st);
	if (r == DB_ROW) {
		store_env_row(st, out);
		e = KB_OK;
	} else if (r == DB_DONE) {
		db_reset(st);
		if ((e = store_tenant_exists(c, tenant)) == KB_OK)
			e = kb_errf(KB_ERR_NOT_FOUND,
			    "environment \"%s\" does "
			    "not exist in tenant \"%s\"",
			    name, tenant);
	} else {
		e = db_err(c, "reading the environment");
	}
	db_reset(st);
out:
	db_conn_put(s->db, c);
	return e;
}

enum kb_err
store_env_list(struct store *s, const char *tenant, const char *after,
    unsigned limit, struct store_env **out, size_t *n, int *more)
{
	static const char sql[] =
	    "SELECT " ENV_COLS " " ENV_JOIN
	    " WHERE e.tenant_id = ? AND e.name > ? ORDER BY e.name LIMIT ?";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;

	*out = NULL;
	*n = 0;
	*more = 0;
	if ((e = store_tenant_exists(c, tenant)) != KB_OK
	    || (e = db_prepare(c, sql, &st)) != KB_OK)
		goto out;
	db_bind_text(st, 1, tenant);
	db_bind_text(st, 2, after != NULL ? after : "");
	db_bind_int64(st, 3, (int64_t)limit + 1);
	e = store_collect(c, st, sizeof(**out), store_env_row, (void **)out, n,
	    "listing environments");
	if (e == KB_OK && *n > limit) {
		*n = limit;
		*more = 1;
	}
out:
	db_conn_put(s->db, c);
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
	    "v.env_id = e.id AND v.version = (CASE WHEN CAST(?3 AS BIGINT) = 0 "
	    "THEN e.dek_version ELSE CAST(?3 AS BIGINT) END) WHERE "
	    "e.tenant_id = ?1 AND e.name = ?2";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;
	const void *blob;
	size_t len;
	enum db_step r;

	if ((e = db_prepare(c, sql, &st)) != KB_OK)
		goto out;
	db_bind_text(st, 1, tenant);
	db_bind_text(st, 2, name);
	db_bind_int64(st, 3, version);
	r = db_step(st);
	if (r == DB_ROW) {
		store_env_row(st, env);
		env->min_dek_version = (uint32_t)db_column_int64(st, 19);
		blob = db_column_blob(st, 17);
		len = db_column_bytes(st, 17);
		if (db_column_is_null(st, 14)) {
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
		} else if (blob == NULL || len == 0
		    || len > sizeof(dek->wrapped)) {
			e = kb_errf(KB_ERR_CORRUPT,
			    "environment \"%s/%s\" has no "
			    "valid wrapped data key",
			    tenant, name);
		} else {
			dek->version = (uint32_t)db_column_int64(st, 14);
			store_copy_text(
			    dek->key_id, sizeof(dek->key_id), st, 15);
			store_copy_text(
			    dek->wrap_alg, sizeof(dek->wrap_alg), st, 16);
			memcpy(dek->wrapped, blob, len);
			dek->wrapped_len = len;
			store_copy_text(
			    dek->damaged, sizeof(dek->damaged), st, 18);
			e = KB_OK;
		}
	} else if (r == DB_DONE) {
		db_reset(st);
		if ((e = store_tenant_exists(c, tenant)) == KB_OK)
			e = kb_errf(KB_ERR_NOT_FOUND,
			    "environment \"%s\" does "
			    "not exist in tenant \"%s\"",
			    name, tenant);
	} else {
		e = db_err(c, "reading the data key");
	}
	db_reset(st);
out:
	db_conn_put(s->db, c);
	return e;
}

/* ---- keys ---- */

void
store_key_row(struct db_stmt *st, void *elem)
{
	struct store_key *k = elem;
	size_t len;

	store_copy_text(k->id, sizeof(k->id), st, 0);
	store_copy_text(k->tenant_id, sizeof(k->tenant_id), st, 1);
	store_copy_text(k->purpose, sizeof(k->purpose), st, 2);
	store_copy_text(k->origin, sizeof(k->origin), st, 3);
	store_copy_text(k->state, sizeof(k->state), st, 4);
	store_copy_text(k->fingerprint, sizeof(k->fingerprint), st, 5);
	store_copy_text(k->wrap_alg, sizeof(k->wrap_alg), st, 6);
	k->create_time_us = db_column_int64(st, 7);
	k->update_time_us = db_column_int64(st, 8);
	k->bits = (unsigned)db_column_int64(st, 9);
	k->activate_time_us = db_column_int64(st, 10);
	k->lock_time_us = db_column_int64(st, 11);
	k->delete_time_us = db_column_int64(st, 12);
	store_copy_text(k->parent_id, sizeof(k->parent_id), st, 13);
	len = db_column_bytes(st, 14);
	k->wrapped_len = 0; /* every field from the row, none left as it was */
	if (len > 0 && len <= sizeof(k->wrapped)) {
		memcpy(k->wrapped, db_column_blob(st, 14), len);
		k->wrapped_len = len;
	}
	k->delete_request_us = db_column_int64(st, 15);
	k->delete_final_us = db_column_int64(st, 16);
	k->retire_time_us = db_column_int64(st, 17);
}

enum kb_err
store_key_create(struct store *s, const struct store_key *k)
{
	struct db_conn *c = db_conn_get(s->db);
	enum kb_err e;

	e = store_key_insert_conn(c, k);
	db_conn_put(s->db, c);
	return e;
}

enum kb_err
store_key_insert_conn(struct db_conn *c, const struct store_key *k)
{
	static const char sql[] =
	    "INSERT INTO keys(id, tenant_id, purpose, "
	    "origin, state, fingerprint, wrap_alg, create_time_us, "
	    "update_time_us, bits, parent_id, wrapped) VALUES (?, "
	    "nullif(CAST(? AS TEXT), ''), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
	struct db_stmt *st;
	enum kb_err e;

	if ((e = db_prepare(c, sql, &st)) == KB_OK) {
		db_bind_text(st, 1, k->id);
		db_bind_text(st, 2, k->tenant_id);
		db_bind_text(st, 3, k->purpose);
		db_bind_text(st, 4, k->origin);
		db_bind_text(st, 5, k->state);
		db_bind_text(st, 6, k->fingerprint);
		db_bind_text(st, 7, k->wrap_alg);
		db_bind_int64(st, 8, k->create_time_us);
		db_bind_int64(st, 9, k->update_time_us);
		db_bind_int64(st, 10, k->bits ? k->bits : 2048);
		db_bind_text(st, 11, k->parent_id);
		if (k->wrapped_len > 0)
			db_bind_blob(st, 12, k->wrapped, k->wrapped_len);
		else
			db_bind_null(st, 12);
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
	    "ORDER BY create_time_us DESC, id DESC LIMIT 1";

	return store_get_one(
	    s, sql, purpose, NULL, store_key_row, out, "broker key for");
}

enum kb_err
store_txn(struct store *s, enum kb_err (*fn)(struct db_conn *c, void *arg),
    void *arg, const char *what)
{
	return db_txn(s->db, fn, arg, what);
}

enum kb_err
store_collect(struct db_conn *c, struct db_stmt *st, size_t size,
    store_row_fn fn, void **out, size_t *n, const char *what)
{
	char *v = NULL, *nv;
	size_t cnt = 0, cap = 0;
	enum db_step r;

	*out = NULL;
	*n = 0;
	while ((r = db_step(st)) == DB_ROW) {
		if (cnt == cap) {
			cap = cap ? cap * 2 : 8;
			if ((nv = realloc(v, cap * size)) == NULL) {
				db_reset(st);
				free(v);
				return kb_errf(KB_ERR_NOMEM, "out of memory");
			}
			v = nv;
		}
		memset(v + cnt * size, 0, size);
		fn(st, v + cnt * size);
		cnt++;
	}
	if (r != DB_DONE) {
		enum kb_err e = db_err(c, what);

		db_reset(st);
		free(v);
		return e;
	}
	db_reset(st);
	*out = v;
	*n = cnt;
	return KB_OK;
}

enum kb_err
store_get_one(struct store *s, const char *sql, const char *a1, const char *a2,
    store_row_fn fn, void *out, const char *noun)
{
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;
	enum db_step r;

	if ((e = db_prepare(c, sql, &st)) != KB_OK)
		goto out;
	db_bind_text(st, 1, a1);
	if (a2 != NULL)
		db_bind_text(st, 2, a2);
	r = db_step(st);
	if (r == DB_ROW) {
		fn(st, out);
		e = KB_OK;
	} else if (r == DB_DONE) {
		e = kb_errf(
		    KB_ERR_NOT_FOUND, "%s \"%s\" does not exist", noun, a1);
	} else {
		e = db_err(c, "reading the database");
	}
	db_reset(st);
out:
	db_conn_put(s->db, c);
	return e;
}
