/* SPDX-License-Identifier: Apache-2.0 */
/* rpc_clock.c: policy time's state, and the confirmation of a forward
 * clock jump that lets the sweeper delete again. */
#include "rpc.h"

#include <stdlib.h>

#include "keybroker.pb-c.h"
#include "timemark.h"

static enum kb_err
reply_state(ProtobufCMessage **resp, const struct timemark_state *st)
{
	Keybroker__V1__ClockState *m = malloc(sizeof(*m));

	if (m != NULL) {
		keybroker__v1__clock_state__init(m);
		m->policy_time_us = st->now_us;
		m->wall_time_us = st->wall_us;
		m->mark_time_us = st->mark_us;
		m->jump_limit_s = st->limit_s;
		m->sweeper_paused = st->jump_from_us != 0;
		m->jump_from_time_us = st->jump_from_us;
		m->jump_to_time_us = st->jump_to_us;
		m->confirm_time_us = st->confirm_time_us;
		m->confirmed_by = rpc_strdup(st->confirm_by);
	}
	return rpc_reply(resp, m);
}

enum kb_err
rpc_clock_get(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	struct timemark_state st;
	enum kb_err e;

	(void)req;
	/* The state is shown even when the mark cannot be stored now. */
	if ((e = timemark_state(c->b->timemark, &st)) != KB_OK)
		kb_err_clear();
	return reply_state(resp, &st);
}

enum kb_err
rpc_clock_confirm(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	struct timemark_state st;
	enum kb_err e;

	(void)req;
	/* Platform-wide admins only: the method table's PLATFORM_ONLY. */
	if ((e = timemark_confirm(c->b->timemark, c->id->name, &st)) != KB_OK)
		return e;
	return reply_state(resp, &st);
}
