/* SPDX-License-Identifier: Apache-2.0 */
/* store_quorum.c: quorum policies, approval requests and approvals. */
#include "store_int.h"

#include <stdlib.h>
#include <string.h>

static void
copy_blob(uint8_t *dst, size_t cap, size_t *len, struct db_stmt *st, int col)
{
	const void *p = db_column_blob(st, col);
	size_t n = (size_t)db_column_bytes(st, col);

	/* A blob too long for its field is not ours: it cannot verify. */
	if (p == NULL || n > cap)
		n = 0;
	if (n > 0)
		memcpy(dst, p, n);
	*len = n;
}

static void
quorum_row(struct db_stmt *st, void *elem)
{
	struct store_quorum *q = elem;

	store_copy_text(q->tenant, sizeof(q->tenant), st, 0);
	q->approvals = (uint32_t)db_column_int64(st, 1);
	store_copy_text(q->approvers, sizeof(q->approvers), st, 2);
	q->update_time_us = db_column_int64(st, 3);
	store_copy_text(q->updated_by, sizeof(q->updated_by), st, 4);
	copy_blob(q->seal, sizeof(q->seal), &q->seal_len, st, 5);
	store_copy_text(q->operations, sizeof(q->operations), st, 6);
}

enum kb_err
store_quorum_get(struct store *s, const char *tenant, struct store_quorum *out)
{
	static const char sql[] =
	    "SELECT tenant_id, approvals, approvers, "
	    "update_time_us, updated_by, seal, operations FROM quorum_policies "
	    "WHERE tenant_id = ?";

	memset(out, 0, sizeof(*out));
	return store_get_one(
	    s, sql, tenant, NULL, quorum_row, out, "quorum policy of");
}

enum kb_err
store_quorum_put(struct store *s, const struct store_quorum *q)
{
	static const char sql[] =
	    "INSERT INTO quorum_policies(tenant_id, approvals, approvers, "
	    "update_time_us, updated_by, seal, operations) "
	    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(tenant_id) DO UPDATE SET "
	    "approvals = excluded.approvals, approvers = excluded.approvers, "
	    "update_time_us = excluded.update_time_us, "
	    "updated_by = excluded.updated_by, seal = excluded.seal, "
	    "operations = excluded.operations";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;

	if ((e = db_prepare(c, sql, &st)) == KB_OK) {
		db_bind_text(st, 1, q->tenant);
		db_bind_int64(st, 2, q->approvals);
		db_bind_text(st, 3, q->approvers);
		db_bind_int64(st, 4, q->update_time_us);
		db_bind_text(st, 5, q->updated_by);
		db_bind_blob(st, 6, q->seal, q->seal_len);
		db_bind_text(st, 7, q->operations);
		e = store_step_done(c, st, "writing a quorum policy");
	}
	db_conn_put(s->db, c);
	return e;
}

#define REQ_COLS                                                               \
	"id, method, tenant_id, environment, arguments, call, "                \
	"proof_fingerprint, target, requester, create_time_us, "               \
	"expire_time_us, approvals_needed, approvers, state, result, "         \
	"update_time_us, seal, key_id, state_seal"

static void
req_row(struct db_stmt *st, void *elem)
{
	struct store_approval_req *r = elem;

	store_copy_text(r->id, sizeof(r->id), st, 0);
	store_copy_text(r->method, sizeof(r->method), st, 1);
	store_copy_text(r->tenant, sizeof(r->tenant), st, 2);
	store_copy_text(r->env, sizeof(r->env), st, 3);
	store_copy_text(r->args, sizeof(r->args), st, 4);
	copy_blob(r->call, sizeof(r->call), &r->call_len, st, 5);
	store_copy_text(r->proof_fp, sizeof(r->proof_fp), st, 6);
	store_copy_text(r->target, sizeof(r->target), st, 7);
	store_copy_text(r->requester, sizeof(r->requester), st, 8);
	r->create_time_us = db_column_int64(st, 9);
	r->expire_time_us = db_column_int64(st, 10);
	r->needed = (uint32_t)db_column_int64(st, 11);
	store_copy_text(r->approvers, sizeof(r->approvers), st, 12);
	store_copy_text(r->state, sizeof(r->state), st, 13);
	store_copy_text(r->result, sizeof(r->result), st, 14);
	r->update_time_us = db_column_int64(st, 15);
	copy_blob(r->seal, sizeof(r->seal), &r->seal_len, st, 16);
	store_copy_text(r->key_id, sizeof(r->key_id), st, 17);
	copy_blob(
	    r->state_seal, sizeof(r->state_seal), &r->state_seal_len, st, 18);
}

enum kb_err
store_approval_req_insert(struct store *s, const struct store_approval_req *r)
{
	static const char sql[] =
	    "INSERT INTO approval_requests(" REQ_COLS
	    ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
	    "?)";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;

	if ((e = db_prepare(c, sql, &st)) == KB_OK) {
		db_bind_text(st, 1, r->id);
		db_bind_text(st, 2, r->method);
		db_bind_text(st, 3, r->tenant);
		db_bind_text(st, 4, r->env);
		db_bind_text(st, 5, r->args);
		db_bind_blob(st, 6, r->call, r->call_len);
		db_bind_text(st, 7, r->proof_fp);
		db_bind_text(st, 8, r->target);
		db_bind_text(st, 9, r->requester);
		db_bind_int64(st, 10, r->create_time_us);
		db_bind_int64(st, 11, r->expire_time_us);
		db_bind_int64(st, 12, r->needed);
		db_bind_text(st, 13, r->approvers);
		db_bind_text(st, 14, r->state);
		db_bind_text(st, 15, r->result);
		db_bind_int64(st, 16, r->update_time_us);
		db_bind_blob(st, 17, r->seal, r->seal_len);
		db_bind_text(st, 18, r->key_id);
		db_bind_blob(st, 19, r->state_seal, r->state_seal_len);
		e = store_step_done(c, st, "recording an approval request");
	}
	db_conn_put(s->db, c);
	return e;
}

enum kb_err
store_approval_req_get(
    struct store *s, const char *id, struct store_approval_req *out)
{
	static const char sql[] = "SELECT " REQ_COLS " FROM approval_requests "
	                          "WHERE id = ?";

	memset(out, 0, sizeof(*out));
	return store_get_one(
	    s, sql, id, NULL, req_row, out, "approval request");
}

enum kb_err
store_approval_req_list(struct store *s, const char *tenant, int all,
    struct store_approval_req **out, size_t *n)
{
	static const char sql[] =
	    "SELECT " REQ_COLS " FROM approval_requests "
	    "WHERE (CAST(?1 AS TEXT) IS NULL OR "
	    "tenant_id = ?1) AND (CAST(?2 AS BIGINT) != 0 "
	    "OR state = 'pending') "
	    "ORDER BY create_time_us DESC, id LIMIT 1000";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;

	if ((e = db_prepare(c, sql, &st)) == KB_OK) {
		if (tenant != NULL)
			db_bind_text(st, 1, tenant);
		else
			db_bind_null(st, 1);
		db_bind_int64(st, 2, all != 0);
		e = store_collect(c, st, sizeof(**out), req_row, (void **)out,
		    n, "listing approval requests");
	}
	db_conn_put(s->db, c);
	return e;
}

enum kb_err
store_approval_req_move(struct store *s, const char *id, const char *from,
    const char *to, const char *result, int64_t now, const uint8_t *state_seal,
    size_t state_seal_len)
{
	static const char sql[] =
	    "UPDATE approval_requests SET state = ?3, "
	    "result = ?4, update_time_us = ?5, state_seal = ?6 "
	    "WHERE id = ?1 AND state = ?2";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;

	if ((e = db_prepare(c, sql, &st)) == KB_OK) {
		db_bind_text(st, 1, id);
		db_bind_text(st, 2, from);
		db_bind_text(st, 3, to);
		db_bind_text(st, 4, result);
		db_bind_int64(st, 5, now);
		db_bind_blob(st, 6, state_seal, state_seal_len);
		if ((e = store_step_done(c, st, "updating an approval request"))
		        == KB_OK
		    && db_changes(c) != 1)
			e = kb_errf(KB_ERR_FAILED_PRECONDITION,
			    "approval request "
			    "%s is no longer %s",
			    id, from);
	}
	db_conn_put(s->db, c);
	return e;
}

enum kb_err
store_approval_req_holds(struct store *s, const char *key_id, int *held)
{
	static const char sql[] =
	    "SELECT count(*) FROM approval_requests "
	    "WHERE key_id = ? AND state IN ('pending', 'executing')";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;
	enum db_step rc;

	*held = 0;
	if ((e = db_prepare(c, sql, &st)) == KB_OK) {
		db_bind_text(st, 1, key_id);
		if ((rc = db_step(st)) == DB_ROW)
			*held = db_column_int64(st, 0) > 0;
		else
			e = db_err(c, "finding the request of a key");
		db_reset(st);
	}
	db_conn_put(s->db, c);
	return e;
}

static void
approval_row(struct db_stmt *st, void *elem)
{
	struct store_approval *a = elem;

	store_copy_text(a->request_id, sizeof(a->request_id), st, 0);
	store_copy_text(a->approver, sizeof(a->approver), st, 1);
	store_copy_text(a->decision, sizeof(a->decision), st, 2);
	a->time_us = db_column_int64(st, 3);
	copy_blob(a->seal, sizeof(a->seal), &a->seal_len, st, 4);
}

enum kb_err
store_approval_insert(struct store *s, const struct store_approval *a)
{
	static const char sql[] =
	    "INSERT INTO approvals(request_id, approver, "
	    "decision, time_us, seal) VALUES (?, ?, ?, ?, ?)";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;

	if ((e = db_prepare(c, sql, &st)) == KB_OK) {
		db_bind_text(st, 1, a->request_id);
		db_bind_text(st, 2, a->approver);
		db_bind_text(st, 3, a->decision);
		db_bind_int64(st, 4, a->time_us);
		db_bind_blob(st, 5, a->seal, a->seal_len);
		e = store_step_done(c, st, "recording an approval");
	}
	db_conn_put(s->db, c);
	return e;
}

enum kb_err
store_approval_list(
    struct store *s, const char *id, struct store_approval **out, size_t *n)
{
	static const char sql[] =
	    "SELECT request_id, approver, decision, "
	    "time_us, seal FROM approvals WHERE request_id = ? "
	    "ORDER BY time_us, approver";
	struct db_conn *c = db_conn_get(s->db);
	struct db_stmt *st;
	enum kb_err e;

	if ((e = db_prepare(c, sql, &st)) == KB_OK) {
		db_bind_text(st, 1, id);
		e = store_collect(c, st, sizeof(**out), approval_row,
		    (void **)out, n, "listing approvals");
	}
	db_conn_put(s->db, c);
	return e;
}
