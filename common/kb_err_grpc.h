/* SPDX-License-Identifier: Apache-2.0 */
/* kb_err_grpc.h: the one mapping from our errors to gRPC status codes, for
 * the broker's request path and the client (hsm/ and the key-file parsers
 * never see gRPC). */
#ifndef KB_ERR_GRPC_H
#define KB_ERR_GRPC_H

#include <grpc/status.h>

#include "kb_err.h"

grpc_status_code kb_err_to_grpc(enum kb_err e);

/* Name of a gRPC status code ("NOT_FOUND"). */
const char *kb_grpc_status_name(grpc_status_code s);

#endif /* KB_ERR_GRPC_H */
