/* SPDX-License-Identifier: Apache-2.0 */
/* rpc_keys.c: tenant keys: generate, upload, list, activate; BYOK KEK. */
#include "rpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "clock.h"
#include "fingerprint.h"
#include "jobs.h"
#include "kb_secmem.h"
#include "keybroker.pb-c.h"
#include "keys.h"
#include "log.h"
#include "names.h"
#include "pfx.h"
#include "policy.h"
#include "quorum.h"

#define PASSWORD_MAX 1024

static enum kb_err
check_password(const char *pw, const char *what)
{
	size_t n = strlen(pw);

	if (n == 0)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "%s: a password is "
		    "required",
		    what);
	if (n > PASSWORD_MAX)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "%s: the password is %zu "
		    "bytes; the limit is %d",
		    what, n, PASSWORD_MAX);
	return KB_OK;
}

/* Load the tenant and check the add-key rule (under the tenant lock). */
static enum kb_err
may_add_key(struct rpc_ctx *c, const char *tenant, struct store_tenant *t)
{
	struct policy_tenant p;
	enum kb_err e;

	struct store_key *v = NULL;
	size_t n = 0, i, live = 0;

	if ((e = store_tenant_get(c->b->store, tenant, t)) != KB_OK)
		return e;
	rpc_policy_tenant(t, &p);
	if ((e = policy_may_add_key(&p, c->now_us)) != KB_OK)
		return e;
	/* A fair share: a tenant-limited admin cannot fill the token. */
	if ((e = store_key_list(c->b->store, tenant, "tenant", &v, &n))
	    != KB_OK)
		return e;
	for (i = 0; i < n; i++)
		live += strcmp(v[i].state, "deleted") != 0;
	free(v);
	if (live >= c->b->cfg->max_keys_per_tenant)
		return kb_errf(KB_ERR_RESOURCE_EXHAUSTED,
		    "tenant \"%s\" holds %zu "
		    "keys, the most allowed (max_keys_per_tenant = %u)",
		    tenant, live, c->b->cfg->max_keys_per_tenant);
	return KB_OK;
}

/* The record of a new key: available, or pending_approval when a quorum
 * holds it (c->quorum_staged). */
static void
key_record(struct store_key *k, const char *id, const char *tenant,
    const char *origin, const char *fp, const char *alg, int64_t now,
    int staged)
{
	memset(k, 0, sizeof(*k));
	snprintf(k->id, sizeof(k->id), "%s", id);
	snprintf(k->tenant_id, sizeof(k->tenant_id), "%s", tenant);
	snprintf(k->purpose, sizeof(k->purpose), "tenant");
	snprintf(k->origin, sizeof(k->origin), "%s", origin);
	snprintf(k->state, sizeof(k->state), "%s",
	    staged ? "pending_approval" : "available");
	snprintf(k->fingerprint, sizeof(k->fingerprint), "%s", fp);
	snprintf(k->wrap_alg, sizeof(k->wrap_alg), "%s", alg);
	k->bits = 2048;
	k->create_time_us = k->update_time_us = now;
}

static enum kb_err tenant_key(
    struct rpc_ctx *c, const char *tenant, const char *id, struct store_key *k);

/* A key made pending_approval gets its request (quorum.h); when that
 * fails the key's row is deleted (the caller destroys its object). */
static enum kb_err
key_stage(
    struct rpc_ctx *c, const ProtobufCMessage *req, const struct store_key *k)
{
	enum kb_err e;

	if (!c->quorum_staged)
		return KB_OK;
	/* (The test build can die here: a key with no request yet.) */
	clock_crash_point("quorum-key-staged");
	if ((e = quorum_stage(c, req, k->id)) == KB_OK)
		return KB_OK;
	if (store_key_set_state(
	        c->b->store, k->id, "pending_approval", "deleted", c->now_us)
	    != KB_OK)
		kb_err_clear();
	return kb_err_wrap(e, "holding key %s for approval", k->id);
}

enum kb_err
rpc_key_stage_commit(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const char *tenant = scope_field_str(req, "tenant_id");
	struct policy_tenant p;
	struct store_tenant t;
	struct store_key k;
	enum kb_err e;

	if (c->staged_key_id == NULL || tenant == NULL)
		return kb_errf(KB_ERR_INTERNAL,
		    "a staged key request without "
		    "its key");
	broker_tenant_lock(c->b, tenant);
	if ((e = store_tenant_get(c->b->store, tenant, &t)) != KB_OK
	    || (e = tenant_key(c, tenant, c->staged_key_id, &k)) != KB_OK)
		goto out;
	snprintf(c->audit_key_id, sizeof(c->audit_key_id), "%s", k.id);
	if (strcmp(k.state, "pending_approval") != 0) {
		e = kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "key %s is %s, no longer "
		    "pending_approval (a lock destroys such keys)",
		    k.id, k.state);
		goto out;
	}
	/* The add-key rule (no locked environments) at this moment. */
	rpc_policy_tenant(&t, &p);
	if ((e = policy_may_add_key(&p, c->now_us)) != KB_OK)
		goto out;
	if ((e = hsm_key_exists(c->b->hsm, k.id)) != KB_OK) {
		e = kb_err_wrap(e, "key %s is not in the token", k.id);
		goto out;
	}
	if ((e = store_key_set_state(
	         c->b->store, k.id, "pending_approval", "available", c->now_us))
	        != KB_OK
	    || (e = store_key_get(c->b->store, k.id, &k)) != KB_OK)
		goto out;
	log_info("key %s of tenant %s approved: available", k.id, tenant);
	e = rpc_reply(resp, rpc_key_msg(&k));
out:
	broker_tenant_unlock(c->b, tenant);
	return e;
}

enum kb_err
rpc_key_generate(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__GenerateKeyRequest *in = (const void *)req;
	Keybroker__V1__GenerateKeyResponse *out = NULL;
	struct store_tenant t;
	struct store_key k;
	EVP_PKEY *pkey = NULL;
	uint8_t *pfx = NULL;
	size_t pfx_len = 0;
	char id[STORE_KEY_ID_MAX], fp[FINGERPRINT_HEX_LEN + 1], name[160];
	int imported = 0;
	enum kb_err e;

	if ((e = check_password(in->password, "generating a key")) != KB_OK)
		return e;
	broker_tenant_lock(c->b, in->tenant_id);
	if ((e = may_add_key(c, in->tenant_id, &t)) != KB_OK)
		goto out;
	if ((pkey = EVP_RSA_gen(2048)) == NULL) {
		e = kb_err_openssl(KB_ERR_CRYPTO, "generating an RSA-2048 key");
		goto out;
	}
	if ((e = broker_new_id(c->b, "k-", id, sizeof(id))) != KB_OK)
		goto out;
	snprintf(name, sizeof(name), "keybroker tenant key %s (%s)", id,
	    in->tenant_id);
	if ((e = pfx_create(pkey, in->password, name, &pfx, &pfx_len)) != KB_OK
	    || (e = fingerprint_pkey(pkey, fp)) != KB_OK)
		goto out;
	if ((e = hsm_rsa_import(c->b->hsm, id, pkey, HSM_USE_KEYWRAP)) != KB_OK)
		goto out;
	imported = 1;
	key_record(&k, id, in->tenant_id, "generated", fp, c->b->wrap_alg,
	    c->now_us, c->quorum_staged);
	if ((e = store_tenant_key_add(c->b->store, &k, c->now_us)) != KB_OK
	    || (e = key_stage(c, req, &k)) != KB_OK)
		goto out;
	imported = 0;
	snprintf(c->audit_key_id, sizeof(c->audit_key_id), "%s", id);
	if ((out = malloc(sizeof(*out))) == NULL) {
		e = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	keybroker__v1__generate_key_response__init(out);
	*resp = &out->base;
	out->key = rpc_key_msg(&k);
	if (out->key != NULL && c->approval_id[0] != '\0')
		out->key->approval_request_id = rpc_strdup(c->approval_id);
	/* The response owns the .pfx; kb_wire_free wipes it after sending. */
	out->pfx.data = pfx;
	out->pfx.len = pfx_len;
	pfx = NULL;
	log_info("key %s generated for tenant %s by %s (fingerprint %.16s...)",
	    id, in->tenant_id, c->id->name, fp);
	e = out->key != NULL ? KB_OK : kb_errf(KB_ERR_NOMEM, "out of memory");
out:
	if (imported)
		(void)hsm_key_destroy(c->b->hsm, id);
	broker_tenant_unlock(c->b, in->tenant_id);
	kb_freezero(pfx, pfx_len);
	EVP_PKEY_free(pkey);
	return e;
}

enum kb_err
rpc_key_upload(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__UploadKeyRequest *in = (const void *)req;
	struct store_tenant t;
	struct store_key k, dup;
	struct key_file f;
	char id[STORE_KEY_ID_MAX], fp[FINGERPRINT_HEX_LEN + 1];
	int imported = 0;
	enum kb_err e;

	memset(&f, 0, sizeof(f));
	if ((e = keys_file_check(
	         in->file.data, in->file.len, (int)in->format, &f.format))
	    != KB_OK)
		return e;
	f.data = in->file.data;
	f.len = in->file.len;
	f.password = in->password;
	if (f.format == KEYFILE_PFX && in->password[0] == '\0')
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "no password given for "
		    "the .pfx: tenant key files must be password protected");
	if (f.format == KEYFILE_PFX
	    && (e = check_password(in->password, "uploading a .pfx")) != KB_OK)
		return e;
	broker_tenant_lock(c->b, in->tenant_id);
	if ((e = may_add_key(c, in->tenant_id, &t)) != KB_OK)
		goto out;
	if ((e = broker_new_id(c->b, "k-", id, sizeof(id))) != KB_OK)
		goto out;
	if ((e = keys_import(c->b, in->tenant_id, &f, id, fp)) != KB_OK)
		goto out;
	imported = 1;
	e = store_key_by_fingerprint(c->b->store, in->tenant_id, fp, &dup);
	if (e == KB_OK && strcmp(dup.state, "deleted") != 0) {
		e = kb_errf(KB_ERR_ALREADY_EXISTS,
		    "this key is already tenant "
		    "\"%s\"'s key %s (state %s)",
		    in->tenant_id, dup.id, dup.state);
		goto out;
	}
	if (e != KB_OK && e != KB_ERR_NOT_FOUND)
		goto out;
	kb_err_clear();
	key_record(&k, id, in->tenant_id,
	    f.format == KEYFILE_BYOK ? "byok" : "pfx", fp, c->b->wrap_alg,
	    c->now_us, c->quorum_staged);
	if ((e = store_tenant_key_add(c->b->store, &k, c->now_us)) != KB_OK
	    || (e = key_stage(c, req, &k)) != KB_OK)
		goto out;
	imported = 0;
	snprintf(c->audit_key_id, sizeof(c->audit_key_id), "%s", id);
	log_info("key %s uploaded (%s) for tenant %s by %s (fingerprint "
	         "%.16s...)",
	    id, k.origin, in->tenant_id, c->id->name, fp);
	if ((e = rpc_reply(resp, rpc_key_msg(&k))) == KB_OK
	    && c->approval_id[0] != '\0')
		((Keybroker__V1__Key *)*resp)->approval_request_id =
		    rpc_strdup(c->approval_id);
out:
	if (imported)
		(void)hsm_key_destroy(c->b->hsm, id);
	broker_tenant_unlock(c->b, in->tenant_id);
	return e;
}

enum kb_err
rpc_key_list(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__ListKeysRequest *in = (const void *)req;
	Keybroker__V1__ListKeysResponse *out;
	struct store_key *v = NULL;
	size_t n = 0, i;
	enum kb_err e;

	if ((e = store_key_list(c->b->store, in->tenant_id, "tenant", &v, &n))
	    != KB_OK)
		return e;
	if ((out = malloc(sizeof(*out))) == NULL) {
		free(v);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	keybroker__v1__list_keys_response__init(out);
	*resp = &out->base;
	if (n > 0 && (out->keys = calloc(n, sizeof(void *))) == NULL) {
		free(v);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	for (i = 0; i < n; i++) {
		if ((out->keys[i] = rpc_key_msg(&v[i])) == NULL) {
			free(v);
			return kb_errf(KB_ERR_NOMEM, "out of memory");
		}
		out->n_keys++;
	}
	free(v);
	return KB_OK;
}

/* A tenant key by id, checking it belongs to the tenant. */
static enum kb_err
tenant_key(
    struct rpc_ctx *c, const char *tenant, const char *id, struct store_key *k)
{
	enum kb_err e;

	if ((e = names_check_object_id("key id", id)) != KB_OK)
		return e;
	e = store_key_get(c->b->store, id, k);
	if (e == KB_OK
	    && (strcmp(k->tenant_id, tenant) != 0
	        || strcmp(k->purpose, "tenant") != 0))
		e = KB_ERR_NOT_FOUND;
	if (e == KB_ERR_NOT_FOUND)
		return kb_errf(e,
		    "tenant \"%s\" has no key \"%.72s\" (kbctl keys "
		    "list %s shows its keys)",
		    tenant, id, tenant);
	return e;
}

enum kb_err
rpc_key_get(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__GetKeyRequest *in = (const void *)req;
	struct store_tenant t;
	struct store_key k;
	enum kb_err e;

	if ((e = store_tenant_get(c->b->store, in->tenant_id, &t)) != KB_OK
	    || (e = tenant_key(c, in->tenant_id, in->key_id, &k)) != KB_OK)
		return e;
	return rpc_reply(resp, rpc_key_msg(&k));
}

static void
kick_jobs(struct broker *b)
{
	jobs_kick(b->jobs);
}

enum kb_err
rpc_key_activate(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__ActivateKeyRequest *in = (const void *)req;
	struct policy_tenant p;
	struct store_tenant t;
	struct store_key k, kek;
	struct store_job job;
	char job_id[STORE_KEY_ID_MAX];
	enum kb_err e;

	broker_tenant_lock(c->b, in->tenant_id);
	if ((e = store_tenant_get(c->b->store, in->tenant_id, &t)) != KB_OK
	    || (e = tenant_key(c, in->tenant_id, in->key_id, &k)) != KB_OK)
		goto out;
	/* What the key is now that no rule changes: named first. */
	if (strcmp(k.state, "active") == 0 || strcmp(k.state, "installing") == 0
	    || strcmp(k.state, "pending_deletion") == 0
	    || strcmp(k.state, "retiring") == 0
	    || strcmp(k.state, "retired") == 0) {
		e = kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "key %s is %s: only an "
		    "available key can be activated%s",
		    k.id, k.state,
		    strcmp(k.state, "pending_deletion") == 0
		        ? " ('kbctl keys undelete' cancels its deletion)"
		        : "");
		goto out;
	}
	/* Then the tenant's rules (locked environments, 24 h), before the
	 * key's availability: an approved request that waited through a
	 * lock is told of the lock, not only of the key it destroyed. */
	rpc_policy_tenant(&t, &p);
	if ((e = policy_may_activate(&p, c->now_us)) != KB_OK)
		goto out;
	if (strcmp(k.state, "pending_approval") == 0) {
		e = kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "key %s is pending_approval: "
		    "it cannot be activated until the request that made it is "
		    "approved (kbctl approvals list --tenant %s)",
		    k.id, in->tenant_id);
		goto out;
	}
	if (strcmp(k.state, "available") != 0) {
		e = kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "key %s is %s: only an "
		    "available key can be activated",
		    k.id, k.state);
		goto out;
	}
	if ((e = hsm_key_exists(c->b->hsm, k.id)) != KB_OK) {
		e = kb_err_wrap(e, "key %s is not in the token", k.id);
		goto out;
	}
	/* The new key's KEK, made in the token and wrapped under it; the job
	 * re-seals every customer-managed DEK of the tenant under it. */
	if ((e = broker_new_id(c->b, "j-", job_id, sizeof(job_id))) != KB_OK
	    || (e = keys_kek_create(
	            c->b, in->tenant_id, k.id, "installing", &kek))
	        != KB_OK)
		goto out;
	if ((e = store_activation_begin(c->b->store, in->tenant_id, k.id,
	         t.active_key_id, &kek, job_id, c->now_us, &job))
	    != KB_OK) {
		(void)hsm_key_destroy(c->b->hsm, kek.id);
		goto out;
	}
	log_info("activation of key %s for tenant %s started by %s: job %s, "
	         "%llu data keys to re-wrap",
	    k.id, in->tenant_id, c->id->name, job_id,
	    (unsigned long long)job.total);
	c->after_audit = kick_jobs;
	e = rpc_reply(resp, rpc_job_msg(&job));
out:
	broker_tenant_unlock(c->b, in->tenant_id);
	return e;
}

enum kb_err
rpc_job_get(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__GetJobRequest *in = (const void *)req;
	struct store_job j;
	enum kb_err e;

	if ((e = names_check_object_id("job id", in->id)) != KB_OK)
		return e;
	if ((e = store_job_get(c->b->store, in->id, &j)) != KB_OK)
		return e;
	/* A tenant-limited admin sees only its tenants' jobs; to it, others
	 * do not exist. */
	if (!identity_may_tenant(c->id, j.tenant_id))
		return kb_errf(
		    KB_ERR_NOT_FOUND, "job \"%s\" does not exist", in->id);
	return rpc_reply(resp, rpc_job_msg(&j));
}

/* The tenant's key-exchange key (made at first use), or with `rotate` a
 * new one replacing it. */
static enum kb_err
exchange_answer(struct rpc_ctx *c, const ProtobufCMessage *req,
    ProtobufCMessage **resp, int rotate)
{
	const Keybroker__V1__GetKeyExchangeKeyRequest *in = (const void *)req;
	Keybroker__V1__KeyExchangeKey *out;
	struct store_tenant t;
	struct store_key kek;
	char *pem = NULL;
	enum kb_err e;

	broker_tenant_lock(c->b, in->tenant_id);
	e = store_tenant_get(c->b->store, in->tenant_id, &t);
	if (e == KB_OK && rotate)
		e = keys_exchange_rotate(c->b, in->tenant_id, &kek);
	else if (e == KB_OK)
		e = keys_exchange(c->b, in->tenant_id, &kek);
	broker_tenant_unlock(c->b, in->tenant_id);
	if (e != KB_OK || (e = keys_public_pem(c->b, kek.id, &pem)) != KB_OK)
		return e;
	snprintf(c->audit_key_id, sizeof(c->audit_key_id), "%s", kek.id);
	if ((out = malloc(sizeof(*out))) == NULL) {
		free(pem);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	keybroker__v1__key_exchange_key__init(out);
	out->kid = rpc_strdup(kek.id);
	out->wrap_algorithm = rpc_strdup(kek.wrap_alg);
	out->public_key_pem = pem;
	*resp = &out->base;
	return KB_OK;
}

enum kb_err
rpc_kek_get(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	return exchange_answer(c, req, resp, 0);
}

enum kb_err
rpc_kek_rotate(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	return exchange_answer(c, req, resp, 1);
}
