/* SPDX-License-Identifier: Apache-2.0 */
/* rpc_datakey.c: GetDataKey, the services' one call. Every answer unwraps in
 * the token: there is no plaintext DEK cache, so a lock takes effect on the
 * very next call. */
#include "rpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dek.h"
#include "kb_secmem.h"
#include "keybroker.pb-c.h"

/* The environment's state decides before the token does. */
static enum kb_err
env_usable(const struct store_env *env)
{
	if (env->state == STORE_ENV_LOCKED)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "environment locked: "
		    "%s/%s is locked; an admin must unlock the tenant with its "
		    "key and then unlock the environment",
		    env->tenant_id, env->name);
	if (env->state == STORE_ENV_PENDING_DELETION)
		return rpc_env_pending_refusal(env, "GetDataKey");
	if (env->state == STORE_ENV_DELETED)
		return kb_errf(KB_ERR_NOT_FOUND,
		    "environment %s/%s was deleted "
		    "and its data key destroyed",
		    env->tenant_id, env->name);
	return KB_OK;
}

/* A version below the environment's retirement bound was destroyed by
 * RetireDataKeys: refused by number, also when its row came back (an old
 * copy of the database put back; README "DEK rotation" gives the bound of
 * what such a copy can still open). */
static enum kb_err
version_retired(const struct store_env *env, uint32_t version)
{
	if (version == 0 || version >= env->min_dek_version)
		return KB_OK;
	return kb_errf(KB_ERR_FAILED_PRECONDITION,
	    "data key version %u of %s/%s was retired: versions below %u "
	    "were destroyed (kbctl envs retire-dek) and are never served "
	    "again; the current version is %u",
	    version, env->tenant_id, env->name, env->min_dek_version,
	    env->dek_version);
}

/* Open the row's DEK in the token. A key the row names but the token lacks
 * is the token's problem (not logged in, restored from an old backup, or
 * the key was destroyed by a lock), not the caller's; a blob that fails its
 * integrity check is the database's. */
static enum kb_err
open_dek(struct rpc_ctx *c, const struct store_env *env,
    const struct store_dek *dek, uint8_t plain[DEK_LEN])
{
	struct dek_row row;
	enum kb_err e;

	dek_row_env(&row, env, dek->version, env->mode);
	e = dek_open(
	    c->b->hsm, &row, dek, atomic_load(&c->b->legacy_open), plain);
	if (e == KB_ERR_NOT_FOUND)
		return kb_errf(KB_ERR_UNAVAILABLE,
		    "the key %s sealing data key "
		    "%u of %s/%s is not available in the token (%s)",
		    dek->key_id, dek->version, env->tenant_id, env->name,
		    kb_err_msg(e));
	return e;
}

/*
 * Unwrap without holding any lock, so a LockTenant, an activation or a
 * delete can commit between the read and the unwrap and destroy the key
 * the row named. A failed unwrap therefore reads the row again: if it
 * changed, the answer is what the row says now (locked, deleted, or a
 * second unwrap under its new wrapping), never the token's error about a
 * key that was destroyed on purpose.
 */
static enum kb_err
unwrap_current(struct rpc_ctx *c, const Keybroker__V1__GetDataKeyRequest *in,
    struct store_env *env, struct store_dek *dek, uint8_t plain[DEK_LEN])
{
	char first[KB_ERR_MSG_MAX];
	struct store_dek now;
	enum kb_err e, e2;

	if ((e = open_dek(c, env, dek, plain)) == KB_OK)
		return KB_OK;
	e = kb_err_wrap(
	    e, "unwrapping the data key of %s/%s", env->tenant_id, env->name);
	snprintf(first, sizeof(first), "%s", kb_err_msg(e));
	if ((e2 = store_env_with_dek(c->b->store, in->tenant_id,
	         in->environment, in->version, env, &now))
	    != KB_OK)
		return e2;
	if ((e2 = env_usable(env)) != KB_OK)
		return e2;
	if (now.wrapped_len == dek->wrapped_len
	    && memcmp(now.wrapped, dek->wrapped, now.wrapped_len) == 0
	    && strcmp(now.key_id, dek->key_id) == 0)
		return kb_errf(
		    e, "%s", first); /* unchanged: the token's error */
	*dek = now;
	if ((e = open_dek(c, env, dek, plain)) != KB_OK)
		return kb_err_wrap(e, "unwrapping the data key of %s/%s",
		    env->tenant_id, env->name);
	return KB_OK;
}

enum kb_err
rpc_datakey_get(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__GetDataKeyRequest *in = (const void *)req;
	Keybroker__V1__GetDataKeyResponse *out;
	struct store_env env;
	struct store_dek dek;
	uint8_t *plain;
	enum kb_err e;

	/* The names and the service's binding to them were checked by the
	 * method table (SERVICE_ENV), before existence is looked at here. */
	memset(&env, 0, sizeof(env));
	e = store_env_with_dek(c->b->store, in->tenant_id, in->environment,
	    in->version, &env, &dek);
	/* A retired version has no row: say why rather than "no such". */
	if (e == KB_ERR_NOT_FOUND && env.name[0] != '\0'
	    && env.state == STORE_ENV_ENABLED && in->version != 0
	    && in->version < env.min_dek_version)
		return version_retired(&env, in->version);
	if (e != KB_OK)
		return e;
	snprintf(c->audit_key_id, sizeof(c->audit_key_id), "%s", env.key_id);
	if ((e = env_usable(&env)) != KB_OK
	    || (e = version_retired(&env, dek.version)) != KB_OK)
		return e;
	if (dek.damaged[0] != '\0')
		return kb_errf(KB_ERR_CORRUPT,
		    "data key %u of %s/%s was marked "
		    "unrecoverable by kbctl repair: %s",
		    dek.version, env.tenant_id, env.name, dek.damaged);
	if ((out = malloc(sizeof(*out))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	keybroker__v1__get_data_key_response__init(out);
	*resp = &out->base;
	if ((plain = malloc(DEK_LEN)) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	if ((e = unwrap_current(c, in, &env, &dek, plain)) != KB_OK) {
		kb_freezero(plain, DEK_LEN);
		return e;
	}
	/* A second unwrap may have used a new wrapping key. */
	snprintf(c->audit_key_id, sizeof(c->audit_key_id), "%s", env.key_id);
	/* The response owns the plaintext; kb_wire_free wipes it. */
	out->dek.data = plain;
	out->dek.len = DEK_LEN;
	out->dek_version = dek.version;
	out->key_id = rpc_strdup(env.key_id);
	out->tenant_id = rpc_strdup(env.tenant_id);
	out->environment = rpc_strdup(env.name);
	return KB_OK;
}
