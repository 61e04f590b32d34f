/* SPDX-License-Identifier: Apache-2.0 */
/* store_delete.c: deletion with a way back: environments and tenant keys
 * pending deletion, their undelete, and the final step, each one
 * transaction; and the count of what a key protects. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kb_time.h"
#include "store_int.h"

/* ---- what a key protects ---- */

static enum kb_err
key_protects_conn(
    struct db_conn *c, const char *key_id, struct store_key_use *u)
{
	/* Environments deleted for good have no data keys left (their
	 * backups' records stay, protecting nothing). */
	static const char sql[] =
	    "SELECT (SELECT count(*) FROM deks d JOIN environments e ON "
	    "e.id = d.env_id WHERE e.state != 'deleted' AND (d.key_id = ?1 OR "
	    "d.key_id IN (SELECT k.id FROM keys k WHERE k.purpose = 'kek' AND "
	    "k.parent_id = ?1))), "
	    "(SELECT count(*) FROM keys k WHERE k.purpose = 'kek' AND "
	    "k.parent_id = ?1 AND k.state != 'deleted'), "
	    "(SELECT count(*) FROM backups b JOIN environments e ON "
	    "e.id = b.env_id WHERE e.state != 'deleted' AND b.key_id = ?1)";
	struct db_stmt *st;
	enum kb_err e;
	enum db_step rc;

	memset(u, 0, sizeof(*u));
	if ((e = db_prepare(c, sql, &st)) != KB_OK)
		return e;
	db_bind_text(st, 1, key_id);
	rc = db_step(st);
	if (rc == DB_ROW) {
		u->deks = (uint64_t)db_column_int64(st, 0);
		u->keks = (uint64_t)db_column_int64(st, 1);
		u->backups = (uint64_t)db_column_int64(st, 2);
	}
	db_reset(st);
	return rc == DB_ROW ? KB_OK
	                    : db_err(c, "counting what the key protects");
}

enum kb_err
store_key_protects(
    struct store *s, const char *key_id, struct store_key_use *out)
{
	struct db_conn *c = db_conn_get(s->db);
	enum kb_err e;

	e = key_protects_conn(c, key_id, out);
	db_conn_put(s->db, c);
	return e;
}

/* ---- environments ---- */

/* The row id, stored state and pending final time of an environment. */
static enum kb_err
env_find(struct db_conn *c, const char *tenant, const char *name,
    int64_t *env_id, char state[16], int64_t *final_us)
{
	static const char sql[] =
	    "SELECT id, state, delete_final_us FROM "
	    "environments WHERE tenant_id = ? AND name = ?";
	struct db_stmt *st;
	enum kb_err e;
	enum db_step rc;

	if ((e = db_prepare(c, sql, &st)) != KB_OK)
		return e;
	db_bind_text(st, 1, tenant);
	db_bind_text(st, 2, name);
	rc = db_step(st);
	if (rc == DB_ROW) {
		*env_id = db_column_int64(st, 0);
		store_copy_text(state, 16, st, 1);
		*final_us = db_column_int64(st, 2);
	}
	db_reset(st);
	if (rc == DB_ROW)
		return KB_OK;
	if (rc != DB_DONE)
		return db_err(c, "reading the environment");
	if ((e = store_tenant_exists(c, tenant)) != KB_OK)
		return e;
	return kb_errf(KB_ERR_NOT_FOUND,
	    "environment \"%s\" does not exist in tenant \"%s\"", name, tenant);
}

struct env_delete {
	const char *tenant, *name;
	int64_t now, final_us;
	int op; /* 0 begin, 1 cancel, 2 finish */
	int late_ok; /* cancel: past the final time too */
};

static enum kb_err
env_delete_txn(struct db_conn *c, void *arg)
{
	struct env_delete *a = arg;
	char state[16], when[40];
	int64_t env_id = 0, final_us = 0;
	enum kb_err e;

	if ((e = env_find(c, a->tenant, a->name, &env_id, state, &final_us))
	    != KB_OK)
		return e;
	kb_time_format(final_us, when, sizeof(when));
	if (strcmp(state, "deleted") == 0)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "environment %s/%s is deleted: its data keys were "
		    "destroyed%s%s",
		    a->tenant, a->name, final_us != 0 ? " at " : "",
		    final_us != 0 ? when : "");
	switch (a->op) {
	case 0:
		if (final_us != 0)
			return kb_errf(KB_ERR_FAILED_PRECONDITION,
			    "environment %s/%s is already pending deletion: "
			    "it becomes final at %s; 'kbctl envs undelete %s "
			    "%s' cancels it",
			    a->tenant, a->name, when, a->tenant, a->name);
		return store_run(c,
		    "UPDATE environments SET delete_request_us = ?, "
		    "delete_final_us = ?, update_time_us = ? WHERE id = ?",
		    "marking the environment for deletion", "iiii", a->now,
		    a->final_us, a->now, env_id);
	case 1:
		if (final_us == 0)
			return kb_errf(KB_ERR_FAILED_PRECONDITION,
			    "environment %s/%s is not pending deletion (it is "
			    "%s): nothing to undelete",
			    a->tenant, a->name, state);
		if (final_us <= a->now && !a->late_ok)
			return kb_errf(KB_ERR_FAILED_PRECONDITION,
			    "the deletion of environment %s/%s became final "
			    "at %s: its data keys are destroyed and cannot "
			    "come back",
			    a->tenant, a->name, when);
		return store_run(c,
		    "UPDATE environments SET delete_request_us = 0, "
		    "delete_final_us = 0, update_time_us = ? WHERE id = ?",
		    "undeleting the environment", "ii", a->now, env_id);
	default:
		if (final_us == 0 || final_us > a->now)
			return kb_errf(KB_ERR_FAILED_PRECONDITION,
			    "environment %s/%s is no longer due for deletion "
			    "(undeleted meanwhile)",
			    a->tenant, a->name);
		/* Destroyed for good: every DEK version goes, the backups'
		 * with them (their records stay, unlisted, so that restoring
		 * one is refused naming why). */
		if ((e = store_run(c, "DELETE FROM deks WHERE env_id = ?",
		         "destroying data keys", "i", env_id))
		    != KB_OK)
			return e;
		return store_run(c,
		    "UPDATE environments SET state = 'deleted', "
		    "update_time_us = ? WHERE id = ?",
		    "deleting the environment", "ii", a->now, env_id);
	}
}

enum kb_err
store_env_delete_begin(struct store *s, const char *tenant, const char *name,
    int64_t now, int64_t final_us, struct store_env *out)
{
	struct env_delete a = {tenant, name, now, final_us, 0, 0};
	enum kb_err e;

	if ((e = store_txn(
	         s, env_delete_txn, &a, "marking the environment for deletion"))
	    != KB_OK)
		return e;
	return store_env_get(s, tenant, name, out);
}

enum kb_err
store_env_delete_cancel(struct store *s, const char *tenant, const char *name,
    int64_t now, int late_ok, struct store_env *out)
{
	struct env_delete a = {tenant, name, now, 0, 1, late_ok};
	enum kb_err e;

	if ((e = store_txn(s, env_delete_txn, &a, "undeleting the environment"))
	    != KB_OK)
		return e;
	return store_env_get(s, tenant, name, out);
}

enum kb_err
store_env_delete_finish(
    struct store *s, const char *tenant, const char *name, int64_t now)
{
	struct env_delete a = {tenant, name, now, 0, 2, 0};

	return store_txn(s, env_delete_txn, &a, "deleting the environment");
}

enum kb_err
store_envs_delete_due(
    struct store *s, int64_t now, struct store_env **out, size_t *n, size_t max)
{
	static const char sql[] =
	    "SELECT " ENV_COLS " " ENV_JOIN
	    " WHERE e.delete_final_us != 0 AND e.delete_final_us <= ? AND "
	    "e.state != 'deleted' ORDER BY e.delete_final_us, e.id LIMIT ?";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;

	*out = NULL;
	*n = 0;
	if ((e = db_prepare(c, sql, &st)) == KB_OK) {
		db_bind_int64(st, 1, now);
		db_bind_int64(st, 2, (int64_t)max);
		e = store_collect(c, st, sizeof(**out), store_env_row,
		    (void **)out, n, "listing environments due for deletion");
	}
	db_conn_put(s->db, c);
	return e;
}

/* ---- tenant keys ---- */

static enum kb_err
key_find(struct db_conn *c, const char *tenant, const char *key_id,
    struct store_key *k)
{
	static const char sql[] = "SELECT " KEY_COLS " FROM keys WHERE id = ? "
	                          "AND tenant_id = ? AND purpose = 'tenant'";
	struct db_stmt *st;
	enum kb_err e;
	enum db_step rc;

	if ((e = db_prepare(c, sql, &st)) != KB_OK)
		return e;
	db_bind_text(st, 1, key_id);
	db_bind_text(st, 2, tenant);
	memset(k, 0, sizeof(*k));
	rc = db_step(st);
	if (rc == DB_ROW)
		store_key_row(st, k);
	db_reset(st);
	if (rc == DB_ROW)
		return KB_OK;
	if (rc != DB_DONE)
		return db_err(c, "reading the key");
	if ((e = store_tenant_exists(c, tenant)) != KB_OK)
		return e;
	return kb_errf(KB_ERR_NOT_FOUND,
	    "tenant \"%s\" has no tenant key \"%s\"", tenant, key_id);
}

struct key_delete {
	const char *tenant, *key_id;
	int64_t now, final_us;
	int op; /* 0 begin, 1 cancel */
	int late_ok; /* cancel: past the final time too */
	struct store_key *out;
};

static enum kb_err
key_delete_txn(struct db_conn *c, void *arg)
{
	struct key_delete *a = arg;
	struct store_key_use u;
	char when[40];
	enum kb_err e;

	if ((e = key_find(c, a->tenant, a->key_id, a->out)) != KB_OK)
		return e;
	kb_time_format(a->out->delete_final_us, when, sizeof(when));
	if (a->op == 1) {
		if (strcmp(a->out->state, "pending_deletion") != 0)
			return kb_errf(KB_ERR_FAILED_PRECONDITION,
			    "key %s of tenant %s is not pending deletion (it "
			    "is %s): nothing to undelete",
			    a->key_id, a->tenant, a->out->state);
		if (a->out->delete_final_us <= a->now && !a->late_ok)
			return kb_errf(KB_ERR_FAILED_PRECONDITION,
			    "the deletion of key %s of tenant %s became final "
			    "at %s: its token object is destroyed and cannot "
			    "come back",
			    a->key_id, a->tenant, when);
		return store_run(c,
		    "UPDATE keys SET state = CASE WHEN retire_time_us != 0 "
		    "THEN 'retired' ELSE 'available' END, delete_request_us "
		    "= 0, delete_final_us = 0, update_time_us = ? WHERE id = ?",
		    "undeleting the key", "it", a->now, a->key_id);
	}
	if (strcmp(a->out->state, "pending_deletion") == 0)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "key %s of tenant %s is already pending deletion: it "
		    "becomes final at %s; 'kbctl keys undelete %s %s' cancels "
		    "it",
		    a->key_id, a->tenant, when, a->tenant, a->key_id);
	if (strcmp(a->out->state, "available") != 0
	    && strcmp(a->out->state, "retired") != 0)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "key %s of tenant %s is %s: only an available or retired "
		    "key (one that is not active, installing, locked or "
		    "deleted) can be deleted%s",
		    a->key_id, a->tenant, a->out->state,
		    strcmp(a->out->state, "active") == 0
		        ? "; activate another key first"
		        : "");
	/* Counted inside the transaction that marks it: nothing can come
	 * to depend on it in between. */
	if ((e = key_protects_conn(c, a->key_id, &u)) != KB_OK)
		return e;
	if (u.deks + u.keks + u.backups != 0)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "key %s of tenant %s still protects %llu data key "
		    "version(s), %llu KEK(s) and %llu backup(s) (counted from "
		    "the database now): deleting it would make them "
		    "unreadable; reset or delete the environments that "
		    "depend on it first",
		    a->key_id, a->tenant, (unsigned long long)u.deks,
		    (unsigned long long)u.keks, (unsigned long long)u.backups);
	return store_run(c,
	    "UPDATE keys SET state = 'pending_deletion', delete_request_us = "
	    "?, delete_final_us = ?, update_time_us = ? WHERE id = ? AND "
	    "state IN ('available', 'retired')",
	    "marking the key for deletion", "iiit", a->now, a->final_us, a->now,
	    a->key_id);
}

enum kb_err
store_key_delete_begin(struct store *s, const char *tenant, const char *key_id,
    int64_t now, int64_t final_us, struct store_key *out)
{
	struct key_delete a = {tenant, key_id, now, final_us, 0, 0, out};
	enum kb_err e;

	if ((e = store_txn(
	         s, key_delete_txn, &a, "marking the key for deletion"))
	    != KB_OK)
		return e;
	return store_key_get(s, key_id, out);
}

enum kb_err
store_key_delete_cancel(struct store *s, const char *tenant, const char *key_id,
    int64_t now, int late_ok, struct store_key *out)
{
	struct key_delete a = {tenant, key_id, now, 0, 1, late_ok, out};
	enum kb_err e;

	if ((e = store_txn(s, key_delete_txn, &a, "undeleting the key"))
	    != KB_OK)
		return e;
	return store_key_get(s, key_id, out);
}

enum kb_err
store_keys_delete_due(
    struct store *s, int64_t now, struct store_key **out, size_t *n, size_t max)
{
	static const char sql[] =
	    "SELECT " KEY_COLS " FROM keys WHERE "
	    "delete_final_us != 0 AND delete_final_us <= ? AND state = "
	    "'pending_deletion' ORDER BY delete_final_us, id LIMIT ?";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;

	*out = NULL;
	*n = 0;
	if ((e = db_prepare(c, sql, &st)) == KB_OK) {
		db_bind_int64(st, 1, now);
		db_bind_int64(st, 2, (int64_t)max);
		e = store_collect(c, st, sizeof(**out), store_key_row,
		    (void **)out, n, "listing keys due for deletion");
	}
	db_conn_put(s->db, c);
	return e;
}

struct key_finish {
	const char *key_id;
	int64_t now;
};

static enum kb_err
key_finish_txn(struct db_conn *c, void *arg)
{
	struct key_finish *a = arg;
	struct store_key_use u;
	enum kb_err e;

	if ((e = key_protects_conn(c, a->key_id, &u)) != KB_OK)
		return e;
	if (u.deks + u.keks + u.backups != 0)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "key %s protects something again; its deletion waits",
		    a->key_id);
	if ((e = store_run(c,
	         "UPDATE keys SET state = 'deleted', delete_time_us = ?, "
	         "update_time_us = ? WHERE id = ? AND state = "
	         "'pending_deletion' AND delete_final_us != 0 AND "
	         "delete_final_us <= ?",
	         "deleting the key", "iiti", a->now, a->now, a->key_id, a->now))
	    != KB_OK)
		return e;
	if (db_changes(c) != 1)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "key %s is no longer due for deletion (undeleted "
		    "meanwhile)",
		    a->key_id);
	return KB_OK;
}

enum kb_err
store_key_delete_finish(struct store *s, const char *key_id, int64_t now)
{
	struct key_finish a = {key_id, now};

	return store_txn(s, key_finish_txn, &a, "deleting the key");
}
