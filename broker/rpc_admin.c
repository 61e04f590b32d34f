/* SPDX-License-Identifier: Apache-2.0 */
/* rpc_admin.c: tenants and environments (admin role). */
#include "rpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dek.h"
#include "kb_time.h"
#include "keybroker.pb-c.h"
#include "log.h"
#include "names.h"

#define PAGE_DEFAULT 100
#define PAGE_MAX 1000

/* Page size and the "after" cursor from a request's paging fields. */
static enum kb_err
page_args(
    uint32_t page_size, const char *token, unsigned *limit, const char **after)
{
	if (page_size > PAGE_MAX)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "page_size %u is larger "
		    "than the maximum of %d",
		    page_size, PAGE_MAX);
	*limit = page_size == 0 ? PAGE_DEFAULT : page_size;
	*after = token;
	if (token[0] != '\0' && names_check_id("page_token", token) != KB_OK)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "page_token is not one "
		    "this broker issued; pass next_page_token from the "
		    "previous "
		    "page");
	return KB_OK;
}

enum kb_err
rpc_tenant_create(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__CreateTenantRequest *in = (const void *)req;
	struct store_tenant t;
	enum kb_err e;

	if ((e = names_check_display("display_name", in->display_name))
	    != KB_OK)
		return e;
	memset(&t, 0, sizeof(t));
	snprintf(t.id, sizeof(t.id), "%s", in->id);
	snprintf(t.display_name, sizeof(t.display_name), "%s",
	    in->display_name[0] != '\0' ? in->display_name : in->id);
	t.create_time_us = c->now_us;
	if ((e = store_tenant_create(c->b->store, &t)) != KB_OK)
		return e;
	log_info("tenant %s created by %s", t.id, c->id->name);
	if ((*resp = (ProtobufCMessage *)rpc_tenant_msg(&t)) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	return KB_OK;
}

enum kb_err
rpc_tenant_get(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__GetTenantRequest *in = (const void *)req;
	struct store_tenant t;
	enum kb_err e;

	if ((e = store_tenant_get(c->b->store, in->id, &t)) != KB_OK)
		return e;
	if ((*resp = (ProtobufCMessage *)rpc_tenant_msg(&t)) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	return KB_OK;
}

/* A tenant-limited admin's tenants (at most IDENTITY_MAX_SCOPES), sorted,
 * those after `after` that exist. */
static enum kb_err
scoped_tenants(struct rpc_ctx *c, const char *after, unsigned limit,
    struct store_tenant **out, size_t *n, int *more)
{
	struct store_tenant *v;
	const char *ids[IDENTITY_MAX_SCOPES];
	size_t i, j, k = 0;
	enum kb_err e;

	*out = NULL;
	*n = 0;
	*more = 0;
	for (i = 0; i < c->id->nscopes; i++) {
		const char *t = c->id->scopes[i].tenant;
		if (strcmp(t, after) <= 0)
			continue;
		for (j = k; j > 0 && strcmp(ids[j - 1], t) > 0; j--)
			ids[j] = ids[j - 1];
		ids[j] = t;
		k++;
	}
	if ((v = calloc(k + 1, sizeof(*v))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	for (i = 0; i < k; i++) {
		if (*n == limit) {
			*more = 1;
			break;
		}
		e = store_tenant_get(c->b->store, ids[i], &v[*n]);
		if (e == KB_ERR_NOT_FOUND) {
			kb_err_clear();
			continue;
		}
		if (e != KB_OK) {
			free(v);
			return e;
		}
		(*n)++;
	}
	*out = v;
	return KB_OK;
}

enum kb_err
rpc_tenant_list(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__ListTenantsRequest *in = (const void *)req;
	Keybroker__V1__ListTenantsResponse *out = NULL;
	struct store_tenant *v = NULL;
	const char *after;
	unsigned limit;
	size_t n = 0, i;
	int more = 0;
	enum kb_err e;

	if ((e = page_args(in->page_size, in->page_token, &limit, &after))
	    != KB_OK)
		return e;
	if (c->id->role == ROLE_ADMIN && c->id->nscopes > 0)
		e = scoped_tenants(c, after, limit, &v, &n, &more);
	else
		e = store_tenant_list(c->b->store, after, limit, &v, &n, &more);
	if (e != KB_OK)
		return e;
	if ((out = malloc(sizeof(*out))) == NULL) {
		free(v);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	keybroker__v1__list_tenants_response__init(out);
	*resp = &out->base;
	if (n > 0 && (out->tenants = calloc(n, sizeof(void *))) == NULL) {
		free(v);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	for (i = 0; i < n; i++) {
		if ((out->tenants[i] = rpc_tenant_msg(&v[i])) == NULL) {
			free(v);
			return kb_errf(KB_ERR_NOMEM, "out of memory");
		}
		out->n_tenants++;
	}
	if (more && n > 0)
		out->next_page_token = rpc_strdup(v[n - 1].id);
	free(v);
	return KB_OK;
}

enum kb_err
rpc_env_create(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__CreateEnvironmentRequest *in = (const void *)req;
	struct store_tenant t;
	struct store_env env;
	struct store_dek dek;
	struct store_key pk;
	struct dek_row row;
	enum kb_err e;

	/* Check the tenant first so a missing tenant costs no token work. */
	if ((e = store_tenant_get(c->b->store, in->tenant_id, &t)) != KB_OK)
		return e;
	memset(&env, 0, sizeof(env));
	snprintf(env.tenant_id, sizeof(env.tenant_id), "%s", in->tenant_id);
	snprintf(env.name, sizeof(env.name), "%s", in->name);
	env.mode = STORE_MODE_PLATFORM;
	env.state = STORE_ENV_ENABLED;
	env.create_time_us = env.update_time_us = c->now_us;
	if ((e = broker_new_uid(c->b, env.uid)) != KB_OK
	    || (e = store_platform_current(c->b->store, &pk)) != KB_OK)
		return e;
	dek_row_env(&row, &env, 1, STORE_MODE_PLATFORM);
	if ((e = dek_new(c->b->hsm, &row, pk.id, &dek)) != KB_OK)
		return kb_err_wrap(e, "making the data key");
	if ((e = store_env_create(c->b->store, &env, &dek)) != KB_OK) {
		struct store_env old;

		/* A name pending deletion stays taken (undelete must find it
		 * free); say so rather than just "exists". */
		if (e == KB_ERR_ALREADY_EXISTS
		    && store_env_get(c->b->store, env.tenant_id, env.name, &old)
		        == KB_OK
		    && old.state == STORE_ENV_PENDING_DELETION) {
			char when[40];

			kb_time_format(old.delete_final_us, when, sizeof(when));
			return kb_errf(KB_ERR_ALREADY_EXISTS,
			    "environment \"%s\" already exists in tenant "
			    "\"%s\": it is pending deletion (final at %s) and "
			    "its name stays taken, then too; 'kbctl envs "
			    "undelete %s %s' gives it back",
			    old.name, old.tenant_id, when, old.tenant_id,
			    old.name);
		}
		return e;
	}
	log_info("environment %s/%s created by %s", env.tenant_id, env.name,
	    c->id->name);
	if ((*resp = (ProtobufCMessage *)rpc_env_msg(&env)) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	return KB_OK;
}

enum kb_err
rpc_env_get(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__GetEnvironmentRequest *in = (const void *)req;
	struct store_env env;
	enum kb_err e;

	if ((e = store_env_get(c->b->store, in->tenant_id, in->name, &env))
	    != KB_OK)
		return e;
	if ((*resp = (ProtobufCMessage *)rpc_env_msg(&env)) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	return KB_OK;
}

enum kb_err
rpc_env_list(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__ListEnvironmentsRequest *in = (const void *)req;
	Keybroker__V1__ListEnvironmentsResponse *out;
	struct store_env *v = NULL;
	const char *after;
	unsigned limit;
	size_t n = 0, i;
	int more = 0;
	enum kb_err e;

	if ((e = page_args(in->page_size, in->page_token, &limit, &after))
	    != KB_OK)
		return e;
	if ((e = store_env_list(
	         c->b->store, in->tenant_id, after, limit, &v, &n, &more))
	    != KB_OK)
		return e;
	if ((out = malloc(sizeof(*out))) == NULL) {
		free(v);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	keybroker__v1__list_environments_response__init(out);
	*resp = &out->base;
	if (n > 0 && (out->environments = calloc(n, sizeof(void *))) == NULL) {
		free(v);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	for (i = 0; i < n; i++) {
		if ((out->environments[i] = rpc_env_msg(&v[i])) == NULL) {
			free(v);
			return kb_errf(KB_ERR_NOMEM, "out of memory");
		}
		out->n_environments++;
	}
	if (more && n > 0)
		out->next_page_token = rpc_strdup(v[n - 1].name);
	free(v);
	return KB_OK;
}
