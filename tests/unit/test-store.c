/* SPDX-License-Identifier: Apache-2.0 */
/* test-store.c: the SQLite store against real database files. */
#include "harness.h"

#include <sqlite3.h>

#include "store.h"

static char dbpath[512];

static struct store *
fresh(void)
{
	struct store *s = NULL;
	const char *dir = kbt_tmpdir();

	snprintf(dbpath, sizeof(dbpath), "%s/kb.db", dir);
	if (store_open(dbpath, 3, &s) != KB_OK) {
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
	snprintf(dir, sizeof(dir), "%s", dbpath);
	if ((slash = strrchr(dir, '/')) != NULL)
		*slash = '\0';
	kbt_rmtree(dir);
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
	KBT_ASSERT(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL) == SQLITE_OK);
	KBT_ASSERT(sqlite3_step(st) == SQLITE_ROW);
	KBT_ASSERT_STR((const char *)sqlite3_column_text(st, 0), "wal");
	sqlite3_finalize(st);
	KBT_ASSERT(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK);
	KBT_ASSERT(sqlite3_step(st) == SQLITE_ROW);
	KBT_ASSERT_INT(sqlite3_column_int(st, 0), ==, store_schema_version(s));
	sqlite3_finalize(st);
	/* A database from the future is refused. */
	KBT_ASSERT(sqlite3_exec(db, "PRAGMA user_version=999", NULL, NULL, NULL) == SQLITE_OK);
	sqlite3_close(db);
	store_close(s);
	KBT_ASSERT_ERR(store_open(dbpath, 2, &s), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG), "newer than this keybroker");
	KBT_ASSERT_OK(sqlite3_open(dbpath, &db) == SQLITE_OK ? KB_OK : KB_ERR_STORE);
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
	KBT_ASSERT_ERR(store_token_bind(s, "other", "ffff"), KB_ERR_TOKEN_MISMATCH);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_TOKEN_MISMATCH),
	    "belongs to token 'keybroker' (serial abc123)");
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_TOKEN_MISMATCH),
	    "configured token is 'other' (serial ffff)");
	KBT_ASSERT_ERR(store_token_bind(s, "keybroker", "ffff"), KB_ERR_TOKEN_MISMATCH);
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
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_ALREADY_EXISTS), "tenant \"acme\" already exists");
	KBT_ASSERT_OK(store_tenant_get(s, "acme", &got));
	KBT_ASSERT_STR(got.display_name, "Acme Corp");
	KBT_ASSERT_INT(got.create_time_us, ==, 42);
	KBT_ASSERT_INT(got.env_count, ==, 0);
	KBT_ASSERT_ERR(store_tenant_get(s, "nope", &got), KB_ERR_NOT_FOUND);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_NOT_FOUND), "tenant \"nope\" does not exist");

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
	snprintf(dek.key_id, sizeof(dek.key_id), "no-such-key");
	KBT_ASSERT(store_env_create(s, &env, &dek) != KB_OK);
	KBT_ASSERT_ERR(store_env_get(s, "acme", "dev", &got), KB_ERR_NOT_FOUND);

	KBT_ASSERT_OK(store_env_get(s, "acme", "prod", &got));
	KBT_ASSERT_INT(got.mode, ==, STORE_MODE_PLATFORM);
	KBT_ASSERT_INT(got.state, ==, STORE_ENV_ENABLED);
	KBT_ASSERT_INT(got.dek_version, ==, 1);
	KBT_ASSERT_STR(got.key_id, "kb-platform-1");
	KBT_ASSERT_STR(got.wrap_alg, "RSA-OAEP-SHA1");
	KBT_ASSERT_ERR(store_env_get(s, "acme", "nope", &got), KB_ERR_NOT_FOUND);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_NOT_FOUND), "environment \"nope\" does not exist in tenant \"acme\"");
	KBT_ASSERT_ERR(store_env_get(s, "ghost", "prod", &got), KB_ERR_NOT_FOUND);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_NOT_FOUND), "tenant \"ghost\" does not exist");

	KBT_ASSERT_OK(store_env_dek(s, "acme", "prod", 0, &got, &gotdek));
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
	KBT_ASSERT_OK(store_open(dbpath, 2, &s));
	KBT_ASSERT_OK(store_env_dek(s, "acme", "prod", 0, &got, &gotdek));
	KBT_ASSERT_INT(gotdek.wrapped[0], ==, 0xab);
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
	KBT_ASSERT_ERR(store_meta_get(s, "x", buf, sizeof(buf)), KB_ERR_NOT_FOUND);
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
	k.mark_us = 10;        /* lower: ignored */
	k.jump_from_us = k.jump_to_us = 0;
	KBT_ASSERT_OK(store_clock_put(s, &k));
	memset(&k, 0, sizeof(k));
	KBT_ASSERT_OK(store_clock_get(s, &k));
	KBT_ASSERT_INT(k.mark_us, ==, 5000);
	KBT_ASSERT_INT(k.kept, ==, 1);
	KBT_ASSERT_INT(k.jump_from_us, ==, 0);
	KBT_ASSERT_STR(k.confirm_by, "ops");

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
	/* (Schema 5's quorum tables go too: the upgrade makes them again.) */
	KBT_ASSERT(sqlite3_exec(db, "DROP TABLE clock; DROP TABLE "
	    "quorum_policies; DROP TABLE approval_requests; DROP TABLE "
	    "approvals; PRAGMA user_version=3; "
	    "UPDATE tenants SET lock_time_us = 9000", NULL, NULL, NULL)
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

static const struct kbt_case cases[] = {
	{ "/store/migrations-and-pragmas", test_migrations_and_pragmas },
	{ "/store/token-bind", test_token_bind },
	{ "/store/tenants", test_tenants },
	{ "/store/environments", test_environments },
	{ "/store/keys-and-meta", test_keys_and_meta },
	{ "/store/clock", test_clock },
	{ NULL, NULL }
};

int
main(int argc, char **argv)
{
	return kbt_run(cases, argc, argv);
}
