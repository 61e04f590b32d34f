/* SPDX-License-Identifier: Apache-2.0 */
/* scope.c: a request's tenant and environment names, checked against the
 * caller's certificate scopes before any handler runs. */
#include "scope.h"

#include <stdio.h>
#include <string.h>

#include "names.h"

const char *
scope_kind_name(enum scope_kind k)
{
	switch (k) {
	case SCOPE_UNSET: return "unset";
	case SCOPE_NONE: return "none";
	case SCOPE_TENANT: return "tenant";
	case SCOPE_TENANT_OR_PLATFORM: return "tenant-or-platform";
	case SCOPE_PLATFORM: return "platform";
	case SCOPE_SERVICE_ENV: return "service-environment";
	case SCOPE_HANDLER: return "handler";
	}
	return "unknown";
}

/* The field at `offset` in message `m`. */
static const void *
field_at(const ProtobufCMessage *m, unsigned offset)
{
	return (const char *)m + offset;
}

/* A single (not repeated, not oneof) field `name` of `d` of type `type`. */
static const ProtobufCFieldDescriptor *
single_field(
    const ProtobufCMessageDescriptor *d, const char *name, ProtobufCType type)
{
	const ProtobufCFieldDescriptor *f;

	if (d == NULL || name == NULL
	    || (f = protobuf_c_message_descriptor_get_field_by_name(d, name))
	        == NULL
	    || f->type != type || f->label == PROTOBUF_C_LABEL_REPEATED
	    || (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0)
		return NULL;
	return f;
}

const char *
scope_field_str(const ProtobufCMessage *m, const char *name)
{
	const ProtobufCFieldDescriptor *f;
	const char *v;

	if (m == NULL
	    || (f = single_field(m->descriptor, name, PROTOBUF_C_TYPE_STRING))
	        == NULL)
		return NULL;
	v = *(const char *const *)field_at(m, f->offset);
	return v != NULL ? v : "";
}

/* Whether `name` is a single string field of `d`; KB_ERR_CONFIG if not. */
static enum kb_err
want_string(const char *method, const ProtobufCMessageDescriptor *d,
    const char *role, const char *name)
{
	const ProtobufCFieldDescriptor *f;

	if (name == NULL)
		return kb_errf(KB_ERR_CONFIG,
		    "method table: %s has a %s scope but names no %s field",
		    method, role, role);
	if (single_field(d, name, PROTOBUF_C_TYPE_STRING) != NULL)
		return KB_OK;
	f = protobuf_c_message_descriptor_get_field_by_name(d, name);
	return kb_errf(KB_ERR_CONFIG,
	    "method table: %s's %s field \"%s\" %s %s", method, role, name,
	    f == NULL ? "is not a field of" : "is not a single string field of",
	    d->name);
}

enum kb_err
scope_rule_check(const struct scope_rule *r, const char *method,
    const ProtobufCMessageDescriptor *req, unsigned roles)
{
	const ProtobufCMessageDescriptor *d = req;
	const ProtobufCFieldDescriptor *f;
	int names = r->tenant != NULL || r->env != NULL || r->env2 != NULL
	    || r->each != NULL;
	enum kb_err e;

	switch (r->kind) {
	case SCOPE_UNSET:
		return kb_errf(KB_ERR_CONFIG,
		    "method table: %s says nothing about tenant scope (give it "
		    "NO_TENANT, TENANT(...), ... in dispatch_methods)",
		    method);
	case SCOPE_NONE:
	case SCOPE_PLATFORM:
	case SCOPE_HANDLER:
		if (names)
			return kb_errf(KB_ERR_CONFIG,
			    "method table: %s has a %s scope, which reads no "
			    "fields, but names some",
			    method, scope_kind_name(r->kind));
		if (r->kind == SCOPE_PLATFORM
		    && (roles & ~ROLE_BIT(ROLE_ADMIN)) != 0)
			return kb_errf(KB_ERR_CONFIG,
			    "method table: %s is platform-only but allows "
			    "roles "
			    "other than admin",
			    method);
		return KB_OK;
	case SCOPE_SERVICE_ENV:
		if (roles != ROLE_BIT(ROLE_SERVICE))
			return kb_errf(KB_ERR_CONFIG,
			    "method table: %s has a service scope but allows "
			    "roles other than service",
			    method);
		if (r->env == NULL)
			return kb_errf(KB_ERR_CONFIG,
			    "method table: %s has a service scope but names no "
			    "environment field",
			    method);
		break;
	case SCOPE_TENANT:
	case SCOPE_TENANT_OR_PLATFORM:
		/* Services are bound to environments, never to a tenant. */
		if ((roles & ROLE_BIT(ROLE_SERVICE)) != 0)
			return kb_errf(KB_ERR_CONFIG,
			    "method table: %s has an admin's tenant scope but "
			    "allows services",
			    method);
		if (r->kind == SCOPE_TENANT_OR_PLATFORM && r->each != NULL)
			return kb_errf(KB_ERR_CONFIG,
			    "method table: %s: a tenant-or-platform scope "
			    "reads "
			    "one tenant field, not each element of \"%s\"",
			    method, r->each);
		break;
	}
	if (r->env2 != NULL && r->env == NULL)
		return kb_errf(KB_ERR_CONFIG,
		    "method table: %s names a second environment field but "
		    "no first",
		    method);
	if (r->each != NULL) {
		f = protobuf_c_message_descriptor_get_field_by_name(
		    req, r->each);
		if (f == NULL || f->type != PROTOBUF_C_TYPE_MESSAGE
		    || f->label != PROTOBUF_C_LABEL_REPEATED)
			return kb_errf(KB_ERR_CONFIG,
			    "method table: %s's \"%s\" is not a repeated "
			    "message field of %s",
			    method, r->each, req->name);
		d = f->descriptor;
	}
	if ((e = want_string(method, d, "tenant", r->tenant)) != KB_OK
	    || (r->env != NULL
	        && (e = want_string(method, d, "environment", r->env)) != KB_OK)
	    || (r->env2 != NULL
	        && (e = want_string(method, d, "environment", r->env2))
	            != KB_OK))
		return e;
	return KB_OK;
}

enum kb_err
scope_tenant_access(const struct identity *id, const char *tenant)
{
	if (identity_may_tenant(id, tenant))
		return KB_OK;
	return kb_errf(KB_ERR_PERMISSION_DENIED,
	    "%s \"%s\" is limited to other tenants and may not act on "
	    "tenant \"%s\" (that needs the SAN URI kb://tenant/%s or "
	    "kb://platform)",
	    identity_role_name(id->role), id->name, tenant, tenant);
}

static int
platform_admin(const struct identity *id)
{
	return id->role == ROLE_ADMIN && id->platform;
}

/* The rule's names in one message (the request, or one element of it). */
static enum kb_err
check_names(const struct scope_rule *r, const char *method,
    const struct identity *id, const ProtobufCMessage *m)
{
	const char *tenant = scope_field_str(m, r->tenant);
	const char *env = r->env != NULL ? scope_field_str(m, r->env) : NULL;
	const char *env2 = r->env2 != NULL ? scope_field_str(m, r->env2) : NULL;
	char what[80];
	enum kb_err e;

	if (r->kind == SCOPE_TENANT_OR_PLATFORM && tenant != NULL
	    && tenant[0] == '\0') {
		if (platform_admin(id))
			return KB_OK;
		return kb_errf(KB_ERR_PERMISSION_DENIED,
		    "%s \"%s\" is limited to some tenants; %s with an empty %s "
		    "covers every tenant and needs a platform-wide admin "
		    "(kb://platform): name one of its tenants in %s",
		    identity_role_name(id->role), id->name, method, r->tenant,
		    r->tenant);
	}
	if ((e = names_check_id("tenant id", tenant)) != KB_OK
	    || (env != NULL
	        && (e = names_check_id("environment name", env)) != KB_OK))
		return e;
	if (env2 != NULL) {
		snprintf(what, sizeof(what), "%s environment name", r->env2);
		if ((e = names_check_id(what, env2)) != KB_OK)
			return e;
	}
	/* Names are valid before a refusal echoes them. A service is refused
	 * before existence is looked at, so it cannot probe other tenants. */
	if (r->kind == SCOPE_SERVICE_ENV) {
		if (identity_may_env(id, tenant, env))
			return KB_OK;
		return kb_errf(KB_ERR_PERMISSION_DENIED,
		    "%s \"%s\" is not bound to environment %s/%s (its "
		    "certificate needs the SAN URI kb://env/%s/%s)",
		    identity_role_name(id->role), id->name, tenant, env, tenant,
		    env);
	}
	return scope_tenant_access(id, tenant);
}

enum kb_err
scope_request_check(const struct scope_rule *r, const char *method,
    const struct identity *id, const ProtobufCMessage *in)
{
	const ProtobufCFieldDescriptor *f;
	const ProtobufCMessage *const *v;
	size_t i, n;
	enum kb_err e;

	switch (r->kind) {
	case SCOPE_NONE:
	case SCOPE_HANDLER: return KB_OK;
	case SCOPE_PLATFORM:
		if (platform_admin(id))
			return KB_OK;
		return kb_errf(KB_ERR_PERMISSION_DENIED,
		    "%s \"%s\" is limited to some tenants; %s acts on the "
		    "whole platform and needs a platform-wide admin "
		    "(kb://platform)",
		    identity_role_name(id->role), id->name, method);
	case SCOPE_TENANT:
	case SCOPE_TENANT_OR_PLATFORM:
	case SCOPE_SERVICE_ENV: break;
	case SCOPE_UNSET:
		/* scope_rule_check refuses these at start-up; never allow. */
		return kb_errf(
		    KB_ERR_PERMISSION_DENIED, "%s has no scope rule", method);
	}
	if (r->each == NULL)
		return check_names(r, method, id, in);
	if ((f = protobuf_c_message_descriptor_get_field_by_name(
	         in->descriptor, r->each))
	    == NULL)
		return kb_errf(
		    KB_ERR_INTERNAL, "%s has no field \"%s\"", method, r->each);
	n = *(const size_t *)field_at(in, f->quantifier_offset);
	v = *(const ProtobufCMessage *const *const *)field_at(in, f->offset);
	for (i = 0; i < n; i++)
		if ((e = check_names(r, method, id, v[i])) != KB_OK)
			return kb_err_wrap(e, "%s[%zu]", r->each, i);
	return KB_OK;
}
