/* SPDX-License-Identifier: Apache-2.0 */
/* test-store.c: the store against real SQLite database files, and (the
 * /store/pg/ cases, when KBT_PG_URL names a PostgreSQL database) the
 * engine-independent cases again against PostgreSQL. */
#include "harness.h"

#include <openssl/evp.h>
#include <sqlite3.h>

#include "kbt_vfs.h"
#include "store.h"
#include "store_int.h"

static char dbpath[512];
/* Set while a /store/pg/ case runs: the cases open this instead. */
static const char *pg_url;

/* What the running case opens: the SQLite file or the PostgreSQL URL. */
static const char *
target(void)
{
	return pg_url != NULL ? pg_url : dbpath;
}

/* PostgreSQL: an empty database for each case (the store's tables and
 * kb_schema all live in the schema public). */
static void
pg_wipe(void)
{
	struct db_config cfg;
	struct db *db = NULL;
	struct db_conn *c;

	memset(&cfg, 0, sizeof(cfg));
	cfg.target = pg_url;
	cfg.conns = 1;
	if (db_open(&cfg, &db) != KB_OK) {
		fprintf(stderr, "db_open %s: %s\n", pg_url,
		    kb_err_msg(KB_ERR_STORE));
		exit(2);
	}
	c = db_conn_get(db);
	if (db_exec(c, "DROP SCHEMA public CASCADE; CREATE SCHEMA public;",
	        "emptying the test database")
	    != KB_OK) {
		fprintf(stderr, "%s\n", kb_err_msg(KB_ERR_STORE));
		exit(2);
	}
	db_conn_put(db, c);
	db_close(db);
}

static struct store *
fresh(void)
{
	struct store *s = NULL;

	if (pg_url != NULL)
		pg_wipe();
	else
		snprintf(dbpath, sizeof(dbpath), "%s/kb.db", kbt_tmpdir());
	if (store_open(target(), 3, &s) != KB_OK) {
		fprintf(stderr, "store_open: %s\n", kb_err_msg(KB_ERR_STORE));
		exit(2);
	}
	return s;
}

static void
done(struct store *s)
{
	char dir[512], *slash;

	store_close(s);
	if (pg_url != NULL)
		return;
	snprintf(dir, sizeof(dir), "%s", dbpath);
	if ((slash = strrchr(dir, '/')) != NULL)
		*slash = '\0';
	kbt_rmtree(dir);
}

/* Run `sql` (no rows) on one of the store's connections. */
static enum kb_err
store_sql(struct store *s, const char *sql)
{
	struct db_conn *c = db_conn_get(s->db);
	enum kb_err e = db_exec(c, sql, "test rows");

	db_conn_put(s->db, c);
	return e;
}

static void
add_platform_key(struct store *s)
{
	struct store_key k;

	memset(&k, 0, sizeof(k));
	snprintf(k.id, sizeof(k.id), "kb-platform-1");
	snprintf(k.purpose, sizeof(k.purpose), "platform");
	snprintf(k.origin, sizeof(k.origin), "generated");
	snprintf(k.state, sizeof(k.state), "active");
	snprintf(k.fingerprint, sizeof(k.fingerprint), "%064d", 0);
	snprintf(k.wrap_alg, sizeof(k.wrap_alg), "RSA-OAEP-SHA1");
	k.create_time_us = k.update_time_us = 1000;
	if (store_key_create(s, &k) != KB_OK)
		exit(2);
}

static void
make_dek(struct store_dek *d, uint8_t fill)
{
	memset(d, 0, sizeof(*d));
	d->version = 1;
	snprintf(d->key_id, sizeof(d->key_id), "kb-platform-1");
	snprintf(d->wrap_alg, sizeof(d->wrap_alg), "RSA-OAEP-SHA1");
	memset(d->wrapped, fill, 256);
	d->wrapped_len = 256;
}

static void
test_migrations_and_pragmas(void)
{
	struct store *s = fresh();
	sqlite3 *db;
	sqlite3_stmt *st;

	KBT_ASSERT_INT(store_schema_version(s), >=, 1);
	store_close(s);
	/* Reopen: migrations are not rerun; WAL persisted. */
	KBT_ASSERT_OK(store_open(dbpath, 2, &s));
	KBT_ASSERT(sqlite3_open(dbpath, &db) == SQLITE_OK);
	KBT_ASSERT(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL)
	    == SQLITE_OK);
	KBT_ASSERT(sqlite3_step(st) == SQLITE_ROW);
	KBT_ASSERT_STR((const char *)sqlite3_column_text(st, 0), "wal");
	sqlite3_finalize(st);
	KBT_ASSERT(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL)
	    == SQLITE_OK);
	KBT_ASSERT(sqlite3_step(st) == SQLITE_ROW);
	KBT_ASSERT_INT(sqlite3_column_int(st, 0), ==, store_schema_version(s));
	sqlite3_finalize(st);
	/* A database from the future is refused. */
	KBT_ASSERT(sqlite3_exec(db, "PRAGMA user_version=999", NULL, NULL, NULL)
	    == SQLITE_OK);
	sqlite3_close(db);
	store_close(s);
	KBT_ASSERT_ERR(store_open(dbpath, 2, &s), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_CONFIG), "newer than this keybroker");
	KBT_ASSERT_OK(
	    sqlite3_open(dbpath, &db) == SQLITE_OK ? KB_OK : KB_ERR_STORE);
	{
		char sql[64];
		snprintf(sql, sizeof(sql), "PRAGMA user_version=%d",
		    store_schema_version(NULL));
		sqlite3_exec(db, sql, NULL, NULL, NULL);
	}
	sqlite3_close(db);
	KBT_ASSERT_OK(store_open(dbpath, 2, &s));
	done(s);
}

static void
test_token_bind(void)
{
	struct store *s = fresh();

	KBT_ASSERT_OK(store_token_bind(s, "keybroker", "abc123"));
	KBT_ASSERT_OK(store_token_bind(s, "keybroker", "abc123"));
	KBT_ASSERT_ERR(
	    store_token_bind(s, "other", "ffff"), KB_ERR_TOKEN_MISMATCH);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_TOKEN_MISMATCH),
	    "belongs to token 'keybroker' (serial abc123)");
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_TOKEN_MISMATCH),
	    "configured token is 'other' (serial ffff)");
	KBT_ASSERT_ERR(
	    store_token_bind(s, "keybroker", "ffff"), KB_ERR_TOKEN_MISMATCH);
	done(s);
}

static void
test_tenants(void)
{
	struct store *s = fresh();
	struct store_tenant t, got, *v = NULL;
	size_t n = 0;
	int more = 0, i;

	memset(&t, 0, sizeof(t));
	snprintf(t.id, sizeof(t.id), "acme");
	snprintf(t.display_name, sizeof(t.display_name), "Acme Corp");
	t.create_time_us = 42;
	KBT_ASSERT_OK(store_tenant_create(s, &t));
	KBT_ASSERT_ERR(store_tenant_create(s, &t), KB_ERR_ALREADY_EXISTS);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_ALREADY_EXISTS),
	    "tenant \"acme\" already exists");
	KBT_ASSERT_OK(store_tenant_get(s, "acme", &got));
	KBT_ASSERT_STR(got.display_name, "Acme Corp");
	KBT_ASSERT_INT(got.create_time_us, ==, 42);
	KBT_ASSERT_INT(got.env_count, ==, 0);
	KBT_ASSERT_ERR(store_tenant_get(s, "nope", &got), KB_ERR_NOT_FOUND);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_NOT_FOUND), "tenant \"nope\" does not exist");

	for (i = 0; i < 5; i++) {
		snprintf(t.id, sizeof(t.id), "t%d", i);
		KBT_ASSERT_OK(store_tenant_create(s, &t));
	}
	KBT_ASSERT_OK(store_tenant_list(s, "", 4, &v, &n, &more));
	KBT_ASSERT_INT(n, ==, 4);
	KBT_ASSERT(more);
	KBT_ASSERT_STR(v[0].id, "acme");
	KBT_ASSERT_STR(v[3].id, "t2");
	free(v);
	KBT_ASSERT_OK(store_tenant_list(s, "t2", 4, &v, &n, &more));
	KBT_ASSERT_INT(n, ==, 2);
	KBT_ASSERT(!more);
	KBT_ASSERT_STR(v[1].id, "t4");
	free(v);
	done(s);
}

static void
test_environments(void)
{
	struct store *s = fresh();
	struct store_tenant t;
	struct store_env env, got, *v = NULL;
	struct store_dek dek, gotdek;
	size_t n = 0;
	int more = 0;

	add_platform_key(s);
	memset(&t, 0, sizeof(t));
	snprintf(t.id, sizeof(t.id), "acme");
	KBT_ASSERT_OK(store_tenant_create(s, &t));

	memset(&env, 0, sizeof(env));
	snprintf(env.tenant_id, sizeof(env.tenant_id), "acme");
	snprintf(env.name, sizeof(env.name), "prod");
	env.mode = STORE_MODE_PLATFORM;
	env.state = STORE_ENV_ENABLED;
	env.create_time_us = env.update_time_us = 7;
	make_dek(&dek, 0xab);
	KBT_ASSERT_OK(store_env_create(s, &env, &dek));
	KBT_ASSERT_ERR(store_env_create(s, &env, &dek), KB_ERR_ALREADY_EXISTS);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_ALREADY_EXISTS),
	    "environment \"prod\" already exists in tenant \"acme\"");

	snprintf(env.tenant_id, sizeof(env.tenant_id), "ghost");
	KBT_ASSERT_ERR(store_env_create(s, &env, &dek), KB_ERR_NOT_FOUND);

	/* A DEK wrapped by an unknown key violates the foreign key: the
	 * environment row must not be left behind. */
	snprintf(env.tenant_id, sizeof(env.tenant_id), "acme");
	snprintf(env.name, sizeof(env.name), "dev");
	snprintf(env.uid, sizeof(env.uid), "%032d", 2);
	snprintf(dek.key_id, sizeof(dek.key_id), "no-such-key");
	KBT_ASSERT(store_env_create(s, &env, &dek) != KB_OK);
	KBT_ASSERT_ERR(store_env_get(s, "acme", "dev", &got), KB_ERR_NOT_FOUND);

	KBT_ASSERT_OK(store_env_get(s, "acme", "prod", &got));
	KBT_ASSERT_INT(got.mode, ==, STORE_MODE_PLATFORM);
	KBT_ASSERT_INT(got.state, ==, STORE_ENV_ENABLED);
	KBT_ASSERT_INT(got.dek_version, ==, 1);
	KBT_ASSERT_STR(got.key_id, "kb-platform-1");
	KBT_ASSERT_STR(got.wrap_alg, "RSA-OAEP-SHA1");
	KBT_ASSERT_ERR(
	    store_env_get(s, "acme", "nope", &got), KB_ERR_NOT_FOUND);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_NOT_FOUND),
	    "environment \"nope\" does not exist in tenant \"acme\"");
	KBT_ASSERT_ERR(
	    store_env_get(s, "ghost", "prod", &got), KB_ERR_NOT_FOUND);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_NOT_FOUND), "tenant \"ghost\" does not exist");

	KBT_ASSERT_OK(store_env_with_dek(s, "acme", "prod", 0, &got, &gotdek));
	KBT_ASSERT_INT(gotdek.wrapped_len, ==, 256);
	KBT_ASSERT_INT(gotdek.wrapped[255], ==, 0xab);
	KBT_ASSERT_STR(gotdek.key_id, "kb-platform-1");

	KBT_ASSERT_OK(store_env_list(s, "acme", "", 10, &v, &n, &more));
	KBT_ASSERT_INT(n, ==, 1);
	KBT_ASSERT_STR(v[0].name, "prod");
	free(v);
	KBT_ASSERT_ERR(store_env_list(s, "ghost", "", 10, &v, &n, &more),
	    KB_ERR_NOT_FOUND);

	KBT_ASSERT_OK(store_tenant_get(s, "acme", &t));
	KBT_ASSERT_INT(t.env_count, ==, 1);

	/* Survives a reopen. */
	store_close(s);
	KBT_ASSERT_OK(store_open(target(), 2, &s));
	KBT_ASSERT_OK(store_env_with_dek(s, "acme", "prod", 0, &got, &gotdek));
	KBT_ASSERT_INT(gotdek.wrapped[0], ==, 0xab);
	done(s);
}

static void
add_key(struct store *s, const char *id, const char *purpose, const char *state,
    const char *parent)
{
	struct store_key k;

	memset(&k, 0, sizeof(k));
	snprintf(k.id, sizeof(k.id), "%s", id);
	snprintf(k.tenant_id, sizeof(k.tenant_id), "acme");
	snprintf(k.purpose, sizeof(k.purpose), "%s", purpose);
	snprintf(k.origin, sizeof(k.origin), "generated");
	snprintf(k.state, sizeof(k.state), "%s", state);
	snprintf(k.fingerprint, sizeof(k.fingerprint), "%064d", 1);
	snprintf(k.parent_id, sizeof(k.parent_id), "%s", parent);
	k.create_time_us = k.update_time_us = 10;
	KBT_ASSERT_OK(store_key_create(s, &k));
}

/* Deletion with a way back (schema 6): pending, undelete, due, final, and
 * the count of what a key protects. */
static void
test_delete(void)
{
	struct store *s = fresh();
	struct store_tenant t;
	struct store_env env, got, *v = NULL;
	struct store_dek dek, *dv = NULL;
	struct store_key k, *kv = NULL;
	struct store_key_use u;
	struct store_backup bk;
	size_t n = 0;

	add_platform_key(s);
	memset(&t, 0, sizeof(t));
	snprintf(t.id, sizeof(t.id), "acme");
	KBT_ASSERT_OK(store_tenant_create(s, &t));
	memset(&env, 0, sizeof(env));
	snprintf(env.tenant_id, sizeof(env.tenant_id), "acme");
	env.mode = STORE_MODE_PLATFORM;
	env.state = STORE_ENV_ENABLED;
	make_dek(&dek, 0x11);
	snprintf(env.name, sizeof(env.name), "prod");
	snprintf(env.uid, sizeof(env.uid), "%032d", 1);
	KBT_ASSERT_OK(store_env_create(s, &env, &dek));
	snprintf(env.name, sizeof(env.name), "dev");
	snprintf(env.uid, sizeof(env.uid), "%032d", 2);
	KBT_ASSERT_OK(store_env_create(s, &env, &dek));
	KBT_ASSERT_OK(store_backup_create(s, "acme", "prod", "b-1", 50, &bk));

	KBT_ASSERT_OK(store_key_protects(s, "kb-platform-1", &u));
	KBT_ASSERT_INT(u.deks, ==, 2);
	KBT_ASSERT_INT(u.backups, ==, 1);

	/* Pending: the stored state is kept beside the overlay. */
	KBT_ASSERT_OK(
	    store_env_delete_begin(s, "acme", "prod", 100, 200, &got));
	KBT_ASSERT_INT(got.state, ==, STORE_ENV_PENDING_DELETION);
	KBT_ASSERT_INT(got.state_before_deletion, ==, STORE_ENV_ENABLED);
	KBT_ASSERT_INT(got.delete_request_us, ==, 100);
	KBT_ASSERT_INT(got.delete_final_us, ==, 200);
	KBT_ASSERT_ERR(
	    store_env_delete_begin(s, "acme", "prod", 101, 201, &got),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_FAILED_PRECONDITION), "already pending deletion");
	KBT_ASSERT_ERR(
	    store_env_delete_begin(s, "acme", "nope", 100, 200, &got),
	    KB_ERR_NOT_FOUND);
	KBT_ASSERT_OK(store_envs_delete_due(s, 199, &v, &n, 10));
	KBT_ASSERT_INT(n, ==, 0);
	free(v);
	KBT_ASSERT_OK(store_envs_delete_due(s, 200, &v, &n, 10));
	KBT_ASSERT_INT(n, ==, 1);
	KBT_ASSERT_STR(v[0].name, "prod");
	free(v);
	KBT_ASSERT_ERR(store_env_delete_cancel(s, "acme", "prod", 200, 0, &got),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_FAILED_PRECONDITION), "became final");
	KBT_ASSERT_ERR(store_env_delete_finish(s, "acme", "prod", 199),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_OK(store_env_delete_finish(s, "acme", "prod", 200));
	KBT_ASSERT_OK(store_env_get(s, "acme", "prod", &got));
	KBT_ASSERT_INT(got.state, ==, STORE_ENV_DELETED);
	KBT_ASSERT_INT(got.delete_final_us, ==, 200);
	KBT_ASSERT_OK(store_env_dek_list(s, "acme", "prod", &dv, &n));
	KBT_ASSERT_INT(n, ==, 0);
	free(dv);
	KBT_ASSERT_ERR(store_env_delete_cancel(s, "acme", "prod", 150, 0, &got),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_OK(store_key_protects(s, "kb-platform-1", &u));
	KBT_ASSERT_INT(u.deks, ==, 1);
	KBT_ASSERT_INT(u.backups, ==, 0);

	/* Undelete within the window. */
	KBT_ASSERT_OK(store_env_delete_begin(s, "acme", "dev", 100, 200, &got));
	KBT_ASSERT_OK(store_env_delete_cancel(s, "acme", "dev", 199, 0, &got));
	KBT_ASSERT_INT(got.state, ==, STORE_ENV_ENABLED);
	KBT_ASSERT_INT(got.delete_final_us, ==, 0);
	KBT_ASSERT_ERR(store_env_delete_cancel(s, "acme", "dev", 199, 0, &got),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_FAILED_PRECONDITION), "not pending deletion");
	/* Past the final time only while the sweeper waits (late_ok). */
	KBT_ASSERT_OK(store_env_delete_begin(s, "acme", "dev", 300, 400, &got));
	KBT_ASSERT_ERR(store_env_delete_cancel(s, "acme", "dev", 500, 0, &got),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_OK(store_env_delete_cancel(s, "acme", "dev", 500, 1, &got));
	KBT_ASSERT_INT(got.state, ==, STORE_ENV_ENABLED);

	/* Keys: available and protecting nothing, else refused with counts. */
	add_key(s, "k-1", "tenant", "available", "");
	add_key(s, "k-2", "tenant", "active", "");
	add_key(s, "kek-1", "kek", "active", "k-1");
	KBT_ASSERT_ERR(store_key_delete_begin(s, "acme", "k-2", 100, 300, &k),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_FAILED_PRECONDITION), "is active");
	KBT_ASSERT_ERR(store_key_delete_begin(s, "acme", "k-1", 100, 300, &k),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_FAILED_PRECONDITION),
	    "0 data key version(s), 1 KEK(s) and 0 backup(s)");
	KBT_ASSERT_ERR(store_key_delete_begin(s, "acme", "kek-1", 100, 300, &k),
	    KB_ERR_NOT_FOUND);
	KBT_ASSERT_OK(store_key_set_state(s, "kek-1", "active", "deleted", 90));
	KBT_ASSERT_OK(store_key_delete_begin(s, "acme", "k-1", 100, 300, &k));
	KBT_ASSERT_STR(k.state, "pending_deletion");
	KBT_ASSERT_INT(k.delete_final_us, ==, 300);
	KBT_ASSERT_OK(store_key_delete_cancel(s, "acme", "k-1", 299, 0, &k));
	KBT_ASSERT_STR(k.state, "available");
	KBT_ASSERT_OK(store_key_delete_begin(s, "acme", "k-1", 100, 300, &k));
	KBT_ASSERT_OK(store_keys_delete_due(s, 299, &kv, &n, 10));
	KBT_ASSERT_INT(n, ==, 0);
	free(kv);
	KBT_ASSERT_OK(store_keys_delete_due(s, 300, &kv, &n, 10));
	KBT_ASSERT_INT(n, ==, 1);
	free(kv);
	KBT_ASSERT_ERR(
	    store_key_delete_finish(s, "k-1", 299), KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_OK(store_key_delete_finish(s, "k-1", 300));
	KBT_ASSERT_OK(store_key_get(s, "k-1", &k));
	KBT_ASSERT_STR(k.state, "deleted");
	KBT_ASSERT_INT(k.delete_time_us, ==, 300);
	KBT_ASSERT_ERR(store_key_delete_cancel(s, "acme", "k-1", 200, 0, &k),
	    KB_ERR_FAILED_PRECONDITION);
	done(s);
}

static void
test_keys_and_meta(void)
{
	struct store *s = fresh();
	struct store_key k;
	char buf[64];

	KBT_ASSERT_ERR(store_key_broker(s, "platform", &k), KB_ERR_NOT_FOUND);
	add_platform_key(s);
	KBT_ASSERT_OK(store_key_broker(s, "platform", &k));
	KBT_ASSERT_STR(k.id, "kb-platform-1");
	KBT_ASSERT_STR(k.tenant_id, "");
	KBT_ASSERT_OK(store_key_get(s, "kb-platform-1", &k));
	KBT_ASSERT_STR(k.wrap_alg, "RSA-OAEP-SHA1");
	KBT_ASSERT_ERR(store_key_create(s, &k), KB_ERR_ALREADY_EXISTS);
	KBT_ASSERT_ERR(
	    store_meta_get(s, "x", buf, sizeof(buf)), KB_ERR_NOT_FOUND);
	KBT_ASSERT_OK(store_meta_set(s, "x", "1"));
	KBT_ASSERT_OK(store_meta_set(s, "x", "2"));
	KBT_ASSERT_OK(store_meta_get(s, "x", buf, sizeof(buf)));
	KBT_ASSERT_STR(buf, "2");
	done(s);
}

/* Policy time's mark: seeded by migration 4 from the newest recorded
 * time, never decreasing. */
static void
test_clock(void)
{
	struct store *s = fresh();
	struct store_tenant t;
	struct store_clock k;
	sqlite3 *db;

	KBT_ASSERT_OK(store_clock_get(s, &k));
	KBT_ASSERT_INT(k.mark_us, ==, 0);
	KBT_ASSERT_INT(k.kept, ==, 0);
	k.mark_us = 5000;
	k.jump_from_us = 4000;
	k.jump_to_us = 5000;
	snprintf(k.confirm_by, sizeof(k.confirm_by), "ops");
	KBT_ASSERT_OK(store_clock_put(s, &k));
	k.mark_us = 10; /* lower: ignored */
	k.jump_from_us = k.jump_to_us = 0;
	KBT_ASSERT_OK(store_clock_put(s, &k));
	memset(&k, 0, sizeof(k));
	KBT_ASSERT_OK(store_clock_get(s, &k));
	KBT_ASSERT_INT(k.mark_us, ==, 5000);
	KBT_ASSERT_INT(k.kept, ==, 1);
	KBT_ASSERT_INT(k.jump_from_us, ==, 0);
	KBT_ASSERT_STR(k.confirm_by, "ops");

	if (pg_url != NULL) {
		/* (PostgreSQL starts at schema 9: no upgrade from 3.) A
		 * database whose row is gone says so. */
		KBT_ASSERT_OK(store_sql(s, "DELETE FROM clock"));
		KBT_ASSERT_ERR(store_clock_get(s, &k), KB_ERR_CORRUPT);
		KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CORRUPT), "no clock row");
		KBT_ASSERT_ERR(store_clock_put(s, &k), KB_ERR_CORRUPT);
		done(s);
		return;
	}
	/* A schema 3 database with records: the upgrade seeds the mark with
	 * the newest of their times, not yet kept. */
	memset(&t, 0, sizeof(t));
	snprintf(t.id, sizeof(t.id), "acme");
	snprintf(t.display_name, sizeof(t.display_name), "Acme");
	t.create_time_us = 7000;
	KBT_ASSERT_OK(store_tenant_create(s, &t));
	add_platform_key(s);
	store_close(s);
	KBT_ASSERT(sqlite3_open(dbpath, &db) == SQLITE_OK);
	/* (Schema 5's quorum tables, schema 6's deletion columns and the
	 * columns of 7 and 9 go too: the upgrade makes them again.) */
	KBT_ASSERT(
	    sqlite3_exec(db,
	        "DROP TABLE clock; DROP TABLE "
	        "quorum_policies; DROP TABLE approval_requests; DROP TABLE "
	        "approvals; DROP INDEX environments_delete; DROP INDEX "
	        "keys_delete; ALTER TABLE environments DROP COLUMN "
	        "delete_request_us; ALTER TABLE environments DROP COLUMN "
	        "delete_final_us; ALTER TABLE keys DROP COLUMN "
	        "delete_request_us; ALTER TABLE keys DROP COLUMN "
	        "delete_final_us; ALTER TABLE environments DROP COLUMN "
	        "min_dek_version; ALTER TABLE keys DROP COLUMN "
	        "retire_time_us; PRAGMA user_version=3; "
	        "UPDATE tenants SET lock_time_us = 9000",
	        NULL, NULL, NULL)
	    == SQLITE_OK);
	sqlite3_close(db);
	KBT_ASSERT_OK(store_open(dbpath, 2, &s));
	KBT_ASSERT_OK(store_clock_get(s, &k));
	KBT_ASSERT_INT(k.mark_us, ==, 9000);
	KBT_ASSERT_INT(k.kept, ==, 0);
	/* A database whose row is gone says so. */
	store_close(s);
	KBT_ASSERT(sqlite3_open(dbpath, &db) == SQLITE_OK);
	KBT_ASSERT(sqlite3_exec(db, "DELETE FROM clock", NULL, NULL, NULL)
	    == SQLITE_OK);
	sqlite3_close(db);
	KBT_ASSERT_OK(store_open(dbpath, 2, &s));
	KBT_ASSERT_ERR(store_clock_get(s, &k), KB_ERR_CORRUPT);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CORRUPT), "no clock row");
	KBT_ASSERT_ERR(store_clock_put(s, &k), KB_ERR_CORRUPT);
	done(s);
}

/* ---- every writer's answer to a full disk and a busy database ---- */

/* snapshot() on PostgreSQL: each row of each table as its text. */
static void
snapshot_pg(EVP_MD_CTX *md)
{
	struct db_config cfg;
	struct db *db = NULL;
	struct db_conn *c;
	struct db_stmt *st;
	char names[32][64], sql[256];
	size_t n = 0, i;

	memset(&cfg, 0, sizeof(cfg));
	cfg.target = pg_url;
	cfg.conns = 1;
	if (db_open(&cfg, &db) != KB_OK)
		return;
	c = db_conn_get(db);
	if (db_prepare(c,
	        "SELECT table_name FROM information_schema.tables WHERE "
	        "table_schema = 'public' ORDER BY 1",
	        &st)
	    == KB_OK) {
		while (n < 32 && db_step(st) == DB_ROW)
			snprintf(names[n++], sizeof(names[0]), "%s",
			    db_column_text(st, 0));
		db_reset(st);
	}
	for (i = 0; i < n; i++) {
		snprintf(sql, sizeof(sql),
		    "SELECT CAST(x AS TEXT) FROM \"%.63s\" x ORDER BY 1",
		    names[i]);
		EVP_DigestUpdate(md, sql, strlen(sql));
		if (db_prepare_dynamic(c, sql, &st) != KB_OK)
			continue;
		while (db_step(st) == DB_ROW) {
			EVP_DigestUpdate(md, "|", 1);
			EVP_DigestUpdate(
			    md, db_column_text(st, 0), db_column_bytes(st, 0));
		}
		db_finalize(st);
	}
	db_conn_put(db, c);
	db_close(db);
}

/* SHA-256 over every row of every table: "nothing stored changed". */
static void
snapshot(uint8_t out[32])
{
	sqlite3 *db = NULL;
	sqlite3_stmt *tl = NULL, *st = NULL;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned len = 0;
	char sql[256];
	int i;

	memset(out, 0, 32);
	if (md != NULL && pg_url != NULL
	    && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1) {
		snapshot_pg(md);
		EVP_DigestFinal_ex(md, out, &len);
		goto out;
	}
	if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1
	    || sqlite3_open_v2(dbpath, &db, SQLITE_OPEN_READONLY, NULL)
	        != SQLITE_OK
	    || sqlite3_prepare_v2(db,
	           "SELECT name FROM sqlite_master WHERE type = "
	           "'table' ORDER BY name",
	           -1, &tl, NULL)
	        != SQLITE_OK)
		goto out;
	while (sqlite3_step(tl) == SQLITE_ROW) {
		snprintf(sql, sizeof(sql), "SELECT * FROM \"%s\" ORDER BY 1",
		    (const char *)sqlite3_column_text(tl, 0));
		EVP_DigestUpdate(md, sql, strlen(sql));
		if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
			continue;
		while (sqlite3_step(st) == SQLITE_ROW)
			for (i = 0; i < sqlite3_column_count(st); i++) {
				/* The type too: NULL, '' and 0 differ. */
				char type =
				    (char)('0' + sqlite3_column_type(st, i));
				const void *b = sqlite3_column_blob(st, i);

				EVP_DigestUpdate(md, "|", 1);
				EVP_DigestUpdate(md, &type, 1);
				if (b != NULL)
					EVP_DigestUpdate(md, b,
					    (size_t)sqlite3_column_bytes(
					        st, i));
			}
		sqlite3_finalize(st);
	}
	EVP_DigestFinal_ex(md, out, &len);
out:
	sqlite3_finalize(tl);
	sqlite3_close(db);
	EVP_MD_CTX_free(md);
}

static unsigned op_n;

static void
op_tenant(struct store_tenant *t)
{
	memset(t, 0, sizeof(*t));
	snprintf(t->id, sizeof(t->id), "f%u", ++op_n);
	t->create_time_us = 1;
}

static enum kb_err
w_tenant_create(struct store *s)
{
	struct store_tenant t;

	op_tenant(&t);
	return store_tenant_create(s, &t);
}

static enum kb_err
w_env_create(struct store *s)
{
	struct store_env env;
	struct store_dek dek;

	memset(&env, 0, sizeof(env));
	snprintf(env.tenant_id, sizeof(env.tenant_id), "acme");
	snprintf(env.name, sizeof(env.name), "e%u", ++op_n);
	snprintf(env.uid, sizeof(env.uid), "%032u", op_n);
	env.mode = STORE_MODE_PLATFORM;
	env.state = STORE_ENV_ENABLED;
	env.create_time_us = env.update_time_us = 1;
	make_dek(&dek, 0x11);
	return store_env_create(s, &env, &dek);
}

static void
op_key(struct store_key *k)
{
	memset(k, 0, sizeof(*k));
	snprintf(k->id, sizeof(k->id), "k-%u", ++op_n);
	snprintf(k->tenant_id, sizeof(k->tenant_id), "acme");
	snprintf(k->purpose, sizeof(k->purpose), "tenant");
	snprintf(k->origin, sizeof(k->origin), "generated");
	snprintf(k->state, sizeof(k->state), "available");
	snprintf(k->fingerprint, sizeof(k->fingerprint), "%064u", op_n);
	k->create_time_us = k->update_time_us = 1;
}

static enum kb_err
w_key_create(struct store *s)
{
	struct store_key k;

	op_key(&k);
	return store_key_create(s, &k);
}

static enum kb_err
w_key_add(struct store *s)
{
	struct store_key k;

	op_key(&k);
	return store_tenant_key_add(s, &k, 2);
}

static enum kb_err
w_key_set_state(struct store *s)
{
	return store_key_set_state(s, "k-fixed", "available", "deleted", 3);
}

static enum kb_err
w_meta_set(struct store *s)
{
	char v[16];

	snprintf(v, sizeof(v), "%u", ++op_n);
	return store_meta_set(s, "x", v);
}

static enum kb_err
w_clock_put(struct store *s)
{
	struct store_clock c;

	memset(&c, 0, sizeof(c));
	c.mark_us = 9000000000000000LL + ++op_n;
	c.kept = 1;
	return store_clock_put(s, &c);
}

static enum kb_err
w_add_version(struct store *s)
{
	struct store_dek dek;

	uint32_t v = 0;
	enum kb_err e;

	if ((e = store_env_next_version(s, "acme", "prod", &v)) != KB_OK)
		return e;
	make_dek(&dek, 0x22);
	dek.version = v;
	return store_env_add_version(s, "acme", "prod", &dek, 4);
}

static enum kb_err
w_reset(struct store *s)
{
	struct store_dek dek;

	uint32_t v = 0;
	enum kb_err e;

	if ((e = store_env_next_version(s, "acme", "prod", &v)) != KB_OK)
		return e;
	make_dek(&dek, 0x33);
	dek.version = v;
	return store_env_reset(s, "acme", "prod", &dek, 5);
}

static enum kb_err
w_set_state(struct store *s)
{
	return store_env_set_state(
	    s, "acme", "prod", STORE_ENV_ENABLED, STORE_ENV_LOCKED, 6);
}

static enum kb_err
w_backup(struct store *s)
{
	struct store_backup b;
	char id[32];

	snprintf(id, sizeof(id), "b-%u", ++op_n);
	return store_backup_create(s, "acme", "prod", id, 7, &b);
}

static enum kb_err
w_mark_damaged(struct store *s)
{
	return store_dek_mark_damaged(s, "acme", "prod", 1, "test");
}

static enum kb_err
w_dek_replace(struct store *s)
{
	struct store_dek dek;

	make_dek(&dek, 0x44);
	return store_dek_replace(s, "acme", "prod", &dek);
}

static enum kb_err
w_tenant_lock(struct store *s)
{
	char(*destroy)[STORE_KEY_ID_MAX] = NULL;
	size_t n = 0;
	enum kb_err e;

	e = store_tenant_lock(s, "acme", "k-active", 8, &destroy, &n);
	free(destroy);
	return e;
}

static enum kb_err
w_env_purge(struct store *s)
{
	return store_env_purge(s, "acme", "old", 9);
}

static enum kb_err
w_job_fail(struct store *s)
{
	return store_job_fail(s, "j-fixed", "test", 11);
}

/* The fixture's database is bound to no token yet: the first bind writes
 * it. */
static enum kb_err
w_token_bind(struct store *s)
{
	return store_token_bind(s, "tok", "1234");
}

/* A tenant KEK (installing) wrapped under tenant key `parent`. */
static void
op_kek(struct store_key *k, const char *parent)
{
	op_key(k);
	snprintf(k->id, sizeof(k->id), "kek-%u", op_n);
	snprintf(k->purpose, sizeof(k->purpose), "kek");
	snprintf(k->state, sizeof(k->state), "installing");
	snprintf(k->parent_id, sizeof(k->parent_id), "%s", parent);
	memset(k->wrapped, 0x5a, 40);
	k->wrapped_len = 40;
}

static enum kb_err
w_activation_begin(struct store *s)
{
	struct store_key kek;
	struct store_job job;
	char id[32];

	op_kek(&kek, "k-fixed");
	snprintf(id, sizeof(id), "j-%u", op_n);
	return store_activation_begin(
	    s, "acme", "k-fixed", "k-active", &kek, id, 20, &job);
}

/* A new platform key (installing), as jobs_rotate_platform makes. */
static void
op_platform_key(struct store_key *k)
{
	op_key(k);
	snprintf(k->id, sizeof(k->id), "kb-platform-x%u", op_n);
	k->tenant_id[0] = '\0';
	snprintf(k->purpose, sizeof(k->purpose), "platform");
	snprintf(k->state, sizeof(k->state), "installing");
	snprintf(k->wrap_alg, sizeof(k->wrap_alg), "AES-256-GCM");
}

static enum kb_err
w_job_begin(struct store *s)
{
	struct store_key k;
	struct store_job job;
	char id[32];

	op_platform_key(&k);
	snprintf(id, sizeof(id), "j-%u", op_n);
	return store_job_begin(
	    s, id, STORE_JOB_ROTATE, &k, "kb-platform-1", 21, &job);
}

/* The upgrade job j-fixed's first two rows, re-sealed. */
static enum kb_err
w_rewrap_commit(struct store *s)
{
	struct store_job job;
	struct store_rewrap rows[2];
	char old[2][STORE_KEY_ID_MAX];
	size_t n = 0, i;
	enum kb_err e;

	if ((e = store_job_get(s, "j-fixed", &job)) != KB_OK
	    || (e = store_rewrap_fetch_after(s, &job, 0, 0, rows, 2, &n))
	        != KB_OK)
		return e;
	if (n == 0)
		return kb_errf(
		    KB_ERR_INTERNAL, "j-fixed has no row to re-seal");
	for (i = 0; i < n; i++) {
		snprintf(old[i], sizeof(old[i]), "%s", rows[i].dek.key_id);
		snprintf(rows[i].dek.wrap_alg, sizeof(rows[i].dek.wrap_alg),
		    "AES-256-GCM");
		memset(rows[i].dek.wrapped, 0x66, 60);
		rows[i].dek.wrapped_len = 60;
	}
	return store_rewrap_commit(s, "j-fixed", rows, old, n, 22);
}

static enum kb_err
w_job_finish(struct store *s)
{
	struct store_job job;
	enum kb_err e;

	if ((e = store_job_get(s, "j-fixed", &job)) != KB_OK)
		return e;
	return store_job_finish(s, &job, 23);
}

/* acme/prod to customer-managed: every version re-sealed under the KEK. */
static enum kb_err
w_env_rewrap(struct store *s)
{
	struct store_dek *v = NULL;
	size_t n = 0, i;
	enum kb_err e;

	if ((e = store_env_dek_list(s, "acme", "prod", &v, &n)) != KB_OK)
		return e;
	for (i = 0; i < n; i++) {
		snprintf(v[i].key_id, sizeof(v[i].key_id), "kek-fixed");
		snprintf(v[i].wrap_alg, sizeof(v[i].wrap_alg), "AES-256-GCM");
		memset(v[i].wrapped, 0x77, 60);
		v[i].wrapped_len = 60;
	}
	e = store_env_rewrap(s, "acme", "prod", STORE_MODE_CUSTOMER, v, n, 24);
	free(v);
	return e;
}

static enum kb_err
w_tenant_unlock(struct store *s)
{
	return store_tenant_unlock(s, "beta", 25);
}

static enum kb_err
w_env_delete_begin(struct store *s)
{
	struct store_env env;

	return store_env_delete_begin(s, "acme", "prod", 26, 1000, &env);
}

static enum kb_err
w_env_delete_cancel(struct store *s)
{
	struct store_env env;

	return store_env_delete_cancel(s, "acme", "gone", 50, 0, &env);
}

static enum kb_err
w_env_delete_finish(struct store *s)
{
	return store_env_delete_finish(s, "acme", "gone", 200);
}

static enum kb_err
w_key_delete_begin(struct store *s)
{
	struct store_key k;

	return store_key_delete_begin(s, "acme", "k-fixed", 27, 1000, &k);
}

static enum kb_err
w_key_delete_cancel(struct store *s)
{
	struct store_key k;

	return store_key_delete_cancel(s, "acme", "k-doomed", 50, 0, &k);
}

static enum kb_err
w_key_delete_finish(struct store *s)
{
	return store_key_delete_finish(s, "k-doomed", 200);
}

/* An available tenant key that seals nothing: retiring, no target. */
static enum kb_err
w_retire_begin(struct store *s)
{
	struct store_job job;
	char id[32];

	snprintf(id, sizeof(id), "j-%u", ++op_n);
	return store_retire_begin(
	    s, "k-fixed", "available", "acme", "", id, 28, &job);
}

/* acme/rot: version 1 and its backup go, 2 stays. */
static enum kb_err
w_dek_retire(struct store *s)
{
	uint32_t destroyed = 0, backups = 0;

	return store_env_dek_retire(
	    s, "acme", "rot", 2, 1, 29, &destroyed, &backups);
}

static enum kb_err
w_quorum_put(struct store *s)
{
	struct store_quorum q;

	memset(&q, 0, sizeof(q));
	snprintf(q.tenant, sizeof(q.tenant), "acme");
	q.approvals = 2;
	snprintf(q.approvers, sizeof(q.approvers), "alice,bob");
	q.update_time_us = ++op_n;
	snprintf(q.updated_by, sizeof(q.updated_by), "ops");
	snprintf(q.operations, sizeof(q.operations), "LockTenant");
	memset(q.seal, 0x51, 32);
	q.seal_len = 32;
	return store_quorum_put(s, &q);
}

/* A pending LockTenant request of acme. */
static void
op_request(struct store_approval_req *r, const char *id)
{
	memset(r, 0, sizeof(*r));
	snprintf(r->id, sizeof(r->id), "%s", id);
	snprintf(r->method, sizeof(r->method), "LockTenant");
	snprintf(r->tenant, sizeof(r->tenant), "acme");
	snprintf(r->args, sizeof(r->args), "tenant acme");
	memset(r->call, 0x0a, 16);
	r->call_len = 16;
	snprintf(r->requester, sizeof(r->requester), "alice");
	r->create_time_us = r->update_time_us = 1;
	r->expire_time_us = 1000;
	r->needed = 2;
	snprintf(r->state, sizeof(r->state), "pending");
	memset(r->seal, 0x5e, 32);
	r->seal_len = 32;
	memset(r->state_seal, 0x5f, 32);
	r->state_seal_len = 32;
}

static enum kb_err
w_approval_req_insert(struct store *s)
{
	struct store_approval_req r;
	char id[32];

	snprintf(id, sizeof(id), "r-%u", ++op_n);
	op_request(&r, id);
	return store_approval_req_insert(s, &r);
}

static enum kb_err
w_approval_req_move(struct store *s)
{
	static const uint8_t seal[32] = {1, 2, 3};

	return store_approval_req_move(s, "r-fixed", "pending", "denied",
	    "denied by bob", 30, seal, sizeof(seal));
}

static void
op_approval(struct store_approval *a, const char *approver)
{
	memset(a, 0, sizeof(*a));
	snprintf(a->request_id, sizeof(a->request_id), "r-fixed");
	snprintf(a->approver, sizeof(a->approver), "%s", approver);
	snprintf(a->decision, sizeof(a->decision), "approve");
	a->time_us = 31;
	memset(a->seal, 0x5a, 32);
	a->seal_len = 32;
}

static enum kb_err
w_approval_insert(struct store *s)
{
	struct store_approval a;
	char cn[32];

	snprintf(cn, sizeof(cn), "cn-%u", ++op_n);
	op_approval(&a, cn);
	return store_approval_insert(s, &a);
}

/* Every store function that writes the database, each making one write
 * on faults_fixture() that succeeds there (/store/writers-write checks
 * that). Not here, on purpose:
 * - store_open, store_open_with: their writes are the migrations of a
 *   database being opened, not a write on an open store;
 * - store_lease_take, store_lease_wait, store_lease_drop: no row (SQLite
 *   grants them in the process; PostgreSQL's are advisory locks, session
 *   state);
 * - store_snapshot, store_sqlite_copy: they read the store and write a
 *   new file (a full disk there is /store/full-disk's last check); a busy
 *   database does not stop a read;
 * - store_file_settle: works on a database file no store has open (it
 *   answers UNAVAILABLE while one does);
 * - store_txn, store_run, store_step_done, store_key_insert_conn
 *   (store_int.h): the helpers every writer here goes through. */
static const struct {
	const char *name;
	enum kb_err (*fn)(struct store *s);
} writers[] = {
    {"store_job_fail", w_job_fail},
    {"store_tenant_create", w_tenant_create},
    {"store_env_create", w_env_create},
    {"store_key_create", w_key_create},
    {"store_tenant_key_add", w_key_add},
    {"store_key_set_state", w_key_set_state},
    {"store_meta_set", w_meta_set},
    {"store_clock_put", w_clock_put},
    {"store_env_add_version", w_add_version},
    {"store_env_reset", w_reset},
    {"store_env_set_state", w_set_state},
    {"store_backup_create", w_backup},
    {"store_dek_mark_damaged", w_mark_damaged},
    {"store_dek_replace", w_dek_replace},
    {"store_tenant_lock", w_tenant_lock},
    {"store_env_purge", w_env_purge},
    {"store_token_bind", w_token_bind},
    {"store_activation_begin", w_activation_begin},
    {"store_job_begin", w_job_begin},
    {"store_rewrap_commit", w_rewrap_commit},
    {"store_job_finish", w_job_finish},
    {"store_env_rewrap", w_env_rewrap},
    {"store_tenant_unlock", w_tenant_unlock},
    {"store_env_delete_begin", w_env_delete_begin},
    {"store_env_delete_cancel", w_env_delete_cancel},
    {"store_env_delete_finish", w_env_delete_finish},
    {"store_key_delete_begin", w_key_delete_begin},
    {"store_key_delete_cancel", w_key_delete_cancel},
    {"store_key_delete_finish", w_key_delete_finish},
    {"store_retire_begin", w_retire_begin},
    {"store_env_dek_retire", w_dek_retire},
    {"store_quorum_put", w_quorum_put},
    {"store_approval_req_insert", w_approval_req_insert},
    {"store_approval_req_move", w_approval_req_move},
    {"store_approval_insert", w_approval_insert},
};

#define N_WRITERS (sizeof(writers) / sizeof(writers[0]))

/* An environment of acme (platform-managed, enabled) with DEK version 1
 * filled with `fill`. */
static enum kb_err
fixture_env(struct store *s, const char *name, unsigned uid, uint8_t fill)
{
	struct store_env env;
	struct store_dek dek;

	memset(&env, 0, sizeof(env));
	snprintf(env.tenant_id, sizeof(env.tenant_id), "acme");
	snprintf(env.name, sizeof(env.name), "%s", name);
	env.mode = STORE_MODE_PLATFORM;
	env.state = STORE_ENV_ENABLED;
	snprintf(env.uid, sizeof(env.uid), "%032u", uid);
	make_dek(&dek, fill);
	return store_env_create(s, &env, &dek);
}

/* Tenant acme: environments prod (platform), old (locked), gone (pending
 * deletion, final at 100) and rot (DEK versions 1 and 2, backup b-rot1 of
 * version 1); tenant keys k-fixed (available), k-active (active, its KEK
 * kek-fixed) and k-doomed (pending deletion, final at 100); a running
 * upgrade job j-fixed; a pending approval request r-fixed with bob's
 * approval. Tenant beta, locked with its key b-active. No token bound. */
static struct store *
faults_fixture(void)
{
	struct store *s = fresh();
	struct store_tenant t;
	struct store_env env;
	struct store_dek dek;
	struct store_key k;
	struct store_job job;
	struct store_backup b;
	struct store_approval_req r;
	struct store_approval a;
	char(*destroy)[STORE_KEY_ID_MAX] = NULL;
	size_t ndestroy = 0;
	unsigned i;
	uint32_t v = 0;

	add_platform_key(s);
	memset(&t, 0, sizeof(t));
	snprintf(t.id, sizeof(t.id), "acme");
	if (store_tenant_create(s, &t) != KB_OK)
		exit(2);
	op_key(&k);
	snprintf(k.id, sizeof(k.id), "k-fixed");
	if (fixture_env(s, "prod", 0, 0xab) != KB_OK
	    || store_key_create(s, &k) != KB_OK)
		exit(2);
	if (fixture_env(s, "old", 1, 0xab) != KB_OK
	    || store_env_set_state(
	           s, "acme", "old", STORE_ENV_ENABLED, STORE_ENV_LOCKED, 1)
	        != KB_OK)
		exit(2);
	op_key(&k);
	snprintf(k.id, sizeof(k.id), "k-active");
	snprintf(k.state, sizeof(k.state), "active");
	if (store_key_create(s, &k) != KB_OK)
		exit(2);
	op_kek(&k, "k-active");
	snprintf(k.id, sizeof(k.id), "kek-fixed");
	snprintf(k.state, sizeof(k.state), "active");
	if (store_key_create(s, &k) != KB_OK)
		exit(2);
	op_key(&k);
	snprintf(k.id, sizeof(k.id), "k-doomed");
	if (store_key_create(s, &k) != KB_OK
	    || store_key_delete_begin(s, "acme", "k-doomed", 1, 100, &k)
	        != KB_OK)
		exit(2);
	if (store_job_begin(
	        s, "j-fixed", STORE_JOB_UPGRADE, NULL, NULL, 1, &job)
	    != KB_OK)
		exit(2);
	if (fixture_env(s, "gone", 2, 0xac) != KB_OK
	    || store_env_delete_begin(s, "acme", "gone", 1, 100, &env) != KB_OK)
		exit(2);
	if (fixture_env(s, "rot", 3, 0xad) != KB_OK
	    || store_backup_create(s, "acme", "rot", "b-rot1", 1, &b) != KB_OK
	    || store_env_next_version(s, "acme", "rot", &v) != KB_OK)
		exit(2);
	make_dek(&dek, 0xae);
	dek.version = v;
	if (store_env_add_version(s, "acme", "rot", &dek, 2) != KB_OK)
		exit(2);
	op_request(&r, "r-fixed");
	op_approval(&a, "bob");
	if (store_approval_req_insert(s, &r) != KB_OK
	    || store_approval_insert(s, &a) != KB_OK)
		exit(2);
	memset(&t, 0, sizeof(t));
	snprintf(t.id, sizeof(t.id), "beta");
	op_key(&k);
	snprintf(k.id, sizeof(k.id), "b-active");
	snprintf(k.tenant_id, sizeof(k.tenant_id), "beta");
	snprintf(k.state, sizeof(k.state), "active");
	if (store_tenant_create(s, &t) != KB_OK
	    || store_key_create(s, &k) != KB_OK
	    || store_tenant_lock(s, "beta", "b-active", 2, &destroy, &ndestroy)
	        != KB_OK)
		exit(2);
	free(destroy);
	/* A busy database answers in 50 ms here, not the broker's 10 s:
	 * each of the pool's connections, taken all at once. */
	if (pg_url == NULL) {
		struct db_conn *cs[8];

		for (i = 0; i < s->nconns && i < 8; i++) {
			cs[i] = db_conn_get(s->db);
			sqlite3_busy_timeout(db_conn_sqlite(cs[i]), 50);
		}
		while (i-- > 0)
			db_conn_put(s->db, cs[i]);
	}
	return s;
}

/* Readers keep answering while writes fail. */
static void
readers_answer(struct store *s, const char *when)
{
	struct store_env env;
	struct store_dek dek;
	struct store_tenant t;
	struct store_job job;
	struct store_approval_req r;

	if (store_env_with_dek(s, "acme", "prod", 0, &env, &dek) != KB_OK
	    || store_tenant_get(s, "acme", &t) != KB_OK
	    || store_job_get(s, "j-fixed", &job) != KB_OK
	    || store_approval_req_get(s, "r-fixed", &r) != KB_OK)
		KBT_FAIL(
		    "%s: a read failed: %s", when, kb_err_msg(KB_ERR_STORE));
}

/* Each writer on a fixture of its own, with room and no other
 * connection: it answers KB_OK and changes what is stored, so that the
 * failure cases below test a real write. */
static void
test_writers_write(void)
{
	struct store *s;
	uint8_t before[32], after[32];
	size_t i, bad = 0;
	enum kb_err e;

	for (i = 0; i < N_WRITERS; i++) {
		s = faults_fixture();
		snapshot(before);
		e = writers[i].fn(s);
		if (e != KB_OK) {
			fprintf(stderr, "  %s: want OK, got %s (%s)\n",
			    writers[i].name, kb_strerror(e), kb_err_msg(e));
			bad++;
		}
		snapshot(after);
		if (e == KB_OK && memcmp(before, after, 32) == 0) {
			fprintf(stderr, "  %s changed nothing stored\n",
			    writers[i].name);
			bad++;
		}
		done(s);
	}
	if (bad > 0)
		KBT_FAIL("%zu writer(s) failed (above)", bad);
}

/* writers[i] against `s` (`full`: on a full disk): it must answer `want`
 * with a message containing `word` and leave what is stored as it was.
 * Prints what is wrong; returns how many things were. */
static size_t
writer_refused(struct store *s, size_t i, int full, enum kb_err want,
    const char *word, const char *when)
{
	uint8_t before[32], after[32];
	char msg[512];
	size_t bad = 0;
	enum kb_err e;

	snapshot(before);
	if (full)
		kbt_vfs_full(1);
	e = writers[i].fn(s);
	snprintf(msg, sizeof(msg), "%s", kb_err_msg(e));
	if (full)
		kbt_vfs_full(0);
	if (e != want || strstr(msg, word) == NULL) {
		fprintf(stderr, "  %s %s: want %s naming \"%s\", got %s (%s)\n",
		    writers[i].name, when, kb_strerror(want), word,
		    kb_strerror(e), msg);
		bad++;
	}
	snapshot(after);
	if (memcmp(before, after, 32) != 0) {
		fprintf(stderr, "  %s %s changed what is stored\n",
		    writers[i].name, when);
		bad++;
	}
	return bad;
}

static void
test_full_disk(void)
{
	struct store *s;
	size_t i, bad = 0;
	char copy[600];
	enum kb_err e;

	KBT_ASSERT_INT(kbt_vfs_register(), ==, 0);
	s = faults_fixture();
	for (i = 0; i < N_WRITERS; i++) {
		bad += writer_refused(
		    s, i, 1, KB_ERR_STORAGE_FULL, "full", "on a full disk");
		kbt_vfs_full(1);
		readers_answer(s, writers[i].name);
		kbt_vfs_full(0);
	}
	if (bad > 0)
		KBT_FAIL("%zu failure(s) on a full disk (above)", bad);
	/* A copy of the database (backup create) on a full disk: refused
	 * naming it, the store unaltered (the writers' check above). */
	snprintf(copy, sizeof(copy), "%s.copy", dbpath);
	kbt_vfs_full(1);
	e = store_snapshot(s, copy);
	kbt_vfs_full(0);
	KBT_ASSERT_ERR(e, KB_ERR_STORAGE_FULL);
	KBT_ASSERT_CONTAINS(kb_err_msg(e), "full");
	unlink(copy);
	/* Space again: writes go through. */
	KBT_ASSERT_OK(w_tenant_create(s));
	done(s);
	kbt_vfs_unregister();
}

static void
test_busy(void)
{
	struct store *s = faults_fixture();
	sqlite3 *other = NULL;
	size_t i, bad = 0;

	/* Another process holds the write lock. */
	KBT_ASSERT(sqlite3_open(dbpath, &other) == SQLITE_OK);
	KBT_ASSERT(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL)
	    == SQLITE_OK);
	for (i = 0; i < N_WRITERS; i++) {
		bad += writer_refused(
		    s, i, 0, KB_ERR_UNAVAILABLE, "busy", "on a busy database");
		readers_answer(s, writers[i].name);
	}
	sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL);
	sqlite3_close(other);
	if (bad > 0)
		KBT_FAIL("%zu failure(s) on a busy database (above)", bad);
	KBT_ASSERT_OK(w_tenant_create(s));
	done(s);
}

/* What a constraint refuses, by name, and nothing half-written: duplicate
 * ids, references to rows that do not exist, rows in the wrong state. The
 * functions with nothing to refuse are not here: store_meta_set,
 * store_clock_put (its missing row: /store/clock) and store_quorum_put
 * (insert or replace; a policy's tenant is not a reference). */
static void
test_constraints(void)
{
	struct store *s = faults_fixture();
	struct store_tenant t;
	struct store_key k, kek;
	struct store_backup b;
	struct store_dek dek, *dv = NULL;
	struct store_env env;
	struct store_job job;
	struct store_approval_req r;
	struct store_approval a;
	struct store_rewrap rows[1];
	char old[1][STORE_KEY_ID_MAX];
	char(*destroy)[STORE_KEY_ID_MAX] = NULL;
	uint8_t before[32], after[32];
	uint32_t v = 0, nd = 0, nb = 0;
	size_t n = 0;

	KBT_ASSERT_OK(store_token_bind(s, "tok", "1234"));
	snapshot(before);

	/* ---- duplicate ids ---- */
	KBT_ASSERT_ERR(
	    store_token_bind(s, "other", "1234"), KB_ERR_TOKEN_MISMATCH);
	memset(&t, 0, sizeof(t));
	snprintf(t.id, sizeof(t.id), "acme");
	KBT_ASSERT_ERR(store_tenant_create(s, &t), KB_ERR_ALREADY_EXISTS);
	op_key(&k);
	snprintf(k.id, sizeof(k.id), "k-fixed");
	KBT_ASSERT_ERR(store_key_create(s, &k), KB_ERR_ALREADY_EXISTS);
	/* The key change is not recorded without the key. */
	KBT_ASSERT_ERR(store_tenant_key_add(s, &k, 99), KB_ERR_ALREADY_EXISTS);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_ALREADY_EXISTS), "key \"k-fixed\" already");
	memset(&env, 0, sizeof(env));
	snprintf(env.tenant_id, sizeof(env.tenant_id), "acme");
	snprintf(env.name, sizeof(env.name), "prod");
	snprintf(env.uid, sizeof(env.uid), "%032d", 77);
	env.mode = STORE_MODE_PLATFORM;
	env.state = STORE_ENV_ENABLED;
	make_dek(&dek, 1);
	KBT_ASSERT_ERR(store_env_create(s, &env, &dek), KB_ERR_ALREADY_EXISTS);
	/* A new name with prod's uid (never reused). */
	snprintf(env.name, sizeof(env.name), "new");
	snprintf(env.uid, sizeof(env.uid), "%032d", 0);
	KBT_ASSERT_ERR(store_env_create(s, &env, &dek), KB_ERR_ALREADY_EXISTS);
	KBT_ASSERT_ERR(store_backup_create(s, "acme", "prod", "b-rot1", 5, &b),
	    KB_ERR_ALREADY_EXISTS);
	/* Activation: its KEK's id taken, then its job's id; the key must not
	 * stay installing. */
	op_kek(&kek, "k-fixed");
	snprintf(kek.id, sizeof(kek.id), "kek-fixed");
	KBT_ASSERT_ERR(store_activation_begin(s, "acme", "k-fixed", "k-active",
	                   &kek, "j-new", 5, &job),
	    KB_ERR_ALREADY_EXISTS);
	op_kek(&kek, "k-fixed");
	KBT_ASSERT_ERR(store_activation_begin(s, "acme", "k-fixed", "k-active",
	                   &kek, "j-fixed", 5, &job),
	    KB_ERR_ALREADY_EXISTS);
	/* Jobs: one of the kind running, the new key's id taken, the job's
	 * id taken (the new key must not be left). */
	KBT_ASSERT_ERR(
	    store_job_begin(s, "j-new", STORE_JOB_UPGRADE, NULL, "", 5, &job),
	    KB_ERR_ALREADY_EXISTS);
	KBT_ASSERT_STR(job.id, "j-fixed");
	op_platform_key(&k);
	snprintf(k.id, sizeof(k.id), "kb-platform-1");
	KBT_ASSERT_ERR(store_job_begin(s, "j-new", STORE_JOB_ROTATE, &k,
	                   "kb-platform-1", 5, &job),
	    KB_ERR_ALREADY_EXISTS);
	op_platform_key(&k);
	KBT_ASSERT_ERR(store_job_begin(s, "j-fixed", STORE_JOB_ROTATE, &k,
	                   "kb-platform-1", 5, &job),
	    KB_ERR_ALREADY_EXISTS);
	/* A retirement whose job id is taken: the key is not left
	 * retiring. */
	KBT_ASSERT_ERR(store_retire_begin(s, "k-fixed", "available", "acme", "",
	                   "j-fixed", 5, &job),
	    KB_ERR_ALREADY_EXISTS);
	op_request(&r, "r-fixed");
	KBT_ASSERT_ERR(store_approval_req_insert(s, &r), KB_ERR_ALREADY_EXISTS);
	op_approval(&a, "bob");
	KBT_ASSERT_ERR(store_approval_insert(s, &a), KB_ERR_ALREADY_EXISTS);

	/* ---- references to rows that do not exist ---- */
	op_key(&k);
	snprintf(k.tenant_id, sizeof(k.tenant_id), "ghost");
	KBT_ASSERT_ERR(store_key_create(s, &k), KB_ERR_STORE);
	KBT_ASSERT_ERR(store_tenant_key_add(s, &k, 5), KB_ERR_STORE);
	snprintf(env.tenant_id, sizeof(env.tenant_id), "ghost");
	snprintf(env.uid, sizeof(env.uid), "%032d", 78);
	KBT_ASSERT_ERR(store_env_create(s, &env, &dek), KB_ERR_NOT_FOUND);
	/* A DEK sealed by a key that does not exist: no environment row
	 * left behind. */
	snprintf(env.tenant_id, sizeof(env.tenant_id), "acme");
	snprintf(dek.key_id, sizeof(dek.key_id), "no-such-key");
	KBT_ASSERT_ERR(store_env_create(s, &env, &dek), KB_ERR_STORE);
	KBT_ASSERT_ERR(store_env_get(s, "acme", "new", &env), KB_ERR_NOT_FOUND);
	make_dek(&dek, 1);
	KBT_ASSERT_ERR(store_env_add_version(s, "acme", "nope", &dek, 5),
	    KB_ERR_NOT_FOUND);
	KBT_ASSERT_ERR(
	    store_env_reset(s, "ghost", "prod", &dek, 5), KB_ERR_NOT_FOUND);
	KBT_ASSERT_OK(store_env_next_version(s, "acme", "rot", &v));
	dek.version = v;
	snprintf(dek.key_id, sizeof(dek.key_id), "no-such-key");
	KBT_ASSERT_ERR(
	    store_env_add_version(s, "acme", "rot", &dek, 5), KB_ERR_STORE);
	/* Reset deletes the versions and backups before the new row fails:
	 * all of it rolled back. */
	KBT_ASSERT_ERR(
	    store_env_reset(s, "acme", "rot", &dek, 5), KB_ERR_STORE);
	dek.version = 2;
	KBT_ASSERT_ERR(store_dek_replace(s, "acme", "rot", &dek), KB_ERR_STORE);
	dek.version = 9;
	snprintf(dek.key_id, sizeof(dek.key_id), "kb-platform-1");
	KBT_ASSERT_ERR(
	    store_dek_replace(s, "acme", "rot", &dek), KB_ERR_NOT_FOUND);
	KBT_ASSERT_ERR(store_dek_mark_damaged(s, "acme", "rot", 9, "test"),
	    KB_ERR_NOT_FOUND);
	KBT_ASSERT_ERR(store_env_rewrap(
	                   s, "acme", "nope", STORE_MODE_CUSTOMER, &dek, 1, 5),
	    KB_ERR_NOT_FOUND);
	/* Re-sealed under a key that does not exist: neither the rows nor
	 * the mode change. */
	KBT_ASSERT_OK(store_env_dek_list(s, "acme", "rot", &dv, &n));
	KBT_ASSERT_INT(n, ==, 2);
	snprintf(dv[1].key_id, sizeof(dv[1].key_id), "no-such-key");
	KBT_ASSERT_ERR(
	    store_env_rewrap(s, "acme", "rot", STORE_MODE_CUSTOMER, dv, n, 5),
	    KB_ERR_STORE);
	free(dv);
	KBT_ASSERT_ERR(store_env_set_state(s, "acme", "nope", STORE_ENV_ENABLED,
	                   STORE_ENV_LOCKED, 5),
	    KB_ERR_NOT_FOUND);
	KBT_ASSERT_ERR(store_backup_create(s, "acme", "nope", "b-x", 1, &b),
	    KB_ERR_NOT_FOUND);
	KBT_ASSERT_ERR(store_env_purge(s, "acme", "nope", 5), KB_ERR_NOT_FOUND);
	KBT_ASSERT_ERR(store_env_delete_begin(s, "acme", "nope", 5, 100, &env),
	    KB_ERR_NOT_FOUND);
	KBT_ASSERT_ERR(store_env_delete_begin(s, "ghost", "prod", 5, 100, &env),
	    KB_ERR_NOT_FOUND);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_NOT_FOUND), "tenant \"ghost\" does not exist");
	KBT_ASSERT_ERR(
	    store_env_dek_retire(s, "acme", "nope", 2, 1, 5, &nd, &nb),
	    KB_ERR_NOT_FOUND);
	KBT_ASSERT_ERR(store_key_delete_begin(s, "acme", "nope", 5, 100, &k),
	    KB_ERR_NOT_FOUND);
	/* A KEK is not a tenant key. */
	KBT_ASSERT_ERR(
	    store_key_delete_begin(s, "acme", "kek-fixed", 5, 100, &k),
	    KB_ERR_NOT_FOUND);
	KBT_ASSERT_ERR(
	    store_key_set_state(s, "nope", "available", "deleted", 1),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_ERR(
	    store_tenant_unlock(s, "ghost", 1), KB_ERR_FAILED_PRECONDITION);
	op_kek(&kek, "nope");
	KBT_ASSERT_ERR(store_activation_begin(s, "acme", "nope", "k-active",
	                   &kek, "j-new", 5, &job),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_ERR(store_approval_req_move(
	                   s, "r-nope", "pending", "denied", "", 5, NULL, 0),
	    KB_ERR_FAILED_PRECONDITION);
	/* A re-sealed row under a key that does not exist: neither the row
	 * nor the job's progress changes. */
	KBT_ASSERT_OK(store_job_get(s, "j-fixed", &job));
	KBT_ASSERT_OK(store_rewrap_fetch_after(s, &job, 0, 0, rows, 1, &n));
	KBT_ASSERT_INT(n, ==, 1);
	snprintf(old[0], sizeof(old[0]), "%s", rows[0].dek.key_id);
	snprintf(rows[0].dek.key_id, sizeof(rows[0].dek.key_id), "no-such-key");
	KBT_ASSERT_ERR(
	    store_rewrap_commit(s, "j-fixed", rows, old, 1, 5), KB_ERR_STORE);

	/* ---- rows in the wrong state ---- */
	KBT_ASSERT_ERR(store_key_set_state(s, "k-fixed", "active", "locked", 1),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_ERR(store_env_set_state(s, "acme", "prod", STORE_ENV_LOCKED,
	                   STORE_ENV_ENABLED, 1),
	    KB_ERR_FAILED_PRECONDITION);
	op_kek(&kek, "k-active");
	KBT_ASSERT_ERR(store_activation_begin(s, "acme", "k-active", "k-active",
	                   &kek, "j-new", 5, &job),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_FAILED_PRECONDITION), "is not available");
	/* Locking with a key that is not the active one: nothing locked,
	 * no key deleted. */
	KBT_ASSERT_ERR(store_tenant_lock(s, "acme", "k-fixed", 5, &destroy, &n),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_ERR(
	    store_tenant_unlock(s, "acme", 5), KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_ERR(
	    store_env_purge(s, "acme", "prod", 5), KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_FAILED_PRECONDITION), "no longer locked");
	KBT_ASSERT_ERR(store_env_delete_begin(s, "acme", "gone", 5, 200, &env),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_FAILED_PRECONDITION), "already pending deletion");
	KBT_ASSERT_ERR(store_env_delete_cancel(s, "acme", "prod", 5, 0, &env),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_ERR(store_env_delete_cancel(s, "acme", "gone", 150, 0, &env),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_FAILED_PRECONDITION), "became final");
	KBT_ASSERT_ERR(store_env_delete_finish(s, "acme", "gone", 99),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_ERR(store_env_delete_finish(s, "acme", "prod", 200),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_ERR(
	    store_key_delete_begin(s, "acme", "k-active", 5, 100, &k),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_FAILED_PRECONDITION), "is active");
	KBT_ASSERT_ERR(
	    store_key_delete_begin(s, "acme", "k-doomed", 5, 100, &k),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_ERR(store_key_delete_cancel(s, "acme", "k-fixed", 5, 0, &k),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_ERR(
	    store_key_delete_cancel(s, "acme", "k-doomed", 150, 0, &k),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_ERR(store_key_delete_finish(s, "k-doomed", 99),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_ERR(store_retire_begin(s, "k-fixed", "active", "acme", "",
	                   "j-new", 5, &job),
	    KB_ERR_FAILED_PRECONDITION);
	/* A version taken meanwhile (the caller's is stale). */
	make_dek(&dek, 1);
	dek.version = 1;
	KBT_ASSERT_ERR(store_env_add_version(s, "acme", "rot", &dek, 5),
	    KB_ERR_UNAVAILABLE);
	KBT_ASSERT_ERR(
	    store_env_reset(s, "acme", "rot", &dek, 5), KB_ERR_UNAVAILABLE);
	/* Retiring the current version, or one a backup needs. */
	KBT_ASSERT_ERR(
	    store_env_dek_retire(s, "acme", "rot", 3, 1, 5, &nd, &nb),
	    KB_ERR_UNAVAILABLE);
	KBT_ASSERT_ERR(
	    store_env_dek_retire(s, "acme", "rot", 2, 0, 5, &nd, &nb),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_FAILED_PRECONDITION), "b-rot1");
	/* Finishing a retirement whose key is no longer retiring; a rotation
	 * with rows left to re-seal. */
	memset(&job, 0, sizeof(job));
	snprintf(job.id, sizeof(job.id), "j-fixed");
	snprintf(job.kind, sizeof(job.kind), STORE_JOB_RETIRE);
	snprintf(job.tenant_id, sizeof(job.tenant_id), "acme");
	snprintf(job.key_id, sizeof(job.key_id), "k-fixed");
	KBT_ASSERT_ERR(
	    store_job_finish(s, &job, 5), KB_ERR_FAILED_PRECONDITION);
	snprintf(job.kind, sizeof(job.kind), STORE_JOB_ROTATE);
	job.tenant_id[0] = '\0';
	snprintf(job.target_key_id, sizeof(job.target_key_id), "kb-platform-2");
	KBT_ASSERT_ERR(store_job_finish(s, &job, 5), KB_ERR_UNAVAILABLE);
	/* Approval requests: moved by another call first; states and
	 * decisions the table does not know. */
	KBT_ASSERT_ERR(store_approval_req_move(s, "r-fixed", "executing",
	                   "executed", "", 5, NULL, 0),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_ERR(store_approval_req_move(
	                   s, "r-fixed", "pending", "bogus", "", 5, NULL, 0),
	    KB_ERR_STORE);
	op_request(&r, "r-new");
	snprintf(r.state, sizeof(r.state), "bogus");
	KBT_ASSERT_ERR(store_approval_req_insert(s, &r), KB_ERR_STORE);
	op_approval(&a, "carol");
	snprintf(a.decision, sizeof(a.decision), "maybe");
	KBT_ASSERT_ERR(store_approval_insert(s, &a), KB_ERR_STORE);

	snapshot(after);
	KBT_ASSERT(memcmp(before, after, 32) == 0);
	done(s);
}

/* ---- store bugs found by the cases above, fixed 2026-12-07 ----
 * Each case below asserts what the store's contract (store.h: "a failed
 * call leaves the database unaltered") asks for; each failed before its
 * fix ("Was:" says what the store did). */

/* Was: store_token_bind (store.c): the label and the serial are two
 * separate writes, not one transaction. A failure of the second (a
 * trigger refuses it here, as a full disk or a lost connection can between
 * the two) leaves the label without the serial, and every later bind, so
 * every later start, fails "setting token_serial not found". */
static void
test_bug_token_bind_atomic(void)
{
	struct store *s = fresh();
	char buf[64];

	KBT_ASSERT_OK(store_sql(s,
	    "CREATE TRIGGER no_serial BEFORE INSERT ON meta WHEN NEW.key = "
	    "'token_serial' BEGIN SELECT RAISE(ABORT, 'refused by the test'); "
	    "END"));
	KBT_ASSERT(store_token_bind(s, "tok", "1234") != KB_OK);
	kb_err_clear();
	KBT_ASSERT_ERR(store_meta_get(s, "token_label", buf, sizeof(buf)),
	    KB_ERR_NOT_FOUND);
	KBT_ASSERT_OK(store_sql(s, "DROP TRIGGER no_serial"));
	KBT_ASSERT_OK(store_token_bind(s, "tok", "1234"));
	done(s);
}

/* A bug case's check: `what` must answer `want` and leave what is stored
 * as it was (before/after). Prints what happened instead; 1 if it did. */
static int
bug_seen(const char *what, enum kb_err got, enum kb_err want,
    const uint8_t before[32], const uint8_t after[32])
{
	int changed = memcmp(before, after, 32) != 0;

	if (got == want && !changed)
		return 0;
	fprintf(stderr, "  %s: want %s and nothing changed, got %s (%s)%s\n",
	    what, kb_strerror(want), kb_strerror(got),
	    got != KB_OK ? kb_err_msg(got) : "",
	    changed ? ", and what is stored changed" : "");
	kb_err_clear();
	return 1;
}

/* Was: store_env_rewrap (store_lifecycle.c): a version it is given that
 * the environment does not have (retired or replaced meanwhile), or none at
 * all, is skipped without a word (its UPDATE changes no row) and the mode
 * is set anyway: KB_OK, acme/prod customer-managed while its only DEK is
 * still sealed by the platform key, for platform mode. Want the answer
 * store_env_add_version gives a race (KB_ERR_UNAVAILABLE, "changed
 * meanwhile") and nothing changed. */
static void
test_bug_env_rewrap_missing_version(void)
{
	struct store *s = faults_fixture();
	struct store_dek *dv = NULL;
	uint8_t before[32], after[32];
	size_t n = 0;
	int bad = 0;
	enum kb_err e;

	KBT_ASSERT_OK(store_env_dek_list(s, "acme", "prod", &dv, &n));
	KBT_ASSERT_INT(n, ==, 1);
	dv[0].version = 7;
	snprintf(dv[0].key_id, sizeof(dv[0].key_id), "kek-fixed");
	snapshot(before);
	e = store_env_rewrap(s, "acme", "prod", STORE_MODE_CUSTOMER, dv, n, 5);
	free(dv);
	snapshot(after);
	bad += bug_seen("store_env_rewrap of acme/prod with version 7 only", e,
	    KB_ERR_UNAVAILABLE, before, after);
	done(s);
	s = faults_fixture();
	snapshot(before);
	e = store_env_rewrap(
	    s, "acme", "prod", STORE_MODE_CUSTOMER, NULL, 0, 5);
	snapshot(after);
	bad += bug_seen("store_env_rewrap of acme/prod with no version", e,
	    KB_ERR_UNAVAILABLE, before, after);
	done(s);
	KBT_ASSERT_INT(bad, ==, 0);
}

/* Was: store_rewrap_commit (store_keys.c): a job id that does not exist is
 * not checked: KB_OK, the rows re-sealed and the progress recorded
 * nowhere. Want KB_ERR_NOT_FOUND and nothing changed. */
static void
test_bug_rewrap_commit_missing_job(void)
{
	struct store *s = faults_fixture();
	struct store_job job;
	struct store_rewrap rows[1];
	char old[1][STORE_KEY_ID_MAX];
	uint8_t before[32], after[32];
	size_t n = 0;
	int bad;
	enum kb_err e;

	KBT_ASSERT_OK(store_job_get(s, "j-fixed", &job));
	KBT_ASSERT_OK(store_rewrap_fetch_after(s, &job, 0, 0, rows, 1, &n));
	KBT_ASSERT_INT(n, ==, 1);
	snprintf(old[0], sizeof(old[0]), "%s", rows[0].dek.key_id);
	memset(rows[0].dek.wrapped, 0x99, 16);
	snapshot(before);
	e = store_rewrap_commit(s, "j-nope", rows, old, 1, 5);
	snapshot(after);
	bad = bug_seen("store_rewrap_commit for job j-nope", e,
	    KB_ERR_NOT_FOUND, before, after);
	done(s);
	KBT_ASSERT_INT(bad, ==, 0);
}

/* Was: store_tenant_lock (store_lifecycle.c): neither the tenant nor the
 * lock key's tenant is checked: locking tenant "ghost" (none) with acme's
 * active key answers KB_OK, locks acme's key k-active (acme itself stays
 * active) and updates no tenant row. Want KB_ERR_NOT_FOUND and nothing
 * changed. */
static void
test_bug_tenant_lock_missing_tenant(void)
{
	struct store *s = faults_fixture();
	char(*destroy)[STORE_KEY_ID_MAX] = NULL;
	uint8_t before[32], after[32];
	size_t n = 0;
	int bad;
	enum kb_err e;

	snapshot(before);
	e = store_tenant_lock(s, "ghost", "k-active", 5, &destroy, &n);
	if (e == KB_OK)
		free(destroy);
	snapshot(after);
	bad = bug_seen("store_tenant_lock of tenant ghost with acme's key", e,
	    KB_ERR_NOT_FOUND, before, after);
	done(s);
	KBT_ASSERT_INT(bad, ==, 0);
}

/* Was: store_env_add_version, store_env_reset (store_lifecycle.c): an
 * environment deleted for good (its DEKs destroyed) takes a new DEK
 * version: KB_OK, key material stored again under an environment whose
 * state stays "deleted". Only the callers' checks (rpc_envkeys.c) stop it,
 * where store_env_delete_begin and store_env_purge refuse it themselves.
 * Want KB_ERR_FAILED_PRECONDITION and nothing changed. */
static void
test_bug_version_on_deleted_env(void)
{
	struct store *s;
	struct store_dek dek;
	uint8_t before[32], after[32];
	uint32_t v = 0;
	int bad = 0, reset;
	enum kb_err e;

	for (reset = 0; reset < 2; reset++) {
		s = faults_fixture();
		KBT_ASSERT_OK(store_env_delete_finish(s, "acme", "gone", 200));
		KBT_ASSERT_OK(store_env_next_version(s, "acme", "gone", &v));
		make_dek(&dek, 0x31);
		dek.version = v;
		snapshot(before);
		e = reset ? store_env_reset(s, "acme", "gone", &dek, 300)
		          : store_env_add_version(s, "acme", "gone", &dek, 300);
		snapshot(after);
		bad += bug_seen(reset ? "store_env_reset of deleted acme/gone"
		                      : "store_env_add_version to deleted "
		                        "acme/gone",
		    e, KB_ERR_FAILED_PRECONDITION, before, after);
		done(s);
	}
	KBT_ASSERT_INT(bad, ==, 0);
}

/* The names in `dir`, one string (what "creates no file" compares). */
static void
dir_list(const char *dir, char *buf, size_t len)
{
	char cmd[700];
	FILE *p;
	size_t n;

	snprintf(cmd, sizeof(cmd), "ls -A '%s'", dir);
	buf[0] = '\0';
	if ((p = popen(cmd, "r")) != NULL) {
		n = fread(buf, 1, len - 1, p);
		buf[n] = '\0';
		pclose(p);
	}
}

/* What the doctor reads: counts of states on the way out (a state this
 * build does not know counted as it is), pending jobs, the environments a
 * key protects; and a read-only open that creates no file. */
static void
test_doctor_reads(void)
{
	struct store *s = fresh(), *ro = NULL;
	struct store_tenant t;
	struct store_env env;
	struct store_dek dek;
	struct store_state_count *c = NULL;
	struct store_job *j = NULL;
	char names[200], dir[512], before[2000] = "", after[2000] = "", *slash;
	const char *e;
	size_t n = 0;
	int schema = 0, i;

	add_platform_key(s);
	memset(&t, 0, sizeof(t));
	snprintf(t.id, sizeof(t.id), "acme");
	KBT_ASSERT_OK(store_tenant_create(s, &t));
	for (i = 0, e = "prod"; i < 3; i++, e = i == 1 ? "dev" : "old") {
		memset(&env, 0, sizeof(env));
		snprintf(env.tenant_id, sizeof(env.tenant_id), "acme");
		snprintf(env.name, sizeof(env.name), "%s", e);
		snprintf(env.uid, sizeof(env.uid), "%032d", i + 1);
		env.mode = STORE_MODE_PLATFORM;
		env.state = STORE_ENV_ENABLED;
		make_dek(&dek, (uint8_t)i);
		KBT_ASSERT_OK(store_env_create(s, &env, &dek));
	}
	KBT_ASSERT_OK(store_env_set_state(
	    s, "acme", "dev", STORE_ENV_ENABLED, STORE_ENV_LOCKED, 5000));
	KBT_ASSERT_OK(store_env_set_state(
	    s, "acme", "old", STORE_ENV_ENABLED, STORE_ENV_LOCKED, 6000));
	KBT_ASSERT_OK(store_env_purge(s, "acme", "old", 7000));
	KBT_ASSERT_OK(
	    store_key_dependent_envs(s, "kb-platform-1", names, sizeof(names)));
	KBT_ASSERT_STR(names, "acme/dev, acme/prod");
	{
		/* A key state a later build may add, and jobs: a failed
		 * activation a later one finished after (not pending), a
		 * failed rotation, a running upgrade. */
		KBT_ASSERT_OK(store_sql(s,
		    "UPDATE keys SET state = 'pending_deletion', "
		    "update_time_us = 8, delete_request_us = 8, "
		    "delete_final_us = 9 WHERE id = 'kb-platform-1';"
		    "INSERT INTO jobs(id, tenant_id, kind, key_id, state, "
		    "create_time_us, update_time_us) VALUES "
		    "('j-1', 'acme', 'activate', 'k', 'failed', 1, 1), "
		    "('j-2', 'acme', 'activate', 'k', 'done', 2, 2), "
		    "('j-3', NULL, 'rotate-platform', 'p', 'failed', 3, 3), "
		    "('j-4', NULL, 'upgrade-v2', '', 'running', 4, 4);"));
	}
	KBT_ASSERT_OK(store_jobs_pending(s, &j, &n));
	KBT_ASSERT_INT(n, ==, 2);
	KBT_ASSERT_STR(j[0].id, "j-3");
	KBT_ASSERT_STR(j[1].id, "j-4");
	free(j);
	store_close(s);
	s = NULL;

	/* A read-only open creates no file (SQLite): the directory's names
	 * stay what they were. */
	snprintf(dir, sizeof(dir), "%s", dbpath);
	if ((slash = strrchr(dir, '/')) != NULL)
		*slash = '\0';
	if (pg_url == NULL) {
		dir_list(dir, before, sizeof(before));
		KBT_ASSERT(strstr(before, "-wal") == NULL);
	}
	KBT_ASSERT_OK(store_open_readonly(target(), NULL, &ro, &schema));
	KBT_ASSERT_INT(schema, ==, store_schema_version(ro));
	KBT_ASSERT_OK(store_state_counts(ro, &c, &n));
	KBT_ASSERT_INT(n, ==, 3);
	KBT_ASSERT_STR(c[0].kind, "environment");
	KBT_ASSERT_STR(c[0].state, "deleted");
	KBT_ASSERT_STR(c[1].state, "locked");
	KBT_ASSERT_INT(c[1].count, ==, 1);
	KBT_ASSERT_INT(c[1].oldest_us, ==, 5000);
	KBT_ASSERT_STR(c[2].kind, "key");
	KBT_ASSERT_STR(c[2].state, "pending_deletion");
	KBT_ASSERT_INT(c[2].oldest_us, ==, 9);
	free(c);
	/* Read-only: a write is refused. */
	{
		struct store_tenant t2;

		memset(&t2, 0, sizeof(t2));
		snprintf(t2.id, sizeof(t2.id), "beta");
		KBT_ASSERT(store_tenant_create(ro, &t2) != KB_OK);
		kb_err_clear();
	}
	store_close(ro);
	if (pg_url == NULL) {
		dir_list(dir, after, sizeof(after));
		KBT_ASSERT_STR(after, before);
		KBT_ASSERT_ERR(store_open_readonly(
		                   "/nonexistent/kb.db", NULL, &ro, &schema),
		    KB_ERR_NOT_FOUND);
	}
	done(NULL);
}

/* ---- the same cases on PostgreSQL ---- */

/* Run `fn` against $KBT_PG_URL (a PostgreSQL database this test may
 * empty: tests/pg/kbt-pg.sh starts one), or say it was skipped. A failed
 * assertion leaves pg_url set: these cases come last in the table, and
 * each sets it. */
static void
on_pg(kbt_fn fn)
{
	const char *url = getenv("KBT_PG_URL");

	pg_url = NULL;
	if (url == NULL || url[0] == '\0') {
		fprintf(stderr,
		    "  skipped: KBT_PG_URL is not set (ctest -R "
		    "unit/test-store-pg starts a server)\n");
		return;
	}
	pg_url = url;
	fn();
	pg_url = NULL;
}

/* PostgreSQL keeps the version in kb_schema: a reopen migrates nothing, a
 * database from the future is refused. */
static void
test_pg_migrations(void)
{
	struct store *s = fresh();
	struct db_conn *c;
	struct db_stmt *st;
	int64_t v = 0;
	int schema = 0;

	KBT_ASSERT(store_is_postgres(s));
	KBT_ASSERT_OK(store_ping(s));
	/* backup create copies SQLite files only, and says what to use. */
	KBT_ASSERT_ERR(store_snapshot(s, "/nonexistent/copy.db"),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_FAILED_PRECONDITION), "pg_dump");
	c = db_conn_get(s->db);
	if (db_prepare(c,
	        "SELECT version FROM kb_schema WHERE component = 'store'", &st)
	        == KB_OK
	    && db_step(st) == DB_ROW) {
		v = db_column_int64(st, 0);
		db_reset(st);
	}
	db_conn_put(s->db, c);
	KBT_ASSERT_INT(v, ==, store_schema_version(s));
	store_close(s);
	KBT_ASSERT_OK(store_open(pg_url, 2, &s));
	KBT_ASSERT_OK(store_sql(s, "UPDATE kb_schema SET version = 999"));
	store_close(s);
	KBT_ASSERT_ERR(store_open(pg_url, 2, &s), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_CONFIG), "newer than this keybroker");
	/* The doctor still reads it, and tells the version. */
	KBT_ASSERT_OK(store_open_readonly(pg_url, NULL, &s, &schema));
	KBT_ASSERT_INT(schema, ==, 999);
	store_close(s);
}

static void
pg_migrations(void)
{
	on_pg(test_pg_migrations);
}

static void
pg_token_bind(void)
{
	on_pg(test_token_bind);
}

static void
pg_tenants(void)
{
	on_pg(test_tenants);
}

static void
pg_environments(void)
{
	on_pg(test_environments);
}

static void
pg_keys_and_meta(void)
{
	on_pg(test_keys_and_meta);
}

static void
pg_clock(void)
{
	on_pg(test_clock);
}

static void
pg_constraints(void)
{
	on_pg(test_constraints);
}

static void
pg_doctor_reads(void)
{
	on_pg(test_doctor_reads);
}

static void
pg_delete(void)
{
	on_pg(test_delete);
}

/* SQLite-only: the file's pragmas and user_version, a full disk (a
 * SQLite VFS), another process's write lock. */
static const struct kbt_case cases[] = {
    {"/store/migrations-and-pragmas", test_migrations_and_pragmas},
    {"/store/token-bind", test_token_bind}, {"/store/tenants", test_tenants},
    {"/store/environments", test_environments},
    {"/store/keys-and-meta", test_keys_and_meta}, {"/store/clock", test_clock},
    {"/store/writers-write", test_writers_write},
    {"/store/full-disk", test_full_disk}, {"/store/busy", test_busy},
    {"/store/constraints", test_constraints},
    {"/store/bug/token-bind-atomic", test_bug_token_bind_atomic},
    {"/store/bug/env-rewrap-missing-version",
        test_bug_env_rewrap_missing_version},
    {"/store/bug/rewrap-commit-missing-job",
        test_bug_rewrap_commit_missing_job},
    {"/store/bug/tenant-lock-missing-tenant",
        test_bug_tenant_lock_missing_tenant},
    {"/store/bug/version-on-deleted-env", test_bug_version_on_deleted_env},
    {"/store/doctor-reads", test_doctor_reads}, {"/store/delete", test_delete},
    {"/store/pg/migrations", pg_migrations},
    {"/store/pg/token-bind", pg_token_bind}, {"/store/pg/tenants", pg_tenants},
    {"/store/pg/environments", pg_environments},
    {"/store/pg/keys-and-meta", pg_keys_and_meta},
    {"/store/pg/clock", pg_clock}, {"/store/pg/constraints", pg_constraints},
    {"/store/pg/doctor-reads", pg_doctor_reads},
    {"/store/pg/delete", pg_delete}, {NULL, NULL}};

int
main(int argc, char **argv)
{
	return kbt_run(cases, argc, argv);
}
