/* SPDX-License-Identifier: Apache-2.0 */
/* store_int.h: internals shared by the store_*.c files (not for others). */
#ifndef KB_STORE_INT_H
#define KB_STORE_INT_H

#include <pthread.h>

#include <sqlite3.h>

#include "store.h"

#define STMT_CACHE 128

struct conn {
	sqlite3 *db;
	struct {
		const char *sql; /* static string: compared by address */
		sqlite3_stmt *st;
	} cache[STMT_CACHE];
	int ncache;
};

struct store {
	char *path;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct conn *conns;
	struct conn **free_list;
	unsigned nconns, nfree;
};

/* Map an SQLite result code to our errors with a message naming `what`. */
enum kb_err store_sql_err(sqlite3 *db, int rc, const char *what);
enum kb_err store_exec(sqlite3 *db, const char *sql, const char *what);
/* A cached prepared statement for `sql`, which must be a static string. */
enum kb_err store_stmt(struct conn *c, const char *sql, sqlite3_stmt **out);
struct conn *store_conn_get(struct store *s);
void store_conn_put(struct store *s, struct conn *c);
/* Step a statement that changes rows; constraint failures are
 * KB_ERR_ALREADY_EXISTS. */
enum kb_err store_step_done(struct conn *c, sqlite3_stmt *st, const char *what);
void store_copy_text(char *dst, size_t len, sqlite3_stmt *st, int col);
enum kb_err store_tenant_exists(struct conn *c, const char *tenant);

#define KEY_COLS                                                               \
	"id, coalesce(tenant_id, ''), purpose, origin, state, "                \
	"fingerprint, wrap_alg, create_time_us, update_time_us, bits, "        \
	"activate_time_us, lock_time_us, delete_time_us, parent_id, wrapped, " \
	"delete_request_us, delete_final_us, retire_time_us"
void store_key_row(sqlite3_stmt *st, void *elem); /* a store_key */
enum kb_err store_key_insert_conn(struct conn *c, const struct store_key *k);

/* Column 11: the parent (tenant key) of the KEK sealing the current DEK,
 * "" for platform keys and pre-v2 rows; 12 and 13: a pending deletion. */
#define ENV_COLS                                                               \
	"e.tenant_id, e.name, e.mode, e.state, e.dek_version, "                \
	"d.key_id, d.wrap_alg, e.create_time_us, e.update_time_us, "           \
	"e.lock_time_us, e.uid, coalesce((SELECT k.parent_id FROM keys k "     \
	"WHERE k.id = d.key_id AND k.purpose = 'kek'), ''), "                  \
	"e.delete_request_us, e.delete_final_us"
#define ENV_JOIN                                                               \
	"FROM environments e LEFT JOIN deks d ON d.env_id = e.id "             \
	"AND d.version = e.dek_version"
void store_env_row(sqlite3_stmt *st, void *elem); /* a store_env */

/* Fill one record of `elem` from the current row. */
typedef void (*store_row_fn)(sqlite3_stmt *st, void *elem);

/* Step a bound statement to its end, collecting each row into a malloc'd
 * array of `size`-byte records through `fn` (*out NULL when empty). The
 * statement is reset. */
enum kb_err store_collect(struct conn *c, sqlite3_stmt *st, size_t size,
    store_row_fn fn, void **out, size_t *n, const char *what);

/* Read the one row `sql` selects with text parameters a1 (and a2 if not
 * NULL) into `out` through `fn`; KB_ERR_NOT_FOUND "<noun> \"a1\" does not
 * exist" when there is none. */
enum kb_err store_get_one(struct store *s, const char *sql, const char *a1,
    const char *a2, store_row_fn fn, void *out, const char *noun);

/* Run one statement whose parameters are given by `types`: 't' a text
 * (const char *), 'i' an int64_t. For the short updates inside
 * transactions. */
enum kb_err store_run(
    struct conn *c, const char *sql, const char *what, const char *types, ...);

/* How many rows a retirement of `key_id` re-seals under `target`
 * (store_keys.c). */
enum kb_err store_job_count_retire(struct conn *c, const char *tenant,
    const char *target, const char *key_id, int64_t *total);

/* Run fn(c, arg) inside BEGIN IMMEDIATE ... COMMIT; on error roll back, so
 * the database is unaltered. */
enum kb_err store_txn(struct store *s,
    enum kb_err (*fn)(struct conn *c, void *arg), void *arg, const char *what);

#endif /* KB_STORE_INT_H */
