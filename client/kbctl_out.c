/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl_out.c: kbctl's output: calls and their errors, JSON, "key: value"
 * text, and the broker's messages as tables, text and JSON. */
#include "kbctl_out.h"

#include <stdlib.h>
#include <string.h>

#include "kb_err_grpc.h"
#include "kb_time.h"
#include "keybroker.pb-c.h"

/* Set when building a JSON document ran out of memory. */
static int json_broken;

/* ---- calls ---- */

int
kbctl_fail_status(const struct kb_status *st)
{
	char msg[sizeof(st->message)];

	kbctl_sanitize(st->message, msg, sizeof(msg));
	fprintf(stderr, "kbctl: %s: %s\n", kb_grpc_status_name(st->code), msg);
	return KBCTL_EXIT_FAIL;
}

int
kbctl_call(struct kbctl *k, const char *method, const ProtobufCMessage *req,
    const ProtobufCMessageDescriptor *d, ProtobufCMessage **resp)
{
	struct kb_status st;

	if (kb_client_call(k->client, method, req, d, resp, &st) == KB_OK)
		return KBCTL_EXIT_OK;
	if (st.code == GRPC_STATUS_ABORTED && st.request_id[0] != '\0') {
		/* Not done, not failed: approvers must now decide. */
		char id[sizeof(st.request_id)];

		snprintf(id, sizeof(id), "%s", st.request_id);
		if (!k->json) {
			char msg[sizeof(st.message)];

			kbctl_sanitize(st.message, msg, sizeof(msg));
			fprintf(stderr, "kbctl: %s\n", msg);
		}
		if (kbctl_request_show(k, id) != KBCTL_EXIT_OK)
			return KBCTL_EXIT_FAIL;
		return KBCTL_EXIT_REQUESTED;
	}
	return kbctl_fail_status(&st);
}

int
kbctl_call_print(struct kbctl *k, const char *method,
    const ProtobufCMessage *req, const ProtobufCMessageDescriptor *d,
    int (*print)(const struct kbctl *k, const ProtobufCMessage *m))
{
	ProtobufCMessage *m = NULL;
	int rc;

	if ((rc = kbctl_call(k, method, req, d, &m)) != KBCTL_EXIT_OK)
		return rc;
	rc = print(k, m);
	kb_wire_free(m);
	return rc;
}

void *
kbctl_field_ptr(const ProtobufCMessage *m, const char *name, size_t *count)
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

/* The answer's items as one JSON document or one table. */
static int
list_print(const struct kbctl *k, const ProtobufCMessage *resp,
    const struct kbctl_list_fmt *fmt)
{
	ProtobufCMessage **items;
	struct kbctl_table *t;
	json_t *arr, *o;
	size_t n, i;

	items = *(ProtobufCMessage ***)kbctl_field_ptr(resp, fmt->items, &n);
	if (k->json) {
		arr = json_array();
		for (i = 0; i < n && arr != NULL; i++)
			if (json_array_append_new(arr, fmt->json(items[i]))
			    != 0)
				break;
		o = json_object();
		kbctl_jset(o, fmt->items, arr);
		return kbctl_json_print(o);
	}
	t = kbctl_table_new(fmt->ncols, fmt->headers);
	for (i = 0; i < n && t != NULL; i++)
		if (fmt->row(t, items[i]) != 0) {
			kbctl_table_free(t);
			t = NULL;
		}
	return kbctl_table_done(t);
}

int
kbctl_call_list(struct kbctl *k, const char *method,
    const ProtobufCMessage *req, const ProtobufCMessageDescriptor *d,
    const struct kbctl_list_fmt *fmt)
{
	ProtobufCMessage *m = NULL;
	int rc;

	if ((rc = kbctl_call(k, method, req, d, &m)) != KBCTL_EXIT_OK)
		return rc;
	rc = list_print(k, m, fmt);
	kb_wire_free(m);
	return rc;
}

/* ---- JSON ---- */

json_t *
kbctl_jstr(const char *s)
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

void
kbctl_jset(json_t *o, const char *key, json_t *v)
{
	if (o == NULL || v == NULL || json_object_set_new(o, key, v) != 0)
		json_broken = 1;
}

void
kbctl_jset_time(json_t *o, const char *name, int64_t us)
{
	char key[64], t[40];

	snprintf(key, sizeof(key), "%s_us", name);
	kbctl_jset(o, name,
	    us != 0 ? kbctl_jstr(kb_time_format(us, t, sizeof(t)))
	            : json_null());
	kbctl_jset(o, key, json_integer(us));
}

json_t *
kbctl_jstr_array(char **v, size_t n)
{
	json_t *a = json_array();
	size_t i;

	for (i = 0; i < n && a != NULL; i++)
		if (json_array_append_new(a, kbctl_jstr(v[i])) != 0)
			json_broken = 1;
	return a;
}

int
kbctl_json_print(json_t *j)
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

/* ---- text ---- */

void
kbctl_kv(const char *key, const char *val)
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

void
kbctl_kv_u(const char *key, unsigned long long v)
{
	printf("%s: %llu\n", key, v);
}

const char *
kbctl_or_dash(const char *s)
{
	return (s == NULL || *s == '\0') ? "-" : s;
}

const char *
kbctl_join(char **v, size_t n, char *buf, size_t len)
{
	size_t i, o = 0;

	snprintf(buf, len, "-");
	for (i = 0; i < n && o < len; i++)
		o += (size_t)snprintf(
		    buf + o, len - o, "%s%s", i ? ", " : "", v[i]);
	return buf;
}

int
kbctl_table_done(struct kbctl_table *t)
{
	int r = KBCTL_EXIT_OK;

	if (t == NULL || kbctl_table_print(t, stdout) != 0) {
		fprintf(stderr, "kbctl: cannot print the table\n");
		r = KBCTL_EXIT_FAIL;
	}
	kbctl_table_free(t);
	return r;
}

/* A time as "key: 2026-11-22T04:39:11Z" ("-" for 0). */
static void
kv_time(const char *key, int64_t us)
{
	char t[40];

	kbctl_kv(key, kbctl_time_sec(us, t, sizeof(t)));
}

static void
kv_enum(const char *key, const ProtobufCEnumDescriptor *d, int v)
{
	char w[32];

	kbctl_kv(key, kbctl_enum_word(d, v, w, sizeof(w)));
}

static void
jset_enum(json_t *o, const char *key, const ProtobufCEnumDescriptor *d, int v)
{
	char w[32];

	kbctl_jset(o, key, kbctl_jstr(kbctl_enum_word(d, v, w, sizeof(w))));
}

/* --json prints json(m); text prints show(m). */
static int
print_msg(const struct kbctl *k, const ProtobufCMessage *m,
    json_t *(*json)(const ProtobufCMessage *),
    void (*show)(const ProtobufCMessage *))
{
	if (k->json)
		return kbctl_json_print(json(m));
	show(m);
	return KBCTL_EXIT_OK;
}

/* ---- tenants ---- */

const char *const kbctl_tenant_headers[] = {
    "ID", "DISPLAY NAME", "ENVIRONMENTS", "STATE", "ACTIVE KEY", "CREATED"};

int
kbctl_tenant_row(struct kbctl_table *t, const ProtobufCMessage *m)
{
	const Keybroker__V1__Tenant *x = (const Keybroker__V1__Tenant *)m;
	char n[16], st[32], c[40];
	const char *cells[KBCTL_TENANT_NCOLS];

	snprintf(n, sizeof(n), "%u", x->environment_count);
	cells[0] = x->id;
	cells[1] = kbctl_or_dash(x->display_name);
	cells[2] = n;
	cells[3] = kbctl_enum_word(
	    &keybroker__v1__tenant_state__descriptor, x->state, st, sizeof(st));
	cells[4] = kbctl_or_dash(x->active_key_id);
	cells[5] = kbctl_time_sec(x->create_time_us, c, sizeof(c));
	return kbctl_table_add(t, cells);
}

json_t *
kbctl_tenant_json(const ProtobufCMessage *m)
{
	const Keybroker__V1__Tenant *x = (const Keybroker__V1__Tenant *)m;
	json_t *o = json_object();

	kbctl_jset(o, "id", kbctl_jstr(x->id));
	kbctl_jset(o, "display_name", kbctl_jstr(x->display_name));
	kbctl_jset(o, "environment_count", json_integer(x->environment_count));
	jset_enum(
	    o, "state", &keybroker__v1__tenant_state__descriptor, x->state);
	kbctl_jset(o, "active_key_id", kbctl_jstr(x->active_key_id));
	kbctl_jset_time(o, "create_time", x->create_time_us);
	kbctl_jset_time(o, "last_activation_time", x->last_activation_time_us);
	kbctl_jset_time(o, "last_key_change_time", x->last_key_change_time_us);
	kbctl_jset_time(o, "lock_time", x->lock_time_us);
	kbctl_jset(o, "lock_key_id", kbctl_jstr(x->lock_key_id));
	kbctl_jset(o, "locked_environment_count",
	    json_integer(x->locked_environment_count));
	return o;
}

static void
tenant_show(const ProtobufCMessage *m)
{
	const Keybroker__V1__Tenant *x = (const Keybroker__V1__Tenant *)m;

	kbctl_kv("id", x->id);
	kbctl_kv("display_name", kbctl_or_dash(x->display_name));
	kv_enum("state", &keybroker__v1__tenant_state__descriptor, x->state);
	kbctl_kv_u("environment_count", x->environment_count);
	kbctl_kv_u("locked_environment_count", x->locked_environment_count);
	kbctl_kv("active_key_id", kbctl_or_dash(x->active_key_id));
	kv_time("last_activation_time", x->last_activation_time_us);
	kv_time("last_key_change_time", x->last_key_change_time_us);
	kv_time("lock_time", x->lock_time_us);
	kbctl_kv("lock_key_id", kbctl_or_dash(x->lock_key_id));
	kv_time("create_time", x->create_time_us);
}

int
kbctl_print_tenant(const struct kbctl *k, const ProtobufCMessage *m)
{
	return print_msg(k, m, kbctl_tenant_json, tenant_show);
}

/* ---- environments ---- */

const char *const kbctl_env_headers[] = {
    "NAME", "MODE", "STATE", "KEY ID", "DEK VERSION", "WRAP", "CREATED"};

int
kbctl_env_row(struct kbctl_table *t, const ProtobufCMessage *m)
{
	const Keybroker__V1__Environment *x =
	    (const Keybroker__V1__Environment *)m;
	char mode[32], state[80], ver[16], c[40], f[40];
	const char *cells[KBCTL_ENV_NCOLS];

	snprintf(ver, sizeof(ver), "%u", x->dek_version);
	cells[0] = x->name;
	cells[1] = kbctl_enum_word(&keybroker__v1__encryption_mode__descriptor,
	    x->mode, mode, sizeof(mode));
	cells[2] =
	    kbctl_enum_word(&keybroker__v1__environment_state__descriptor,
	        x->state, state, sizeof(state));
	/* Pending deletion: when it becomes final, in the same cell. */
	if (x->state
	    == KEYBROKER__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_PENDING_DELETION) {
		size_t l = strlen(state);

		snprintf(state + l, sizeof(state) - l, " until %s",
		    kbctl_time_sec(x->delete_final_time_us, f, sizeof(f)));
	}
	cells[3] = kbctl_or_dash(x->key_id);
	cells[4] = ver;
	cells[5] = kbctl_or_dash(x->wrap_algorithm);
	cells[6] = kbctl_time_sec(x->create_time_us, c, sizeof(c));
	return kbctl_table_add(t, cells);
}

json_t *
kbctl_env_json(const ProtobufCMessage *m)
{
	const Keybroker__V1__Environment *x =
	    (const Keybroker__V1__Environment *)m;
	json_t *o = json_object();

	kbctl_jset(o, "tenant_id", kbctl_jstr(x->tenant_id));
	kbctl_jset(o, "name", kbctl_jstr(x->name));
	jset_enum(
	    o, "mode", &keybroker__v1__encryption_mode__descriptor, x->mode);
	jset_enum(o, "state", &keybroker__v1__environment_state__descriptor,
	    x->state);
	kbctl_jset(o, "key_id", kbctl_jstr(x->key_id));
	kbctl_jset(o, "dek_version", json_integer(x->dek_version));
	kbctl_jset(o, "wrap_algorithm", kbctl_jstr(x->wrap_algorithm));
	kbctl_jset_time(o, "create_time", x->create_time_us);
	kbctl_jset_time(o, "update_time", x->update_time_us);
	kbctl_jset_time(o, "lock_time", x->lock_time_us);
	kbctl_jset_time(o, "delete_request_time", x->delete_request_time_us);
	kbctl_jset_time(o, "delete_final_time", x->delete_final_time_us);
	if (x->state
	    == KEYBROKER__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_PENDING_DELETION)
		jset_enum(o, "state_before_deletion",
		    &keybroker__v1__environment_state__descriptor,
		    x->state_before_deletion);
	return o;
}

static void
env_show(const ProtobufCMessage *m)
{
	const Keybroker__V1__Environment *x =
	    (const Keybroker__V1__Environment *)m;

	kbctl_kv("tenant_id", x->tenant_id);
	kbctl_kv("name", x->name);
	kv_enum("mode", &keybroker__v1__encryption_mode__descriptor, x->mode);
	kv_enum(
	    "state", &keybroker__v1__environment_state__descriptor, x->state);
	kbctl_kv("key_id", kbctl_or_dash(x->key_id));
	kbctl_kv_u("dek_version", x->dek_version);
	kbctl_kv("wrap_algorithm", kbctl_or_dash(x->wrap_algorithm));
	kv_time("create_time", x->create_time_us);
	kv_time("update_time", x->update_time_us);
	kv_time("lock_time", x->lock_time_us);
	if (x->delete_request_time_us != 0) {
		kv_time("delete_request_time", x->delete_request_time_us);
		kv_time("delete_final_time", x->delete_final_time_us);
	}
	if (x->state
	    == KEYBROKER__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_PENDING_DELETION)
		kv_enum("state_before_deletion",
		    &keybroker__v1__environment_state__descriptor,
		    x->state_before_deletion);
}

int
kbctl_print_env(const struct kbctl *k, const ProtobufCMessage *m)
{
	return print_msg(k, m, kbctl_env_json, env_show);
}

/* ---- tenant keys ---- */

const char *const kbctl_key_headers[] = {
    "ID", "ORIGIN", "STATE", "FINGERPRINT", "CREATED", "ACTIVATED"};

int
kbctl_key_row(struct kbctl_table *t, const ProtobufCMessage *m)
{
	const Keybroker__V1__Key *x = (const Keybroker__V1__Key *)m;
	char origin[32], state[80], fp[32], c[40], a[40], f[40];
	const char *cells[KBCTL_KEY_NCOLS];

	cells[0] = x->id;
	cells[1] = kbctl_enum_word(&keybroker__v1__key_origin__descriptor,
	    x->origin, origin, sizeof(origin));
	cells[2] = kbctl_enum_word(&keybroker__v1__key_state__descriptor,
	    x->state, state, sizeof(state));
	if (x->state == KEYBROKER__V1__KEY_STATE__KEY_STATE_PENDING_DELETION) {
		size_t l = strlen(state);

		snprintf(state + l, sizeof(state) - l, " until %s",
		    kbctl_time_sec(x->delete_final_time_us, f, sizeof(f)));
	}
	cells[3] = kbctl_fingerprint_short(x->fingerprint, fp, sizeof(fp));
	cells[4] = kbctl_time_sec(x->create_time_us, c, sizeof(c));
	cells[5] = kbctl_time_sec(x->activate_time_us, a, sizeof(a));
	return kbctl_table_add(t, cells);
}

json_t *
kbctl_key_json(const ProtobufCMessage *m)
{
	const Keybroker__V1__Key *x = (const Keybroker__V1__Key *)m;
	json_t *o = json_object();

	kbctl_jset(o, "id", kbctl_jstr(x->id));
	kbctl_jset(o, "tenant_id", kbctl_jstr(x->tenant_id));
	jset_enum(
	    o, "origin", &keybroker__v1__key_origin__descriptor, x->origin);
	jset_enum(o, "state", &keybroker__v1__key_state__descriptor, x->state);
	kbctl_jset(o, "fingerprint", kbctl_jstr(x->fingerprint));
	kbctl_jset(o, "bits", json_integer(x->bits));
	kbctl_jset_time(o, "create_time", x->create_time_us);
	kbctl_jset_time(o, "update_time", x->update_time_us);
	kbctl_jset_time(o, "activate_time", x->activate_time_us);
	kbctl_jset_time(o, "lock_time", x->lock_time_us);
	kbctl_jset_time(o, "delete_time", x->delete_time_us);
	kbctl_jset_time(o, "delete_request_time", x->delete_request_time_us);
	kbctl_jset_time(o, "delete_final_time", x->delete_final_time_us);
	kbctl_jset_time(o, "retire_time", x->retire_time_us);
	/* Held for approval: the request, also at the top level of the
	 * document so --json readers find "request_id" as elsewhere. */
	if (x->approval_request_id[0] != '\0')
		kbctl_jset(o, "request_id", kbctl_jstr(x->approval_request_id));
	return o;
}

static void
key_show(const ProtobufCMessage *m)
{
	const Keybroker__V1__Key *x = (const Keybroker__V1__Key *)m;

	kbctl_kv("id", x->id);
	kbctl_kv("tenant_id", x->tenant_id);
	kv_enum("origin", &keybroker__v1__key_origin__descriptor, x->origin);
	kv_enum("state", &keybroker__v1__key_state__descriptor, x->state);
	kbctl_kv("fingerprint", kbctl_or_dash(x->fingerprint));
	kbctl_kv_u("bits", x->bits);
	kv_time("create_time", x->create_time_us);
	kv_time("update_time", x->update_time_us);
	kv_time("activate_time", x->activate_time_us);
	kv_time("lock_time", x->lock_time_us);
	kv_time("delete_time", x->delete_time_us);
	if (x->delete_request_time_us != 0) {
		kv_time("delete_request_time", x->delete_request_time_us);
		kv_time("delete_final_time", x->delete_final_time_us);
	}
	if (x->retire_time_us != 0)
		kv_time("retire_time", x->retire_time_us);
	if (x->approval_request_id[0] != '\0')
		kbctl_kv("request_id", x->approval_request_id);
}

int
kbctl_print_key(const struct kbctl *k, const ProtobufCMessage *m)
{
	return print_msg(k, m, kbctl_key_json, key_show);
}

/* ---- jobs ---- */

json_t *
kbctl_job_json(const ProtobufCMessage *m)
{
	const Keybroker__V1__Job *x = (const Keybroker__V1__Job *)m;
	json_t *o = json_object();

	kbctl_jset(o, "id", kbctl_jstr(x->id));
	kbctl_jset(o, "tenant_id", kbctl_jstr(x->tenant_id));
	kbctl_jset(o, "kind", kbctl_jstr(x->kind));
	kbctl_jset(o, "key_id", kbctl_jstr(x->key_id));
	kbctl_jset(o, "previous_key_id", kbctl_jstr(x->previous_key_id));
	kbctl_jset(o, "target_key_id", kbctl_jstr(x->target_key_id));
	jset_enum(o, "state", &keybroker__v1__job_state__descriptor, x->state);
	kbctl_jset(o, "total", json_integer((json_int_t)x->total));
	kbctl_jset(o, "done", json_integer((json_int_t)x->done));
	kbctl_jset(o, "error", kbctl_jstr(x->error));
	kbctl_jset_time(o, "create_time", x->create_time_us);
	kbctl_jset_time(o, "update_time", x->update_time_us);
	return o;
}

static void
job_show(const ProtobufCMessage *m)
{
	const Keybroker__V1__Job *x = (const Keybroker__V1__Job *)m;

	kbctl_kv("id", x->id);
	kv_enum("state", &keybroker__v1__job_state__descriptor, x->state);
	kbctl_kv("tenant_id", x->tenant_id);
	kbctl_kv("kind", kbctl_or_dash(x->kind));
	kbctl_kv("key_id", kbctl_or_dash(x->key_id));
	kbctl_kv("previous_key_id", kbctl_or_dash(x->previous_key_id));
	kbctl_kv_u("total", x->total);
	kbctl_kv_u("done", x->done);
	kbctl_kv("error", kbctl_or_dash(x->error));
	kv_time("create_time", x->create_time_us);
	kv_time("update_time", x->update_time_us);
}

int
kbctl_print_job(const struct kbctl *k, const ProtobufCMessage *m)
{
	return print_msg(k, m, kbctl_job_json, job_show);
}

/* ---- backups ---- */

const char *const kbctl_backup_headers[] = {
    "ID", "DEK VERSION", "MODE", "KEY", "CREATED"};

int
kbctl_backup_row(struct kbctl_table *t, const ProtobufCMessage *m)
{
	const Keybroker__V1__Backup *x = (const Keybroker__V1__Backup *)m;
	char ver[16], mode[32], c[40];
	const char *cells[KBCTL_BACKUP_NCOLS];

	snprintf(ver, sizeof(ver), "%u", x->dek_version);
	cells[0] = x->id;
	cells[1] = ver;
	cells[2] = kbctl_enum_word(&keybroker__v1__encryption_mode__descriptor,
	    x->mode, mode, sizeof(mode));
	cells[3] = kbctl_or_dash(x->key_id);
	cells[4] = kbctl_time_sec(x->create_time_us, c, sizeof(c));
	return kbctl_table_add(t, cells);
}

json_t *
kbctl_backup_json(const ProtobufCMessage *m)
{
	const Keybroker__V1__Backup *x = (const Keybroker__V1__Backup *)m;
	json_t *o = json_object();

	kbctl_jset(o, "id", kbctl_jstr(x->id));
	kbctl_jset(o, "tenant_id", kbctl_jstr(x->tenant_id));
	kbctl_jset(o, "environment", kbctl_jstr(x->environment));
	kbctl_jset(o, "dek_version", json_integer(x->dek_version));
	jset_enum(
	    o, "mode", &keybroker__v1__encryption_mode__descriptor, x->mode);
	kbctl_jset(o, "key_id", kbctl_jstr(x->key_id));
	kbctl_jset_time(o, "create_time", x->create_time_us);
	return o;
}

static void
backup_show(const ProtobufCMessage *m)
{
	const Keybroker__V1__Backup *x = (const Keybroker__V1__Backup *)m;

	kbctl_kv("id", x->id);
	kbctl_kv("tenant_id", x->tenant_id);
	kbctl_kv("environment", x->environment);
	kbctl_kv_u("dek_version", x->dek_version);
	kv_enum("mode", &keybroker__v1__encryption_mode__descriptor, x->mode);
	kbctl_kv("key_id", kbctl_or_dash(x->key_id));
	kv_time("create_time", x->create_time_us);
}

int
kbctl_print_backup(const struct kbctl *k, const ProtobufCMessage *m)
{
	return print_msg(k, m, kbctl_backup_json, backup_show);
}
