/* SPDX-License-Identifier: Apache-2.0 */
/* kb_wire.h: protobuf-c messages to and from gRPC byte buffers. */
#ifndef KB_WIRE_H
#define KB_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/byte_buffer.h>
#include <protobuf-c/protobuf-c.h>

#include "kb_err.h"

/* Serialize `msg` into a new byte buffer (caller destroys it). The
 * intermediate copy is wiped, since messages may carry DEKs or passwords.
 * Returns NULL on allocation failure. */
grpc_byte_buffer *kb_wire_pack(const ProtobufCMessage *msg);

/* Parse a byte buffer as `desc`. An absent buffer parses as an empty
 * message. Messages over `max_len` bytes are refused
 * (KB_ERR_RESOURCE_EXHAUSTED); undecodable ones give KB_ERR_INVALID_ARGUMENT.
 * Intermediate copies are wiped. Free *out with kb_wire_free(). */
enum kb_err kb_wire_unpack(const ProtobufCMessageDescriptor *desc,
    grpc_byte_buffer *bb, size_t max_len, ProtobufCMessage **out);

/* Wipe the bytes of a byte buffer we own (it may hold a DEK or a password),
 * then destroy it. Accepts NULL. */
void kb_wire_destroy(grpc_byte_buffer *bb);

/* Wipe every bytes and string field (recursively) of `msg`, then free it.
 * Accepts NULL. */
void kb_wire_free(ProtobufCMessage *msg);

/* Wipe secret fields without freeing (recursive over bytes/strings). Only
 * for messages from kb_wire_unpack: literals in hand-built messages are
 * read-only. */
void kb_wire_wipe(ProtobufCMessage *msg);

#endif /* KB_WIRE_H */
