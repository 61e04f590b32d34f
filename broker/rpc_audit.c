/* SPDX-License-Identifier: Apache-2.0 */
/* rpc_audit.c: auditors (and admins, for their tenants) read, follow and
 * fetch the material to verify the audit log. */
#include "rpc.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit.h"
#include "kb_wire.h"
#include "keybroker.pb-c.h"
#include "keys.h"
#include "names.h"
#include "scope.h"

#define PAGE_DEFAULT 100
#define PAGE_MAX 1000
#define TAIL_BATCH 256
#define TAIL_WAIT_MS 500

/* An audit filter from the request, with the caller's tenant limits. */
struct filter {
	struct audit_filter f;
	const char *tenants[IDENTITY_MAX_SCOPES];
};

static enum kb_err
make_filter(
    struct rpc_ctx *c, const Keybroker__V1__EventFilter *in, struct filter *out)
{
	static const Keybroker__V1__EventFilter empty =
	    KEYBROKER__V1__EVENT_FILTER__INIT;
	const struct identity *id = c->id;
	enum kb_err e;
	size_t i;

	if (in == NULL)
		in = &empty;
	memset(out, 0, sizeof(*out));
	out->f.since_us = in->since_us;
	out->f.until_us = in->until_us;
	out->f.tenant = in->tenant_id;
	out->f.env = in->environment;
	out->f.method = in->method;
	out->f.actor = in->actor;
	out->f.result = in->result;
	out->f.request_id = in->request_id;
	if (in->tenant_id[0] != '\0'
	    && (e = names_check_id("tenant id", in->tenant_id)) != KB_OK)
		return e;
	if (in->environment[0] != '\0'
	    && (e = names_check_id("environment name", in->environment))
	        != KB_OK)
		return e;
	if (in->result[0] != '\0' && strcmp(in->result, "ok") != 0
	    && strcmp(in->result, "denied") != 0
	    && strcmp(in->result, "error") != 0
	    && strcmp(in->result, "started") != 0
	    && strcmp(in->result, "requested") != 0)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "result filter \"%.20s\" "
		    "must be ok, denied, error, started or requested",
		    in->result);
	if (in->until_us != 0 && in->since_us > in->until_us)
		return kb_errf(KB_ERR_INVALID_ARGUMENT, "since is after until");
	/* A tenant-limited admin reads only its tenants' events. */
	if (id->role == ROLE_ADMIN && id->nscopes > 0) {
		if (in->tenant_id[0] != '\0')
			return scope_tenant_access(id, in->tenant_id);
		for (i = 0; i < id->nscopes; i++)
			out->tenants[i] = id->scopes[i].tenant;
		out->f.tenants = out->tenants;
		out->f.ntenants = id->nscopes;
	}
	return KB_OK;
}

static Keybroker__V1__Event *
event_msg(const struct audit_event *ev)
{
	Keybroker__V1__Event *m = malloc(sizeof(*m));

	if (m == NULL)
		return NULL;
	keybroker__v1__event__init(m);
	m->seq = ev->seq;
	m->time_us = ev->time_us;
	m->actor = rpc_strdup(ev->actor);
	m->role = rpc_strdup(ev->role);
	m->peer = rpc_strdup(ev->peer);
	m->method = rpc_strdup(ev->method);
	m->tenant_id = rpc_strdup(ev->tenant);
	m->environment = rpc_strdup(ev->env);
	m->key_id = rpc_strdup(ev->key_id);
	m->result = rpc_strdup(ev->result);
	m->reason = rpc_strdup(ev->reason);
	m->request_id = rpc_strdup(ev->request_id);
	if ((m->hash.data = malloc(KB_AUDIT_HASH_LEN)) != NULL) {
		memcpy(m->hash.data, ev->hash, KB_AUDIT_HASH_LEN);
		m->hash.len = KB_AUDIT_HASH_LEN;
	}
	return m;
}

enum kb_err
rpc_audit_list(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__ListEventsRequest *in = (const void *)req;
	Keybroker__V1__ListEventsResponse *out;
	struct audit_event *v = NULL;
	struct filter f;
	unsigned limit;
	size_t n = 0, i;
	int more = 0;
	enum kb_err e;

	if (in->page_size > PAGE_MAX)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "page_size %u is larger "
		    "than the maximum of %d",
		    in->page_size, PAGE_MAX);
	limit = in->page_size ? in->page_size : PAGE_DEFAULT;
	if ((e = make_filter(c, in->filter, &f)) != KB_OK
	    || (e = audit_list(
	            c->b->audit, &f.f, in->after_seq, limit, &v, &n, &more))
	        != KB_OK)
		return e;
	if ((out = malloc(sizeof(*out))) == NULL) {
		free(v);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	keybroker__v1__list_events_response__init(out);
	*resp = &out->base;
	if (n > 0 && (out->events = calloc(n, sizeof(void *))) == NULL) {
		free(v);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	for (i = 0; i < n; i++) {
		if ((out->events[i] = event_msg(&v[i])) == NULL) {
			free(v);
			return kb_errf(KB_ERR_NOMEM, "out of memory");
		}
		out->n_events++;
	}
	out->more = more;
	out->next_after_seq = n > 0 ? v[n - 1].seq : in->after_seq;
	free(v);
	return KB_OK;
}

enum kb_err
rpc_audit_tail(struct rpc_ctx *c, const ProtobufCMessage *req,
    const struct rpc_stream_ops *ops, struct rpc_stream *st)
{
	const Keybroker__V1__TailEventsRequest *in = (const void *)req;
	struct audit_event *v = NULL;
	struct filter f;
	uint64_t cursor, head;
	size_t n, i;
	int more;
	enum kb_err e;

	if ((e = make_filter(c, in->filter, &f)) != KB_OK)
		return e;
	c->stream_open = 1;
	if (in->after_seq != 0)
		cursor = in->after_seq;
	else if (in->from_start)
		cursor = 0;
	else
		cursor = audit_last_seq(c->b->audit);
	for (;;) {
		if (ops->done(st) || audit_closing(c->b->audit))
			return kb_errf(KB_ERR_UNAVAILABLE,
			    "the stream ended (client "
			    "gone or broker stopping); resume with "
			    "after_seq=%" PRIu64,
			    cursor);
		/* Note the head before reading, so a stretch of events that
		 * match nothing is skipped once, not re-read forever. */
		head = audit_last_seq(c->b->audit);
		if ((e = audit_list(
		         c->b->audit, &f.f, cursor, TAIL_BATCH, &v, &n, &more))
		    != KB_OK)
			return e;
		for (i = 0; i < n; i++) {
			Keybroker__V1__Event *m = event_msg(&v[i]);

			if (m == NULL) {
				free(v);
				return kb_errf(KB_ERR_NOMEM, "out of memory");
			}
			e = ops->send(st, &m->base);
			kb_wire_free(&m->base);
			if (e != KB_OK) {
				free(v);
				return kb_errf(KB_ERR_CANCELLED,
				    "the client went "
				    "away after event %" PRIu64,
				    cursor);
			}
			cursor = v[i].seq;
		}
		free(v);
		v = NULL;
		if (more)
			continue;
		if (head > cursor)
			cursor = head;
		(void)audit_wait(c->b->audit, cursor, TAIL_WAIT_MS);
	}
}

enum kb_err
rpc_audit_checkpoints(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__ListCheckpointsRequest *in = (const void *)req;
	Keybroker__V1__ListCheckpointsResponse *out;
	struct audit_checkpoint *v = NULL;
	unsigned limit;
	size_t n = 0, i;
	int more = 0;
	enum kb_err e;

	if (in->page_size > PAGE_MAX)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "page_size %u is larger "
		    "than the maximum of %d",
		    in->page_size, PAGE_MAX);
	limit = in->page_size ? in->page_size : PAGE_DEFAULT;
	if ((e = audit_list_checkpoints(
	         c->b->audit, in->after_seq, limit, &v, &n, &more))
	    != KB_OK)
		return e;
	if ((out = malloc(sizeof(*out))) == NULL) {
		free(v);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	keybroker__v1__list_checkpoints_response__init(out);
	*resp = &out->base;
	out->more = more;
	if (n > 0 && (out->checkpoints = calloc(n, sizeof(void *))) == NULL) {
		free(v);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	for (i = 0; i < n; i++) {
		Keybroker__V1__Checkpoint *m = malloc(sizeof(*m));

		if (m == NULL) {
			free(v);
			return kb_errf(KB_ERR_NOMEM, "out of memory");
		}
		keybroker__v1__checkpoint__init(m);
		out->checkpoints[out->n_checkpoints++] = m;
		m->seq = v[i].seq;
		m->time_us = v[i].time_us;
		m->key_id = rpc_strdup(v[i].key_id);
		if ((m->head_hash.data = malloc(KB_AUDIT_HASH_LEN)) != NULL) {
			memcpy(m->head_hash.data, v[i].head_hash,
			    KB_AUDIT_HASH_LEN);
			m->head_hash.len = KB_AUDIT_HASH_LEN;
		}
		if (v[i].prev_sig_len > 0
		    && (m->prev_signature.data = malloc(v[i].prev_sig_len))
		        != NULL) {
			memcpy(m->prev_signature.data, v[i].prev_sig,
			    v[i].prev_sig_len);
			m->prev_signature.len = v[i].prev_sig_len;
		}
		if (v[i].sig_len > 0
		    && (m->signature.data = malloc(v[i].sig_len)) != NULL) {
			memcpy(m->signature.data, v[i].sig, v[i].sig_len);
			m->signature.len = v[i].sig_len;
		}
	}
	free(v);
	return KB_OK;
}

/* One audit key as the API shows it (its public half from the token). */
static enum kb_err
audit_key_msg(
    struct rpc_ctx *c, const struct store_key *k, Keybroker__V1__AuditKey **out)
{
	Keybroker__V1__AuditKey *m;
	char *pem = NULL;
	enum kb_err e;

	*out = NULL;
	if ((e = keys_public_pem(c->b, k->id, &pem)) != KB_OK)
		return e;
	if ((m = malloc(sizeof(*m))) == NULL) {
		free(pem);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	keybroker__v1__audit_key__init(m);
	m->key_id = rpc_strdup(k->id);
	m->public_key_pem = pem;
	m->algorithm = rpc_strdup(KB_AUDIT_SIG_ALG);
	m->fingerprint = rpc_strdup(k->fingerprint);
	m->state = rpc_strdup(k->state);
	m->create_time_us = k->create_time_us;
	*out = m;
	return KB_OK;
}

enum kb_err
rpc_audit_key(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	Keybroker__V1__AuditKey *out;
	char id[KB_AUDIT_KEY_ID_MAX];
	struct store_key k;
	enum kb_err e;

	(void)req;
	/* The key that signs now, which a rotation may have changed. */
	audit_signing_key(c->b->audit, id);
	if ((e = store_key_get(c->b->store, id, &k)) != KB_OK
	    || (e = audit_key_msg(c, &k, &out)) != KB_OK)
		return e;
	free(out->state);
	out->state = rpc_strdup("active");
	*resp = &out->base;
	return KB_OK;
}

enum kb_err
rpc_audit_keys(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	Keybroker__V1__ListAuditKeysResponse *out;
	struct store_key *v = NULL;
	size_t n = 0, i;
	enum kb_err e;

	(void)req;
	if ((e = store_keys_by_purpose(c->b->store, "audit", &v, &n)) != KB_OK)
		return e;
	if ((out = malloc(sizeof(*out))) == NULL) {
		free(v);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	keybroker__v1__list_audit_keys_response__init(out);
	*resp = &out->base;
	if (n > 0 && (out->keys = calloc(n, sizeof(*out->keys))) == NULL) {
		free(v);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	for (i = 0; i < n; i++) {
		if ((e = audit_key_msg(c, &v[i], &out->keys[i])) != KB_OK) {
			free(v);
			return e;
		}
		out->n_keys++;
	}
	free(v);
	return KB_OK;
}

enum kb_err
rpc_audit_key_rotate(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	Keybroker__V1__AuditKey *out;
	struct store_key k;
	enum kb_err e;

	(void)req;
	/* Platform-wide admins only: the method table's PLATFORM_ONLY. */
	if ((e = keys_audit_rotate(c->b, &k)) != KB_OK)
		return e;
	snprintf(c->audit_key_id, sizeof(c->audit_key_id), "%s", k.id);
	if ((e = audit_key_msg(c, &k, &out)) != KB_OK)
		return e;
	*resp = &out->base;
	return KB_OK;
}
