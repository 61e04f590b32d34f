/* SPDX-License-Identifier: Apache-2.0 */
/* test-db.c: the database layer (broker/db) on a SQLite file and, when
 * KBT_PG_URL names a server (tests/pg/kbt-pg.sh), the same cases on
 * PostgreSQL, each case in a PostgreSQL schema of its own. */
#include "harness.h"

#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sqlite3.h>

#include "db.h"
#include "db_int.h"
#include "kb_err.h"

/* ---- schemas ---- */

/* 1 and 2 run on both; 3 only on SQLite ("" on PostgreSQL). Each records
 * itself in `runs`, so a test sees which ran and how often. */
static const struct db_migration migs[] = {
    {"CREATE TABLE v (id BIGINT PRIMARY KEY, i BIGINT, t TEXT, b BLOB,"
     "  UNIQUE (t));"
     "CREATE TABLE runs (n BIGINT NOT NULL);"
     "INSERT INTO runs(n) VALUES (1);",
        "CREATE TABLE v (id BIGINT PRIMARY KEY, i BIGINT, t TEXT, b BYTEA,"
        "  UNIQUE (t));"
        "CREATE TABLE runs (n BIGINT NOT NULL);"
        "INSERT INTO runs(n) VALUES (1);"},
    {"CREATE TABLE c (k TEXT PRIMARY KEY, n BIGINT NOT NULL CHECK (n >= 0));"
     "INSERT INTO runs(n) VALUES (2);",
        NULL},
    {"INSERT INTO runs(n) VALUES (3);", ""},
    /* Only in `bad`: fails (v exists). */
    {"CREATE TABLE v (x BIGINT);", NULL},
};

static const struct db_schema schema = {"kbt", migs, 3, NULL, 0};
static const struct db_schema older = {"kbt", migs, 2, NULL, 0};
static const struct db_schema bad = {"kbt", migs, 4, NULL, 0};
/* A fresh PostgreSQL database gets the schema at version 2 in one go,
 * then migration 3 (which PostgreSQL skips in `migs`, so: its own). */
static const struct db_migration base_migs[] = {
    {"SELECT 1;", NULL},
    {"SELECT 2;", NULL},
    {"INSERT INTO runs(n) VALUES (3);", NULL},
};
static const struct db_schema based = {"kbt", base_migs, 3,
    "CREATE TABLE v (id BIGINT PRIMARY KEY, i BIGINT, t TEXT, b BYTEA,"
    "  UNIQUE (t));"
    "CREATE TABLE runs (n BIGINT NOT NULL);"
    "CREATE TABLE c (k TEXT PRIMARY KEY, n BIGINT NOT NULL CHECK (n >= 0));"
    "INSERT INTO runs(n) VALUES (100);",
    2};

/* ---- one target per case ---- */

static char target[1024];
static char sqdir[256];
static int on_pg;

/* Make the case's database: a file in a new directory, or a PostgreSQL
 * schema `kbt_<tag>` (made afresh) that the target's search_path names.
 * 0 when the case is skipped (PostgreSQL without KBT_PG_URL). */
static int
setup(int pg, const char *tag)
{
	const char *url = getenv("KBT_PG_URL");
	struct db_config cfg = {0};
	struct db_conn *c;
	struct db *db;
	char sql[256];
	enum kb_err e;

	on_pg = pg;
	sqdir[0] = '\0';
	if (!pg) {
		snprintf(sqdir, sizeof(sqdir), "%s", kbt_tmpdir());
		snprintf(target, sizeof(target), "%s/kb.db", sqdir);
		return 1;
	}
	if (url == NULL || url[0] == '\0') {
		printf("  skipped: KBT_PG_URL is not set "
		       "(tests/pg/kbt-pg.sh start DIR prints one)\n");
		return 0;
	}
	cfg.target = url;
	cfg.conns = 1;
	if ((e = db_open(&cfg, &db)) != KB_OK) {
		fprintf(stderr, "db_open %s: %s\n", url, kb_err_msg(e));
		exit(2);
	}
	c = db_conn_get(db);
	snprintf(sql, sizeof(sql),
	    "DROP SCHEMA IF EXISTS kbt_%s CASCADE; CREATE SCHEMA kbt_%s", tag,
	    tag);
	e = db_exec(c, sql, "making the case's schema");
	db_conn_put(db, c);
	db_close(db);
	if (e != KB_OK) {
		fprintf(stderr, "%s\n", kb_err_msg(e));
		exit(2);
	}
	snprintf(target, sizeof(target),
	    "%s%coptions=-c%%20search_path%%3Dkbt_%s", url,
	    strchr(url, '?') != NULL ? '&' : '?', tag);
	return 1;
}

static void
teardown(void)
{
	if (sqdir[0] != '\0')
		kbt_rmtree(sqdir);
	sqdir[0] = '\0';
}

static enum kb_err
open_with(
    const struct db_schema *s, unsigned conns, int readonly, struct db **out)
{
	struct db_config cfg = {0};

	cfg.target = target;
	cfg.conns = conns;
	cfg.readonly = readonly;
	cfg.schema = s;
	return db_open(&cfg, out);
}

/* The one integer `sql` selects, -1 if none, -2 on failure. */
static int64_t
one_int(struct db *db, const char *sql)
{
	struct db_conn *c = db_conn_get(db);
	struct db_stmt *st;
	int64_t v = -2;
	enum db_step r;

	if (db_prepare_dynamic(c, sql, &st) == KB_OK) {
		r = db_step(st);
		v = r == DB_ROW    ? db_column_int64(st, 0)
		    : r == DB_DONE ? -1
		                   : -2;
		if (r == DB_FAIL)
			fprintf(stderr, "  %s: %s\n", sql,
			    kb_err_msg(db_err(c, "one_int")));
		db_finalize(st);
	}
	db_conn_put(db, c);
	return v;
}

/* Each case runs on both engines. */
#define BOTH(name)                                                             \
	static void name##_sqlite(void)                                        \
	{                                                                      \
		if (setup(0, #name))                                           \
			name();                                                \
		teardown();                                                    \
	}                                                                      \
	static void name##_pg(void)                                            \
	{                                                                      \
		if (setup(1, #name))                                           \
			name();                                                \
		teardown();                                                    \
	}

/* ---- cases ---- */

static void
migrations(void)
{
	struct db *db = NULL;

	KBT_ASSERT_OK(open_with(&schema, 2, 0, &db));
	KBT_ASSERT_INT(db_version(db), ==, 3);
	KBT_ASSERT_INT(db_engine(db), ==, on_pg ? DB_POSTGRES : DB_SQLITE);
	/* 3 is "" on PostgreSQL: nothing ran, the version moved. */
	KBT_ASSERT_INT(
	    one_int(db, "SELECT count(*) FROM runs"), ==, on_pg ? 2 : 3);
	db_close(db);
	db = NULL;
	/* Reopened: nothing runs again. */
	KBT_ASSERT_OK(open_with(&schema, 1, 0, &db));
	KBT_ASSERT_INT(db_version(db), ==, 3);
	KBT_ASSERT_INT(
	    one_int(db, "SELECT count(*) FROM runs"), ==, on_pg ? 2 : 3);
	db_close(db);
	db = NULL;
	/* A database newer than the build: refused, and left alone. */
	KBT_ASSERT_ERR(open_with(&older, 1, 0, &db), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_CONFIG), "newer than this keybroker");
	KBT_ASSERT(db == NULL);
	/* A failing migration: refused, the version stays at the last one
	 * done. */
	KBT_ASSERT(open_with(&bad, 1, 0, &db) != KB_OK);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_STORE), "schema migration 4");
	KBT_ASSERT_OK(open_with(&schema, 1, 0, &db));
	KBT_ASSERT_INT(db_version(db), ==, 3);
	db_close(db);
}
BOTH(migrations)

static void
pg_base(void)
{
	struct db *db = NULL;

	KBT_ASSERT_OK(open_with(&based, 1, 0, &db));
	KBT_ASSERT_INT(db_version(db), ==, 3);
	if (on_pg) {
		/* pg_base, then migration 3 only. */
		KBT_ASSERT_INT(one_int(db, "SELECT sum(n) FROM runs"), ==, 103);
		KBT_ASSERT_INT(one_int(db,
		                   "SELECT version FROM kb_schema WHERE "
		                   "component = 'kbt'"),
		    ==, 3);
	}
	db_close(db);
}

static void
pg_base_pg(void)
{
	if (setup(1, "pg_base"))
		pg_base();
	teardown();
}

struct opener {
	pthread_t t;
	enum kb_err e;
	struct db *db;
};

static void *
open_thread(void *arg)
{
	struct opener *o = arg;

	o->e = open_with(&schema, 1, 0, &o->db);
	return NULL;
}

/* Two brokers starting together migrate once. */
static void
concurrent_migrations(void)
{
	struct opener o[3];
	int i;

	memset(o, 0, sizeof(o));
	for (i = 0; i < 3; i++)
		KBT_ASSERT(
		    pthread_create(&o[i].t, NULL, open_thread, &o[i]) == 0);
	for (i = 0; i < 3; i++)
		pthread_join(o[i].t, NULL);
	for (i = 0; i < 3; i++)
		KBT_ASSERT_OK(o[i].e);
	KBT_ASSERT_INT(
	    one_int(o[0].db, "SELECT count(*) FROM runs"), ==, on_pg ? 2 : 3);
	for (i = 0; i < 3; i++)
		db_close(o[i].db);
}
BOTH(concurrent_migrations)

static void
placeholders_rewrite(void)
{
	static const struct {
		const char *in, *out;
		int n;
	} t[] = {
	    {"SELECT ?, ?", "SELECT $1, $2", 2},
	    {"SELECT ?2, ?, ?1", "SELECT $2, $3, $1", 3},
	    {"SELECT '?', \"a?b\", ? -- ?\n, ? /* ? */",
	        "SELECT '?', \"a?b\", $1 -- ?\n, $2 /* ? */", 2},
	    {"SELECT 'it''s ?', ?", "SELECT 'it''s ?', $1", 1},
	    {"SELECT ?10, ?", "SELECT $10, $11", 11},
	    {"SELECT 1", "SELECT 1", 0},
	};
	size_t i;
	char *s;
	int n;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		KBT_ASSERT((s = db_placeholders_pg(t[i].in, &n)) != NULL);
		KBT_ASSERT_STR(s, t[i].out);
		KBT_ASSERT_INT(n, ==, t[i].n);
		free(s);
	}
	KBT_ASSERT(db_placeholders_pg("SELECT ?0", &n) == NULL);
	KBT_ASSERT(db_placeholders_pg("SELECT ?32767", &n) == NULL);
}

static void
target_safe(void)
{
	static const struct {
		const char *in, *out;
	} t[] = {
	    {"postgresql://u:pw@h:5432/db?password=x&sslmode=require",
	        "postgresql://u@h:5432/db?sslmode=require"},
	    {"postgres://h/db?password=x", "postgres://h/db"},
	    {"postgresql://u:p%40x@h/d?a=1&password=2&b=3",
	        "postgresql://u@h/d?a=1&b=3"},
	    {"postgresql:///keybroker?host=/tmp/x&user=postgres",
	        "postgresql:///keybroker?host=/tmp/x&user=postgres"},
	    {"postgresql://u@h/d", "postgresql://u@h/d"},
	    {"postgresql://h/d?pass%77ord=x&passwordx=1",
	        "postgresql://h/d?passwordx=1"},
	};
	size_t i;
	char *s;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		KBT_ASSERT((s = db_target_safe(t[i].in)) != NULL);
		KBT_ASSERT_STR(s, t[i].out);
		free(s);
	}
}

static void
placeholders(void)
{
	static const char sql[] =
	    "SELECT CAST(?2 AS BIGINT), '?''?', CAST(?1 AS TEXT), "
	    "CAST(? AS BIGINT) /* ? */";
	struct db *db = NULL;
	struct db_conn *c;
	struct db_stmt *st;

	KBT_ASSERT_OK(open_with(&schema, 1, 0, &db));
	c = db_conn_get(db);
	KBT_ASSERT_OK(db_prepare(c, sql, &st));
	db_bind_text(st, 1, "one");
	db_bind_int64(st, 2, 7);
	db_bind_int64(st, 3, 9);
	KBT_ASSERT_INT(db_step(st), ==, DB_ROW);
	KBT_ASSERT_INT(db_column_int64(st, 0), ==, 7);
	KBT_ASSERT_STR(db_column_text(st, 1), "?'?");
	KBT_ASSERT_STR(db_column_text(st, 2), "one");
	KBT_ASSERT_INT(db_column_int64(st, 3), ==, 9);
	KBT_ASSERT_INT(db_step(st), ==, DB_DONE);
	KBT_ASSERT_INT(db_step(st), ==, DB_DONE);
	/* Reset keeps the bindings; prepare again clears them. */
	db_reset(st);
	KBT_ASSERT_INT(db_step(st), ==, DB_ROW);
	KBT_ASSERT_STR(db_column_text(st, 2), "one");
	KBT_ASSERT_OK(db_prepare(c, sql, &st));
	KBT_ASSERT_INT(db_step(st), ==, DB_ROW);
	KBT_ASSERT(db_column_is_null(st, 2));
	/* A parameter the statement does not have is a bug, said so. */
	KBT_ASSERT_OK(db_prepare(c, sql, &st));
	db_bind_int64(st, 4, 1);
	KBT_ASSERT_INT(db_step(st), ==, DB_FAIL);
	KBT_ASSERT_ERR(db_err(c, "binding"), KB_ERR_INTERNAL);
	db_conn_put(db, c);
	db_close(db);
}
BOTH(placeholders)

static void
types(void)
{
	static const char ins[] =
	    "INSERT INTO v(id, i, t, b) VALUES (?, ?, ?, ?)";
	static const char sel[] = "SELECT i, t, b, id FROM v ORDER BY id";
	static const char boolq[] =
	    "SELECT 1 = 1, 1 = 0, CASE WHEN 1 = 1 THEN 5 ELSE 6 END, "
	    "t IS NULL FROM v WHERE id = ?";
	static const uint8_t blob[] = {0, 1, 0, 255, 0};
	static const char utf8[] = "h\xc3\xa9llo \xe2\x9c\x93 \xe6\x97\xa5";
	struct db *db = NULL;
	struct db_conn *c;
	struct db_stmt *st;

	KBT_ASSERT_OK(open_with(&schema, 1, 0, &db));
	c = db_conn_get(db);
	KBT_ASSERT_OK(db_prepare(c, ins, &st));
	db_bind_int64(st, 1, 1);
	db_bind_int64(st, 2, INT64_MAX);
	db_bind_text(st, 3, utf8);
	db_bind_blob(st, 4, blob, sizeof(blob));
	KBT_ASSERT_INT(db_step(st), ==, DB_DONE);
	KBT_ASSERT_OK(db_prepare(c, ins, &st));
	db_bind_int64(st, 1, 2);
	db_bind_int64(st, 2, INT64_MIN);
	db_bind_text(st, 3, "");
	db_bind_blob(st, 4, "", 0);
	KBT_ASSERT_INT(db_step(st), ==, DB_DONE);
	KBT_ASSERT_OK(db_prepare(c, ins, &st));
	db_bind_int64(st, 1, 3);
	db_bind_null(st, 2);
	db_bind_text(st, 3, NULL);
	db_bind_null(st, 4);
	KBT_ASSERT_INT(db_step(st), ==, DB_DONE);

	KBT_ASSERT_OK(db_prepare(c, sel, &st));
	KBT_ASSERT_INT(db_step(st), ==, DB_ROW);
	KBT_ASSERT(db_column_int64(st, 0) == INT64_MAX);
	KBT_ASSERT_STR(db_column_text(st, 1), utf8);
	KBT_ASSERT_INT(db_column_bytes(st, 1), ==, strlen(utf8));
	KBT_ASSERT_INT(db_column_bytes(st, 2), ==, sizeof(blob));
	KBT_ASSERT(memcmp(db_column_blob(st, 2), blob, sizeof(blob)) == 0);
	KBT_ASSERT(!db_column_is_null(st, 2));
	KBT_ASSERT_INT(db_step(st), ==, DB_ROW);
	KBT_ASSERT(db_column_int64(st, 0) == INT64_MIN);
	KBT_ASSERT_STR(db_column_text(st, 1), "");
	KBT_ASSERT(!db_column_is_null(st, 1));
	KBT_ASSERT(!db_column_is_null(st, 2)); /* empty, not NULL */
	KBT_ASSERT_INT(db_column_bytes(st, 2), ==, 0);
	KBT_ASSERT_INT(db_step(st), ==, DB_ROW);
	KBT_ASSERT(db_column_is_null(st, 0));
	KBT_ASSERT_INT(db_column_int64(st, 0), ==, 0);
	KBT_ASSERT(db_column_text(st, 1) == NULL);
	KBT_ASSERT(db_column_blob(st, 2) == NULL);
	KBT_ASSERT_INT(db_column_bytes(st, 2), ==, 0);
	KBT_ASSERT_INT(db_column_int64(st, 3), ==, 3);
	KBT_ASSERT_INT(db_step(st), ==, DB_DONE);

	/* Booleans read 1 or 0 (PostgreSQL's are 't'/'f'). */
	KBT_ASSERT_OK(db_prepare(c, boolq, &st));
	db_bind_int64(st, 1, 3);
	KBT_ASSERT_INT(db_step(st), ==, DB_ROW);
	KBT_ASSERT_INT(db_column_int64(st, 0), ==, 1);
	KBT_ASSERT_INT(db_column_int64(st, 1), ==, 0);
	KBT_ASSERT_INT(db_column_int64(st, 2), ==, 5);
	KBT_ASSERT_INT(db_column_int64(st, 3), ==, 1);
	db_reset(st);
	db_conn_put(db, c);
	db_close(db);
}
BOTH(types)

static void
unique_and_changes(void)
{
	static const char ins[] = "INSERT INTO c(k, n) VALUES (?, ?)";
	static const char ret[] =
	    "INSERT INTO c(k, n) VALUES (?, ?) RETURNING n + 1";
	static const char upd[] = "UPDATE c SET n = n + 1";
	static const char del[] = "DELETE FROM c WHERE k = ?";
	struct db *db = NULL;
	struct db_conn *c;
	struct db_stmt *st;
	const char *keys[] = {"a", "b", "c"};
	int i;

	KBT_ASSERT_OK(open_with(&schema, 1, 0, &db));
	c = db_conn_get(db);
	for (i = 0; i < 3; i++) {
		KBT_ASSERT_OK(db_prepare(c, ins, &st));
		db_bind_text(st, 1, keys[i]);
		db_bind_int64(st, 2, i);
		KBT_ASSERT_INT(db_step(st), ==, DB_DONE);
		KBT_ASSERT_INT(db_changes(c), ==, 1);
	}
	/* The same key again: a unique violation. */
	KBT_ASSERT_OK(db_prepare(c, ins, &st));
	db_bind_text(st, 1, "b");
	db_bind_int64(st, 2, 9);
	KBT_ASSERT_INT(db_step(st), ==, DB_FAIL);
	KBT_ASSERT(db_failed_unique(c));
	KBT_ASSERT(!db_failed_retry(c));
	KBT_ASSERT_ERR(db_err(c, "adding b"), KB_ERR_ALREADY_EXISTS);
	KBT_ASSERT_STR(
	    kb_err_msg(KB_ERR_ALREADY_EXISTS), "adding b: already exists");
	/* Another constraint is not "already exists". */
	KBT_ASSERT_OK(db_prepare(c, ins, &st));
	db_bind_text(st, 1, "neg");
	db_bind_int64(st, 2, -1);
	KBT_ASSERT_INT(db_step(st), ==, DB_FAIL);
	KBT_ASSERT(!db_failed_unique(c));
	KBT_ASSERT_ERR(db_err(c, "adding neg"), KB_ERR_STORE);
	/* RETURNING gives a row and counts as a change. */
	KBT_ASSERT_OK(db_prepare(c, ret, &st));
	db_bind_text(st, 1, "d");
	db_bind_int64(st, 2, 41);
	KBT_ASSERT_INT(db_step(st), ==, DB_ROW);
	KBT_ASSERT_INT(db_column_int64(st, 0), ==, 42);
	KBT_ASSERT_INT(db_step(st), ==, DB_DONE);
	KBT_ASSERT_INT(db_changes(c), ==, 1);
	KBT_ASSERT_OK(db_prepare(c, upd, &st));
	KBT_ASSERT_INT(db_step(st), ==, DB_DONE);
	KBT_ASSERT_INT(db_changes(c), ==, 4);
	KBT_ASSERT_OK(db_prepare(c, del, &st));
	db_bind_text(st, 1, "none");
	KBT_ASSERT_INT(db_step(st), ==, DB_DONE);
	KBT_ASSERT_INT(db_changes(c), ==, 0);
	/* A SELECT changes nothing: the count stays the last change's. */
	KBT_ASSERT_OK(db_exec(c, "SELECT 1", "select"));
	KBT_ASSERT_INT(db_changes(c), ==, 0);
	db_conn_put(db, c);
	db_close(db);
}
BOTH(unique_and_changes)

static enum kb_err
insert_then(struct db_conn *c, void *arg)
{
	static const char ins[] = "INSERT INTO c(k, n) VALUES (?, 1)";
	struct db_stmt *st;
	enum kb_err e;

	if ((e = db_prepare(c, ins, &st)) != KB_OK)
		return e;
	db_bind_text(st, 1, arg != NULL ? "kept" : "lost");
	if (db_step(st) != DB_DONE)
		return db_err(c, "inserting");
	return arg != NULL
	    ? KB_OK
	    : kb_errf(KB_ERR_FAILED_PRECONDITION, "changed mind");
}

static void
transactions(void)
{
	struct db *db = NULL;
	struct db_conn *c;

	KBT_ASSERT_OK(open_with(&schema, 2, 0, &db));
	c = db_conn_get(db);
	KBT_ASSERT_OK(db_begin(c, DB_TXN_WRITE));
	KBT_ASSERT_OK(db_exec(c, "INSERT INTO c(k, n) VALUES ('x', 1)", "x"));
	db_rollback(c);
	db_rollback(c); /* none open: fine */
	db_conn_put(db, c);
	KBT_ASSERT_INT(one_int(db, "SELECT count(*) FROM c"), ==, 0);
	/* db_txn: fn's error rolls back and comes back as it was. */
	KBT_ASSERT_ERR(
	    db_txn(db, insert_then, NULL, "t"), KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_STR(kb_err_msg(KB_ERR_FAILED_PRECONDITION), "changed mind");
	KBT_ASSERT_INT(one_int(db, "SELECT count(*) FROM c"), ==, 0);
	KBT_ASSERT_OK(db_txn(db, insert_then, "yes", "t"));
	KBT_ASSERT_INT(one_int(db, "SELECT count(*) FROM c"), ==, 1);
	/* A unique violation inside: KB_ERR_ALREADY_EXISTS, no retry. */
	KBT_ASSERT_ERR(
	    db_txn(db, insert_then, "yes", "t"), KB_ERR_ALREADY_EXISTS);
	/* A read transaction. */
	c = db_conn_get(db);
	KBT_ASSERT_OK(db_begin(c, DB_TXN_READ));
	KBT_ASSERT_OK(db_exec(c, "SELECT count(*) FROM c", "reading"));
	KBT_ASSERT_OK(db_commit(c));
	KBT_ASSERT_OK(db_ping(db));
	db_conn_put(db, c);
	db_close(db);
}
BOTH(transactions)

struct bump {
	struct db *db;
	int calls;
};

/* Read n, let "another broker" change it after our snapshot (first call
 * only), write n + 1. */
static enum kb_err
bump(struct db_conn *c, void *arg)
{
	static const char get[] = "SELECT n FROM c WHERE k = 'r'";
	static const char set[] = "UPDATE c SET n = ? WHERE k = 'r'";
	struct bump *b = arg;
	struct db_stmt *st;
	struct db_conn *o;
	enum kb_err e;
	int64_t n;

	if ((e = db_prepare(c, get, &st)) != KB_OK)
		return e;
	if (db_step(st) != DB_ROW)
		return db_err(c, "reading");
	n = db_column_int64(st, 0);
	db_reset(st);
	if (b->calls++ == 0) {
		o = db_conn_get(b->db);
		e = db_exec(
		    o, "UPDATE c SET n = n + 10 WHERE k = 'r'", "other");
		db_conn_put(b->db, o);
		if (e != KB_OK)
			return e;
	}
	if ((e = db_prepare(c, set, &st)) != KB_OK)
		return e;
	db_bind_int64(st, 1, n + 1);
	if (db_step(st) != DB_DONE)
		return db_err(c, "bumping");
	return KB_OK;
}

static void
retry_pg(void)
{
	struct db *db = NULL;
	struct db_conn *a, *b;
	struct db_stmt *st;
	struct bump arg;

	if (!setup(1, "retry"))
		return;
	KBT_ASSERT_OK(open_with(&schema, 2, 0, &db));
	a = db_conn_get(db);
	KBT_ASSERT_OK(db_exec(a, "INSERT INTO c(k, n) VALUES ('r', 0)", "r"));
	/* Two connections, one row: a serialization failure. */
	b = db_conn_get(db);
	KBT_ASSERT_OK(db_begin(a, DB_TXN_WRITE));
	KBT_ASSERT_OK(db_exec(a, "SELECT n FROM c WHERE k = 'r'", "read"));
	KBT_ASSERT_OK(db_exec(b, "UPDATE c SET n = 5 WHERE k = 'r'", "b"));
	KBT_ASSERT_OK(
	    db_prepare_dynamic(a, "UPDATE c SET n = n + 1 WHERE k = 'r'", &st));
	KBT_ASSERT_INT(db_step(st), ==, DB_FAIL);
	db_finalize(st);
	KBT_ASSERT(db_failed_retry(a));
	KBT_ASSERT_ERR(db_err(a, "bumping"), KB_ERR_UNAVAILABLE);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_UNAVAILABLE), "retry");
	/* What follows in the failed transaction keeps the verdict. */
	KBT_ASSERT(db_exec(a, "SELECT 1", "after") != KB_OK);
	KBT_ASSERT(db_failed_retry(a));
	KBT_ASSERT(db_commit(a) != KB_OK);
	KBT_ASSERT(db_failed_retry(a));
	db_rollback(a);
	db_conn_put(db, a);
	db_conn_put(db, b);
	KBT_ASSERT_INT(one_int(db, "SELECT n FROM c WHERE k = 'r'"), ==, 5);
	/* db_txn runs fn again and it goes through. */
	memset(&arg, 0, sizeof(arg));
	arg.db = db;
	KBT_ASSERT_OK(db_txn(db, bump, &arg, "bumping"));
	KBT_ASSERT_INT(arg.calls, ==, 2);
	KBT_ASSERT_INT(one_int(db, "SELECT n FROM c WHERE k = 'r'"), ==, 16);
	db_close(db);
	teardown();
}

static void
readonly(void)
{
	struct db *db = NULL, *ro = NULL;
	struct db_conn *c;

	if (on_pg) {
		/* Nothing there yet: version 0, nothing made. */
		KBT_ASSERT_OK(open_with(&schema, 1, 1, &ro));
		KBT_ASSERT_INT(db_version(ro), ==, 0);
		db_close(ro);
		ro = NULL;
	} else {
		KBT_ASSERT_ERR(open_with(&schema, 1, 1, &ro), KB_ERR_NOT_FOUND);
		KBT_ASSERT(access(target, F_OK) != 0);
	}
	KBT_ASSERT_OK(open_with(&schema, 1, 0, &db));
	c = db_conn_get(db);
	KBT_ASSERT_OK(
	    db_exec(c, "INSERT INTO c(k, n) VALUES ('a', 1)", "seeding"));
	db_conn_put(db, c);
	/* Beside a running broker (SQLite: its -wal is there). */
	KBT_ASSERT_OK(open_with(&older, 4, 1, &ro));
	KBT_ASSERT_INT(db_version(ro), ==, 3);
	KBT_ASSERT_INT(one_int(ro, "SELECT count(*) FROM c"), ==, 1);
	c = db_conn_get(ro);
	KBT_ASSERT_ERR(db_exec(c, "INSERT INTO c(k, n) VALUES ('b', 1)", "w"),
	    KB_ERR_READ_ONLY);
	db_conn_put(ro, c);
	db_close(ro);
	ro = NULL;
	db_close(db);
	/* After a clean stop (SQLite: immutable, no file made). */
	KBT_ASSERT_OK(open_with(&schema, 1, 1, &ro));
	if (!on_pg) {
		char wal[1100];

		snprintf(wal, sizeof(wal), "%s-wal", target);
		KBT_ASSERT(access(wal, F_OK) != 0);
	}
	KBT_ASSERT_INT(one_int(ro, "SELECT count(*) FROM c"), ==, 1);
	c = db_conn_get(ro);
	KBT_ASSERT_ERR(db_exec(c, "DELETE FROM c", "w"), KB_ERR_READ_ONLY);
	db_conn_put(ro, c);
	db_close(ro);
}
BOTH(readonly)

static void
engine_facts(void)
{
	struct db *db = NULL;
	struct db_conn *c;

	KBT_ASSERT_OK(open_with(&schema, 2, 0, &db));
	c = db_conn_get(db);
	KBT_ASSERT_CONTAINS(
	    db_engine_version(db), on_pg ? "PostgreSQL 1" : "SQLite 3.");
	KBT_ASSERT_INT(db_conn_engine(c), ==, db_engine(db));
	KBT_ASSERT((db_conn_sqlite(c) != NULL) == !on_pg);
	KBT_ASSERT_STR(db_sql(c, "a", "b"), on_pg ? "b" : "a");
	if (!on_pg) {
		KBT_ASSERT_STR(db_target(db), target);
		KBT_ASSERT_INT(one_int(db, "PRAGMA foreign_keys"), ==, 1);
		KBT_ASSERT_INT(one_int(db, "PRAGMA synchronous"), ==, 2);
		KBT_ASSERT_INT(one_int(db, "PRAGMA busy_timeout"), ==, 10000);
	}
	db_conn_put(db, c);
	db_close(db);
}
BOTH(engine_facts)

static void
sqlite_wal(void)
{
	struct db *db = NULL;
	struct db_conn *c;
	struct db_stmt *st;

	if (!setup(0, "wal"))
		return;
	KBT_ASSERT_OK(open_with(&schema, 1, 0, &db));
	c = db_conn_get(db);
	KBT_ASSERT_OK(db_prepare_dynamic(c, "PRAGMA journal_mode", &st));
	KBT_ASSERT_INT(db_step(st), ==, DB_ROW);
	KBT_ASSERT_STR(db_column_text(st, 0), "wal");
	db_finalize(st);
	db_conn_put(db, c);
	db_close(db);
	teardown();
}

/* No server needed: an unreachable one, and the password kept out. */
static void
pg_unreachable(void)
{
	struct db_config cfg = {0};
	struct db *db = NULL;
	enum kb_err e;

	cfg.target = "postgresql:///kb?host=/nonexistent-kbt&password=hunter2";
	e = db_open(&cfg, &db);
	KBT_ASSERT_ERR(e, KB_ERR_UNAVAILABLE);
	KBT_ASSERT_CONTAINS(kb_err_msg(e), "unreachable");
	KBT_ASSERT_CONTAINS(kb_err_msg(e), "retry");
	KBT_ASSERT(strstr(kb_err_msg(e), "hunter2") == NULL);
	/* A target libpq cannot parse. */
	cfg.target = "postgresql://h/db?nosuchoption=1";
	KBT_ASSERT_ERR(db_open(&cfg, &db), KB_ERR_CONFIG);
}

static void
pg_password_file(void)
{
	struct db_config cfg = {0};
	struct db *db = NULL;
	char pw[512];
	FILE *f;

	if (!setup(1, "pwfile"))
		return;
	snprintf(pw, sizeof(pw), "%s/pw", kbt_tmpdir());
	KBT_ASSERT((f = fopen(pw, "w")) != NULL);
	fputs("s3cret\n", f);
	fclose(f);
	chmod(pw, 0644);
	cfg.target = target;
	cfg.password_file = pw;
	KBT_ASSERT_ERR(db_open(&cfg, &db), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG), "chmod 600");
	chmod(pw, 0600);
	/* The test server trusts us: the password is sent, not needed. */
	KBT_ASSERT_OK(db_open(&cfg, &db));
	KBT_ASSERT_OK(db_ping(db));
	db_close(db);
	*strrchr(pw, '/') = '\0';
	kbt_rmtree(pw);
}

/* A connection the server dropped is made again when next taken. */
static void
pg_reconnect(void)
{
	static const char sql[] = "SELECT count(*) FROM c WHERE n > ?";
	struct db *db = NULL;
	struct db_conn *a, *b;
	struct db_stmt *st;
	char kill[128];
	int64_t pid;

	if (!setup(1, "reconnect"))
		return;
	KBT_ASSERT_OK(open_with(&schema, 2, 0, &db));
	a = db_conn_get(db);
	b = db_conn_get(db);
	KBT_ASSERT_OK(db_prepare(a, sql, &st));
	db_bind_int64(st, 1, 0);
	KBT_ASSERT_INT(db_step(st), ==, DB_ROW);
	KBT_ASSERT_OK(db_prepare_dynamic(a, "SELECT pg_backend_pid()", &st));
	KBT_ASSERT_INT(db_step(st), ==, DB_ROW);
	pid = db_column_int64(st, 0);
	db_finalize(st);
	snprintf(kill, sizeof(kill), "SELECT pg_terminate_backend(%lld)",
	    (long long)pid);
	KBT_ASSERT_OK(db_exec(b, kill, "terminating"));
	usleep(100000);
	KBT_ASSERT_OK(db_prepare(a, sql, &st));
	db_bind_int64(st, 1, 0);
	KBT_ASSERT_INT(db_step(st), ==, DB_FAIL);
	KBT_ASSERT_ERR(db_err(a, "counting"), KB_ERR_UNAVAILABLE);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_UNAVAILABLE), "unreachable");
	db_conn_put(db, a);
	db_conn_put(db, b);
	/* Taken again: reconnected, the statement prepared afresh. */
	a = db_conn_get(db);
	KBT_ASSERT_OK(db_prepare(a, sql, &st));
	db_bind_int64(st, 1, 0);
	KBT_ASSERT_INT(db_step(st), ==, DB_ROW);
	KBT_ASSERT_INT(db_column_int64(st, 0), ==, 0);
	db_conn_put(db, a);
	KBT_ASSERT_OK(db_ping(db));
	db_close(db);
}

/* Two handles on one database, as two brokers: a lock one holds the other
 * cannot take, until it is released or its holder's session ends (a killed
 * broker); a waiting taker gets it then. SQLite grants every lock. */
struct lock_waiter {
	struct db *db;
	enum kb_err e;
	struct db_lock *l;
};

static void *
lock_wait_main(void *p)
{
	struct lock_waiter *w = p;

	w->e = db_lock(w->db, "kbt.wait", 1, &w->l);
	return NULL;
}

static void
locks(int pg)
{
	struct db *a = NULL, *b = NULL;
	struct db_lock *la = NULL, *lb = NULL, *l2 = NULL;
	struct lock_waiter w = {0};
	pthread_t t;
	pid_t child;
	int pfd[2];
	char ch;

	if (!setup(pg, "locks"))
		return;
	KBT_ASSERT_OK(open_with(&schema, 1, 0, &a));
	KBT_ASSERT_OK(open_with(&schema, 1, 0, &b));
	KBT_ASSERT_OK(db_lock(a, "kbt.jobs", 0, &la));
	KBT_ASSERT_INT(db_lock_alive(la), ==, 1);
	if (!pg) {
		/* One broker per file: granted at once. */
		KBT_ASSERT_OK(db_lock(b, "kbt.jobs", 0, &lb));
		db_unlock(lb);
		db_unlock(la);
		db_close(a);
		db_close(b);
		teardown();
		return;
	}
	KBT_ASSERT_ERR(
	    db_lock(b, "kbt.jobs", 0, &lb), KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_FAILED_PRECONDITION), "another broker");
	/* Another name is free; released, the first is free for b. */
	KBT_ASSERT_OK(db_lock(b, "kbt.sweeper", 0, &l2));
	db_unlock(l2);
	db_unlock(la);
	KBT_ASSERT_OK(db_lock(b, "kbt.jobs", 0, &lb));
	/* Reused connection: a takes it again once b lets go. */
	db_unlock(lb);
	KBT_ASSERT_OK(db_lock(a, "kbt.jobs", 0, &la));
	db_unlock(la);
	db_close(a);
	/* A waiter gets the lock when its holder is SIGKILLed: a child
	 * process takes it, and dies. */
	KBT_ASSERT_INT(pipe(pfd), ==, 0);
	if ((child = fork()) == 0) {
		struct db *c;

		if (open_with(&schema, 1, 0, &c) != KB_OK
		    || db_lock(c, "kbt.wait", 0, &l2) != KB_OK
		    || write(pfd[1], "x", 1) != 1)
			_exit(1);
		pause();
		_exit(0);
	}
	KBT_ASSERT_INT(child, >, 0);
	KBT_ASSERT_INT(read(pfd[0], &ch, 1), ==, 1);
	w.db = b;
	KBT_ASSERT_INT(pthread_create(&t, NULL, lock_wait_main, &w), ==, 0);
	usleep(300000);
	KBT_ASSERT_INT(w.l == NULL, ==, 1);
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	pthread_join(t, NULL);
	close(pfd[0]);
	close(pfd[1]);
	KBT_ASSERT_OK(w.e);
	KBT_ASSERT_INT(db_lock_alive(w.l), ==, 1);
	db_unlock(w.l);
	db_close(b);
}

static void
locks_sqlite(void)
{
	locks(0);
}

static void
locks_pg(void)
{
	locks(1);
}

static const struct kbt_case cases[] = {
    {"/db/placeholders-rewrite", placeholders_rewrite},
    {"/db/target-safe", target_safe}, {"/db/pg-unreachable", pg_unreachable},
    {"/db/sqlite/migrations", migrations_sqlite},
    {"/db/sqlite/concurrent-migrations", concurrent_migrations_sqlite},
    {"/db/sqlite/placeholders", placeholders_sqlite},
    {"/db/sqlite/types", types_sqlite},
    {"/db/sqlite/unique-and-changes", unique_and_changes_sqlite},
    {"/db/sqlite/transactions", transactions_sqlite},
    {"/db/sqlite/readonly", readonly_sqlite},
    {"/db/sqlite/engine", engine_facts_sqlite}, {"/db/sqlite/wal", sqlite_wal},
    {"/db/pg/migrations", migrations_pg}, {"/db/pg/base", pg_base_pg},
    {"/db/pg/concurrent-migrations", concurrent_migrations_pg},
    {"/db/pg/placeholders", placeholders_pg}, {"/db/pg/types", types_pg},
    {"/db/pg/unique-and-changes", unique_and_changes_pg},
    {"/db/pg/transactions", transactions_pg}, {"/db/pg/retry", retry_pg},
    {"/db/pg/readonly", readonly_pg}, {"/db/pg/engine", engine_facts_pg},
    {"/db/pg/password-file", pg_password_file},
    {"/db/pg/reconnect", pg_reconnect}, {"/db/sqlite/locks", locks_sqlite},
    {"/db/pg/locks", locks_pg}, {NULL, NULL}};

int
main(int argc, char **argv)
{
	return kbt_run(cases, argc, argv);
}
