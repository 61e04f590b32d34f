/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl_cmds.c: kbctl's handlers: health, whoami, tenants, envs, datakey. */
#include "kbctl.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "grpc/health/v1/health.pb-c.h"
#include "kb_secmem.h"
#include "kb_time.h"
#include "kbctl_fmt.h"
#include "keybroker.pb-c.h"

/* ---- output helpers ---- */

/* Set when building a JSON document ran out of memory. */
static int json_broken;

/* "kbctl: NOT_FOUND: tenant "x" does not exist" on stderr. */
static int
fail_status(const struct kb_status *st)
{
	char msg[sizeof(st->message)];

	kbctl_sanitize(st->message, msg, sizeof(msg));
	fprintf(stderr, "kbctl: %s: %s\n", kb_grpc_status_name(st->code), msg);
	return KBCTL_EXIT_FAIL;
}

static int
call(struct kbctl *k, const char *method, const ProtobufCMessage *req,
    const ProtobufCMessageDescriptor *d, ProtobufCMessage **resp)
{
	struct kb_status st;

	if (kb_client_call(k->client, method, req, d, resp, &st) != KB_OK)
		return fail_status(&st);
	return KBCTL_EXIT_OK;
}

/* A JSON string; text that is not UTF-8 gets '?' for its high bytes
 * rather than breaking the document. */
static json_t *
jstr(const char *s)
{
	json_t *j;
	char *c;
	size_t i;

	if (s == NULL)
		s = "";
	if ((j = json_string(s)) != NULL)
		return j;
	if ((c = strdup(s)) == NULL)
		return NULL;
	for (i = 0; c[i] != '\0'; i++)
		if ((unsigned char)c[i] >= 0x80)
			c[i] = '?';
	j = json_string(c);
	free(c);
	return j;
}

static void
jset(json_t *o, const char *key, json_t *v)
{
	if (o == NULL || v == NULL || json_object_set_new(o, key, v) != 0)
		json_broken = 1;
}

/* "create_time": RFC 3339 (null when 0), "create_time_us": number. */
static void
jset_time(json_t *o, const char *name, int64_t us)
{
	char key[64], t[40];

	snprintf(key, sizeof(key), "%s_us", name);
	jset(o, name,
	    us != 0 ? jstr(kb_time_format(us, t, sizeof(t))) : json_null());
	jset(o, key, json_integer(us));
}

static json_t *
jstr_array(char **v, size_t n)
{
	json_t *a = json_array();
	size_t i;

	for (i = 0; i < n && a != NULL; i++)
		if (json_array_append_new(a, jstr(v[i])) != 0)
			json_broken = 1;
	return a;
}

/* Print one JSON document on stdout and release it. */
static int
json_print(json_t *j)
{
	int r = KBCTL_EXIT_OK;

	if (j == NULL || json_broken
	    || json_dumpf(j, stdout, JSON_INDENT(2)) != 0
	    || putchar('\n') == EOF) {
		fprintf(stderr, "kbctl: cannot write the JSON output\n");
		r = KBCTL_EXIT_FAIL;
	}
	json_decref(j);
	return r;
}

/* "key: value" for people, control characters replaced. */
static void
kv(const char *key, const char *val)
{
	char *s;
	size_t n = strlen(val) + 1;

	if ((s = malloc(n)) == NULL) {
		printf("%s: ?\n", key);
		return;
	}
	kbctl_sanitize(val, s, n);
	printf("%s: %s\n", key, s);
	free(s);
}

static void
kv_u(const char *key, unsigned long long v)
{
	printf("%s: %llu\n", key, v);
}

static const char *
or_dash(const char *s)
{
	return (s == NULL || *s == '\0') ? "-" : s;
}

/* Words joined by ", " into buf ("-" when none). */
static const char *
join(char **v, size_t n, char *buf, size_t len)
{
	size_t i, o = 0;

	snprintf(buf, len, "-");
	for (i = 0; i < n && o < len; i++)
		o += (size_t)snprintf(
		    buf + o, len - o, "%s%s", i ? ", " : "", v[i]);
	return buf;
}

static int
table_done(struct kbctl_table *t)
{
	int r = KBCTL_EXIT_OK;

	if (t == NULL || kbctl_table_print(t, stdout) != 0) {
		fprintf(stderr, "kbctl: cannot print the table\n");
		r = KBCTL_EXIT_FAIL;
	}
	kbctl_table_free(t);
	return r;
}

/* ---- tenants and environments as text and JSON ---- */

static const char *const tenant_headers[] = {
    "ID", "DISPLAY NAME", "ENVIRONMENTS", "CREATED"};

static int
tenant_row(struct kbctl_table *t, const ProtobufCMessage *m)
{
	const Keybroker__V1__Tenant *x = (const Keybroker__V1__Tenant *)m;
	char n[16], c[40];
	const char *cells[4];

	snprintf(n, sizeof(n), "%u", x->environment_count);
	cells[0] = x->id;
	cells[1] = or_dash(x->display_name);
	cells[2] = n;
	cells[3] = kbctl_time_sec(x->create_time_us, c, sizeof(c));
	return kbctl_table_add(t, cells);
}

static json_t *
tenant_json(const ProtobufCMessage *m)
{
	const Keybroker__V1__Tenant *x = (const Keybroker__V1__Tenant *)m;
	json_t *o = json_object();

	jset(o, "id", jstr(x->id));
	jset(o, "display_name", jstr(x->display_name));
	jset(o, "environment_count", json_integer(x->environment_count));
	jset_time(o, "create_time", x->create_time_us);
	return o;
}

static void
tenant_show(const Keybroker__V1__Tenant *x)
{
	char t[40];

	kv("id", x->id);
	kv("display_name", or_dash(x->display_name));
	kv_u("environment_count", x->environment_count);
	kv("create_time", kbctl_time_sec(x->create_time_us, t, sizeof(t)));
}

static const char *const env_headers[] = {
    "NAME", "MODE", "STATE", "KEY ID", "DEK VERSION", "WRAP", "CREATED"};

static int
env_row(struct kbctl_table *t, const ProtobufCMessage *m)
{
	const Keybroker__V1__Environment *x =
	    (const Keybroker__V1__Environment *)m;
	char mode[32], state[32], ver[16], c[40];
	const char *cells[7];

	snprintf(ver, sizeof(ver), "%u", x->dek_version);
	cells[0] = x->name;
	cells[1] = kbctl_enum_word(&keybroker__v1__encryption_mode__descriptor,
	    x->mode, mode, sizeof(mode));
	cells[2] =
	    kbctl_enum_word(&keybroker__v1__environment_state__descriptor,
	        x->state, state, sizeof(state));
	cells[3] = or_dash(x->key_id);
	cells[4] = ver;
	cells[5] = or_dash(x->wrap_algorithm);
	cells[6] = kbctl_time_sec(x->create_time_us, c, sizeof(c));
	return kbctl_table_add(t, cells);
}

static json_t *
env_json(const ProtobufCMessage *m)
{
	const Keybroker__V1__Environment *x =
	    (const Keybroker__V1__Environment *)m;
	json_t *o = json_object();
	char w[32];

	jset(o, "tenant_id", jstr(x->tenant_id));
	jset(o, "name", jstr(x->name));
	jset(o, "mode",
	    jstr(kbctl_enum_word(&keybroker__v1__encryption_mode__descriptor,
	        x->mode, w, sizeof(w))));
	jset(o, "state",
	    jstr(kbctl_enum_word(&keybroker__v1__environment_state__descriptor,
	        x->state, w, sizeof(w))));
	jset(o, "key_id", jstr(x->key_id));
	jset(o, "dek_version", json_integer(x->dek_version));
	jset(o, "wrap_algorithm", jstr(x->wrap_algorithm));
	jset_time(o, "create_time", x->create_time_us);
	jset_time(o, "update_time", x->update_time_us);
	return o;
}

static void
env_show(const Keybroker__V1__Environment *x)
{
	char w[32], t[40];

	kv("tenant_id", x->tenant_id);
	kv("name", x->name);
	kv("mode",
	    kbctl_enum_word(&keybroker__v1__encryption_mode__descriptor,
	        x->mode, w, sizeof(w)));
	kv("state",
	    kbctl_enum_word(&keybroker__v1__environment_state__descriptor,
	        x->state, w, sizeof(w)));
	kv("key_id", or_dash(x->key_id));
	kv_u("dek_version", x->dek_version);
	kv("wrap_algorithm", or_dash(x->wrap_algorithm));
	kv("create_time", kbctl_time_sec(x->create_time_us, t, sizeof(t)));
	kv("update_time", kbctl_time_sec(x->update_time_us, t, sizeof(t)));
}

/* ---- listing with pages, for any List* call ---- */

/* A List* call described by field names: the request has page_size and
 * page_token, the response a repeated `items` and next_page_token. */
struct lister {
	const char *method;
	ProtobufCMessage *req;
	const ProtobufCMessageDescriptor *resp_desc;
	const char *items; /* "tenants": response field and JSON key */
	const char *const *headers;
	size_t ncols;
	int (*row)(struct kbctl_table *t, const ProtobufCMessage *item);
	json_t *(*json)(const ProtobufCMessage *item);
};

static void *
field_ptr(const ProtobufCMessage *m, const char *name, size_t *count)
{
	const ProtobufCFieldDescriptor *f =
	    protobuf_c_message_descriptor_get_field_by_name(
	        m->descriptor, name);

	if (f == NULL)
		return NULL;
	if (count != NULL)
		*count = *(const size_t *)(const void *)((const char *)m
		    + f->quantifier_offset);
	return (char *)m + f->offset;
}

static int
list_run(struct kbctl *k, const struct kbctl_args *a, const struct lister *l)
{
	const char *ps = kbctl_flag(a, "--page-size");
	const char *tok = kbctl_flag(a, "--page-token");
	int all = kbctl_flag(a, "--all") != NULL;
	uint32_t *req_size = field_ptr(l->req, "page_size", NULL);
	char **req_token = field_ptr(l->req, "page_token", NULL);
	struct kbctl_table *t = NULL;
	json_t *arr = NULL;
	ProtobufCMessage *resp = NULL;
	char *next = NULL;
	int rc = KBCTL_EXIT_FAIL;

	if (ps != NULL) {
		char *end;
		unsigned long v = strtoul(ps, &end, 10);

		if (end == ps || *end != '\0' || v < 1 || v > 1000
		    || ps[0] == '-')
			return kbctl_usage_error(a,
			    "bad --page-size \"%s\": a "
			    "number from 1 to 1000",
			    ps);
		*req_size = (uint32_t)v;
	}
	if (tok != NULL && (next = strdup(tok)) == NULL)
		goto oom;
	if (k->json ? (arr = json_array()) == NULL
	            : (t = kbctl_table_new(l->ncols, l->headers)) == NULL)
		goto oom;
	for (;;) {
		ProtobufCMessage **items;
		const char *nt;
		size_t n, i;

		*req_token = next != NULL ? next : (char *)"";
		if ((rc = call(k, l->method, l->req, l->resp_desc, &resp))
		    != KBCTL_EXIT_OK)
			goto out;
		rc = KBCTL_EXIT_FAIL;
		items = *(ProtobufCMessage ***)field_ptr(resp, l->items, &n);
		for (i = 0; i < n; i++) {
			if (arr != NULL
			        ? json_array_append_new(arr, l->json(items[i]))
			            != 0
			        : l->row(t, items[i]) != 0)
				goto oom;
		}
		nt = *(char **)field_ptr(resp, "next_page_token", NULL);
		if (all && *nt != '\0' && next != NULL
		    && strcmp(nt, next) == 0) {
			fprintf(stderr,
			    "kbctl: the broker returned page token "
			    "\"%s\" twice; stopping\n",
			    nt);
			goto out;
		}
		free(next);
		if ((next = strdup(nt)) == NULL)
			goto oom;
		kb_wire_free(resp);
		resp = NULL;
		if (!all || *next == '\0')
			break;
	}
	if (arr != NULL) {
		json_t *o = json_object();

		jset(o, l->items, arr);
		arr = NULL;
		jset(o, "next_page_token", jstr(next));
		rc = json_print(o);
		goto out;
	}
	rc = table_done(t);
	t = NULL;
	if (rc == KBCTL_EXIT_OK && *next != '\0')
		fprintf(stderr,
		    "kbctl: more %s follow: add --all to list them "
		    "all, or --page-token %s for the next page\n",
		    l->items, next);
	goto out;
oom:
	fprintf(stderr, "kbctl: out of memory\n");
	rc = KBCTL_EXIT_FAIL;
out:
	*req_token = (char *)"";
	kb_wire_free(resp);
	free(next);
	json_decref(arr);
	kbctl_table_free(t);
	return rc;
}

/* ---- handlers ---- */

int
kbctl_cmd_health(struct kbctl *k, const struct kbctl_args *a)
{
	struct kb_status st;
	const ProtobufCEnumValue *v;
	char w[32];
	int status;
	const char *name;

	(void)a;
	if (kb_client_health(k->client, &status, &st) != KB_OK)
		return fail_status(&st);
	/* Upper case as the protocol spells it: SERVING, NOT_SERVING. */
	v = protobuf_c_enum_descriptor_get_value(
	    &grpc__health__v1__health_check_response__serving_status__descriptor,
	    status);
	name = v != NULL ? v->name : "UNKNOWN";
	snprintf(w, sizeof(w), "%s", name);
	if (k->json) {
		json_t *o = json_object();

		jset(o, "status", jstr(w));
		if (json_print(o) != KBCTL_EXIT_OK)
			return KBCTL_EXIT_FAIL;
	} else {
		printf("%s\n", w);
	}
	return status
	        == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
	    ? KBCTL_EXIT_OK
	    : KBCTL_EXIT_FAIL;
}

int
kbctl_cmd_whoami(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__WhoAmIRequest req = KEYBROKER__V1__WHO_AM_IREQUEST__INIT;
	Keybroker__V1__WhoAmIResponse *x;
	ProtobufCMessage *m = NULL;
	char role[32], t[40], list[1024];
	int rc;

	(void)a;
	if ((rc = call(k, KB_METHOD_WHOAMI, &req.base,
	         &keybroker__v1__who_am_iresponse__descriptor, &m))
	    != KBCTL_EXIT_OK)
		return rc;
	x = (Keybroker__V1__WhoAmIResponse *)m;
	kbctl_enum_word(
	    &keybroker__v1__role__descriptor, x->role, role, sizeof(role));
	if (k->json) {
		json_t *o = json_object();

		jset(o, "role", jstr(role));
		jset(o, "name", jstr(x->name));
		jset(o, "tenants", jstr_array(x->tenants, x->n_tenants));
		jset(o, "environments",
		    jstr_array(x->environments, x->n_environments));
		jset_time(o, "not_after", x->not_after_us);
		jset(o, "broker_version", jstr(x->broker_version));
		jset(o, "token_label", jstr(x->token_label));
		jset(o, "wrap_algorithm", jstr(x->wrap_algorithm));
		rc = json_print(o);
	} else {
		int64_t left = x->not_after_us - kb_time_now_us();

		kv("role", role);
		kv("name", x->name);
		if (x->role == KEYBROKER__V1__ROLE__ROLE_ADMIN
		    && x->n_tenants == 0)
			kv("tenants", "all");
		else
			kv("tenants",
			    join(x->tenants, x->n_tenants, list, sizeof(list)));
		kv("environments",
		    join(x->environments, x->n_environments, list,
		        sizeof(list)));
		kbctl_time_sec(x->not_after_us, t, sizeof(t));
		if (x->not_after_us == 0)
			kv("certificate_expires", "-");
		else if (left <= 0)
			printf("certificate_expires: %s (expired)\n", t);
		else
			printf("certificate_expires: %s (in %lld days)\n", t,
			    (long long)(left / (86400LL * 1000000)));
		kv("broker_version", or_dash(x->broker_version));
		kv("token_label", or_dash(x->token_label));
		kv("wrap_algorithm", or_dash(x->wrap_algorithm));
	}
	kb_wire_free(m);
	return rc;
}

int
kbctl_cmd_tenants_create(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__CreateTenantRequest req =
	    KEYBROKER__V1__CREATE_TENANT_REQUEST__INIT;
	const char *name = kbctl_flag(a, "--name");
	ProtobufCMessage *m = NULL;
	int rc;

	req.id = (char *)a->argv[0];
	req.display_name = (char *)(name != NULL ? name : "");
	if ((rc = call(k, KB_METHOD_CREATE_TENANT, &req.base,
	         &keybroker__v1__tenant__descriptor, &m))
	    != KBCTL_EXIT_OK)
		return rc;
	if (k->json)
		rc = json_print(tenant_json(m));
	else
		tenant_show((Keybroker__V1__Tenant *)m);
	kb_wire_free(m);
	return rc;
}

int
kbctl_cmd_tenants_list(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__ListTenantsRequest req =
	    KEYBROKER__V1__LIST_TENANTS_REQUEST__INIT;
	struct lister l = {KB_METHOD_LIST_TENANTS, &req.base,
	    &keybroker__v1__list_tenants_response__descriptor, "tenants",
	    tenant_headers, 4, tenant_row, tenant_json};

	return list_run(k, a, &l);
}

int
kbctl_cmd_tenants_show(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__GetTenantRequest req =
	    KEYBROKER__V1__GET_TENANT_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	int rc;

	req.id = (char *)a->argv[0];
	if ((rc = call(k, KB_METHOD_GET_TENANT, &req.base,
	         &keybroker__v1__tenant__descriptor, &m))
	    != KBCTL_EXIT_OK)
		return rc;
	if (k->json)
		rc = json_print(tenant_json(m));
	else
		tenant_show((Keybroker__V1__Tenant *)m);
	kb_wire_free(m);
	return rc;
}

int
kbctl_cmd_envs_create(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__CreateEnvironmentRequest req =
	    KEYBROKER__V1__CREATE_ENVIRONMENT_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	int rc;

	req.tenant_id = (char *)a->argv[0];
	req.name = (char *)a->argv[1];
	if ((rc = call(k, KB_METHOD_CREATE_ENVIRONMENT, &req.base,
	         &keybroker__v1__environment__descriptor, &m))
	    != KBCTL_EXIT_OK)
		return rc;
	if (k->json)
		rc = json_print(env_json(m));
	else
		env_show((Keybroker__V1__Environment *)m);
	kb_wire_free(m);
	return rc;
}

int
kbctl_cmd_envs_list(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__ListEnvironmentsRequest req =
	    KEYBROKER__V1__LIST_ENVIRONMENTS_REQUEST__INIT;
	struct lister l = {KB_METHOD_LIST_ENVIRONMENTS, &req.base,
	    &keybroker__v1__list_environments_response__descriptor,
	    "environments", env_headers, 7, env_row, env_json};

	req.tenant_id = (char *)a->argv[0];
	return list_run(k, a, &l);
}

int
kbctl_cmd_envs_show(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__GetEnvironmentRequest req =
	    KEYBROKER__V1__GET_ENVIRONMENT_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	int rc;

	req.tenant_id = (char *)a->argv[0];
	req.name = (char *)a->argv[1];
	if ((rc = call(k, KB_METHOD_GET_ENVIRONMENT, &req.base,
	         &keybroker__v1__environment__descriptor, &m))
	    != KBCTL_EXIT_OK)
		return rc;
	if (k->json)
		rc = json_print(env_json(m));
	else
		env_show((Keybroker__V1__Environment *)m);
	kb_wire_free(m);
	return rc;
}

int
kbctl_cmd_datakey_get(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__GetDataKeyRequest req =
	    KEYBROKER__V1__GET_DATA_KEY_REQUEST__INIT;
	Keybroker__V1__GetDataKeyResponse *x;
	ProtobufCMessage *m = NULL;
	char b64[128]; /* secret */
	int rc;

	req.tenant_id = (char *)a->argv[0];
	req.environment = (char *)a->argv[1];
	if ((rc = call(k, KB_METHOD_GET_DATA_KEY, &req.base,
	         &keybroker__v1__get_data_key_response__descriptor, &m))
	    != KBCTL_EXIT_OK)
		return rc;
	x = (Keybroker__V1__GetDataKeyResponse *)m;
	if (x->dek.len == 0
	    || kbctl_base64(x->dek.data, x->dek.len, b64, sizeof(b64)) == 0) {
		fprintf(stderr,
		    "kbctl: INTERNAL: the broker returned a data "
		    "key of %zu bytes\n",
		    x->dek.len);
		rc = KBCTL_EXIT_FAIL;
		goto out;
	}
	if (k->json) {
		json_t *o = json_object();

		/* jansson's copies are wiped by kbctl's allocator. */
		jset(o, "dek", jstr(b64));
		jset(o, "dek_version", json_integer(x->dek_version));
		jset(o, "key_id", jstr(x->key_id));
		jset(o, "tenant_id", jstr(x->tenant_id));
		jset(o, "environment", jstr(x->environment));
		rc = json_print(o);
	} else {
		printf("dek: %s\n", b64);
		kv_u("version", x->dek_version);
		kv("key_id", or_dash(x->key_id));
		kv("tenant_id", x->tenant_id);
		kv("environment", x->environment);
	}
	fflush(stdout);
out:
	kb_wipe(b64, sizeof(b64));
	kb_wire_free(m); /* wipes the DEK */
	return rc;
}
