/* SPDX-License-Identifier: Apache-2.0 */
/* db_int.h: what db.c (the pool, the statement cache, migrations,
 * transactions) shares with the two engines, db_sqlite.c and db_pg.c. Not
 * for code outside broker/db/ (tests excepted). */
#ifndef KB_DB_INT_H
#define KB_DB_INT_H

#include <pthread.h>

#include "db.h"

/* One engine. Connections and statements are the engine's own structs,
 * each beginning with the shared part below. */
struct db_ops {
	enum db_engine engine;
	/* Check and keep what every connection needs (the SQLite URI, the
	 * PostgreSQL parameters and password); fini forgets it, wiping the
	 * password (also after a successful open). */
	enum kb_err (*init)(struct db *db, const struct db_config *cfg);
	void (*fini)(struct db *db);
	enum kb_err (*conn_open)(struct db *db, struct db_conn **out);
	void (*conn_close)(struct db_conn *c); /* not its cached statements */
	/* Reconnect a broken connection (PostgreSQL); nothing on SQLite. */
	void (*conn_check)(struct db_conn *c);
	/* The engine's name and version, from an open connection. */
	void (*version_string)(struct db_conn *c, char *buf, size_t len);

	enum kb_err (*exec)(
	    struct db_conn *c, const char *sql, const char *what);
	enum kb_err (*stmt_new)(struct db_conn *c, const char *sql, int dynamic,
	    struct db_stmt **out);
	void (*stmt_free)(struct db_stmt *st);
	void (*stmt_clear)(struct db_stmt *st); /* reset, bindings cleared */
	void (*reset)(struct db_stmt *st); /* bindings kept */
	void (*bind_text)(struct db_stmt *st, int i, const char *s);
	void (*bind_int64)(struct db_stmt *st, int i, int64_t v);
	void (*bind_blob)(struct db_stmt *st, int i, const void *p, size_t n);
	void (*bind_null)(struct db_stmt *st, int i);
	enum db_step (*step)(struct db_stmt *st);
	int64_t (*column_int64)(struct db_stmt *st, int col);
	const char *(*column_text)(struct db_stmt *st, int col);
	const void *(*column_blob)(struct db_stmt *st, int col);
	size_t (*column_bytes)(struct db_stmt *st, int col);
	int (*column_is_null)(struct db_stmt *st, int col);
	int64_t (*changes)(struct db_conn *c);
	/* Map the failure recorded on `c` (fail_internal aside). */
	enum kb_err (*err)(struct db_conn *c, const char *what);
	void (*rollback)(struct db_conn *c);
};

extern const struct db_ops db_sqlite_ops;
extern const struct db_ops db_pg_ops;

/* The part of a connection db.c knows. */
struct db_conn {
	struct db *db;
	const struct db_ops *ops;
	/* The statement cache: open addressing on the SQL's address. */
	struct db_stmt **slots;
	size_t nslots, nused;
	/* The last failure: engines set unique/retry; fail_internal (with
	 * fail_msg) is a misuse found by the layer (a bad parameter number). */
	int fail_unique, fail_retry, fail_internal;
	char fail_msg[512];
};

/* The part of a statement db.c knows. */
struct db_stmt {
	struct db_conn *c;
	const char *key; /* the static SQL it is cached under; NULL: dynamic */
};

struct db {
	const struct db_ops *ops;
	enum db_engine engine;
	int readonly;
	int version;
	char *target; /* as configured; SQLite: wiped and freed after open */
	char *safe; /* without any password */
	void *eng; /* the engine's own (db_pg.c: connection parameters) */
	char engine_version[96];
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int sync_init;
	struct db_conn **conns, **free_list;
	unsigned nconns, nfree, cap;
	/* db_lock.c: locks released, with their connections, for reuse
	 * (under mu). */
	struct db_lock *lock_idle;
};

/* Close a connection and its cached statements. */
void db_conn_free(struct db_conn *c);
/* Close the idle lock connections (db_close). */
void db_locks_free(struct db *db);

/* Record a misuse on `c` (db_err gives KB_ERR_INTERNAL with it). */
void db_fail_internal(struct db_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Forget the last failure (a transaction begins). */
void db_fail_clear(struct db_conn *c);

/* The SQL with '?' and '?N' placeholders rewritten to PostgreSQL's $N
 * (outside '...' literals, "..." identifiers and comments), numbered as
 * SQLite numbers them: '?N' is N, a bare '?' one more than the largest
 * so far. *nparams gets the largest. malloc'd; NULL when out of memory or
 * a number is out of range (1 .. 32766). */
char *db_placeholders_pg(const char *sql, int *nparams);

/* `target` without a password: a URI's ":password@" and any
 * "password=..." parameter removed. malloc'd, NULL when out of memory. */
char *db_target_safe(const char *target);

#endif /* KB_DB_INT_H */
