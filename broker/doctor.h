/* SPDX-License-Identifier: Apache-2.0 */
/* doctor.h: the broker's health report (kbctl doctor, keybrokerd
 * --doctor): one set of checks, run by a running broker (RunDiagnostics)
 * or offline on its configuration, its token and its database opened
 * read-only. Every check only reads; each finding says what was checked,
 * what was found and what to do about it (README "Doctor"). */
#ifndef KB_DOCTOR_CHECKS_H
#define KB_DOCTOR_CHECKS_H

#include <stdio.h>

#include "config.h"
#include "hsm.h"
#include "kb_err.h"
#include "keybroker.pb-c.h"
#include "store.h"

/* A certificate or CRL warns this many days before it runs out. */
#define DOCTOR_CERT_WARN_DAYS 30

/* What the checks read. */
struct doctor_deps {
	const struct config *cfg;
	struct hsm *hsm; /* NULL: the token could not be opened */
	const char *hsm_error; /* why, when hsm is NULL */
	struct store *store; /* NULL: the database could not be opened */
	const char *store_error; /* why, when store is NULL */
	int schema; /* the database's schema version (0: this build's) */
	int online; /* a running broker's own checks */
};

/* Run every check. *out (a DiagnosticsReport, free with kb_wire_free) is
 * set unless memory runs out (KB_ERR_NOMEM). */
enum kb_err doctor_run(
    const struct doctor_deps *d, Keybroker__V1__DiagnosticsReport **out);

/* keybrokerd --doctor: open the token and the database read-only (no
 * broker running is needed; nothing is written), run the checks, print
 * the report on `out` (text or JSON) and return the exit status
 * (kb_doctor.h); 1 when the doctor could not run, said on stderr. */
int doctor_offline(const struct config *cfg, int json, FILE *out);

#endif /* KB_DOCTOR_CHECKS_H */
