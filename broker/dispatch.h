/* SPDX-License-Identifier: Apache-2.0 */
/* dispatch.h: the table of methods, the roles and tenant scope each
 * accepts, and the one dispatcher that decodes, authenticates, authorizes,
 * runs and audits a call. It knows nothing of gRPC calls or completion queues
 * (a stream is an opaque sink), so tests and fuzzers can drive it in-process.
 */
#ifndef KB_DISPATCH_H
#define KB_DISPATCH_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/byte_buffer.h>
#include <grpc/status.h>
#include <protobuf-c/protobuf-c.h>

#include "broker.h"
#include "method.h"

/* The method table, ending with a zeroed entry. */
extern const struct rpc_method dispatch_methods[];

/* Whether every entry of `table` (ending with a zeroed entry) is sound:
 * a path, a name, roles, a request type, exactly one handler, and a scope
 * rule that fits its request (scope_rule_check). KB_ERR_CONFIG naming the
 * method and what is wrong otherwise. keybrokerd refuses to start on it. */
enum kb_err dispatch_table_check(const struct rpc_method *table);

/* The entry for a method path, or NULL. */
const struct rpc_method *dispatch_find(const char *path, size_t len);

/* The caller as the transport saw it. */
struct dispatch_peer {
	const char *peer; /* "ipv4:127.0.0.1:5555" */
	const char *cert_pem; /* client certificate, PEM; NULL if none */
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

/* The number of methods in dispatch_methods (the index of the metrics'
 * slot for paths none has), and `n` names in table order: the metrics'
 * labels. `names` must hold dispatch_method_count() entries. */
size_t dispatch_method_count(void);
void dispatch_method_names(const char **names);

#endif /* KB_DISPATCH_H */
