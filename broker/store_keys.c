/* SPDX-License-Identifier: Apache-2.0 */
/* store_keys.c: tenant keys and activation jobs in the database. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_int.h"

enum kb_err
store_key_list(struct store *s, const char *tenant, const char *purpose,
    struct store_key **out, size_t *n)
{
	static const char sql[] = "SELECT " KEY_COLS " FROM keys WHERE "
	    "tenant_id = ? AND purpose = ? ORDER BY create_time_us, id";
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;

	*out = NULL;
	*n = 0;
	if ((e = store_tenant_exists(c, tenant)) == KB_OK &&
	    (e = store_stmt(c, sql, &st)) == KB_OK) {
		sqlite3_bind_text(st, 1, tenant, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, purpose, -1, SQLITE_STATIC);
		e = store_collect(c, st, sizeof(**out), store_key_row, (void **)out,
		    n, "listing keys");
	}
	store_conn_put(s, c);
	return e;
}

enum kb_err
store_keys_destroyed(struct store *s, struct store_key **out, size_t *n)
{
	static const char sql[] = "SELECT " KEY_COLS " FROM keys WHERE "
	    "purpose = 'tenant' AND state IN ('locked', 'deleted')";
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;

	*out = NULL;
	*n = 0;
	if ((e = store_stmt(c, sql, &st)) == KB_OK)
		e = store_collect(c, st, sizeof(**out), store_key_row, (void **)out,
		    n, "listing destroyed keys");
	store_conn_put(s, c);
	return e;
}

enum kb_err
store_key_by_fingerprint(struct store *s, const char *tenant,
    const char *fingerprint, struct store_key *out)
{
	static const char sql[] = "SELECT " KEY_COLS " FROM keys WHERE "
	    "tenant_id = ? AND purpose = 'tenant' AND fingerprint = ? "
	    "ORDER BY create_time_us DESC LIMIT 1";

	return store_get_one(s, sql, tenant, fingerprint, store_key_row, out,
	    "a key with this fingerprint in tenant");
}

enum kb_err
store_run(struct conn *c, const char *sql, const char *what, const char *types, ...)
{
	sqlite3_stmt *st;
	enum kb_err e;
	va_list ap;
	int i;

	if ((e = store_stmt(c, sql, &st)) != KB_OK)
		return e;
	va_start(ap, types);
	for (i = 0; types[i] != '\0'; i++) {
		if (types[i] == 't')
			sqlite3_bind_text(st, i + 1, va_arg(ap, const char *), -1,
			    SQLITE_TRANSIENT);
		else
			sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t));
	}
	va_end(ap);
	return store_step_done(c, st, what);
}

struct key_add {
	const struct store_key *k;
	int64_t now;
};

static enum kb_err
key_add_txn(struct conn *c, void *arg)
{
	struct key_add *a = arg;
	enum kb_err e;

	if ((e = store_key_insert(c, a->k)) != KB_OK)
		return e;
	return store_run(c, "UPDATE tenants SET last_key_change_us = ? WHERE id = ?",
	    "recording the key change", "it", a->now, a->k->tenant_id);
}

enum kb_err
store_key_add(struct store *s, const struct store_key *k, int64_t now)
{
	struct key_add a = { k, now };

	return store_txn(s, key_add_txn, &a, "recording the key");
}

/* ---- activation jobs ---- */

#define JOB_COLS "id, tenant_id, kind, key_id, previous_key_id, state, " \
	"total, done, error, create_time_us, update_time_us"

static void
job_row(sqlite3_stmt *st, void *elem)
{
	struct store_job *j = elem;

	store_copy_text(j->id, sizeof(j->id), st, 0);
	store_copy_text(j->tenant_id, sizeof(j->tenant_id), st, 1);
	store_copy_text(j->kind, sizeof(j->kind), st, 2);
	store_copy_text(j->key_id, sizeof(j->key_id), st, 3);
	store_copy_text(j->previous_key_id, sizeof(j->previous_key_id), st, 4);
	store_copy_text(j->state, sizeof(j->state), st, 5);
	j->total = (uint64_t)sqlite3_column_int64(st, 6);
	j->done = (uint64_t)sqlite3_column_int64(st, 7);
	store_copy_text(j->error, sizeof(j->error), st, 8);
	j->create_time_us = sqlite3_column_int64(st, 9);
	j->update_time_us = sqlite3_column_int64(st, 10);
}

/* DEK rows of a tenant's customer-managed environments that `key` does not
 * wrap yet. Deleted environments have no DEK rows. */
#define REWRAP_WHERE "FROM deks d JOIN environments e ON e.id = d.env_id " \
	"WHERE e.tenant_id = ?1 AND e.mode = 'customer' AND d.key_id != ?2"

struct act_begin {
	const char *tenant, *key_id, *prev, *job_id;
	int64_t now;
	struct store_job *job;
};

static enum kb_err
activation_begin_txn(struct conn *c, void *arg)
{
	static const char count_sql[] = "SELECT count(*) " REWRAP_WHERE;
	struct act_begin *a = arg;
	sqlite3_stmt *st;
	enum kb_err e;
	int64_t total;
	int rc;

	if ((e = store_stmt(c, count_sql, &st)) != KB_OK)
		return e;
	sqlite3_bind_text(st, 1, a->tenant, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, a->key_id, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	total = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
	sqlite3_reset(st);
	if (rc != SQLITE_ROW)
		return store_sql_err(c->db, rc, "counting environments");
	if ((e = store_run(c, "UPDATE keys SET state = 'installing', update_time_us = ? "
	    "WHERE id = ? AND tenant_id = ? AND state = 'available'",
	    "marking the key installing", "itt", a->now, a->key_id,
	    a->tenant)) != KB_OK)
		return e;
	if (sqlite3_changes(c->db) != 1)
		return kb_errf(KB_ERR_FAILED_PRECONDITION, "key \"%s\" is not "
		    "available", a->key_id);
	if ((e = store_run(c, "UPDATE tenants SET last_activation_us = ?, "
	    "last_key_change_us = ? WHERE id = ?", "recording the activation",
	    "iit", a->now, a->now, a->tenant)) != KB_OK)
		return e;
	if ((e = store_run(c, "INSERT INTO jobs(id, tenant_id, kind, key_id, "
	    "previous_key_id, state, total, done, create_time_us, "
	    "update_time_us) VALUES (?, ?, 'activate', ?, ?, 'running', ?, 0, "
	    "?, ?)", "recording the job", "ttttiii", a->job_id, a->tenant,
	    a->key_id, a->prev, total, a->now, a->now)) != KB_OK)
		return e;
	memset(a->job, 0, sizeof(*a->job));
	snprintf(a->job->id, sizeof(a->job->id), "%s", a->job_id);
	snprintf(a->job->tenant_id, sizeof(a->job->tenant_id), "%s", a->tenant);
	snprintf(a->job->kind, sizeof(a->job->kind), "activate");
	snprintf(a->job->key_id, sizeof(a->job->key_id), "%s", a->key_id);
	snprintf(a->job->previous_key_id, sizeof(a->job->previous_key_id), "%s",
	    a->prev);
	snprintf(a->job->state, sizeof(a->job->state), "running");
	a->job->total = (uint64_t)total;
	a->job->create_time_us = a->job->update_time_us = a->now;
	return KB_OK;
}

enum kb_err
store_activation_begin(struct store *s, const char *tenant, const char *key_id,
    const char *previous_key_id, const char *job_id, int64_t now,
    struct store_job *job)
{
	struct act_begin a = { tenant, key_id, previous_key_id, job_id, now, job };

	return store_txn(s, activation_begin_txn, &a, "starting the activation");
}

enum kb_err
store_rewrap_fetch(struct store *s, const char *tenant, const char *key_id,
    struct store_rewrap *rows, size_t max, size_t *n)
{
	return store_rewrap_fetch_after(s, tenant, key_id, 0, 0, rows, max, n);
}

enum kb_err
store_rewrap_fetch_after(struct store *s, const char *tenant,
    const char *key_id, int64_t after_env_id, uint32_t after_version,
    struct store_rewrap *rows, size_t max, size_t *n)
{
	/* Driven by environments_tenant_mode, whose entries are in id order
	 * within (tenant, mode): SQLite starts at the position and stops after
	 * `max` rows, with no sort (the cost does not grow with the rows done
	 * before it). */
	static const char sql[] = "SELECT d.env_id, d.version, d.key_id, "
	    "d.wrap_alg, d.wrapped FROM environments e JOIN deks d ON "
	    "d.env_id = e.id WHERE e.tenant_id = ?1 AND e.mode = 'customer' "
	    "AND d.key_id != ?2 AND e.id >= ?4 AND (d.env_id, d.version) > "
	    "(?4, ?5) ORDER BY e.id, d.version LIMIT ?3";
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;
	size_t cnt = 0;
	int rc, len;

	*n = 0;
	if ((e = store_stmt(c, sql, &st)) != KB_OK)
		goto out;
	sqlite3_bind_text(st, 1, tenant, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, key_id, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, (sqlite3_int64)max);
	sqlite3_bind_int64(st, 4, after_env_id);
	sqlite3_bind_int64(st, 5, after_version);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct store_rewrap *r = &rows[cnt];

		memset(r, 0, sizeof(*r));
		r->env_id = sqlite3_column_int64(st, 0);
		r->version = (uint32_t)sqlite3_column_int64(st, 1);
		r->dek.version = r->version;
		store_copy_text(r->dek.key_id, sizeof(r->dek.key_id), st, 2);
		store_copy_text(r->dek.wrap_alg, sizeof(r->dek.wrap_alg), st, 3);
		len = sqlite3_column_bytes(st, 4);
		if (len <= 0 || (size_t)len > sizeof(r->dek.wrapped))
			len = 0;
		if (len > 0)
			memcpy(r->dek.wrapped, sqlite3_column_blob(st, 4),
			    (size_t)len);
		r->dek.wrapped_len = (size_t)len;
		cnt++;
	}
	sqlite3_reset(st);
	if (rc != SQLITE_DONE) {
		e = store_sql_err(c->db, rc, "reading data keys to re-wrap");
		goto out;
	}
	*n = cnt;
	e = KB_OK;
out:
	store_conn_put(s, c);
	return e;
}

struct rewrap_commit {
	const char *job_id;
	const struct store_rewrap *rows;
	char (*old)[STORE_KEY_ID_MAX];
	size_t n;
	int64_t now;
};

static enum kb_err
rewrap_commit_txn(struct conn *c, void *arg)
{
	static const char sql[] = "UPDATE deks SET key_id = ?, wrap_alg = ?, "
	    "wrapped = ? WHERE env_id = ? AND version = ? AND key_id = ?";
	struct rewrap_commit *a = arg;
	sqlite3_stmt *st;
	enum kb_err e;
	int64_t changed = 0;
	size_t i;

	for (i = 0; i < a->n; i++) {
		const struct store_rewrap *r = &a->rows[i];

		if ((e = store_stmt(c, sql, &st)) != KB_OK)
			return e;
		sqlite3_bind_text(st, 1, r->dek.key_id, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, r->dek.wrap_alg, -1, SQLITE_STATIC);
		sqlite3_bind_blob(st, 3, r->dek.wrapped, (int)r->dek.wrapped_len,
		    SQLITE_STATIC);
		sqlite3_bind_int64(st, 4, r->env_id);
		sqlite3_bind_int64(st, 5, r->version);
		sqlite3_bind_text(st, 6, a->old[i], -1, SQLITE_STATIC);
		if ((e = store_step_done(c, st, "storing a re-wrapped data key"))
		    != KB_OK)
			return e;
		changed += sqlite3_changes(c->db);
	}
	return store_run(c, "UPDATE jobs SET done = done + ?, update_time_us = ? "
	    "WHERE id = ?", "recording job progress", "iit", changed, a->now,
	    a->job_id);
}

enum kb_err
store_rewrap_commit(struct store *s, const char *job_id,
    const struct store_rewrap *rows, char (*old_key_ids)[STORE_KEY_ID_MAX],
    size_t n, int64_t now)
{
	struct rewrap_commit a = { job_id, rows, old_key_ids, n, now };

	return store_txn(s, rewrap_commit_txn, &a, "storing re-wrapped data keys");
}

struct act_finish {
	const struct store_job *j;
	int64_t now;
};

static enum kb_err
activation_finish_txn(struct conn *c, void *arg)
{
	struct act_finish *a = arg;
	enum kb_err e;

	if ((e = store_run(c, "UPDATE keys SET state = 'available', update_time_us = ? "
	    "WHERE tenant_id = ? AND purpose = 'tenant' AND state = 'active'",
	    "retiring the previous key", "it", a->now, a->j->tenant_id)) != KB_OK)
		return e;
	if ((e = store_run(c, "UPDATE keys SET state = 'active', update_time_us = ?, "
	    "activate_time_us = ? WHERE id = ? AND state = 'installing'",
	    "activating the key", "iit", a->now, a->now, a->j->key_id)) != KB_OK)
		return e;
	return store_run(c, "UPDATE jobs SET state = 'done', done = total, "
	    "update_time_us = ? WHERE id = ?", "finishing the job", "it", a->now,
	    a->j->id);
}

enum kb_err
store_activation_finish(struct store *s, const struct store_job *j,
    int64_t now)
{
	struct act_finish a = { j, now };

	return store_txn(s, activation_finish_txn, &a, "finishing the activation");
}

struct job_fail {
	const char *job_id, *error;
	int64_t now;
};

static enum kb_err
job_fail_txn(struct conn *c, void *arg)
{
	struct job_fail *a = arg;
	enum kb_err e;

	/* The key goes back to available: the environments already re-wrapped
	 * stay readable (each DEK row names its key). */
	if ((e = store_run(c, "UPDATE keys SET state = 'available', update_time_us = ? "
	    "WHERE id = (SELECT key_id FROM jobs WHERE id = ?) AND "
	    "state = 'installing'", "releasing the key", "it", a->now,
	    a->job_id)) != KB_OK)
		return e;
	return store_run(c, "UPDATE jobs SET state = 'failed', error = ?, "
	    "update_time_us = ? WHERE id = ?", "recording the failure", "tit",
	    a->error, a->now, a->job_id);
}

enum kb_err
store_job_fail(struct store *s, const char *job_id, const char *error,
    int64_t now)
{
	struct job_fail a = { job_id, error, now };

	return store_txn(s, job_fail_txn, &a, "recording the job failure");
}

enum kb_err
store_job_get(struct store *s, const char *id, struct store_job *out)
{
	static const char sql[] = "SELECT " JOB_COLS " FROM jobs WHERE id = ?";

	return store_get_one(s, sql, id, NULL, job_row, out, "job");
}

enum kb_err
store_jobs_running(struct store *s, struct store_job **out, size_t *n)
{
	static const char sql[] = "SELECT " JOB_COLS " FROM jobs WHERE "
	    "state = 'running' ORDER BY create_time_us";
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;

	*out = NULL;
	*n = 0;
	if ((e = store_stmt(c, sql, &st)) == KB_OK)
		e = store_collect(c, st, sizeof(**out), job_row, (void **)out, n,
		    "listing jobs");
	store_conn_put(s, c);
	return e;
}
