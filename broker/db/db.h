/* SPDX-License-Identifier: Apache-2.0 */
/* db.h: the one database layer under the store and the audit log. It opens
 * SQLite (a file path) or PostgreSQL (a postgresql:// or postgres:// libpq
 * connection string), keeps a pool of connections, runs versioned
 * migrations, maps engine errors to kb_err, and prepares statements written
 * once for both engines. It knows nothing of the broker (no broker.h).
 *
 * SQL is written in the dialect both engines share: '?' or '?N'
 * placeholders (rewritten to $N for PostgreSQL, outside string literals),
 * ON CONFLICT upserts, RETURNING, CASE instead of boolean arithmetic,
 * CAST(? AS BIGINT) where a parameter's type cannot be inferred. Where the
 * dialects differ, db_sql() picks the text for the connection's engine.
 *
 * Threads: a struct db may be used from any thread; a db_conn (and its
 * statements) by one thread at a time, between db_conn_get and
 * db_conn_put. */
#ifndef KB_DB_H
#define KB_DB_H

#include <stddef.h>
#include <stdint.h>

#include "kb_err.h"

enum db_engine { DB_SQLITE, DB_POSTGRES };

/* One migration: brings a schema from version i to i + 1. `sql` runs on
 * both engines unless `pg` is set, in which case SQLite runs `sql` and
 * PostgreSQL runs `pg` ("" = nothing to do there). */
struct db_migration {
	const char *sql;
	const char *pg;
};

/* A component's schema ("store", "audit"). A new PostgreSQL database gets
 * `pg_base` (the schema at version `pg_base_version`, in PostgreSQL's
 * dialect) and then migrations pg_base_version .. n - 1; SQLite, and a
 * PostgreSQL database already at pg_base_version or later, run the
 * migrations from their version. SQLite keeps the version in PRAGMA
 * user_version (one component per file); PostgreSQL in the table
 * kb_schema(component, version), so several components share a database.
 * Migrating takes a lock, so brokers starting together migrate once. */
struct db_schema {
	const char *component;
	const struct db_migration *migrations;
	int n;
	const char *pg_base;
	int pg_base_version;
};

struct db_config {
	const char *target; /* a file path, or a postgresql:// string */
	/* PostgreSQL only: a file holding the password (mode 0600, checked),
	 * or NULL for libpq's own ways (PGPASSFILE, ~/.pgpass). */
	const char *password_file;
	unsigned conns; /* pool size; 0 = 4 */
	/* Open without writing anything: SQLite read-only (immutable when the
	 * file's directory cannot be written), PostgreSQL with
	 * default_transaction_read_only; no migration runs, one connection. */
	int readonly;
	/* With readonly: the schema may be older than `schema`'s newest;
	 * db_version() tells. Without readonly, migrations always run. */
	const struct db_schema *schema;
};

struct db;
struct db_conn;
struct db_stmt;

/* Open `cfg->target`, migrate it to the newest version of `cfg->schema`
 * (unless readonly), and fill the pool. KB_ERR_CONFIG for a schema newer
 * than this build knows, KB_ERR_UNAVAILABLE when a PostgreSQL server
 * cannot be reached. A failed migration leaves the database at the last
 * version that completed. The password is read, used and wiped. */
enum kb_err db_open(const struct db_config *cfg, struct db **out);
void db_close(struct db *db); /* NULL is fine */

enum db_engine db_engine(const struct db *db);
/* "SQLite 3.40.1" / "PostgreSQL 15.18": the engine and its version. */
const char *db_engine_version(const struct db *db);
/* The target with any password removed, for messages and logs. */
const char *db_target(const struct db *db);
/* The schema version found at open (after migrations unless readonly). */
int db_version(const struct db *db);

/* Take a connection from the pool (waits for one) and give it back. A
 * PostgreSQL connection found broken is reconnected here; if that fails the
 * next statement fails KB_ERR_UNAVAILABLE. */
struct db_conn *db_conn_get(struct db *db);
void db_conn_put(struct db *db, struct db_conn *c);
enum db_engine db_conn_engine(const struct db_conn *c);

/* `sqlite` on a SQLite connection, `pg` on a PostgreSQL one. Both must be
 * static strings (statements are cached by address). */
const char *db_sql(const struct db_conn *c, const char *sqlite, const char *pg);

/* Run one or more statements with no parameters and no rows wanted. */
enum kb_err db_exec(struct db_conn *c, const char *sql, const char *what);

/* A prepared statement for `sql`, which must be a static string: it is
 * cached on the connection by address and must not be freed. It comes
 * reset, with its bindings cleared. */
enum kb_err db_prepare(
    struct db_conn *c, const char *sql, struct db_stmt **out);
/* For SQL built at run time: prepared afresh, freed with db_finalize. */
enum kb_err db_prepare_dynamic(
    struct db_conn *c, const char *sql, struct db_stmt **out);
void db_finalize(struct db_stmt *st); /* NULL is fine; only dynamic ones */

/* Parameters are numbered from 1. Text and blobs are copied. */
void db_bind_text(struct db_stmt *st, int i, const char *s);
void db_bind_int64(struct db_stmt *st, int i, int64_t v);
void db_bind_blob(struct db_stmt *st, int i, const void *p, size_t n);
void db_bind_null(struct db_stmt *st, int i);

enum db_step { DB_FAIL = -1, DB_DONE = 0, DB_ROW = 1 };
/* Run the statement (on its first step) and move to its next row. On
 * DB_FAIL, db_err() tells why. */
enum db_step db_step(struct db_stmt *st);
/* Back to before the first step, bindings kept (SQLite's reset). */
void db_reset(struct db_stmt *st);

/* Columns of the current row, numbered from 0. Text and blob pointers are
 * valid until the next step or reset. NULL reads as 0, NULL, 0 bytes.
 * A PostgreSQL boolean reads as 1 or 0. */
int64_t db_column_int64(struct db_stmt *st, int col);
const char *db_column_text(struct db_stmt *st, int col);
const void *db_column_blob(struct db_stmt *st, int col);
size_t db_column_bytes(struct db_stmt *st, int col);
int db_column_is_null(struct db_stmt *st, int col);

/* Rows changed by the last INSERT/UPDATE/DELETE on `c`. */
int64_t db_changes(struct db_conn *c);

/* Map the last failure on `c` to a kb_err with a message naming `what`:
 * KB_ERR_ALREADY_EXISTS for a unique or primary key violation,
 * KB_ERR_UNAVAILABLE for a busy database, a serialization failure, a
 * deadlock or a lost server, KB_ERR_STORAGE_FULL, KB_ERR_READ_ONLY,
 * KB_ERR_CORRUPT, else KB_ERR_STORE. */
enum kb_err db_err(struct db_conn *c, const char *what);
/* The last failure on `c` was a unique or primary key violation. */
int db_failed_unique(const struct db_conn *c);
/* The last failure on `c` was a conflict worth running the whole
 * transaction again for (PostgreSQL serialization failure or deadlock). */
int db_failed_retry(const struct db_conn *c);

/* Transactions. DB_TXN_WRITE serializes writers: SQLite BEGIN IMMEDIATE,
 * PostgreSQL SERIALIZABLE (so a rule read and the write it allows commit
 * together or not at all, across brokers). DB_TXN_READ is one consistent
 * snapshot: SQLite BEGIN, PostgreSQL REPEATABLE READ READ ONLY.
 * DB_TXN_LOCKED is a writer that serializes itself: its first statement
 * takes a lock every writer of what it reads takes (the audit log's LOCK
 * TABLE), so each later statement's fresh snapshot is already what it
 * writes after: SQLite BEGIN IMMEDIATE, PostgreSQL READ COMMITTED, without
 * SERIALIZABLE's predicate locks. */
enum db_txn_mode { DB_TXN_WRITE, DB_TXN_READ, DB_TXN_LOCKED };
enum kb_err db_begin(struct db_conn *c, enum db_txn_mode mode);
enum kb_err db_commit(struct db_conn *c);
void db_rollback(struct db_conn *c); /* safe when no transaction is open */

/* Run fn(c, arg) in a DB_TXN_WRITE transaction on a pooled connection and
 * commit; on error roll back, so the database is unaltered. A conflict
 * (db_failed_retry) runs fn again from the start, a few times, so fn must
 * only touch the database. */
enum kb_err db_txn(struct db *db,
    enum kb_err (*fn)(struct db_conn *c, void *arg), void *arg,
    const char *what);
/* The same in a DB_TXN_LOCKED transaction: fn's first statement takes the
 * lock. */
enum kb_err db_txn_locked(struct db *db,
    enum kb_err (*fn)(struct db_conn *c, void *arg), void *arg,
    const char *what);

/* A cheap round trip to the server (health checks). */
enum kb_err db_ping(struct db *db);

/* Locks every process on the database sees (several brokers on one
 * PostgreSQL): `name` is held until db_unlock, or until this process's
 * session ends, so a killed broker's locks are free at once. PostgreSQL: a
 * session advisory lock on a connection of its own (kept for reuse after
 * db_unlock). SQLite (one broker per file): granted at once; mutual
 * exclusion inside the process is the caller's. wait = 0: fails
 * KB_ERR_FAILED_PRECONDITION when another session holds it; wait = 1:
 * blocks until it is free. KB_ERR_UNAVAILABLE when the server cannot be
 * reached. */
struct db_lock;
enum kb_err db_lock(
    struct db *db, const char *name, int wait, struct db_lock **out);
/* 1 while the lock's session is alive (a cheap round trip on PostgreSQL,
 * at most once a second), else 0. Always 1 on SQLite. */
int db_lock_alive(struct db_lock *l);
void db_unlock(struct db_lock *l); /* NULL is fine */

/* The SQLite handle behind `c` (the online backup), NULL on PostgreSQL. */
struct sqlite3 *db_conn_sqlite(struct db_conn *c);
/* The layer's mapping of a failure `rc` on a SQLite handle opened outside
 * it (a backup's copy; NULL when the open itself failed), for code that
 * uses db_conn_sqlite. */
enum kb_err db_sqlite_err(struct sqlite3 *h, int rc, const char *what);

#endif /* KB_DB_H */
