/* SPDX-License-Identifier: Apache-2.0 */
/* dispatch.c: method table, authentication, authorization, decoding. */
#include "dispatch.h"

#include <stdio.h>
#include <string.h>

#include "audit.h"
#include "clock.h"
#include "grpc/health/v1/health.pb-c.h"
#include "kb_err_grpc.h"
#include "kb_utf8.h"
#include "kb_wire.h"
#include "keybroker.pb-c.h"
#include "log.h"
#include "quorum.h"
#include "ratelimit.h"
#include "rpc.h"
#include "scope.h"

#define ANY_ROLE                                                               \
	(ROLE_BIT(ROLE_ADMIN) | ROLE_BIT(ROLE_SERVICE) | ROLE_BIT(ROLE_AUDITOR))
#define ADMIN ROLE_BIT(ROLE_ADMIN)
#define SERVICE ROLE_BIT(ROLE_SERVICE)
#define AUDITORS (ROLE_BIT(ROLE_AUDITOR) | ROLE_BIT(ROLE_ADMIN))

/* One entry of the table: a unary method or a server-streaming one. */
#define KB "/keybroker.v1.KeyBroker/"
#define UNARY(name, roles, msg, fn, audit, scope)                              \
	{                                                                      \
		KB #name, #name, roles, &keybroker__v1__##msg##__descriptor,   \
		    fn, NULL, audit, scope, RPC_QUORUM_NONE                    \
	}
#define STREAM(name, roles, msg, fn, audit, scope)                             \
	{                                                                      \
		KB #name, #name, roles, &keybroker__v1__##msg##__descriptor,   \
		    NULL, fn, audit, scope, RPC_QUORUM_NONE                    \
	}
/* A state change that, with a quorum in force, becomes an approval request
 * (quorum.h): the call runs only once its approvals are in. */
#define QUORUM(name, roles, msg, fn, scope)                                    \
	{                                                                      \
		KB #name, #name, roles, &keybroker__v1__##msg##__descriptor,   \
		    fn, NULL, AUDIT_CHANGE, scope, RPC_QUORUM_REQUEST          \
	}
/* A key made at once but held pending_approval while a quorum covers the
 * call and the tenant has an active key (quorum.h): unusable until the
 * request the handler makes for it is approved. */
#define QUORUM_STAGED(name, roles, msg, fn, scope)                             \
	{                                                                      \
		KB #name, #name, roles, &keybroker__v1__##msg##__descriptor,   \
		    fn, NULL, AUDIT_CHANGE, scope, RPC_QUORUM_STAGED           \
	}

/* Scope rules (scope.h): which request fields name the tenant and the
 * environment, and whose certificate reaches them. */
#define NO_TENANT                                                              \
	{                                                                      \
		SCOPE_NONE                                                     \
	}
#define TENANT(tenant)                                                         \
	{                                                                      \
		SCOPE_TENANT, tenant                                           \
	}
#define TENANT_ENV(tenant, env)                                                \
	{                                                                      \
		SCOPE_TENANT, tenant, env                                      \
	}
#define TENANT_ENVS(tenant, env, env2)                                         \
	{                                                                      \
		SCOPE_TENANT, tenant, env, env2                                \
	}
#define EACH_TENANT_ENV(list, tenant, env)                                     \
	{                                                                      \
		SCOPE_TENANT, tenant, env, NULL, list                          \
	}
#define TENANT_OR_PLATFORM(tenant)                                             \
	{                                                                      \
		SCOPE_TENANT_OR_PLATFORM, tenant                               \
	}
#define PLATFORM_ONLY                                                          \
	{                                                                      \
		SCOPE_PLATFORM                                                 \
	}
#define SERVICE_ENV(tenant, env)                                               \
	{                                                                      \
		SCOPE_SERVICE_ENV, tenant, env                                 \
	}
#define CHECKED_BY_HANDLER                                                     \
	{                                                                      \
		SCOPE_HANDLER                                                  \
	}

/* Every method the broker serves, who may call it, what is audited, and
 * which tenant and environment it acts on.
 *
 * Audit: AUDIT_REFUSALS only refusals, AUDIT_ALWAYS every call (recorded
 * before the answer goes out), AUDIT_CHANGE a state change: a "started"
 * event before the handler runs, then the outcome (same request id), so a
 * crash between the change and its record still leaves the attempt in the
 * log. A stream's outcome is recorded when it ends, before its status goes
 * out.
 *
 * A method not listed does not exist (UNIMPLEMENTED). Before any handler
 * runs, a role not listed is refused (PERMISSION_DENIED), then the names
 * the scope rule points at are checked (INVALID_ARGUMENT) and the caller's
 * certificate must reach them (PERMISSION_DENIED): TENANT(field) an admin
 * with kb://platform or kb://tenant/<that tenant>; TENANT_ENV also checks
 * the environment name (TENANT_ENVS two of them); EACH_TENANT_ENV every
 * element of a repeated field; TENANT_OR_PLATFORM(field) with the field
 * empty needs kb://platform; PLATFORM_ONLY kb://platform; SERVICE_ENV a
 * service with kb://env/<tenant>/<env>; NO_TENANT names no tenant.
 * CHECKED_BY_HANDLER: the handler checks per call, for the reason given
 * at the entry. tests/unit/test-dispatch.c fails when a request with a
 * field naming a tenant has no rule that reads it. */
const struct rpc_method dispatch_methods[] = {
    {"/grpc.health.v1.Health/Check", "Health.Check", ANY_ROLE,
        &grpc__health__v1__health_check_request__descriptor, rpc_health_check,
        NULL, AUDIT_REFUSALS, NO_TENANT, RPC_QUORUM_NONE},
    UNARY(WhoAmI, ANY_ROLE, who_am_irequest, rpc_whoami, AUDIT_REFUSALS,
        NO_TENANT),
    UNARY(CreateTenant, ADMIN, create_tenant_request, rpc_tenant_create,
        AUDIT_CHANGE, TENANT("id")),
    /* Lists only the tenants a tenant-limited admin's certificate names. */
    UNARY(ListTenants, ADMIN, list_tenants_request, rpc_tenant_list,
        AUDIT_REFUSALS, CHECKED_BY_HANDLER),
    UNARY(GetTenant, ADMIN, get_tenant_request, rpc_tenant_get, AUDIT_REFUSALS,
        TENANT("id")),
    UNARY(CreateEnvironment, ADMIN, create_environment_request, rpc_env_create,
        AUDIT_CHANGE, TENANT_ENV("tenant_id", "name")),
    UNARY(ListEnvironments, ADMIN, list_environments_request, rpc_env_list,
        AUDIT_REFUSALS, TENANT("tenant_id")),
    UNARY(GetEnvironment, ADMIN, get_environment_request, rpc_env_get,
        AUDIT_REFUSALS, TENANT_ENV("tenant_id", "name")),
    UNARY(GetDataKey, SERVICE, get_data_key_request, rpc_datakey_get,
        AUDIT_ALWAYS, SERVICE_ENV("tenant_id", "environment")),
    QUORUM_STAGED(GenerateKey, ADMIN, generate_key_request, rpc_key_generate,
        TENANT("tenant_id")),
    QUORUM_STAGED(UploadKey, ADMIN, upload_key_request, rpc_key_upload,
        TENANT("tenant_id")),
    UNARY(ListKeys, ADMIN, list_keys_request, rpc_key_list, AUDIT_REFUSALS,
        TENANT("tenant_id")),
    UNARY(GetKey, ADMIN, get_key_request, rpc_key_get, AUDIT_REFUSALS,
        TENANT("tenant_id")),
    QUORUM(ActivateKey, ADMIN, activate_key_request, rpc_key_activate,
        TENANT("tenant_id")),
    /* Names a job, whose tenant is stored with it: another tenant's job
     * is NOT_FOUND to a tenant-limited admin. */
    UNARY(GetJob, ADMIN, get_job_request, rpc_job_get, AUDIT_REFUSALS,
        CHECKED_BY_HANDLER),
    QUORUM(RotatePlatformKey, ADMIN, rotate_platform_key_request,
        rpc_platform_rotate, PLATFORM_ONLY),
    UNARY(VerifyDataKeys, ADMIN, verify_data_keys_request, rpc_datakeys_verify,
        AUDIT_ALWAYS, TENANT_OR_PLATFORM("tenant_id")),
    UNARY(RepairDataKeys, ADMIN, repair_data_keys_request, rpc_datakeys_repair,
        AUDIT_CHANGE, EACH_TENANT_ENV("rows", "tenant_id", "environment")),
    UNARY(GetKeyExchangeKey, ADMIN, get_key_exchange_key_request, rpc_kek_get,
        AUDIT_CHANGE, TENANT("tenant_id")),
    UNARY(RotateKeyExchangeKey, ADMIN, get_key_exchange_key_request,
        rpc_kek_rotate, AUDIT_CHANGE, TENANT("tenant_id")),
    QUORUM(LockTenant, ADMIN, lock_tenant_request, rpc_tenant_lock,
        TENANT("tenant_id")),
    UNARY(UnlockTenant, ADMIN, unlock_tenant_request, rpc_tenant_unlock,
        AUDIT_CHANGE, TENANT("tenant_id")),
    UNARY(ApplyKey, ADMIN, environment_ref, rpc_env_apply_key, AUDIT_CHANGE,
        TENANT_ENV("tenant_id", "name")),
    UNARY(RevertKey, ADMIN, environment_ref, rpc_env_revert_key, AUDIT_CHANGE,
        TENANT_ENV("tenant_id", "name")),
    UNARY(UnlockEnvironment, ADMIN, environment_ref, rpc_env_unlock,
        AUDIT_CHANGE, TENANT_ENV("tenant_id", "name")),
    QUORUM(ResetEnvironment, ADMIN, environment_ref, rpc_env_reset,
        TENANT_ENV("tenant_id", "name")),
    UNARY(BackupEnvironment, ADMIN, environment_ref, rpc_env_backup_create,
        AUDIT_CHANGE, TENANT_ENV("tenant_id", "name")),
    UNARY(ListBackups, ADMIN, list_backups_request, rpc_env_backup_list,
        AUDIT_REFUSALS, TENANT_ENV("tenant_id", "name")),
    QUORUM(RestoreBackup, ADMIN, restore_backup_request, rpc_env_restore,
        TENANT_ENV("tenant_id", "name")),
    QUORUM(CopyEnvironment, ADMIN, copy_environment_request, rpc_env_copy,
        TENANT_ENVS("tenant_id", "target", "source")),
    /* The filter is optional: auditors read every tenant; a tenant-limited
     * admin naming a tenant is checked, naming none reads only its own
     * tenants' events (rpc_audit.c, make_filter). */
    UNARY(ListEvents, AUDITORS, list_events_request, rpc_audit_list,
        AUDIT_REFUSALS, CHECKED_BY_HANDLER),
    STREAM(TailEvents, AUDITORS, tail_events_request, rpc_audit_tail,
        AUDIT_REFUSALS, CHECKED_BY_HANDLER),
    UNARY(ListCheckpoints, AUDITORS, list_checkpoints_request,
        rpc_audit_checkpoints, AUDIT_REFUSALS, NO_TENANT),
    UNARY(GetAuditKey, AUDITORS, get_audit_key_request, rpc_audit_key,
        AUDIT_REFUSALS, NO_TENANT),
    UNARY(ListAuditKeys, AUDITORS, list_audit_keys_request, rpc_audit_keys,
        AUDIT_REFUSALS, NO_TENANT),
    UNARY(RotateAuditKey, ADMIN, rotate_audit_key_request, rpc_audit_key_rotate,
        AUDIT_CHANGE, PLATFORM_ONLY),
    UNARY(GetClockState, AUDITORS, get_clock_state_request, rpc_clock_get,
        AUDIT_REFUSALS, NO_TENANT),
    UNARY(ConfirmClockJump, ADMIN, confirm_clock_jump_request,
        rpc_clock_confirm, AUDIT_CHANGE, PLATFORM_ONLY),
    /* Disaster recovery: the whole database leaves the broker (sealed),
     * so its "started" event is durable before the first byte goes. */
    STREAM(CreateBackup, ADMIN, create_backup_request, rpc_backup_create,
        AUDIT_CHANGE, PLATFORM_ONLY),
    /* Quorum (issue 15; quorum.h). A policy change is itself a request
     * while the policy that governs it is in force. */
    QUORUM(SetQuorum, ADMIN, set_quorum_request, rpc_quorum_set,
        TENANT_OR_PLATFORM("tenant_id")),
    UNARY(GetQuorum, ADMIN, get_quorum_request, rpc_quorum_get, AUDIT_REFUSALS,
        TENANT_OR_PLATFORM("tenant_id")),
    UNARY(ListApprovalRequests, ADMIN, list_approval_requests_request,
        rpc_approval_list, AUDIT_REFUSALS, TENANT_OR_PLATFORM("tenant_id")),
    /* Name a request, whose tenant is stored with it: the caller must
     * reach it by the scope rule of the request's own method. */
    UNARY(GetApprovalRequest, ADMIN, approval_request_ref, rpc_approval_get,
        AUDIT_REFUSALS, CHECKED_BY_HANDLER),
    UNARY(ApproveRequest, ADMIN, approval_request_ref, rpc_approval_approve,
        AUDIT_ALWAYS, CHECKED_BY_HANDLER),
    UNARY(DenyRequest, ADMIN, approval_request_ref, rpc_approval_deny,
        AUDIT_ALWAYS, CHECKED_BY_HANDLER),
    /* Doctor (issue 14): read-only checks of the whole broker (its
     * token, every tenant's keys): platform-wide admins. */
    UNARY(RunDiagnostics, ADMIN, run_diagnostics_request, rpc_doctor_run,
        AUDIT_REFUSALS, PLATFORM_ONLY),
    /* Deletion with a way back (issue 14; rpc_delete.c): tenant admins of
     * the tenant and platform admins; a deletion is covered by the quorum,
     * its cancel is not (it destroys nothing). */
    QUORUM(DeleteEnvironment, ADMIN, environment_ref, rpc_env_delete,
        TENANT_ENV("tenant_id", "name")),
    UNARY(UndeleteEnvironment, ADMIN, environment_ref, rpc_env_undelete,
        AUDIT_CHANGE, TENANT_ENV("tenant_id", "name")),
    QUORUM(DeleteKey, ADMIN, key_ref, rpc_key_delete, TENANT("tenant_id")),
    UNARY(UndeleteKey, ADMIN, key_ref, rpc_key_undelete, AUDIT_CHANGE,
        TENANT("tenant_id")),
    /* Key census, key retirement, DEK rotation (issue 14). A census or
     * retirement without a tenant names a platform key. RetireDataKeys
     * destroys data keys, as ResetEnvironment does: a quorum covers it. */
    UNARY(GetKeyCensus, ADMIN, get_key_census_request, rpc_key_census,
        AUDIT_REFUSALS, TENANT_OR_PLATFORM("tenant_id")),
    UNARY(RetireKey, ADMIN, retire_key_request, rpc_key_retire, AUDIT_CHANGE,
        TENANT_OR_PLATFORM("tenant_id")),
    UNARY(RotateDataKey, ADMIN, environment_ref, rpc_env_rotate_dek,
        AUDIT_CHANGE, TENANT_ENV("tenant_id", "name")),
    QUORUM(RetireDataKeys, ADMIN, retire_data_keys_request, rpc_env_retire_deks,
        TENANT_ENV("tenant_id", "name")),
    {NULL, NULL, 0, NULL, NULL, NULL, AUDIT_REFUSALS, {SCOPE_UNSET},
        RPC_QUORUM_NONE}};

enum kb_err
dispatch_table_check(const struct rpc_method *table)
{
	const struct rpc_method *m, *o;
	enum kb_err e;

	for (m = table; m->path != NULL; m++) {
		if (m->name == NULL || m->req == NULL || m->roles == 0
		    || (m->fn == NULL) == (m->stream == NULL))
			return kb_errf(KB_ERR_CONFIG,
			    "method table: %s needs a "
			    "name, a request type, roles and exactly one "
			    "handler",
			    m->path);
		for (o = table; o != m; o++)
			if (strcmp(o->path, m->path) == 0)
				return kb_errf(KB_ERR_CONFIG,
				    "method table: %s "
				    "is listed twice",
				    m->path);
		if ((e = scope_rule_check(&m->scope, m->name, m->req, m->roles))
		    != KB_OK)
			return e;
	}
	return KB_OK;
}

const struct rpc_method *
dispatch_find(const char *path, size_t len)
{
	const struct rpc_method *m;

	for (m = dispatch_methods; m->path != NULL; m++)
		if (strlen(m->path) == len && memcmp(m->path, path, len) == 0)
			return m;
	return NULL;
}

size_t
dispatch_method_count(void)
{
	size_t n = 0;

	while (dispatch_methods[n].path != NULL)
		n++;
	return n;
}

void
dispatch_method_names(const char **names)
{
	size_t i;

	for (i = 0; dispatch_methods[i].path != NULL; i++)
		names[i] = dispatch_methods[i].name;
}

static void
roles_text(unsigned roles, char *buf, size_t len)
{
	static const enum role all[] = {ROLE_ADMIN, ROLE_SERVICE, ROLE_AUDITOR};
	size_t i, n = 0;

	buf[0] = '\0';
	for (i = 0; i < 3; i++) {
		if (!(roles & ROLE_BIT(all[i])))
			continue;
		n += (size_t)snprintf(buf + n, len > n ? len - n : 0, "%s%s",
		    n ? ", " : "", identity_role_name(all[i]));
	}
}

static void
set_status(struct dispatch_result *res, enum kb_err e)
{
	res->code = kb_err_to_grpc(e);
	snprintf(res->message, sizeof(res->message), "%s", kb_err_msg(e));
	/* Names echoed with %.Ns may be cut inside a character. */
	kb_utf8_clean(res->message, sizeof(res->message));
}

/* The value of a string field named `name` in `m`, or NULL when unset. */
static const char *
field_str(const ProtobufCMessage *m, const char *name)
{
	const char *v = scope_field_str(m, name);

	return v != NULL && v[0] != '\0' ? v : NULL;
}

static const char *
audit_result(grpc_status_code code)
{
	switch (code) {
	case GRPC_STATUS_OK: return "ok";
	case GRPC_STATUS_PERMISSION_DENIED:
	case GRPC_STATUS_UNAUTHENTICATED:
	case GRPC_STATUS_FAILED_PRECONDITION: return "denied";
	case GRPC_STATUS_CANCELLED:
	case GRPC_STATUS_UNKNOWN:
	case GRPC_STATUS_INVALID_ARGUMENT:
	case GRPC_STATUS_DEADLINE_EXCEEDED:
	case GRPC_STATUS_NOT_FOUND:
	case GRPC_STATUS_ALREADY_EXISTS:
	case GRPC_STATUS_RESOURCE_EXHAUSTED:
	case GRPC_STATUS_ABORTED:
	case GRPC_STATUS_OUT_OF_RANGE:
	case GRPC_STATUS_UNIMPLEMENTED:
	case GRPC_STATUS_INTERNAL:
	case GRPC_STATUS_UNAVAILABLE:
	case GRPC_STATUS_DATA_LOSS:
	case GRPC_STATUS__DO_NOT_USE: break;
	}
	return "error";
}

/* Record the call in the audit log. Only ids and reasons go in: no request
 * field that could hold a secret is ever copied. */
static enum kb_err
audit_call(struct broker *b, const char *method, const struct scope_rule *scope,
    const struct rpc_ctx *ctx, const struct identity *id, int have_id,
    const ProtobufCMessage *in, const struct dispatch_result *res,
    const char *result)
{
	struct audit_record r;
	char reason[1100];
	const char *tenant = NULL, *env = NULL;

	/* The tenant and environment the method's scope rule reads (none for
	 * an unknown method, or names inside a list). */
	if (scope != NULL && scope->each == NULL) {
		tenant = field_str(in, scope->tenant);
		env = field_str(in, scope->env);
	}
	memset(&r, 0, sizeof(r));
	/* A CA-signed certificate refused for its role still names its
	 * holder; a certificate that did not verify names nobody. */
	r.actor = id->name[0] != '\0' ? id->name : "unauthenticated";
	r.role = have_id ? identity_role_name(id->role) : "none";
	r.peer = ctx->peer;
	r.method = method;
	r.tenant = tenant;
	r.env = env;
	r.key_id = ctx->audit_key_id[0] != '\0' ? ctx->audit_key_id
	                                        : field_str(in, "key_id");
	r.result = result != NULL ? result : audit_result(res->code);
	if (res->code != GRPC_STATUS_OK)
		snprintf(reason, sizeof(reason), "%s: %s",
		    kb_grpc_status_name(res->code), res->message);
	else
		reason[0] = '\0';
	/* Stored reasons are read back into 512 bytes: cut here, whole. */
	kb_utf8_clean(reason, 500);
	r.reason = reason;
	r.request_id = ctx->request_id;
	return audit_append(b->audit, &r, NULL);
}

/* "r-" and 24 hex digits: this broker's instance, then a 64-bit counter
 * that starts at a random value at each start. */
static void
new_request_id(struct broker *b, char *out, size_t len)
{
	uint_least64_t n = atomic_fetch_add(&b->request_seq, 1);

	snprintf(out, len, "r-%s%016llx", b->instance, (unsigned long long)n);
}

static enum kb_err
check_role(const struct rpc_method *m, const struct identity *id)
{
	char roles[64];

	if (m->roles & ROLE_BIT(id->role))
		return KB_OK;
	roles_text(m->roles, roles, sizeof(roles));
	return kb_errf(KB_ERR_PERMISSION_DENIED,
	    "%s \"%s\" may not call %s "
	    "(allowed: %s)",
	    identity_role_name(id->role), id->name, m->name, roles);
}

/* Run an authorized call's handler; a state change's "started" event is
 * recorded first. */
static enum kb_err
run_handler(struct rpc_ctx *ctx, const struct rpc_method *m,
    const ProtobufCMessage *in, const struct rpc_stream_ops *ops,
    struct rpc_stream *st, const struct dispatch_result *res,
    ProtobufCMessage **out)
{
	enum kb_err e;

	if (m->audit == AUDIT_CHANGE
	    && (e = audit_call(ctx->b, m->name, &m->scope, ctx, ctx->id, 1, in,
	            res, "started"))
	        != KB_OK) {
		/* A full or read-only audit disk keeps its own status. */
		return kb_errf(e == KB_ERR_STORAGE_FULL || e == KB_ERR_READ_ONLY
		        ? e
		        : KB_ERR_UNAVAILABLE,
		    "the audit database cannot record "
		    "this call (%s); nothing was changed",
		    kb_err_msg(e));
	}
	if (m->stream != NULL)
		return m->stream(ctx, in, ops, st);
	if ((e = m->fn(ctx, in, out)) == KB_OK && *out == NULL)
		e = kb_errf(
		    KB_ERR_INTERNAL, "%s produced no response", m->name);
	return e;
}

enum kb_err
dispatch_execute(struct rpc_ctx *ctx, const struct rpc_method *m,
    const ProtobufCMessage *in, ProtobufCMessage **out, char *result,
    size_t len)
{
	struct dispatch_result res;
	enum kb_err e, e2;

	memset(&res, 0, sizeof(res));
	*out = NULL;
	kb_err_clear();
	e = run_handler(ctx, m, in, NULL, NULL, &res, out);
	set_status(&res, e);
	if ((e2 = audit_call(
	         ctx->b, m->name, &m->scope, ctx, ctx->id, 1, in, &res, NULL))
	        != KB_OK
	    && e == KB_OK) {
		kb_wire_free(*out);
		*out = NULL;
		e = kb_errf(KB_ERR_UNAVAILABLE,
		    "the audit log cannot record the "
		    "outcome of %s (%s); the change may have been made (its "
		    "\"started\" event is recorded): check the state",
		    m->name, kb_err_msg(e2));
		set_status(&res, e);
	}
	if (ctx->after_audit != NULL)
		ctx->after_audit(ctx->b);
	if (e == KB_OK)
		snprintf(result, len, "ok");
	else
		snprintf(result, len, "%s: %s", kb_grpc_status_name(res.code),
		    res.message);
	kb_errf(e, "%s", res.message);
	return e;
}

void
dispatch_call(struct broker *b, const char *path, size_t path_len,
    const struct dispatch_peer *peer, grpc_byte_buffer *req,
    const struct rpc_stream_ops *ops, struct rpc_stream *st,
    struct dispatch_result *res)
{
	const struct rpc_method *m;
	struct identity id;
	struct rpc_ctx ctx;
	ProtobufCMessage *in = NULL, *out = NULL;
	char name[128];
	int have_id = 0, audit_all = 0;
	enum kb_err e;

	memset(res, 0, sizeof(res[0]));
	memset(&ctx, 0, sizeof(ctx));
	memset(&id, 0, sizeof(id));
	kb_err_clear();
	ctx.b = b;
	ctx.id = &id;
	ctx.peer = peer->peer;
	ctx.now_us = clock_now_us();
	new_request_id(b, ctx.request_id, sizeof(ctx.request_id));
	if ((m = dispatch_find(path, path_len)) == NULL) {
		res->code = GRPC_STATUS_UNIMPLEMENTED;
		snprintf(res->message, sizeof(res->message),
		    "unknown method "
		    "\"%.*s\"",
		    (int)(path_len > 200 ? 200 : path_len), path);
		snprintf(name, sizeof(name), "%.*s",
		    (int)(path_len > 100 ? 100 : path_len), path);
		ctx.method = name;
		e = identity_from_pem(b->verifier, peer->cert_pem,
		    peer->pem_len, ctx.now_us, &id);
		kb_err_clear();
		(void)audit_call(
		    b, name, NULL, &ctx, &id, e == KB_OK, NULL, res, NULL);
		return;
	}
	ctx.method = m->name;
	audit_all = m->audit != AUDIT_REFUSALS;
	/* Decode first so a refused call's record names what it asked for. */
	if ((e = kb_wire_unpack(m->req, req, b->cfg->max_message_bytes, &in))
	    != KB_OK) {
		set_status(res, e);
	} else if ((e = identity_from_pem(b->verifier, peer->cert_pem,
	                peer->pem_len, ctx.now_us, &id))
	    != KB_OK) {
		set_status(res, e);
	} else if (ratelimit_refused(b->rate, &ctx, m,
	               m->scope.tenant != NULL ? field_str(in, m->scope.tenant)
	                                       : NULL,
	               res)) {
		kb_wire_free(in); /* counted for a summary, not audited each */
		return;
	} else {
		have_id = 1;
		/* A refused call reaches no handler: the role, then the names
		 * of its tenant and environment and the caller's scope. */
		if ((e = check_role(m, &id)) == KB_OK)
			e = scope_request_check(&m->scope, m->name, &id, in);
		/* With a quorum in force a covered call becomes a request
		 * (ABORTED, the trailer kb-request-id) and runs later. */
		if (e == KB_OK && m->quorum)
			e = quorum_intercept(&ctx, m, in);
		if (e == KB_OK)
			e = run_handler(&ctx, m, in, ops, st, res, &out);
		set_status(res, e);
		if (e == KB_ERR_APPROVAL_REQUIRED)
			snprintf(res->request_id, sizeof(res->request_id), "%s",
			    ctx.approval_id);
	}
	if (res->code != GRPC_STATUS_OK)
		log_event(LOG_INFO, "call.refused",
		    LOG_KV("method", m->name, "principal",
		        id.name[0] != '\0' ? id.name : "(unauthenticated)",
		        "peer", peer->peer, "code",
		        kb_grpc_status_name(res->code), "request_id",
		        ctx.request_id),
		    "%s by %s from %s: %s: %s", m->name,
		    id.name[0] != '\0' ? id.name : "(unauthenticated)",
		    peer->peer, kb_grpc_status_name(res->code), res->message);
	/* The answer goes out only once its event is durable. A stream that
	 * ran ends when its client goes or the broker stops: not a refusal. */
	if (audit_all || (res->code != GRPC_STATUS_OK && !ctx.stream_open)) {
		e = audit_call(b, m->name, &m->scope, &ctx, &id, have_id, in,
		    res, ctx.approval_id[0] != '\0' ? "requested" : NULL);
		if (e != KB_OK && res->code == GRPC_STATUS_OK) {
			kb_wire_free(out);
			out = NULL;
			e = m->audit == AUDIT_CHANGE
			    ? kb_errf(KB_ERR_UNAVAILABLE,
			        "the audit log cannot "
			        "record the outcome of this call (%s); the "
			        "change may "
			        "have been made (its \"started\" event is "
			        "recorded): "
			        "check the state before retrying",
			        kb_err_msg(e))
			    : kb_errf(KB_ERR_UNAVAILABLE,
			        "the audit log cannot "
			        "record this call (%s); nothing was returned",
			        kb_err_msg(e));
			set_status(res, e);
		}
	}
	if (ctx.after_audit != NULL)
		ctx.after_audit(b);
	if (res->code == GRPC_STATUS_OK && out != NULL
	    && (res->resp = kb_wire_pack(out)) == NULL) {
		e = kb_errf(KB_ERR_NOMEM, "out of memory");
		set_status(res, e);
	}
	ratelimit_done(b->rate, &ctx);
	kb_wire_free(out);
	kb_wire_free(in);
}
