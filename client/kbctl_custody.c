/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl_custody.c: the broker's own keys (platform rotate-key) and the
 * verify and repair scans of stored data keys. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kbctl.h"
#include "kbctl_out.h"
#include "kbctl_secret.h"
#include "keybroker.pb-c.h"

#define VERIFY_PAGE 500

int
kbctl_cmd_platform_rotate_key(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__RotatePlatformKeyRequest req =
	    KEYBROKER__V1__ROTATE_PLATFORM_KEY_REQUEST__INIT;
	Keybroker__V1__Job *j;
	ProtobufCMessage *m = NULL;
	char err[512];
	int rc;

	if ((rc = kbctl_call(k, KB_METHOD_ROTATE_PLATFORM_KEY, &req.base,
	         &keybroker__v1__job__descriptor, &m))
	    != KBCTL_EXIT_OK)
		return rc;
	if (kbctl_flag(a, "--wait") != NULL
	    && (rc = kbctl_job_follow(k, &m)) >= 0) {
		kb_wire_free(m);
		return rc;
	}
	j = (Keybroker__V1__Job *)m;
	rc = kbctl_print_job(k, m);
	if (j->state == KEYBROKER__V1__JOB_STATE__JOB_STATE_FAILED) {
		kbctl_sanitize(j->error, err, sizeof(err));
		fprintf(stderr, "kbctl: job failed: %s\n", err);
		rc = KBCTL_EXIT_FAIL;
	}
	kb_wire_free(m);
	return rc;
}

static json_t *
check_json(const Keybroker__V1__DataKeyCheck *c)
{
	json_t *o = json_object();

	kbctl_jset(o, "tenant_id", kbctl_jstr(c->tenant_id));
	kbctl_jset(o, "environment", kbctl_jstr(c->environment));
	kbctl_jset(o, "version", json_integer(c->version));
	kbctl_jset(o, "key_id", kbctl_jstr(c->key_id));
	kbctl_jset(o, "problem", kbctl_jstr(c->problem));
	kbctl_jset(o, "message", kbctl_jstr(c->message));
	return o;
}

static void
check_line(const char *what, const Keybroker__V1__DataKeyCheck *c)
{
	char t[80], e[80], p[40], msg[600];

	kbctl_sanitize(c->tenant_id, t, sizeof(t));
	kbctl_sanitize(c->environment, e, sizeof(e));
	kbctl_sanitize(c->problem, p, sizeof(p));
	kbctl_sanitize(c->message, msg, sizeof(msg));
	printf("%s %s/%s version %u: %s: %s\n", what, t, e, c->version, p, msg);
}

/* Every failing row of the scan, page by page, with a progress bar on a
 * terminal. *fails is a JSON array of them (and *refs their references,
 * for repair); *checked the rows read. Returns -1 or an exit code. */
static int
scan(struct kbctl *k, const char *tenant, json_t *fails,
    Keybroker__V1__DataKeyRef ***refs, size_t *nrefs, uint64_t *checked)
{
	Keybroker__V1__VerifyDataKeysRequest req =
	    KEYBROKER__V1__VERIFY_DATA_KEYS_REQUEST__INIT;
	Keybroker__V1__VerifyDataKeysResponse *r;
	ProtobufCMessage *m = NULL;
	uint64_t total = 0;
	int tty = isatty(STDERR_FILENO), rc;
	char bar[128];
	size_t i;

	*checked = 0;
	req.tenant_id = (char *)(tenant != NULL ? tenant : "");
	req.limit = VERIFY_PAGE;
	for (;;) {
		if ((rc = kbctl_call(k, KB_METHOD_VERIFY_DATA_KEYS, &req.base,
		         &keybroker__v1__verify_data_keys_response__descriptor,
		         &m))
		    != KBCTL_EXIT_OK)
			return rc;
		r = (Keybroker__V1__VerifyDataKeysResponse *)m;
		if (req.after_env == 0 && req.after_version == 0)
			total = r->total;
		*checked += r->checked;
		for (i = 0; i < r->n_failures; i++) {
			Keybroker__V1__DataKeyCheck *c = r->failures[i];

			json_array_append_new(fails, check_json(c));
			if (!k->json)
				check_line("FAILED", c);
			if (refs != NULL) {
				Keybroker__V1__DataKeyRef *ref, **nv;

				nv = realloc(*refs, (*nrefs + 1) * sizeof(*nv));
				ref = malloc(sizeof(*ref));
				if (nv == NULL || ref == NULL) {
					free(nv != NULL ? NULL : ref);
					if (nv != NULL)
						*refs = nv;
					free(ref);
					kb_wire_free(m);
					fprintf(
					    stderr, "kbctl: out of memory\n");
					return KBCTL_EXIT_FAIL;
				}
				*refs = nv;
				keybroker__v1__data_key_ref__init(ref);
				ref->tenant_id = strdup(c->tenant_id);
				ref->environment = strdup(c->environment);
				ref->version = c->version;
				(*refs)[(*nrefs)++] = ref;
			}
		}
		if (tty) {
			fprintf(stderr, "\r%s",
			    kbctl_progress_bar(
			        *checked, total, bar, sizeof(bar)));
			fflush(stderr);
		}
		req.after_env = r->next_env;
		req.after_version = r->next_version;
		if (r->done) {
			kb_wire_free(m);
			break;
		}
		kb_wire_free(m);
		m = NULL;
	}
	if (tty)
		fputc('\n', stderr);
	return -1;
}

int
kbctl_cmd_verify(struct kbctl *k, const struct kbctl_args *a)
{
	json_t *fails = json_array(), *o;
	uint64_t checked = 0;
	size_t n;
	int rc;

	rc = scan(
	    k, a->argc > 0 ? a->argv[0] : NULL, fails, NULL, NULL, &checked);
	if (rc >= 0) {
		json_decref(fails);
		return rc;
	}
	n = json_array_size(fails);
	if (k->json) {
		o = json_object();
		kbctl_jset(o, "checked", json_integer((json_int_t)checked));
		kbctl_jset(o, "failed", json_integer((json_int_t)n));
		kbctl_jset(o, "failures", fails);
		rc = kbctl_json_print(o);
	} else {
		json_decref(fails);
		printf("%llu data keys checked in the token, %zu failed\n",
		    (unsigned long long)checked, n);
		rc = KBCTL_EXIT_OK;
	}
	return rc == KBCTL_EXIT_OK && n > 0 ? KBCTL_EXIT_FAIL : rc;
}

static void
refs_free(Keybroker__V1__DataKeyRef **v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		free(v[i]->tenant_id);
		free(v[i]->environment);
		free(v[i]);
	}
	free(v);
}

int
kbctl_cmd_repair(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__RepairDataKeysRequest req =
	    KEYBROKER__V1__REPAIR_DATA_KEYS_REQUEST__INIT;
	Keybroker__V1__RepairDataKeysResponse *r;
	Keybroker__V1__DataKeyRef **refs = NULL;
	ProtobufCMessage *m = NULL;
	json_t *fails = json_array(), *o, *rep, *unr;
	uint64_t checked = 0;
	size_t nrefs = 0, i;
	int rc;

	if (kbctl_flag(a, "--yes") == NULL && !kbctl_stdin_is_tty())
		return kbctl_confirm_or_yes(a, "", "", "");
	rc = scan(
	    k, a->argc > 0 ? a->argv[0] : NULL, fails, &refs, &nrefs, &checked);
	json_decref(fails);
	if (rc >= 0)
		goto out;
	if (nrefs > 0
	    && (rc = kbctl_confirm_or_yes(a,
	            "Repairing puts back "
	            "what has a healthy source and marks every other failing "
	            "data key "
	            "unrecoverable:\nits service then gets DATA_LOSS for it.\n",
	            "repair", "repair"))
	        >= 0)
		goto out;
	rep = json_array();
	unr = json_array();
	if (nrefs > 0) {
		req.rows = refs;
		req.n_rows = nrefs;
		if ((rc = kbctl_call(k, KB_METHOD_REPAIR_DATA_KEYS, &req.base,
		         &keybroker__v1__repair_data_keys_response__descriptor,
		         &m))
		    != KBCTL_EXIT_OK) {
			json_decref(rep);
			json_decref(unr);
			goto out;
		}
		r = (Keybroker__V1__RepairDataKeysResponse *)m;
		for (i = 0; i < r->n_repaired; i++) {
			json_array_append_new(rep, check_json(r->repaired[i]));
			if (!k->json)
				check_line("REPAIRED", r->repaired[i]);
		}
		for (i = 0; i < r->n_unrecoverable; i++) {
			json_array_append_new(
			    unr, check_json(r->unrecoverable[i]));
			if (!k->json)
				check_line(
				    "UNRECOVERABLE", r->unrecoverable[i]);
		}
	}
	i = json_array_size(unr);
	if (k->json) {
		o = json_object();
		kbctl_jset(o, "checked", json_integer((json_int_t)checked));
		kbctl_jset(o, "repaired", rep);
		kbctl_jset(o, "unrecoverable", unr);
		rc = kbctl_json_print(o);
	} else {
		printf(
		    "%llu data keys checked, %zu repaired, %zu unrecoverable\n",
		    (unsigned long long)checked, json_array_size(rep), i);
		json_decref(rep);
		json_decref(unr);
		rc = KBCTL_EXIT_OK;
	}
	if (rc == KBCTL_EXIT_OK && i > 0)
		rc = KBCTL_EXIT_FAIL;
out:
	kb_wire_free(m);
	refs_free(refs, nrefs);
	return rc;
}
