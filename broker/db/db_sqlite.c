/* SPDX-License-Identifier: Apache-2.0 */
/* db_sqlite.c: the SQLite engine of the database layer: one file, WAL, a
 * full sync per commit, SQLite's result codes mapped to kb_err. */
#include "db_int.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

struct sq_db {
	char *name; /* the path, or the read-only URI */
	int flags;
	int busy_ms;
};

struct sq_conn {
	struct db_conn base;
	sqlite3 *h;
	int rc, sys; /* the last failure */
	char msg[512];
};

struct sq_stmt {
	struct db_stmt base;
	sqlite3_stmt *st;
	int done; /* stepped to its end: DB_DONE until reset */
	int bad_bind;
};

#define SQ_CONN(c) ((struct sq_conn *)(c))
#define SQ_STMT(s) ((struct sq_stmt *)(s))

/* Map an SQLite failure (code `rc`, operating system errno `sys`) to our
 * errors with a message naming `what`. */
static enum kb_err
sq_map(int rc, int sys, const char *msg, const char *what)
{
	/* The operating system's reason, when there is one, decides: a full
	 * disk and a read-only file system need different actions. */
	if (sys == ENOSPC || sys == EDQUOT || (rc & 0xff) == SQLITE_FULL)
		return kb_errf(KB_ERR_STORAGE_FULL,
		    "%s: the database disk is full (%s); free space and retry",
		    what, msg);
	if (sys == EROFS)
		return kb_errf(KB_ERR_READ_ONLY,
		    "%s: the database's file system is read-only (%s)", what,
		    msg);
	switch (rc & 0xff) {
	case SQLITE_READONLY:
	case SQLITE_PERM:
		return kb_errf(KB_ERR_READ_ONLY,
		    "%s: the database cannot be written (%s)", what, msg);
	case SQLITE_CANTOPEN:
		return kb_errf(KB_ERR_READ_ONLY,
		    "%s: the database cannot be opened for writing: is it, "
		    "its directory or its file system read-only or missing? "
		    "(%s%s%s)",
		    what, msg, sys ? ": " : "", sys ? strerror(sys) : "");
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return kb_errf(KB_ERR_UNAVAILABLE,
		    "%s: the database is busy (%s); retry", what, msg);
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

static void
sq_fail(struct sq_conn *c, int rc)
{
	c->rc = rc;
	c->sys = sqlite3_system_errno(c->h);
	snprintf(c->msg, sizeof(c->msg), "%s", sqlite3_errmsg(c->h));
	c->base.fail_internal = 0;
	c->base.fail_retry = 0;
	c->base.fail_unique = rc == SQLITE_CONSTRAINT_PRIMARYKEY
	    || rc == SQLITE_CONSTRAINT_UNIQUE;
}

static enum kb_err
sq_err(struct db_conn *bc, const char *what)
{
	struct sq_conn *c = SQ_CONN(bc);

	if (bc->fail_unique)
		return kb_errf(
		    KB_ERR_ALREADY_EXISTS, "%s: already exists", what);
	return sq_map(c->rc, c->sys, c->msg, what);
}

/* The URI of `path` for sqlite3_open_v2 (SQLITE_OPEN_URI): every byte but
 * the unreserved ones percent-encoded, so any path is one file name. */
static char *
uri_of(const char *path, const char *query)
{
	static const char hex[] = "0123456789ABCDEF";
	const unsigned char *p;
	char *buf;
	size_t n;

	if ((buf = malloc(5 + strlen(path) * 3 + strlen(query) + 1)) == NULL)
		return NULL;
	n = (size_t)sprintf(buf, "file:");
	for (p = (const unsigned char *)path; *p != '\0'; p++) {
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
		    || (*p >= '0' && *p <= '9') || strchr("/-._~", *p) != NULL)
			buf[n++] = (char)*p;
		else {
			buf[n++] = '%';
			buf[n++] = hex[*p >> 4];
			buf[n++] = hex[*p & 15];
		}
	}
	strcpy(buf + n, query);
	return buf;
}

static enum kb_err
sq_init(struct db *db, const struct db_config *cfg)
{
	struct sq_db *s;
	char *wal = NULL;

	if ((db->safe = strdup(cfg->target)) == NULL
	    || (s = calloc(1, sizeof(*s))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	db->eng = s;
	if (!cfg->readonly) {
		s->flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE
		    | SQLITE_OPEN_NOMUTEX;
		s->busy_ms = 10000;
		if ((s->name = strdup(cfg->target)) == NULL)
			return kb_errf(KB_ERR_NOMEM, "out of memory");
		return KB_OK;
	}
	if (access(cfg->target, F_OK) != 0)
		return kb_errf(KB_ERR_NOT_FOUND, "database %s does not exist",
		    cfg->target);
	/* A read-only connection to a WAL database creates its -wal and -shm
	 * files when they are absent (after a clean stop): then the file is
	 * the whole database, and immutable reads it as it is without them.
	 * With a -wal (a broker running, or one that crashed), read it too. */
	if (asprintf(&wal, "%s-wal", cfg->target) < 0)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	s->name = uri_of(
	    cfg->target, access(wal, F_OK) == 0 ? "?mode=ro" : "?immutable=1");
	free(wal);
	if (s->name == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	s->flags = SQLITE_OPEN_READONLY | SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX;
	s->busy_ms = 5000;
	return KB_OK;
}

static void
sq_fini(struct db *db)
{
	struct sq_db *s = db->eng;

	if (s == NULL)
		return;
	free(s->name);
	free(s);
	db->eng = NULL;
}

static void
sq_conn_close(struct db_conn *bc)
{
	struct sq_conn *c = SQ_CONN(bc);

	sqlite3_close(c->h);
	free(c);
}

static enum kb_err
sq_exec(struct db_conn *bc, const char *sql, const char *what)
{
	struct sq_conn *c = SQ_CONN(bc);
	int rc = sqlite3_exec(c->h, sql, NULL, NULL, NULL);

	if (rc == SQLITE_OK)
		return KB_OK;
	sq_fail(c, rc);
	return sq_err(bc, what);
}

static enum kb_err
sq_conn_open(struct db *db, struct db_conn **out)
{
	struct sq_db *s = db->eng;
	struct sq_conn *c;
	enum kb_err e;
	int rc;

	*out = NULL;
	if ((c = calloc(1, sizeof(*c))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	c->base.db = db;
	c->base.ops = &db_sqlite_ops;
	rc = sqlite3_open_v2(s->name, &c->h, s->flags, NULL);
	if (rc != SQLITE_OK) {
		if (c->h != NULL) {
			sq_fail(c, rc);
			e = sq_map(rc, c->sys, c->msg, "opening the database");
		} else
			e = sq_map(
			    rc, 0, sqlite3_errstr(rc), "opening the database");
		kb_err_wrap(
		    e, "%s%s", db->safe, db->readonly ? " (read-only)" : "");
		sq_conn_close(&c->base);
		return e;
	}
	sqlite3_busy_timeout(c->h, s->busy_ms);
	sqlite3_extended_result_codes(c->h, 1);
	/* WAL for concurrent readers; FULL sync so an acknowledged change
	 * survives power loss. */
	if (!db->readonly
	    && (e = sq_exec(&c->base,
	            "PRAGMA journal_mode=WAL; "
	            "PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
	            "configuring the database"))
	        != KB_OK) {
		kb_err_wrap(e, "%s", db->safe);
		sq_conn_close(&c->base);
		return e;
	}
	*out = &c->base;
	return KB_OK;
}

static void
sq_conn_check(struct db_conn *c)
{
	(void)c;
}

static void
sq_version_string(struct db_conn *c, char *buf, size_t len)
{
	(void)c;
	snprintf(buf, len, "SQLite %s", sqlite3_libversion());
}

static enum kb_err
sq_stmt_new(
    struct db_conn *bc, const char *sql, int dynamic, struct db_stmt **out)
{
	struct sq_conn *c = SQ_CONN(bc);
	struct sq_stmt *st;
	int rc;

	*out = NULL;
	if ((st = calloc(1, sizeof(*st))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	rc = sqlite3_prepare_v3(c->h, sql, -1,
	    dynamic ? 0 : SQLITE_PREPARE_PERSISTENT, &st->st, NULL);
	if (rc != SQLITE_OK) {
		free(st);
		sq_fail(c, rc);
		return sq_err(bc, "preparing a query");
	}
	st->base.c = bc;
	*out = &st->base;
	return KB_OK;
}

static void
sq_stmt_free(struct db_stmt *bs)
{
	struct sq_stmt *st = SQ_STMT(bs);

	sqlite3_finalize(st->st);
	free(st);
}

static void
sq_reset(struct db_stmt *bs)
{
	struct sq_stmt *st = SQ_STMT(bs);

	sqlite3_reset(st->st);
	st->done = 0;
}

static void
sq_stmt_clear(struct db_stmt *bs)
{
	struct sq_stmt *st = SQ_STMT(bs);

	sq_reset(bs);
	sqlite3_clear_bindings(st->st);
	st->bad_bind = 0;
}

static void
sq_bound(struct db_stmt *bs, int i, int rc)
{
	if (rc == SQLITE_OK)
		return;
	SQ_STMT(bs)->bad_bind = 1;
	db_fail_internal(bs->c, "binding parameter %d: %s", i,
	    rc == SQLITE_RANGE ? "no such parameter" : sqlite3_errstr(rc));
}

static void
sq_bind_text(struct db_stmt *bs, int i, const char *s)
{
	sq_bound(bs, i,
	    sqlite3_bind_text(SQ_STMT(bs)->st, i, s, -1, SQLITE_TRANSIENT));
}

static void
sq_bind_int64(struct db_stmt *bs, int i, int64_t v)
{
	sq_bound(bs, i, sqlite3_bind_int64(SQ_STMT(bs)->st, i, v));
}

static void
sq_bind_blob(struct db_stmt *bs, int i, const void *p, size_t n)
{
	/* An empty blob is a blob, not NULL (bind_blob would make NULL of a
	 * NULL pointer). */
	if (n == 0)
		sq_bound(bs, i, sqlite3_bind_zeroblob(SQ_STMT(bs)->st, i, 0));
	else
		sq_bound(bs, i,
		    sqlite3_bind_blob64(SQ_STMT(bs)->st, i, p,
		        (sqlite3_uint64)n, SQLITE_TRANSIENT));
}

static void
sq_bind_null(struct db_stmt *bs, int i)
{
	sq_bound(bs, i, sqlite3_bind_null(SQ_STMT(bs)->st, i));
}

static enum db_step
sq_step(struct db_stmt *bs)
{
	struct sq_stmt *st = SQ_STMT(bs);
	int rc;

	if (st->bad_bind)
		return DB_FAIL; /* recorded by sq_bound */
	if (st->done)
		return DB_DONE;
	rc = sqlite3_step(st->st);
	if (rc == SQLITE_ROW)
		return DB_ROW;
	if (rc == SQLITE_DONE) {
		/* Reset at once so that a statement left unreset holds no
		 * read lock; stepping again is DB_DONE until db_reset. */
		sqlite3_reset(st->st);
		st->done = 1;
		return DB_DONE;
	}
	sq_fail(SQ_CONN(bs->c), rc);
	sqlite3_reset(st->st);
	return DB_FAIL;
}

static int64_t
sq_column_int64(struct db_stmt *bs, int col)
{
	return sqlite3_column_int64(SQ_STMT(bs)->st, col);
}

static const char *
sq_column_text(struct db_stmt *bs, int col)
{
	return (const char *)sqlite3_column_text(SQ_STMT(bs)->st, col);
}

static const void *
sq_column_blob(struct db_stmt *bs, int col)
{
	return sqlite3_column_blob(SQ_STMT(bs)->st, col);
}

static size_t
sq_column_bytes(struct db_stmt *bs, int col)
{
	return (size_t)sqlite3_column_bytes(SQ_STMT(bs)->st, col);
}

static int
sq_column_is_null(struct db_stmt *bs, int col)
{
	return sqlite3_column_type(SQ_STMT(bs)->st, col) == SQLITE_NULL;
}

static int64_t
sq_changes(struct db_conn *c)
{
	return sqlite3_changes64(SQ_CONN(c)->h);
}

static void
sq_rollback(struct db_conn *bc)
{
	struct sq_conn *c = SQ_CONN(bc);

	/* The last failure stays what it was: callers ask about it after. */
	if (!sqlite3_get_autocommit(c->h))
		(void)sqlite3_exec(c->h, "ROLLBACK", NULL, NULL, NULL);
}

struct sqlite3 *
db_conn_sqlite(struct db_conn *c)
{
	return c->ops->engine == DB_SQLITE ? SQ_CONN(c)->h : NULL;
}

const struct db_ops db_sqlite_ops = {
    .engine = DB_SQLITE,
    .init = sq_init,
    .fini = sq_fini,
    .conn_open = sq_conn_open,
    .conn_close = sq_conn_close,
    .conn_check = sq_conn_check,
    .version_string = sq_version_string,
    .exec = sq_exec,
    .stmt_new = sq_stmt_new,
    .stmt_free = sq_stmt_free,
    .stmt_clear = sq_stmt_clear,
    .reset = sq_reset,
    .bind_text = sq_bind_text,
    .bind_int64 = sq_bind_int64,
    .bind_blob = sq_bind_blob,
    .bind_null = sq_bind_null,
    .step = sq_step,
    .column_int64 = sq_column_int64,
    .column_text = sq_column_text,
    .column_blob = sq_column_blob,
    .column_bytes = sq_column_bytes,
    .column_is_null = sq_column_is_null,
    .changes = sq_changes,
    .err = sq_err,
    .rollback = sq_rollback,
};

enum kb_err
db_sqlite_err(struct sqlite3 *h, int rc, const char *what)
{
	return sq_map(rc, h != NULL ? sqlite3_system_errno(h) : 0,
	    h != NULL ? sqlite3_errmsg(h) : sqlite3_errstr(rc), what);
}
