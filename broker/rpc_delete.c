/* SPDX-License-Identifier: Apache-2.0 */
/* rpc_delete.c: deletion with a way back until it is final (issue 14):
 * DeleteEnvironment, UndeleteEnvironment, DeleteKey, UndeleteKey. The
 * sweeper makes a deletion final (jobs.c). */
#include "rpc.h"

#include <stdio.h>
#include <string.h>

#include "audit.h"
#include "kb_time.h"
#include "keybroker.pb-c.h"
#include "log.h"
#include "names.h"
#include "timemark.h"

#define DAY_US ((int64_t)86400 * 1000000)

/* One audit event of a deletion step, by the caller, with the call's
 * request id (so 'kbctl audit list --request ID' shows it beside the
 * call's own events). A failure is logged: the change is made. */
static void
audit_step(struct rpc_ctx *c, const char *what, const char *tenant,
    const char *env, const char *key_id, const char *reason)
{
	struct audit_record a;
	enum kb_err e;

	memset(&a, 0, sizeof(a));
	a.actor = c->id->name;
	a.role = identity_role_name(c->id->role);
	a.peer = c->peer;
	a.method = what;
	a.tenant = tenant;
	a.env = env;
	a.key_id = key_id;
	a.result = "ok";
	a.reason = reason;
	a.request_id = c->request_id;
	if ((e = audit_append(c->b->audit, &a, NULL)) != KB_OK) {
		log_error(
		    "audit log: cannot record %s: %s", what, kb_err_msg(e));
		kb_err_clear();
	}
}

/* Whether an undelete may come after the final time: while a forward
 * clock jump waits for confirmation the sweeper makes nothing final, and a
 * deletion whose final time only the jump passed can still be cancelled. */
static int
undelete_late_ok(struct rpc_ctx *c)
{
	struct timemark_state st;

	if (timemark_state(c->b->timemark, &st) != KB_OK) {
		kb_err_clear();
		return 0;
	}
	return st.jump_from_us != 0;
}

static int64_t
final_time(struct rpc_ctx *c)
{
	return c->now_us + (int64_t)c->b->cfg->deletion_window_days * DAY_US;
}

enum kb_err
rpc_env_delete(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__EnvironmentRef *in = (const void *)req;
	struct store_env env;
	char when[40], reason[256];
	enum kb_err e;

	/* A locked environment may be deleted too: that is how a tenant
	 * rids itself of one that will not be unlocked. */
	broker_tenant_lock(c->b, in->tenant_id);
	e = store_env_delete_begin(c->b->store, in->tenant_id, in->name,
	    c->now_us, final_time(c), &env);
	broker_tenant_unlock(c->b, in->tenant_id);
	if (e != KB_OK)
		return e;
	kb_time_format(env.delete_final_us, when, sizeof(when));
	snprintf(c->audit_key_id, sizeof(c->audit_key_id), "%s", env.key_id);
	snprintf(reason, sizeof(reason),
	    "pending deletion (was %s): final at %s (deletion_window_days = "
	    "%u), when its data keys and its backups' are destroyed; 'kbctl "
	    "envs undelete' cancels it until then",
	    store_env_state_name(env.state_before_deletion), when,
	    c->b->cfg->deletion_window_days);
	audit_step(c, "env.delete.requested", env.tenant_id, env.name,
	    env.key_id, reason);
	log_warn("environment %s/%s is PENDING DELETION (asked by %s): final "
	         "at %s",
	    env.tenant_id, env.name, c->id->name, when);
	return rpc_reply(resp, rpc_env_msg(&env));
}

enum kb_err
rpc_env_undelete(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__EnvironmentRef *in = (const void *)req;
	struct store_env before, env;
	char when[40], reason[256];
	enum kb_err e;

	broker_tenant_lock(c->b, in->tenant_id);
	if ((e = store_env_get(c->b->store, in->tenant_id, in->name, &before))
	    == KB_OK)
		e = store_env_delete_cancel(c->b->store, in->tenant_id,
		    in->name, c->now_us, undelete_late_ok(c), &env);
	broker_tenant_unlock(c->b, in->tenant_id);
	if (e != KB_OK)
		return e;
	kb_time_format(before.delete_final_us, when, sizeof(when));
	snprintf(c->audit_key_id, sizeof(c->audit_key_id), "%s", env.key_id);
	snprintf(reason, sizeof(reason),
	    "deletion cancelled (it was to be final at %s); the environment "
	    "is %s again",
	    when, store_env_state_name(env.state));
	audit_step(c, "env.delete.undeleted", env.tenant_id, env.name,
	    env.key_id, reason);
	log_info("environment %s/%s undeleted by %s: %s again", env.tenant_id,
	    env.name, c->id->name, store_env_state_name(env.state));
	return rpc_reply(resp, rpc_env_msg(&env));
}

enum kb_err
rpc_key_delete(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__KeyRef *in = (const void *)req;
	struct store_key k;
	char when[40], reason[256];
	enum kb_err e;

	if ((e = names_check_object_id("key id", in->key_id)) != KB_OK)
		return e;
	snprintf(c->audit_key_id, sizeof(c->audit_key_id), "%s", in->key_id);
	/* Under the tenant lock no activation, lock or backup of the tenant
	 * runs: the count and the change are one transaction anyway. */
	broker_tenant_lock(c->b, in->tenant_id);
	e = store_key_delete_begin(c->b->store, in->tenant_id, in->key_id,
	    c->now_us, final_time(c), &k);
	broker_tenant_unlock(c->b, in->tenant_id);
	if (e != KB_OK)
		return e;
	kb_time_format(k.delete_final_us, when, sizeof(when));
	snprintf(reason, sizeof(reason),
	    "pending deletion: final at %s (deletion_window_days = %u), when "
	    "its token object is destroyed; 'kbctl keys undelete' cancels it "
	    "until then",
	    when, c->b->cfg->deletion_window_days);
	audit_step(c, "key.delete.requested", k.tenant_id, NULL, k.id, reason);
	log_warn("key %s of tenant %s is PENDING DELETION (asked by %s): final "
	         "at %s",
	    k.id, k.tenant_id, c->id->name, when);
	return rpc_reply(resp, rpc_key_msg(&k));
}

enum kb_err
rpc_key_undelete(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__KeyRef *in = (const void *)req;
	struct store_key before, k;
	char when[40], reason[256];
	enum kb_err e;

	if ((e = names_check_object_id("key id", in->key_id)) != KB_OK)
		return e;
	snprintf(c->audit_key_id, sizeof(c->audit_key_id), "%s", in->key_id);
	broker_tenant_lock(c->b, in->tenant_id);
	if ((e = store_key_get(c->b->store, in->key_id, &before)) == KB_OK)
		e = store_key_delete_cancel(c->b->store, in->tenant_id,
		    in->key_id, c->now_us, undelete_late_ok(c), &k);
	else if (e == KB_ERR_NOT_FOUND)
		e = kb_errf(e, "tenant \"%s\" has no tenant key \"%s\"",
		    in->tenant_id, in->key_id);
	broker_tenant_unlock(c->b, in->tenant_id);
	if (e != KB_OK)
		return e;
	kb_time_format(before.delete_final_us, when, sizeof(when));
	snprintf(reason, sizeof(reason),
	    "deletion cancelled (it was to be final at %s); the key is %s "
	    "again",
	    when, k.state);
	audit_step(c, "key.delete.undeleted", k.tenant_id, NULL, k.id, reason);
	log_info("key %s of tenant %s undeleted by %s", k.id, k.tenant_id,
	    c->id->name);
	return rpc_reply(resp, rpc_key_msg(&k));
}
