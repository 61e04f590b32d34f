/* SPDX-License-Identifier: Apache-2.0 */
/* kb_wire.c: protobuf-c <-> grpc_byte_buffer, wiping every copy. */
#include "kb_wire.h"

#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>

#include "kb_secmem.h"
#include "kb_utf8.h"

/* The packed message's memory, wiped when gRPC lets go of it. */
static void
wiped_free(void *p, size_t len)
{
	kb_freezero(p, len);
}

grpc_byte_buffer *
kb_wire_pack(const ProtobufCMessage *msg)
{
	size_t n = protobuf_c_message_get_packed_size(msg);
	grpc_byte_buffer *bb;
	grpc_slice s;
	uint8_t *p;

	/* A response may carry a DEK: its packed bytes are wiped when the
	 * last reference goes (after it was sent). gRPC's own copies (frames,
	 * TLS records) are beyond our reach; this is the one we make. */
	if ((p = malloc(n > 0 ? n : 1)) == NULL)
		return NULL;
	protobuf_c_message_pack(msg, p);
	s = grpc_slice_new_with_len(p, n, wiped_free);
	bb = grpc_raw_byte_buffer_create(&s, 1);
	grpc_slice_unref(s);
	return bb;
}

static int
read_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
	int shift = 0;

	*v = 0;
	while (*p < end && shift < 64) {
		uint8_t b = *(*p)++;
		*v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80))
			return 0;
		shift += 7;
	}
	return -1;
}

/* proto3 strings must be UTF-8, and ours may not hold NUL (protobuf-c would
 * silently cut the C string there). protobuf-c checks neither, so walk the
 * wire form: every length-delimited field the descriptor calls a string is
 * checked, and nested messages are walked too. Malformed framing is left to
 * protobuf-c's own parser. */
static enum kb_err
check_strings(const ProtobufCMessageDescriptor *d, const uint8_t *p,
    const uint8_t *end, int depth)
{
	const ProtobufCFieldDescriptor *f;
	uint64_t key, len;
	size_t i, k;

	if (depth > 16)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the message nests too "
		    "deeply");
	while (p < end) {
		if (read_varint(&p, end, &key) != 0)
			return KB_OK;
		switch (key & 7) {
		case 0:
			if (read_varint(&p, end, &len) != 0)
				return KB_OK;
			continue;
		case 1: p += 8; continue;
		case 5: p += 4; continue;
		case 2: break;
		default: return KB_OK;
		}
		if (read_varint(&p, end, &len) != 0
		    || len > (uint64_t)(end - p))
			return KB_OK;
		f = protobuf_c_message_descriptor_get_field(
		    d, (unsigned)(key >> 3));
		if (f != NULL && f->type == PROTOBUF_C_TYPE_STRING) {
			for (i = 0; i < len; i += k) {
				if (p[i] == 0)
					return kb_errf(KB_ERR_INVALID_ARGUMENT,
					    "field "
					    "\"%s\" contains a NUL byte at "
					    "byte %zu",
					    f->name, i + 1);
				if ((k = kb_utf8_seq(p + i, len - i)) == 0)
					return kb_errf(KB_ERR_INVALID_ARGUMENT,
					    "field "
					    "\"%s\" is not valid UTF-8 (byte "
					    "%zu)",
					    f->name, i + 1);
			}
		} else if (f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE) {
			enum kb_err e =
			    check_strings(f->descriptor, p, p + len, depth + 1);
			if (e != KB_OK)
				return e;
		}
		p += len;
	}
	return KB_OK;
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
		m = protobuf_c_message_unpack(
		    desc, NULL, 0, (const uint8_t *)"");
		if (m == NULL)
			return kb_errf(KB_ERR_NOMEM, "out of memory");
		*out = m;
		return KB_OK;
	}
	n = grpc_byte_buffer_length(bb);
	if (n > max_len)
		return kb_errf(KB_ERR_RESOURCE_EXHAUSTED,
		    "request of %zu bytes exceeds the limit of %zu bytes", n,
		    max_len);
	if (!grpc_byte_buffer_reader_init(&r, bb))
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "cannot read the message (unsupported compression?)");
	all = grpc_byte_buffer_reader_readall(&r);
	grpc_byte_buffer_reader_destroy(&r);
	{
		enum kb_err e = check_strings(desc, GRPC_SLICE_START_PTR(all),
		    GRPC_SLICE_START_PTR(all) + GRPC_SLICE_LENGTH(all), 0);
		if (e != KB_OK) {
			kb_wipe(
			    GRPC_SLICE_START_PTR(all), GRPC_SLICE_LENGTH(all));
			grpc_slice_unref(all);
			return e;
		}
	}
	m = protobuf_c_message_unpack(
	    desc, NULL, GRPC_SLICE_LENGTH(all), GRPC_SLICE_START_PTR(all));
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
			size_t cnt =
			    *(size_t *)((char *)msg + f->quantifier_offset);
			void **arr = *(void ***)base;
			size_t j;

			for (j = 0; j < cnt && arr != NULL; j++) {
				if (f->type == PROTOBUF_C_TYPE_STRING
				    && arr[j] != NULL)
					kb_wipe(arr[j], strlen(arr[j]));
				else if (f->type == PROTOBUF_C_TYPE_MESSAGE)
					kb_wire_wipe(arr[j]);
				else if (f->type == PROTOBUF_C_TYPE_BYTES) {
					ProtobufCBinaryData *bd =
					    &((ProtobufCBinaryData *)(void *)
					            arr)[j];
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
		case PROTOBUF_C_TYPE_ENUM: break;
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
