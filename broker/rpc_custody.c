/* SPDX-License-Identifier: Apache-2.0 */
/* rpc_custody.c: the custody of stored data keys: platform-key rotation,
 * and verify and repair of every sealed DEK, in the token, revealing none. */
#include "rpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dek.h"
#include "jobs.h"
#include "kb_secmem.h"
#include "keybroker.pb-c.h"
#include "log.h"

#define VERIFY_PAGE 500
#define VERIFY_PAGE_MAX 5000
#define REPAIR_MAX 1000

enum kb_err
rpc_platform_rotate(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	struct store_job job;
	char why[200];
	enum kb_err e;

	(void)req;
	snprintf(why, sizeof(why), "asked by %s", c->id->name);
	e = jobs_rotate_platform(c->b, why, &job);
	if (e == KB_ERR_ALREADY_EXISTS)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "a platform key "
		    "rotation is already running: job %s, %llu of %llu done "
		    "(kbctl jobs show %s)",
		    job.id, (unsigned long long)job.done,
		    (unsigned long long)job.total, job.id);
	if (e != KB_OK)
		return e;
	snprintf(c->audit_key_id, sizeof(c->audit_key_id), "%s", job.key_id);
	return rpc_reply(resp, rpc_job_msg(&job));
}

/* What is wrong with one stored DEK, opened in the token (the plaintext is
 * wiped at once): NULL when nothing is. */
static const char *
check_row(struct broker *b, const struct store_rewrap *r, char *msg, size_t len,
    enum kb_err *fatal)
{
	struct dek_row row = {
	    r->tenant_id, r->name, r->uid, r->version, r->mode};
	uint8_t plain[DEK_LEN];
	enum kb_err e;

	*fatal = KB_OK;
	msg[0] = '\0';
	if (r->dek.damaged[0] != '\0') {
		snprintf(msg, len, "marked unrecoverable: %s", r->dek.damaged);
		return "unrecoverable";
	}
	if (!dek_is_legacy(&r->dek)
	    && r->dek.wrapped_len
	        != HSM_GCM_IV_LEN + DEK_LEN + HSM_GCM_TAG_LEN) {
		snprintf(msg, len,
		    "the stored blob is %zu bytes, not a sealed "
		    "%d-byte key",
		    r->dek.wrapped_len, DEK_LEN);
		return "damaged";
	}
	e = dek_open(
	    b->hsm, &row, &r->dek, atomic_load(&b->legacy_open), plain);
	kb_wipe(plain, sizeof(plain));
	if (e == KB_OK)
		return NULL;
	snprintf(msg, len, "%s", kb_err_msg(e));
	kb_err_clear();
	if (dek_is_legacy(&r->dek))
		return "legacy";
	if (e == KB_ERR_NOT_FOUND)
		return "key_missing";
	if (e == KB_ERR_CORRUPT)
		return "moved_or_edited";
	/* The token itself is not answering: that is not about the row. */
	*fatal = e;
	return NULL;
}

static Keybroker__V1__DataKeyCheck *
check_msg(const struct store_rewrap *r, const char *problem, const char *msg)
{
	Keybroker__V1__DataKeyCheck *m = malloc(sizeof(*m));

	if (m == NULL)
		return NULL;
	keybroker__v1__data_key_check__init(m);
	m->tenant_id = rpc_strdup(r->tenant_id);
	m->environment = rpc_strdup(r->name);
	m->version = r->version;
	m->key_id = rpc_strdup(r->dek.key_id);
	m->problem = rpc_strdup(problem);
	m->message = rpc_strdup(msg);
	return m;
}

enum kb_err
rpc_datakeys_verify(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__VerifyDataKeysRequest *in = (const void *)req;
	Keybroker__V1__VerifyDataKeysResponse *out;
	struct store_rewrap *rows = NULL;
	struct store_job scan;
	size_t n = 0, i, limit = in->limit ? in->limit : VERIFY_PAGE;
	char msg[KB_ERR_MSG_MAX];
	const char *problem;
	enum kb_err e, fatal;

	if (limit > VERIFY_PAGE_MAX)
		limit = VERIFY_PAGE_MAX;
	memset(&scan, 0, sizeof(scan));
	snprintf(scan.kind, sizeof(scan.kind), "%s", STORE_SCAN_VERIFY);
	snprintf(scan.tenant_id, sizeof(scan.tenant_id), "%s", in->tenant_id);
	if ((rows = calloc(limit, sizeof(*rows))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	if ((e = store_rewrap_fetch_after(c->b->store, &scan, in->after_env,
	         in->after_version, rows, limit, &n))
	    != KB_OK)
		goto out;
	if ((out = malloc(sizeof(*out))) == NULL) {
		e = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	keybroker__v1__verify_data_keys_response__init(out);
	*resp = &out->base;
	if (n > 0 && (out->failures = calloc(n, sizeof(void *))) == NULL) {
		e = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < n; i++) {
		/* A locked environment's key is out of the token on purpose:
		 * only its tenant's unlock can check it. */
		if (rows[i].locked)
			continue;
		problem = check_row(c->b, &rows[i], msg, sizeof(msg), &fatal);
		if (fatal != KB_OK) {
			e = kb_err_wrap(fatal, "verifying data key %u of %s/%s",
			    rows[i].version, rows[i].tenant_id, rows[i].name);
			goto out;
		}
		if (problem == NULL)
			continue;
		if ((out->failures[out->n_failures] =
		            check_msg(&rows[i], problem, msg))
		    == NULL) {
			e = kb_errf(KB_ERR_NOMEM, "out of memory");
			goto out;
		}
		out->n_failures++;
	}
	out->checked = n;
	out->done = n < limit;
	if (n > 0) {
		out->next_env = rows[n - 1].env_id;
		out->next_version = rows[n - 1].version;
	} else {
		out->next_env = in->after_env;
		out->next_version = in->after_version;
	}
	if (in->after_env == 0 && in->after_version == 0)
		out->total =
		    (uint64_t)store_deks_count(c->b->store, in->tenant_id);
	e = KB_OK;
out:
	if (rows != NULL)
		kb_wipe(rows, limit * sizeof(*rows));
	free(rows);
	return e;
}

/* One failing row of a repair, read back from the database. */
struct repair_row {
	struct store_rewrap r;
	const char *problem;
	char msg[KB_ERR_MSG_MAX];
	int fixed;
};

static enum kb_err
repair_load(struct rpc_ctx *c, const Keybroker__V1__DataKeyRef *ref,
    struct repair_row *out)
{
	struct store_env env;
	enum kb_err e;

	memset(out, 0, sizeof(*out));
	if (ref->version == 0)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "%s/%s: a data key "
		    "version is 1 or more",
		    ref->tenant_id, ref->environment);
	if ((e = store_env_with_dek(c->b->store, ref->tenant_id,
	         ref->environment, ref->version, &env, &out->r.dek))
	    != KB_OK)
		return e;
	snprintf(
	    out->r.tenant_id, sizeof(out->r.tenant_id), "%s", env.tenant_id);
	snprintf(out->r.name, sizeof(out->r.name), "%s", env.name);
	snprintf(out->r.uid, sizeof(out->r.uid), "%s", env.uid);
	out->r.version = ref->version;
	out->r.mode = env.mode;
	out->r.locked = env.state_before_deletion == STORE_ENV_LOCKED;
	return KB_OK;
}

/* A KEK whose token object is gone, but whose parent tenant key is in the
 * token: unwrap it again from the database. */
static int
repair_kek(struct rpc_ctx *c, struct repair_row *rr)
{
	struct store_key k;
	char label[DEK_LABEL_MAX];

	if (rr->r.mode != STORE_MODE_CUSTOMER
	    || store_key_get(c->b->store, rr->r.dek.key_id, &k) != KB_OK
	    || strcmp(k.purpose, "kek") != 0
	    || strcmp(k.tenant_id, rr->r.tenant_id) != 0
	    || (strcmp(k.state, "active") != 0
	        && strcmp(k.state, "installing") != 0)) {
		kb_err_clear();
		return 0;
	}
	dek_label(STORE_MODE_CUSTOMER, k.tenant_id, label, sizeof(label));
	if (hsm_kek_unwrap(c->b->hsm, k.parent_id, k.wrap_alg, k.wrapped,
	        k.wrapped_len, k.id, label)
	    != KB_OK) {
		kb_err_clear();
		return 0;
	}
	log_warn("repair: KEK %s of tenant %s unwrapped again into the token",
	    k.id, k.tenant_id);
	return 1;
}

enum kb_err
rpc_datakeys_repair(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	const Keybroker__V1__RepairDataKeysRequest *in = (const void *)req;
	Keybroker__V1__RepairDataKeysResponse *out;
	struct repair_row *v = NULL;
	struct dek_row row;
	uint8_t plain[DEK_LEN];
	char msg[KB_ERR_MSG_MAX];
	size_t i, j, n = in->n_rows;
	enum kb_err e, fatal;

	if (n > REPAIR_MAX)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "%zu rows to repair; at "
		    "most %d in one call",
		    n, REPAIR_MAX);
	if (n > 0 && (v = calloc(n, sizeof(*v))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	for (i = 0; i < n; i++) {
		if ((e = repair_load(c, in->rows[i], &v[i])) != KB_OK)
			goto out;
		v[i].problem = check_row(
		    c->b, &v[i].r, v[i].msg, sizeof(v[i].msg), &fatal);
		if ((e = fatal) != KB_OK)
			goto out;
		if (v[i].problem == NULL)
			v[i].fixed = -1; /* nothing wrong (any more) */
	}
	for (i = 0; i < n; i++) {
		if (v[i].fixed != 0 || v[i].r.locked)
			continue;
		/* The key is gone from the token but its wrapped copy is not.
		 * Once an earlier row of this call unwrapped it again, the
		 * next rows it seals open as they are (unwrapping again would
		 * find it there): not unrecoverable. */
		if (strcmp(v[i].problem, "key_missing") == 0
		    && (repair_kek(c, &v[i])
		        || check_row(c->b, &v[i].r, msg, sizeof(msg), &fatal)
		            == NULL)) {
			v[i].fixed = 1;
			snprintf(v[i].msg, sizeof(v[i].msg),
			    "its KEK %s was "
			    "unwrapped again into the token from its stored "
			    "copy",
			    v[i].r.dek.key_id);
			continue;
		}
		/* A blob moved from one row to another (two rows swapped): the
		 * healthy source is another failing row, found by opening its
		 * blob with this row's associated data. */
		row = (struct dek_row){v[i].r.tenant_id, v[i].r.name,
		    v[i].r.uid, v[i].r.version, v[i].r.mode};
		for (j = 0; j < n && v[i].fixed == 0; j++) {
			if (j == i || v[j].r.dek.wrapped_len == 0
			    || dek_is_legacy(&v[j].r.dek))
				continue;
			if (dek_open(c->b->hsm, &row, &v[j].r.dek, 0, plain)
			    != KB_OK) {
				kb_err_clear();
				continue;
			}
			kb_wipe(plain, sizeof(plain));
			v[i].fixed = 2 + (int)j;
		}
	}
	/* Write after every match was found from the blobs as they were. */
	for (i = 0; i < n; i++) {
		struct store_dek d;

		if (v[i].fixed < 2)
			continue;
		j = (size_t)(v[i].fixed - 2);
		d = v[j].r.dek;
		d.version = v[i].r.version;
		if ((e = store_dek_replace(
		         c->b->store, v[i].r.tenant_id, v[i].r.name, &d))
		    != KB_OK)
			goto out;
		snprintf(msg, sizeof(msg),
		    "its blob was found in %s/%s version "
		    "%u (moved there) and put back",
		    v[j].r.tenant_id, v[j].r.name, v[j].r.version);
		snprintf(v[i].msg, sizeof(v[i].msg), "%s", msg);
		log_warn("repair: data key %u of %s/%s: %s", v[i].r.version,
		    v[i].r.tenant_id, v[i].r.name, msg);
	}
	for (i = 0; i < n; i++) {
		if (v[i].fixed != 0 || v[i].r.locked
		    || strcmp(v[i].problem, "unrecoverable") == 0)
			continue;
		snprintf(
		    msg, sizeof(msg), "%s: %.120s", v[i].problem, v[i].msg);
		if ((e = store_dek_mark_damaged(c->b->store, v[i].r.tenant_id,
		         v[i].r.name, v[i].r.version, msg))
		    != KB_OK)
			goto out;
		log_error("repair: data key %u of %s/%s is unrecoverable (%s)",
		    v[i].r.version, v[i].r.tenant_id, v[i].r.name, msg);
	}
	if ((out = malloc(sizeof(*out))) == NULL) {
		e = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	keybroker__v1__repair_data_keys_response__init(out);
	*resp = &out->base;
	if (n > 0
	    && ((out->repaired = calloc(n, sizeof(void *))) == NULL
	        || (out->unrecoverable = calloc(n, sizeof(void *))) == NULL)) {
		e = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < n; i++) {
		Keybroker__V1__DataKeyCheck *m;

		if (v[i].fixed < 0 || v[i].r.locked)
			continue;
		m = check_msg(&v[i].r,
		    v[i].fixed > 0 ? "repaired" : "unrecoverable", v[i].msg);
		if (m == NULL) {
			e = kb_errf(KB_ERR_NOMEM, "out of memory");
			goto out;
		}
		if (v[i].fixed > 0)
			out->repaired[out->n_repaired++] = m;
		else
			out->unrecoverable[out->n_unrecoverable++] = m;
	}
	e = KB_OK;
out:
	if (v != NULL)
		kb_wipe(v, n * sizeof(*v));
	free(v);
	return e;
}
