/* SPDX-License-Identifier: Apache-2.0 */
/* store_stats.c: counts for the metrics endpoint (environments by state,
 * keys by purpose and state). */
#include "store.h"
#include "store_int.h"

static void
count_row(struct db_stmt *st, void *elem)
{
	struct store_count *c = elem;

	store_copy_text(c->a, sizeof(c->a), st, 0);
	store_copy_text(c->b, sizeof(c->b), st, 1);
	c->n = db_column_int64(st, 2);
}

static enum kb_err
counts(struct store *s, const char *sql, struct store_count **out, size_t *n)
{
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;

	*out = NULL;
	*n = 0;
	if ((e = db_prepare(c, sql, &st)) == KB_OK)
		e = store_collect(c, st, sizeof(**out), count_row, (void **)out,
		    n, "counting rows for the metrics");
	db_conn_put(s->db, c);
	return e;
}

enum kb_err
store_env_counts(struct store *s, struct store_count **out, size_t *n)
{
	/* Whatever states the table holds: a state added later (pending
	 * deletion) shows up without a change here. */
	return counts(s,
	    "SELECT state, mode, count(*) FROM environments "
	    "GROUP BY state, mode ORDER BY state, mode",
	    out, n);
}

enum kb_err
store_key_counts(struct store *s, struct store_count **out, size_t *n)
{
	return counts(s,
	    "SELECT purpose, state, count(*) FROM keys "
	    "GROUP BY purpose, state ORDER BY purpose, state",
	    out, n);
}
