/* SPDX-License-Identifier: Apache-2.0 */
/* rpc_envkeys.c: an environment's encryption: apply the tenant key, return
 * to the platform key, reset, backups, restore and copy. */
#include "rpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dek.h"
#include "kb_secmem.h"
#include "keybroker.pb-c.h"
#include "log.h"
#include "names.h"
#include "policy.h"
#include "timemark.h"

/* Take the tenant lock, load tenant and environment (names and access were
 * checked by the method table), and check the rules every encryption
 * change shares: the tenant neither locked nor installing a key, the
 * environment enabled. On success the caller holds the tenant lock. */
static enum kb_err
begin(struct rpc_ctx *c, const char *tenant, const char *name, const char *what,
    struct store_tenant *t, struct store_env *env)
{
	struct policy_tenant p;
	enum kb_err e;

	broker_tenant_lock(c->b, tenant);
	if ((e = store_tenant_get(c->b->store, tenant, t)) != KB_OK
	    || (e = store_env_get(c->b->store, tenant, name, env)) != KB_OK)
		goto fail;
	rpc_policy_tenant(t, &p);
	if ((e = policy_may_change_env(&p, what)) != KB_OK)
		goto fail;
	if (env->state == STORE_ENV_PENDING_DELETION) {
		e = rpc_env_pending_refusal(env, what);
		goto fail;
	}
	if (env->state != STORE_ENV_ENABLED) {
		e = kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "%s refused by the "
		    "enabled-environment rule: environment %s/%s is %s",
		    what, tenant, name, store_env_state_name(env->state));
		goto fail;
	}
	return KB_OK;
fail:
	broker_tenant_unlock(c->b, tenant);
	return e;
}

/* Reply with the environment as stored now. */
static enum kb_err
reply_env(struct rpc_ctx *c, const char *tenant, const char *name,
    ProtobufCMessage **resp)
{
	struct store_env env;
	enum kb_err e;

	if ((e = store_env_get(c->b->store, tenant, name, &env)) != KB_OK)
		return e;
	return rpc_reply(resp, rpc_env_msg(&env));
}

/* The key new DEKs of `tenant` under `mode` are sealed with. */
static enum kb_err
seal_key(struct rpc_ctx *c, const char *tenant, enum store_env_mode mode,
    char key_id[STORE_KEY_ID_MAX])
{
	struct store_key k;
	enum kb_err e;

	if (mode == STORE_MODE_CUSTOMER)
		e = store_kek_current(c->b->store, tenant, &k);
	else
		e = store_platform_current(c->b->store, &k);
	if (e == KB_OK)
		snprintf(key_id, STORE_KEY_ID_MAX, "%s", k.id);
	return e;
}

/* Re-seal every DEK version of an environment for encryption `mode` (under
 * the tenant's KEK or the platform key) and set the mode, in one
 * transaction. */
static enum kb_err
reseal_env(
    struct rpc_ctx *c, const struct store_env *env, enum store_env_mode mode)
{
	struct store_dek *v = NULL;
	struct dek_row from, to;
	char key_id[STORE_KEY_ID_MAX];
	size_t n = 0, i;
	enum kb_err e;

	if ((e = seal_key(c, env->tenant_id, mode, key_id)) != KB_OK
	    || (e = store_env_dek_list(
	            c->b->store, env->tenant_id, env->name, &v, &n))
	        != KB_OK)
		return e;
	for (i = 0; i < n; i++) {
		dek_row_env(&from, env, v[i].version, env->mode);
		dek_row_env(&to, env, v[i].version, mode);
		if ((e = dek_reseal(c->b->hsm, &from, &v[i],
		         atomic_load(&c->b->legacy_open), &to, key_id, &v[i]))
		    != KB_OK)
			goto out;
	}
	e = store_env_rewrap(
	    c->b->store, env->tenant_id, env->name, mode, v, n, c->now_us);
out:
	if (v != NULL)
		kb_wipe(v, n * sizeof(*v));
	free(v);
	return e;
}

/* Seal DEK `dek` of `src` (version dek->version) as the next version of
 * `dst`, under dst's current encryption. */
static enum kb_err
reseal_into(struct rpc_ctx *c, const struct store_env *src,
    struct store_dek *dek, const struct store_env *dst)
{
	struct dek_row from, to;
	char key_id[STORE_KEY_ID_MAX];
	uint32_t version;
	enum kb_err e;

	struct store_dek *v = NULL;
	size_t n = 0;

	if ((e = store_env_dek_list(
	         c->b->store, dst->tenant_id, dst->name, &v, &n))
	    != KB_OK)
		return e;
	free(v);
	/* Every restore and copy adds a version, and ApplyKey loads them
	 * all: a fair share caps them. */
	if (n >= c->b->cfg->max_dek_versions)
		return kb_errf(KB_ERR_RESOURCE_EXHAUSTED,
		    "environment %s/%s holds "
		    "%zu data key versions, the most allowed (max_dek_versions "
		    "= "
		    "%u)",
		    dst->tenant_id, dst->name, n, c->b->cfg->max_dek_versions);
	if ((e = seal_key(c, dst->tenant_id, dst->mode, key_id)) != KB_OK
	    || (e = store_env_next_version(
	            c->b->store, dst->tenant_id, dst->name, &version))
	        != KB_OK)
		return e;
	dek_row_env(&from, src, dek->version, src->mode);
	dek_row_env(&to, dst, version, dst->mode);
	return dek_reseal(c->b->hsm, &from, dek,
	    atomic_load(&c->b->legacy_open), &to, key_id, dek);
}

enum kb_err
rpc_env_apply_key(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__EnvironmentRef *in = (const void *)req;
	struct store_tenant t;
	struct store_env env;
	enum kb_err e;

	if ((e = begin(c, in->tenant_id, in->name, "applying the tenant key",
	         &t, &env))
	    != KB_OK)
		return e;
	if (env.mode == STORE_MODE_CUSTOMER) {
		e = kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "environment %s/%s already "
		    "uses the tenant key %s",
		    t.id, env.name, env.key_id);
		goto out;
	}
	if (t.active_key_id[0] == '\0') {
		e = kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "tenant \"%s\" has no "
		    "active key: generate or upload one and activate it first",
		    t.id);
		goto out;
	}
	if ((e = reseal_env(c, &env, STORE_MODE_CUSTOMER)) != KB_OK)
		goto out;
	log_info("environment %s/%s now uses tenant key %s (by %s)", t.id,
	    env.name, t.active_key_id, c->id->name);
	e = reply_env(c, t.id, env.name, resp);
out:
	broker_tenant_unlock(c->b, in->tenant_id);
	return e;
}

enum kb_err
rpc_env_revert_key(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__EnvironmentRef *in = (const void *)req;
	struct store_tenant t;
	struct store_env env;
	enum kb_err e;

	if ((e = begin(c, in->tenant_id, in->name,
	         "returning to the platform "
	         "key",
	         &t, &env))
	    != KB_OK)
		return e;
	if (env.mode == STORE_MODE_PLATFORM) {
		e = kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "environment %s/%s already "
		    "uses the platform key",
		    t.id, env.name);
		goto out;
	}
	if ((e = reseal_env(c, &env, STORE_MODE_PLATFORM)) != KB_OK)
		goto out;
	log_info("environment %s/%s returned to the platform key (by %s)", t.id,
	    env.name, c->id->name);
	e = reply_env(c, t.id, env.name, resp);
out:
	broker_tenant_unlock(c->b, in->tenant_id);
	return e;
}

enum kb_err
rpc_env_reset(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__EnvironmentRef *in = (const void *)req;
	struct store_tenant t;
	struct store_env env;
	struct store_dek dek;
	struct store_key pk;
	struct dek_row row;
	uint32_t version;
	enum kb_err e;

	if ((e = begin(c, in->tenant_id, in->name, "reset", &t, &env)) != KB_OK)
		return e;
	/* A reset destroys: policy time is stored first (timemark.h). */
	if ((e = timemark_advance(c->b->timemark, NULL)) != KB_OK
	    || (e = store_platform_current(c->b->store, &pk)) != KB_OK
	    || (e = store_env_next_version(
	            c->b->store, t.id, env.name, &version))
	        != KB_OK)
		goto out;
	dek_row_env(&row, &env, version, STORE_MODE_PLATFORM);
	if ((e = dek_new(c->b->hsm, &row, pk.id, &dek)) != KB_OK
	    || (e = store_env_reset(
	            c->b->store, t.id, env.name, &dek, c->now_us))
	        != KB_OK)
		goto out;
	log_warn("environment %s/%s RESET by %s: its data keys and backups are "
	         "destroyed; new data key version %u under the platform key",
	    t.id, env.name, c->id->name, dek.version);
	e = reply_env(c, t.id, env.name, resp);
out:
	broker_tenant_unlock(c->b, in->tenant_id);
	return e;
}

enum kb_err
rpc_env_backup_create(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__EnvironmentRef *in = (const void *)req;
	struct store_tenant t;
	struct store_env env;
	struct store_backup bk;
	char id[STORE_KEY_ID_MAX];
	enum kb_err e;

	if ((e = begin(c, in->tenant_id, in->name, "backup", &t, &env))
	    != KB_OK)
		return e;
	if ((e = broker_new_id(c->b, "b-", id, sizeof(id))) != KB_OK
	    || (e = store_backup_create(
	            c->b->store, t.id, env.name, id, c->now_us, &bk))
	        != KB_OK)
		goto out;
	log_info("backup %s of %s/%s taken by %s (%s, key %s)", id, t.id,
	    env.name, c->id->name, store_env_mode_name(bk.mode), bk.key_id);
	e = rpc_reply(resp, rpc_backup_msg(&bk));
out:
	broker_tenant_unlock(c->b, in->tenant_id);
	return e;
}

enum kb_err
rpc_env_backup_list(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__ListBackupsRequest *in = (const void *)req;
	Keybroker__V1__ListBackupsResponse *out;
	struct store_backup *v = NULL;
	size_t n = 0, i;
	enum kb_err e;

	if ((e = store_backup_list(
	         c->b->store, in->tenant_id, in->name, &v, &n))
	    != KB_OK)
		return e;
	if ((out = malloc(sizeof(*out))) == NULL) {
		free(v);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	keybroker__v1__list_backups_response__init(out);
	*resp = &out->base;
	if (n > 0 && (out->backups = calloc(n, sizeof(void *))) == NULL) {
		free(v);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	for (i = 0; i < n; i++) {
		if ((out->backups[i] = rpc_backup_msg(&v[i])) == NULL) {
			free(v);
			return kb_errf(KB_ERR_NOMEM, "out of memory");
		}
		out->n_backups++;
	}
	free(v);
	return KB_OK;
}

/* Make `dek` (sealed for its version of tenant/name) the new current
 * version. */
static enum kb_err
add_version(struct rpc_ctx *c, const char *tenant, const char *name,
    struct store_dek *dek)
{
	return store_env_add_version(c->b->store, tenant, name, dek, c->now_us);
}

/* The live-source rule restore and copy share: the data key comes only
 * from an enabled environment. A locked one's data keys wait for its
 * unlock (restoring or copying them elsewhere would get around the lock);
 * a deleted one's were destroyed with it. `backup` names the backup
 * restored, NULL for a copy. Fills *src. The caller holds the tenant
 * lock, under which every state change of the tenant's environments
 * happens (the sweeper's too): the state cannot change before the DEK is
 * read. */
static enum kb_err
live_source(struct rpc_ctx *c, const char *what, const char *tenant,
    const char *name, const char *backup, struct store_env *src)
{
	char of[STORE_KEY_ID_MAX + 16];
	enum kb_err e;

	if ((e = store_env_get(c->b->store, tenant, name, src)) != KB_OK)
		return e;
	if (src->state == STORE_ENV_ENABLED)
		return KB_OK;
	if (backup != NULL)
		snprintf(of, sizeof(of), "%s of backup %s", what, backup);
	else
		snprintf(of, sizeof(of), "%s from it", what);
	if (src->state == STORE_ENV_PENDING_DELETION)
		return rpc_env_pending_refusal(src, of);
	if (backup != NULL)
		snprintf(of, sizeof(of), "backup %s is of ", backup);
	else
		snprintf(of, sizeof(of), "the source ");
	return kb_errf(KB_ERR_FAILED_PRECONDITION,
	    "%s refused by the "
	    "live-source rule: %s%s/%s, which is %s; %s",
	    what, of, tenant, src->name, store_env_state_name(src->state),
	    src->state == STORE_ENV_LOCKED
	        ? "its data keys are used again "
	          "only once it is unlocked (kbctl envs unlock)"
	        : "its data keys "
	          "were destroyed with it");
}

enum kb_err
rpc_env_restore(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__RestoreBackupRequest *in = (const void *)req;
	struct store_tenant t;
	struct store_env env, src;
	struct store_backup bk;
	struct store_dek dek;
	enum kb_err e;

	if ((e = names_check_object_id("backup id", in->backup_id)) != KB_OK)
		return e;
	if ((e = begin(c, in->tenant_id, in->name, "restore", &t, &env))
	    != KB_OK)
		return e;
	if ((e = store_backup_get(c->b->store, t.id, in->backup_id, &bk))
	        != KB_OK
	    || (e = live_source(c, "restore", t.id, bk.env, bk.id, &src))
	        != KB_OK)
		goto out;
	/* The rule: the backup's encryption state (mode and key) must be the
	 * environment's current one. */
	/* (Platform keys rotate: for platform encryption the mode is the
	 * state.) */
	if (bk.mode != env.mode
	    || (env.mode == STORE_MODE_CUSTOMER
	        && strcmp(bk.key_id, env.key_id) != 0)) {
		e = kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "restore refused by the "
		    "matching-encryption rule: backup %s was taken under %s "
		    "encryption with key %s, but %s/%s now uses %s encryption "
		    "with key %s",
		    bk.id, store_env_mode_name(bk.mode), bk.key_id, t.id,
		    env.name, store_env_mode_name(env.mode), env.key_id);
		goto out;
	}
	if ((e = store_env_with_dek(
	         c->b->store, t.id, bk.env, bk.dek_version, &src, &dek))
	    != KB_OK)
		goto out;
	if ((e = reseal_into(c, &src, &dek, &env)) != KB_OK
	    || (e = add_version(c, t.id, env.name, &dek)) != KB_OK)
		goto out;
	log_info("backup %s restored into %s/%s by %s (data key version %u)",
	    bk.id, t.id, env.name, c->id->name, dek.version);
	e = reply_env(c, t.id, env.name, resp);
out:
	broker_tenant_unlock(c->b, in->tenant_id);
	return e;
}

enum kb_err
rpc_env_copy(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__CopyEnvironmentRequest *in = (const void *)req;
	struct store_tenant t;
	struct store_env src, dst;
	struct store_dek dek;
	enum kb_err e;

	if (strcmp(in->source, in->target) == 0)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "source and target are "
		    "the same environment");
	if ((e = begin(c, in->tenant_id, in->target, "copy", &t, &dst))
	    != KB_OK)
		return e;
	if ((e = live_source(c, "copy", t.id, in->source, NULL, &src)) != KB_OK
	    || (e = store_env_with_dek(
	            c->b->store, t.id, in->source, 0, &src, &dek))
	        != KB_OK)
		goto out;
	/* The rule: only onto an environment encrypted with the same customer
	 * key. */
	if (src.mode != STORE_MODE_CUSTOMER || dst.mode != STORE_MODE_CUSTOMER
	    || strcmp(src.key_id, dst.key_id) != 0) {
		e = kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "copy refused by the "
		    "same-customer-key rule: %s/%s uses %s encryption (key %s) "
		    "and %s/%s uses %s encryption (key %s); both must use the "
		    "same customer key",
		    t.id, src.name, store_env_mode_name(src.mode), src.key_id,
		    t.id, dst.name, store_env_mode_name(dst.mode), dst.key_id);
		goto out;
	}
	if ((e = reseal_into(c, &src, &dek, &dst)) != KB_OK
	    || (e = add_version(c, t.id, dst.name, &dek)) != KB_OK)
		goto out;
	log_info("environment %s/%s copied onto %s/%s by %s (data key version "
	         "%u)",
	    t.id, src.name, t.id, dst.name, c->id->name, dek.version);
	e = reply_env(c, t.id, dst.name, resp);
out:
	broker_tenant_unlock(c->b, in->tenant_id);
	return e;
}

/* ---- DEK rotation per environment (issue 14) ---- */

/* Reply with the environment's versions as stored now. */
static enum kb_err
reply_versions(struct rpc_ctx *c, const char *tenant, const char *name,
    uint32_t destroyed, uint32_t backups, ProtobufCMessage **resp)
{
	Keybroker__V1__DataKeyVersions *m;
	struct store_env_versions v;
	enum kb_err e;
	size_t i;

	if ((e = store_env_versions(c->b->store, tenant, name, &v)) != KB_OK)
		return e;
	if ((m = malloc(sizeof(*m))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	keybroker__v1__data_key_versions__init(m);
	*resp = &m->base;
	m->tenant_id = rpc_strdup(tenant);
	m->name = rpc_strdup(name);
	m->current_version = v.current;
	m->min_version = v.min;
	m->destroyed = destroyed;
	m->backups_destroyed = backups;
	if (v.n > 0 && (m->versions = calloc(v.n, sizeof(uint32_t))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	for (i = 0; i < v.n; i++)
		m->versions[m->n_versions++] = v.versions[i];
	return KB_OK;
}

enum kb_err
rpc_env_rotate_dek(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__EnvironmentRef *in = (const void *)req;
	struct store_tenant t;
	struct store_env env;
	struct store_dek dek, *v = NULL;
	struct dek_row row;
	char key_id[STORE_KEY_ID_MAX];
	uint32_t version;
	size_t n = 0;
	enum kb_err e;

	if ((e = begin(
	         c, in->tenant_id, in->name, "rotating the data key", &t, &env))
	    != KB_OK)
		return e;
	if ((e = store_env_dek_list(c->b->store, t.id, env.name, &v, &n))
	    != KB_OK)
		goto out;
	free(v);
	if (n >= c->b->cfg->max_dek_versions) {
		e = kb_errf(KB_ERR_RESOURCE_EXHAUSTED,
		    "environment %s/%s holds %zu data key versions, the most "
		    "allowed (max_dek_versions = %u): retire old ones first "
		    "(kbctl envs retire-dek)",
		    t.id, env.name, n, c->b->cfg->max_dek_versions);
		goto out;
	}
	if ((e = seal_key(c, t.id, env.mode, key_id)) != KB_OK
	    || (e = store_env_next_version(
	            c->b->store, t.id, env.name, &version))
	        != KB_OK)
		goto out;
	dek_row_env(&row, &env, version, env.mode);
	if ((e = dek_new(c->b->hsm, &row, key_id, &dek)) != KB_OK
	    || (e = add_version(c, t.id, env.name, &dek)) != KB_OK)
		goto out;
	kb_wipe(&dek, sizeof(dek));
	snprintf(c->audit_key_id, sizeof(c->audit_key_id), "%s", key_id);
	log_info("environment %s/%s: new data key version %u (by %s); older "
	         "versions stay readable by number",
	    t.id, env.name, version, c->id->name);
	e = reply_versions(c, t.id, env.name, 0, 0, resp);
out:
	broker_tenant_unlock(c->b, in->tenant_id);
	return e;
}

enum kb_err
rpc_env_retire_deks(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__RetireDataKeysRequest *in = (const void *)req;
	struct store_tenant t;
	struct store_env env;
	uint32_t destroyed = 0, backups = 0;
	enum kb_err e;

	if (in->below_version == 0)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "below_version must be a data key version (1 or more): "
		    "versions below it are destroyed");
	if ((e = begin(c, in->tenant_id, in->name, "retiring data key versions",
	         &t, &env))
	    != KB_OK)
		return e;
	if (in->below_version > env.dek_version) {
		e = kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "retiring data key versions below %u of %s/%s refused: "
		    "the current version is %u and is never retired (rotate "
		    "first: kbctl envs rotate-dek)",
		    in->below_version, t.id, env.name, env.dek_version);
		goto out;
	}
	/* Destroying: policy time is stored first (timemark.h). */
	if ((e = timemark_advance(c->b->timemark, NULL)) != KB_OK
	    || (e = store_env_dek_retire(c->b->store, t.id, env.name,
	            in->below_version, in->with_backups, c->now_us, &destroyed,
	            &backups))
	        != KB_OK)
		goto out;
	log_warn("environment %s/%s: data key versions below %u RETIRED by "
	         "%s: %u destroyed, %u backup(s) with them",
	    t.id, env.name, in->below_version, c->id->name, destroyed, backups);
	e = reply_versions(c, t.id, env.name, destroyed, backups, resp);
out:
	broker_tenant_unlock(c->b, in->tenant_id);
	return e;
}
