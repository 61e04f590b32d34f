/* SPDX-License-Identifier: Apache-2.0 */
/* test-doctor.c: the doctor's report (kb_doctor.c: exit statuses, text,
 * JSON) and its checks when the token cannot be opened (doctor.c). The
 * whole doctor against a real broker and token: test-doctor.sh. */
#include "harness.h"

#include <jansson.h>

#include "config.h"
#include "doctor.h"
#include "kb_doctor.h"
#include "kb_wire.h"
#include "store.h"

#define OK_ KEYBROKER__V1__FINDING_SEVERITY__FINDING_SEVERITY_OK
#define WARN_ KEYBROKER__V1__FINDING_SEVERITY__FINDING_SEVERITY_WARN
#define FAIL_ KEYBROKER__V1__FINDING_SEVERITY__FINDING_SEVERITY_FAIL

static int
exit_of(const Keybroker__V1__FindingSeverity *sev, size_t n)
{
	Keybroker__V1__DiagnosticsReport r =
	    KEYBROKER__V1__DIAGNOSTICS_REPORT__INIT;
	Keybroker__V1__Finding f[4], *fp[4];
	size_t i;

	for (i = 0; i < n; i++) {
		keybroker__v1__finding__init(&f[i]);
		f[i].severity = sev[i];
		fp[i] = &f[i];
	}
	r.findings = fp;
	r.n_findings = n;
	return kb_doctor_exit(&r);
}

static void
test_exit_status(void)
{
	Keybroker__V1__FindingSeverity ok[] = {OK_, OK_};
	Keybroker__V1__FindingSeverity warn[] = {OK_, WARN_, OK_};
	Keybroker__V1__FindingSeverity fail[] = {WARN_, FAIL_, OK_};
	Keybroker__V1__FindingSeverity odd[] = {
	    OK_, (Keybroker__V1__FindingSeverity)7};

	KBT_ASSERT_INT(exit_of(ok, 0), ==, KB_DOCTOR_EXIT_OK);
	KBT_ASSERT_INT(exit_of(ok, 2), ==, KB_DOCTOR_EXIT_OK);
	KBT_ASSERT_INT(exit_of(warn, 3), ==, KB_DOCTOR_EXIT_WARN);
	KBT_ASSERT_INT(exit_of(fail, 3), ==, KB_DOCTOR_EXIT_FAIL);
	/* A severity this build does not know (a newer broker's) is not
	 * "all is well". */
	KBT_ASSERT_INT(exit_of(odd, 2), ==, KB_DOCTOR_EXIT_FAIL);
	/* Distinct from kbctl's 1 (could not run) and 2 (usage). */
	KBT_ASSERT(KB_DOCTOR_EXIT_WARN != 1 && KB_DOCTOR_EXIT_WARN != 2);
	KBT_ASSERT(KB_DOCTOR_EXIT_FAIL != 1 && KB_DOCTOR_EXIT_FAIL != 2);
}

/* The report printed into a string (malloc'd). */
static char *
printed(const Keybroker__V1__DiagnosticsReport *r, int json)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (f == NULL || kb_doctor_print(f, r, json) != 0) {
		if (f != NULL)
			fclose(f);
		free(buf);
		return NULL;
	}
	fclose(f);
	return buf;
}

static void
test_print(void)
{
	Keybroker__V1__DiagnosticsReport r =
	    KEYBROKER__V1__DIAGNOSTICS_REPORT__INIT;
	Keybroker__V1__Finding f[2], *fp[2] = {&f[0], &f[1]};
	json_t *j;
	json_error_t je;
	char *text, *js;

	keybroker__v1__finding__init(&f[0]);
	f[0].severity = OK_;
	f[0].check = "token";
	f[0].subject = "token 'keybroker'";
	f[0].found = "present, logged in";
	f[0].remedy = "";
	keybroker__v1__finding__init(&f[1]);
	f[1].severity = WARN_;
	f[1].check = "cert";
	f[1].subject = "server certificate \"kb\"";
	f[1].found = "expires\\nin 9 d\x01";
	f[1].remedy = "deploy/pki.sh server";
	r.findings = fp;
	r.n_findings = 2;
	r.time_us = 1000000;
	r.broker_version = "9.9";
	KBT_ASSERT((text = printed(&r, 0)) != NULL);
	KBT_ASSERT_CONTAINS(text,
	    "OK    token      token 'keybroker': "
	    "present, logged in\n");
	KBT_ASSERT_CONTAINS(text, "WARN  cert       server certificate");
	KBT_ASSERT_CONTAINS(text, "-> deploy/pki.sh server\n");
	/* Control characters from the broker are not printed as they are. */
	KBT_ASSERT(strchr(text, '\x01') == NULL);
	KBT_ASSERT_CONTAINS(text,
	    "doctor: 1 ok, 1 warn, 0 fail (offline, "
	    "keybroker 9.9");
	free(text);
	KBT_ASSERT((js = printed(&r, 1)) != NULL);
	KBT_ASSERT((j = json_loads(js, 0, &je)) != NULL);
	KBT_ASSERT_STR(json_string_value(json_object_get(j, "status")), "warn");
	KBT_ASSERT_INT(
	    json_integer_value(json_object_get(j, "exit_status")), ==, 4);
	KBT_ASSERT_INT(json_array_size(json_object_get(j, "findings")), ==, 2);
	KBT_ASSERT_STR(
	    json_string_value(json_object_get(
	        json_array_get(json_object_get(j, "findings"), 1), "remedy")),
	    "deploy/pki.sh server");
	json_decref(j);
	free(js);
}

/* The token cannot be opened: the report says so and what to do, the key
 * check says it did not run, the rest still runs; a failure overall. */
static void
test_no_token(void)
{
	const char *dir = kbt_tmpdir();
	char text[2048], db[600];
	struct config *cfg = NULL;
	struct store *s = NULL;
	struct doctor_deps d;
	Keybroker__V1__DiagnosticsReport *r = NULL;
	size_t i;
	int token_fail = 0, keys_warn = 0, cert_fail = 0, disk = 0;

	snprintf(db, sizeof(db), "%s/kb.db", dir);
	snprintf(text, sizeof(text),
	    "tls_cert = %s/none.crt\ntls_key = %s/none.key\n"
	    "client_ca = %s/none-ca.crt\npin_file = %s/pin\n"
	    "database = %s\n",
	    dir, dir, dir, dir, db);
	KBT_ASSERT_OK(config_parse(text, strlen(text), dir, &cfg));
	KBT_ASSERT_OK(store_open(db, 2, &s));
	memset(&d, 0, sizeof(d));
	d.cfg = cfg;
	d.hsm_error = "no token matches pkcs11:token=keybroker";
	d.store = s;
	KBT_ASSERT_OK(doctor_run(&d, &r));
	for (i = 0; i < r->n_findings; i++) {
		const Keybroker__V1__Finding *f = r->findings[i];

		if (strcmp(f->check, "token") == 0 && f->severity == FAIL_
		    && strstr(f->found, "no token matches") != NULL
		    && strstr(f->remedy, "token_uri") != NULL)
			token_fail = 1;
		if (strcmp(f->check, "key") == 0 && f->severity == WARN_
		    && strstr(f->found, "not checked") != NULL)
			keys_warn = 1;
		if (strcmp(f->check, "cert") == 0 && f->severity == FAIL_
		    && strstr(f->found, "cannot be read") != NULL)
			cert_fail = 1;
		if (strcmp(f->check, "disk") == 0 && f->severity == OK_)
			disk = 1;
	}
	KBT_ASSERT(token_fail);
	KBT_ASSERT(keys_warn);
	KBT_ASSERT(cert_fail);
	KBT_ASSERT(disk);
	KBT_ASSERT(!r->online);
	KBT_ASSERT_INT(kb_doctor_exit(r), ==, KB_DOCTOR_EXIT_FAIL);
	kb_wire_free(&r->base);
	store_close(s);
	config_free(cfg);
	kbt_rmtree(dir);
}

static const struct kbt_case cases[] = {
    {"/doctor/exit-status", test_exit_status}, {"/doctor/print", test_print},
    {"/doctor/no-token", test_no_token}, {NULL, NULL}};

int
main(int argc, char **argv)
{
	return kbt_run(cases, argc, argv);
}
