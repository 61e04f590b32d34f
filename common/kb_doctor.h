/* SPDX-License-Identifier: Apache-2.0 */
/* kb_doctor.h: a doctor's report (keybroker.v1.DiagnosticsReport) printed
 * the one way for kbctl doctor (online) and keybrokerd --doctor (offline),
 * and the exit status it means. */
#ifndef KB_DOCTOR_H
#define KB_DOCTOR_H

#include <stdio.h>

#include "keybroker.pb-c.h"

/* Exit statuses of both doctors (README "Doctor"); 1 and 2 keep their
 * usual meaning: the doctor could not run, a usage error. */
#define KB_DOCTOR_EXIT_OK 0 /* every finding ok */
#define KB_DOCTOR_EXIT_WARN 4 /* warnings, no failure */
#define KB_DOCTOR_EXIT_FAIL 5 /* at least one failure */

/* The exit status report `r` means. */
int kb_doctor_exit(const Keybroker__V1__DiagnosticsReport *r);

/* Print `r` on `f`: one block per finding and a summary line, or (json)
 * one JSON document. Control characters are replaced. Returns 0, or -1
 * when the document cannot be built (out of memory). */
int kb_doctor_print(
    FILE *f, const Keybroker__V1__DiagnosticsReport *r, int json);

#endif /* KB_DOCTOR_H */
