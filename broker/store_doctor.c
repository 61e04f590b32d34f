/* SPDX-License-Identifier: Apache-2.0 */
/* store_doctor.c: what the doctor reads of the database: a read-only open
 * that changes nothing, the states on the way out, and which environments
 * a key protects. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_int.h"

enum kb_err
store_open_readonly(const char *target, const char *password_file,
    struct store **out, int *schema)
{
	struct db_config cfg;
	struct store *s;
	enum kb_err e;

	*out = NULL;
	*schema = 0;
	if ((s = calloc(1, sizeof(*s))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	/* The layer opens SQLite read-only (immutable when the file alone is
	 * the database; KB_ERR_NOT_FOUND when there is no file, none is
	 * created) and PostgreSQL in read-only transactions; no migration
	 * runs, the schema may be older than this build's. */
	memset(&cfg, 0, sizeof(cfg));
	cfg.target = target;
	cfg.password_file = password_file;
	cfg.conns = 1;
	cfg.readonly = 1;
	cfg.schema = store_db_schema();
	if ((e = db_open(&cfg, &s->db)) != KB_OK) {
		free(s);
		return e;
	}
	s->nconns = 1;
	*schema = db_version(s->db);
	*out = s;
	return KB_OK;
}

static void
state_count_row(struct db_stmt *st, void *elem)
{
	struct store_state_count *c = elem;

	store_copy_text(c->kind, sizeof(c->kind), st, 0);
	store_copy_text(c->state, sizeof(c->state), st, 1);
	c->count = (uint64_t)db_column_int64(st, 2);
	c->oldest_us = db_column_int64(st, 3);
}

enum kb_err
store_state_counts(struct store *s, struct store_state_count **out, size_t *n)
{
	static const char sql[] =
	    "SELECT 'environment', st, count(*), min(t) FROM (SELECT CASE "
	    "WHEN delete_request_us != 0 AND state != 'deleted' THEN "
	    "'pending_deletion' ELSE state END AS st, CASE WHEN "
	    "delete_request_us != 0 AND state != 'deleted' THEN "
	    "delete_final_us ELSE lock_time_us END AS t FROM environments) "
	    "AS e WHERE st != 'enabled' GROUP BY st "
	    "UNION ALL SELECT 'key', state, count(*), min(CASE WHEN state = "
	    "'pending_deletion' THEN delete_final_us ELSE update_time_us END) "
	    "FROM keys WHERE state NOT IN ('available', 'installing', "
	    "'active', 'retired') GROUP BY state ORDER BY 1, 2";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;

	*out = NULL;
	*n = 0;
	if ((e = db_prepare(c, sql, &st)) == KB_OK)
		e = store_collect(c, st, sizeof(**out), state_count_row,
		    (void **)out, n, "counting states");
	db_conn_put(s->db, c);
	return e;
}

enum kb_err
store_key_dependent_envs(
    struct store *s, const char *key_id, char *names, size_t len)
{
	/* "tenant/env" by name, the first 20, joined here (the same text on
	 * both engines). */
	static const char sql[] =
	    "SELECT DISTINCT e.tenant_id || '/' || e.name AS n FROM deks d "
	    "JOIN environments e ON e.id = d.env_id WHERE e.state != 'deleted' "
	    "AND (d.key_id = ?1 OR d.key_id IN (SELECT k.id FROM keys k WHERE "
	    "k.parent_id = ?1 AND k.purpose = 'kek')) ORDER BY n LIMIT 20";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;

	if (len > 0)
		names[0] = '\0';
	if ((e = db_prepare(c, sql, &st)) == KB_OK) {
		db_bind_text(st, 1, key_id);
		e = store_names_join(
		    c, st, names, len, "listing what a key protects");
	}
	db_conn_put(s->db, c);
	return e;
}
