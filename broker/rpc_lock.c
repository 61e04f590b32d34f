/* SPDX-License-Identifier: Apache-2.0 */
/* rpc_lock.c: lock and unlock a tenant with its key; unlock environments. */
#include "rpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dek.h"
#include "jobs.h"
#include "keybroker.pb-c.h"
#include "keys.h"
#include "log.h"
#include "policy.h"
#include "timemark.h"

/* The uploaded key file of a lock or unlock request. */
static enum kb_err
request_file(const ProtobufCBinaryData *file, int format, const char *password,
    struct key_file *f)
{
	enum kb_err e;

	memset(f, 0, sizeof(*f));
	if ((e = keys_file_check(file->data, file->len, format, &f->format))
	    != KB_OK)
		return e;
	f->data = file->data;
	f->len = file->len;
	f->password = password;
	if (f->format == KEYFILE_PFX && password[0] == '\0')
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "no password given for "
		    "the .pfx");
	return KB_OK;
}

static void
kick_jobs(struct broker *b)
{
	jobs_kick(b->jobs);
}

static enum kb_err
reply_tenant(struct rpc_ctx *c, const char *tenant, ProtobufCMessage **resp)
{
	struct store_tenant t;
	enum kb_err e;

	if ((e = store_tenant_get(c->b->store, tenant, &t)) != KB_OK)
		return e;
	return rpc_reply(resp, rpc_tenant_msg(&t));
}

/* Put the tenant's locked KEK (wrapped under lock key `lk`) back into the
 * token; *restored names the object made, "" if none was. A tenant locked
 * before envelope v2 has no KEK yet: after_unlock makes one. */
static enum kb_err
kek_restore(struct rpc_ctx *c, const char *tenant, const struct store_key *lk,
    char restored[STORE_KEY_ID_MAX])
{
	struct store_key *v = NULL;
	char label[DEK_LABEL_MAX];
	size_t n = 0, i;
	enum kb_err e;

	restored[0] = '\0';
	if ((e = store_key_list(c->b->store, tenant, "kek", &v, &n)) != KB_OK)
		return e;
	dek_label(STORE_MODE_CUSTOMER, tenant, label, sizeof(label));
	for (i = 0; i < n; i++) {
		if (strcmp(v[i].state, "locked") != 0
		    || strcmp(v[i].parent_id, lk->id) != 0)
			continue;
		if (hsm_secret_exists(c->b->hsm, v[i].id, label) == KB_OK)
			break; /* a crash after an earlier unwrap */
		kb_err_clear();
		e = hsm_kek_unwrap(c->b->hsm, lk->id, v[i].wrap_alg,
		    v[i].wrapped, v[i].wrapped_len, v[i].id, label);
		if (e == KB_OK)
			snprintf(restored, STORE_KEY_ID_MAX, "%s", v[i].id);
		else
			e = kb_err_wrap(
			    e, "restoring tenant %s's KEK %s", tenant, v[i].id);
		break;
	}
	free(v);
	return e;
}

/* After the unlock's commit: a tenant locked before envelope v2 gets its
 * first KEK, and its pre-v2 rows the upgrade job. */
static enum kb_err
after_unlock(struct rpc_ctx *c, const char *tenant, const char *key_id)
{
	struct store_key kek;
	struct store_job job;
	char id[STORE_KEY_ID_MAX];
	int changed;
	enum kb_err e;

	e = store_kek_current(c->b->store, tenant, &kek);
	if (e == KB_ERR_NOT_FOUND) {
		kb_err_clear();
		e = keys_kek_create(c->b, tenant, key_id, "active", &kek);
	}
	if (e != KB_OK || store_deks_legacy(c->b->store) == 0)
		return e;
	/* Its rows are RSA-OAEP under this key: the upgrade needs it to
	 * decrypt once more, then takes that use away. */
	if ((e = hsm_rsa_upgrade(c->b->hsm, key_id,
	         HSM_USE_KEYWRAP | HSM_USE_ENCRYPT, &changed))
	        != KB_OK
	    || (e = broker_new_id(c->b, "j-", id, sizeof(id))) != KB_OK)
		return e;
	atomic_store(&c->b->legacy_open, 1);
	e = store_job_begin(
	    c->b->store, id, STORE_JOB_UPGRADE, NULL, "", c->now_us, &job);
	if (e == KB_ERR_ALREADY_EXISTS) {
		kb_err_clear();
		e = KB_OK;
	}
	c->after_audit = kick_jobs;
	return e;
}

enum kb_err
rpc_lock_proof(struct rpc_ctx *c, const ProtobufCMessage *req,
    char fp[FINGERPRINT_HEX_LEN + 1])
{
	const Keybroker__V1__LockTenantRequest *in = (const void *)req;
	struct store_tenant t;
	struct store_key active;
	struct key_file f;
	enum kb_err e;

	if ((e = request_file(&in->file, (int)in->format, in->password, &f))
	        != KB_OK
	    || (e = store_tenant_get(c->b->store, in->tenant_id, &t)) != KB_OK)
		return e;
	if (t.active_key_id[0] == '\0')
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "tenant \"%s\" has no "
		    "active key to lock with",
		    in->tenant_id);
	if ((e = store_key_get(c->b->store, t.active_key_id, &active)) != KB_OK
	    || (e = keys_file_fingerprint(c->b, in->tenant_id, &f, fp))
	        != KB_OK)
		return e;
	if (strcmp(fp, active.fingerprint) != 0)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "key mismatch: the "
		    "uploaded key (fingerprint %.16s...) is not tenant "
		    "\"%s\"'s "
		    "active key %s (fingerprint %.16s...); lock needs the "
		    "active "
		    "key",
		    fp, in->tenant_id, active.id, active.fingerprint);
	return KB_OK;
}

enum kb_err
rpc_tenant_lock(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__LockTenantRequest *in = (const void *)req;
	char(*destroy)[STORE_KEY_ID_MAX] = NULL;
	struct policy_tenant p;
	struct store_tenant t;
	struct store_key active;
	struct key_file f;
	size_t ndestroy = 0, i;
	char fp[FINGERPRINT_HEX_LEN + 1];
	enum kb_err e, e2;

	/* An approved request brings the fingerprint its proof had when it
	 * was requested (verified then; the file is not kept). */
	if (c->approved_fp == NULL
	    && (e = request_file(&in->file, (int)in->format, in->password, &f))
	        != KB_OK)
		return e;
	broker_tenant_lock(c->b, in->tenant_id);
	if ((e = store_tenant_get(c->b->store, in->tenant_id, &t)) != KB_OK)
		goto out;
	rpc_policy_tenant(&t, &p);
	if ((e = policy_may_lock(&p, c->now_us)) != KB_OK
	    || (e = store_key_get(c->b->store, t.active_key_id, &active))
	        != KB_OK)
		goto out;
	/* Proof: the admin holds the active key itself. */
	if (c->approved_fp != NULL)
		snprintf(fp, sizeof(fp), "%s", c->approved_fp);
	else if ((e = keys_file_fingerprint(c->b, in->tenant_id, &f, fp))
	    != KB_OK)
		goto out;
	if (strcmp(fp, active.fingerprint) != 0) {
		e = kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "key mismatch: the uploaded "
		    "key (fingerprint %.16s...) is not tenant \"%s\"'s active "
		    "key "
		    "%s (fingerprint %.16s...); lock needs the active key",
		    fp, in->tenant_id, active.id, active.fingerprint);
		goto out;
	}
	snprintf(c->audit_key_id, sizeof(c->audit_key_id), "%s", active.id);
	/* Policy time is stored before anything is destroyed, so a clock set
	 * back and a restart cannot take time back behind this lock. Record
	 * first, then destroy: a crash in between leaves keys the database
	 * calls gone, which start-up destroys (broker.c). */
	if ((e = timemark_advance(c->b->timemark, NULL)) != KB_OK
	    || (e = store_tenant_lock(c->b->store, in->tenant_id, active.id,
	            c->now_us, &destroy, &ndestroy))
	        != KB_OK)
		goto out;
	for (i = 0; i < ndestroy; i++) {
		e2 = hsm_key_destroy(c->b->hsm, destroy[i]);
		if (e2 != KB_OK && e2 != KB_ERR_NOT_FOUND)
			log_error(
			    "lock of %s: cannot destroy key %s in the token "
			    "(will retry at start-up): %s",
			    in->tenant_id, destroy[i], kb_err_msg(e2));
	}
	kb_err_clear();
	log_warn("tenant %s LOCKED by %s with key %s: %zu key(s) destroyed in "
	         "the token",
	    in->tenant_id, c->id->name, active.id, ndestroy);
	e = reply_tenant(c, in->tenant_id, resp);
out:
	broker_tenant_unlock(c->b, in->tenant_id);
	free(destroy);
	return e;
}

enum kb_err
rpc_tenant_unlock(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__UnlockTenantRequest *in = (const void *)req;
	struct policy_tenant p;
	struct store_tenant t;
	struct store_key lk;
	struct key_file f;
	char fp[FINGERPRINT_HEX_LEN + 1], kek_restored[STORE_KEY_ID_MAX] = "";
	int imported = 0;
	enum kb_err e;

	if ((e = request_file(&in->file, (int)in->format, in->password, &f))
	    != KB_OK)
		return e;
	broker_tenant_lock(c->b, in->tenant_id);
	if ((e = store_tenant_get(c->b->store, in->tenant_id, &t)) != KB_OK)
		goto out;
	rpc_policy_tenant(&t, &p);
	/* An unlock stores policy time first (timemark.h). */
	if ((e = policy_may_unlock(&p, c->now_us)) != KB_OK
	    || (e = timemark_advance(c->b->timemark, NULL)) != KB_OK
	    || (e = store_key_get(c->b->store, t.lock_key_id, &lk)) != KB_OK)
		goto out;
	snprintf(c->audit_key_id, sizeof(c->audit_key_id), "%s", lk.id);
	/* Check before importing, so a wrong .pfx never touches the token. A
	 * .byok can only be read by unwrapping it, under a temporary id. */
	if ((e = keys_file_fingerprint(c->b, in->tenant_id, &f, fp)) != KB_OK)
		goto out;
	if (strcmp(fp, lk.fingerprint) != 0) {
		e = kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "key mismatch: the uploaded "
		    "key (fingerprint %.16s...) is not the key %s that locked "
		    "tenant \"%s\" (fingerprint %.16s...)",
		    fp, lk.id, in->tenant_id, lk.fingerprint);
		goto out;
	}
	/* Back into the token under its old id: every DEK row names it. A
	 * crash after an earlier import left it there already. */
	if (hsm_key_exists(c->b->hsm, lk.id) == KB_OK) {
		if ((e = keys_token_fingerprint(c->b->hsm, lk.id, fp)) != KB_OK)
			goto out;
		if (strcmp(fp, lk.fingerprint) != 0) {
			e = kb_errf(KB_ERR_CORRUPT,
			    "the token holds a different "
			    "key under id %s",
			    lk.id);
			goto out;
		}
	} else {
		kb_err_clear();
		if ((e = keys_import(c->b, in->tenant_id, &f, lk.id, fp))
		    != KB_OK)
			goto out;
		imported = 1;
	}
	/* The KEK that was destroyed with the lock comes back from its
	 * wrapped copy in the database: only the returned key unwraps it. */
	if ((e = kek_restore(c, in->tenant_id, &lk, kek_restored)) != KB_OK)
		goto out;
	if ((e = store_tenant_unlock(c->b->store, in->tenant_id, c->now_us))
	    != KB_OK)
		goto out;
	imported = 0;
	kek_restored[0] = '\0';
	if ((e = after_unlock(c, in->tenant_id, lk.id)) != KB_OK)
		goto out;
	log_warn("tenant %s UNLOCKED by %s: key %s is active again; unlock its "
	         "environments one by one",
	    in->tenant_id, c->id->name, lk.id);
	e = reply_tenant(c, in->tenant_id, resp);
out:
	if (kek_restored[0] != '\0')
		(void)hsm_key_destroy(c->b->hsm, kek_restored);
	if (imported)
		(void)hsm_key_destroy(c->b->hsm, lk.id);
	broker_tenant_unlock(c->b, in->tenant_id);
	return e;
}

enum kb_err
rpc_env_unlock(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__EnvironmentRef *in = (const void *)req;
	struct store_tenant t;
	struct store_env env;
	enum kb_err e;

	broker_tenant_lock(c->b, in->tenant_id);
	if ((e = store_tenant_get(c->b->store, in->tenant_id, &t)) != KB_OK
	    || (e = store_env_get(c->b->store, in->tenant_id, in->name, &env))
	        != KB_OK)
		goto out;
	if (env.state == STORE_ENV_PENDING_DELETION) {
		e = rpc_env_pending_refusal(&env, "unlock");
		goto out;
	}
	if (env.state != STORE_ENV_LOCKED) {
		e = kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "environment %s/%s is %s, "
		    "not locked",
		    env.tenant_id, env.name, store_env_state_name(env.state));
		goto out;
	}
	if (t.locked) {
		e = kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "tenant \"%s\" is still "
		    "locked: unlock it with its key first (kbctl tenants "
		    "unlock)",
		    t.id);
		goto out;
	}
	if (strcmp(env.key_id, t.active_key_id) != 0) {
		e = kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "environment %s/%s is "
		    "encrypted with key %s, which is not the tenant's active "
		    "key "
		    "%s",
		    env.tenant_id, env.name, env.key_id, t.active_key_id);
		goto out;
	}
	if ((e = hsm_key_exists(c->b->hsm, env.key_id)) != KB_OK) {
		e = kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "environment %s/%s is "
		    "encrypted with key %s, which is not in the token (%s)",
		    env.tenant_id, env.name, env.key_id, kb_err_msg(e));
		goto out;
	}
	if ((e = timemark_advance(c->b->timemark, NULL)) != KB_OK
	    || (e = store_env_set_state(c->b->store, in->tenant_id, in->name,
	            STORE_ENV_LOCKED, STORE_ENV_ENABLED, c->now_us))
	        != KB_OK
	    || (e = store_env_get(c->b->store, in->tenant_id, in->name, &env))
	        != KB_OK)
		goto out;
	log_info("environment %s/%s unlocked by %s", env.tenant_id, env.name,
	    c->id->name);
	e = rpc_reply(resp, rpc_env_msg(&env));
out:
	broker_tenant_unlock(c->b, in->tenant_id);
	return e;
}
