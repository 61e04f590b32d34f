/* SPDX-License-Identifier: Apache-2.0 */
/* store_backup.c: the database side of disaster recovery: an online
 * snapshot (SQLite), what depends on a key, and a database file made quiet
 * before it is replaced. */
#include "store.h"

#include <sqlite3.h>
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
		e = db_sqlite_err(d, rc, what);
		goto out;
	}
	if ((bk = sqlite3_backup_init(d, "main", src, "main")) == NULL) {
		e = db_sqlite_err(d, sqlite3_errcode(d), what);
		goto out;
	}
	rc = sqlite3_backup_step(bk, -1);
	(void)sqlite3_backup_finish(bk);
	if (rc != SQLITE_DONE) {
		e = db_sqlite_err(d, rc, what);
		goto out;
	}
	/* The copy leaves no -wal of its own behind. */
	if ((rc = sqlite3_exec(
	         d, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, NULL, NULL))
	    != SQLITE_OK) {
		e = db_sqlite_err(d, rc, what);
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
	struct db_conn *c;
	struct sqlite3 *h;
	enum kb_err e;

	if (store_is_postgres(s))
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "backup create copies SQLite databases; this broker's "
		    "store is PostgreSQL (%s): back it up with pg_basebackup "
		    "or pg_dump as the README's \"Backup and recovery\" "
		    "section says",
		    db_target(s->db));
	c = db_conn_get(s->db);
	if ((h = db_conn_sqlite(c)) == NULL)
		e = kb_errf(KB_ERR_INTERNAL, "the store has no SQLite handle");
	else
		e = store_sqlite_copy(h, dest, "snapshotting the database");
	db_conn_put(s->db, c);
	return e;
}

/* How many environments (not deleted) and tenants depend on the key ?1:
 * rows sealed by it, or (a tenant key) by its KEKs. */
#define DEPENDENTS_FROM                                                        \
	"FROM deks d JOIN environments e ON e.id = d.env_id "                  \
	"WHERE e.state != 'deleted' AND (d.key_id = ?1 OR d.key_id IN "        \
	"(SELECT k.id FROM keys k WHERE k.parent_id = ?1 AND "                 \
	"k.purpose = 'kek'))"

enum kb_err
store_names_join(struct db_conn *c, struct db_stmt *st, char *names, size_t len,
    const char *what)
{
	size_t used = 0;
	enum db_step r;
	enum kb_err e = KB_OK;

	if (len > 0)
		names[0] = '\0';
	while ((r = db_step(st)) == DB_ROW) {
		const char *t = db_column_text(st, 0);
		int n;

		if (len == 0 || used >= len - 1)
			continue;
		n = snprintf(names + used, len - used, "%s%s",
		    used > 0 ? ", " : "", t != NULL ? t : "");
		used = n < 0 ? used : used + (size_t)n;
		if (used > len - 1)
			used = len - 1;
	}
	if (r == DB_FAIL)
		e = db_err(c, what);
	db_reset(st);
	return e;
}

enum kb_err
store_key_dependents(struct store *s, const char *key_id, uint64_t *envs,
    uint64_t *tenants, char *names, size_t names_len)
{
	static const char count_sql[] =
	    "SELECT count(DISTINCT d.env_id), count(DISTINCT "
	    "e.tenant_id) " DEPENDENTS_FROM;
	/* The tenants' names by name, the first 20 (joined here: the same
	 * text on both engines). */
	static const char names_sql[] =
	    "SELECT DISTINCT e.tenant_id " DEPENDENTS_FROM
	    " ORDER BY e.tenant_id LIMIT 20";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;
	enum db_step r;

	*envs = *tenants = 0;
	if (names_len > 0)
		names[0] = '\0';
	/* One snapshot: the counts and the names agree. */
	if ((e = db_begin(c, DB_TXN_READ)) != KB_OK)
		goto out;
	if ((e = db_prepare(c, count_sql, &st)) != KB_OK)
		goto rollback;
	db_bind_text(st, 1, key_id);
	if ((r = db_step(st)) == DB_ROW) {
		*envs = (uint64_t)db_column_int64(st, 0);
		*tenants = (uint64_t)db_column_int64(st, 1);
	} else {
		e = db_err(c, "counting what depends on a key");
	}
	db_reset(st);
	if (e != KB_OK || (e = db_prepare(c, names_sql, &st)) != KB_OK)
		goto rollback;
	db_bind_text(st, 1, key_id);
	if ((e = store_names_join(c, st, names, names_len,
	         "listing the tenants that depend on a key"))
	        != KB_OK
	    || (e = db_commit(c)) != KB_OK)
		goto rollback;
	goto out;
rollback:
	db_rollback(c);
out:
	db_conn_put(s->db, c);
	return e;
}

enum kb_err
store_keys_all(struct store *s, struct store_key **out, size_t *n)
{
	static const char sql[] = "SELECT " KEY_COLS " FROM keys ORDER BY "
	                          "purpose, coalesce(tenant_id, ''), id";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;

	if ((e = db_prepare(c, sql, &st)) == KB_OK)
		e = store_collect(c, st, sizeof(**out), store_key_row,
		    (void **)out, n, "listing keys");
	db_conn_put(s->db, c);
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
		e = db_sqlite_err(db, rc, "opening the file to replace");
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
		e = db_sqlite_err(db, rc, "settling the file to replace");
		goto out;
	}
	e = KB_OK;
out:
	sqlite3_close(db);
	if (e != KB_OK)
		kb_err_wrap(e, "%s", path);
	return e;
}
