/* SPDX-License-Identifier: Apache-2.0 */
/* rpc_quorum.c: quorum policies and approval requests (quorum.h). */
#include "rpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kb_wire.h"
#include "keybroker.pb-c.h"
#include "names.h"
#include "quorum.h"

#define QUORUM_MAX_APPROVALS 16

/* "a,b,c" into a new repeated string field (*v malloc'd). */
static int
list_split(const char *list, char ***v, size_t *n)
{
	const char *p = list;
	size_t cnt = 0, cap = 1, i;

	*v = NULL;
	*n = 0;
	if (*list == '\0')
		return 0;
	for (i = 0; list[i] != '\0'; i++)
		cap += list[i] == ',';
	if ((*v = calloc(cap, sizeof(**v))) == NULL)
		return -1;
	while (cnt < cap) {
		const char *end = strchr(p, ',');
		size_t l = end != NULL ? (size_t)(end - p) : strlen(p);

		if (((*v)[cnt] = strndup(p, l)) == NULL)
			break;
		cnt++;
		if (end == NULL)
			break;
		p = end + 1;
	}
	*n = cnt;
	return cnt == cap ? 0 : -1;
}

static Keybroker__V1__QuorumPolicy *
policy_msg(const struct store_quorum *q, const char *tenant, int inherited)
{
	Keybroker__V1__QuorumPolicy *m = malloc(sizeof(*m));
	char ops[STORE_OPS_MAX];

	if (m == NULL)
		return NULL;
	keybroker__v1__quorum_policy__init(m);
	m->tenant_id = rpc_strdup(tenant);
	m->approvals = q->approvals;
	m->update_time_us = q->update_time_us;
	m->updated_by = rpc_strdup(q->updated_by);
	m->inherited = inherited != 0;
	m->all_operations = q->operations[0] == '\0';
	quorum_operations_text(q, ops, sizeof(ops));
	if (list_split(q->approvers, &m->approvers, &m->n_approvers) != 0
	    || list_split(ops, &m->operations, &m->n_operations) != 0) {
		kb_wire_free(&m->base);
		return NULL;
	}
	return m;
}

static Keybroker__V1__ApprovalRequest *
request_msg(const struct store_approval_req *r, const struct store_approval *v,
    size_t n)
{
	Keybroker__V1__ApprovalRequest *m = malloc(sizeof(*m));
	size_t i;

	if (m == NULL)
		return NULL;
	keybroker__v1__approval_request__init(m);
	m->id = rpc_strdup(r->id);
	m->method = rpc_strdup(r->method);
	m->tenant_id = rpc_strdup(r->tenant);
	m->environment = rpc_strdup(r->env);
	m->arguments = rpc_strdup(r->args);
	m->requester = rpc_strdup(r->requester);
	m->create_time_us = r->create_time_us;
	m->expire_time_us = r->expire_time_us;
	m->state = rpc_strdup(r->state);
	m->approvals_needed = r->needed;
	m->result = rpc_strdup(r->result);
	m->update_time_us = r->update_time_us;
	m->proof_fingerprint = rpc_strdup(r->proof_fp);
	m->key_id = rpc_strdup(r->key_id);
	if (list_split(r->approvers, &m->approvers, &m->n_approvers) != 0)
		goto fail;
	if (n > 0 && (m->approvals = calloc(n, sizeof(*m->approvals))) == NULL)
		goto fail;
	for (i = 0; i < n; i++) {
		Keybroker__V1__Approval *a = malloc(sizeof(*a));

		if (a == NULL)
			goto fail;
		keybroker__v1__approval__init(a);
		a->approver = rpc_strdup(v[i].approver);
		a->decision = rpc_strdup(v[i].decision);
		a->time_us = v[i].time_us;
		m->approvals[m->n_approvals++] = a;
	}
	return m;
fail:
	kb_wire_free(&m->base);
	return NULL;
}

/* Reply with request `id` as it is now (its counted decisions). */
static enum kb_err
reply_request(struct rpc_ctx *c, const char *id, ProtobufCMessage **resp)
{
	struct store_approval_req *r;
	struct store_approval *v = NULL;
	size_t n = 0;
	enum kb_err e;

	if ((r = malloc(sizeof(*r))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	if ((e = quorum_request_load(c, id, r, &v, &n)) == KB_OK)
		e = rpc_reply(resp, request_msg(r, v, n));
	free(v);
	free(r);
	return e;
}

enum kb_err
rpc_quorum_set(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__SetQuorumRequest *in = (const void *)req;
	struct store_quorum q;
	struct store_tenant t;
	size_t i, n = 0, j;
	enum kb_err e;

	memset(&q, 0, sizeof(q));
	if (in->tenant_id[0] != '\0'
	    && (e = store_tenant_get(c->b->store, in->tenant_id, &t)) != KB_OK)
		return e;
	if (in->approvals > QUORUM_MAX_APPROVALS)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "approvals %u: at most %d", in->approvals,
		    QUORUM_MAX_APPROVALS);
	if (in->approvals == 0 && in->n_approvers > 0)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "approvers given with "
		    "approvals 0 (off): give --approvals M too");
	for (i = 0; i < in->n_approvers; i++) {
		const char *a = in->approvers[i];

		if (a[0] == '\0' || strchr(a, ',') != NULL
		    || names_check_display("approver", a) != KB_OK
		    || strlen(a) >= STORE_CN_MAX)
			return kb_errf(KB_ERR_INVALID_ARGUMENT,
			    "approver %zu: a "
			    "certificate CN (printable, no comma, under %d "
			    "bytes)",
			    i + 1, STORE_CN_MAX);
		for (j = 0; j < i; j++)
			if (strcmp(in->approvers[j], a) == 0)
				return kb_errf(KB_ERR_INVALID_ARGUMENT,
				    "approver "
				    "\"%s\" is listed twice",
				    a);
		n += (size_t)snprintf(q.approvers + n,
		    sizeof(q.approvers) > n ? sizeof(q.approvers) - n : 0,
		    "%s%s", i ? "," : "", a);
		if (n >= sizeof(q.approvers))
			return kb_errf(KB_ERR_INVALID_ARGUMENT,
			    "the approvers list "
			    "is longer than %zu bytes",
			    sizeof(q.approvers) - 1);
	}
	if (in->approvals == 0 && in->n_operations > 0)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "operations given with "
		    "approvals 0 (off): give --approvals M too");
	if ((e = quorum_operations_parse(in->operations, in->n_operations,
	         q.operations, sizeof(q.operations)))
	    != KB_OK)
		return e;
	/* Not counting the requester, M approvers must remain. */
	if (in->n_approvers > 0 && in->n_approvers <= in->approvals)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "%u approvals from %zu "
		    "approvers: the requester never counts, so list at least "
		    "%u",
		    in->approvals, in->n_approvers, in->approvals + 1);
	snprintf(q.tenant, sizeof(q.tenant), "%s", in->tenant_id);
	q.approvals = in->approvals;
	q.update_time_us = c->now_us;
	snprintf(q.updated_by, sizeof(q.updated_by), "%s", c->id->name);
	if ((e = quorum_policy_store(c->b, &q)) != KB_OK)
		return e;
	return rpc_reply(resp, policy_msg(&q, in->tenant_id, 0));
}

enum kb_err
rpc_quorum_get(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__GetQuorumRequest *in = (const void *)req;
	struct store_quorum q;
	struct store_tenant t;
	int inherited;
	enum kb_err e;

	if (in->tenant_id[0] != '\0'
	    && (e = store_tenant_get(c->b->store, in->tenant_id, &t)) != KB_OK)
		return e;
	if ((e = quorum_policy_effective(c->b, in->tenant_id, &q, &inherited))
	    != KB_OK)
		return e;
	return rpc_reply(resp, policy_msg(&q, in->tenant_id, inherited));
}

enum kb_err
rpc_approval_list(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__ListApprovalRequestsRequest *in =
	    (const void *)req;
	Keybroker__V1__ListApprovalRequestsResponse *m;
	const char *tenant = in->tenant_id[0] != '\0' ? in->tenant_id : NULL;
	struct store_approval_req *v = NULL;
	struct store_approval *a = NULL;
	size_t n = 0, i, na;
	enum kb_err e;

	quorum_expire_due(c, tenant);
	if ((e = store_approval_req_list(c->b->store, tenant, in->all, &v, &n))
	    != KB_OK)
		return e;
	if ((m = malloc(sizeof(*m))) == NULL) {
		free(v);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	keybroker__v1__list_approval_requests_response__init(m);
	if (n > 0 && (m->requests = calloc(n, sizeof(*m->requests))) == NULL)
		goto oom;
	for (i = 0; i < n; i++) {
		Keybroker__V1__ApprovalRequest *r;
		char id[sizeof(v[i].id)];

		/* Only what passes its seal and the caller's scope is shown. */
		snprintf(id, sizeof(id), "%s", v[i].id);
		if ((e = quorum_request_load(c, id, &v[i], &a, &na)) != KB_OK) {
			kb_err_clear();
			continue;
		}
		r = request_msg(&v[i], a, na);
		free(a);
		a = NULL;
		if (r == NULL)
			goto oom;
		m->requests[m->n_requests++] = r;
	}
	free(v);
	return rpc_reply(resp, m);
oom:
	free(v);
	kb_wire_free(&m->base);
	return kb_errf(KB_ERR_NOMEM, "out of memory");
}

enum kb_err
rpc_approval_get(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__ApprovalRequestRef *in = (const void *)req;

	return reply_request(c, in->id, resp);
}

static enum kb_err
decide(struct rpc_ctx *c, const ProtobufCMessage *req, int approve,
    ProtobufCMessage **resp)
{
	const Keybroker__V1__ApprovalRequestRef *in = (const void *)req;
	struct store_approval_req *r;
	char id[sizeof(r->id)];
	enum kb_err e;

	if ((r = calloc(1, sizeof(*r))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	e = quorum_decide(c, in->id, approve, r);
	snprintf(id, sizeof(id), "%s", r->id);
	free(r);
	if (e != KB_OK)
		return e;
	return reply_request(c, id, resp);
}

enum kb_err
rpc_approval_approve(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	return decide(c, req, 1, resp);
}

enum kb_err
rpc_approval_deny(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	return decide(c, req, 0, resp);
}
