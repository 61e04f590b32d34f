/* SPDX-License-Identifier: Apache-2.0 */
/* dispatch.h: the table of methods, the roles and tenant scope each
 * accepts, and the one dispatcher that decodes, authenticates, authorizes,
 * runs and audits a call. It knows nothing of gRPC calls or completion queues (a stream is
 * an opaque sink), so tests and fuzzers can drive it in-process. */
#ifndef KB_DISPATCH_H
#define KB_DISPATCH_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/byte_buffer.h>
#include <grpc/status.h>
#include <protobuf-c/protobuf-c.h>

#include "broker.h"
#include "identity.h"
#include "scope.h"

struct ratelimit_slot;

/* What a handler sees of its call. */
struct rpc_ctx {
	struct broker *b;
	const struct identity *id;
	const char *method;        /* short name, "CreateTenant" */
	const char *peer;          /* "ipv4:127.0.0.1:5555" */
	int64_t now_us;
	char request_id[40];
	/* A handler may name the key its call concerned (generated, locked,
	 * wrapping the DEK) for the audit record. */
	char audit_key_id[72];
	/* Run after the call's audit record is committed (e.g. start a job,
	 * so its events follow the call's). */
	void (*after_audit)(struct broker *b);
	/* Set by a streaming handler once its stream is open: its end (client
	 * gone, broker stopping) is then not a refusal to audit. */
	int stream_open;
	/* The stream slot ratelimit.c holds for this call, or NULL. */
	struct ratelimit_slot *rate_slot;
	/* Set by quorum.c: this call made approval request `approval_id`
	 * instead of acting (its status is KB_ERR_APPROVAL_REQUIRED). */
	char approval_id[40];
	/* Set when an approved request runs: the fingerprint of the proof
	 * verified when it was requested (a lock's .pfx/.byok is not kept). */
	const char *approved_fp;
};

/* A handler returns KB_OK with *resp set (heap-allocated message, every
 * string and array malloc'd: it is freed with kb_wire_free), or an error
 * with a message set by kb_errf. */
typedef enum kb_err (*rpc_handler)(struct rpc_ctx *ctx,
    const ProtobufCMessage *req, ProtobufCMessage **resp);

/* A server-streaming call's sink, provided by the transport. */
struct rpc_stream;

/* Send one message on a stream; blocks until gRPC took it. KB_ERR_CANCELLED
 * when the client went away or the server is stopping. */
typedef enum kb_err (*rpc_stream_send_fn)(struct rpc_stream *st,
    const ProtobufCMessage *msg);
/* Whether the stream should end now (client gone, server stopping). */
typedef int (*rpc_stream_done_fn)(struct rpc_stream *st);

struct rpc_stream_ops {
	rpc_stream_send_fn send;
	rpc_stream_done_fn done;
};

/* A streaming handler sends with ops->send and returns the final status. */
typedef enum kb_err (*rpc_stream_handler)(struct rpc_ctx *ctx,
    const ProtobufCMessage *req, const struct rpc_stream_ops *ops,
    struct rpc_stream *st);

/* Which calls the audit log records. Every refused call is recorded. */
enum rpc_audit {
	AUDIT_REFUSALS = 0,   /* reads: only when refused */
	AUDIT_ALWAYS = 1,     /* data keys: every call, once answered */
	AUDIT_CHANGE = 2,     /* state changes: "started" before, then the outcome */
};

struct rpc_method {
	const char *path;                         /* "/pkg.Service/Method" */
	const char *name;
	unsigned roles;                           /* ROLE_BIT() mask */
	const ProtobufCMessageDescriptor *req;
	rpc_handler fn;                           /* unary, or */
	rpc_stream_handler stream;                /* server streaming */
	enum rpc_audit audit;
	struct scope_rule scope;                  /* tenant and environment */
	int quorum;        /* with a quorum in force, a request (quorum.h) */
};

/* The method table, ending with a zeroed entry. */
extern const struct rpc_method dispatch_methods[];

/* Whether every entry of `table` (ending with a zeroed entry) is sound:
 * a path, a name, roles, a request type, exactly one handler, and a scope
 * rule that fits its request (scope_rule_check). KB_ERR_CONFIG naming the
 * method and what is wrong otherwise. keybrokerd refuses to start on it. */
enum kb_err dispatch_table_check(const struct rpc_method *table);

/* The entry for a method path, or NULL. */
const struct rpc_method *dispatch_find(const char *path, size_t len);

/* The result of one call. */
struct dispatch_result {
	grpc_status_code code;
	char message[1024];
	grpc_byte_buffer *resp;    /* unary, code OK: the answer; caller destroys */
	unsigned retry_after_ms;   /* over a rate limit: the trailer retry-after-ms */
	/* ABORTED by a quorum: the approval request made, for the trailer
	 * kb-request-id; "" otherwise. */
	char request_id[40];
};

/* The caller as the transport saw it. */
struct dispatch_peer {
	const char *peer;          /* "ipv4:127.0.0.1:5555" */
	const char *cert_pem;      /* client certificate, PEM; NULL if none */
	size_t pem_len;
};

/* Run one call: method lookup (UNIMPLEMENTED), decoding (INVALID_ARGUMENT,
 * RESOURCE_EXHAUSTED), authentication (UNAUTHENTICATED), role check
 * (PERMISSION_DENIED), the tenant and environment names and the caller's
 * scope over them (INVALID_ARGUMENT, PERMISSION_DENIED: scope.h), the
 * handler, and the audit record. A call the audit
 * log must record is answered only after its event is committed; if it
 * cannot be, the answer is UNAVAILABLE. For a streaming method, `ops` and
 * `st` carry the messages; otherwise they may be NULL. Always produces a
 * status. */
void dispatch_call(struct broker *b, const char *path, size_t path_len,
    const struct dispatch_peer *peer, grpc_byte_buffer *req,
    const struct rpc_stream_ops *ops, struct rpc_stream *st,
    struct dispatch_result *res);

/* Run an authorized, approved call of `m` now with `ctx` (quorum.c): its
 * "started" event, the handler with every policy rule checked at this
 * moment, its outcome event (request id ctx->request_id), then
 * ctx->after_audit. result[0..len) gets "ok" or "STATUS: reason". Returns
 * the handler's error; on KB_OK *out is its answer (kb_wire_free). */
enum kb_err dispatch_execute(struct rpc_ctx *ctx, const struct rpc_method *m,
    const ProtobufCMessage *in, ProtobufCMessage **out, char *result,
    size_t len);

#endif /* KB_DISPATCH_H */
