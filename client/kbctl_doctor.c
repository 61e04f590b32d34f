/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl_doctor.c: kbctl doctor, the running broker's health report
 * (RunDiagnostics), printed as keybrokerd --doctor prints its own. */
#include <stdio.h>

#include "kb_doctor.h"
#include "kbctl.h"
#include "kbctl_out.h"
#include "keybroker.pb-c.h"

int
kbctl_cmd_doctor(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__RunDiagnosticsRequest req =
	    KEYBROKER__V1__RUN_DIAGNOSTICS_REQUEST__INIT;
	const Keybroker__V1__DiagnosticsReport *r;
	ProtobufCMessage *m = NULL;
	int rc;

	(void)a;
	/* The call failing (no broker, refused) is exit 1, as for every
	 * command: distinct from the report's own statuses (kb_doctor.h). */
	if ((rc = kbctl_call(k, KB_METHOD_RUN_DIAGNOSTICS, &req.base,
	         &keybroker__v1__diagnostics_report__descriptor, &m))
	    != KBCTL_EXIT_OK)
		return rc == KBCTL_EXIT_REQUESTED ? KBCTL_EXIT_FAIL : rc;
	r = (const Keybroker__V1__DiagnosticsReport *)m;
	if (kb_doctor_print(stdout, r, k->json) != 0) {
		fprintf(stderr, "kbctl: out of memory\n");
		rc = KBCTL_EXIT_FAIL;
	} else {
		rc = kb_doctor_exit(r);
	}
	kb_wire_free(m);
	return rc;
}
