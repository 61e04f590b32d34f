/* SPDX-License-Identifier: Apache-2.0 */
/* test-dispatch.c: the method table's scope rules. Every request field
 * that names a tenant is read by its method's rule, and each rule refuses
 * callers of other tenants and bad names before any handler runs. */
#include "harness.h"

#include "dispatch.h"
#include "keybroker.pb-c.h"
#include "scope.h"

/* Methods whose handler checks the scope per call, with the tenant fields
 * it reads itself (rpc_audit.c's make_filter). A new SCOPE_HANDLER entry
 * whose request names a tenant fails the walk until it is reviewed and
 * listed here. */
static const struct {
	const char *method;
	const char *fields; /* "a,b": tenant fields the handler checks */
} handler_checked[] = {
    {"ListEvents", "filter.tenant_id"},
    {"TailEvents", "filter.tenant_id"},
};

#define MAX_FOUND 16

/* A string field of a request: "tenant_id", "filter.tenant_id",
 * "rows[].tenant_id". */
struct found {
	char path[128];
	int tenant; /* names a tenant; else an environment */
};

/* Whether field `f` of message `d` names a tenant: a field called
 * "tenant..." or "..._tenant...", or the id of a tenant message. */
static int
tenantish(
    const ProtobufCMessageDescriptor *d, const ProtobufCFieldDescriptor *f)
{
	if (strstr(f->name, "tenant") != NULL)
		return 1;
	return strcmp(f->name, "id") == 0 && strstr(d->name, "Tenant") != NULL;
}

/* Whether `f` names an environment, in a message that names a tenant. */
static int
envish(const ProtobufCFieldDescriptor *f)
{
	static const char *const names[] = {
	    "environment", "env", "name", "source", "target"};
	size_t i;

	if (strstr(f->name, "environment") != NULL)
		return 1;
	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(f->name, names[i]) == 0)
			return 1;
	return 0;
}

/* Collect the tenant and environment fields of `d` (and of its message
 * fields, to `depth` levels) under `prefix`. */
static void
walk(const ProtobufCMessageDescriptor *d, const char *prefix, int depth,
    struct found *out, size_t *n)
{
	const ProtobufCFieldDescriptor *f;
	char sub[128];
	size_t i, j;
	int has_tenant = 0;

	for (i = 0; i < d->n_fields; i++)
		if (tenantish(d, &d->fields[i]))
			has_tenant = 1;
	for (i = 0; i < d->n_fields; i++) {
		f = &d->fields[i];
		if (f->type == PROTOBUF_C_TYPE_MESSAGE && depth > 0) {
			snprintf(sub, sizeof(sub), "%s%s%s.", prefix, f->name,
			    f->label == PROTOBUF_C_LABEL_REPEATED ? "[]" : "");
			walk(f->descriptor, sub, depth - 1, out, n);
			continue;
		}
		if (!tenantish(d, f) && !(has_tenant && envish(f)))
			continue;
		if (*n == MAX_FOUND)
			return;
		j = (*n)++;
		snprintf(out[j].path, sizeof(out[j].path), "%s%s%s", prefix,
		    f->name, f->label == PROTOBUF_C_LABEL_REPEATED ? "[]" : "");
		out[j].tenant = tenantish(d, f);
	}
}

/* The path under which rule `r` reads field `field`. */
static void
rule_path(const struct scope_rule *r, const char *field, char *buf, size_t len)
{
	if (r->each != NULL)
		snprintf(buf, len, "%s[].%s", r->each, field);
	else
		snprintf(buf, len, "%s", field);
}

static int
rule_reads(const struct scope_rule *r, const char *path)
{
	const char *fields[3] = {r->tenant, r->env, r->env2};
	char p[128];
	size_t i;

	for (i = 0; i < 3; i++) {
		if (fields[i] == NULL)
			continue;
		rule_path(r, fields[i], p, sizeof(p));
		if (strcmp(p, path) == 0)
			return 1;
	}
	return 0;
}

static int
rule_reads_fields(enum scope_kind k)
{
	return k == SCOPE_TENANT || k == SCOPE_TENANT_OR_PLATFORM
	    || k == SCOPE_SERVICE_ENV;
}

static void
test_table_sound(void)
{
	KBT_ASSERT_OK(dispatch_table_check(dispatch_methods));
}

/* The handler_checked entry of `method`, or NULL. */
static const char *
handler_fields(const char *method)
{
	size_t k, n = sizeof(handler_checked) / sizeof(handler_checked[0]);

	for (k = 0; k < n; k++)
		if (strcmp(handler_checked[k].method, method) == 0)
			return handler_checked[k].fields;
	return NULL;
}

/* What is wrong with field `f` of method `m`'s request, or NULL. */
static const char *
field_problem(const struct rpc_method *m, const struct found *f)
{
	const struct scope_rule *r = &m->scope;
	const char *listed = handler_fields(m->name);

	if (rule_reads_fields(r->kind))
		return rule_reads(r, f->path)
		    ? NULL
		    : "which its scope rule does not read";
	if (!f->tenant)
		return NULL;
	if (r->kind != SCOPE_HANDLER)
		return "but its table entry declares no tenant scope";
	if (listed == NULL || strstr(listed, f->path) == NULL)
		return "which its handler is not known to check: give it a "
		       "table rule, or review the handler and list it in "
		       "handler_checked";
	return NULL;
}

/* Every method whose request names a tenant is scope-checked on exactly
 * the fields that name it, and on the environments of that tenant. */
static void
test_every_tenant_field_scoped(void)
{
	const struct rpc_method *m;
	struct found found[MAX_FOUND];
	const char *why;
	size_t n, i, scoped = 0;

	for (m = dispatch_methods; m->path != NULL; m++) {
		n = 0;
		walk(m->req, "", 3, found, &n);
		for (i = 0; i < n; i++)
			if ((why = field_problem(m, &found[i])) != NULL)
				KBT_FAIL("%s (scope \"%s\"): its request names "
				         "a%s in %s, %s",
				    m->name, scope_kind_name(m->scope.kind),
				    found[i].tenant ? " tenant"
				                    : "n environment",
				    found[i].path, why);
		if (rule_reads_fields(m->scope.kind))
			scoped++;
	}
	/* 25 of the 34 methods read their tenant from the request. */
	KBT_ASSERT_INT(scoped, >=, 25);
}

/* The walk itself finds what it must: a request it would pass without a
 * rule is not proof of anything. */
static void
test_walk_finds(void)
{
	struct found found[MAX_FOUND];
	size_t n = 0;

	walk(&keybroker__v1__get_tenant_request__descriptor, "", 3, found, &n);
	KBT_ASSERT_INT(n, ==, 1);
	KBT_ASSERT_STR(found[0].path, "id");
	n = 0;
	walk(&keybroker__v1__get_job_request__descriptor, "", 3, found, &n);
	KBT_ASSERT_INT(n, ==, 0);
	n = 0;
	walk(&keybroker__v1__repair_data_keys_request__descriptor, "", 3, found,
	    &n);
	KBT_ASSERT_INT(n, ==, 2);
	KBT_ASSERT_STR(found[0].path, "rows[].tenant_id");
	KBT_ASSERT_STR(found[1].path, "rows[].environment");
	n = 0;
	walk(&keybroker__v1__tail_events_request__descriptor, "", 3, found, &n);
	KBT_ASSERT_INT(n, ==, 2);
	KBT_ASSERT_STR(found[0].path, "filter.tenant_id");
	n = 0;
	walk(&keybroker__v1__copy_environment_request__descriptor, "", 3, found,
	    &n);
	KBT_ASSERT_INT(n, ==, 3);
}

/* ---- the rules applied ---- */

static void
make_identity(struct identity *id, enum role role, const char *name,
    int platform, const char *tenant, const char *env)
{
	memset(id, 0, sizeof(*id));
	id->role = role;
	snprintf(id->name, sizeof(id->name), "%s", name);
	id->platform = platform;
	if (tenant != NULL) {
		snprintf(id->scopes[0].tenant, sizeof(id->scopes[0].tenant),
		    "%s", tenant);
		snprintf(id->scopes[0].env, sizeof(id->scopes[0].env), "%s",
		    env != NULL ? env : "");
		id->nscopes = 1;
	}
}

/* A request of `m`'s type naming `tenant`, `env` (and `env2`) in the
 * fields its rule reads (in one element of its list for EACH rules). */
struct request {
	ProtobufCMessage *msg;
	ProtobufCMessage *elem;
	ProtobufCMessage *elems[1];
};

static void
set_str(ProtobufCMessage *m, const char *field, const char *v)
{
	const ProtobufCFieldDescriptor *f;

	if (field == NULL)
		return;
	f = protobuf_c_message_descriptor_get_field_by_name(
	    m->descriptor, field);
	*(const char **)(void *)((char *)m + f->offset) = v;
}

static void
request_make(struct request *rq, const struct rpc_method *m, const char *tenant,
    const char *env, const char *env2)
{
	const struct scope_rule *r = &m->scope;
	const ProtobufCFieldDescriptor *f;
	ProtobufCMessage *target;

	memset(rq, 0, sizeof(*rq));
	rq->msg = calloc(1, m->req->sizeof_message);
	protobuf_c_message_init(m->req, rq->msg);
	target = rq->msg;
	if (r->each != NULL) {
		f = protobuf_c_message_descriptor_get_field_by_name(
		    m->req, r->each);
		rq->elem = calloc(1,
		    ((const ProtobufCMessageDescriptor *)f->descriptor)
		        ->sizeof_message);
		protobuf_c_message_init(f->descriptor, rq->elem);
		rq->elems[0] = rq->elem;
		*(size_t *)(void *)((char *)rq->msg + f->quantifier_offset) = 1;
		*(ProtobufCMessage ***)(void *)((char *)rq->msg + f->offset) =
		    rq->elems;
		target = rq->elem;
	}
	set_str(target, r->tenant, tenant);
	set_str(target, r->env, env);
	set_str(target, r->env2, env2);
}

static void
request_free(struct request *rq)
{
	free(rq->elem);
	free(rq->msg);
}

/* The caller the rule is about: an admin for admin scopes, a service for
 * service scopes, with `tenant`/`env` as its one scope (NULL: platform). */
static void
caller(struct identity *id, const struct rpc_method *m, const char *tenant,
    const char *env)
{
	if (m->scope.kind == SCOPE_SERVICE_ENV)
		make_identity(id, ROLE_SERVICE, "svc", 0, tenant, env);
	else
		make_identity(id, ROLE_ADMIN, tenant != NULL ? "ops" : "root",
		    tenant == NULL, tenant, NULL);
}

/* Run `m`'s rule on a request naming tenant/env/env2 as caller `id`. */
static enum kb_err
check(const struct rpc_method *m, const struct identity *id, const char *tenant,
    const char *env, const char *env2)
{
	struct request rq;
	enum kb_err e;

	request_make(&rq, m, tenant, env, env2);
	kb_err_clear();
	e = scope_request_check(&m->scope, m->name, id, rq.msg);
	request_free(&rq);
	return e;
}

/* For every method whose rule reads the request: its own tenant passes, an
 * admin limited to another tenant (a service bound to another
 * environment) is refused naming itself and the tenant, and bad names are
 * INVALID_ARGUMENT before any scope is looked at. */
static void
test_rules_refuse_other_tenants(void)
{
	const struct rpc_method *m;
	struct identity own, other, root;
	const char *msg;
	size_t n = 0;

	for (m = dispatch_methods; m->path != NULL; m++) {
		const struct scope_rule *r = &m->scope;
		int svc = r->kind == SCOPE_SERVICE_ENV;

		if (!rule_reads_fields(r->kind))
			continue;
		n++;
		caller(&own, m, "acme", "prod");
		caller(&other, m, "globex", "prod");
		if (check(m, &own, "acme", "prod", "dev") != KB_OK)
			KBT_FAIL("%s: refused its own tenant: %s", m->name,
			    kb_err_msg(KB_ERR_PERMISSION_DENIED));
		if (check(m, &other, "acme", "prod", "dev")
		    != KB_ERR_PERMISSION_DENIED)
			KBT_FAIL(
			    "%s: a caller of tenant globex may act on acme",
			    m->name);
		msg = kb_err_msg(KB_ERR_PERMISSION_DENIED);
		KBT_ASSERT_CONTAINS(msg, svc ? "\"svc\"" : "\"ops\"");
		KBT_ASSERT_CONTAINS(
		    msg, svc ? "kb://env/acme/prod" : "tenant \"acme\"");
		if (svc) {
			/* Bound to acme/prod, not to acme/dev. */
			KBT_ASSERT_ERR(check(m, &own, "acme", "dev", NULL),
			    KB_ERR_PERMISSION_DENIED);
		} else {
			caller(&root, m, NULL, NULL);
			KBT_ASSERT_OK(check(m, &root, "acme", "prod", "dev"));
			KBT_ASSERT_OK(check(m, &root, "globex", "prod", "dev"));
		}
		/* Bad names are refused as such, even for a caller the names
		 * are outside of: the refusal never echoes an unchecked one. */
		KBT_ASSERT_ERR(check(m, &other, "Acme", "prod", "dev"),
		    KB_ERR_INVALID_ARGUMENT);
		KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_INVALID_ARGUMENT),
		    "tenant id \"Acme\" contains 'A'");
		if (r->kind != SCOPE_TENANT_OR_PLATFORM) {
			KBT_ASSERT_ERR(check(m, &own, "", "prod", "dev"),
			    KB_ERR_INVALID_ARGUMENT);
			KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_INVALID_ARGUMENT),
			    "tenant id is empty");
		}
		if (r->env != NULL) {
			KBT_ASSERT_ERR(check(m, &other, "acme", "pr od", "dev"),
			    KB_ERR_INVALID_ARGUMENT);
			KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_INVALID_ARGUMENT),
			    "environment name \"pr od\"");
			KBT_ASSERT_ERR(check(m, &own, "acme", "", "dev"),
			    KB_ERR_INVALID_ARGUMENT);
		}
		if (r->env2 != NULL) {
			KBT_ASSERT_ERR(check(m, &own, "acme", "prod", "-dev"),
			    KB_ERR_INVALID_ARGUMENT);
			KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_INVALID_ARGUMENT),
			    "source environment name");
		}
	}
	KBT_ASSERT_INT(n, >=, 25);
}

static const struct rpc_method *
method(const char *name)
{
	const struct rpc_method *m;

	for (m = dispatch_methods; m->path != NULL; m++)
		if (strcmp(m->name, name) == 0)
			return m;
	return NULL;
}

/* kb://platform only; with an empty tenant, VerifyDataKeys covers every
 * tenant and needs kb://platform too. */
static void
test_platform(void)
{
	const struct rpc_method *rot = method("RotatePlatformKey");
	const struct rpc_method *ver = method("VerifyDataKeys");
	struct identity ops, root;

	KBT_ASSERT(rot != NULL && rot->scope.kind == SCOPE_PLATFORM);
	KBT_ASSERT(ver != NULL && ver->scope.kind == SCOPE_TENANT_OR_PLATFORM);
	make_identity(&ops, ROLE_ADMIN, "ops", 0, "acme", NULL);
	make_identity(&root, ROLE_ADMIN, "root", 1, NULL, NULL);
	KBT_ASSERT_OK(check(rot, &root, NULL, NULL, NULL));
	KBT_ASSERT_ERR(
	    check(rot, &ops, NULL, NULL, NULL), KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_PERMISSION_DENIED),
	    "RotatePlatformKey acts on the whole platform");
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_PERMISSION_DENIED), "kb://platform");
	KBT_ASSERT_OK(check(ver, &root, "", NULL, NULL));
	KBT_ASSERT_ERR(
	    check(ver, &ops, "", NULL, NULL), KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_PERMISSION_DENIED),
	    "empty tenant_id covers every tenant");
	KBT_ASSERT_OK(check(ver, &ops, "acme", NULL, NULL));
}

/* One foreign row among a list refuses the whole call. */
static void
test_each_row(void)
{
	const struct rpc_method *m = method("RepairDataKeys");
	Keybroker__V1__RepairDataKeysRequest req =
	    KEYBROKER__V1__REPAIR_DATA_KEYS_REQUEST__INIT;
	Keybroker__V1__DataKeyRef a = KEYBROKER__V1__DATA_KEY_REF__INIT;
	Keybroker__V1__DataKeyRef b = KEYBROKER__V1__DATA_KEY_REF__INIT;
	Keybroker__V1__DataKeyRef *rows[2] = {&a, &b};
	struct identity ops;

	KBT_ASSERT(m != NULL && m->scope.each != NULL);
	make_identity(&ops, ROLE_ADMIN, "ops", 0, "acme", NULL);
	a.tenant_id = "acme";
	a.environment = "prod";
	b.tenant_id = "acme";
	b.environment = "dev";
	req.rows = rows;
	req.n_rows = 2;
	KBT_ASSERT_OK(scope_request_check(&m->scope, m->name, &ops, &req.base));
	b.tenant_id = "globex";
	KBT_ASSERT_ERR(scope_request_check(&m->scope, m->name, &ops, &req.base),
	    KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_PERMISSION_DENIED), "rows[1]: admin \"ops\"");
	b.tenant_id = "acme";
	b.environment = "DEV";
	KBT_ASSERT_ERR(scope_request_check(&m->scope, m->name, &ops, &req.base),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_INVALID_ARGUMENT), "rows[1]: environment name");
	req.n_rows = 0;
	KBT_ASSERT_OK(scope_request_check(&m->scope, m->name, &ops, &req.base));
}

/* An admin's tenant scope is never read from a service's kb://env URI, and
 * a service scope is never met by an admin. */
static void
test_roles_do_not_cross(void)
{
	const struct rpc_method *get = method("GetEnvironment");
	const struct rpc_method *dek = method("GetDataKey");
	struct identity svc, root;

	KBT_ASSERT(get != NULL && dek != NULL);
	make_identity(&svc, ROLE_SERVICE, "svc", 0, "acme", "prod");
	make_identity(&root, ROLE_ADMIN, "root", 1, NULL, NULL);
	KBT_ASSERT_ERR(
	    check(dek, &root, "acme", "prod", NULL), KB_ERR_PERMISSION_DENIED);
	/* dispatch_call's role check refuses the service first, and the
	 * table check a table that would let it reach this rule; the rule
	 * refuses it anyway. */
	KBT_ASSERT_ERR(
	    check(get, &svc, "acme", "prod", NULL), KB_ERR_PERMISSION_DENIED);
}

/* ---- the start-up check of the table ---- */

static enum kb_err
stub(struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	(void)c;
	(void)req;
	(void)resp;
	return KB_ERR_INTERNAL;
}

#define ADMIN_ONLY ROLE_BIT(ROLE_ADMIN)

/* dispatch_table_check of a table with one method "M" of request type
 * `req` (listed twice with `twice`). */
static enum kb_err
table_of(const ProtobufCMessageDescriptor *req, unsigned roles,
    struct scope_rule rule, int twice)
{
	struct rpc_method t[3];
	int i;

	memset(t, 0, sizeof(t));
	for (i = 0; i < (twice ? 2 : 1); i++) {
		t[i].path = "/t/M";
		t[i].name = "M";
		t[i].roles = roles;
		t[i].req = req;
		t[i].fn = stub;
		t[i].scope = rule;
	}
	return dispatch_table_check(t);
}

#define RULE(...) ((struct scope_rule){__VA_ARGS__})
#define EXPECT_BAD(e, want)                                                    \
	do {                                                                   \
		KBT_ASSERT_ERR((e), KB_ERR_CONFIG);                            \
		KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG), (want));        \
	} while (0)

static void
test_table_check_refuses(void)
{
	const ProtobufCMessageDescriptor *tenant =
	    &keybroker__v1__get_tenant_request__descriptor;
	const ProtobufCMessageDescriptor *env =
	    &keybroker__v1__get_environment_request__descriptor;
	const ProtobufCMessageDescriptor *repair =
	    &keybroker__v1__repair_data_keys_request__descriptor;

	KBT_ASSERT_OK(
	    table_of(tenant, ADMIN_ONLY, RULE(SCOPE_TENANT, "id"), 0));
	KBT_ASSERT_OK(table_of(repair, ADMIN_ONLY,
	    RULE(SCOPE_TENANT, "tenant_id", "environment", NULL, "rows"), 0));
	KBT_ASSERT_OK(table_of(
	    &keybroker__v1__copy_environment_request__descriptor, ADMIN_ONLY,
	    RULE(SCOPE_TENANT, "tenant_id", "target", "source"), 0));
	EXPECT_BAD(
	    table_of(tenant, ADMIN_ONLY, RULE(SCOPE_TENANT, "tenant_id"), 0),
	    "M's tenant field \"tenant_id\" is not a field of "
	    "keybroker.v1.GetTenantRequest");
	EXPECT_BAD(
	    table_of(&keybroker__v1__list_environments_request__descriptor,
	        ADMIN_ONLY, RULE(SCOPE_TENANT, "page_size"), 0),
	    "\"page_size\" is not a single string field");
	EXPECT_BAD(table_of(env, ADMIN_ONLY,
	               RULE(SCOPE_TENANT, "tenant_id", "environment"), 0),
	    "environment field \"environment\" is not a field");
	EXPECT_BAD(table_of(tenant, ADMIN_ONLY, RULE(SCOPE_UNSET), 0),
	    "says nothing about tenant scope");
	EXPECT_BAD(table_of(tenant, ADMIN_ONLY, RULE(SCOPE_TENANT), 0),
	    "names no tenant field");
	EXPECT_BAD(table_of(tenant, ADMIN_ONLY, RULE(SCOPE_NONE, "id"), 0),
	    "reads no fields, but names some");
	EXPECT_BAD(table_of(&keybroker__v1__get_data_key_request__descriptor,
	               ADMIN_ONLY,
	               RULE(SCOPE_SERVICE_ENV, "tenant_id", "environment"), 0),
	    "service scope but allows roles other than service");
	EXPECT_BAD(table_of(env, ROLE_BIT(ROLE_SERVICE),
	               RULE(SCOPE_TENANT, "tenant_id", "name"), 0),
	    "tenant scope but allows services");
	EXPECT_BAD(
	    table_of(&keybroker__v1__list_events_request__descriptor,
	        ADMIN_ONLY,
	        RULE(SCOPE_TENANT, "tenant_id", NULL, NULL, "filter"), 0),
	    "\"filter\" is not a repeated message field");
	EXPECT_BAD(
	    table_of(repair, ADMIN_ONLY,
	        RULE(SCOPE_TENANT, "tenant_id", "name", NULL, "rows"), 0),
	    "\"name\" is not a field of keybroker.v1.DataKeyRef");
	EXPECT_BAD(
	    table_of(tenant, ADMIN_ONLY, RULE(SCOPE_TENANT, "id"), 1), "twice");
}

static const struct kbt_case cases[] = {
    {"/dispatch/table-sound", test_table_sound},
    {"/dispatch/every-tenant-field-scoped", test_every_tenant_field_scoped},
    {"/dispatch/walk-finds", test_walk_finds},
    {"/dispatch/rules-refuse-other-tenants", test_rules_refuse_other_tenants},
    {"/dispatch/platform", test_platform},
    {"/dispatch/each-row", test_each_row},
    {"/dispatch/roles-do-not-cross", test_roles_do_not_cross},
    {"/dispatch/table-check-refuses", test_table_check_refuses}, {NULL, NULL}};

int
main(int argc, char **argv)
{
	return kbt_run(cases, argc, argv);
}
