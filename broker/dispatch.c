/* SPDX-License-Identifier: Apache-2.0 */
/* dispatch.c: method table, authentication, authorization, decoding. */
#include "dispatch.h"

#include <stdio.h>
#include <string.h>

#include <openssl/rand.h>

#include "audit.h"
#include "clock.h"
#include "grpc/health/v1/health.pb-c.h"
#include "kb_utf8.h"
#include "kb_wire.h"
#include "keybroker.pb-c.h"
#include "log.h"
#include "rpc.h"

#define ANY_ROLE (ROLE_BIT(ROLE_ADMIN) | ROLE_BIT(ROLE_SERVICE) | \
	ROLE_BIT(ROLE_AUDITOR))
#define ADMIN ROLE_BIT(ROLE_ADMIN)
#define SERVICE ROLE_BIT(ROLE_SERVICE)

#define KB "/keybroker.v1.KeyBroker/"
#define U(name, roles, msg, fn, audit) \
	{ KB #name, #name, roles, &keybroker__v1__##msg##__descriptor, fn, \
	  NULL, audit }
#define S(name, roles, msg, fn) \
	{ KB #name, #name, roles, &keybroker__v1__##msg##__descriptor, NULL, \
	  fn, AUDIT_REFUSALS }
#define AUDITORS (ROLE_BIT(ROLE_AUDITOR) | ROLE_BIT(ROLE_ADMIN))
#define R AUDIT_REFUSALS
#define A AUDIT_ALWAYS
#define C AUDIT_CHANGE

/* Every method the broker serves, who may call it, and what is audited:
 * R only refusals, A every call (recorded before the answer goes out), C a
 * state change: a "started" event before the handler runs, then the
 * outcome (same request id), so a crash between the change and its record
 * still leaves the attempt in the log. A method not listed does not exist
 * (UNIMPLEMENTED); a role not listed is refused (PERMISSION_DENIED) before
 * any handler runs. */
const struct rpc_method dispatch_methods[] = {
	{ "/grpc.health.v1.Health/Check", "Health.Check", ANY_ROLE,
	    &grpc__health__v1__health_check_request__descriptor,
	    rpc_health_check, NULL, R },
	U(WhoAmI, ANY_ROLE, who_am_irequest, rpc_whoami, R),
	U(CreateTenant, ADMIN, create_tenant_request, rpc_tenant_create, C),
	U(ListTenants, ADMIN, list_tenants_request, rpc_tenant_list, R),
	U(GetTenant, ADMIN, get_tenant_request, rpc_tenant_get, R),
	U(CreateEnvironment, ADMIN, create_environment_request, rpc_env_create, C),
	U(ListEnvironments, ADMIN, list_environments_request, rpc_env_list, R),
	U(GetEnvironment, ADMIN, get_environment_request, rpc_env_get, R),
	U(GetDataKey, SERVICE, get_data_key_request, rpc_datakey_get, A),
	U(GenerateKey, ADMIN, generate_key_request, rpc_key_generate, C),
	U(UploadKey, ADMIN, upload_key_request, rpc_key_upload, C),
	U(ListKeys, ADMIN, list_keys_request, rpc_key_list, R),
	U(GetKey, ADMIN, get_key_request, rpc_key_get, R),
	U(ActivateKey, ADMIN, activate_key_request, rpc_key_activate, C),
	U(GetJob, ADMIN, get_job_request, rpc_job_get, R),
	U(RotatePlatformKey, ADMIN, rotate_platform_key_request,
	    rpc_platform_rotate, C),
	U(VerifyDataKeys, ADMIN, verify_data_keys_request, rpc_datakeys_verify,
	    A),
	U(RepairDataKeys, ADMIN, repair_data_keys_request, rpc_datakeys_repair,
	    C),
	U(GetKeyExchangeKey, ADMIN, get_key_exchange_key_request, rpc_kek_get, C),
	U(RotateKeyExchangeKey, ADMIN, get_key_exchange_key_request,
	    rpc_kek_rotate, C),
	U(LockTenant, ADMIN, lock_tenant_request, rpc_tenant_lock, C),
	U(UnlockTenant, ADMIN, unlock_tenant_request, rpc_tenant_unlock, C),
	U(ApplyKey, ADMIN, environment_ref, rpc_env_apply_key, C),
	U(RevertKey, ADMIN, environment_ref, rpc_env_revert_key, C),
	U(UnlockEnvironment, ADMIN, environment_ref, rpc_env_unlock, C),
	U(ResetEnvironment, ADMIN, environment_ref, rpc_env_reset, C),
	U(BackupEnvironment, ADMIN, environment_ref, rpc_env_backup, C),
	U(ListBackups, ADMIN, list_backups_request, rpc_env_backups, R),
	U(RestoreBackup, ADMIN, restore_backup_request, rpc_env_restore, C),
	U(CopyEnvironment, ADMIN, copy_environment_request, rpc_env_copy, C),
	U(ListEvents, AUDITORS, list_events_request, rpc_audit_list, R),
	S(TailEvents, AUDITORS, tail_events_request, rpc_audit_tail),
	U(ListCheckpoints, AUDITORS, list_checkpoints_request,
	    rpc_audit_checkpoints, R),
	U(GetAuditKey, AUDITORS, get_audit_key_request, rpc_audit_key, R),
	U(GetClockState, AUDITORS, get_clock_state_request, rpc_clock_get, R),
	U(ConfirmClockJump, ADMIN, confirm_clock_jump_request,
	    rpc_clock_confirm, C),
	{ NULL, NULL, 0, NULL, NULL, NULL, R }
};

const struct rpc_method *
dispatch_find(const char *path, size_t len)
{
	const struct rpc_method *m;

	for (m = dispatch_methods; m->path != NULL; m++)
		if (strlen(m->path) == len && memcmp(m->path, path, len) == 0)
			return m;
	return NULL;
}

static void
roles_text(unsigned roles, char *buf, size_t len)
{
	static const enum role all[] = { ROLE_ADMIN, ROLE_SERVICE, ROLE_AUDITOR };
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

/* The value of a string field named `name` in `m`, or NULL. */
static const char *
field_str(const ProtobufCMessage *m, const char *name)
{
	const ProtobufCFieldDescriptor *f;
	const char *v;

	if (m == NULL || (f = protobuf_c_message_descriptor_get_field_by_name(
	    m->descriptor, name)) == NULL || f->type != PROTOBUF_C_TYPE_STRING ||
	    f->label == PROTOBUF_C_LABEL_REPEATED)
		return NULL;
	v = *(const char *const *)(const void *)((const char *)m + f->offset);
	return v != NULL && v[0] != '\0' ? v : NULL;
}

static const char *
audit_result(grpc_status_code code)
{
	switch (code) {
	case GRPC_STATUS_OK:
		return "ok";
	case GRPC_STATUS_PERMISSION_DENIED:
	case GRPC_STATUS_UNAUTHENTICATED:
	case GRPC_STATUS_FAILED_PRECONDITION:
		return "denied";
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
	case GRPC_STATUS__DO_NOT_USE:
		break;
	}
	return "error";
}

/* Record the call in the audit log. Only ids and reasons go in: no request
 * field that could hold a secret is ever copied. */
static enum kb_err
audit_call(struct broker *b, const char *method, const struct rpc_ctx *ctx,
    const struct identity *id, int have_id, const ProtobufCMessage *in,
    const struct dispatch_result *res, const char *result)
{
	struct audit_record r;
	char reason[1100];
	const char *tenant, *env;

	tenant = field_str(in, "tenant_id");
	if (tenant == NULL && in != NULL &&
	    (in->descriptor == &keybroker__v1__create_tenant_request__descriptor ||
	    in->descriptor == &keybroker__v1__get_tenant_request__descriptor))
		tenant = field_str(in, "id");
	if ((env = field_str(in, "environment")) == NULL &&
	    (env = field_str(in, "name")) == NULL)
		env = field_str(in, "target");
	memset(&r, 0, sizeof(r));
	/* A CA-signed certificate refused for its role still names its
	 * holder; a certificate that did not verify names nobody. */
	r.actor = id->name[0] != '\0' ? id->name : "unauthenticated";
	r.role = have_id ? identity_role_name(id->role) : "none";
	r.peer = ctx->peer;
	r.method = method;
	r.tenant = tenant;
	r.env = env;
	r.key_id = ctx->audit_key_id[0] != '\0' ? ctx->audit_key_id :
	    field_str(in, "key_id");
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

static void
new_request_id(char *out, size_t len)
{
	uint8_t r[8];

	if (RAND_bytes(r, sizeof(r)) != 1)
		memset(r, 0, sizeof(r));
	snprintf(out, len, "r-%02x%02x%02x%02x%02x%02x%02x%02x", r[0], r[1],
	    r[2], r[3], r[4], r[5], r[6], r[7]);
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
	char roles[64], name[128];
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
	new_request_id(ctx.request_id, sizeof(ctx.request_id));
	if ((m = dispatch_find(path, path_len)) == NULL) {
		res->code = GRPC_STATUS_UNIMPLEMENTED;
		snprintf(res->message, sizeof(res->message), "unknown method "
		    "\"%.*s\"", (int)(path_len > 200 ? 200 : path_len), path);
		snprintf(name, sizeof(name), "%.*s",
		    (int)(path_len > 100 ? 100 : path_len), path);
		ctx.method = name;
		e = identity_from_pem(b->verifier, peer->cert_pem, peer->pem_len,
		    ctx.now_us, &id);
		kb_err_clear();
		(void)audit_call(b, name, &ctx, &id, e == KB_OK, NULL, res, NULL);
		return;
	}
	ctx.method = m->name;
	audit_all = m->audit != AUDIT_REFUSALS;
	/* Decode first so a refused call's record names what it asked for. */
	if ((e = kb_wire_unpack(m->req, req, b->cfg->max_message_bytes, &in))
	    != KB_OK) {
		set_status(res, e);
	} else if ((e = identity_from_pem(b->verifier, peer->cert_pem,
	    peer->pem_len, ctx.now_us, &id)) != KB_OK) {
		set_status(res, e);
	} else {
		have_id = 1;
		if (!(m->roles & ROLE_BIT(id.role))) {
			roles_text(m->roles, roles, sizeof(roles));
			e = kb_errf(KB_ERR_PERMISSION_DENIED, "%s \"%s\" may not "
			    "call %s (allowed: %s)", identity_role_name(id.role),
			    id.name, m->name, roles);
		} else if (m->stream != NULL) {
			e = m->stream(&ctx, in, ops, st);
		} else if (m->audit == AUDIT_CHANGE &&
		    (e = audit_call(b, m->name, &ctx, &id, have_id, in, res,
		    "started")) != KB_OK) {
			/* A full or read-only audit disk keeps its own status. */
			e = kb_errf(e == KB_ERR_STORAGE_FULL || e == KB_ERR_READ_ONLY ?
			    e : KB_ERR_UNAVAILABLE, "the audit database cannot "
			    "record this call (%s); nothing was changed",
			    kb_err_msg(e));
		} else {
			e = m->fn(&ctx, in, &out);
			if (e == KB_OK && out == NULL)
				e = kb_errf(KB_ERR_INTERNAL, "%s produced no "
				    "response", m->name);
		}
		set_status(res, e);
	}
	if (res->code != GRPC_STATUS_OK)
		log_info("%s by %s from %s: %s: %s", m->name,
		    id.name[0] != '\0' ? id.name : "(unauthenticated)", peer->peer,
		    kb_grpc_status_name(res->code), res->message);
	/* The answer goes out only once its event is durable. A stream that
	 * ran ends when its client goes or the broker stops: not a refusal. */
	if (audit_all || (res->code != GRPC_STATUS_OK && !ctx.stream_open)) {
		e = audit_call(b, m->name, &ctx, &id, have_id, in, res, NULL);
		if (e != KB_OK && res->code == GRPC_STATUS_OK) {
			kb_wire_free(out);
			out = NULL;
			e = m->audit == AUDIT_CHANGE ?
			    kb_errf(KB_ERR_UNAVAILABLE, "the audit log cannot "
			    "record the outcome of this call (%s); the change may "
			    "have been made (its \"started\" event is recorded): "
			    "check the state before retrying", kb_err_msg(e)) :
			    kb_errf(KB_ERR_UNAVAILABLE, "the audit log cannot "
			    "record this call (%s); nothing was returned",
			    kb_err_msg(e));
			set_status(res, e);
		}
	}
	if (ctx.after_audit != NULL)
		ctx.after_audit(b);
	if (res->code == GRPC_STATUS_OK && out != NULL &&
	    (res->resp = kb_wire_pack(out)) == NULL) {
		e = kb_errf(KB_ERR_NOMEM, "out of memory");
		set_status(res, e);
	}
	kb_wire_free(out);
	kb_wire_free(in);
}
