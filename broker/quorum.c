/* SPDX-License-Identifier: Apache-2.0 */
/* quorum.c: M-of-N approval requests, their rules and their seals. */
#include "quorum.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "audit.h"
#include "clock.h"
#include "hsm.h"
#include "kb_secmem.h"
#include "kb_time.h"
#include "kb_wire.h"
#include "log.h"
#include "names.h"

static struct quorum_hooks hooks;

void
quorum_hooks_set(const struct quorum_hooks *h)
{
	hooks = *h;
}

/* The token key that seals quorum rows (made on first use). */
#define SEAL_KEY_ID "quorum-seal"
#define SEAL_KEY_LABEL "kb:quorum"
#define DIGEST_LEN 32

static pthread_mutex_t seal_key_mu = PTHREAD_MUTEX_INITIALIZER;

static enum kb_err
seal_key_ensure(struct hsm *h)
{
	enum kb_err e;

	pthread_mutex_lock(&seal_key_mu);
	if ((e = hsm_secret_exists(h, SEAL_KEY_ID, SEAL_KEY_LABEL))
	    == KB_ERR_NOT_FOUND) {
		kb_err_clear();
		if ((e = hsm_aes_generate(h, SEAL_KEY_ID, SEAL_KEY_LABEL))
		    == KB_OK)
			log_info(
			    "quorum: made the sealing key (%s) in the token",
			    SEAL_KEY_LABEL);
	}
	pthread_mutex_unlock(&seal_key_mu);
	return e;
}

/* ---- digests: each field length-prefixed, so no two differ by a shift ---- */

static void
dg_add(EVP_MD_CTX *md, const void *p, size_t n)
{
	uint8_t l[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16),
	    (uint8_t)(n >> 8), (uint8_t)n};

	EVP_DigestUpdate(md, l, sizeof(l));
	if (n > 0)
		EVP_DigestUpdate(md, p, n);
}

static void
dg_str(EVP_MD_CTX *md, const char *s)
{
	dg_add(md, s, strlen(s));
}

static void
dg_i64(EVP_MD_CTX *md, int64_t v)
{
	char buf[24];

	snprintf(buf, sizeof(buf), "%lld", (long long)v);
	dg_str(md, buf);
}

static enum kb_err
dg_done(EVP_MD_CTX *md, uint8_t out[DIGEST_LEN])
{
	unsigned n = 0;
	int ok = EVP_DigestFinal_ex(md, out, &n);

	EVP_MD_CTX_free(md);
	return ok == 1 && n == DIGEST_LEN
	    ? KB_OK
	    : kb_err_openssl(KB_ERR_CRYPTO, "quorum digest");
}

static EVP_MD_CTX *
dg_new(const char *what)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();

	if (md != NULL && EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(md);
		return NULL;
	}
	if (md != NULL)
		dg_str(md, what);
	return md;
}

/* What a request's seal covers: everything but its state and result. */
static enum kb_err
request_digest(const struct store_approval_req *r, uint8_t out[DIGEST_LEN])
{
	EVP_MD_CTX *md = dg_new("kb-quorum-request/v1");

	if (md == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	dg_str(md, r->id);
	dg_str(md, r->method);
	dg_str(md, r->tenant);
	dg_str(md, r->env);
	dg_str(md, r->args);
	dg_add(md, r->call, r->call_len);
	dg_str(md, r->proof_fp);
	dg_str(md, r->target);
	dg_str(md, r->requester);
	dg_i64(md, r->create_time_us);
	dg_i64(md, r->expire_time_us);
	dg_i64(md, r->needed);
	dg_str(md, r->approvers);
	return dg_done(md, out);
}

/* An approval's: its request (by digest), the approver and the decision. */
static enum kb_err
approval_digest(const uint8_t req[DIGEST_LEN], const struct store_approval *a,
    uint8_t out[DIGEST_LEN])
{
	EVP_MD_CTX *md = dg_new("kb-quorum-approval/v1");

	if (md == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	dg_add(md, req, DIGEST_LEN);
	dg_str(md, a->request_id);
	dg_str(md, a->approver);
	dg_str(md, a->decision);
	dg_i64(md, a->time_us);
	return dg_done(md, out);
}

/* A policy's: v2 covers its operations too. A v1 seal (schema 5, before
 * policies listed operations) opens only while the list is empty, which
 * covers every operation: editing a v2 row's list away gains nothing. */
static enum kb_err
policy_digest(const struct store_quorum *q, int v2, uint8_t out[DIGEST_LEN])
{
	EVP_MD_CTX *md =
	    dg_new(v2 ? "kb-quorum-policy/v2" : "kb-quorum-policy/v1");

	if (md == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	dg_str(md, q->tenant);
	dg_i64(md, q->approvals);
	dg_str(md, q->approvers);
	dg_i64(md, q->update_time_us);
	dg_str(md, q->updated_by);
	if (v2)
		dg_str(md, q->operations);
	return dg_done(md, out);
}

/* What a request's state seal covers: the request (by digest), its
 * state, result, last move and the key it holds. Made again at each
 * move, so a state written by hand does not open. */
static enum kb_err
state_digest(const struct store_approval_req *r, uint8_t out[DIGEST_LEN])
{
	uint8_t d[DIGEST_LEN];
	EVP_MD_CTX *md;
	enum kb_err e;

	if ((e = request_digest(r, d)) != KB_OK)
		return e;
	if ((md = dg_new("kb-quorum-state/v1")) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	dg_add(md, d, DIGEST_LEN);
	dg_str(md, r->state);
	dg_str(md, r->result);
	dg_i64(md, r->update_time_us);
	dg_str(md, r->key_id);
	return dg_done(md, out);
}

/* Seal a digest in the token: AES-256-GCM with the digest as associated
 * data and as plaintext, so only the token can make a seal that opens. */
static enum kb_err
seal(struct broker *b, const uint8_t d[DIGEST_LEN], uint8_t *out, size_t cap,
    size_t *len)
{
	uint8_t *blob = NULL;
	size_t n = 0;
	enum kb_err e;

	if ((e = seal_key_ensure(b->hsm)) != KB_OK
	    || (e = hsm_gcm_seal(b->hsm, SEAL_KEY_ID, SEAL_KEY_LABEL, d,
	            DIGEST_LEN, d, DIGEST_LEN, &blob, &n))
	        != KB_OK)
		return kb_err_wrap(e, "sealing a quorum record");
	if (n > cap) {
		free(blob);
		return kb_errf(KB_ERR_INTERNAL, "quorum seal of %zu bytes", n);
	}
	memcpy(out, blob, n);
	*len = n;
	free(blob);
	return KB_OK;
}

/* KB_OK when `s` is a seal of `d` made by the token; KB_ERR_CORRUPT if not. */
static enum kb_err
seal_check(
    struct broker *b, const uint8_t d[DIGEST_LEN], const uint8_t *s, size_t len)
{
	uint8_t *plain = NULL;
	size_t n = 0;
	enum kb_err e;

	if (len == 0)
		return kb_errf(KB_ERR_CORRUPT, "no seal");
	e = hsm_gcm_open(b->hsm, SEAL_KEY_ID, SEAL_KEY_LABEL, d, DIGEST_LEN, s,
	    len, &plain, &n);
	if (e == KB_OK && (n != DIGEST_LEN || CRYPTO_memcmp(plain, d, n) != 0))
		e = kb_errf(KB_ERR_CORRUPT, "seal of another record");
	else if (e != KB_OK && e != KB_ERR_CORRUPT && e != KB_ERR_NOT_FOUND)
		return e; /* the token failed: not a verdict on the row */
	else if (e != KB_OK)
		e = kb_errf(KB_ERR_CORRUPT, "seal does not open");
	free(plain);
	return e;
}

/* ---- policies ---- */

enum kb_err
quorum_policy_store(struct broker *b, struct store_quorum *q)
{
	uint8_t d[DIGEST_LEN];
	enum kb_err e;

	if ((e = policy_digest(q, 1, d)) != KB_OK
	    || (e = seal(b, d, q->seal, sizeof(q->seal), &q->seal_len))
	        != KB_OK)
		return e;
	return store_quorum_put(b->store, q);
}

enum kb_err
quorum_policy_effective(struct broker *b, const char *tenant,
    struct store_quorum *q, int *inherited)
{
	uint8_t d[DIGEST_LEN];
	enum kb_err e;

	*inherited = 0;
	e = store_quorum_get(b->store, tenant, q);
	if (e == KB_ERR_NOT_FOUND && tenant[0] != '\0') {
		kb_err_clear();
		*inherited = 1;
		e = store_quorum_get(b->store, "", q);
	}
	if (e == KB_ERR_NOT_FOUND) {
		kb_err_clear();
		memset(q, 0, sizeof(*q));
		snprintf(q->tenant, sizeof(q->tenant), "%s", tenant);
		return KB_OK;
	}
	if (e != KB_OK || (e = policy_digest(q, 1, d)) != KB_OK)
		return e;
	e = seal_check(b, d, q->seal, q->seal_len);
	if (e == KB_ERR_CORRUPT && q->operations[0] == '\0') {
		kb_err_clear();
		if ((e = policy_digest(q, 0, d)) != KB_OK)
			return e;
		e = seal_check(b, d, q->seal, q->seal_len);
	}
	if (e == KB_ERR_CORRUPT)
		return kb_errf(KB_ERR_CORRUPT,
		    "the quorum policy of %s%s%s fails "
		    "its integrity check (%s): it was edited outside the "
		    "broker; "
		    "the operations it covers are refused",
		    q->tenant[0] ? "tenant \"" : "the platform", q->tenant,
		    q->tenant[0] ? "\"" : "", kb_err_msg(e));
	return e;
}

/* Whether CN `name` is in the comma-separated list `list`. */
static int
cn_listed(const char *list, const char *name)
{
	size_t n = strlen(name);
	const char *p = list;

	while (*p != '\0') {
		const char *end = strchr(p, ',');
		size_t l = end != NULL ? (size_t)(end - p) : strlen(p);

		if (l == n && memcmp(p, name, n) == 0)
			return 1;
		if (end == NULL)
			break;
		p = end + 1;
	}
	return 0;
}

/* ---- requests ---- */

static const char *
field(const ProtobufCMessage *m, const char *name)
{
	const char *v = name != NULL ? scope_field_str(m, name) : NULL;

	return v != NULL && v[0] != '\0' ? v : NULL;
}

static int
secret_field(const ProtobufCFieldDescriptor *f)
{
	return f->type == PROTOBUF_C_TYPE_BYTES
	    || strcmp(f->name, "password") == 0;
}

/* A person's view of the request's arguments: "name=value" of every field
 * but the secret ones (bytes, passwords). */
static void
args_text(const ProtobufCMessage *m, char *buf, size_t len)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;
	size_t i, j, n = 0;

	buf[0] = '\0';
	for (i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		const char *p = (const char *)m + f->offset;

		if (secret_field(f))
			continue;
		if (f->label == PROTOBUF_C_LABEL_REPEATED
		    && f->type == PROTOBUF_C_TYPE_STRING) {
			size_t cnt = *(const size_t *)((const char *)m
			    + f->quantifier_offset);
			char *const *v = *(char *const *const *)p;

			n += (size_t)snprintf(buf + n, len > n ? len - n : 0,
			    "%s%s=", n ? " " : "", f->name);
			for (j = 0; j < cnt; j++)
				n += (size_t)snprintf(buf + n,
				    len > n ? len - n : 0, "%s%s", j ? "," : "",
				    v[j]);
			continue;
		}
		if (f->label == PROTOBUF_C_LABEL_REPEATED)
			continue;
		switch (f->type) {
		case PROTOBUF_C_TYPE_STRING:
			n += (size_t)snprintf(buf + n, len > n ? len - n : 0,
			    "%s%s=%s", n ? " " : "", f->name,
			    *(char *const *)p);
			break;
		case PROTOBUF_C_TYPE_UINT32:
		case PROTOBUF_C_TYPE_ENUM:
			n += (size_t)snprintf(buf + n, len > n ? len - n : 0,
			    "%s%s=%u", n ? " " : "", f->name,
			    *(const uint32_t *)p);
			break;
		case PROTOBUF_C_TYPE_INT32:
		case PROTOBUF_C_TYPE_SINT32:
		case PROTOBUF_C_TYPE_SFIXED32:
		case PROTOBUF_C_TYPE_FIXED32:
		case PROTOBUF_C_TYPE_INT64:
		case PROTOBUF_C_TYPE_SINT64:
		case PROTOBUF_C_TYPE_SFIXED64:
		case PROTOBUF_C_TYPE_UINT64:
		case PROTOBUF_C_TYPE_FIXED64:
		case PROTOBUF_C_TYPE_FLOAT:
		case PROTOBUF_C_TYPE_DOUBLE:
		case PROTOBUF_C_TYPE_BOOL:
		case PROTOBUF_C_TYPE_BYTES:
		case PROTOBUF_C_TYPE_MESSAGE: break;
		}
	}
	if (n >= len && len > 4)
		memcpy(buf + len - 4, "...", 4);
}

/* The request packed into r->call with its secret fields emptied. */
static enum kb_err
call_pack(const ProtobufCMessage *in, struct store_approval_req *r)
{
	ProtobufCMessage *copy = NULL;
	const ProtobufCMessageDescriptor *d = in->descriptor;
	uint8_t *buf;
	size_t n = protobuf_c_message_get_packed_size(in), i;
	enum kb_err e = KB_OK;

	if ((buf = malloc(n + 1)) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	protobuf_c_message_pack(in, buf);
	copy = protobuf_c_message_unpack(d, NULL, n, buf);
	kb_freezero(buf, n + 1);
	if (copy == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	for (i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		char *p = (char *)copy + f->offset;

		if (!secret_field(f) || f->label == PROTOBUF_C_LABEL_REPEATED)
			continue;
		if (f->type == PROTOBUF_C_TYPE_BYTES) {
			ProtobufCBinaryData *bd = (ProtobufCBinaryData *)p;

			if (bd->data != NULL)
				OPENSSL_cleanse(bd->data, bd->len);
			bd->len = 0;
		} else if (f->type == PROTOBUF_C_TYPE_STRING
		    && *(char **)p != NULL) {
			OPENSSL_cleanse(*(char **)p, strlen(*(char **)p));
		}
	}
	if ((n = protobuf_c_message_get_packed_size(copy)) > sizeof(r->call))
		e = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the %s request is too long "
		    "to keep for approval (%zu bytes, at most %zu)",
		    d->short_name, n, sizeof(r->call));
	else
		r->call_len = protobuf_c_message_pack(copy, r->call);
	protobuf_c_message_free_unpacked(copy, NULL);
	return e;
}

/* The state of what a request acts on, as text: the tenant's active key
 * and each named environment's uid, state, mode and DEK version (a reset
 * changes them; a deleted one is an error);
 * for a policy change, the policy it changes. */
static enum kb_err
target_state(struct broker *b, const struct rpc_method *m,
    const ProtobufCMessage *in, char *buf, size_t len)
{
	const char *tenant = field(in, m->scope.tenant);
	const char *envs[2] = {
	    field(in, m->scope.env), field(in, m->scope.env2)};
	struct store_tenant t;
	struct store_env env;
	struct store_quorum q;
	size_t n = 0, i;
	enum kb_err e;

	buf[0] = '\0';
	if (strcmp(m->name, "SetQuorum") == 0) {
		/* Two changes of one policy: the second approved after the
		 * first ran was asked of a policy that is no more. */
		e = store_quorum_get(
		    b->store, tenant != NULL ? tenant : "", &q);
		if (e == KB_ERR_NOT_FOUND) {
			kb_err_clear();
			snprintf(buf, len, "no policy of its own");
			return KB_OK;
		}
		if (e == KB_OK)
			snprintf(buf, len, "policy of %lld by %s",
			    (long long)q.update_time_us, q.updated_by);
		return e;
	}
	if (tenant == NULL)
		return KB_OK;
	if ((e = store_tenant_get(b->store, tenant, &t)) != KB_OK)
		return e;
	n += (size_t)snprintf(buf + n, len > n ? len - n : 0, "active key %s",
	    t.active_key_id[0] ? t.active_key_id : "(none)");
	for (i = 0; i < 2; i++) {
		if (envs[i] == NULL)
			continue;
		if ((e = store_env_get(b->store, tenant, envs[i], &env))
		    != KB_OK)
			return e;
		n += (size_t)snprintf(buf + n, len > n ? len - n : 0,
		    "; environment %s uid %s %s %s DEK v%u%s", envs[i], env.uid,
		    store_env_state_name(env.state),
		    store_env_mode_name(env.mode), env.dek_version,
		    env.delete_request_us != 0 ? " pending deletion" : "");
	}
	return KB_OK;
}

/* The tenant whose policy governs a call: its scope's tenant, "" for the
 * platform's operations. */
static const char *
call_tenant(const struct rpc_method *m, const ProtobufCMessage *in)
{
	const char *t =
	    m->scope.kind == SCOPE_PLATFORM ? NULL : field(in, m->scope.tenant);

	return t != NULL ? t : "";
}

static size_t
cn_count(const char *list)
{
	size_t n = list[0] != '\0';

	for (; *list != '\0'; list++)
		n += *list == ',';
	return n;
}

/* ---- operations a policy covers ---- */

/* SetQuorum always (a policy could otherwise turn itself off alone); the
 * others when listed, or every one when the list is empty. */
static int
policy_covers(const struct store_quorum *q, const char *name)
{
	return strcmp(name, "SetQuorum") == 0 || q->operations[0] == '\0'
	    || cn_listed(q->operations, name);
}

static int
name_given(char *const *names, size_t n, const char *name)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (strcmp(names[i], name) == 0)
			return 1;
	return 0;
}

/* The covered operations of the method table, in its order; with
 * `only` (n names) those listed and SetQuorum. */
static size_t
ops_join(char *const *only, size_t n, char *out, size_t len)
{
	const struct rpc_method *m;
	size_t k = 0;

	out[0] = '\0';
	for (m = hooks.methods; m != NULL && m->path != NULL; m++) {
		if (m->quorum == RPC_QUORUM_NONE
		    || (only != NULL && strcmp(m->name, "SetQuorum") != 0
		        && !name_given(only, n, m->name)))
			continue;
		k += (size_t)snprintf(out + k, len > k ? len - k : 0, "%s%s",
		    k ? "," : "", m->name);
	}
	return k;
}

enum kb_err
quorum_operations_parse(char *const *names, size_t n, char *out, size_t len)
{
	const struct rpc_method *m;
	char valid[STORE_OPS_MAX];
	size_t i;

	out[0] = '\0';
	for (i = 0; i < n; i++) {
		for (m = hooks.methods; m != NULL && m->path != NULL; m++)
			if (m->quorum != RPC_QUORUM_NONE
			    && strcmp(m->name, names[i]) == 0)
				break;
		if (m != NULL && m->path != NULL)
			continue;
		ops_join(NULL, 0, valid, sizeof(valid));
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "operation \"%.64s\" "
		    "is not one a quorum covers; --operations takes method "
		    "names from: %s",
		    names[i], valid);
	}
	if (n > 0 && ops_join(names, n, out, len) >= len)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the operations list "
		    "is longer than %zu bytes",
		    len - 1);
	return KB_OK;
}

void
quorum_operations_text(const struct store_quorum *q, char *out, size_t len)
{
	if (q->operations[0] == '\0')
		ops_join(NULL, 0, out, len);
	else
		snprintf(out, len, "%s", q->operations);
}

/* ---- the one-time object of a pending request ---- */

/* A pending request holds an object in the token; leaving pending
 * destroys it, and running needs to destroy it. A database rolled back to
 * an older copy of the row cannot make it again. */
#define LIVE_LABEL "kb:quorum-pending"

static void
live_id(const char *request, char *out, size_t len)
{
	snprintf(out, len, "quorum-%s", request);
}

/* KB_OK when this call destroyed it; KB_ERR_NOT_FOUND when it was gone. */
static enum kb_err
live_consume(struct broker *b, const char *request)
{
	char id[64];

	live_id(request, id, sizeof(id));
	return hsm_key_destroy(b->hsm, id);
}

static enum kb_err
audit_quorum(struct rpc_ctx *c, const struct store_approval_req *r,
    const char *what, const char *result, const char *reason)
{
	struct audit_record a;

	memset(&a, 0, sizeof(a));
	a.actor = c->id != NULL ? c->id->name : "keybroker";
	a.role = c->id != NULL ? identity_role_name(c->id->role) : "system";
	a.peer = c->peer;
	a.method = what;
	a.tenant = r->tenant;
	a.env = r->env;
	a.key_id = r->key_id;
	a.result = result;
	a.reason = reason;
	a.request_id = r->id;
	return audit_append(c->b->audit, &a, NULL);
}

/* Seal r's state as it is now into r->state_seal. */
static enum kb_err
state_seal(struct broker *b, struct store_approval_req *r)
{
	uint8_t d[DIGEST_LEN];
	enum kb_err e;

	if ((e = state_digest(r, d)) != KB_OK)
		return e;
	return seal(
	    b, d, r->state_seal, sizeof(r->state_seal), &r->state_seal_len);
}

/* Move r from `from` to `to` with `result`, its state sealed anew. r
 * changes only when the move was made. */
static enum kb_err
request_move(struct rpc_ctx *c, struct store_approval_req *r, const char *from,
    const char *to, const char *result, int64_t now)
{
	struct store_approval_req *n;
	enum kb_err e;

	if ((n = malloc(sizeof(*n))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	*n = *r;
	snprintf(n->state, sizeof(n->state), "%s", to);
	snprintf(n->result, sizeof(n->result), "%s", result);
	n->update_time_us = now;
	if ((e = state_seal(c->b, n)) == KB_OK
	    && (e = store_approval_req_move(c->b->store, r->id, from, to,
	            n->result, now, n->state_seal, n->state_seal_len))
	        == KB_OK)
		*r = *n;
	free(n);
	return e;
}

/* A request that will not run gives up the key it holds: pending_approval
 * to deleted, then its token object destroyed (audited). A key in any
 * other state is not touched. */
static void
staged_discard(struct rpc_ctx *c, const struct store_approval_req *r)
{
	char reason[300];
	enum kb_err e;

	if (r->key_id[0] == '\0')
		return;
	if (store_key_set_state(c->b->store, r->key_id, "pending_approval",
	        "deleted", clock_now_us())
	    != KB_OK) {
		kb_err_clear();
		return;
	}
	e = hsm_key_destroy(c->b->hsm, r->key_id);
	if (e != KB_OK && e != KB_ERR_NOT_FOUND)
		log_error("quorum: cannot destroy key %s of request %s in the "
		          "token (start-up retries): %s",
		    r->key_id, r->id, kb_err_msg(e));
	kb_err_clear();
	if (r->id[0] != '\0')
		snprintf(reason, sizeof(reason),
		    "key %s destroyed in the token: request %s is %s",
		    r->key_id, r->id, r->state);
	else
		snprintf(reason, sizeof(reason),
		    "key %s destroyed in the token: no approval request holds "
		    "it (the broker stopped between making it and its request)",
		    r->key_id);
	log_info("quorum: %s", reason);
	if (audit_quorum(c, r, "quorum.key_destroyed", "ok", reason) != KB_OK)
		kb_err_clear();
}

/* Make, seal and store the request for call `in` of `m` under policy q,
 * with c->approval_id set; key_id names a staged call's key. */
static enum kb_err
request_make(struct rpc_ctx *c, const struct rpc_method *m,
    const ProtobufCMessage *in, const struct store_quorum *q,
    const char *key_id)
{
	struct store_approval_req *r = NULL;
	const char *tenant = call_tenant(m, in), *env;
	uint8_t d[DIGEST_LEN];
	char live[64];
	int made = 0;
	enum kb_err e;

	if ((r = calloc(1, sizeof(*r))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	snprintf(r->id, sizeof(r->id), "%s", c->request_id);
	snprintf(r->method, sizeof(r->method), "%s", m->name);
	snprintf(r->tenant, sizeof(r->tenant), "%s", tenant);
	env = field(in, m->scope.env);
	snprintf(r->env, sizeof(r->env), "%s", env != NULL ? env : "");
	snprintf(r->key_id, sizeof(r->key_id), "%s", key_id);
	args_text(in, r->args, sizeof(r->args));
	/* A lock's proof is checked now and only its fingerprint kept: the
	 * file and its password are never stored. */
	if (strcmp(m->name, "LockTenant") == 0) {
		if (hooks.lock_proof == NULL) {
			e = kb_errf(KB_ERR_INTERNAL,
			    "quorum: no lock-proof check "
			    "(quorum_hooks_set was not called)");
			goto out;
		}
		if ((e = hooks.lock_proof(c, in, r->proof_fp)) != KB_OK)
			goto out;
	}
	if ((e = call_pack(in, r)) != KB_OK
	    || (e = target_state(c->b, m, in, r->target, sizeof(r->target)))
	        != KB_OK)
		goto out;
	snprintf(r->requester, sizeof(r->requester), "%s", c->id->name);
	r->create_time_us = r->update_time_us = c->now_us;
	r->expire_time_us =
	    c->now_us + (int64_t)c->b->cfg->approval_ttl_s * 1000000;
	r->needed = q->approvals;
	snprintf(r->approvers, sizeof(r->approvers), "%s", q->approvers);
	snprintf(r->state, sizeof(r->state), "pending");
	live_id(r->id, live, sizeof(live));
	if ((e = request_digest(r, d)) != KB_OK
	    || (e = seal(c->b, d, r->seal, sizeof(r->seal), &r->seal_len))
	        != KB_OK
	    || (e = state_seal(c->b, r)) != KB_OK
	    || (e = hsm_aes_generate(c->b->hsm, live, LIVE_LABEL)) != KB_OK)
		goto out;
	made = 1;
	if ((e = store_approval_req_insert(c->b->store, r)) != KB_OK)
		goto out;
	made = 0;
	snprintf(c->approval_id, sizeof(c->approval_id), "%s", r->id);
out:
	if (made)
		(void)hsm_key_destroy(c->b->hsm, live);
	free(r);
	return e;
}

enum kb_err
quorum_intercept(
    struct rpc_ctx *c, const struct rpc_method *m, const ProtobufCMessage *in)
{
	struct store_quorum q;
	struct store_tenant t;
	const char *tenant = call_tenant(m, in);
	char when[40];
	int inherited;
	enum kb_err e;

	if ((e = quorum_policy_effective(c->b, tenant, &q, &inherited))
	    != KB_OK)
		return e;
	if (q.approvals == 0 || !policy_covers(&q, m->name))
		return KB_OK;
	/* A new key is covered only while one is active: before, nothing it
	 * could replace exists (activating it is covered in any case). */
	if (m->quorum == RPC_QUORUM_STAGED) {
		if ((e = store_tenant_get(c->b->store, tenant, &t)) != KB_OK)
			return e;
		if (t.active_key_id[0] == '\0')
			return KB_OK;
	}
	/* Approvers other than the requester must be able to meet it. */
	if (q.approvers[0] != '\0'
	    && cn_count(q.approvers)
	            - (size_t)cn_listed(q.approvers, c->id->name)
	        < q.approvals)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "the quorum of %s "
		    "needs %u approvals from %s, not counting the requester "
		    "%s: "
		    "nobody could meet it; a platform admin can change it "
		    "(kbctl quorum set)",
		    tenant[0] ? tenant : "the platform", q.approvals,
		    q.approvers, c->id->name);
	if (m->quorum == RPC_QUORUM_STAGED) {
		c->quorum_staged = 1; /* the handler calls quorum_stage */
		return KB_OK;
	}
	if ((e = request_make(c, m, in, &q, "")) != KB_OK)
		return e;
	kb_time_format(c->now_us + (int64_t)c->b->cfg->approval_ttl_s * 1000000,
	    when, sizeof(when));
	e = kb_errf(KB_ERR_APPROVAL_REQUIRED,
	    "approval required: request %s "
	    "created; %s needs %u approval(s) from %s (not %s) before %s "
	    "(approval_ttl_s): kbctl approvals approve %s",
	    c->approval_id, m->name, q.approvals,
	    q.approvers[0] ? q.approvers : "any admin of the tenant",
	    c->id->name, when, c->approval_id);
	log_info("quorum: %s by %s is request %s (%u approval(s) needed)",
	    m->name, c->id->name, c->approval_id, q.approvals);
	return e;
}

static const struct rpc_method *method_named(const char *name);

enum kb_err
quorum_stage(struct rpc_ctx *c, const ProtobufCMessage *in, const char *key_id)
{
	const struct rpc_method *m = method_named(c->method);
	struct store_quorum q;
	int inherited;
	enum kb_err e;

	if (m == NULL || m->quorum != RPC_QUORUM_STAGED)
		return kb_errf(KB_ERR_INTERNAL,
		    "quorum: %s is not a staged "
		    "operation",
		    c->method);
	if ((e = quorum_policy_effective(
	         c->b, call_tenant(m, in), &q, &inherited))
	    != KB_OK)
		return e;
	/* Turned off between the check and now: no request of 0 approvals. */
	if (q.approvals == 0)
		return kb_errf(KB_ERR_UNAVAILABLE,
		    "the quorum changed during "
		    "the call; nothing was kept: try again");
	if ((e = request_make(c, m, in, &q, key_id)) != KB_OK)
		return e;
	log_info("quorum: %s by %s made key %s pending_approval: request %s "
	         "(%u approval(s) needed)",
	    m->name, c->id->name, key_id, c->approval_id, q.approvals);
	return KB_OK;
}

static const struct rpc_method *
method_named(const char *name)
{
	const struct rpc_method *m;

	for (m = hooks.methods; m != NULL && m->path != NULL; m++)
		if (m->quorum != RPC_QUORUM_NONE && strcmp(m->name, name) == 0)
			return m;
	return NULL;
}

static const struct rpc_method *
request_method(const struct store_approval_req *r)
{
	return method_named(r->method);
}

/* The stored call of r, decoded (kb_wire_free), or NULL. */
static ProtobufCMessage *
call_unpack(const struct rpc_method *m, const struct store_approval_req *r)
{
	return protobuf_c_message_unpack(m->req, NULL, r->call_len, r->call);
}

/* Both seals of r: KB_OK, or KB_ERR_CORRUPT naming what fails. A request
 * with no state seal (made before states were sealed) passes; it cannot
 * be decided (quorum_decide). */
static enum kb_err
request_verify(struct broker *b, const struct store_approval_req *r)
{
	uint8_t d[DIGEST_LEN];
	enum kb_err e;

	if ((e = request_digest(r, d)) != KB_OK)
		return e;
	if ((e = seal_check(b, d, r->seal, r->seal_len)) != KB_OK)
		return e != KB_ERR_CORRUPT ? e
		                           : kb_errf(KB_ERR_CORRUPT,
		                               "approval request %s fails its "
		                               "integrity check (%s): it was "
		                               "made or edited outside the "
		                               "broker and cannot be decided",
		                               r->id, kb_err_msg(e));
	if (r->state_seal_len == 0)
		return KB_OK;
	if ((e = state_digest(r, d)) != KB_OK)
		return e;
	if ((e = seal_check(b, d, r->state_seal, r->state_seal_len)) != KB_OK)
		return e != KB_ERR_CORRUPT
		    ? e
		    : kb_errf(KB_ERR_CORRUPT,
		        "approval request %s: its "
		        "state (\"%.16s\") fails its integrity check (%s): it "
		        "was set outside the broker and the request cannot be "
		        "decided",
		        r->id, r->state, kb_err_msg(e));
	return KB_OK;
}

static void
expire(struct rpc_ctx *c, struct store_approval_req *r)
{
	char when[40], reason[200];

	if (strcmp(r->state, "pending") != 0 || c->now_us < r->expire_time_us
	    || r->state_seal_len == 0)
		return;
	kb_time_format(r->expire_time_us, when, sizeof(when));
	snprintf(reason, sizeof(reason),
	    "expired at %s without its %u "
	    "approval(s)",
	    when, r->needed);
	if (request_move(c, r, "pending", "expired", reason, c->now_us)
	    != KB_OK) {
		kb_err_clear();
		return;
	}
	if (live_consume(c->b, r->id) != KB_OK)
		kb_err_clear();
	if (audit_quorum(c, r, "quorum.expire", "ok", reason) != KB_OK)
		kb_err_clear();
	staged_discard(c, r);
}

void
quorum_expire_due(struct rpc_ctx *c, const char *tenant)
{
	struct store_approval_req *v = NULL;
	size_t n = 0, i;

	if (store_approval_req_list(c->b->store, tenant, 0, &v, &n) != KB_OK) {
		kb_err_clear();
		return;
	}
	/* Only a request both of whose seals hold is moved (and sealed). */
	for (i = 0; i < n; i++) {
		if (c->now_us < v[i].expire_time_us)
			continue;
		if (request_verify(c->b, &v[i]) != KB_OK) {
			kb_err_clear();
			continue;
		}
		expire(c, &v[i]);
	}
	free(v);
}

/* A key pending_approval that no request holds (the broker stopped
 * between making it and storing its request): deleted, its object
 * destroyed. Under the tenant's lock, so a call between the two is not
 * taken for one. */
static void
orphans_discard(struct rpc_ctx *c)
{
	struct store_key *v = NULL;
	struct store_approval_req *r = NULL;
	size_t n = 0, i;
	int held;

	if (store_keys_by_purpose(c->b->store, "tenant", &v, &n) != KB_OK
	    || (r = calloc(1, sizeof(*r))) == NULL) {
		kb_err_clear();
		free(v);
		return;
	}
	for (i = 0; i < n; i++) {
		if (strcmp(v[i].state, "pending_approval") != 0)
			continue;
		broker_tenant_lock(c->b, v[i].tenant_id);
		if (store_approval_req_holds(c->b->store, v[i].id, &held)
		        == KB_OK
		    && !held) {
			memset(r, 0, sizeof(*r));
			snprintf(
			    r->tenant, sizeof(r->tenant), "%s", v[i].tenant_id);
			snprintf(r->key_id, sizeof(r->key_id), "%s", v[i].id);
			staged_discard(c, r);
		}
		kb_err_clear();
		broker_tenant_unlock(c->b, v[i].tenant_id);
	}
	free(r);
	free(v);
}

void
quorum_sweep(struct broker *b)
{
	struct rpc_ctx c;

	memset(&c, 0, sizeof(c));
	c.b = b;
	c.peer = "";
	c.method = "quorum.expire";
	c.now_us = clock_now_us();
	quorum_expire_due(&c, NULL);
	orphans_discard(&c);
}

enum kb_err
quorum_request_load(struct rpc_ctx *c, const char *id,
    struct store_approval_req *r, struct store_approval **approvals,
    size_t *napprovals)
{
	const struct rpc_method *m;
	ProtobufCMessage *call = NULL;
	struct store_approval *v = NULL;
	uint8_t d[DIGEST_LEN], ad[DIGEST_LEN];
	size_t n = 0, i, k = 0;
	enum kb_err e;

	if (approvals != NULL) {
		*approvals = NULL;
		*napprovals = 0;
	}
	if ((e = names_check_object_id("approval request id", id)) != KB_OK
	    || (e = store_approval_req_get(c->b->store, id, r)) != KB_OK)
		return e;
	if ((e = request_verify(c->b, r)) != KB_OK
	    || (e = request_digest(r, d)) != KB_OK)
		return e;
	if ((m = request_method(r)) == NULL
	    || (call = call_unpack(m, r)) == NULL)
		return kb_errf(KB_ERR_CORRUPT,
		    "approval request %s names a call "
		    "this broker cannot run (%s)",
		    id, r->method);
	/* Whoever sees or decides a request must reach its target. */
	e = scope_request_check(&m->scope, m->name, c->id, call);
	protobuf_c_message_free_unpacked(call, NULL);
	if (e != KB_OK)
		return e;
	expire(c, r);
	if (approvals == NULL)
		return KB_OK;
	if ((e = store_approval_list(c->b->store, id, &v, &n)) != KB_OK)
		return e;
	/* Only decisions the token sealed for this very request count. */
	for (i = 0; i < n; i++) {
		if ((e = approval_digest(d, &v[i], ad)) != KB_OK)
			goto fail;
		e = seal_check(c->b, ad, v[i].seal, v[i].seal_len);
		if (e == KB_ERR_CORRUPT) {
			log_warn(
			    "quorum: the %s of %s on request %s fails its "
			    "integrity check (made outside the broker): not "
			    "counted",
			    v[i].decision, v[i].approver, id);
			kb_err_clear();
			continue;
		}
		if (e != KB_OK)
			goto fail;
		v[k++] = v[i];
	}
	*approvals = v;
	*napprovals = k;
	return KB_OK;
fail:
	free(v);
	return e;
}

/* Run an approved request: the target checked, then the call itself
 * through the dispatcher (policy rules at this moment); a staged one's
 * handler makes its key usable. */
static void
execute(struct rpc_ctx *c, struct store_approval_req *r)
{
	const struct rpc_method *m = request_method(r);
	struct rpc_method staged;
	ProtobufCMessage *call = NULL, *out = NULL;
	struct rpc_ctx x;
	char now_target[sizeof(r->target)], result[sizeof(r->result)];
	enum kb_err e;

	x = *c;
	x.method = m->name;
	x.after_audit = NULL;
	/* A staged request's events name its key from the first. */
	snprintf(x.audit_key_id, sizeof(x.audit_key_id), "%s", r->key_id);
	x.approval_id[0] = '\0';
	x.quorum_staged = 0;
	x.approved_fp = r->proof_fp[0] != '\0' ? r->proof_fp : NULL;
	x.staged_key_id = r->key_id[0] != '\0' ? r->key_id : NULL;
	x.now_us = clock_now_us();
	snprintf(x.request_id, sizeof(x.request_id), "%s", r->id);
	if (m->quorum == RPC_QUORUM_STAGED) {
		staged = *m;
		staged.fn = hooks.stage_commit;
		m = &staged;
	}
	if ((call = call_unpack(m, r)) == NULL) {
		snprintf(result, sizeof(result),
		    "INTERNAL: cannot decode the "
		    "stored call");
		e = KB_ERR_INTERNAL;
	} else if ((e = target_state(
	                c->b, m, call, now_target, sizeof(now_target)))
	        != KB_OK
	    || strcmp(now_target, r->target) != 0) {
		if (e != KB_OK)
			snprintf(result, sizeof(result),
			    "FAILED_PRECONDITION: the "
			    "target changed since the request: %s",
			    kb_err_msg(e));
		else
			snprintf(result, sizeof(result),
			    "FAILED_PRECONDITION: the "
			    "target changed since the request: it was "
			    "\"%.200s\", it "
			    "is \"%.200s\"",
			    r->target, now_target);
		e = KB_ERR_FAILED_PRECONDITION;
		(void)audit_quorum(&x, r, m->name, "denied", result);
	} else if (m->fn == NULL || hooks.execute == NULL) {
		snprintf(result, sizeof(result),
		    "INTERNAL: quorum: no "
		    "executor (quorum_hooks_set was not called)");
		e = KB_ERR_INTERNAL;
	} else {
		e = hooks.execute(&x, m, call, &out, result, sizeof(result));
	}
	kb_wire_free(out);
	if (call != NULL)
		protobuf_c_message_free_unpacked(call, NULL);
	if (request_move(c, r, "executing", e == KB_OK ? "executed" : "failed",
	        result, x.now_us)
	    != KB_OK)
		log_error("quorum: request %s ran (%s) but its state cannot be "
		          "recorded: %s",
		    r->id, result, kb_err_msg(KB_ERR_INTERNAL));
	kb_err_clear();
	if (e != KB_OK)
		staged_discard(c, r);
	log_info("quorum: request %s (%s) %s: %s", r->id, r->method, r->state,
	    r->result);
}

enum kb_err
quorum_decide(struct rpc_ctx *c, const char *id, int approve,
    struct store_approval_req *r)
{
	struct store_approval *v = NULL, a;
	uint8_t d[DIGEST_LEN], ad[DIGEST_LEN];
	size_t n = 0, i;
	unsigned count = 0;
	const char *who = c->id->name;
	char reason[300];
	enum kb_err e;

	/* Even a refused decision belongs to the request's story. */
	if (names_check_object_id("approval request id", id) == KB_OK)
		snprintf(c->request_id, sizeof(c->request_id), "%s", id);
	kb_err_clear();
	if ((e = quorum_request_load(c, id, r, NULL, NULL)) != KB_OK)
		return e;
	if (strcmp(r->state, "pending") != 0)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "approval request %s "
		    "is %s%s%s; only a pending request can be %s",
		    id, r->state, r->result[0] ? ": " : "", r->result,
		    approve ? "approved" : "denied");
	if (r->state_seal_len == 0)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "approval request %s "
		    "was made before request states were sealed (an older "
		    "keybroker) and cannot be decided: make the request again",
		    id);
	if (approve && strcmp(who, r->requester) == 0)
		return kb_errf(KB_ERR_PERMISSION_DENIED,
		    "%s made request %s and "
		    "cannot approve it: the requester never counts as an "
		    "approver",
		    who, id);
	if (r->approvers[0] != '\0' && !cn_listed(r->approvers, who)
	    && strcmp(who, r->requester) != 0)
		return kb_errf(KB_ERR_PERMISSION_DENIED,
		    "%s is not an approver of "
		    "request %s (approvers: %s)",
		    who, id, r->approvers);
	memset(&a, 0, sizeof(a));
	snprintf(a.request_id, sizeof(a.request_id), "%s", r->id);
	snprintf(a.approver, sizeof(a.approver), "%s", who);
	snprintf(
	    a.decision, sizeof(a.decision), "%s", approve ? "approve" : "deny");
	a.time_us = c->now_us;
	if ((e = request_digest(r, d)) != KB_OK
	    || (e = approval_digest(d, &a, ad)) != KB_OK
	    || (e = seal(c->b, ad, a.seal, sizeof(a.seal), &a.seal_len))
	        != KB_OK)
		return e;
	if ((e = store_approval_insert(c->b->store, &a))
	    == KB_ERR_ALREADY_EXISTS)
		return kb_errf(KB_ERR_ALREADY_EXISTS,
		    "%s has already decided on "
		    "request %s: each approver counts once, whatever its "
		    "certificates",
		    who, id);
	if (e != KB_OK)
		return e;
	if (!approve) {
		snprintf(reason, sizeof(reason), "denied by %s", who);
		if ((e = request_move(
		         c, r, "pending", "denied", reason, c->now_us))
		    != KB_OK)
			return e;
		if (live_consume(c->b, r->id) != KB_OK)
			kb_err_clear();
		staged_discard(c, r);
		return quorum_request_load(c, id, r, NULL, NULL);
	}
	if ((e = quorum_request_load(c, id, r, &v, &n)) != KB_OK)
		return e;
	for (i = 0; i < n; i++) {
		if (strcmp(v[i].approver, r->requester) == 0
		    || (r->approvers[0] != '\0'
		        && !cn_listed(r->approvers, v[i].approver)))
			continue;
		if (strcmp(v[i].decision, "deny") == 0) {
			count = 0;
			break;
		}
		count++;
	}
	free(v);
	if (count < r->needed || strcmp(r->state, "pending") != 0)
		return KB_OK;
	/* One caller wins the move to executing; the others see it run. */
	if ((e = request_move(c, r, "pending", "executing", "", c->now_us))
	    != KB_OK) {
		kb_err_clear();
		return quorum_request_load(c, id, r, NULL, NULL);
	}
	/* Running takes the request's one-time object: gone means it left
	 * pending before, and this row is an older copy put back. */
	if ((e = live_consume(c->b, r->id)) != KB_OK) {
		snprintf(reason, sizeof(reason),
		    "refused: request %s left pending before "
		    "(its one-time object in the token is gone): the "
		    "database was rolled back or edited, and it does not run "
		    "again",
		    r->id);
		if (e != KB_ERR_NOT_FOUND)
			snprintf(reason, sizeof(reason),
			    "UNAVAILABLE: the token "
			    "cannot take request %s's one-time object (%s); "
			    "not run",
			    r->id, kb_err_msg(e));
		kb_err_clear();
		log_warn("quorum: %s", reason);
		(void)audit_quorum(c, r, "quorum.replay", "denied", reason);
		if (request_move(
		        c, r, "executing", "failed", reason, clock_now_us())
		    != KB_OK)
			kb_err_clear();
		return KB_OK;
	}
	execute(c, r);
	return KB_OK;
}
