/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl_cmds.c: kbctl's handlers: health, whoami, tenants and
 * environments (create, list, show), datakey. */
#include "kb_codec.h"
#include "kbctl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "grpc/health/v1/health.pb-c.h"
#include "kb_secmem.h"
#include "kb_time.h"
#include "kbctl_out.h"
#include "keybroker.pb-c.h"

/* ---- listing with pages, for any List* call ---- */

/* A List* call described by field names: the request has page_size and
 * page_token, the response a repeated fmt->items and next_page_token. */
struct lister {
	const char *method;
	ProtobufCMessage *req;
	const ProtobufCMessageDescriptor *resp_desc;
	const struct kbctl_list_fmt *fmt;
};

static int
list_run(struct kbctl *k, const struct kbctl_args *a, const struct lister *l)
{
	const char *ps = kbctl_flag(a, "--page-size");
	const char *tok = kbctl_flag(a, "--page-token");
	const struct kbctl_list_fmt *fmt = l->fmt;
	int all = kbctl_flag(a, "--all") != NULL;
	uint32_t *req_size = kbctl_field_ptr(l->req, "page_size", NULL);
	char **req_token = kbctl_field_ptr(l->req, "page_token", NULL);
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
	            : (t = kbctl_table_new(fmt->ncols, fmt->headers)) == NULL)
		goto oom;
	for (;;) {
		ProtobufCMessage **items;
		const char *nt;
		size_t n, i;

		*req_token = next != NULL ? next : (char *)"";
		if ((rc = kbctl_call(k, l->method, l->req, l->resp_desc, &resp))
		    != KBCTL_EXIT_OK)
			goto out;
		rc = KBCTL_EXIT_FAIL;
		items = *(ProtobufCMessage ***)kbctl_field_ptr(
		    resp, fmt->items, &n);
		for (i = 0; i < n; i++) {
			int r = arr != NULL
			    ? json_array_append_new(arr, fmt->json(items[i]))
			    : fmt->row(t, items[i]);

			if (r != 0)
				goto oom;
		}
		nt = *(char **)kbctl_field_ptr(resp, "next_page_token", NULL);
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

		kbctl_jset(o, fmt->items, arr);
		arr = NULL;
		kbctl_jset(o, "next_page_token", kbctl_jstr(next));
		rc = kbctl_json_print(o);
		goto out;
	}
	rc = kbctl_table_done(t);
	t = NULL;
	if (rc == KBCTL_EXIT_OK && *next != '\0')
		fprintf(stderr,
		    "kbctl: more %s follow: add --all to list them "
		    "all, or --page-token %s for the next page\n",
		    fmt->items, next);
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
		return kbctl_fail_status(&st);
	/* Upper case as the protocol spells it: SERVING, NOT_SERVING. */
	v = protobuf_c_enum_descriptor_get_value(
	    &grpc__health__v1__health_check_response__serving_status__descriptor,
	    status);
	name = v != NULL ? v->name : "UNKNOWN";
	snprintf(w, sizeof(w), "%s", name);
	if (k->json) {
		json_t *o = json_object();

		kbctl_jset(o, "status", kbctl_jstr(w));
		if (kbctl_json_print(o) != KBCTL_EXIT_OK)
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
	if ((rc = kbctl_call(k, KB_METHOD_WHOAMI, &req.base,
	         &keybroker__v1__who_am_iresponse__descriptor, &m))
	    != KBCTL_EXIT_OK)
		return rc;
	x = (Keybroker__V1__WhoAmIResponse *)m;
	kbctl_enum_word(
	    &keybroker__v1__role__descriptor, x->role, role, sizeof(role));
	if (k->json) {
		json_t *o = json_object();

		kbctl_jset(o, "role", kbctl_jstr(role));
		kbctl_jset(o, "name", kbctl_jstr(x->name));
		kbctl_jset(
		    o, "tenants", kbctl_jstr_array(x->tenants, x->n_tenants));
		kbctl_jset(o, "environments",
		    kbctl_jstr_array(x->environments, x->n_environments));
		kbctl_jset_time(o, "not_after", x->not_after_us);
		kbctl_jset(o, "broker_version", kbctl_jstr(x->broker_version));
		kbctl_jset(o, "token_label", kbctl_jstr(x->token_label));
		kbctl_jset(o, "wrap_algorithm", kbctl_jstr(x->wrap_algorithm));
		rc = kbctl_json_print(o);
	} else {
		int64_t left = x->not_after_us - kb_time_now_us();

		kbctl_kv("role", role);
		kbctl_kv("name", x->name);
		if (x->role == KEYBROKER__V1__ROLE__ROLE_ADMIN
		    && x->n_tenants == 0)
			kbctl_kv("tenants", "all");
		else
			kbctl_kv("tenants",
			    kbctl_join(
			        x->tenants, x->n_tenants, list, sizeof(list)));
		kbctl_kv("environments",
		    kbctl_join(x->environments, x->n_environments, list,
		        sizeof(list)));
		kbctl_time_sec(x->not_after_us, t, sizeof(t));
		if (x->not_after_us == 0)
			kbctl_kv("certificate_expires", "-");
		else if (left <= 0)
			printf("certificate_expires: %s (expired)\n", t);
		else
			printf("certificate_expires: %s (in %lld days)\n", t,
			    (long long)(left / (86400LL * 1000000)));
		kbctl_kv("broker_version", kbctl_or_dash(x->broker_version));
		kbctl_kv("token_label", kbctl_or_dash(x->token_label));
		kbctl_kv("wrap_algorithm", kbctl_or_dash(x->wrap_algorithm));
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

	req.id = (char *)a->argv[0];
	req.display_name = (char *)(name != NULL ? name : "");
	return kbctl_call_print(k, KB_METHOD_CREATE_TENANT, &req.base,
	    &keybroker__v1__tenant__descriptor, kbctl_print_tenant);
}

int
kbctl_cmd_tenants_list(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__ListTenantsRequest req =
	    KEYBROKER__V1__LIST_TENANTS_REQUEST__INIT;
	static const struct kbctl_list_fmt tenants = {"tenants",
	    kbctl_tenant_headers, KBCTL_TENANT_NCOLS, kbctl_tenant_row,
	    kbctl_tenant_json};
	struct lister l = {KB_METHOD_LIST_TENANTS, &req.base,
	    &keybroker__v1__list_tenants_response__descriptor, &tenants};

	return list_run(k, a, &l);
}

int
kbctl_cmd_tenants_show(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__GetTenantRequest req =
	    KEYBROKER__V1__GET_TENANT_REQUEST__INIT;

	req.id = (char *)a->argv[0];
	return kbctl_call_print(k, KB_METHOD_GET_TENANT, &req.base,
	    &keybroker__v1__tenant__descriptor, kbctl_print_tenant);
}

int
kbctl_cmd_envs_create(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__CreateEnvironmentRequest req =
	    KEYBROKER__V1__CREATE_ENVIRONMENT_REQUEST__INIT;

	req.tenant_id = (char *)a->argv[0];
	req.name = (char *)a->argv[1];
	return kbctl_call_print(k, KB_METHOD_CREATE_ENVIRONMENT, &req.base,
	    &keybroker__v1__environment__descriptor, kbctl_print_env);
}

int
kbctl_cmd_envs_list(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__ListEnvironmentsRequest req =
	    KEYBROKER__V1__LIST_ENVIRONMENTS_REQUEST__INIT;
	static const struct kbctl_list_fmt envs = {"environments",
	    kbctl_env_headers, KBCTL_ENV_NCOLS, kbctl_env_row, kbctl_env_json};
	struct lister l = {KB_METHOD_LIST_ENVIRONMENTS, &req.base,
	    &keybroker__v1__list_environments_response__descriptor, &envs};

	req.tenant_id = (char *)a->argv[0];
	return list_run(k, a, &l);
}

int
kbctl_cmd_envs_show(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__GetEnvironmentRequest req =
	    KEYBROKER__V1__GET_ENVIRONMENT_REQUEST__INIT;

	req.tenant_id = (char *)a->argv[0];
	req.name = (char *)a->argv[1];
	return kbctl_call_print(k, KB_METHOD_GET_ENVIRONMENT, &req.base,
	    &keybroker__v1__environment__descriptor, kbctl_print_env);
}

/* write(2) all of buf, retrying short writes; 0 or -1 (errno). */
static int
write_all(int fd, const char *buf, size_t len)
{
	ssize_t w;

	while (len > 0) {
		if ((w = write(fd, buf, len)) < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += w;
		len -= (size_t)w;
	}
	return 0;
}

int
kbctl_cmd_datakey_get(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__GetDataKeyRequest req =
	    KEYBROKER__V1__GET_DATA_KEY_REQUEST__INIT;
	Keybroker__V1__GetDataKeyResponse *x;
	ProtobufCMessage *m = NULL;
	const char *ver = kbctl_flag(a, "--version");
	char b64[128]; /* secret */
	char text[1024]; /* secret: the whole output */
	size_t len = 0;
	int rc;

	req.tenant_id = (char *)a->argv[0];
	req.environment = (char *)a->argv[1];
	if (ver != NULL) {
		char *end;
		unsigned long long v;

		errno = 0;
		v = strtoull(ver, &end, 10);
		if (end == ver || *end != '\0' || ver[0] == '-' || errno != 0
		    || v > UINT32_MAX)
			return kbctl_usage_error(a,
			    "bad --version \"%s\": a DEK version, "
			    "from 1 to %u (0: the current one)",
			    ver, UINT32_MAX);
		req.version = (uint32_t)v;
	}
	if ((rc = kbctl_call(k, KB_METHOD_GET_DATA_KEY, &req.base,
	         &keybroker__v1__get_data_key_response__descriptor, &m))
	    != KBCTL_EXIT_OK)
		return rc;
	x = (Keybroker__V1__GetDataKeyResponse *)m;
	if (x->dek.len == 0
	    || kb_base64_encode(
	           x->dek.data, x->dek.len, b64, sizeof(b64), KB_B64_STD)
	        == 0) {
		fprintf(stderr,
		    "kbctl: INTERNAL: the broker returned a data "
		    "key of %zu bytes\n",
		    x->dek.len);
		rc = KBCTL_EXIT_FAIL;
		goto out;
	}
	/* The DEK never goes through stdio: its buffer would keep a copy
	 * after the flush. It is formatted in `text` (wiped) and written. */
	fflush(stdout);
	if (k->json) {
		json_t *o = json_object();
		size_t n;

		/* jansson's copies are wiped by kbctl's allocator. */
		kbctl_jset(o, "dek", kbctl_jstr(b64));
		kbctl_jset(o, "dek_version", json_integer(x->dek_version));
		kbctl_jset(o, "key_id", kbctl_jstr(x->key_id));
		kbctl_jset(o, "tenant_id", kbctl_jstr(x->tenant_id));
		kbctl_jset(o, "environment", kbctl_jstr(x->environment));
		n = o != NULL
		    ? json_dumpb(o, text, sizeof(text) - 1, JSON_INDENT(2))
		    : 0;
		json_decref(o);
		if (n == 0 || n >= sizeof(text) - 1) {
			fprintf(
			    stderr, "kbctl: cannot write the JSON output\n");
			rc = KBCTL_EXIT_FAIL;
			goto out;
		}
		text[n++] = '\n';
		len = n;
	} else {
		int n = snprintf(text, sizeof(text),
		    "dek: %s\nversion: %u\n"
		    "key_id: %s\ntenant_id: %s\nenvironment: %s\n",
		    b64, x->dek_version, kbctl_or_dash(x->key_id), x->tenant_id,
		    x->environment);

		if (n < 0 || (size_t)n >= sizeof(text)) {
			fprintf(stderr, "kbctl: cannot format the data key\n");
			rc = KBCTL_EXIT_FAIL;
			goto out;
		}
		len = (size_t)n;
	}
	if (write_all(STDOUT_FILENO, text, len) != 0) {
		fprintf(stderr, "kbctl: cannot write the data key: %s\n",
		    strerror(errno));
		rc = KBCTL_EXIT_FAIL;
	}
out:
	kb_wipe(b64, sizeof(b64));
	kb_wipe(text, sizeof(text));
	kb_wire_free(m); /* wipes the DEK */
	return rc;
}
