/* SPDX-License-Identifier: Apache-2.0 */
/* quorum.h: M-of-N approval of the operations that cannot be undone.
 *
 * A policy per tenant (and a platform default) says how many approvals a
 * covered call (the method table's QUORUM entries) needs and from whom.
 * With one in force the call does not act: quorum_intercept stores an
 * approval request (no secrets: a lock keeps only its proof's verified
 * fingerprint) and the call answers KB_ERR_APPROVAL_REQUIRED. When the
 * M-th approval arrives the call runs through dispatch_execute, every
 * policy rule checked at that moment. Requests, approvals and policies are
 * sealed with AES-256-GCM inside the token (key label "kb:quorum"): a row
 * inserted or edited by hand fails its check and does not count. A
 * request has a second seal over its state, made again at each move, and
 * a one-time object in the token while it is pending (label
 * "kb:quorum-pending"): a request put back to pending by hand fails its
 * seal, and one rolled back whole (an older copy of its row) finds its
 * object gone and does not run again.
 *
 * RPC_QUORUM_STAGED calls (GenerateKey, UploadKey) are covered while the
 * tenant has an active key: the handler makes the key at once, in state
 * pending_approval (no secret is kept to run the call later: the .pfx goes
 * back to the requester once, as always), and quorum_stage makes the
 * request. Its approval makes the key available (every rule checked
 * again); a deny, an expiry or a failure destroys its token object. */
#ifndef KB_QUORUM_H
#define KB_QUORUM_H

#include "broker.h"
#include "method.h"
#include "store.h"

/* What quorum.c uses of the dispatcher and the handlers, given to it by
 * whoever starts the broker (main()), so that neither includes the other:
 * the method table, the way an approved call runs (dispatch_execute), and
 * the check of a lock's proof (rpc_lock_proof). */
struct quorum_hooks {
	const struct rpc_method *methods;
	enum kb_err (*execute)(struct rpc_ctx *ctx, const struct rpc_method *m,
	    const ProtobufCMessage *in, ProtobufCMessage **out, char *result,
	    size_t len);
	enum kb_err (*lock_proof)(
	    struct rpc_ctx *c, const ProtobufCMessage *req, char fp[65]);
	/* An approved staged request's handler: its key (ctx->staged_key_id)
	 * made usable (rpc_key_stage_commit). */
	rpc_handler stage_commit;
};

/* Set once at start-up, before the first call. Without them no request
 * can be made or run (KB_ERR_INTERNAL). */
void quorum_hooks_set(const struct quorum_hooks *h);

/* Between the scope check and the handler of a covered call `m`: KB_OK
 * when no quorum governs it (run it now); KB_ERR_APPROVAL_REQUIRED with
 * c->approval_id set once the request is stored; another error (a lock's
 * proof that does not verify, a quorum nobody could meet, a policy that
 * fails its seal) refuses the call. */
enum kb_err quorum_intercept(
    struct rpc_ctx *c, const struct rpc_method *m, const ProtobufCMessage *in);

/* After an RPC_QUORUM_STAGED handler made key `key_id` pending_approval
 * (c->quorum_staged set by quorum_intercept): store the request that holds
 * it, set c->approval_id. On failure the caller destroys the key. */
enum kb_err quorum_stage(
    struct rpc_ctx *c, const ProtobufCMessage *in, const char *key_id);

/* Check the operation names a policy lists (n = 0: every one) and write
 * them to `out` as a policy stores them: in the method table's order,
 * SetQuorum always among them. INVALID_ARGUMENT names a name no quorum
 * covers, with the ones it can. */
enum kb_err quorum_operations_parse(
    char *const *names, size_t n, char *out, size_t len);

/* The operations policy q covers, as "A,B,..." in the table's order. */
void quorum_operations_text(
    const struct store_quorum *q, char *out, size_t len);

/* The policy governing `tenant` ("" the platform): its own, else the
 * platform default (*inherited = 1), else one with approvals 0. Its seal
 * is checked: KB_ERR_CORRUPT when it fails. */
enum kb_err quorum_policy_effective(struct broker *b, const char *tenant,
    struct store_quorum *q, int *inherited);

/* Seal and store q (the caller filled every field but the seal). */
enum kb_err quorum_policy_store(struct broker *b, struct store_quorum *q);

/* Request `id` as caller c may see it: its seal checked (KB_ERR_CORRUPT),
 * the caller's scope over its target checked as its method's table entry
 * says (PERMISSION_DENIED), and a pending request past its expiry moved to
 * expired (an audit event). *approvals (malloc'd, may be NULL) get the
 * decisions with a valid seal; *napprovals their number. */
enum kb_err quorum_request_load(struct rpc_ctx *c, const char *id,
    struct store_approval_req *r, struct store_approval **approvals,
    size_t *napprovals);

/* Caller c's decision on request `id` (approve = 1, or deny): the rules
 * of issue 15 (the requester never counts, one decision per CN, one deny
 * cancels, an expired request cannot be decided, only listed approvers).
 * The M-th approval runs the operation; its result is stored with the
 * request. *r is the request afterwards. c->request_id becomes `id`, so
 * the call's audit record names the request. */
enum kb_err quorum_decide(struct rpc_ctx *c, const char *id, int approve,
    struct store_approval_req *r);

/* Every pending request past its expiry moved to expired (audited);
 * `tenant` NULL for all. */
void quorum_expire_due(struct rpc_ctx *c, const char *tenant);

/* quorum_expire_due of every tenant as the broker itself, for the
 * sweeper (jobs_sweep_hook_set): a staged key does not wait in the token
 * for someone to read its expired request. */
void quorum_sweep(struct broker *b);

#endif /* KB_QUORUM_H */
