/* SPDX-License-Identifier: Apache-2.0 */
/* db_pg.c: the PostgreSQL engine of the database layer, through libpq:
 * statements prepared once per connection, parameters as text (int8,
 * unknown) or binary (bytea), results as text, SQLSTATEs mapped to
 * kb_err, a broken connection reconnected when it is next taken. */
#include "db_int.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "kb_secmem.h"

/* Type OIDs (catalog/pg_type.h, fixed since forever). */
#define OID_BOOL 16
#define OID_BYTEA 17
#define OID_INT8 20

struct pg_db {
	char *options; /* readonly: the target's options and ours */
	char *password; /* from password_file, locked memory; NULL: none */
	size_t password_len;
};

struct pg_conn {
	struct db_conn base;
	PGconn *pg;
	unsigned gen; /* bumped at each reconnection: statements re-prepare */
	unsigned seq; /* statement names */
	int64_t changes;
	/* The last failure. */
	char sqlstate[6];
	int lost;
	char msg[512];
};

struct pg_param {
	char *v; /* NULL: SQL NULL; else num or a malloc'd copy */
	int len, fmt;
	Oid type;
	char num[24];
};

struct pg_stmt {
	struct db_stmt base;
	char *sql; /* with $N placeholders */
	int n; /* parameters */
	struct pg_param *p;
	const char **vals;
	int *lens, *fmts;
	Oid *types;
	char name[24];
	unsigned gen; /* the connection's gen it was prepared in; 0: none */
	int bad_bind;
	PGresult *res; /* NULL: not run since the last reset */
	int row, nrows, nfields;
	struct pg_decoded {
		int row;
		unsigned char *p; /* PQunescapeBytea's */
		size_t n;
	} * dec;
};

#define PG_CONN(c) ((struct pg_conn *)(c))
#define PG_STMT(s) ((struct pg_stmt *)(s))

static void
quiet(void *arg, const char *message)
{
	/* Notices ("relation already exists, skipping", "there is no
	 * transaction in progress") are not for our users. */
	(void)arg;
	(void)message;
}

/* Copy a libpq message on one line, without its trailing newline. */
static void
flatten(char *dst, size_t len, const char *src)
{
	size_t o = 0;

	for (; *src != '\0' && o + 1 < len; src++) {
		char ch = *src == '\n' || *src == '\t' ? ' ' : *src;

		if (ch == ' ' && (o == 0 || dst[o - 1] == ' '))
			continue;
		dst[o++] = ch;
	}
	while (o > 0 && dst[o - 1] == ' ')
		o--;
	dst[o] = '\0';
}

static void
pg_fail(struct pg_conn *c, const PGresult *res)
{
	const char *state = NULL, *m = NULL;
	int retry;

	if (res != NULL) {
		state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	}
	if (m == NULL || m[0] == '\0')
		m = PQerrorMessage(c->pg);
	flatten(c->msg, sizeof(c->msg), m);
	snprintf(
	    c->sqlstate, sizeof(c->sqlstate), "%s", state != NULL ? state : "");
	c->lost = PQstatus(c->pg) == CONNECTION_BAD;
	c->base.fail_internal = 0;
	c->base.fail_unique = strcmp(c->sqlstate, "23505") == 0;
	retry = strcmp(c->sqlstate, "40001") == 0
	    || strcmp(c->sqlstate, "40P01") == 0;
	/* A statement refused because the transaction already failed keeps
	 * the first failure's verdict: the whole transaction is worth
	 * running again. */
	c->base.fail_retry =
	    retry || (c->base.fail_retry && strcmp(c->sqlstate, "25P02") == 0);
}

static int
state_is(const struct pg_conn *c, const char *s)
{
	return strcmp(c->sqlstate, s) == 0;
}

static enum kb_err
pg_err(struct db_conn *bc, const char *what)
{
	struct pg_conn *c = PG_CONN(bc);
	const char *target = bc->db->safe;

	if (c->lost || strncmp(c->sqlstate, "08", 2) == 0
	    || strncmp(c->sqlstate, "57P0", 4) == 0)
		return kb_errf(KB_ERR_UNAVAILABLE,
		    "%s: the PostgreSQL server at %s is unreachable (%s); "
		    "retry",
		    what, target, c->msg);
	if (bc->fail_unique)
		return kb_errf(
		    KB_ERR_ALREADY_EXISTS, "%s: already exists", what);
	if (bc->fail_retry)
		return kb_errf(KB_ERR_UNAVAILABLE,
		    "%s: conflict with a concurrent change (%s); retry", what,
		    c->msg);
	if (strncmp(c->sqlstate, "23", 2) == 0)
		return kb_errf(KB_ERR_STORE, "%s: %s", what, c->msg);
	if (state_is(c, "53100"))
		return kb_errf(KB_ERR_STORAGE_FULL,
		    "%s: the database server's disk is full (%s); free space "
		    "and retry",
		    what, c->msg);
	if (state_is(c, "25006"))
		return kb_errf(KB_ERR_READ_ONLY,
		    "%s: the database cannot be written (%s)", what, c->msg);
	if (state_is(c, "XX001") || state_is(c, "XX002"))
		return kb_errf(KB_ERR_CORRUPT,
		    "%s: the database is corrupt (%s)", what, c->msg);
	if (c->sqlstate[0] != '\0')
		return kb_errf(KB_ERR_STORE, "%s: %s (SQLSTATE %s)", what,
		    c->msg, c->sqlstate);
	return kb_errf(KB_ERR_STORE, "%s: %s", what, c->msg);
}

/* ---- open ---- */

static enum kb_err
pg_init(struct db *db, const struct db_config *cfg)
{
	PQconninfoOption *opts, *o;
	struct pg_db *p;
	const char *have = NULL;
	char *err = NULL;
	enum kb_err e;

	if ((db->safe = db_target_safe(cfg->target)) == NULL
	    || (p = calloc(1, sizeof(*p))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	db->eng = p;
	if ((opts = PQconninfoParse(cfg->target, &err)) == NULL) {
		const char *why = "out of memory";
		char msg[256];

		/* libpq's reason may quote the text it choked on: only when
		 * there is no password in it. */
		if (err != NULL)
			why = strcmp(db->safe, cfg->target) == 0
			    ? err
			    : "details withheld: the target holds a password";
		flatten(msg, sizeof(msg), why);
		PQfreemem(err);
		return kb_errf(KB_ERR_CONFIG,
		    "database %s is not a valid PostgreSQL connection URI "
		    "(%s): see libpq's \"Connection URIs\"",
		    db->safe, msg);
	}
	for (o = opts; o->keyword != NULL; o++)
		if (strcmp(o->keyword, "options") == 0 && o->val != NULL)
			have = o->val;
	/* Read-only in every transaction, across reconnections too: the
	 * setting goes with the connection's options, after the target's
	 * own. */
	e = KB_OK;
	if (cfg->readonly
	    && asprintf(&p->options, "%s%s-c default_transaction_read_only=on",
	           have != NULL ? have : "", have != NULL ? " " : "")
	        < 0) {
		p->options = NULL;
		e = kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	PQconninfoFree(opts);
	if (e != KB_OK)
		return e;
	if (cfg->password_file != NULL
	    && (e = kb_secret_file_read(
	            cfg->password_file, 1, &p->password, &p->password_len))
	        != KB_OK)
		return kb_err_wrap(e, "the database password file");
	return KB_OK;
}

static void
pg_fini(struct db *db)
{
	struct pg_db *p = db->eng;

	if (p == NULL)
		return;
	kb_secure_free(p->password);
	free(p->options);
	free(p);
	db->eng = NULL;
}

static void
pg_conn_close(struct db_conn *bc)
{
	struct pg_conn *c = PG_CONN(bc);

	PQfinish(c->pg);
	free(c);
}

static enum kb_err
pg_conn_open(struct db *db, struct db_conn **out)
{
	struct pg_db *p = db->eng;
	struct pg_conn *c;
	const char *kw[8], *val[8];
	char msg[512];
	int n = 0;

	*out = NULL;
	/* Before dbname: defaults the target's own settings override. */
	kw[n] = "application_name", val[n++] = "keybrokerd";
	kw[n] = "connect_timeout", val[n++] = "5";
	kw[n] = "client_encoding", val[n++] = "UTF8";
	kw[n] = "dbname", val[n++] = db->target;
	if (p->options != NULL)
		kw[n] = "options", val[n++] = p->options;
	if (p->password != NULL)
		kw[n] = "password", val[n++] = p->password;
	kw[n] = NULL, val[n] = NULL;
	if ((c = calloc(1, sizeof(*c))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	c->base.db = db;
	c->base.ops = &db_pg_ops;
	c->gen = 1;
	if ((c->pg = PQconnectdbParams(kw, val, 1)) == NULL) {
		free(c);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	if (PQstatus(c->pg) == CONNECTION_OK) {
		PQsetNoticeProcessor(c->pg, quiet, NULL);
		*out = &c->base;
		return KB_OK;
	}
	flatten(msg, sizeof(msg), PQerrorMessage(c->pg));
	if (PQconnectionNeedsPassword(c->pg)) {
		pg_conn_close(&c->base);
		return kb_errf(KB_ERR_CONFIG,
		    "opening the database: the PostgreSQL server at %s asks "
		    "for a password and none was given: set the database "
		    "password file (or PGPASSFILE) (%s)",
		    db->safe, msg);
	}
	pg_conn_close(&c->base);
	if (strstr(msg, "authentication failed") != NULL
	    || strstr(msg, "does not exist") != NULL
	    || strstr(msg, "no pg_hba.conf entry") != NULL)
		return kb_errf(KB_ERR_CONFIG,
		    "opening the database: the PostgreSQL server at %s "
		    "refused us (%s): check the database, the user and its "
		    "password",
		    db->safe, msg);
	return kb_errf(KB_ERR_UNAVAILABLE,
	    "opening the database: the PostgreSQL server at %s is "
	    "unreachable (%s); retry",
	    db->safe, msg);
}

static void
pg_conn_check(struct db_conn *bc)
{
	struct pg_conn *c = PG_CONN(bc);
	PGTransactionStatusType t;

	if (PQstatus(c->pg) == CONNECTION_BAD) {
		/* Session state is gone: prepared statements with it. If
		 * this fails, the next statement fails KB_ERR_UNAVAILABLE. */
		PQreset(c->pg);
		c->gen++;
		return;
	}
	/* A transaction left open (a caller's bug) would swallow the next
	 * BEGIN and stay open: end it. */
	t = PQtransactionStatus(c->pg);
	if (t == PQTRANS_INTRANS || t == PQTRANS_INERROR)
		PQclear(PQexec(c->pg, "ROLLBACK"));
}

static void
pg_version_string(struct db_conn *bc, char *buf, size_t len)
{
	const char *v = PQparameterStatus(PG_CONN(bc)->pg, "server_version");

	if (v == NULL)
		v = "?";
	snprintf(buf, len, "PostgreSQL %.*s", (int)strcspn(v, " "), v);
}

/* Keep the row count of an INSERT, UPDATE, DELETE or MERGE (with or
 * without RETURNING), as sqlite3_changes does. */
static void
note_changes(struct pg_conn *c, PGresult *res)
{
	const char *cmd = PQcmdStatus(res);

	if (strncmp(cmd, "INSERT", 6) == 0 || strncmp(cmd, "UPDATE", 6) == 0
	    || strncmp(cmd, "DELETE", 6) == 0 || strncmp(cmd, "MERGE", 5) == 0)
		c->changes = strtoll(PQcmdTuples(res), NULL, 10);
}

static enum kb_err
pg_exec(struct db_conn *bc, const char *sql, const char *what)
{
	struct pg_conn *c = PG_CONN(bc);
	PGresult *res = PQexec(c->pg, sql);
	ExecStatusType s =
	    res != NULL ? PQresultStatus(res) : PGRES_FATAL_ERROR;

	if (s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK
	    || s == PGRES_EMPTY_QUERY) {
		/* COMMIT of a transaction that had failed "succeeds" as a
		 * ROLLBACK. */
		if (strcmp(sql, "COMMIT") == 0
		    && strcmp(PQcmdStatus(res), "ROLLBACK") == 0) {
			PQclear(res);
			snprintf(c->sqlstate, sizeof(c->sqlstate), "25P02");
			snprintf(c->msg, sizeof(c->msg),
			    "the transaction was rolled back: a statement in "
			    "it had failed");
			c->lost = 0;
			bc->fail_internal = bc->fail_unique = 0;
			return pg_err(bc, what);
		}
		note_changes(c, res);
		PQclear(res);
		return KB_OK;
	}
	pg_fail(c, res);
	PQclear(res);
	return pg_err(bc, what);
}

/* ---- statements ---- */

static void
param_clear(struct pg_param *p)
{
	if (p->v != NULL && p->v != p->num)
		free(p->v);
	p->v = NULL;
	p->len = p->fmt = 0;
	p->type = 0;
}

static void
pg_stmt_free(struct db_stmt *bs)
{
	struct pg_stmt *st = PG_STMT(bs);
	int i;

	if (st->p != NULL)
		for (i = 0; i < st->n; i++)
			param_clear(&st->p[i]);
	if (st->dec != NULL)
		for (i = 0; i < st->nfields; i++)
			PQfreemem(st->dec[i].p);
	PQclear(st->res);
	free(st->dec);
	free(st->p);
	free(st->vals);
	free(st->lens);
	free(st->fmts);
	free(st->types);
	free(st->sql);
	free(st);
}

static enum kb_err
pg_stmt_new(
    struct db_conn *bc, const char *sql, int dynamic, struct db_stmt **out)
{
	struct pg_conn *c = PG_CONN(bc);
	struct pg_stmt *st;
	size_t n;

	(void)dynamic;
	*out = NULL;
	if ((st = calloc(1, sizeof(*st))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	st->base.c = bc;
	if ((st->sql = db_placeholders_pg(sql, &st->n)) == NULL) {
		free(st);
		return kb_errf(KB_ERR_INTERNAL,
		    "preparing a query: out of memory, or a placeholder "
		    "number outside 1..32766");
	}
	n = (size_t)st->n + 1;
	if ((st->p = calloc(n, sizeof(*st->p))) == NULL
	    || (st->vals = calloc(n, sizeof(*st->vals))) == NULL
	    || (st->lens = calloc(n, sizeof(*st->lens))) == NULL
	    || (st->fmts = calloc(n, sizeof(*st->fmts))) == NULL
	    || (st->types = calloc(n, sizeof(*st->types))) == NULL) {
		pg_stmt_free(&st->base);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	snprintf(st->name, sizeof(st->name), "kb%u", ++c->seq);
	*out = &st->base;
	return KB_OK;
}

static void
pg_reset(struct db_stmt *bs)
{
	struct pg_stmt *st = PG_STMT(bs);
	int i;

	if (st->dec != NULL)
		for (i = 0; i < st->nfields; i++)
			PQfreemem(st->dec[i].p);
	free(st->dec);
	st->dec = NULL;
	PQclear(st->res);
	st->res = NULL;
	st->row = st->nrows = st->nfields = 0;
}

static void
pg_stmt_clear(struct db_stmt *bs)
{
	struct pg_stmt *st = PG_STMT(bs);
	int i;

	pg_reset(bs);
	for (i = 0; i < st->n; i++)
		param_clear(&st->p[i]);
	st->bad_bind = 0;
}

/* The parameter `i` (from 1), cleared; NULL (a misuse recorded) if the
 * statement has no such parameter. */
static struct pg_param *
param(struct db_stmt *bs, int i)
{
	struct pg_stmt *st = PG_STMT(bs);

	if (i < 1 || i > st->n) {
		st->bad_bind = 1;
		db_fail_internal(bs->c,
		    "binding parameter %d: the statement has %d", i, st->n);
		return NULL;
	}
	param_clear(&st->p[i - 1]);
	return &st->p[i - 1];
}

static void
pg_bind_text(struct db_stmt *bs, int i, const char *s)
{
	struct pg_param *p = param(bs, i);
	size_t n = strlen(s);

	if (p == NULL)
		return;
	if (n > INT_MAX || (p->v = strdup(s)) == NULL) {
		PG_STMT(bs)->bad_bind = 1;
		db_fail_internal(
		    bs->c, "binding parameter %d: out of memory", i);
		return;
	}
	p->len = (int)n;
}

static void
pg_bind_int64(struct db_stmt *bs, int i, int64_t v)
{
	struct pg_param *p = param(bs, i);

	if (p == NULL)
		return;
	p->len = snprintf(p->num, sizeof(p->num), "%lld", (long long)v);
	p->v = p->num;
	p->type = OID_INT8;
}

static void
pg_bind_blob(struct db_stmt *bs, int i, const void *b, size_t n)
{
	struct pg_param *p = param(bs, i);

	if (p == NULL)
		return;
	p->fmt = 1;
	p->type = OID_BYTEA;
	if (n == 0) {
		/* Not NULL: an empty bytea. */
		p->v = p->num;
		return;
	}
	if (n > INT_MAX || (p->v = malloc(n)) == NULL) {
		PG_STMT(bs)->bad_bind = 1;
		db_fail_internal(
		    bs->c, "binding parameter %d: out of memory", i);
		return;
	}
	memcpy(p->v, b, n);
	p->len = (int)n;
}

static void
pg_bind_null(struct db_stmt *bs, int i)
{
	(void)param(bs, i);
}

static enum db_step
pg_step(struct db_stmt *bs)
{
	struct pg_stmt *st = PG_STMT(bs);
	struct pg_conn *c = PG_CONN(bs->c);
	PGresult *res;
	ExecStatusType s;
	int i;

	if (st->bad_bind)
		return DB_FAIL; /* recorded at the binding */
	if (st->res == NULL) {
		if (PQstatus(c->pg) == CONNECTION_BAD) {
			pg_fail(c, NULL);
			return DB_FAIL;
		}
		for (i = 0; i < st->n; i++) {
			st->vals[i] = st->p[i].v;
			st->lens[i] = st->p[i].len;
			st->fmts[i] = st->p[i].fmt;
		}
		if (st->base.key == NULL) {
			for (i = 0; i < st->n; i++)
				st->types[i] = st->p[i].type;
			res = PQexecParams(c->pg, st->sql, st->n, st->types,
			    st->vals, st->lens, st->fmts, 0);
		} else {
			if (st->gen != c->gen) {
				/* Prepared at its first run on this session,
				 * with the types of that run's parameters. */
				for (i = 0; i < st->n; i++)
					st->types[i] = st->p[i].type;
				res = PQprepare(
				    c->pg, st->name, st->sql, st->n, st->types);
				if (res == NULL
				    || PQresultStatus(res)
				        != PGRES_COMMAND_OK) {
					pg_fail(c, res);
					PQclear(res);
					return DB_FAIL;
				}
				PQclear(res);
				st->gen = c->gen;
			}
			res = PQexecPrepared(c->pg, st->name, st->n, st->vals,
			    st->lens, st->fmts, 0);
		}
		s = res != NULL ? PQresultStatus(res) : PGRES_FATAL_ERROR;
		if (s != PGRES_TUPLES_OK && s != PGRES_COMMAND_OK) {
			pg_fail(c, res);
			PQclear(res);
			return DB_FAIL;
		}
		note_changes(c, res);
		st->res = res;
		st->nrows = PQntuples(res);
		st->nfields = PQnfields(res);
		st->row = -1;
		if (st->nfields > 0
		    && (st->dec = calloc((size_t)st->nfields, sizeof(*st->dec)))
		        == NULL) {
			pg_reset(bs);
			db_fail_internal(bs->c, "out of memory");
			return DB_FAIL;
		}
	}
	if (st->row < st->nrows)
		st->row++;
	return st->row < st->nrows ? DB_ROW : DB_DONE;
}

/* The text of a column of the current row; NULL for SQL NULL or none. */
static const char *
cell(struct pg_stmt *st, int col)
{
	if (st->res == NULL || st->row < 0 || st->row >= st->nrows || col < 0
	    || col >= st->nfields || PQgetisnull(st->res, st->row, col))
		return NULL;
	return PQgetvalue(st->res, st->row, col);
}

static int64_t
pg_column_int64(struct db_stmt *bs, int col)
{
	struct pg_stmt *st = PG_STMT(bs);
	const char *v = cell(st, col);

	if (v == NULL)
		return 0;
	if (PQftype(st->res, col) == OID_BOOL)
		return v[0] == 't';
	return strtoll(v, NULL, 10);
}

static const char *
pg_column_text(struct db_stmt *bs, int col)
{
	return cell(PG_STMT(bs), col);
}

/* A bytea column of the current row, decoded once per row. */
static struct pg_decoded *
decoded(struct pg_stmt *st, int col, const char *v)
{
	struct pg_decoded *d = &st->dec[col];

	if (d->p == NULL || d->row != st->row) {
		PQfreemem(d->p);
		d->n = 0;
		d->row = st->row;
		d->p = PQunescapeBytea((const unsigned char *)v, &d->n);
	}
	return d->p != NULL ? d : NULL;
}

static const void *
pg_column_blob(struct db_stmt *bs, int col)
{
	struct pg_stmt *st = PG_STMT(bs);
	const char *v = cell(st, col);
	struct pg_decoded *d;

	if (v == NULL)
		return NULL;
	if (PQftype(st->res, col) != OID_BYTEA)
		return v;
	return (d = decoded(st, col, v)) != NULL ? d->p : NULL;
}

static size_t
pg_column_bytes(struct db_stmt *bs, int col)
{
	struct pg_stmt *st = PG_STMT(bs);
	const char *v = cell(st, col);
	struct pg_decoded *d;

	if (v == NULL)
		return 0;
	if (PQftype(st->res, col) != OID_BYTEA)
		return (size_t)PQgetlength(st->res, st->row, col);
	return (d = decoded(st, col, v)) != NULL ? d->n : 0;
}

static int
pg_column_is_null(struct db_stmt *bs, int col)
{
	return cell(PG_STMT(bs), col) == NULL;
}

static int64_t
pg_changes(struct db_conn *c)
{
	return PG_CONN(c)->changes;
}

static void
pg_rollback(struct db_conn *bc)
{
	struct pg_conn *c = PG_CONN(bc);
	PGTransactionStatusType t = PQtransactionStatus(c->pg);

	/* The last failure stays what it was: callers ask about it after. */
	if (t == PQTRANS_INTRANS || t == PQTRANS_INERROR)
		PQclear(PQexec(c->pg, "ROLLBACK"));
}

const struct db_ops db_pg_ops = {
    .engine = DB_POSTGRES,
    .init = pg_init,
    .fini = pg_fini,
    .conn_open = pg_conn_open,
    .conn_close = pg_conn_close,
    .conn_check = pg_conn_check,
    .version_string = pg_version_string,
    .exec = pg_exec,
    .stmt_new = pg_stmt_new,
    .stmt_free = pg_stmt_free,
    .stmt_clear = pg_stmt_clear,
    .reset = pg_reset,
    .bind_text = pg_bind_text,
    .bind_int64 = pg_bind_int64,
    .bind_blob = pg_bind_blob,
    .bind_null = pg_bind_null,
    .step = pg_step,
    .column_int64 = pg_column_int64,
    .column_text = pg_column_text,
    .column_blob = pg_column_blob,
    .column_bytes = pg_column_bytes,
    .column_is_null = pg_column_is_null,
    .changes = pg_changes,
    .err = pg_err,
    .rollback = pg_rollback,
};
