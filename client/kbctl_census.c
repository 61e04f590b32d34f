/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl_census.c: kbctl's handlers for the key census ('keys show'), key
 * retirement ('keys retire') and DEK rotation ('envs rotate-dek',
 * 'envs retire-dek'). */
#include "kbctl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kbctl_out.h"
#include "keybroker.pb-c.h"

static json_t *
census_json(const Keybroker__V1__KeyCensus *x)
{
	json_t *o = json_object(), *via = json_array(), *deps = json_array();
	char w[32];
	size_t i;

	kbctl_jset(o, "key_id", kbctl_jstr(x->key_id));
	kbctl_jset(o, "tenant_id", kbctl_jstr(x->tenant_id));
	kbctl_jset(o, "purpose", kbctl_jstr(x->purpose));
	kbctl_jset(o, "state", kbctl_jstr(x->state));
	kbctl_jset(o, "parent_key_id", kbctl_jstr(x->parent_key_id));
	kbctl_jset(
	    o, "dek_versions", json_integer((json_int_t)x->dek_versions));
	kbctl_jset(o, "backups", json_integer((json_int_t)x->backups));
	kbctl_jset(
	    o, "environments", json_integer((json_int_t)x->environments));
	kbctl_jset(o, "environments_enabled",
	    json_integer((json_int_t)x->environments_enabled));
	kbctl_jset(o, "environments_locked",
	    json_integer((json_int_t)x->environments_locked));
	kbctl_jset(o, "dek_versions_locked",
	    json_integer((json_int_t)x->dek_versions_locked));
	kbctl_jset(o, "tenants", json_integer((json_int_t)x->tenants));
	for (i = 0; i < x->n_via; i++) {
		const Keybroker__V1__KeyCensusVia *v = x->via[i];
		json_t *e = json_object();

		kbctl_jset(e, "key_id", kbctl_jstr(v->key_id));
		kbctl_jset(e, "state", kbctl_jstr(v->state));
		kbctl_jset(e, "dek_versions",
		    json_integer((json_int_t)v->dek_versions));
		kbctl_jset(e, "backups", json_integer((json_int_t)v->backups));
		kbctl_jset(e, "environments",
		    json_integer((json_int_t)v->environments));
		if (json_array_append_new(via, e) != 0)
			kbctl_jset(o, "via", NULL);
	}
	kbctl_jset(o, "via", via);
	for (i = 0; i < x->n_dependents; i++) {
		const Keybroker__V1__KeyCensusEnvironment *v = x->dependents[i];
		json_t *e = json_object();

		kbctl_jset(e, "tenant_id", kbctl_jstr(v->tenant_id));
		kbctl_jset(e, "name", kbctl_jstr(v->name));
		kbctl_jset(e, "state",
		    kbctl_jstr(kbctl_enum_word(
		        &keybroker__v1__environment_state__descriptor, v->state,
		        w, sizeof(w))));
		kbctl_jset(e, "mode",
		    kbctl_jstr(kbctl_enum_word(
		        &keybroker__v1__encryption_mode__descriptor, v->mode, w,
		        sizeof(w))));
		kbctl_jset(e, "dek_versions", json_integer(v->dek_versions));
		kbctl_jset(e, "backups", json_integer(v->backups));
		kbctl_jset(e, "via_key_id", kbctl_jstr(v->via_key_id));
		if (json_array_append_new(deps, e) != 0)
			kbctl_jset(o, "dependents", NULL);
	}
	kbctl_jset(o, "dependents", deps);
	kbctl_jset(
	    o, "dependents_truncated", json_boolean(x->dependents_truncated));
	kbctl_jset_time(o, "census_time", x->census_time_us);
	return o;
}

static const char *const dep_headers[] = {
    "TENANT", "ENVIRONMENT", "STATE", "MODE", "VERSIONS", "BACKUPS", "VIA"};

static int
census_show(const Keybroker__V1__KeyCensus *x)
{
	struct kbctl_table *t;
	char line[256], st[32], mode[32], nv[16], nb[16];
	const char *cells[7];
	size_t i;

	snprintf(line, sizeof(line),
	    "%llu data key version(s) of %llu environment(s) (%llu enabled, "
	    "%llu locked), %llu backup(s), %llu tenant(s)",
	    (unsigned long long)x->dek_versions,
	    (unsigned long long)x->environments,
	    (unsigned long long)x->environments_enabled,
	    (unsigned long long)x->environments_locked,
	    (unsigned long long)x->backups, (unsigned long long)x->tenants);
	kbctl_kv("seals", line);
	if (x->parent_key_id[0] != '\0')
		kbctl_kv("wrapped_by", x->parent_key_id);
	for (i = 0; i < x->n_via; i++) {
		snprintf(line, sizeof(line),
		    "%s (%s): %llu version(s), %llu backup(s), %llu "
		    "environment(s)",
		    x->via[i]->key_id, x->via[i]->state,
		    (unsigned long long)x->via[i]->dek_versions,
		    (unsigned long long)x->via[i]->backups,
		    (unsigned long long)x->via[i]->environments);
		kbctl_kv("through_kek", line);
	}
	if (x->n_dependents == 0)
		return KBCTL_EXIT_OK;
	printf("\n");
	if ((t = kbctl_table_new(7, dep_headers)) == NULL)
		return kbctl_table_done(NULL);
	for (i = 0; i < x->n_dependents; i++) {
		const Keybroker__V1__KeyCensusEnvironment *v = x->dependents[i];

		snprintf(nv, sizeof(nv), "%u", v->dek_versions);
		snprintf(nb, sizeof(nb), "%u", v->backups);
		cells[0] = v->tenant_id;
		cells[1] = v->name;
		cells[2] = kbctl_enum_word(
		    &keybroker__v1__environment_state__descriptor, v->state, st,
		    sizeof(st));
		cells[3] =
		    kbctl_enum_word(&keybroker__v1__encryption_mode__descriptor,
		        v->mode, mode, sizeof(mode));
		cells[4] = nv;
		cells[5] = nb;
		cells[6] = v->via_key_id;
		if (kbctl_table_add(t, cells) != 0) {
			kbctl_table_free(t);
			return kbctl_table_done(NULL);
		}
	}
	if (x->dependents_truncated)
		fprintf(stderr,
		    "kbctl: the first %zu environments are listed (--envs N "
		    "lists more); the counts above are whole\n",
		    x->n_dependents);
	return kbctl_table_done(t);
}

/* [TENANT] KEY: one argument names a platform key. */
static void
key_args(const struct kbctl_args *a, const char **tenant, const char **key)
{
	*tenant = a->argc == 2 ? a->argv[0] : "";
	*key = a->argv[a->argc - 1];
}

int
kbctl_cmd_keys_show(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__GetKeyRequest kreq =
	    KEYBROKER__V1__GET_KEY_REQUEST__INIT;
	Keybroker__V1__GetKeyCensusRequest creq =
	    KEYBROKER__V1__GET_KEY_CENSUS_REQUEST__INIT;
	Keybroker__V1__KeyCensus *cs;
	ProtobufCMessage *key = NULL, *m = NULL;
	const char *tenant, *id, *envs = kbctl_flag(a, "--envs");
	json_t *o;
	char *end;
	int rc;

	key_args(a, &tenant, &id);
	if (envs != NULL) {
		unsigned long v;

		errno = 0;
		v = strtoul(envs, &end, 10);
		if (*end != '\0' || errno != 0 || v == 0 || v > 10000)
			return kbctl_usage_error(a,
			    "--envs: expected 1 to 10000 environments, not "
			    "\"%s\"",
			    envs);
		creq.limit = (uint32_t)v;
	}
	/* A tenant key has its record too; a KEK or a platform key only its
	 * census. */
	if (tenant[0] != '\0' && strncmp(id, "kek-", 4) != 0) {
		kreq.tenant_id = (char *)tenant;
		kreq.key_id = (char *)id;
		if ((rc = kbctl_call(k, KB_METHOD_GET_KEY, &kreq.base,
		         &keybroker__v1__key__descriptor, &key))
		    != KBCTL_EXIT_OK)
			return rc;
	}
	creq.tenant_id = (char *)tenant;
	creq.key_id = (char *)id;
	if ((rc = kbctl_call(k, KB_METHOD_GET_KEY_CENSUS, &creq.base,
	         &keybroker__v1__key_census__descriptor, &m))
	    != KBCTL_EXIT_OK) {
		kb_wire_free(key);
		return rc;
	}
	cs = (Keybroker__V1__KeyCensus *)m;
	if (k->json) {
		if (key != NULL) {
			o = kbctl_key_json(key);
		} else {
			o = json_object();
			kbctl_jset(o, "id", kbctl_jstr(cs->key_id));
			kbctl_jset(o, "tenant_id", kbctl_jstr(cs->tenant_id));
			kbctl_jset(o, "purpose", kbctl_jstr(cs->purpose));
			kbctl_jset(o, "state", kbctl_jstr(cs->state));
		}
		kbctl_jset(o, "census", census_json(cs));
		rc = kbctl_json_print(o);
	} else {
		if (key != NULL) {
			rc = kbctl_print_key(k, key);
		} else {
			kbctl_kv("id", cs->key_id);
			kbctl_kv("tenant_id", kbctl_or_dash(cs->tenant_id));
			kbctl_kv("purpose", cs->purpose);
			kbctl_kv("state", cs->state);
		}
		if (rc == KBCTL_EXIT_OK)
			rc = census_show(cs);
	}
	kb_wire_free(key);
	kb_wire_free(m);
	return rc;
}

int
kbctl_cmd_keys_retire(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__RetireKeyRequest req =
	    KEYBROKER__V1__RETIRE_KEY_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	const char *tenant, *id;
	int rc;

	key_args(a, &tenant, &id);
	req.tenant_id = (char *)tenant;
	req.key_id = (char *)id;
	if ((rc = kbctl_call(k, KB_METHOD_RETIRE_KEY, &req.base,
	         &keybroker__v1__job__descriptor, &m))
	    != KBCTL_EXIT_OK)
		return rc;
	return kbctl_job_answer(k, m, kbctl_flag(a, "--wait") != NULL);
}

static int
print_versions(const struct kbctl *k, const ProtobufCMessage *m)
{
	const Keybroker__V1__DataKeyVersions *x = (const void *)m;
	json_t *o, *v;
	char buf[1024];
	size_t i, off = 0;

	if (k->json) {
		o = json_object();
		v = json_array();
		kbctl_jset(o, "tenant_id", kbctl_jstr(x->tenant_id));
		kbctl_jset(o, "name", kbctl_jstr(x->name));
		kbctl_jset(
		    o, "current_version", json_integer(x->current_version));
		kbctl_jset(o, "min_version", json_integer(x->min_version));
		for (i = 0; i < x->n_versions; i++)
			if (json_array_append_new(
			        v, json_integer(x->versions[i]))
			    != 0)
				kbctl_jset(o, "versions", NULL);
		kbctl_jset(o, "versions", v);
		kbctl_jset(o, "destroyed", json_integer(x->destroyed));
		kbctl_jset(
		    o, "backups_destroyed", json_integer(x->backups_destroyed));
		return kbctl_json_print(o);
	}
	kbctl_kv("tenant_id", x->tenant_id);
	kbctl_kv("name", x->name);
	kbctl_kv_u("current_version", x->current_version);
	kbctl_kv_u("min_version", x->min_version);
	buf[0] = '\0';
	for (i = 0; i < x->n_versions && off < sizeof(buf) - 16; i++)
		off += (size_t)snprintf(buf + off, sizeof(buf) - off, "%s%u",
		    i > 0 ? " " : "", x->versions[i]);
	kbctl_kv("versions", kbctl_or_dash(buf));
	if (x->destroyed > 0 || x->backups_destroyed > 0) {
		kbctl_kv_u("destroyed", x->destroyed);
		kbctl_kv_u("backups_destroyed", x->backups_destroyed);
	}
	return KBCTL_EXIT_OK;
}

int
kbctl_cmd_envs_rotate_dek(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__EnvironmentRef req =
	    KEYBROKER__V1__ENVIRONMENT_REF__INIT;

	req.tenant_id = (char *)a->argv[0];
	req.name = (char *)a->argv[1];
	return kbctl_call_print(k, KB_METHOD_ROTATE_DATA_KEY, &req.base,
	    &keybroker__v1__data_key_versions__descriptor, print_versions);
}

int
kbctl_cmd_envs_retire_dek(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__RetireDataKeysRequest req =
	    KEYBROKER__V1__RETIRE_DATA_KEYS_REQUEST__INIT;
	const char *below = kbctl_flag(a, "--below");
	char explain[1024], t[128], e[128];
	unsigned long v;
	char *end;
	int rc;

	errno = 0;
	v = strtoul(below, &end, 10);
	if (*end != '\0' || errno != 0 || v == 0 || v > 0xffffffffUL)
		return kbctl_usage_error(a,
		    "--below: expected a data key version (1 or more), not "
		    "\"%s\"",
		    below);
	kbctl_sanitize(a->argv[0], t, sizeof(t));
	kbctl_sanitize(a->argv[1], e, sizeof(e));
	snprintf(explain, sizeof(explain),
	    "Retiring the data key versions below %lu of %s/%s:\n"
	    "  - they are destroyed: data still encrypted under them cannot "
	    "be read\n    again, by anyone;\n"
	    "%s"
	    "  - the current version and those from %lu on stay readable.\n",
	    v, t, e,
	    kbctl_flag(a, "--with-backups") != NULL
	        ? "  - the backups of those versions are destroyed with "
	          "them;\n"
	        : "",
	    v);
	if ((rc = kbctl_confirm_or_yes(
	         a, explain, "the environment name", a->argv[1]))
	    >= 0)
		return rc;
	req.tenant_id = (char *)a->argv[0];
	req.name = (char *)a->argv[1];
	req.below_version = (uint32_t)v;
	req.with_backups = kbctl_flag(a, "--with-backups") != NULL;
	return kbctl_call_print(k, KB_METHOD_RETIRE_DATA_KEYS, &req.base,
	    &keybroker__v1__data_key_versions__descriptor, print_versions);
}
