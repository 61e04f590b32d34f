/* SPDX-License-Identifier: Apache-2.0 */
/* db.c: the database layer's shared part: open and the pool, the statement
 * cache, placeholders for PostgreSQL, versioned migrations and
 * transactions with retry; the engines are db_sqlite.c and db_pg.c. */
#include "db_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kb_secmem.h"

/* How many times db_txn runs fn again after a conflict. */
#define DB_TXN_RETRIES 8

static int
is_postgres_target(const char *t)
{
	return strncmp(t, "postgresql://", 13) == 0
	    || strncmp(t, "postgres://", 11) == 0;
}

void
db_fail_internal(struct db_conn *c, const char *fmt, ...)
{
	va_list ap;

	c->fail_unique = c->fail_retry = 0;
	c->fail_internal = 1;
	va_start(ap, fmt);
	vsnprintf(c->fail_msg, sizeof(c->fail_msg), fmt, ap);
	va_end(ap);
}

void
db_fail_clear(struct db_conn *c)
{
	c->fail_unique = c->fail_retry = c->fail_internal = 0;
	c->fail_msg[0] = '\0';
}

/* ---- placeholders and targets ---- */

char *
db_placeholders_pg(const char *sql, int *nparams)
{
	size_t len = strlen(sql), o = 0;
	const char *p = sql;
	char *out;
	long max = 0;

	*nparams = 0;
	/* '?' (1 byte) becomes at most "$32766" (6). */
	if ((out = malloc(len * 6 + 1)) == NULL)
		return NULL;
	while (*p != '\0') {
		if (*p == '\'' || *p == '"') {
			/* A literal or an identifier, copied whole: a doubled
			 * quote inside closes and reopens it, so it needs no
			 * case of its own. */
			char q = *p;

			out[o++] = *p++;
			while (*p != '\0' && *p != q)
				out[o++] = *p++;
			if (*p != '\0')
				out[o++] = *p++;
		} else if (p[0] == '-' && p[1] == '-') {
			while (*p != '\0' && *p != '\n')
				out[o++] = *p++;
		} else if (p[0] == '/' && p[1] == '*') {
			out[o++] = *p++;
			out[o++] = *p++;
			while (*p != '\0' && !(p[0] == '*' && p[1] == '/'))
				out[o++] = *p++;
			if (*p != '\0') {
				out[o++] = *p++;
				out[o++] = *p++;
			}
		} else if (*p == '?') {
			long n;

			p++;
			if (*p >= '0' && *p <= '9') {
				char *end;

				n = strtol(p, &end, 10);
				p = end;
			} else
				n = max + 1;
			if (n < 1 || n > 32766) {
				free(out);
				return NULL;
			}
			if (n > max)
				max = n;
			o += (size_t)sprintf(out + o, "$%ld", n);
		} else
			out[o++] = *p++;
	}
	out[o] = '\0';
	*nparams = (int)max;
	return out;
}

/* Whether the query parameter at `p` (`n` bytes) is "password=...", its
 * name percent-decoded as libpq decodes it. */
static int
is_password_param(const char *p, size_t n)
{
	static const char want[] = "password";
	size_t i = 0, k = 0;

	while (i < n && p[i] != '=') {
		int ch = (unsigned char)p[i];

		if (ch == '%' && i + 2 < n) {
			char hex[3] = {p[i + 1], p[i + 2], '\0'};

			ch = (int)strtol(hex, NULL, 16);
			i += 3;
		} else
			i++;
		if (k >= sizeof(want) - 1 || ch != want[k])
			return 0;
		k++;
	}
	return i < n && k == sizeof(want) - 1;
}

/* Copy the URI query `q` to `out` without any "password=..." in it. */
static void
strip_password_param(const char *q, char *out)
{
	const char *p = q;
	int first = 1;

	while (*p != '\0') {
		const char *end = strchr(p, '&');
		size_t n = end != NULL ? (size_t)(end - p) : strlen(p);

		if (!is_password_param(p, n)) {
			if (!first)
				*out++ = '&';
			memcpy(out, p, n);
			out += n;
			first = 0;
		}
		p += n;
		if (*p == '&')
			p++;
	}
	*out = '\0';
}

char *
db_target_safe(const char *target)
{
	const char *scheme, *auth, *p, *q;
	char *out;
	size_t o;

	if ((out = malloc(strlen(target) + 1)) == NULL)
		return NULL;
	if ((scheme = strstr(target, "://")) == NULL) {
		strcpy(out, target);
		return out;
	}
	auth = scheme + 3;
	/* As libpq reads a URI: credentials end at the first '@' before any
	 * '/'; the password is after the first ':' in them. */
	for (p = auth; *p != '\0' && *p != '@' && *p != '/'; p++)
		;
	o = (size_t)(auth - target);
	memcpy(out, target, o);
	if (*p == '@') {
		const char *colon = memchr(auth, ':', (size_t)(p - auth));
		size_t n = (size_t)((colon != NULL ? colon : p) - auth);

		memcpy(out + o, auth, n);
		o += n;
		auth = p;
	}
	if ((q = strchr(auth, '?')) == NULL) {
		strcpy(out + o, auth);
		return out;
	}
	memcpy(out + o, auth, (size_t)(q - auth) + 1);
	o += (size_t)(q - auth) + 1;
	strip_password_param(q + 1, out + o);
	o = strlen(out);
	if (out[o - 1] == '?')
		out[o - 1] = '\0';
	return out;
}

/* ---- the statement cache ---- */

static size_t
slot_of(const void *key, size_t nslots)
{
	uint64_t h = (uint64_t)(uintptr_t)key;

	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return (size_t)h & (nslots - 1);
}

static struct db_stmt *
cache_find(struct db_conn *c, const char *sql)
{
	size_t i;

	if (c->nslots == 0)
		return NULL;
	for (i = slot_of(sql, c->nslots); c->slots[i] != NULL;
	     i = (i + 1) & (c->nslots - 1))
		if (c->slots[i]->key == sql)
			return c->slots[i];
	return NULL;
}

static int
cache_add(struct db_conn *c, struct db_stmt *st)
{
	size_t i;

	if ((c->nused + 1) * 2 > c->nslots) {
		size_t n = c->nslots ? c->nslots * 2 : 64, j;
		struct db_stmt **ns = calloc(n, sizeof(*ns));

		if (ns == NULL)
			return -1;
		for (j = 0; j < c->nslots; j++) {
			if (c->slots[j] == NULL)
				continue;
			for (i = slot_of(c->slots[j]->key, n); ns[i] != NULL;
			     i = (i + 1) & (n - 1))
				;
			ns[i] = c->slots[j];
		}
		free(c->slots);
		c->slots = ns;
		c->nslots = n;
	}
	for (i = slot_of(st->key, c->nslots); c->slots[i] != NULL;
	     i = (i + 1) & (c->nslots - 1))
		;
	c->slots[i] = st;
	c->nused++;
	return 0;
}

void
db_conn_free(struct db_conn *c)
{
	const struct db_ops *ops;
	size_t i;

	if (c == NULL)
		return;
	ops = c->ops;
	for (i = 0; i < c->nslots; i++)
		if (c->slots[i] != NULL)
			ops->stmt_free(c->slots[i]);
	free(c->slots);
	c->slots = NULL;
	c->nslots = c->nused = 0;
	ops->conn_close(c);
}

/* ---- migrations ---- */

/* The schema version on `c`; *present 0 when PostgreSQL has no row for the
 * component (SQLite always has one: user_version). */
static enum kb_err
version_read(struct db_conn *c, const char *component, int *v, int *present)
{
	static const char sq[] = "PRAGMA user_version";
	static const char pg_table[] =
	    "SELECT to_regclass('kb_schema') IS NOT NULL";
	static const char pg[] =
	    "SELECT version FROM kb_schema WHERE component = ?";
	struct db_stmt *st;
	enum kb_err e;
	enum db_step r;

	*v = 0;
	*present = 0;
	if (c->ops->engine == DB_POSTGRES) {
		if ((e = db_prepare(c, pg_table, &st)) != KB_OK)
			return e;
		if ((r = db_step(st)) != DB_ROW)
			return db_err(c, "reading the schema version");
		r = db_column_int64(st, 0) != 0 ? DB_ROW : DB_DONE;
		db_reset(st);
		if (r != DB_ROW)
			return KB_OK;
		if ((e = db_prepare(c, pg, &st)) != KB_OK)
			return e;
		db_bind_text(st, 1, component);
	} else if ((e = db_prepare(c, sq, &st)) != KB_OK)
		return e;
	r = db_step(st);
	if (r == DB_FAIL)
		return db_err(c, "reading the schema version");
	if (r == DB_ROW) {
		*v = (int)db_column_int64(st, 0);
		*present = 1;
	}
	db_reset(st);
	return KB_OK;
}

static enum kb_err
version_write(struct db_conn *c, const char *component, int v)
{
	static const char pg[] =
	    "INSERT INTO kb_schema(component, version) VALUES (?, ?) "
	    "ON CONFLICT (component) DO UPDATE SET version = "
	    "excluded.version";
	struct db_stmt *st;
	char bump[64];
	enum kb_err e;

	if (c->ops->engine == DB_SQLITE) {
		snprintf(bump, sizeof(bump), "PRAGMA user_version=%d;", v);
		return db_exec(c, bump, "migrating");
	}
	if ((e = db_prepare(c, pg, &st)) != KB_OK)
		return e;
	db_bind_text(st, 1, component);
	db_bind_int64(st, 2, v);
	if (db_step(st) == DB_FAIL)
		return db_err(c, "recording the schema version");
	db_reset(st);
	return KB_OK;
}

/* The advisory lock key of a component (FNV-1a 64 of its name). */
static int64_t
lock_key(const char *component)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	const char *p;

	for (p = "keybroker/"; *p != '\0'; p++)
		h = (h ^ (unsigned char)*p) * 0x100000001b3ULL;
	for (p = component; *p != '\0'; p++)
		h = (h ^ (unsigned char)*p) * 0x100000001b3ULL;
	return (int64_t)h;
}

/* Begin a migration step holding the component's lock: SQLite's write
 * lock, PostgreSQL's advisory lock. READ COMMITTED on PostgreSQL so that
 * the version read after the lock is the one a broker that held it before
 * committed. */
static enum kb_err
migration_begin(struct db_conn *c, const char *component)
{
	char sql[96];
	enum kb_err e;

	if (c->ops->engine == DB_SQLITE)
		return db_exec(c, "BEGIN IMMEDIATE", "migrating");
	c->ops->conn_check(c);
	if ((e = db_exec(
	         c, "BEGIN ISOLATION LEVEL READ COMMITTED", "migrating"))
	    != KB_OK)
		return e;
	snprintf(sql, sizeof(sql), "SELECT pg_advisory_xact_lock(%lld)",
	    (long long)lock_key(component));
	return db_exec(c, sql, "taking the migration lock");
}

static enum kb_err
newer_err(struct db *db, const struct db_schema *s, int v)
{
	return kb_errf(KB_ERR_CONFIG,
	    "database %s has %s schema version %d, newer than this "
	    "keybroker knows (%d): use a newer keybrokerd",
	    db->safe, s->component, v, s->n);
}

static enum kb_err
migrate(struct db *db, struct db_conn *c, const struct db_schema *s)
{
	enum kb_err e;
	int v, present, done;

	if ((e = version_read(c, s->component, &v, &present)) != KB_OK)
		return kb_err_wrap(e, "%s", db->safe);
	if (present && v > s->n)
		return newer_err(db, s, v);
	if (present && v == s->n) {
		db->version = v;
		return KB_OK;
	}
	if (db->engine == DB_POSTGRES) {
		/* kb_schema is shared by the components: made once, under a
		 * lock of its own. */
		if ((e = migration_begin(c, "kb_schema")) != KB_OK
		    || (e = db_exec(c,
		            "CREATE TABLE IF NOT EXISTS kb_schema ("
		            "component TEXT PRIMARY KEY, "
		            "version BIGINT NOT NULL)",
		            "creating kb_schema"))
		        != KB_OK
		    || (e = db_commit(c)) != KB_OK) {
			db_rollback(c);
			return kb_err_wrap(e, "%s", db->safe);
		}
	}
	for (;;) {
		const char *sql = NULL;
		int to;

		if ((e = migration_begin(c, s->component)) != KB_OK)
			goto fail;
		if ((e = version_read(c, s->component, &v, &present)) != KB_OK)
			goto fail;
		if (present && v > s->n) {
			db_rollback(c);
			return newer_err(db, s, v);
		}
		done = present && v == s->n;
		if (done) {
			/* Another broker migrated while we waited. */
			if ((e = db_commit(c)) != KB_OK)
				goto fail;
			break;
		}
		if (db->engine == DB_POSTGRES && !present
		    && s->pg_base != NULL) {
			sql = s->pg_base;
			to = s->pg_base_version;
		} else {
			const struct db_migration *m = &s->migrations[v];

			sql = db->engine == DB_POSTGRES && m->pg != NULL
			    ? m->pg
			    : m->sql;
			to = v + 1;
		}
		if (to < 1 || to > s->n) {
			db_rollback(c);
			return kb_errf(KB_ERR_INTERNAL,
			    "%s schema: pg_base_version %d is outside 1..%d",
			    s->component, to, s->n);
		}
		if ((sql[0] != '\0'
		        && (e = db_exec(c, sql, "migrating")) != KB_OK)
		    || (e = version_write(c, s->component, to)) != KB_OK
		    || (e = db_commit(c)) != KB_OK) {
			db_rollback(c);
			return kb_err_wrap(e, "%s schema migration %d of %s",
			    s->component, to, db->safe);
		}
	}
	db->version = s->n;
	return KB_OK;
fail:
	db_rollback(c);
	return kb_err_wrap(e, "migrating %s", db->safe);
}

/* ---- open, close and the pool ---- */

enum kb_err
db_open(const struct db_config *cfg, struct db **out)
{
	struct db *db = NULL;
	struct db_conn *c;
	enum kb_err e = KB_ERR_INTERNAL;
	const char *comp;
	unsigned n, i;
	int present;

	*out = NULL;
	if (cfg->target == NULL || cfg->target[0] == '\0')
		return kb_errf(KB_ERR_CONFIG,
		    "no database is configured: set a file path or a "
		    "postgresql:// connection string");
	if (cfg->schema != NULL
	    && (cfg->schema->component == NULL || cfg->schema->n < 0))
		return kb_errf(KB_ERR_INTERNAL, "db_open: bad schema");
	comp = cfg->schema != NULL ? cfg->schema->component : "";
	n = cfg->readonly ? 1 : cfg->conns ? cfg->conns : 4;
	if ((db = calloc(1, sizeof(*db))) == NULL
	    || (db->target = strdup(cfg->target)) == NULL
	    || (db->conns = calloc(n, sizeof(*db->conns))) == NULL
	    || (db->free_list = calloc(n, sizeof(*db->free_list))) == NULL) {
		e = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	db->cap = n;
	db->readonly = cfg->readonly;
	db->engine = is_postgres_target(cfg->target) ? DB_POSTGRES : DB_SQLITE;
	db->ops = db->engine == DB_POSTGRES ? &db_pg_ops : &db_sqlite_ops;
	pthread_mutex_init(&db->mu, NULL);
	pthread_cond_init(&db->cv, NULL);
	db->sync_init = 1;
	if ((e = db->ops->init(db, cfg)) != KB_OK)
		goto out;
	for (i = 0; i < n; i++) {
		if ((e = db->ops->conn_open(db, &c)) != KB_OK)
			goto out;
		c->db = db;
		c->ops = db->ops;
		db->conns[db->nconns++] = c;
		if (i == 0) {
			db->ops->version_string(
			    c, db->engine_version, sizeof(db->engine_version));
			if (!cfg->readonly && cfg->schema != NULL)
				e = migrate(db, c, cfg->schema);
			else if ((e = version_read(
			              c, comp, &db->version, &present))
			    != KB_OK)
				kb_err_wrap(e, "%s", db->safe);
			if (e != KB_OK)
				goto out;
		}
		db->free_list[db->nfree++] = c;
	}
	/* SQLite needs nothing more; PostgreSQL keeps its parameters for the
	 * connections db_lock opens later. */
	if (db->engine == DB_SQLITE) {
		db->ops->fini(db);
		kb_freezero(db->target, strlen(db->target));
		db->target = NULL;
	}
	*out = db;
	db = NULL;
	e = KB_OK;
out:
	db_close(db);
	return e;
}

void
db_close(struct db *db)
{
	unsigned i;

	if (db == NULL)
		return;
	db_locks_free(db);
	for (i = 0; i < db->nconns; i++)
		db_conn_free(db->conns[i]);
	if (db->ops != NULL)
		db->ops->fini(db);
	if (db->sync_init) {
		pthread_mutex_destroy(&db->mu);
		pthread_cond_destroy(&db->cv);
	}
	if (db->target != NULL)
		kb_freezero(db->target, strlen(db->target));
	free(db->safe);
	free(db->conns);
	free(db->free_list);
	free(db);
}

enum db_engine
db_engine(const struct db *db)
{
	return db->engine;
}

const char *
db_engine_version(const struct db *db)
{
	return db->engine_version;
}

const char *
db_target(const struct db *db)
{
	return db->safe;
}

int
db_version(const struct db *db)
{
	return db->version;
}

struct db_conn *
db_conn_get(struct db *db)
{
	struct db_conn *c;

	pthread_mutex_lock(&db->mu);
	while (db->nfree == 0)
		pthread_cond_wait(&db->cv, &db->mu);
	c = db->free_list[--db->nfree];
	pthread_mutex_unlock(&db->mu);
	c->ops->conn_check(c);
	return c;
}

void
db_conn_put(struct db *db, struct db_conn *c)
{
	if (c == NULL)
		return;
	pthread_mutex_lock(&db->mu);
	db->free_list[db->nfree++] = c;
	pthread_cond_signal(&db->cv);
	pthread_mutex_unlock(&db->mu);
}

enum db_engine
db_conn_engine(const struct db_conn *c)
{
	return c->ops->engine;
}

const char *
db_sql(const struct db_conn *c, const char *sqlite, const char *pg)
{
	return c->ops->engine == DB_POSTGRES ? pg : sqlite;
}

/* ---- statements ---- */

enum kb_err
db_exec(struct db_conn *c, const char *sql, const char *what)
{
	return c->ops->exec(c, sql, what);
}

enum kb_err
db_prepare(struct db_conn *c, const char *sql, struct db_stmt **out)
{
	struct db_stmt *st;
	enum kb_err e;

	if ((st = cache_find(c, sql)) != NULL) {
		c->ops->stmt_clear(st);
		*out = st;
		return KB_OK;
	}
	*out = NULL;
	if ((e = c->ops->stmt_new(c, sql, 0, &st)) != KB_OK)
		return e;
	st->c = c;
	st->key = sql;
	if (cache_add(c, st) != 0) {
		c->ops->stmt_free(st);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	*out = st;
	return KB_OK;
}

enum kb_err
db_prepare_dynamic(struct db_conn *c, const char *sql, struct db_stmt **out)
{
	struct db_stmt *st;
	enum kb_err e;

	*out = NULL;
	if ((e = c->ops->stmt_new(c, sql, 1, &st)) != KB_OK)
		return e;
	st->c = c;
	st->key = NULL;
	*out = st;
	return KB_OK;
}

void
db_finalize(struct db_stmt *st)
{
	/* A cached statement belongs to its connection. */
	if (st != NULL && st->key == NULL)
		st->c->ops->stmt_free(st);
}

void
db_bind_text(struct db_stmt *st, int i, const char *s)
{
	if (s == NULL)
		st->c->ops->bind_null(st, i);
	else
		st->c->ops->bind_text(st, i, s);
}

void
db_bind_int64(struct db_stmt *st, int i, int64_t v)
{
	st->c->ops->bind_int64(st, i, v);
}

void
db_bind_blob(struct db_stmt *st, int i, const void *p, size_t n)
{
	st->c->ops->bind_blob(st, i, p, n);
}

void
db_bind_null(struct db_stmt *st, int i)
{
	st->c->ops->bind_null(st, i);
}

enum db_step
db_step(struct db_stmt *st)
{
	return st->c->ops->step(st);
}

void
db_reset(struct db_stmt *st)
{
	st->c->ops->reset(st);
}

int64_t
db_column_int64(struct db_stmt *st, int col)
{
	return st->c->ops->column_int64(st, col);
}

const char *
db_column_text(struct db_stmt *st, int col)
{
	return st->c->ops->column_text(st, col);
}

const void *
db_column_blob(struct db_stmt *st, int col)
{
	return st->c->ops->column_blob(st, col);
}

size_t
db_column_bytes(struct db_stmt *st, int col)
{
	return st->c->ops->column_bytes(st, col);
}

int
db_column_is_null(struct db_stmt *st, int col)
{
	return st->c->ops->column_is_null(st, col);
}

int64_t
db_changes(struct db_conn *c)
{
	return c->ops->changes(c);
}

enum kb_err
db_err(struct db_conn *c, const char *what)
{
	if (c->fail_internal)
		return kb_errf(KB_ERR_INTERNAL, "%s: %s", what, c->fail_msg);
	return c->ops->err(c, what);
}

int
db_failed_unique(const struct db_conn *c)
{
	return c->fail_unique;
}

int
db_failed_retry(const struct db_conn *c)
{
	return c->fail_retry;
}

/* ---- transactions ---- */

enum kb_err
db_begin(struct db_conn *c, enum db_txn_mode mode)
{
	const char *sql;

	db_fail_clear(c);
	c->ops->conn_check(c);
	if (c->ops->engine == DB_POSTGRES)
		sql = mode == DB_TXN_WRITE
		    ? "BEGIN ISOLATION LEVEL SERIALIZABLE"
		    : mode == DB_TXN_LOCKED
		    ? "BEGIN ISOLATION LEVEL READ COMMITTED"
		    : "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
	else
		sql = mode == DB_TXN_READ ? "BEGIN" : "BEGIN IMMEDIATE";
	return db_exec(c, sql, "beginning a transaction");
}

enum kb_err
db_commit(struct db_conn *c)
{
	return db_exec(c, "COMMIT", "committing");
}

void
db_rollback(struct db_conn *c)
{
	c->ops->rollback(c);
}

/* Sleep a random time below 2^attempt ms (at most 64 ms), so that two
 * brokers retrying the same conflict do not meet again. */
static void
backoff(unsigned attempt)
{
	static _Thread_local uint64_t x;
	struct timespec ts;
	uint64_t ceil_us = 1000ULL << (attempt < 6 ? attempt : 6);

	if (x == 0) {
		clock_gettime(CLOCK_MONOTONIC, &ts);
		x = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec
		    ^ (uint64_t)(uintptr_t)&ts;
		x |= 1;
	}
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	ts.tv_sec = 0;
	ts.tv_nsec = (long)(500 + x % ceil_us) * 1000;
	nanosleep(&ts, NULL);
}

static enum kb_err
txn_run(struct db *db, enum db_txn_mode mode,
    enum kb_err (*fn)(struct db_conn *c, void *arg), void *arg,
    const char *what)
{
	struct db_conn *c = db_conn_get(db);
	enum kb_err e;
	unsigned attempt;

	for (attempt = 0;; attempt++) {
		if ((e = db_begin(c, mode)) != KB_OK) {
			kb_err_wrap(e, "%s", what);
			if (!db_failed_retry(c) || attempt >= DB_TXN_RETRIES)
				break;
			backoff(attempt);
			continue;
		}
		if ((e = fn(c, arg)) == KB_OK) {
			if ((e = db_commit(c)) == KB_OK)
				break;
			kb_err_wrap(e, "%s", what);
		}
		/* Keep fn's message: the rollback's outcome does not matter
		 * to the caller. */
		db_rollback(c);
		if (!db_failed_retry(c) || attempt >= DB_TXN_RETRIES)
			break;
		backoff(attempt);
	}
	db_conn_put(db, c);
	return e;
}

enum kb_err
db_txn(struct db *db, enum kb_err (*fn)(struct db_conn *c, void *arg),
    void *arg, const char *what)
{
	return txn_run(db, DB_TXN_WRITE, fn, arg, what);
}

enum kb_err
db_txn_locked(struct db *db, enum kb_err (*fn)(struct db_conn *c, void *arg),
    void *arg, const char *what)
{
	return txn_run(db, DB_TXN_LOCKED, fn, arg, what);
}

enum kb_err
db_ping(struct db *db)
{
	struct db_conn *c = db_conn_get(db);
	enum kb_err e;

	if ((e = db_exec(c, "SELECT 1", "checking the database")) != KB_OK
	    && db->engine == DB_POSTGRES) {
		/* A server restarted since the last use: the first statement
		 * finds the connection broken; reconnect and ask again. */
		kb_err_clear();
		c->ops->conn_check(c);
		e = db_exec(c, "SELECT 1", "checking the database");
	}
	db_conn_put(db, c);
	return e;
}
