/* SPDX-License-Identifier: Apache-2.0 */
/* kb_wire.c: protobuf-c <-> grpc_byte_buffer, wiping every copy. */
#include "kb_wire.h"

#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>

#include "kb_secmem.h"

grpc_byte_buffer *
kb_wire_pack(const ProtobufCMessage *msg)
{
	size_t n = protobuf_c_message_get_packed_size(msg);
	grpc_slice s = grpc_slice_malloc(n);
	grpc_byte_buffer *bb;

	protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s));
	/* The byte buffer takes its own reference to the slice data; gRPC frees
	 * it after sending. We cannot wipe gRPC's internal copies, but this
	 * slice is the only plaintext copy we create. */
	bb = grpc_raw_byte_buffer_create(&s, 1);
	grpc_slice_unref(s);
	return bb;
}

enum kb_err
kb_wire_unpack(const ProtobufCMessageDescriptor *desc, grpc_byte_buffer *bb,
    size_t max_len, ProtobufCMessage **out)
{
	grpc_byte_buffer_reader r;
	grpc_slice all;
	size_t n;
	ProtobufCMessage *m;

	*out = NULL;
	if (bb == NULL) {
		m = protobuf_c_message_unpack(desc, NULL, 0, (const uint8_t *)"");
		if (m == NULL)
			return kb_errf(KB_ERR_NOMEM, "out of memory");
		*out = m;
		return KB_OK;
	}
	n = grpc_byte_buffer_length(bb);
	if (n > max_len)
		return kb_errf(KB_ERR_RESOURCE_EXHAUSTED,
		    "request of %zu bytes exceeds the limit of %zu bytes",
		    n, max_len);
	if (!grpc_byte_buffer_reader_init(&r, bb))
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "cannot read the message (unsupported compression?)");
	all = grpc_byte_buffer_reader_readall(&r);
	grpc_byte_buffer_reader_destroy(&r);
	m = protobuf_c_message_unpack(desc, NULL, GRPC_SLICE_LENGTH(all),
	    GRPC_SLICE_START_PTR(all));
	kb_wipe(GRPC_SLICE_START_PTR(all), GRPC_SLICE_LENGTH(all));
	grpc_slice_unref(all);
	if (m == NULL)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the message is not a valid %s", desc->name);
	*out = m;
	return KB_OK;
}

void
kb_wire_destroy(grpc_byte_buffer *bb)
{
	size_t i;

	if (bb == NULL)
		return;
	if (bb->type == GRPC_BB_RAW) {
		grpc_slice_buffer *sb = &bb->data.raw.slice_buffer;

		for (i = 0; i < sb->count; i++)
			kb_wipe(GRPC_SLICE_START_PTR(sb->slices[i]),
			    GRPC_SLICE_LENGTH(sb->slices[i]));
	}
	grpc_byte_buffer_destroy(bb);
}

void
kb_wire_wipe(ProtobufCMessage *msg)
{
	const ProtobufCMessageDescriptor *d;
	unsigned i;

	if (msg == NULL)
		return;
	d = msg->descriptor;
	for (i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		char *base = (char *)msg + f->offset;

		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t cnt = *(size_t *)((char *)msg + f->quantifier_offset);
			void **arr = *(void ***)base;
			size_t j;

			for (j = 0; j < cnt && arr != NULL; j++) {
				if (f->type == PROTOBUF_C_TYPE_STRING && arr[j] != NULL)
					kb_wipe(arr[j], strlen(arr[j]));
				else if (f->type == PROTOBUF_C_TYPE_MESSAGE)
					kb_wire_wipe(arr[j]);
				else if (f->type == PROTOBUF_C_TYPE_BYTES) {
					ProtobufCBinaryData *bd =
					    &((ProtobufCBinaryData *)(void *)arr)[j];
					kb_wipe(bd->data, bd->len);
				}
			}
			continue;
		}
		switch (f->type) {
		case PROTOBUF_C_TYPE_STRING: {
			char *s = *(char **)base;
			/* protobuf-c points empty strings at a shared
			 * read-only "" default: never write to it. */
			if (s != NULL && s[0] != '\0')
				kb_wipe(s, strlen(s));
			break;
		}
		case PROTOBUF_C_TYPE_BYTES: {
			ProtobufCBinaryData *bd = (ProtobufCBinaryData *)base;
			if (bd->data != NULL && bd->len > 0)
				kb_wipe(bd->data, bd->len);
			break;
		}
		case PROTOBUF_C_TYPE_MESSAGE:
			kb_wire_wipe(*(ProtobufCMessage **)base);
			break;
		case PROTOBUF_C_TYPE_INT32:
		case PROTOBUF_C_TYPE_SINT32:
		case PROTOBUF_C_TYPE_SFIXED32:
		case PROTOBUF_C_TYPE_INT64:
		case PROTOBUF_C_TYPE_SINT64:
		case PROTOBUF_C_TYPE_SFIXED64:
		case PROTOBUF_C_TYPE_UINT32:
		case PROTOBUF_C_TYPE_FIXED32:
		case PROTOBUF_C_TYPE_UINT64:
		case PROTOBUF_C_TYPE_FIXED64:
		case PROTOBUF_C_TYPE_FLOAT:
		case PROTOBUF_C_TYPE_DOUBLE:
		case PROTOBUF_C_TYPE_BOOL:
		case PROTOBUF_C_TYPE_ENUM:
			break;
		}
	}
}

void
kb_wire_free(ProtobufCMessage *msg)
{
	if (msg == NULL)
		return;
	kb_wire_wipe(msg);
	protobuf_c_message_free_unpacked(msg, NULL);
}
