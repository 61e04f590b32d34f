/* SPDX-License-Identifier: Apache-2.0 */
/* dispatch.h: the table of methods, the roles each accepts, and the one
 * dispatcher that authenticates, authorizes, decodes and runs a call. It
 * knows nothing of gRPC calls or completion queues, so it can be driven
 * in-process by tests and fuzzers. */
#ifndef KB_DISPATCH_H
#define KB_DISPATCH_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/byte_buffer.h>
#include <grpc/status.h>
#include <protobuf-c/protobuf-c.h>

#include "broker.h"
#include "identity.h"

/* What a handler sees of its call. */
struct rpc_ctx {
	struct broker *b;
	const struct identity *id;
	const char *method;        /* short name, "CreateTenant" */
	const char *peer;          /* "ipv4:127.0.0.1:5555" */
	int64_t now_us;
};

/* A handler returns KB_OK with *resp set (heap-allocated message, every
 * string and array malloc'd: it is freed with kb_wire_free), or an error
 * with a message set by kb_errf. */
typedef enum kb_err (*rpc_handler)(struct rpc_ctx *ctx,
    const ProtobufCMessage *req, ProtobufCMessage **resp);

struct rpc_method {
	const char *path;                         /* "/pkg.Service/Method" */
	const char *name;
	unsigned roles;                           /* ROLE_BIT() mask */
	const ProtobufCMessageDescriptor *req;
	rpc_handler fn;
};

/* The method table, ending with a zeroed entry. */
extern const struct rpc_method dispatch_methods[];

/* The entry for a method path, or NULL. */
const struct rpc_method *dispatch_find(const char *path, size_t len);

/* The result of one unary call. */
struct dispatch_result {
	grpc_status_code code;
	char message[1024];
	grpc_byte_buffer *resp;    /* set when code is OK; caller destroys */
};

/* Run one unary call: method lookup (UNIMPLEMENTED), authentication from
 * the client certificate PEM (UNAUTHENTICATED), role check
 * (PERMISSION_DENIED), decoding (INVALID_ARGUMENT / RESOURCE_EXHAUSTED),
 * then the handler. Never fails to produce a status. */
void dispatch_unary(struct broker *b, const char *path, size_t path_len,
    const char *peer, const char *cert_pem, size_t pem_len,
    grpc_byte_buffer *req, struct dispatch_result *res);

#endif /* KB_DISPATCH_H */
