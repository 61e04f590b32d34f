/* SPDX-License-Identifier: Apache-2.0 */
/* dispatch.c: method table, authentication, authorization, decoding. */
#include "dispatch.h"

#include <stdio.h>
#include <string.h>

#include "clock.h"
#include "grpc/health/v1/health.pb-c.h"
#include "kb_wire.h"
#include "keybroker.pb-c.h"
#include "log.h"
#include "rpc.h"

#define ANY_ROLE (ROLE_BIT(ROLE_ADMIN) | ROLE_BIT(ROLE_SERVICE) | \
	ROLE_BIT(ROLE_AUDITOR))
#define ADMIN ROLE_BIT(ROLE_ADMIN)
#define SERVICE ROLE_BIT(ROLE_SERVICE)

#define KB "/keybroker.v1.KeyBroker/"
#define M(name, roles, msg, fn) \
	{ KB #name, #name, roles, &keybroker__v1__##msg##__descriptor, fn }

/* Every method the broker serves and who may call it. A method not listed
 * here does not exist (UNIMPLEMENTED); a role not listed is refused
 * (PERMISSION_DENIED) before any handler runs. */
const struct rpc_method dispatch_methods[] = {
	{ "/grpc.health.v1.Health/Check", "Health.Check", ANY_ROLE,
	    &grpc__health__v1__health_check_request__descriptor,
	    rpc_health_check },
	M(WhoAmI, ANY_ROLE, who_am_irequest, rpc_whoami),
	M(CreateTenant, ADMIN, create_tenant_request, rpc_tenant_create),
	M(ListTenants, ADMIN, list_tenants_request, rpc_tenant_list),
	M(GetTenant, ADMIN, get_tenant_request, rpc_tenant_get),
	M(CreateEnvironment, ADMIN, create_environment_request, rpc_env_create),
	M(ListEnvironments, ADMIN, list_environments_request, rpc_env_list),
	M(GetEnvironment, ADMIN, get_environment_request, rpc_env_get),
	M(GetDataKey, SERVICE, get_data_key_request, rpc_datakey_get),
	{ NULL, NULL, 0, NULL, NULL }
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
}

void
dispatch_unary(struct broker *b, const char *path, size_t path_len,
    const char *peer, const char *cert_pem, size_t pem_len,
    grpc_byte_buffer *req, struct dispatch_result *res)
{
	const struct rpc_method *m;
	struct identity id;
	struct rpc_ctx ctx;
	ProtobufCMessage *in = NULL, *out = NULL;
	char roles[64];
	enum kb_err e;

	memset(res, 0, sizeof(*res));
	kb_err_clear();
	if ((m = dispatch_find(path, path_len)) == NULL) {
		res->code = GRPC_STATUS_UNIMPLEMENTED;
		snprintf(res->message, sizeof(res->message), "unknown method "
		    "\"%.*s\"", (int)(path_len > 200 ? 200 : path_len), path);
		return;
	}
	memset(&ctx, 0, sizeof(ctx));
	ctx.b = b;
	ctx.id = &id;
	ctx.method = m->name;
	ctx.peer = peer;
	ctx.now_us = clock_now_us();
	if ((e = identity_from_pem(b->verifier, cert_pem, pem_len, ctx.now_us,
	    &id)) != KB_OK) {
		set_status(res, e);
		log_info("%s from %s refused: %s", m->name, peer, res->message);
		return;
	}
	if (!(m->roles & ROLE_BIT(id.role))) {
		roles_text(m->roles, roles, sizeof(roles));
		e = kb_errf(KB_ERR_PERMISSION_DENIED, "%s \"%s\" may not call "
		    "%s (allowed: %s)", identity_role_name(id.role), id.name,
		    m->name, roles);
		set_status(res, e);
		log_info("%s from %s refused: %s", m->name, peer, res->message);
		return;
	}
	if ((e = kb_wire_unpack(m->req, req, b->cfg->max_message_bytes, &in))
	    != KB_OK) {
		set_status(res, e);
		return;
	}
	e = m->fn(&ctx, in, &out);
	if (e == KB_OK) {
		if (out == NULL || (res->resp = kb_wire_pack(out)) == NULL)
			e = kb_errf(KB_ERR_INTERNAL, "%s produced no response",
			    m->name);
	}
	set_status(res, e);
	if (e != KB_OK && res->code == GRPC_STATUS_INTERNAL)
		log_error("%s by %s from %s failed: %s", m->name, id.name, peer,
		    res->message);
	else
		log_debug("%s by %s from %s: %s", m->name, id.name, peer,
		    kb_grpc_status_name(res->code));
	kb_wire_free(out);
	kb_wire_free(in);
}
