/* SPDX-License-Identifier: Apache-2.0 */
/* kb_doctor.c: a doctor's report as text or JSON, and its exit status. */
#include "kb_doctor.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "kb_time.h"

static const char *
sev_name(Keybroker__V1__FindingSeverity s)
{
	switch (s) {
	case KEYBROKER__V1__FINDING_SEVERITY__FINDING_SEVERITY_OK: return "ok";
	case KEYBROKER__V1__FINDING_SEVERITY__FINDING_SEVERITY_WARN:
		return "warn";
	case KEYBROKER__V1__FINDING_SEVERITY__FINDING_SEVERITY_FAIL:
		return "fail";
	case KEYBROKER__V1__FINDING_SEVERITY__FINDING_SEVERITY_UNSPECIFIED:
	case _KEYBROKER__V1__FINDING_SEVERITY_IS_INT_SIZE: break;
	}
	/* Unknown to this build (a newer broker): not "all is well". */
	return "fail";
}

static int
sev_rank(Keybroker__V1__FindingSeverity s)
{
	const char *n = sev_name(s);

	return strcmp(n, "ok") == 0 ? 0 : strcmp(n, "warn") == 0 ? 1 : 2;
}

int
kb_doctor_exit(const Keybroker__V1__DiagnosticsReport *r)
{
	size_t i;
	int worst = 0, k;

	for (i = 0; i < r->n_findings; i++)
		if ((k = sev_rank(r->findings[i]->severity)) > worst)
			worst = k;
	return worst == 0 ? KB_DOCTOR_EXIT_OK
	    : worst == 1  ? KB_DOCTOR_EXIT_WARN
	                  : KB_DOCTOR_EXIT_FAIL;
}

/* `s` with control characters as '?', into buf. */
static const char *
clean(const char *s, char *buf, size_t len)
{
	size_t i;

	snprintf(buf, len, "%s", s != NULL ? s : "");
	for (i = 0; buf[i] != '\0'; i++)
		if ((unsigned char)buf[i] < 0x20 || buf[i] == 0x7f)
			buf[i] = '?';
	return buf;
}

static int
print_json(
    FILE *f, const Keybroker__V1__DiagnosticsReport *r, const size_t count[3])
{
	static const char *const status[] = {"ok", "warn", "fail"};
	json_t *o = json_object(), *a = json_array(), *x;
	char t[40], b1[1200], b2[1200], b3[4200], b4[1200];
	size_t i;
	int rc = -1, ex = kb_doctor_exit(r);

	if (o == NULL || a == NULL)
		goto out;
	for (i = 0; i < r->n_findings; i++) {
		const Keybroker__V1__Finding *fi = r->findings[i];

		x = json_pack("{s:s, s:s, s:s, s:s, s:s}", "severity",
		    sev_name(fi->severity), "check",
		    clean(fi->check, b1, sizeof(b1)), "subject",
		    clean(fi->subject, b2, sizeof(b2)), "found",
		    clean(fi->found, b3, sizeof(b3)), "remedy",
		    clean(fi->remedy, b4, sizeof(b4)));
		if (x == NULL || json_array_append_new(a, x) != 0)
			goto out;
	}
	x = json_pack("{s:i, s:i, s:i}", "ok", (json_int_t)count[0], "warn",
	    (json_int_t)count[1], "fail", (json_int_t)count[2]);
	if (x == NULL || json_object_set_new(o, "summary", x) != 0
	    || json_object_set_new(o, "status",
	           json_string(status[ex == KB_DOCTOR_EXIT_OK ? 0
	                   : ex == KB_DOCTOR_EXIT_WARN        ? 1
	                                                      : 2]))
	        != 0
	    || json_object_set_new(o, "exit_status", json_integer(ex)) != 0
	    || json_object_set_new(
	           o, "mode", json_string(r->online ? "online" : "offline"))
	        != 0
	    || json_object_set_new(o, "time",
	           json_string(kb_time_format(r->time_us, t, sizeof(t))))
	        != 0
	    || json_object_set_new(o, "broker_version",
	           json_string(clean(r->broker_version, b1, sizeof(b1))))
	        != 0
	    || json_object_set_new(o, "findings", a) != 0) {
		a = NULL;
		goto out;
	}
	a = NULL;
	if (json_dumpf(o, f, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0)
		goto out;
	fputc('\n', f);
	rc = 0;
out:
	json_decref(a);
	json_decref(o);
	return rc;
}

int
kb_doctor_print(FILE *f, const Keybroker__V1__DiagnosticsReport *r, int json)
{
	static const char *const tag[] = {"OK  ", "WARN", "FAIL"};
	char b1[1200], b2[1200], b3[4200], t[40];
	size_t i, count[3] = {0, 0, 0};

	for (i = 0; i < r->n_findings; i++)
		count[sev_rank(r->findings[i]->severity)]++;
	if (json)
		return print_json(f, r, count);
	for (i = 0; i < r->n_findings; i++) {
		const Keybroker__V1__Finding *fi = r->findings[i];

		fprintf(f, "%s  %-10s %s: %s\n", tag[sev_rank(fi->severity)],
		    clean(fi->check, b1, sizeof(b1)),
		    clean(fi->subject, b2, sizeof(b2)),
		    clean(fi->found, b3, sizeof(b3)));
		if (fi->remedy != NULL && fi->remedy[0] != '\0')
			fprintf(f, "      %-10s -> %s\n", "",
			    clean(fi->remedy, b3, sizeof(b3)));
	}
	fprintf(f,
	    "doctor: %zu ok, %zu warn, %zu fail (%s, keybroker %s, %s)\n",
	    count[0], count[1], count[2], r->online ? "online" : "offline",
	    clean(r->broker_version, b1, sizeof(b1)),
	    kb_time_format(r->time_us, t, sizeof(t)));
	return 0;
}
