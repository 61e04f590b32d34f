/* SPDX-License-Identifier: Apache-2.0 */
/* store_backup.c: the database side of disaster recovery: an online
 * snapshot, what depends on a key, and a database file made quiet before
 * it is replaced. */
#include "store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_int.h"

/* Copy the database `src` (open) into a new file `dest` with SQLite's
 * online backup, in one step: one read transaction, so the copy is one
 * consistent state while writers go on (WAL). */
enum kb_err
store_sqlite_copy(struct sqlite3 *src, const char *dest, const char *what)
{
	sqlite3 *d = NULL;
	sqlite3_backup *bk;
	enum kb_err e;
	int rc;

	rc = sqlite3_open_v2(dest, &d,
	    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
	    NULL);
	if (rc != SQLITE_OK) {
		e = store_sql_err(d, rc, what);
		goto out;
	}
	if ((bk = sqlite3_backup_init(d, "main", src, "main")) == NULL) {
		e = store_sql_err(d, sqlite3_errcode(d), what);
		goto out;
	}
	rc = sqlite3_backup_step(bk, -1);
	(void)sqlite3_backup_finish(bk);
	if (rc != SQLITE_DONE) {
		e = store_sql_err(d, rc, what);
		goto out;
	}
	/* The copy leaves no -wal of its own behind. */
	if ((rc = sqlite3_exec(
	         d, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL))
	    != SQLITE_OK) {
		e = store_sql_err(d, rc, what);
		goto out;
	}
	e = KB_OK;
out:
	if (sqlite3_close(d) != SQLITE_OK && e == KB_OK)
		e = kb_errf(KB_ERR_STORE, "%s: closing %s", what, dest);
	return e;
}

enum kb_err
store_snapshot(struct store *s, const char *dest)
{
	struct conn *c = store_conn_get(s);
	enum kb_err e;

	e = store_sqlite_copy(c->db, dest, "snapshotting the database");
	store_conn_put(s, c);
	return e;
}

#define DEPENDENTS_SQL                                                         \
	"SELECT count(DISTINCT d.env_id), count(DISTINCT e.tenant_id), "       \
	"coalesce((SELECT group_concat(t, ', ') FROM (SELECT DISTINCT "        \
	"e2.tenant_id AS t FROM deks d2 JOIN environments e2 ON "              \
	"e2.id = d2.env_id WHERE e2.state != 'deleted' AND (d2.key_id = ?1 "   \
	"OR d2.key_id IN (SELECT id FROM keys WHERE parent_id = ?1 AND "       \
	"purpose = 'kek')) ORDER BY t LIMIT 20)), '') "                        \
	"FROM deks d JOIN environments e ON e.id = d.env_id "                  \
	"WHERE e.state != 'deleted' AND (d.key_id = ?1 OR d.key_id IN "        \
	"(SELECT id FROM keys WHERE parent_id = ?1 AND purpose = 'kek'))"

enum kb_err
store_key_dependents(struct store *s, const char *key_id, uint64_t *envs,
    uint64_t *tenants, char *names, size_t names_len)
{
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;
	int rc;

	*envs = *tenants = 0;
	if (names_len > 0)
		names[0] = '\0';
	if ((e = store_stmt(c, DEPENDENTS_SQL, &st)) != KB_OK)
		goto out;
	sqlite3_bind_text(st, 1, key_id, -1, SQLITE_STATIC);
	if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		*envs = (uint64_t)sqlite3_column_int64(st, 0);
		*tenants = (uint64_t)sqlite3_column_int64(st, 1);
		store_copy_text(names, names_len, st, 2);
		e = KB_OK;
	} else {
		e = store_sql_err(c->db, rc, "counting what depends on a key");
	}
	sqlite3_reset(st);
out:
	store_conn_put(s, c);
	return e;
}

enum kb_err
store_keys_all(struct store *s, struct store_key **out, size_t *n)
{
	static const char sql[] = "SELECT " KEY_COLS " FROM keys ORDER BY "
	                          "purpose, coalesce(tenant_id, ''), id";
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;

	if ((e = store_stmt(c, sql, &st)) == KB_OK)
		e = store_collect(c, st, sizeof(**out), store_key_row,
		    (void **)out, n, "listing keys");
	store_conn_put(s, c);
	return e;
}

enum kb_err
store_file_settle(const char *path)
{
	sqlite3 *db = NULL;
	enum kb_err e;
	int rc;

	rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL);
	if (rc != SQLITE_OK) {
		e = store_sql_err(db, rc, "opening the file to replace");
		goto out;
	}
	sqlite3_busy_timeout(db, 0);
	/* Every broker connection (WAL) holds a shared lock on the file: an
	 * exclusive one is refused while any is open. */
	rc = sqlite3_exec(db,
	    "PRAGMA locking_mode=EXCLUSIVE; BEGIN EXCLUSIVE; "
	    "COMMIT; PRAGMA wal_checkpoint(TRUNCATE);",
	    NULL, NULL, NULL);
	if ((rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED) {
		e = kb_errf(KB_ERR_UNAVAILABLE,
		    "%s is in use (is keybrokerd "
		    "running on it? stop it first)",
		    path);
		goto out;
	}
	if (rc != SQLITE_OK) {
		e = store_sql_err(db, rc, "settling the file to replace");
		goto out;
	}
	e = KB_OK;
out:
	sqlite3_close(db);
	if (e != KB_OK)
		kb_err_wrap(e, "%s", path);
	return e;
}
