/* SPDX-License-Identifier: Apache-2.0 */
/* scope.h: the tenant and environment a request names, and whether the
 * caller's certificate reaches them.
 *
 * Each entry of the method table (dispatch.c) carries a scope rule: which
 * kind of scope applies and which request fields name the tenant and the
 * environment. dispatch_call applies the rule before any handler runs, the
 * way it checks the role: names first (names_check_id, INVALID_ARGUMENT),
 * then the scope (PERMISSION_DENIED). Fields are found by name through
 * protobuf-c's descriptors; scope_rule_check refuses, at start-up, a rule
 * naming a field the request does not have or one that is not a string. */
#ifndef KB_SCOPE_H
#define KB_SCOPE_H

#include <protobuf-c/protobuf-c.h>

#include "identity.h"
#include "kb_err.h"

enum scope_kind {
	/* Zero, so an entry that says nothing is refused by scope_rule_check
	 * instead of being read as "no scope". */
	SCOPE_UNSET = 0,
	/* The request names no tenant (health, WhoAmI, the audit key). */
	SCOPE_NONE,
	/* An admin with kb://platform, or with kb://tenant/<tenant>. */
	SCOPE_TENANT,
	/* As SCOPE_TENANT when the tenant field is set; when it is empty the
	 * call covers every tenant and needs kb://platform. */
	SCOPE_TENANT_OR_PLATFORM,
	/* The broker's own keys: admins with kb://platform only. */
	SCOPE_PLATFORM,
	/* A service whose certificate names kb://env/<tenant>/<env>. */
	SCOPE_SERVICE_ENV,
	/* The handler decides per call, because what the call may see depends
	 * on more than the request's names (a listing filtered to the
	 * caller's tenants, an object whose tenant is stored with it). The
	 * table entry says why. */
	SCOPE_HANDLER,
};

struct scope_rule {
	enum scope_kind kind;
	/* The string field naming the tenant. */
	const char *tenant;
	/* A string field naming an environment of that tenant, and a second
	 * one (a copy's source); NULL when the request names none. */
	const char *env;
	const char *env2;
	/* NULL, or a repeated message field: then tenant, env and env2 are
	 * fields of each element, and every element is checked. */
	const char *each;
};

/* Whether `r` fits request messages of type `req` and a method allowing
 * `roles` (ROLE_BIT mask): every named field exists, is a single string
 * (`each` a repeated message), the kind needs the fields it names, and a
 * service scope is not given to admins or an admin scope to services.
 * KB_ERR_CONFIG naming `method` and the field otherwise. */
enum kb_err scope_rule_check(const struct scope_rule *r, const char *method,
    const ProtobufCMessageDescriptor *req, unsigned roles);

/* Apply `r` to request `in` of `method` from caller `id`: each named
 * tenant id and environment name must be valid (KB_ERR_INVALID_ARGUMENT,
 * saying the rule) and within the caller's scope (KB_ERR_PERMISSION_DENIED
 * naming the caller, the tenant and the certificate's SAN URI it would
 * need). The rule must have passed scope_rule_check. */
enum kb_err scope_request_check(const struct scope_rule *r, const char *method,
    const struct identity *id, const ProtobufCMessage *in);

/* KB_OK when `id` may act on `tenant` (an admin with kb://platform or
 * kb://tenant/<tenant>, an auditor); KB_ERR_PERMISSION_DENIED saying so
 * otherwise. For handlers that check per call (SCOPE_HANDLER). */
enum kb_err scope_tenant_access(const struct identity *id, const char *tenant);

/* The value of the single string field `name` of `m`: "" when unset, NULL
 * when `m` is NULL or has no such string field. Points into `m`. */
const char *scope_field_str(const ProtobufCMessage *m, const char *name);

/* "tenant", "platform", ... for messages and tests. */
const char *scope_kind_name(enum scope_kind k);

#endif /* KB_SCOPE_H */
