/* SPDX-License-Identifier: Apache-2.0 */
/* method.h: what a method is and what its handler sees of a call: the
 * entry of the method table (dispatch.c), the context handlers get
 * (rpc.h), the stream a server-streaming handler writes to, and a call's
 * result. The dispatcher, the handlers and the rate limiter share these
 * types and nothing else of each other. */
#ifndef KB_METHOD_H
#define KB_METHOD_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/byte_buffer.h>
#include <grpc/status.h>
#include <protobuf-c/protobuf-c.h>

#include "identity.h"
#include "kb_err.h"
#include "scope.h"

struct broker;
struct ratelimit_slot;

/* What a handler sees of its call. */
struct rpc_ctx {
	struct broker *b;
	const struct identity *id;
	const char *method; /* short name, "CreateTenant" */
	const char *peer; /* "ipv4:127.0.0.1:5555" */
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
	/* Set by quorum.c for an RPC_QUORUM_STAGED call a quorum governs:
	 * the handler makes its key pending_approval and then the request
	 * (quorum_stage). */
	int quorum_staged;
	/* Set when an approved staged request runs: the key it holds. */
	const char *staged_key_id;
};

/* A handler returns KB_OK with *resp set (heap-allocated message, every
 * string and array malloc'd: it is freed with kb_wire_free), or an error
 * with a message set by kb_errf. */
typedef enum kb_err (*rpc_handler)(
    struct rpc_ctx *ctx, const ProtobufCMessage *req, ProtobufCMessage **resp);

/* A server-streaming call's sink, provided by the transport. */
struct rpc_stream;

/* Send one message on a stream; blocks until gRPC took it. KB_ERR_CANCELLED
 * when the client went away or the server is stopping. */
typedef enum kb_err (*rpc_stream_send_fn)(
    struct rpc_stream *st, const ProtobufCMessage *msg);
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
	AUDIT_REFUSALS = 0, /* reads: only when refused */
	AUDIT_ALWAYS = 1, /* data keys: every call, once answered */
	AUDIT_CHANGE =
	    2, /* state changes: "started" before, then the outcome */
};

/* How a quorum in force (quorum.h) governs a method. */
enum rpc_quorum {
	RPC_QUORUM_NONE = 0,
	/* The call does not act: it becomes a request, run once approved. */
	RPC_QUORUM_REQUEST = 1,
	/* The call acts at once into a state nothing can use (a key
	 * pending_approval) that only the request's approval completes; a
	 * deny, an expiry or a failure undoes it. */
	RPC_QUORUM_STAGED = 2,
};

struct rpc_method {
	const char *path; /* "/pkg.Service/Method" */
	const char *name;
	unsigned roles; /* ROLE_BIT() mask */
	const ProtobufCMessageDescriptor *req;
	rpc_handler fn; /* unary, or */
	rpc_stream_handler stream; /* server streaming */
	enum rpc_audit audit;
	struct scope_rule scope; /* tenant and environment */
	enum rpc_quorum quorum; /* with a quorum in force (quorum.h) */
};

/* The result of one call. */
struct dispatch_result {
	grpc_status_code code;
	char message[1024];
	grpc_byte_buffer
	    *resp; /* unary, code OK: the answer; caller destroys */
	unsigned
	    retry_after_ms; /* over a rate limit: the trailer retry-after-ms */
	/* ABORTED by a quorum: the approval request made, for the trailer
	 * kb-request-id; "" otherwise. */
	char request_id[40];
};

#endif /* KB_METHOD_H */
