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
	static const char sql[] =
	    "SELECT " KEY_COLS " FROM keys WHERE "
	    "tenant_id = ? AND purpose = ? ORDER BY create_time_us, id";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;

	*out = NULL;
	*n = 0;
	if ((e = store_tenant_exists(c, tenant)) == KB_OK
	    && (e = db_prepare(c, sql, &st)) == KB_OK) {
		db_bind_text(st, 1, tenant);
		db_bind_text(st, 2, purpose);
		e = store_collect(c, st, sizeof(**out), store_key_row,
		    (void **)out, n, "listing keys");
	}
	db_conn_put(s->db, c);
	return e;
}

enum kb_err
store_keys_destroyed(struct store *s, struct store_key **out, size_t *n)
{
	static const char sql[] =
	    "SELECT " KEY_COLS " FROM keys WHERE "
	    "purpose IN ('tenant', 'kek', 'platform') AND "
	    "state IN ('locked', 'deleted')";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;

	*out = NULL;
	*n = 0;
	if ((e = db_prepare(c, sql, &st)) == KB_OK)
		e = store_collect(c, st, sizeof(**out), store_key_row,
		    (void **)out, n, "listing destroyed keys");
	db_conn_put(s->db, c);
	return e;
}

enum kb_err
store_key_by_fingerprint(struct store *s, const char *tenant,
    const char *fingerprint, struct store_key *out)
{
	static const char sql[] =
	    "SELECT " KEY_COLS " FROM keys WHERE "
	    "tenant_id = ? AND purpose = 'tenant' AND fingerprint = ? "
	    "ORDER BY create_time_us DESC LIMIT 1";

	return store_get_one(s, sql, tenant, fingerprint, store_key_row, out,
	    "a key with this fingerprint in tenant");
}

enum kb_err
store_run(struct db_conn *c, const char *sql, const char *what,
    const char *types, ...)
{
	struct db_stmt *st;
	enum kb_err e;
	va_list ap;
	int i;

	if ((e = db_prepare(c, sql, &st)) != KB_OK)
		return e;
	va_start(ap, types);
	for (i = 0; types[i] != '\0'; i++) {
		if (types[i] == 't')
			db_bind_text(st, i + 1, va_arg(ap, const char *));
		else
			db_bind_int64(st, i + 1, va_arg(ap, int64_t));
	}
	va_end(ap);
	return store_step_done(c, st, what);
}

struct key_add {
	const struct store_key *k;
	int64_t now;
};

static enum kb_err
key_add_txn(struct db_conn *c, void *arg)
{
	struct key_add *a = arg;
	enum kb_err e;

	if ((e = store_key_insert_conn(c, a->k)) != KB_OK)
		return e;
	return store_run(c,
	    "UPDATE tenants SET last_key_change_us = ? WHERE id = ?",
	    "recording the key change", "it", a->now, a->k->tenant_id);
}

enum kb_err
store_tenant_key_add(struct store *s, const struct store_key *k, int64_t now)
{
	struct key_add a = {k, now};

	return store_txn(s, key_add_txn, &a, "recording the key");
}

/* ---- keys of the hierarchy: KEKs and platform keys ---- */

enum kb_err
store_kek_current(struct store *s, const char *tenant, struct store_key *out)
{
	/* The installing KEK while an activation runs (new data keys go
	 * straight under it), else the active one; only a KEK of the
	 * tenant's active (or installing) key: a KEK left under another key
	 * (a failed activation) is no place for new data keys. */
	static const char sql[] =
	    "SELECT " KEY_COLS " FROM keys WHERE "
	    "tenant_id = ?1 AND purpose = 'kek' AND state IN ('active', "
	    "'installing') AND parent_id IN (SELECT p.id FROM keys p WHERE "
	    "p.tenant_id = ?1 AND p.purpose = 'tenant' AND p.state IN "
	    "('active', 'installing')) ORDER BY CASE WHEN state = "
	    "'installing' THEN 0 ELSE 1 END, create_time_us DESC, id DESC "
	    "LIMIT 1";
	enum kb_err e;

	e = store_get_one(s, sql, tenant, NULL, store_key_row, out, "KEK of");
	if (e == KB_ERR_NOT_FOUND)
		e = kb_errf(e,
		    "tenant \"%s\" has no key-encryption key: it "
		    "has no active tenant key",
		    tenant);
	return e;
}

enum kb_err
store_platform_current(struct store *s, struct store_key *out)
{
	static const char sql[] =
	    "SELECT " KEY_COLS " FROM keys WHERE "
	    "tenant_id IS NULL AND purpose = 'platform' AND wrap_alg = ? AND "
	    "state IN ('active', 'installing') ORDER BY CASE WHEN state = "
	    "'installing' THEN 0 ELSE 1 END, create_time_us DESC, id DESC "
	    "LIMIT 1";

	return store_get_one(s, sql, "AES-256-GCM", NULL, store_key_row, out,
	    "platform key of kind");
}

enum kb_err
store_keys_by_purpose(
    struct store *s, const char *purpose, struct store_key **out, size_t *n)
{
	static const char sql[] = "SELECT " KEY_COLS " FROM keys WHERE "
	                          "purpose = ? ORDER BY create_time_us, id";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;

	*out = NULL;
	*n = 0;
	if ((e = db_prepare(c, sql, &st)) == KB_OK) {
		db_bind_text(st, 1, purpose);
		e = store_collect(c, st, sizeof(**out), store_key_row,
		    (void **)out, n, "listing keys");
	}
	db_conn_put(s->db, c);
	return e;
}

enum kb_err
store_key_set_state(struct store *s, const char *id, const char *from,
    const char *to, int64_t now)
{
	struct db_conn *c = db_conn_get(s->db);
	enum kb_err e;

	e = store_run(c,
	    "UPDATE keys SET state = ?1, update_time_us = ?2, "
	    "delete_time_us = CASE WHEN ?1 = 'deleted' THEN ?2 ELSE "
	    "delete_time_us END WHERE id = ?3 AND state = ?4",
	    "changing a key's state", "titt", to, now, id, from);
	if (e == KB_OK && db_changes(c) != 1)
		e = kb_errf(KB_ERR_FAILED_PRECONDITION, "key \"%s\" is not %s",
		    id, from);
	db_conn_put(s->db, c);
	return e;
}

int64_t
store_deks_sealed_by(struct store *s, const char *key_id)
{
	static const char sql[] = "SELECT count(*) FROM deks WHERE key_id = ?";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	int64_t n = -1;

	if (db_prepare(c, sql, &st) == KB_OK) {
		db_bind_text(st, 1, key_id);
		if (db_step(st) == DB_ROW)
			n = db_column_int64(st, 0);
		db_reset(st);
	}
	db_conn_put(s->db, c);
	return n;
}

int64_t
store_deks_legacy(struct store *s)
{
	/* Rows of locked tenants wait for their unlock. */
	static const char sql[] =
	    "SELECT count(*) FROM deks d JOIN "
	    "environments e ON e.id = d.env_id JOIN tenants t ON t.id = "
	    "e.tenant_id WHERE d.wrap_alg != 'AES-256-GCM' AND "
	    "t.state != 'locked' AND d.damaged = ''";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	int64_t n = -1;

	if (db_prepare(c, sql, &st) == KB_OK) {
		if (db_step(st) == DB_ROW)
			n = db_column_int64(st, 0);
		db_reset(st);
	}
	db_conn_put(s->db, c);
	return n;
}

/* ---- jobs ---- */

#define JOB_COLS                                                               \
	"id, coalesce(tenant_id, ''), kind, key_id, "                          \
	"previous_key_id, state, total, done, error, create_time_us, "         \
	"update_time_us, target_key_id"

static void
job_row(struct db_stmt *st, void *elem)
{
	struct store_job *j = elem;

	store_copy_text(j->id, sizeof(j->id), st, 0);
	store_copy_text(j->tenant_id, sizeof(j->tenant_id), st, 1);
	store_copy_text(j->kind, sizeof(j->kind), st, 2);
	store_copy_text(j->key_id, sizeof(j->key_id), st, 3);
	store_copy_text(j->previous_key_id, sizeof(j->previous_key_id), st, 4);
	store_copy_text(j->state, sizeof(j->state), st, 5);
	j->total = (uint64_t)db_column_int64(st, 6);
	j->done = (uint64_t)db_column_int64(st, 7);
	store_copy_text(j->error, sizeof(j->error), st, 8);
	j->create_time_us = db_column_int64(st, 9);
	j->update_time_us = db_column_int64(st, 10);
	store_copy_text(j->target_key_id, sizeof(j->target_key_id), st, 11);
}

/* The rows a job re-seals, by kind: a tenant's customer-managed DEKs not
 * under the target KEK; every platform-managed DEK not under the target
 * platform key; every DEK still in the pre-v2 envelope. Deleted
 * environments have no DEK rows. */
static const char count_activate[] =
    "SELECT count(*) FROM deks d JOIN "
    "environments e ON e.id = d.env_id WHERE e.tenant_id = ?1 AND "
    "e.mode = 'customer' AND d.key_id != ?2 AND d.damaged = ''";
static const char count_platform[] =
    "SELECT count(*) FROM deks d JOIN "
    "environments e ON e.id = d.env_id WHERE CAST(?1 AS TEXT) IS NOT NULL "
    "AND e.mode = 'platform' AND d.key_id != ?2 AND d.damaged = ''";
/* A retirement: rows sealed by the key ?3 or by a KEK under it. */
static const char count_retire[] =
    "SELECT count(*) FROM deks d WHERE CAST(?1 AS TEXT) IS NOT NULL AND "
    "d.key_id IN (SELECT "
    "k.id FROM keys k WHERE k.id = ?3 OR (k.purpose = 'kek' AND "
    "k.parent_id = ?3)) AND d.key_id != ?2 AND d.damaged = ''";
static const char count_upgrade[] =
    "SELECT count(*) FROM deks d WHERE CAST(?1 AS TEXT) IS NOT NULL AND "
    "CAST(?2 AS TEXT) IS NOT NULL AND d.wrap_alg != 'AES-256-GCM' AND "
    "d.damaged = ''";

static const char *
job_count_sql(const char *kind)
{
	if (strcmp(kind, STORE_JOB_ACTIVATE) == 0)
		return count_activate;
	if (strcmp(kind, STORE_JOB_ROTATE) == 0)
		return count_platform;
	if (strcmp(kind, STORE_JOB_RETIRE) == 0)
		return count_retire;
	return count_upgrade;
}

static enum kb_err job_count_key(struct db_conn *c, const char *kind,
    const char *tenant, const char *target, const char *key_id, int64_t *total);

static enum kb_err
job_count(struct db_conn *c, const char *kind, const char *tenant,
    const char *target, int64_t *total)
{
	return job_count_key(c, kind, tenant, target, "", total);
}

enum kb_err
store_job_count_retire(struct db_conn *c, const char *tenant,
    const char *target, const char *key_id, int64_t *total)
{
	return job_count_key(
	    c, STORE_JOB_RETIRE, tenant, target, key_id, total);
}

/* job_count, for a retirement of `key_id` too. */
static enum kb_err
job_count_key(struct db_conn *c, const char *kind, const char *tenant,
    const char *target, const char *key_id, int64_t *total)
{
	struct db_stmt *st;
	enum kb_err e;
	enum db_step rc;

	if ((e = db_prepare(c, job_count_sql(kind), &st)) != KB_OK)
		return e;
	db_bind_text(st, 1, tenant);
	db_bind_text(st, 2, target);
	if (strcmp(kind, STORE_JOB_RETIRE) == 0)
		db_bind_text(st, 3, key_id);
	rc = db_step(st);
	*total = rc == DB_ROW ? db_column_int64(st, 0) : 0;
	db_reset(st);
	if (rc != DB_ROW)
		return db_err(c, "counting data keys");
	return KB_OK;
}

static enum kb_err
job_insert(struct db_conn *c, const struct store_job *j)
{
	return store_run(c,
	    "INSERT INTO jobs(id, tenant_id, kind, key_id, "
	    "previous_key_id, target_key_id, state, total, done, "
	    "create_time_us, update_time_us) VALUES (?, "
	    "nullif(CAST(? AS TEXT), ''), ?, ?, ?, ?, 'running', ?, 0, ?, ?)",
	    "recording the job", "ttttttiii", j->id, j->tenant_id, j->kind,
	    j->key_id, j->previous_key_id, j->target_key_id, (int64_t)j->total,
	    j->create_time_us, j->update_time_us);
}

static void
job_fill(struct store_job *j, const char *id, const char *tenant,
    const char *kind, const char *key_id, const char *prev, const char *target,
    int64_t now)
{
	memset(j, 0, sizeof(*j));
	snprintf(j->id, sizeof(j->id), "%s", id);
	snprintf(j->tenant_id, sizeof(j->tenant_id), "%s", tenant);
	snprintf(j->kind, sizeof(j->kind), "%s", kind);
	snprintf(j->key_id, sizeof(j->key_id), "%s", key_id);
	snprintf(j->previous_key_id, sizeof(j->previous_key_id), "%s", prev);
	snprintf(j->target_key_id, sizeof(j->target_key_id), "%s", target);
	snprintf(j->state, sizeof(j->state), "running");
	j->create_time_us = j->update_time_us = now;
}

struct act_begin {
	const char *tenant, *key_id, *prev, *job_id;
	const struct store_key *kek;
	int64_t now;
	struct store_job *job;
};

static enum kb_err
activation_begin_txn(struct db_conn *c, void *arg)
{
	struct act_begin *a = arg;
	enum kb_err e;
	int64_t total;

	if ((e = store_run(c,
	         "UPDATE keys SET state = 'installing', "
	         "update_time_us = ? WHERE id = ? AND tenant_id = ? AND "
	         "state = 'available'",
	         "marking the key installing", "itt", a->now, a->key_id,
	         a->tenant))
	    != KB_OK)
		return e;
	if (db_changes(c) != 1)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "key \"%s\" is not "
		    "available",
		    a->key_id);
	if ((e = store_key_insert_conn(c, a->kek)) != KB_OK)
		return e;
	if ((e = job_count(
	         c, STORE_JOB_ACTIVATE, a->tenant, a->kek->id, &total))
	    != KB_OK)
		return e;
	if ((e = store_run(c,
	         "UPDATE tenants SET last_activation_us = ?, "
	         "last_key_change_us = ? WHERE id = ?",
	         "recording the activation", "iit", a->now, a->now, a->tenant))
	    != KB_OK)
		return e;
	job_fill(a->job, a->job_id, a->tenant, STORE_JOB_ACTIVATE, a->key_id,
	    a->prev, a->kek->id, a->now);
	a->job->total = (uint64_t)total;
	return job_insert(c, a->job);
}

enum kb_err
store_activation_begin(struct store *s, const char *tenant, const char *key_id,
    const char *previous_key_id, const struct store_key *kek,
    const char *job_id, int64_t now, struct store_job *job)
{
	struct act_begin a = {
	    tenant, key_id, previous_key_id, job_id, kek, now, job};

	return store_txn(
	    s, activation_begin_txn, &a, "starting the activation");
}

struct job_begin {
	const struct store_key *key; /* a new key to record, or NULL */
	struct store_job *job;
};

static enum kb_err
job_begin_txn(struct db_conn *c, void *arg)
{
	struct job_begin *a = arg;
	enum kb_err e;
	int64_t total;

	if (a->key != NULL && (e = store_key_insert_conn(c, a->key)) != KB_OK)
		return e;
	if ((e = job_count(c, a->job->kind, a->job->tenant_id,
	         a->job->target_key_id, &total))
	    != KB_OK)
		return e;
	a->job->total = (uint64_t)total;
	return job_insert(c, a->job);
}

enum kb_err
store_job_begin(struct store *s, const char *job_id, const char *kind,
    const struct store_key *new_key, const char *previous_key_id, int64_t now,
    struct store_job *job)
{
	struct job_begin a = {new_key, job};
	struct store_job *v = NULL;
	size_t n = 0, i;
	enum kb_err e;

	if ((e = store_jobs_running(s, &v, &n)) != KB_OK)
		return e;
	for (i = 0; i < n; i++) {
		if (strcmp(v[i].kind, kind) == 0) {
			*job = v[i];
			free(v);
			return kb_errf(KB_ERR_ALREADY_EXISTS,
			    "job %s (%s) is "
			    "already running: %llu of %llu done",
			    job->id, kind, (unsigned long long)job->done,
			    (unsigned long long)job->total);
		}
	}
	free(v);
	job_fill(job, job_id, "", kind, new_key != NULL ? new_key->id : "",
	    previous_key_id, new_key != NULL ? new_key->id : "", now);
	return store_txn(s, job_begin_txn, &a, "starting the job");
}

enum kb_err
store_rewrap_fetch_after(struct store *s, const struct store_job *job,
    int64_t after_env_id, uint32_t after_version, struct store_rewrap *rows,
    size_t max, size_t *n)
{
	/* Driven by environments_tenant_mode (activation) or the primary
	 * key, in (env id, version) order from the position: each call
	 * costs what it returns, not the rows done before it. */
#define RW_COLS                                                                \
	"SELECT d.env_id, d.version, d.key_id, d.wrap_alg, "                   \
	"d.wrapped, e.tenant_id, e.name, e.uid, e.mode, e.state, d.damaged "   \
	"FROM environments e JOIN deks d ON d.env_id = e.id "
	static const char act_sql[] = RW_COLS
	    "WHERE e.tenant_id = ?1 AND "
	    "e.mode = 'customer' AND d.key_id != ?2 AND d.damaged = '' AND"
	    " e.id >= ?4 AND "
	    "(d.env_id, d.version) > (?4, ?5) ORDER BY e.id, d.version "
	    "LIMIT ?3";
	static const char rot_sql[] = RW_COLS
	    "WHERE CAST(?1 AS TEXT) IS NOT NULL AND "
	    "e.mode = 'platform' AND d.key_id != ?2 AND d.damaged = '' AND"
	    " e.id >= ?4 AND "
	    "(d.env_id, d.version) > (?4, ?5) ORDER BY e.id, d.version "
	    "LIMIT ?3";
	static const char upg_sql[] =
	    RW_COLS "WHERE CAST(?1 AS TEXT) IS NOT NULL AND "
	            "CAST(?2 AS TEXT) IS NOT NULL AND "
	            "d.wrap_alg != 'AES-256-GCM' AND d.damaged = '' AND"
	            " e.id >= ?4 AND "
	            "(d.env_id, d.version) > (?4, ?5) ORDER BY e.id, d.version "
	            "LIMIT ?3";
	static const char ret_sql[] = RW_COLS
	    "WHERE CAST(?1 AS TEXT) IS NOT NULL AND d.key_id IN (SELECT k.id "
	    "FROM keys k WHERE "
	    "k.id = ?6 OR (k.purpose = 'kek' AND k.parent_id = ?6)) AND "
	    "d.key_id != ?2 AND d.damaged = '' AND e.id >= ?4 AND "
	    "(d.env_id, d.version) > (?4, ?5) ORDER BY e.id, d.version "
	    "LIMIT ?3";
	static const char ver_sql[] =
	    RW_COLS "WHERE (?1 = '' OR "
	            "e.tenant_id = ?1) AND CAST(?2 AS TEXT) IS NOT NULL AND "
	            "e.id >= ?4 AND "
	            "(d.env_id, d.version) > (?4, ?5) ORDER BY e.id, d.version "
	            "LIMIT ?3";
#undef RW_COLS
	const char *sql = strcmp(job->kind, STORE_JOB_ACTIVATE) == 0 ? act_sql
	    : strcmp(job->kind, STORE_JOB_ROTATE) == 0               ? rot_sql
	    : strcmp(job->kind, STORE_SCAN_VERIFY) == 0              ? ver_sql
	    : strcmp(job->kind, STORE_JOB_RETIRE) == 0               ? ret_sql
	                                                             : upg_sql;
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;
	size_t cnt = 0;
	char mode[16];
	enum db_step rc = DB_DONE;
	size_t len;

	*n = 0;
	if ((e = db_prepare(c, sql, &st)) != KB_OK)
		goto out;
	db_bind_text(st, 1, job->tenant_id);
	db_bind_text(st, 2, job->target_key_id);
	db_bind_int64(st, 3, (int64_t)max);
	db_bind_int64(st, 4, after_env_id);
	db_bind_int64(st, 5, after_version);
	if (strcmp(job->kind, STORE_JOB_RETIRE) == 0)
		db_bind_text(st, 6, job->key_id);
	while (cnt < max && (rc = db_step(st)) == DB_ROW) {
		struct store_rewrap *r = &rows[cnt];

		memset(r, 0, sizeof(*r));
		r->env_id = db_column_int64(st, 0);
		r->version = (uint32_t)db_column_int64(st, 1);
		r->dek.version = r->version;
		store_copy_text(r->dek.key_id, sizeof(r->dek.key_id), st, 2);
		store_copy_text(
		    r->dek.wrap_alg, sizeof(r->dek.wrap_alg), st, 3);
		len = db_column_bytes(st, 4);
		if (len > sizeof(r->dek.wrapped))
			len = 0;
		if (len > 0)
			memcpy(r->dek.wrapped, db_column_blob(st, 4), len);
		r->dek.wrapped_len = len;
		store_copy_text(r->tenant_id, sizeof(r->tenant_id), st, 5);
		store_copy_text(r->name, sizeof(r->name), st, 6);
		store_copy_text(r->uid, sizeof(r->uid), st, 7);
		store_copy_text(mode, sizeof(mode), st, 8);
		r->mode = strcmp(mode, "customer") == 0 ? STORE_MODE_CUSTOMER
		                                        : STORE_MODE_PLATFORM;
		store_copy_text(mode, sizeof(mode), st, 9);
		r->locked = strcmp(mode, "locked") == 0;
		store_copy_text(r->dek.damaged, sizeof(r->dek.damaged), st, 10);
		cnt++;
	}
	if (cnt == max)
		rc = DB_DONE;
	db_reset(st);
	if (rc != DB_DONE) {
		e = db_err(c, "reading data keys to re-seal");
		goto out;
	}
	*n = cnt;
	e = KB_OK;
out:
	db_conn_put(s->db, c);
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
rewrap_commit_txn(struct db_conn *c, void *arg)
{
	static const char sql[] =
	    "UPDATE deks SET key_id = ?, wrap_alg = ?, "
	    "wrapped = ? WHERE env_id = ? AND version = ? AND key_id = ?";
	struct rewrap_commit *a = arg;
	struct db_stmt *st;
	enum kb_err e;
	int64_t changed = 0;
	size_t i;

	for (i = 0; i < a->n; i++) {
		const struct store_rewrap *r = &a->rows[i];

		if (r->skip)
			continue;
		if ((e = db_prepare(c, sql, &st)) != KB_OK)
			return e;
		db_bind_text(st, 1, r->dek.key_id);
		db_bind_text(st, 2, r->dek.wrap_alg);
		db_bind_blob(st, 3, r->dek.wrapped, r->dek.wrapped_len);
		db_bind_int64(st, 4, r->env_id);
		db_bind_int64(st, 5, r->version);
		db_bind_text(st, 6, a->old[i]);
		if ((e = store_step_done(c, st, "storing a re-sealed data key"))
		    != KB_OK)
			return e;
		changed += db_changes(c);
	}
	if ((e = store_run(c,
	         "UPDATE jobs SET done = done + CAST(? AS BIGINT), "
	         "update_time_us = ? WHERE id = ? AND state = 'running'",
	         "recording job progress", "iit", changed, a->now, a->job_id))
	    != KB_OK)
		return e;
	/* Progress of no running job: the rows go back (rolled back). */
	if (db_changes(c) != 1)
		return kb_errf(KB_ERR_NOT_FOUND,
		    "job %s is not running: its re-sealed data keys are not "
		    "stored",
		    a->job_id);
	return KB_OK;
}

enum kb_err
store_rewrap_commit(struct store *s, const char *job_id,
    const struct store_rewrap *rows, char (*old_key_ids)[STORE_KEY_ID_MAX],
    size_t n, int64_t now)
{
	struct rewrap_commit a = {job_id, rows, old_key_ids, n, now};

	return store_txn(
	    s, rewrap_commit_txn, &a, "storing re-sealed data keys");
}

struct job_finish {
	const struct store_job *j;
	int64_t now;
};

/* Nothing the job re-seals may be left: a change that committed after the
 * job's last pass (it runs outside the tenant lock) sends it round again. */
static enum kb_err
finish_check(struct db_conn *c, const struct store_job *j)
{
	enum kb_err e;
	int64_t left;

	if ((e = job_count_key(
	         c, j->kind, j->tenant_id, j->target_key_id, j->key_id, &left))
	    != KB_OK)
		return e;
	if (left > 0)
		return kb_errf(KB_ERR_UNAVAILABLE,
		    "job %s: %lld data keys were "
		    "added meanwhile; going round again",
		    j->id, (long long)left);
	return KB_OK;
}

static enum kb_err
activation_finish_txn(struct db_conn *c, void *arg)
{
	struct job_finish *a = arg;
	enum kb_err e;

	if ((e = finish_check(c, a->j)) != KB_OK)
		return e;
	if ((e = store_run(c,
	         "UPDATE keys SET state = 'available', update_time_us = ? "
	         "WHERE tenant_id = ? AND purpose = 'tenant' AND state = "
	         "'active'",
	         "retiring the previous key", "it", a->now, a->j->tenant_id))
	    != KB_OK)
		return e;
	if ((e = store_run(c,
	         "UPDATE keys SET state = 'active', update_time_us = ?, "
	         "activate_time_us = ? WHERE id = ? AND state = 'installing'",
	         "activating the key", "iit", a->now, a->now, a->j->key_id))
	    != KB_OK)
		return e;
	/* The previous KEK seals nothing now: it goes (the caller destroys
	 * its token object), and so does the KEK of an activation that failed
	 * before (still 'installing': left, it would be taken for the current
	 * KEK once its key is active again; its rows moved with this job). */
	if ((e = store_run(c,
	         "UPDATE keys SET state = 'deleted', "
	         "delete_time_us = ?, update_time_us = ? WHERE tenant_id = ? "
	         "AND purpose = 'kek' AND state IN ('active', 'installing') "
	         "AND id != ?",
	         "retiring the previous KEK", "iitt", a->now, a->now,
	         a->j->tenant_id, a->j->target_key_id))
	    != KB_OK)
		return e;
	if ((e = store_run(c,
	         "UPDATE keys SET state = 'active', "
	         "activate_time_us = ?, update_time_us = ? WHERE id = ? AND "
	         "state = 'installing'",
	         "activating the KEK", "iit", a->now, a->now,
	         a->j->target_key_id))
	    != KB_OK)
		return e;
	return store_run(c,
	    "UPDATE jobs SET state = 'done', done = total, "
	    "update_time_us = ? WHERE id = ?",
	    "finishing the job", "it", a->now, a->j->id);
}

static enum kb_err
platform_finish_txn(struct db_conn *c, void *arg)
{
	struct job_finish *a = arg;
	enum kb_err e;

	/* The upgrade leaves the rows of locked tenants (their keys are out
	 * of the token): it ends when a pass moves nothing more. */
	if (strcmp(a->j->kind, STORE_JOB_UPGRADE) != 0
	    && (e = finish_check(c, a->j)) != KB_OK)
		return e;
	if (strcmp(a->j->kind, STORE_JOB_RETIRE) == 0) {
		/* Nothing is sealed by the key or its KEKs now: a tenant key
		 * is retired (it stays in the token until it is deleted), a
		 * KEK or platform key deleted (the caller destroys its
		 * object), and so are the KEKs under a retired key. */
		if ((e = store_run(c,
		         "UPDATE keys SET state = CASE WHEN purpose = 'tenant' "
		         "THEN 'retired' ELSE 'deleted' END, delete_time_us = "
		         "CASE WHEN purpose = 'tenant' THEN delete_time_us "
		         "ELSE CAST(?1 AS BIGINT) END, retire_time_us = CASE "
		         "WHEN purpose = 'tenant' THEN CAST(?1 AS BIGINT) ELSE "
		         "0 END, update_time_us = ?1 WHERE id = ?2 AND state = "
		         "'retiring'",
		         "retiring the key", "it", a->now, a->j->key_id))
		    != KB_OK)
			return e;
		if (db_changes(c) != 1)
			return kb_errf(KB_ERR_FAILED_PRECONDITION,
			    "job %s: key %s is no longer being retired",
			    a->j->id, a->j->key_id);
		if ((e = store_run(c,
		         "UPDATE keys SET state = 'deleted', delete_time_us = "
		         "?1, update_time_us = ?1 WHERE purpose = 'kek' AND "
		         "parent_id = ?2 AND state != 'deleted'",
		         "deleting the retired key's KEKs", "it", a->now,
		         a->j->key_id))
		    != KB_OK)
			return e;
	}
	if (strcmp(a->j->kind, STORE_JOB_ROTATE) == 0) {
		if ((e = store_run(c,
		         "UPDATE keys SET state = 'deleted', "
		         "delete_time_us = ?, update_time_us = ? WHERE "
		         "tenant_id IS "
		         "NULL AND purpose = 'platform' AND state = 'active' "
		         "AND "
		         "id != ?",
		         "retiring the previous platform key", "iit", a->now,
		         a->now, a->j->target_key_id))
		        != KB_OK
		    || (e = store_run(c,
		            "UPDATE keys SET state = 'active', "
		            "activate_time_us = ?, update_time_us = ? WHERE id "
		            "= ? AND "
		            "state = 'installing'",
		            "activating the platform key", "iit", a->now,
		            a->now, a->j->target_key_id))
		        != KB_OK)
			return e;
	}
	return store_run(c,
	    "UPDATE jobs SET state = 'done', done = total, "
	    "update_time_us = ? WHERE id = ?",
	    "finishing the job", "it", a->now, a->j->id);
}

enum kb_err
store_job_finish(struct store *s, const struct store_job *j, int64_t now)
{
	struct job_finish a = {j, now};

	if (strcmp(j->kind, STORE_JOB_ACTIVATE) == 0)
		return store_txn(
		    s, activation_finish_txn, &a, "finishing the activation");
	return store_txn(s, platform_finish_txn, &a, "finishing the job");
}

struct job_fail {
	const char *job_id, *error;
	int64_t now;
};

static enum kb_err
job_fail_txn(struct db_conn *c, void *arg)
{
	struct job_fail *a = arg;
	enum kb_err e;

	/* The tenant key goes back to available. The new KEK stays: the
	 * environments already re-sealed under it stay readable (each DEK row
	 * names its key), and the next activation re-seals them again. */
	if ((e = store_run(c,
	         "UPDATE keys SET state = 'available', update_time_us = ? "
	         "WHERE id = (SELECT key_id FROM jobs WHERE id = ? AND kind = "
	         "'activate') AND state = 'installing'",
	         "releasing the key", "it", a->now, a->job_id))
	    != KB_OK)
		return e;
	/* A retirement that failed gives the key back its state. */
	if ((e = store_run(c,
	         "UPDATE keys SET state = CASE WHEN purpose = 'tenant' THEN "
	         "'available' ELSE 'active' END, update_time_us = ?1 WHERE "
	         "id = (SELECT key_id FROM jobs WHERE id = ?2 AND kind = "
	         "'retire') AND state = 'retiring'",
	         "releasing the key", "it", a->now, a->job_id))
	    != KB_OK)
		return e;
	return store_run(c,
	    "UPDATE jobs SET state = 'failed', error = ?, "
	    "update_time_us = ? WHERE id = ?",
	    "recording the failure", "tit", a->error, a->now, a->job_id);
}

enum kb_err
store_job_fail(
    struct store *s, const char *job_id, const char *error, int64_t now)
{
	struct job_fail a = {job_id, error, now};

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
	static const char sql[] =
	    "SELECT " JOB_COLS " FROM jobs WHERE "
	    "state = 'running' ORDER BY create_time_us, id";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;

	*out = NULL;
	*n = 0;
	if ((e = db_prepare(c, sql, &st)) == KB_OK)
		e = store_collect(c, st, sizeof(**out), job_row, (void **)out,
		    n, "listing jobs");
	db_conn_put(s->db, c);
	return e;
}

enum kb_err
store_jobs_pending(struct store *s, struct store_job **out, size_t *n)
{
	/* A failed job stays in the table for good; one that a later job of
	 * the same kind and tenant finished after it no longer matters. */
	static const char sql[] =
	    "SELECT " JOB_COLS " FROM jobs j WHERE state = 'running' OR "
	    "(state = 'failed' AND NOT EXISTS (SELECT 1 FROM jobs l WHERE "
	    "l.kind = j.kind AND coalesce(l.tenant_id, '') = "
	    "coalesce(j.tenant_id, '') AND l.state = 'done' AND "
	    "l.create_time_us > j.create_time_us)) ORDER BY create_time_us, "
	    "id";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;

	*out = NULL;
	*n = 0;
	if ((e = db_prepare(c, sql, &st)) == KB_OK)
		e = store_collect(c, st, sizeof(**out), job_row, (void **)out,
		    n, "listing pending jobs");
	db_conn_put(s->db, c);
	return e;
}

int64_t
store_deks_count(struct store *s, const char *tenant)
{
	static const char sql[] = "SELECT count(*) FROM deks d JOIN "
	                          "environments e ON e.id = d.env_id WHERE ?1 "
	                          "= '' OR e.tenant_id = ?1";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	int64_t n = -1;

	if (db_prepare(c, sql, &st) == KB_OK) {
		db_bind_text(st, 1, tenant);
		if (db_step(st) == DB_ROW)
			n = db_column_int64(st, 0);
		db_reset(st);
	}
	db_conn_put(s->db, c);
	return n;
}

enum kb_err
store_dek_replace(struct store *s, const char *tenant, const char *name,
    const struct store_dek *d)
{
	static const char sql[] =
	    "UPDATE deks SET key_id = ?, wrap_alg = ?, "
	    "wrapped = ?, damaged = '' WHERE version = ? AND env_id = (SELECT "
	    "id FROM environments WHERE tenant_id = ? AND name = ?)";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;

	if ((e = db_prepare(c, sql, &st)) == KB_OK) {
		db_bind_text(st, 1, d->key_id);
		db_bind_text(st, 2, d->wrap_alg);
		db_bind_blob(st, 3, d->wrapped, d->wrapped_len);
		db_bind_int64(st, 4, d->version);
		db_bind_text(st, 5, tenant);
		db_bind_text(st, 6, name);
		e = store_step_done(c, st, "repairing a data key");
		if (e == KB_OK && db_changes(c) != 1)
			e = kb_errf(KB_ERR_NOT_FOUND,
			    "%s/%s has no data key "
			    "version %u",
			    tenant, name, d->version);
	}
	db_conn_put(s->db, c);
	return e;
}

enum kb_err
store_dek_mark_damaged(struct store *s, const char *tenant, const char *name,
    uint32_t version, const char *why)
{
	struct db_conn *c = db_conn_get(s->db);
	enum kb_err e;

	e = store_run(c,
	    "UPDATE deks SET damaged = ? WHERE version = ? AND "
	    "env_id = (SELECT id FROM environments WHERE tenant_id = ? AND "
	    "name = ?)",
	    "marking a data key unrecoverable", "titt", why, (int64_t)version,
	    tenant, name);
	if (e == KB_OK && db_changes(c) != 1)
		e = kb_errf(KB_ERR_NOT_FOUND,
		    "%s/%s has no data key version %u", tenant, name, version);
	db_conn_put(s->db, c);
	return e;
}
