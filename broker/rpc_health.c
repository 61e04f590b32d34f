/* SPDX-License-Identifier: Apache-2.0 */
/* rpc_health.c: grpc.health.v1.Health/Check and WhoAmI. */
#include "rpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"
#include "health.h"
#include "keybroker.pb-c.h"

enum kb_err
rpc_health_check(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Grpc__Health__V1__HealthCheckRequest *in = (const void *)req;
	Grpc__Health__V1__HealthCheckResponse *out;
	enum kb_err e;

	/* The health protocol answers NOT_FOUND for a service it does not
	 * know; "" is the server as a whole. */
	if (in->service[0] != '\0'
	    && strcmp(in->service, "keybroker.v1.KeyBroker") != 0)
		return kb_errf(KB_ERR_NOT_FOUND,
		    "unknown service \"%.100s\" "
		    "(this server has \"\" and \"keybroker.v1.KeyBroker\")",
		    in->service);
	if ((out = malloc(sizeof(*out))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	grpc__health__v1__health_check_response__init(out);
	/* A probe that starts after this call, within a bound: a hung token
	 * answers NOT_SERVING, not silence (health.c logs the changes). */
	e = health_status(c->b->health, (int)c->b->cfg->health_timeout_ms);
	out->status = e == KB_OK
	    ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
	    : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
	kb_err_clear();
	*resp = &out->base;
	return KB_OK;
}

enum kb_err
rpc_whoami(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	Keybroker__V1__WhoAmIResponse *out;
	const struct identity *id = c->id;
	char buf[2 * STORE_ID_MAX + 2];
	size_t i;

	(void)req;
	if ((out = malloc(sizeof(*out))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	keybroker__v1__who_am_iresponse__init(out);
	out->role = (Keybroker__V1__Role)id->role;
	out->name = rpc_strdup(id->name);
	out->not_after_us = id->not_after_us;
	out->broker_version = rpc_strdup(KB_VERSION);
	out->token_label = rpc_strdup(c->b->token.label);
	out->wrap_algorithm = rpc_strdup(c->b->wrap_alg);
	if (id->nscopes > 0) {
		char **list = calloc(id->nscopes, sizeof(char *));
		if (list == NULL) {
			*resp = &out->base;
			return kb_errf(KB_ERR_NOMEM, "out of memory");
		}
		for (i = 0; i < id->nscopes; i++) {
			if (id->scopes[i].env[0] != '\0')
				snprintf(buf, sizeof(buf), "%s/%s",
				    id->scopes[i].tenant, id->scopes[i].env);
			else
				snprintf(buf, sizeof(buf), "%s",
				    id->scopes[i].tenant);
			list[i] = rpc_strdup(buf);
		}
		if (id->role == ROLE_SERVICE) {
			out->environments = list;
			out->n_environments = id->nscopes;
		} else {
			out->tenants = list;
			out->n_tenants = id->nscopes;
		}
	}
	*resp = &out->base;
	return KB_OK;
}
