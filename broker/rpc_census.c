/* SPDX-License-Identifier: Apache-2.0 */
/* rpc_census.c: the key census (what a key seals now, counted exactly) and
 * a key's retirement (its dependents re-sealed by a job, then retired). */
#include "rpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jobs.h"
#include "keybroker.pb-c.h"
#include "log.h"
#include "names.h"
#include "policy.h"

#define CENSUS_ENVS_DEFAULT 100
#define CENSUS_ENVS_MAX 10000

/* The key the request names: with a tenant, one of its tenant keys or
 * KEKs; without, a platform key (the method table let only platform-wide
 * admins name none). */
static enum kb_err
census_key(
    struct rpc_ctx *c, const char *tenant, const char *id, struct store_key *k)
{
	struct store_tenant t;
	enum kb_err e;

	if ((e = names_check_object_id("key id", id)) != KB_OK)
		return e;
	if (tenant[0] != '\0'
	    && (e = store_tenant_get(c->b->store, tenant, &t)) != KB_OK)
		return e;
	e = store_key_get(c->b->store, id, k);
	if (e == KB_OK && tenant[0] != '\0'
	    && (strcmp(k->tenant_id, tenant) != 0
	        || (strcmp(k->purpose, "tenant") != 0
	            && strcmp(k->purpose, "kek") != 0)))
		e = KB_ERR_NOT_FOUND;
	if (e == KB_OK && tenant[0] == '\0'
	    && strcmp(k->purpose, "platform") != 0)
		e = KB_ERR_NOT_FOUND;
	if (e == KB_ERR_NOT_FOUND && tenant[0] != '\0')
		return kb_errf(e,
		    "tenant \"%s\" has no key or KEK \"%.72s\" (kbctl keys "
		    "list %s shows its keys)",
		    tenant, id, tenant);
	if (e == KB_ERR_NOT_FOUND)
		return kb_errf(e,
		    "there is no platform key \"%.72s\" (a tenant's key is "
		    "named with its tenant: kbctl keys show TENANT KEY)",
		    id);
	return e;
}

static Keybroker__V1__KeyCensusVia *
via_msg(const struct store_census_via *v)
{
	Keybroker__V1__KeyCensusVia *m = malloc(sizeof(*m));

	if (m == NULL)
		return NULL;
	keybroker__v1__key_census_via__init(m);
	m->key_id = rpc_strdup(v->key_id);
	m->state = rpc_strdup(v->state);
	m->dek_versions = v->dek_versions;
	m->backups = v->backups;
	m->environments = v->envs;
	return m;
}

static Keybroker__V1__KeyCensusEnvironment *
dependent_msg(const struct store_census_env *v)
{
	Keybroker__V1__KeyCensusEnvironment *m = malloc(sizeof(*m));

	if (m == NULL)
		return NULL;
	keybroker__v1__key_census_environment__init(m);
	m->tenant_id = rpc_strdup(v->tenant_id);
	m->name = rpc_strdup(v->name);
	m->state = v->state == STORE_ENV_LOCKED
	    ? KEYBROKER__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_LOCKED
	    : v->state == STORE_ENV_DELETED
	    ? KEYBROKER__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_DELETED
	    : KEYBROKER__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_ENABLED;
	m->mode = v->mode == STORE_MODE_CUSTOMER
	    ? KEYBROKER__V1__ENCRYPTION_MODE__ENCRYPTION_MODE_CUSTOMER
	    : KEYBROKER__V1__ENCRYPTION_MODE__ENCRYPTION_MODE_PLATFORM;
	m->dek_versions = v->dek_versions;
	m->backups = v->backups;
	m->via_key_id = rpc_strdup(v->via);
	return m;
}

static enum kb_err
census_msg(const struct store_key *k, const struct store_census *cs,
    int64_t now, ProtobufCMessage **resp)
{
	Keybroker__V1__KeyCensus *m;
	size_t i;

	if ((m = malloc(sizeof(*m))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	keybroker__v1__key_census__init(m);
	*resp = &m->base;
	m->key_id = rpc_strdup(k->id);
	m->tenant_id = rpc_strdup(k->tenant_id);
	m->purpose = rpc_strdup(k->purpose);
	m->state = rpc_strdup(k->state);
	m->parent_key_id = rpc_strdup(k->parent_id);
	m->dek_versions = cs->dek_versions;
	m->backups = cs->backups;
	m->environments = cs->envs;
	m->environments_enabled = cs->envs_enabled;
	m->environments_locked = cs->envs_locked;
	m->dek_versions_locked = cs->dek_versions_locked;
	m->tenants = cs->tenants;
	m->dependents_truncated = cs->truncated != 0;
	m->census_time_us = now;
	if (cs->nvia > 0 && (m->via = calloc(cs->nvia, sizeof(void *))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	for (i = 0; i < cs->nvia; i++) {
		if ((m->via[i] = via_msg(&cs->via[i])) == NULL)
			return kb_errf(KB_ERR_NOMEM, "out of memory");
		m->n_via++;
	}
	if (cs->ndependents > 0
	    && (m->dependents = calloc(cs->ndependents, sizeof(void *)))
	        == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	for (i = 0; i < cs->ndependents; i++) {
		if ((m->dependents[i] = dependent_msg(&cs->dependents[i]))
		    == NULL)
			return kb_errf(KB_ERR_NOMEM, "out of memory");
		m->n_dependents++;
	}
	return KB_OK;
}

enum kb_err
rpc_key_census(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__GetKeyCensusRequest *in = (const void *)req;
	struct store_census cs;
	struct store_key k;
	size_t max = in->limit;
	enum kb_err e;

	if (max > CENSUS_ENVS_MAX)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "limit %zu is above %d (environments listed)", max,
		    CENSUS_ENVS_MAX);
	if (max == 0)
		max = CENSUS_ENVS_DEFAULT;
	if ((e = census_key(c, in->tenant_id, in->key_id, &k)) != KB_OK)
		return e;
	snprintf(c->audit_key_id, sizeof(c->audit_key_id), "%s", k.id);
	if ((e = store_key_census(c->b->store, k.id, max, &cs)) != KB_OK)
		return e;
	e = census_msg(&k, &cs, c->now_us, resp);
	store_census_free(&cs);
	return e;
}

static void
kick_jobs(struct broker *b)
{
	jobs_kick(b->jobs);
}

/* Why key k cannot be retired as it is, or KB_OK with *from its state now
 * and target[] the key its dependents move to ("" when none is needed). */
static enum kb_err
retire_check(struct rpc_ctx *c, const struct store_key *k,
    const struct store_census *cs, char target[STORE_KEY_ID_MAX])
{
	struct store_key cur;
	enum kb_err e;
	int tenant_key = strcmp(k->purpose, "tenant") == 0;

	target[0] = '\0';
	if (strcmp(k->state, "retired") == 0
	    || strcmp(k->state, "deleted") == 0)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "key %s is already %s", k->id, k->state);
	if (strcmp(k->state, "pending_deletion") == 0)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "key %s is pending deletion: it seals nothing and its "
		    "token object is destroyed when the deletion is final "
		    "('kbctl keys undelete' cancels it)",
		    k->id);
	if (strcmp(k->state, "pending_approval") == 0)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "key %s is pending_approval: it seals nothing and a deny "
		    "or an expiry of its request destroys it (kbctl approvals "
		    "list)",
		    k->id);
	if (strcmp(k->state, "retiring") == 0)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "key %s is being retired already (kbctl jobs show shows "
		    "its retire job)",
		    k->id);
	if (tenant_key
	    && (strcmp(k->state, "active") == 0
	        || strcmp(k->state, "installing") == 0))
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "retiring key %s refused: it is the tenant's %s key and "
		    "seals %llu data key version(s) of %llu environment(s); "
		    "activate another key first (kbctl keys activate)",
		    k->id, k->state, (unsigned long long)cs->dek_versions,
		    (unsigned long long)cs->envs);
	/* What depends on it and cannot be moved now: a locked
	 * environment's rows wait for its unlock (its tenant's lock key is
	 * out of the token, or the lock is still in force for it). */
	if (cs->dek_versions_locked > 0 || strcmp(k->state, "locked") == 0)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "retiring key %s refused: %llu data key version(s) of "
		    "%llu locked environment(s) depend on it (%s first) and "
		    "cannot be moved while they are locked (until unlocked: "
		    "kbctl envs unlock, or deleted after 28 days); %llu "
		    "version(s) of %llu environment(s) in all",
		    k->id, (unsigned long long)cs->dek_versions_locked,
		    (unsigned long long)cs->envs_locked,
		    cs->first_locked[0] ? cs->first_locked : "-",
		    (unsigned long long)cs->dek_versions,
		    (unsigned long long)cs->envs);
	if (strcmp(k->purpose, "platform") == 0)
		e = store_platform_current(c->b->store, &cur);
	else
		e = store_kek_current(c->b->store, k->tenant_id, &cur);
	if (e == KB_ERR_NOT_FOUND) {
		kb_err_clear();
		cur.id[0] = '\0';
	} else if (e != KB_OK) {
		return e;
	}
	if (strcmp(cur.id, k->id) == 0)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "retiring key %s refused: it is the current %s new data "
		    "keys are sealed under; %s",
		    k->id,
		    strcmp(k->purpose, "platform") == 0 ? "platform key"
		                                        : "KEK of its tenant",
		    strcmp(k->purpose, "platform") == 0
		        ? "rotate it instead (kbctl platform rotate-key): the "
		          "rotation destroys it"
		        : "activate another tenant key instead");
	if (strcmp(k->purpose, "platform") == 0
	    && strcmp(cur.state, "active") != 0)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "retiring key %s refused: a platform-key rotation is "
		    "running; it moves every platform-managed data key and "
		    "destroys the old key itself",
		    k->id);
	if (cs->dek_versions == 0)
		return KB_OK;
	if (cur.id[0] == '\0')
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "retiring key %s refused: %llu data key version(s) of "
		    "%llu environment(s) depend on it and tenant \"%s\" has "
		    "no active key to move them to; activate one first",
		    k->id, (unsigned long long)cs->dek_versions,
		    (unsigned long long)cs->envs, k->tenant_id);
	snprintf(target, STORE_KEY_ID_MAX, "%s", cur.id);
	return KB_OK;
}

enum kb_err
rpc_key_retire(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__RetireKeyRequest *in = (const void *)req;
	struct policy_tenant p;
	struct store_tenant t;
	struct store_census cs = {0};
	struct store_key k;
	struct store_job job;
	char target[STORE_KEY_ID_MAX], job_id[STORE_KEY_ID_MAX];
	int tenant = in->tenant_id[0] != '\0';
	enum kb_err e;

	/* Under the tenant lock every state change of its environments and
	 * keys waits: nothing locks between the check and the job's start,
	 * and while the key is retiring a lock is refused (the tenant counts
	 * as changing a key). */
	if (tenant)
		broker_tenant_lock(c->b, in->tenant_id);
	if ((e = census_key(c, in->tenant_id, in->key_id, &k)) != KB_OK)
		goto out;
	snprintf(c->audit_key_id, sizeof(c->audit_key_id), "%s", k.id);
	/* The count first: a locked tenant's key is refused naming what
	 * depends on it. */
	if ((e = store_key_census(c->b->store, k.id, 1, &cs)) != KB_OK
	    || (e = retire_check(c, &k, &cs, target)) != KB_OK)
		goto out;
	if (tenant) {
		if ((e = store_tenant_get(c->b->store, in->tenant_id, &t))
		    != KB_OK)
			goto out;
		rpc_policy_tenant(&t, &p);
		if ((e = policy_may_change_env(&p, "retiring a key")) != KB_OK)
			goto out;
	}
	if ((e = broker_new_id(c->b, "j-", job_id, sizeof(job_id))) != KB_OK
	    || (e = store_retire_begin(c->b->store, k.id, k.state,
	            in->tenant_id, target, job_id, c->now_us, &job))
	        != KB_OK)
		goto out;
	log_info("retirement of key %s%s%s started by %s: job %s, %llu data "
	         "keys to re-seal under %s",
	    k.id, tenant ? " of tenant " : "", in->tenant_id, c->id->name,
	    job_id, (unsigned long long)job.total,
	    target[0] ? target : "(none needed)");
	c->after_audit = kick_jobs;
	e = rpc_reply(resp, rpc_job_msg(&job));
out:
	store_census_free(&cs);
	if (tenant)
		broker_tenant_unlock(c->b, in->tenant_id);
	return e;
}
