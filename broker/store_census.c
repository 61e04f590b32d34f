/* SPDX-License-Identifier: Apache-2.0 */
/* store_census.c: what each key seals, counted exactly (the key census);
 * the start of a key's retirement; an environment's retired DEK versions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_int.h"

/* The keys whose rows count for key ?1: itself, and for a tenant key the
 * KEKs under it. */
#define SEALERS                                                                \
	"(SELECT k.id FROM keys k WHERE k.id = ?1 OR (k.purpose = 'kek' AND "  \
	"k.parent_id = ?1))"

/* A backup counts where the DEK row of its version is one of them. */
#define BACKUPS_OF(d)                                                          \
	"(SELECT count(*) FROM backups b WHERE b.env_id = " d ".env_id AND "   \
	"b.dek_version = " d ".version)"

static enum kb_err
census_totals(struct db_conn *c, const char *key_id, struct store_census *out)
{
	/* Sums CAST to BIGINT: PostgreSQL's sum of a bigint is a numeric. */
	static const char sql[] =
	    "SELECT count(*), CAST(coalesce(sum(" BACKUPS_OF(
	        "d") "), 0) AS "
	             "BIGINT), count(DISTINCT d.env_id), "
	             "count(DISTINCT CASE WHEN e.state = 'enabled' THEN e.id "
	             "END), "
	             "count(DISTINCT CASE WHEN e.state = 'locked' THEN e.id "
	             "END), "
	             "CAST(coalesce(sum(CASE WHEN e.state = 'locked' THEN 1 "
	             "ELSE 0 "
	             "END), 0) AS BIGINT), count(DISTINCT e.tenant_id) FROM "
	             "deks d "
	             "JOIN environments e ON e.id = d.env_id WHERE d.key_id "
	             "IN " SEALERS;
	static const char first_locked[] =
	    "SELECT e.tenant_id, e.name FROM deks d JOIN environments e ON "
	    "e.id = d.env_id WHERE d.key_id IN " SEALERS " AND e.state = "
	    "'locked' ORDER BY e.tenant_id, e.name LIMIT 1";
	struct db_stmt *st;
	enum kb_err e;
	enum db_step rc;

	if ((e = db_prepare(c, sql, &st)) != KB_OK)
		return e;
	db_bind_text(st, 1, key_id);
	if ((rc = db_step(st)) == DB_ROW) {
		out->dek_versions = (uint64_t)db_column_int64(st, 0);
		out->backups = (uint64_t)db_column_int64(st, 1);
		out->envs = (uint64_t)db_column_int64(st, 2);
		out->envs_enabled = (uint64_t)db_column_int64(st, 3);
		out->envs_locked = (uint64_t)db_column_int64(st, 4);
		out->dek_versions_locked = (uint64_t)db_column_int64(st, 5);
		out->tenants = (uint64_t)db_column_int64(st, 6);
	}
	db_reset(st);
	if (rc != DB_ROW)
		return db_err(c, "counting what the key seals");
	out->first_locked[0] = '\0';
	if (out->envs_locked == 0)
		return KB_OK;
	if ((e = db_prepare(c, first_locked, &st)) != KB_OK)
		return e;
	db_bind_text(st, 1, key_id);
	if ((rc = db_step(st)) == DB_ROW)
		snprintf(out->first_locked, sizeof(out->first_locked), "%s/%s",
		    db_column_text(st, 0), db_column_text(st, 1));
	db_reset(st);
	if (rc != DB_ROW)
		return db_err(c, "finding a locked dependent");
	return KB_OK;
}

static void
via_row(struct db_stmt *st, void *elem)
{
	struct store_census_via *v = elem;

	store_copy_text(v->key_id, sizeof(v->key_id), st, 0);
	store_copy_text(v->state, sizeof(v->state), st, 1);
	v->dek_versions = (uint64_t)db_column_int64(st, 2);
	v->backups = (uint64_t)db_column_int64(st, 3);
	v->envs = (uint64_t)db_column_int64(st, 4);
}

static void
dependent_row(struct db_stmt *st, void *elem)
{
	struct store_census_env *v = elem;
	char buf[16];

	store_copy_text(v->tenant_id, sizeof(v->tenant_id), st, 0);
	store_copy_text(v->name, sizeof(v->name), st, 1);
	store_copy_text(buf, sizeof(buf), st, 2);
	v->state = strcmp(buf, "locked") == 0 ? STORE_ENV_LOCKED
	    : strcmp(buf, "deleted") == 0     ? STORE_ENV_DELETED
	                                      : STORE_ENV_ENABLED;
	store_copy_text(buf, sizeof(buf), st, 3);
	v->mode = strcmp(buf, "customer") == 0 ? STORE_MODE_CUSTOMER
	                                       : STORE_MODE_PLATFORM;
	v->dek_versions = (uint32_t)db_column_int64(st, 4);
	v->backups = (uint32_t)db_column_int64(st, 5);
	store_copy_text(v->via, sizeof(v->via), st, 6);
}

static enum kb_err
census_lists(
    struct db_conn *c, const char *key_id, size_t max, struct store_census *out)
{
	/* The key's own row first, then its KEKs, oldest first. */
	static const char via_sql[] =
	    "SELECT k.id, k.state, (SELECT count(*) FROM deks d WHERE "
	    "d.key_id = k.id), (SELECT CAST(coalesce(sum(" BACKUPS_OF(
	        "d") "), "
	             "0) AS BIGINT) FROM deks d WHERE d.key_id = k.id), "
	             "(SELECT "
	             "count(DISTINCT d.env_id) FROM deks d WHERE d.key_id = "
	             "k.id) FROM "
	             "keys k WHERE k.purpose = 'kek' AND k.parent_id = ?1 "
	             "ORDER BY "
	             "k.create_time_us, k.id";
	static const char dep_sql[] =
	    "SELECT e.tenant_id, e.name, e.state, e.mode, count(*), "
	    "CAST(sum(" BACKUPS_OF(
	        "d") ") AS BIGINT), d.key_id FROM deks d "
	             "JOIN environments e ON e.id = d.env_id WHERE d.key_id "
	             "IN " SEALERS " GROUP BY e.id, e.tenant_id, e.name, "
	             "e.state, e.mode, d.key_id "
	             "ORDER BY e.tenant_id, e.name, d.key_id LIMIT ?2";
	struct db_stmt *st;
	enum kb_err e;

	if ((e = db_prepare(c, via_sql, &st)) != KB_OK)
		return e;
	db_bind_text(st, 1, key_id);
	if ((e = store_collect(c, st, sizeof(*out->via), via_row,
	         (void **)&out->via, &out->nvia, "counting the key's KEKs"))
	    != KB_OK)
		return e;
	if ((e = db_prepare(c, dep_sql, &st)) != KB_OK)
		return e;
	db_bind_text(st, 1, key_id);
	db_bind_int64(st, 2, (int64_t)max + 1);
	if ((e = store_collect(c, st, sizeof(*out->dependents), dependent_row,
	         (void **)&out->dependents, &out->ndependents,
	         "listing the key's environments"))
	    != KB_OK)
		return e;
	if (out->ndependents > max) {
		out->ndependents = max;
		out->truncated = 1;
	}
	return KB_OK;
}

enum kb_err
store_key_census(struct store *s, const char *key_id, size_t max_envs,
    struct store_census *out)
{
	struct db_conn *c = db_conn_get(s->db);
	enum kb_err e;

	memset(out, 0, sizeof(*out));
	/* One read transaction: every count from the same snapshot. */
	if ((e = db_begin(c, DB_TXN_READ)) != KB_OK)
		goto out;
	if ((e = census_totals(c, key_id, out)) == KB_OK)
		e = census_lists(c, key_id, max_envs, out);
	if (e == KB_OK)
		e = db_commit(c);
	else
		db_rollback(c);
out:
	db_conn_put(s->db, c);
	if (e != KB_OK)
		store_census_free(out);
	return e;
}

void
store_census_free(struct store_census *c)
{
	if (c == NULL)
		return;
	free(c->via);
	free(c->dependents);
	c->via = NULL;
	c->dependents = NULL;
	c->nvia = c->ndependents = 0;
}

struct retire_begin {
	const char *key_id, *from, *tenant, *target, *job_id;
	int64_t now;
	struct store_job *job;
};

static enum kb_err
retire_begin_txn(struct db_conn *c, void *arg)
{
	struct retire_begin *a = arg;
	enum kb_err e;
	int64_t total;

	if ((e = store_run(c,
	         "UPDATE keys SET state = 'retiring', update_time_us = ? "
	         "WHERE id = ? AND state = ?",
	         "marking the key retiring", "itt", a->now, a->key_id, a->from))
	    != KB_OK)
		return e;
	if (db_changes(c) != 1)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "key \"%s\" is no longer %s", a->key_id, a->from);
	memset(a->job, 0, sizeof(*a->job));
	snprintf(a->job->id, sizeof(a->job->id), "%s", a->job_id);
	snprintf(a->job->tenant_id, sizeof(a->job->tenant_id), "%s", a->tenant);
	snprintf(a->job->kind, sizeof(a->job->kind), "%s", STORE_JOB_RETIRE);
	snprintf(a->job->key_id, sizeof(a->job->key_id), "%s", a->key_id);
	snprintf(a->job->target_key_id, sizeof(a->job->target_key_id), "%s",
	    a->target);
	snprintf(a->job->state, sizeof(a->job->state), "running");
	a->job->create_time_us = a->job->update_time_us = a->now;
	if ((e = store_job_count_retire(
	         c, a->tenant, a->target, a->key_id, &total))
	    != KB_OK)
		return e;
	a->job->total = (uint64_t)total;
	return store_run(c,
	    "INSERT INTO jobs(id, tenant_id, kind, key_id, previous_key_id, "
	    "target_key_id, state, total, done, create_time_us, "
	    "update_time_us) VALUES (?, nullif(CAST(? AS TEXT), ''), ?, ?, '', "
	    "?, "
	    "'running', ?, 0, ?, ?)",
	    "recording the job", "tttttiii", a->job->id, a->job->tenant_id,
	    a->job->kind, a->job->key_id, a->job->target_key_id,
	    (int64_t)a->job->total, a->now, a->now);
}

enum kb_err
store_retire_begin(struct store *s, const char *key_id, const char *from,
    const char *tenant, const char *target, const char *job_id, int64_t now,
    struct store_job *job)
{
	struct retire_begin a = {
	    key_id, from, tenant, target, job_id, now, job};

	return store_txn(s, retire_begin_txn, &a, "starting the retirement");
}

/* ---- an environment's DEK versions ---- */

enum kb_err
store_env_versions(struct store *s, const char *tenant, const char *name,
    struct store_env_versions *out)
{
	static const char sql[] =
	    "SELECT e.dek_version, e.min_dek_version, d.version FROM "
	    "environments e LEFT JOIN deks d ON d.env_id = e.id WHERE "
	    "e.tenant_id = ? AND e.name = ? ORDER BY d.version DESC";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;
	enum db_step rc = DB_DONE;
	int found = 0;

	memset(out, 0, sizeof(*out));
	if ((e = db_prepare(c, sql, &st)) != KB_OK)
		goto out;
	db_bind_text(st, 1, tenant);
	db_bind_text(st, 2, name);
	while ((rc = db_step(st)) == DB_ROW) {
		found = 1;
		out->current = (uint32_t)db_column_int64(st, 0);
		out->min = (uint32_t)db_column_int64(st, 1);
		if (!db_column_is_null(st, 2) && out->n < STORE_VERSIONS_MAX)
			out->versions[out->n++] =
			    (uint32_t)db_column_int64(st, 2);
		else if (!db_column_is_null(st, 2))
			out->more++;
	}
	db_reset(st);
	if (rc != DB_DONE)
		e = db_err(c, "reading data key versions");
	else if (!found && (e = store_tenant_exists(c, tenant)) == KB_OK)
		e = kb_errf(KB_ERR_NOT_FOUND,
		    "environment \"%s\" does not exist in tenant \"%s\"", name,
		    tenant);
out:
	db_conn_put(s->db, c);
	return e;
}

struct dek_retire {
	const char *tenant, *name;
	uint32_t below;
	int with_backups;
	int64_t now;
	uint32_t destroyed, backups;
};

static enum kb_err
dek_retire_txn(struct db_conn *c, void *arg)
{
	static const char sel[] =
	    "SELECT e.id, e.dek_version, (SELECT count(*) FROM backups b "
	    "WHERE b.env_id = e.id AND b.dek_version < ?3), (SELECT min(b.id) "
	    "FROM backups b WHERE b.env_id = e.id AND b.dek_version < ?3) "
	    "FROM environments e WHERE e.tenant_id = ?1 AND e.name = ?2";
	struct dek_retire *a = arg;
	struct db_stmt *st;
	int64_t env_id = 0, current = 0, nb = 0;
	char first[STORE_KEY_ID_MAX] = "";
	enum kb_err e;
	enum db_step rc;

	if ((e = db_prepare(c, sel, &st)) != KB_OK)
		return e;
	db_bind_text(st, 1, a->tenant);
	db_bind_text(st, 2, a->name);
	db_bind_int64(st, 3, a->below);
	if ((rc = db_step(st)) == DB_ROW) {
		env_id = db_column_int64(st, 0);
		current = db_column_int64(st, 1);
		nb = db_column_int64(st, 2);
		store_copy_text(first, sizeof(first), st, 3);
	}
	db_reset(st);
	if (rc != DB_ROW)
		return rc == DB_DONE ? kb_errf(KB_ERR_NOT_FOUND,
		           "environment \"%s\" does not exist in tenant \"%s\"",
		           a->name, a->tenant)
		                     : db_err(c, "reading the environment");
	/* The caller checked this under the tenant lock; never the current
	 * version, whatever happened meanwhile. */
	if ((int64_t)a->below > current)
		return kb_errf(KB_ERR_UNAVAILABLE,
		    "environment %s/%s changed meanwhile; retry", a->tenant,
		    a->name);
	if (nb > 0 && !a->with_backups)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "retiring data key versions below %u of %s/%s refused: "
		    "%lld backup(s) need them (%s first); they would no longer "
		    "restore. Retire with --with-backups (with_backups) to "
		    "destroy them too",
		    a->below, a->tenant, a->name, (long long)nb, first);
	if ((e = store_run(c,
	         "DELETE FROM backups WHERE env_id = ? AND dek_version < ?",
	         "destroying backups", "ii", env_id, (int64_t)a->below))
	    != KB_OK)
		return e;
	a->backups = (uint32_t)db_changes(c);
	if ((e = store_run(c,
	         "DELETE FROM deks WHERE env_id = ? AND version < ? AND "
	         "version != ?",
	         "destroying data key versions", "iii", env_id,
	         (int64_t)a->below, current))
	    != KB_OK)
		return e;
	a->destroyed = (uint32_t)db_changes(c);
	return store_run(c,
	    "UPDATE environments SET min_dek_version = CASE WHEN "
	    "min_dek_version >= ?1 THEN min_dek_version ELSE ?1 END, "
	    "update_time_us = ?2 WHERE id = ?3",
	    "recording the retired versions", "iii", (int64_t)a->below, a->now,
	    env_id);
}

enum kb_err
store_env_dek_retire(struct store *s, const char *tenant, const char *name,
    uint32_t below, int with_backups, int64_t now, uint32_t *destroyed,
    uint32_t *backups)
{
	struct dek_retire a = {tenant, name, below, with_backups, now, 0, 0};
	enum kb_err e;

	e = store_txn(s, dek_retire_txn, &a, "retiring data key versions");
	if (e == KB_OK) {
		*destroyed = a.destroyed;
		*backups = a.backups;
	}
	return e;
}
