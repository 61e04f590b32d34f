/* SPDX-License-Identifier: Apache-2.0 */
/* rpc.h: request handlers, one per method (see dispatch.c's table). */
#ifndef KB_RPC_H
#define KB_RPC_H

#include "dispatch.h"

/* rpc_health.c */
enum kb_err rpc_health_check(struct rpc_ctx *c, const ProtobufCMessage *req,
    ProtobufCMessage **resp);
enum kb_err rpc_whoami(struct rpc_ctx *c, const ProtobufCMessage *req,
    ProtobufCMessage **resp);

/* rpc_admin.c */
enum kb_err rpc_tenant_create(struct rpc_ctx *c, const ProtobufCMessage *req,
    ProtobufCMessage **resp);
enum kb_err rpc_tenant_list(struct rpc_ctx *c, const ProtobufCMessage *req,
    ProtobufCMessage **resp);
enum kb_err rpc_tenant_get(struct rpc_ctx *c, const ProtobufCMessage *req,
    ProtobufCMessage **resp);
enum kb_err rpc_env_create(struct rpc_ctx *c, const ProtobufCMessage *req,
    ProtobufCMessage **resp);
enum kb_err rpc_env_list(struct rpc_ctx *c, const ProtobufCMessage *req,
    ProtobufCMessage **resp);
enum kb_err rpc_env_get(struct rpc_ctx *c, const ProtobufCMessage *req,
    ProtobufCMessage **resp);

/* rpc_datakey.c */
enum kb_err rpc_datakey_get(struct rpc_ctx *c, const ProtobufCMessage *req,
    ProtobufCMessage **resp);

/* Helpers for handlers (rpc_util.c). */
char *rpc_strdup(const char *s);        /* never returns NULL: "" on OOM */
enum kb_err rpc_check_tenant_access(struct rpc_ctx *c, const char *tenant);

#endif /* KB_RPC_H */
