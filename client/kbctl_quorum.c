/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl_quorum.c: quorum policies and approval requests (M-of-N). */
#include "kbctl.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "kb_time.h"
#include "kbctl_out.h"
#include "keybroker.pb-c.h"

#define KB_METHOD_SET_QUORUM "/keybroker.v1.KeyBroker/SetQuorum"
#define KB_METHOD_GET_QUORUM "/keybroker.v1.KeyBroker/GetQuorum"
#define KB_METHOD_LIST_APPROVAL_REQUESTS                                       \
	"/keybroker.v1.KeyBroker/ListApprovalRequests"
#define KB_METHOD_GET_APPROVAL_REQUEST                                         \
	"/keybroker.v1.KeyBroker/GetApprovalRequest"
#define KB_METHOD_APPROVE_REQUEST "/keybroker.v1.KeyBroker/ApproveRequest"
#define KB_METHOD_DENY_REQUEST "/keybroker.v1.KeyBroker/DenyRequest"

/* ---- printing ---- */

static json_t *
request_json(const ProtobufCMessage *m)
{
	const Keybroker__V1__ApprovalRequest *x =
	    (const Keybroker__V1__ApprovalRequest *)m;
	json_t *o = json_object(), *arr = json_array();
	size_t i;

	kbctl_jset(o, "request_id", kbctl_jstr(x->id));
	kbctl_jset(o, "method", kbctl_jstr(x->method));
	kbctl_jset(o, "tenant_id", kbctl_jstr(x->tenant_id));
	kbctl_jset(o, "environment", kbctl_jstr(x->environment));
	kbctl_jset(o, "arguments", kbctl_jstr(x->arguments));
	kbctl_jset(o, "requester", kbctl_jstr(x->requester));
	kbctl_jset(o, "state", kbctl_jstr(x->state));
	kbctl_jset(o, "approvals_needed",
	    json_integer((json_int_t)x->approvals_needed));
	kbctl_jset(
	    o, "approvers", kbctl_jstr_array(x->approvers, x->n_approvers));
	for (i = 0; arr != NULL && i < x->n_approvals; i++) {
		json_t *a = json_object();

		kbctl_jset(
		    a, "approver", kbctl_jstr(x->approvals[i]->approver));
		kbctl_jset(
		    a, "decision", kbctl_jstr(x->approvals[i]->decision));
		kbctl_jset_time(a, "time", x->approvals[i]->time_us);
		json_array_append_new(arr, a);
	}
	kbctl_jset(o, "approvals", arr);
	kbctl_jset(o, "result", kbctl_jstr(x->result));
	kbctl_jset(o, "proof_fingerprint", kbctl_jstr(x->proof_fingerprint));
	kbctl_jset(o, "key_id", kbctl_jstr(x->key_id));
	kbctl_jset_time(o, "create_time", x->create_time_us);
	kbctl_jset_time(o, "expire_time", x->expire_time_us);
	kbctl_jset_time(o, "update_time", x->update_time_us);
	return o;
}

static unsigned
approvals_counted(const Keybroker__V1__ApprovalRequest *x)
{
	unsigned n = 0;
	size_t i;

	for (i = 0; i < x->n_approvals; i++)
		n += strcmp(x->approvals[i]->decision, "approve") == 0
		    && strcmp(x->approvals[i]->approver, x->requester) != 0;
	return n;
}

int
kbctl_print_request(const struct kbctl *k, const ProtobufCMessage *m)
{
	const Keybroker__V1__ApprovalRequest *x =
	    (const Keybroker__V1__ApprovalRequest *)m;
	char buf[1024], t[40];
	size_t i;

	if (k->json)
		return kbctl_json_print(request_json(m));
	kbctl_kv("request_id", x->id);
	kbctl_kv("state", x->state);
	kbctl_kv("method", x->method);
	kbctl_kv("tenant_id", kbctl_or_dash(x->tenant_id));
	kbctl_kv("environment", kbctl_or_dash(x->environment));
	kbctl_kv("arguments", kbctl_or_dash(x->arguments));
	kbctl_kv("requester", x->requester);
	snprintf(buf, sizeof(buf), "%u of %u", approvals_counted(x),
	    x->approvals_needed);
	kbctl_kv("approvals", buf);
	kbctl_kv("approvers",
	    x->n_approvers > 0
	        ? kbctl_join(x->approvers, x->n_approvers, buf, sizeof(buf))
	        : "any admin of the tenant");
	for (i = 0; i < x->n_approvals; i++) {
		snprintf(buf, sizeof(buf), "%s %s at %s",
		    x->approvals[i]->approver, x->approvals[i]->decision,
		    kb_time_format(x->approvals[i]->time_us, t, sizeof(t)));
		kbctl_kv("decision", buf);
	}
	if (x->proof_fingerprint[0] != '\0')
		kbctl_kv("proof_fingerprint", x->proof_fingerprint);
	if (x->key_id[0] != '\0')
		kbctl_kv("key_id", x->key_id);
	kbctl_kv("created", kb_time_format(x->create_time_us, t, sizeof(t)));
	kbctl_kv("expires", kb_time_format(x->expire_time_us, t, sizeof(t)));
	kbctl_kv("result", kbctl_or_dash(x->result));
	return KBCTL_EXIT_OK;
}

int
kbctl_request_show(struct kbctl *k, const char *id)
{
	Keybroker__V1__ApprovalRequestRef req =
	    KEYBROKER__V1__APPROVAL_REQUEST_REF__INIT;

	req.id = (char *)id;
	return kbctl_call_print(k, KB_METHOD_GET_APPROVAL_REQUEST, &req.base,
	    &keybroker__v1__approval_request__descriptor, kbctl_print_request);
}

static json_t *
policy_json(const ProtobufCMessage *m)
{
	const Keybroker__V1__QuorumPolicy *x =
	    (const Keybroker__V1__QuorumPolicy *)m;
	json_t *o = json_object();

	kbctl_jset(o, "tenant_id", kbctl_jstr(x->tenant_id));
	kbctl_jset(o, "platform", json_boolean(x->tenant_id[0] == '\0'));
	kbctl_jset(o, "approvals", json_integer((json_int_t)x->approvals));
	kbctl_jset(
	    o, "approvers", kbctl_jstr_array(x->approvers, x->n_approvers));
	kbctl_jset(
	    o, "operations", kbctl_jstr_array(x->operations, x->n_operations));
	kbctl_jset(o, "all_operations", json_boolean(x->all_operations));
	kbctl_jset(o, "inherited", json_boolean(x->inherited));
	kbctl_jset(o, "updated_by", kbctl_jstr(x->updated_by));
	kbctl_jset_time(o, "update_time", x->update_time_us);
	return o;
}

static int
print_policy(const struct kbctl *k, const ProtobufCMessage *m)
{
	const Keybroker__V1__QuorumPolicy *x =
	    (const Keybroker__V1__QuorumPolicy *)m;
	char buf[1024], t[40];

	if (k->json)
		return kbctl_json_print(policy_json(m));
	kbctl_kv("scope", x->tenant_id[0] ? x->tenant_id : "platform");
	if (x->approvals == 0)
		kbctl_kv("quorum", "off");
	else {
		snprintf(buf, sizeof(buf), "%u approval(s)", x->approvals);
		kbctl_kv("quorum", buf);
	}
	kbctl_kv("approvers",
	    x->n_approvers > 0
	        ? kbctl_join(x->approvers, x->n_approvers, buf, sizeof(buf))
	        : "any admin of the tenant");
	if (x->all_operations)
		kbctl_kv("operations", "all");
	else
		kbctl_kv("operations",
		    kbctl_join(
		        x->operations, x->n_operations, buf, sizeof(buf)));
	if (x->inherited)
		kbctl_kv("from", "the platform default");
	kbctl_kv("updated_by", kbctl_or_dash(x->updated_by));
	kbctl_kv("updated",
	    x->update_time_us ? kb_time_format(x->update_time_us, t, sizeof(t))
	                      : "-");
	return KBCTL_EXIT_OK;
}

/* ---- quorum set | show ---- */

int
kbctl_cmd_quorum_set(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__SetQuorumRequest req =
	    KEYBROKER__V1__SET_QUORUM_REQUEST__INIT;
	const char *m = kbctl_flag(a, "--approvals");
	const char *list = kbctl_flag(a, "--approvers");
	const char *ops = kbctl_flag(a, "--operations");
	int platform = kbctl_flag(a, "--platform") != NULL;
	char *copy = NULL, *ocopy = NULL, *p, *save = NULL, *v[64], *o[64];
	unsigned long n;
	char *end;
	int rc;

	if (platform == (a->argc == 1))
		return kbctl_usage_error(
		    a, "give TENANT or --platform (not both)");
	n = strtoul(m, &end, 10);
	if (end == m || *end != '\0' || m[0] == '-' || n > 16)
		return kbctl_usage_error(a,
		    "bad --approvals \"%s\": a number from "
		    "0 (off) to 16",
		    m);
	req.tenant_id = platform ? (char *)"" : (char *)a->argv[0];
	req.approvals = (uint32_t)n;
	if (list != NULL && list[0] != '\0') {
		if ((copy = strdup(list)) == NULL)
			return kbctl_err(KB_ERR_NOMEM, KBCTL_EXIT_FAIL);
		for (p = strtok_r(copy, ",", &save); p != NULL;
		     p = strtok_r(NULL, ",", &save)) {
			if (req.n_approvers == sizeof(v) / sizeof(v[0])) {
				free(copy);
				return kbctl_usage_error(
				    a, "at most 64 approvers");
			}
			v[req.n_approvers++] = p;
		}
		req.approvers = v;
	}
	if (ops != NULL && ops[0] != '\0') {
		if ((ocopy = strdup(ops)) == NULL) {
			free(copy);
			return kbctl_err(KB_ERR_NOMEM, KBCTL_EXIT_FAIL);
		}
		for (p = strtok_r(ocopy, ",", &save); p != NULL;
		     p = strtok_r(NULL, ",", &save)) {
			if (req.n_operations == sizeof(o) / sizeof(o[0])) {
				free(copy);
				free(ocopy);
				return kbctl_usage_error(
				    a, "at most 64 operations");
			}
			o[req.n_operations++] = p;
		}
		req.operations = o;
	}
	rc = kbctl_call_print(k, KB_METHOD_SET_QUORUM, &req.base,
	    &keybroker__v1__quorum_policy__descriptor, print_policy);
	free(copy);
	free(ocopy);
	return rc;
}

int
kbctl_cmd_quorum_show(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__GetQuorumRequest req =
	    KEYBROKER__V1__GET_QUORUM_REQUEST__INIT;
	int platform = kbctl_flag(a, "--platform") != NULL;

	if (platform == (a->argc == 1))
		return kbctl_usage_error(
		    a, "give TENANT or --platform (not both)");
	req.tenant_id = platform ? (char *)"" : (char *)a->argv[0];
	return kbctl_call_print(k, KB_METHOD_GET_QUORUM, &req.base,
	    &keybroker__v1__quorum_policy__descriptor, print_policy);
}

/* ---- approvals list | show | approve | deny | watch ---- */

static const char *const request_headers[] = {
    "ID", "STATE", "METHOD", "TENANT", "REQUESTER", "APPROVALS", "EXPIRES"};

static int
request_row(struct kbctl_table *t, const ProtobufCMessage *m)
{
	const Keybroker__V1__ApprovalRequest *x =
	    (const Keybroker__V1__ApprovalRequest *)m;
	char n[32], e[40];
	const char *cells[7];

	snprintf(
	    n, sizeof(n), "%u/%u", approvals_counted(x), x->approvals_needed);
	cells[0] = x->id;
	cells[1] = x->state;
	cells[2] = x->method;
	cells[3] = kbctl_or_dash(x->tenant_id);
	cells[4] = x->requester;
	cells[5] = n;
	cells[6] = kb_time_format(x->expire_time_us, e, sizeof(e));
	return kbctl_table_add(t, cells);
}

int
kbctl_cmd_approvals_list(struct kbctl *k, const struct kbctl_args *a)
{
	static const struct kbctl_list_fmt fmt = {
	    "requests", request_headers, 7, request_row, request_json};
	Keybroker__V1__ListApprovalRequestsRequest req =
	    KEYBROKER__V1__LIST_APPROVAL_REQUESTS_REQUEST__INIT;
	const char *t = kbctl_flag(a, "--tenant");

	req.tenant_id = t != NULL ? (char *)t : (char *)"";
	req.all = kbctl_flag(a, "--all") != NULL;
	return kbctl_call_list(k, KB_METHOD_LIST_APPROVAL_REQUESTS, &req.base,
	    &keybroker__v1__list_approval_requests_response__descriptor, &fmt);
}

int
kbctl_cmd_approvals_show(struct kbctl *k, const struct kbctl_args *a)
{
	return kbctl_request_show(k, a->argv[0]);
}

static int
decide(struct kbctl *k, const struct kbctl_args *a, const char *method)
{
	Keybroker__V1__ApprovalRequestRef req =
	    KEYBROKER__V1__APPROVAL_REQUEST_REF__INIT;

	req.id = (char *)a->argv[0];
	return kbctl_call_print(k, method, &req.base,
	    &keybroker__v1__approval_request__descriptor, kbctl_print_request);
}

int
kbctl_cmd_approvals_approve(struct kbctl *k, const struct kbctl_args *a)
{
	return decide(k, a, KB_METHOD_APPROVE_REQUEST);
}

int
kbctl_cmd_approvals_deny(struct kbctl *k, const struct kbctl_args *a)
{
	return decide(k, a, KB_METHOD_DENY_REQUEST);
}

/* One line per new request (--json: one compact document per line). */
static int
watch_print(struct kbctl *k, const char *id)
{
	Keybroker__V1__ApprovalRequestRef req =
	    KEYBROKER__V1__APPROVAL_REQUEST_REF__INIT;
	Keybroker__V1__ApprovalRequest *x = NULL;
	ProtobufCMessage *m = NULL;
	char e[40];
	int rc;

	req.id = (char *)id;
	if ((rc = kbctl_call(k, KB_METHOD_GET_APPROVAL_REQUEST, &req.base,
	         &keybroker__v1__approval_request__descriptor, &m))
	    != KBCTL_EXIT_OK)
		return rc;
	x = (Keybroker__V1__ApprovalRequest *)m;
	if (k->json) {
		json_t *o = request_json(m);

		json_dumpf(o, stdout, JSON_COMPACT);
		json_decref(o);
		fputc('\n', stdout);
	} else {
		printf(
		    "%s %s %s tenant=%s by %s: %u approval(s) needed, expires "
		    "%s\n",
		    x->id, x->state, x->method, kbctl_or_dash(x->tenant_id),
		    x->requester, x->approvals_needed,
		    kb_time_format(x->expire_time_us, e, sizeof(e)));
	}
	fflush(stdout);
	kb_wire_free(m);
	return KBCTL_EXIT_OK;
}

/* approvals watch's handler: the request an event names, printed. */
static int
watch_event(struct kbctl *k, const Keybroker__V1__Event *ev, void *arg)
{
	int rc;

	(void)arg;
	rc = watch_print(k, ev->request_id);
	return rc == KBCTL_EXIT_OK ? -1 : rc;
}

int
kbctl_cmd_approvals_watch(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__EventFilter f = KEYBROKER__V1__EVENT_FILTER__INIT;
	const char *t = kbctl_flag(a, "--tenant");

	/* Every approval request begins as its call's "requested" event.
	 * From now on; a broken stream resumes after the last event seen,
	 * on the next broker that answers. */
	f.result = (char *)"requested";
	if (t != NULL)
		f.tenant_id = (char *)t;
	return kbctl_events_follow(k, &f, 0, 1, watch_event, NULL);
}
