/* SPDX-License-Identifier: Apache-2.0 */
/* store_doctor.c: what the doctor reads of the database: a read-only open
 * that changes no file, the states on the way out, and which environments
 * a key protects. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store_int.h"

/* The URI of `path` for sqlite3_open_v2 (SQLITE_OPEN_URI): every byte but
 * the unreserved ones percent-encoded, so any path is one file name. */
static int
uri_of(const char *path, const char *query, char *buf, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = 0;
	const unsigned char *p;

	n = (size_t)snprintf(buf, len, "file:");
	for (p = (const unsigned char *)path; *p != '\0' && n + 4 < len; p++) {
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
		    || (*p >= '0' && *p <= '9') || strchr("/-._~", *p) != NULL)
			buf[n++] = (char)*p;
		else {
			buf[n++] = '%';
			buf[n++] = hex[*p >> 4];
			buf[n++] = hex[*p & 15];
		}
	}
	if (*p != '\0' || n + strlen(query) + 1 > len)
		return -1;
	snprintf(buf + n, len - n, "%s", query);
	return 0;
}

enum kb_err
store_open_readonly(const char *path, struct store **out, int *schema)
{
	struct store *s = NULL;
	sqlite3_stmt *st = NULL;
	char uri[8400], wal[4200];
	enum kb_err e = KB_ERR_INTERNAL;
	int rc;

	*out = NULL;
	*schema = 0;
	if (access(path, F_OK) != 0)
		return kb_errf(
		    KB_ERR_NOT_FOUND, "database %s does not exist", path);
	/* A read-only connection to a WAL database creates its -wal and -shm
	 * files when they are absent (after a clean stop): then the file is
	 * the whole database, and immutable reads it as it is without them.
	 * With a -wal (a broker running, or one that crashed), read it too. */
	snprintf(wal, sizeof(wal), "%s-wal", path);
	if (uri_of(path, access(wal, F_OK) == 0 ? "?mode=ro" : "?immutable=1",
	        uri, sizeof(uri))
	    != 0)
		return kb_errf(
		    KB_ERR_CONFIG, "database path too long: %s", path);
	if ((s = calloc(1, sizeof(*s))) == NULL
	    || (s->path = strdup(path)) == NULL
	    || (s->conns = calloc(1, sizeof(*s->conns))) == NULL
	    || (s->free_list = calloc(1, sizeof(*s->free_list))) == NULL) {
		e = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	rc = sqlite3_open_v2(uri, &s->conns[0].db,
	    SQLITE_OPEN_READONLY | SQLITE_OPEN_URI | SQLITE_OPEN_NOMUTEX, NULL);
	s->nconns = 1;
	if (rc != SQLITE_OK) {
		e = store_sql_err(s->conns[0].db, rc, "opening the database");
		kb_err_wrap(e, "%s (read-only)", path);
		goto out;
	}
	sqlite3_busy_timeout(s->conns[0].db, 5000);
	sqlite3_extended_result_codes(s->conns[0].db, 1);
	if ((rc = sqlite3_prepare_v2(
	         s->conns[0].db, "PRAGMA user_version", -1, &st, NULL))
	        != SQLITE_OK
	    || (rc = sqlite3_step(st)) != SQLITE_ROW) {
		e = store_sql_err(
		    s->conns[0].db, rc, "reading the schema version");
		kb_err_wrap(e, "%s", path);
		goto out;
	}
	*schema = sqlite3_column_int(st, 0);
	s->free_list[s->nfree++] = &s->conns[0];
	*out = s;
	s = NULL;
	e = KB_OK;
out:
	sqlite3_finalize(st);
	store_close(s);
	return e;
}

static void
state_count_row(sqlite3_stmt *st, void *elem)
{
	struct store_state_count *c = elem;

	store_copy_text(c->kind, sizeof(c->kind), st, 0);
	store_copy_text(c->state, sizeof(c->state), st, 1);
	c->count = (uint64_t)sqlite3_column_int64(st, 2);
	c->oldest_us = sqlite3_column_int64(st, 3);
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
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;

	*out = NULL;
	*n = 0;
	if ((e = store_stmt(c, sql, &st)) == KB_OK)
		e = store_collect(c, st, sizeof(**out), state_count_row,
		    (void **)out, n, "counting states");
	store_conn_put(s, c);
	return e;
}

enum kb_err
store_key_dependent_envs(
    struct store *s, const char *key_id, char *names, size_t len)
{
	static const char sql[] =
	    "SELECT coalesce(group_concat(n, ', '), '') FROM (SELECT DISTINCT "
	    "e.tenant_id || '/' || e.name AS n FROM deks d JOIN environments e "
	    "ON e.id = d.env_id WHERE e.state != 'deleted' AND (d.key_id = ?1 "
	    "OR d.key_id IN (SELECT id FROM keys WHERE parent_id = ?1 AND "
	    "purpose = 'kek')) ORDER BY n LIMIT 20)";
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;
	int rc;

	if (len > 0)
		names[0] = '\0';
	if ((e = store_stmt(c, sql, &st)) != KB_OK)
		goto out;
	sqlite3_bind_text(st, 1, key_id, -1, SQLITE_STATIC);
	if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		store_copy_text(names, len, st, 0);
		e = KB_OK;
	} else {
		e = store_sql_err(c->db, rc, "listing what a key protects");
	}
	sqlite3_reset(st);
out:
	store_conn_put(s, c);
	return e;
}
