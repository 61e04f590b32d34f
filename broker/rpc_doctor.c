/* SPDX-License-Identifier: Apache-2.0 */
/* rpc_doctor.c: RunDiagnostics, the running broker's doctor (doctor.c):
 * read-only checks of its own token, database and files. */
#include "rpc.h"

#include "doctor.h"
#include "keybroker.pb-c.h"

enum kb_err
rpc_doctor_run(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	Keybroker__V1__DiagnosticsReport *r = NULL;
	struct doctor_deps d = {0};
	enum kb_err e;

	(void)req;
	/* Platform-wide admins only: the method table's PLATFORM_ONLY. */
	d.cfg = c->b->cfg;
	d.hsm = c->b->hsm;
	d.store = c->b->store;
	d.online = 1;
	if ((e = doctor_run(&d, &r)) != KB_OK)
		return e;
	*resp = &r->base;
	return KB_OK;
}
