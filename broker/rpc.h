/* SPDX-License-Identifier: Apache-2.0 */
/* rpc.h: request handlers, one per method (see dispatch.c's table).
 *
 * A handler runs only after the table's checks passed: the caller's role,
 * and the tenant and environment names its scope rule reads (valid, and
 * within the caller's certificate scopes). Handlers check only what
 * depends on more than those names (SCOPE_HANDLER entries: ListTenants,
 * GetJob, ListEvents, TailEvents) and the other fields they read. */
#ifndef KB_RPC_H
#define KB_RPC_H

#include "broker.h"
#include "method.h"

/* rpc_health.c */
enum kb_err rpc_health_check(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_whoami(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);

/* rpc_admin.c */
enum kb_err rpc_tenant_create(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_tenant_list(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_tenant_get(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_env_create(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_env_list(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_env_get(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);

/* rpc_datakey.c */
enum kb_err rpc_datakey_get(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);

/* rpc_keys.c */
enum kb_err rpc_key_generate(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_key_upload(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
/* An approved GenerateKey/UploadKey request (quorum.h): its key
 * (c->staged_key_id) from pending_approval to available, the add-key rule
 * checked at this moment. Answers the Key. */
enum kb_err rpc_key_stage_commit(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_key_list(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_key_get(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_key_activate(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_platform_rotate(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_datakeys_verify(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_datakeys_repair(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_job_get(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_kek_rotate(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_kek_get(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);

/* rpc_lock.c */
enum kb_err rpc_tenant_lock(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_tenant_unlock(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
/* A lock request's proof (.pfx + password or .byok, secret) checked against
 * the tenant's active key now, leaving nothing in the token: fp gets its
 * fingerprint. For quorum.c, which keeps only that fingerprint. */
enum kb_err rpc_lock_proof(
    struct rpc_ctx *c, const ProtobufCMessage *req, char fp[65]);
enum kb_err rpc_env_unlock(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);

/* rpc_envkeys.c */
enum kb_err rpc_env_apply_key(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_env_revert_key(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_env_reset(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_env_backup_create(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_env_backup_list(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_env_restore(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_env_copy(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
/* DEK rotation per environment (issue 14): a new current version; the
 * versions below a bound destroyed. */
enum kb_err rpc_env_rotate_dek(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_env_retire_deks(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);

/* rpc_census.c: the key census, key retirement (issue 14) */
enum kb_err rpc_key_census(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_key_retire(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);

/* rpc_audit.c */
enum kb_err rpc_audit_list(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_audit_tail(struct rpc_ctx *c, const ProtobufCMessage *req,
    const struct rpc_stream_ops *ops, struct rpc_stream *st);
enum kb_err rpc_audit_checkpoints(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_audit_key(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_audit_keys(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_audit_key_rotate(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);

/* rpc_clock.c */
enum kb_err rpc_clock_get(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_clock_confirm(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
/* rpc_backup.c */
enum kb_err rpc_backup_create(struct rpc_ctx *c, const ProtobufCMessage *req,
    const struct rpc_stream_ops *ops, struct rpc_stream *st);

/* rpc_quorum.c */
enum kb_err rpc_quorum_set(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_quorum_get(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_approval_list(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_approval_get(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_approval_approve(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_approval_deny(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);

/* rpc_doctor.c */
enum kb_err rpc_doctor_run(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);

/* rpc_delete.c: deletion with a way back (issue 14) */
enum kb_err rpc_env_delete(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_env_undelete(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_key_delete(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);
enum kb_err rpc_key_undelete(
    struct rpc_ctx *c, const ProtobufCMessage *req, ProtobufCMessage **resp);

/* Helpers for handlers (rpc_util.c). */
struct policy_tenant;
struct Keybroker__V1__Tenant;
struct Keybroker__V1__Environment;
struct Keybroker__V1__Key;
struct Keybroker__V1__Job;
struct Keybroker__V1__Backup;

char *rpc_strdup(const char *s); /* never returns NULL: "" on OOM */
enum kb_err rpc_check_platform_access(struct rpc_ctx *c, const char *what);
/* Response messages from store records (NULL on allocation failure). */
struct Keybroker__V1__Tenant *rpc_tenant_msg(const struct store_tenant *t);
struct Keybroker__V1__Environment *rpc_env_msg(const struct store_env *env);
struct Keybroker__V1__Key *rpc_key_msg(const struct store_key *k);
struct Keybroker__V1__Job *rpc_job_msg(const struct store_job *j);
struct Keybroker__V1__Backup *rpc_backup_msg(const struct store_backup *bk);
/* FAILED_PRECONDITION: `what` refused, `env` is pending deletion (naming
 * the time it becomes final and the undelete command). */
enum kb_err rpc_env_pending_refusal(
    const struct store_env *env, const char *what);
/* The policy's view of a tenant record. */
void rpc_policy_tenant(const struct store_tenant *t, struct policy_tenant *p);
/* Reply with a message or KB_ERR_NOMEM when building it failed. */
enum kb_err rpc_reply(ProtobufCMessage **resp, void *msg);

#endif /* KB_RPC_H */
