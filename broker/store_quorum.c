/* SPDX-License-Identifier: Apache-2.0 */
/* store_quorum.c: quorum policies, approval requests and approvals. */
#include "store_int.h"

#include <stdlib.h>
#include <string.h>

static void
copy_blob(uint8_t *dst, size_t cap, size_t *len, sqlite3_stmt *st, int col)
{
	const void *p = sqlite3_column_blob(st, col);
	size_t n = (size_t)sqlite3_column_bytes(st, col);

	/* A blob too long for its field is not ours: it cannot verify. */
	if (p == NULL || n > cap)
		n = 0;
	if (n > 0)
		memcpy(dst, p, n);
	*len = n;
}

static void
quorum_row(sqlite3_stmt *st, void *elem)
{
	struct store_quorum *q = elem;

	store_copy_text(q->tenant, sizeof(q->tenant), st, 0);
	q->approvals = (uint32_t)sqlite3_column_int64(st, 1);
	store_copy_text(q->approvers, sizeof(q->approvers), st, 2);
	q->update_time_us = sqlite3_column_int64(st, 3);
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
	    "INSERT OR REPLACE INTO quorum_policies("
	    "tenant_id, approvals, approvers, "
	    "update_time_us, updated_by, seal, operations) "
	    "VALUES (?, ?, ?, ?, ?, ?, ?)";
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;

	if ((e = store_stmt(c, sql, &st)) == KB_OK) {
		sqlite3_bind_text(st, 1, q->tenant, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 2, q->approvals);
		sqlite3_bind_text(st, 3, q->approvers, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 4, q->update_time_us);
		sqlite3_bind_text(st, 5, q->updated_by, -1, SQLITE_STATIC);
		sqlite3_bind_blob(
		    st, 6, q->seal, (int)q->seal_len, SQLITE_STATIC);
		sqlite3_bind_text(st, 7, q->operations, -1, SQLITE_STATIC);
		e = store_step_done(c, st, "writing a quorum policy");
	}
	store_conn_put(s, c);
	return e;
}

#define REQ_COLS                                                               \
	"id, method, tenant_id, environment, arguments, call, "                \
	"proof_fingerprint, target, requester, create_time_us, "               \
	"expire_time_us, approvals_needed, approvers, state, result, "         \
	"update_time_us, seal, key_id, state_seal"

static void
req_row(sqlite3_stmt *st, void *elem)
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
	r->create_time_us = sqlite3_column_int64(st, 9);
	r->expire_time_us = sqlite3_column_int64(st, 10);
	r->needed = (uint32_t)sqlite3_column_int64(st, 11);
	store_copy_text(r->approvers, sizeof(r->approvers), st, 12);
	store_copy_text(r->state, sizeof(r->state), st, 13);
	store_copy_text(r->result, sizeof(r->result), st, 14);
	r->update_time_us = sqlite3_column_int64(st, 15);
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
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;

	if ((e = store_stmt(c, sql, &st)) == KB_OK) {
		sqlite3_bind_text(st, 1, r->id, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, r->method, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, r->tenant, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 4, r->env, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 5, r->args, -1, SQLITE_STATIC);
		sqlite3_bind_blob(
		    st, 6, r->call, (int)r->call_len, SQLITE_STATIC);
		sqlite3_bind_text(st, 7, r->proof_fp, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 8, r->target, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 9, r->requester, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 10, r->create_time_us);
		sqlite3_bind_int64(st, 11, r->expire_time_us);
		sqlite3_bind_int64(st, 12, r->needed);
		sqlite3_bind_text(st, 13, r->approvers, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 14, r->state, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 15, r->result, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 16, r->update_time_us);
		sqlite3_bind_blob(
		    st, 17, r->seal, (int)r->seal_len, SQLITE_STATIC);
		sqlite3_bind_text(st, 18, r->key_id, -1, SQLITE_STATIC);
		sqlite3_bind_blob(st, 19, r->state_seal, (int)r->state_seal_len,
		    SQLITE_STATIC);
		e = store_step_done(c, st, "recording an approval request");
	}
	store_conn_put(s, c);
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
	static const char sql[] = "SELECT " REQ_COLS " FROM approval_requests "
	                          "WHERE (?1 IS NULL OR tenant_id = ?1) AND "
	                          "(?2 OR state = 'pending') "
	                          "ORDER BY create_time_us DESC, id LIMIT 1000";
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;

	if ((e = store_stmt(c, sql, &st)) == KB_OK) {
		if (tenant != NULL)
			sqlite3_bind_text(st, 1, tenant, -1, SQLITE_STATIC);
		else
			sqlite3_bind_null(st, 1);
		sqlite3_bind_int(st, 2, all != 0);
		e = store_collect(c, st, sizeof(**out), req_row, (void **)out,
		    n, "listing approval requests");
	}
	store_conn_put(s, c);
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
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;

	if ((e = store_stmt(c, sql, &st)) == KB_OK) {
		sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, from, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, to, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 4, result, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 5, now);
		sqlite3_bind_blob(
		    st, 6, state_seal, (int)state_seal_len, SQLITE_STATIC);
		if ((e = store_step_done(c, st, "updating an approval request"))
		        == KB_OK
		    && sqlite3_changes(c->db) != 1)
			e = kb_errf(KB_ERR_FAILED_PRECONDITION,
			    "approval request "
			    "%s is no longer %s",
			    id, from);
	}
	store_conn_put(s, c);
	return e;
}

enum kb_err
store_approval_req_holds(struct store *s, const char *key_id, int *held)
{
	static const char sql[] =
	    "SELECT count(*) FROM approval_requests "
	    "WHERE key_id = ? AND state IN ('pending', 'executing')";
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;
	int rc;

	*held = 0;
	if ((e = store_stmt(c, sql, &st)) == KB_OK) {
		sqlite3_bind_text(st, 1, key_id, -1, SQLITE_STATIC);
		if ((rc = sqlite3_step(st)) == SQLITE_ROW)
			*held = sqlite3_column_int64(st, 0) > 0;
		else
			e = store_sql_err(
			    c->db, rc, "finding the request of a key");
		sqlite3_reset(st);
	}
	store_conn_put(s, c);
	return e;
}

static void
approval_row(sqlite3_stmt *st, void *elem)
{
	struct store_approval *a = elem;

	store_copy_text(a->request_id, sizeof(a->request_id), st, 0);
	store_copy_text(a->approver, sizeof(a->approver), st, 1);
	store_copy_text(a->decision, sizeof(a->decision), st, 2);
	a->time_us = sqlite3_column_int64(st, 3);
	copy_blob(a->seal, sizeof(a->seal), &a->seal_len, st, 4);
}

enum kb_err
store_approval_insert(struct store *s, const struct store_approval *a)
{
	static const char sql[] =
	    "INSERT INTO approvals(request_id, approver, "
	    "decision, time_us, seal) VALUES (?, ?, ?, ?, ?)";
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;

	if ((e = store_stmt(c, sql, &st)) == KB_OK) {
		sqlite3_bind_text(st, 1, a->request_id, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, a->approver, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, a->decision, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 4, a->time_us);
		sqlite3_bind_blob(
		    st, 5, a->seal, (int)a->seal_len, SQLITE_STATIC);
		e = store_step_done(c, st, "recording an approval");
	}
	store_conn_put(s, c);
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
	struct conn *c = store_conn_get(s);
	sqlite3_stmt *st;
	enum kb_err e;

	if ((e = store_stmt(c, sql, &st)) == KB_OK) {
		sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
		e = store_collect(c, st, sizeof(**out), approval_row,
		    (void **)out, n, "listing approvals");
	}
	store_conn_put(s, c);
	return e;
}
