/* SPDX-License-Identifier: Apache-2.0 */
/* store_int.h: internals shared by the store_*.c files (not for others). */
#ifndef KB_STORE_INT_H
#define KB_STORE_INT_H

#include "db.h"
#include "store.h"

struct store {
	struct db *db; /* the pool, the engine, the schema version */
	unsigned nconns;
};

/* The store's schema: its migrations and PostgreSQL base (store.c). */
const struct db_schema *store_db_schema(void);

/* Step a statement that changes rows and reset it; a unique or primary
 * key violation is KB_ERR_ALREADY_EXISTS, other failures as db_err maps
 * them, each naming `what`. */
enum kb_err store_step_done(
    struct db_conn *c, struct db_stmt *st, const char *what);
void store_copy_text(char *dst, size_t len, struct db_stmt *st, int col);
enum kb_err store_tenant_exists(struct db_conn *c, const char *tenant);

#define KEY_COLS                                                               \
	"id, coalesce(tenant_id, ''), purpose, origin, state, "                \
	"fingerprint, wrap_alg, create_time_us, update_time_us, bits, "        \
	"activate_time_us, lock_time_us, delete_time_us, parent_id, wrapped, " \
	"delete_request_us, delete_final_us, retire_time_us"
void store_key_row(struct db_stmt *st, void *elem); /* a store_key */
enum kb_err store_key_insert_conn(struct db_conn *c, const struct store_key *k);

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
void store_env_row(struct db_stmt *st, void *elem); /* a store_env */

/* Fill one record of `elem` from the current row. */
typedef void (*store_row_fn)(struct db_stmt *st, void *elem);

/* Step a bound statement to its end, collecting each row into a malloc'd
 * array of `size`-byte records through `fn` (*out NULL when empty). The
 * statement is reset. */
enum kb_err store_collect(struct db_conn *c, struct db_stmt *st, size_t size,
    store_row_fn fn, void **out, size_t *n, const char *what);

/* Step a bound statement to its end, joining the values of its column 0
 * by ", " into `names` (a list a person reads: cut short when it does not
 * fit). The statement is reset. */
enum kb_err store_names_join(struct db_conn *c, struct db_stmt *st, char *names,
    size_t len, const char *what);

/* Read the one row `sql` selects with text parameters a1 (and a2 if not
 * NULL) into `out` through `fn`; KB_ERR_NOT_FOUND "<noun> \"a1\" does not
 * exist" when there is none. */
enum kb_err store_get_one(struct store *s, const char *sql, const char *a1,
    const char *a2, store_row_fn fn, void *out, const char *noun);

/* Run one statement whose parameters are given by `types`: 't' a text
 * (const char *), 'i' an int64_t. For the short updates inside
 * transactions. */
enum kb_err store_run(struct db_conn *c, const char *sql, const char *what,
    const char *types, ...);

/* How many rows a retirement of `key_id` re-seals under `target`
 * (store_keys.c). */
enum kb_err store_job_count_retire(struct db_conn *c, const char *tenant,
    const char *target, const char *key_id, int64_t *total);

/* Run fn(c, arg) in one write transaction (db_txn) and commit; on error
 * roll back, so the database is unaltered. On PostgreSQL a serialization
 * conflict runs fn again from the start: fn touches only the database and
 * its own outputs in `arg`, which it sets afresh on each run. */
enum kb_err store_txn(struct store *s,
    enum kb_err (*fn)(struct db_conn *c, void *arg), void *arg,
    const char *what);

#endif /* KB_STORE_INT_H */
