/* SPDX-License-Identifier: Apache-2.0 */
/* db_lock.c: locks every broker on one database sees. PostgreSQL: a
 * session advisory lock, each on a connection of its own, so it is held
 * exactly as long as that session lives: a broker killed while holding one
 * frees it at once, when the server sees its socket close. The
 * connections are kept for reuse. SQLite: one broker per file, so a lock
 * is granted at once. */
#include "db_int.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How long a waiting lock waits before the call fails UNAVAILABLE. */
#define LOCK_WAIT_TIMEOUT "30s"
/* db_lock_alive asks the server at most this often. */
#define ALIVE_CHECK_MS 1000

struct db_lock {
	struct db *db;
	struct db_conn *c; /* NULL on SQLite */
	int64_t key;
	int64_t checked_ms; /* when alive was last asked */
	int alive;
	struct db_lock *next; /* in db->lock_idle */
};

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* FNV-1a, 64 bits: PostgreSQL's advisory lock key for `name`. */
static int64_t
lock_key(const char *name)
{
	uint64_t h = 14695981039346656037ull;
	const char *p;

	for (p = name; *p != '\0'; p++)
		h = (h ^ (uint8_t)*p) * 1099511628211ull;
	return (int64_t)h;
}

static void
lock_free(struct db_lock *l)
{
	if (l == NULL)
		return;
	db_conn_free(l->c);
	free(l);
}

/* An idle lock with its connection, or a new one. */
static enum kb_err
lock_new(struct db *db, struct db_lock **out)
{
	struct db_lock *l;
	struct db_conn *c;
	enum kb_err e;

	pthread_mutex_lock(&db->mu);
	l = db->lock_idle;
	if (l != NULL)
		db->lock_idle = l->next;
	pthread_mutex_unlock(&db->mu);
	if (l != NULL) {
		l->c->ops->conn_check(l->c);
		*out = l;
		return KB_OK;
	}
	if ((l = calloc(1, sizeof(*l))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	l->db = db;
	if ((e = db->ops->conn_open(db, &c)) != KB_OK) {
		free(l);
		return kb_err_wrap(e, "a lock connection");
	}
	c->db = db;
	c->ops = db->ops;
	l->c = c;
	/* A lock held by a broker that hangs (not dies) must not hang
	 * every other: waiting ends with an error. */
	if ((e = db_exec(c, "SET lock_timeout = '" LOCK_WAIT_TIMEOUT "'",
	         "configuring a lock connection"))
	    != KB_OK) {
		lock_free(l);
		return e;
	}
	*out = l;
	return KB_OK;
}

/* Back to the idle list, or closed when its session is in doubt. */
static void
lock_put(struct db_lock *l, int reusable)
{
	struct db *db = l->db;

	if (!reusable) {
		lock_free(l);
		return;
	}
	pthread_mutex_lock(&db->mu);
	l->next = db->lock_idle;
	db->lock_idle = l;
	pthread_mutex_unlock(&db->mu);
}

enum kb_err
db_lock(struct db *db, const char *name, int wait, struct db_lock **out)
{
	static const char try_sql[] = "SELECT pg_try_advisory_lock(?)";
	static const char wait_sql[] = "SELECT pg_advisory_lock(?)";
	struct db_stmt *st;
	struct db_lock *l = NULL;
	enum kb_err e;
	int got = 1;

	*out = NULL;
	if (db->engine == DB_SQLITE) {
		if ((l = calloc(1, sizeof(*l))) == NULL)
			return kb_errf(KB_ERR_NOMEM, "out of memory");
		l->db = db;
		l->alive = 1;
		*out = l;
		return KB_OK;
	}
	if ((e = lock_new(db, &l)) != KB_OK)
		return e;
	l->key = lock_key(name);
	if ((e = db_prepare(l->c, wait ? wait_sql : try_sql, &st)) != KB_OK)
		goto fail;
	db_bind_int64(st, 1, l->key);
	switch (db_step(st)) {
	case DB_ROW:
		if (!wait)
			got = db_column_int64(st, 0) != 0;
		break;
	case DB_DONE:
	case DB_FAIL:
		e = db_err(l->c, "taking a lock shared by the brokers");
		kb_err_wrap(e, "%s", name);
		db_reset(st);
		goto fail;
	}
	db_reset(st);
	if (!got) {
		lock_put(l, 1);
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "%s is held by another broker", name);
	}
	l->alive = 1;
	l->checked_ms = now_ms();
	*out = l;
	return KB_OK;
fail:
	lock_put(l, 0);
	return e;
}

int
db_lock_alive(struct db_lock *l)
{
	struct db_stmt *st;
	int64_t t;

	if (l == NULL || l->c == NULL)
		return l != NULL;
	if (!l->alive)
		return 0;
	t = now_ms();
	if (t - l->checked_ms < ALIVE_CHECK_MS)
		return 1;
	l->checked_ms = t;
	/* The caller's message (kb_err_msg) is left as it is: nothing here
	 * records one (db_err is not called). */
	if (db_prepare(l->c, "SELECT 1", &st) != KB_OK || db_step(st) != DB_ROW)
		l->alive = 0;
	else
		db_reset(st);
	return l->alive;
}

void
db_unlock(struct db_lock *l)
{
	struct db_stmt *st;
	int ok = 0;

	if (l == NULL)
		return;
	if (l->c == NULL) {
		free(l);
		return;
	}
	/* A session that fails here is closed: its locks go with it. Called
	 * after a failed call too, whose message stays (no db_err here). */
	if (l->alive
	    && db_prepare(l->c, "SELECT pg_advisory_unlock(?)", &st) == KB_OK) {
		db_bind_int64(st, 1, l->key);
		ok = db_step(st) == DB_ROW;
		db_reset(st);
	}
	lock_put(l, ok);
}

void
db_locks_free(struct db *db)
{
	struct db_lock *l, *next;

	for (l = db->lock_idle; l != NULL; l = next) {
		next = l->next;
		lock_free(l);
	}
	db->lock_idle = NULL;
}
