/* SPDX-License-Identifier: Apache-2.0 */
/* test-wire.c: protobuf-c messages through gRPC byte buffers, and the
 * checks on strings protobuf-c does not make. */
#include "harness.h"

#include <grpc/grpc.h>
#include <grpc/slice.h>

#include "kb_utf8.h"
#include "kb_wire.h"
#include "keybroker.pb-c.h"

static grpc_byte_buffer *
raw(const uint8_t *data, size_t len)
{
	grpc_slice s = grpc_slice_from_copied_buffer((const char *)data, len);
	grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);

	grpc_slice_unref(s);
	return bb;
}

static void
test_round_trip(void)
{
	Keybroker__V1__CreateTenantRequest req =
	    KEYBROKER__V1__CREATE_TENANT_REQUEST__INIT;
	Keybroker__V1__CreateTenantRequest *got;
	ProtobufCMessage *m = NULL;
	grpc_byte_buffer *bb;

	req.id = "acme";
	req.display_name = "Caf\xc3\xa9 \xe2\x82\xac";
	bb = kb_wire_pack(&req.base);
	KBT_ASSERT(bb != NULL);
	KBT_ASSERT_OK(kb_wire_unpack(
	    &keybroker__v1__create_tenant_request__descriptor, bb, 1024, &m));
	got = (void *)m;
	KBT_ASSERT_STR(got->id, "acme");
	KBT_ASSERT_STR(got->display_name, "Caf\xc3\xa9 \xe2\x82\xac");
	kb_wire_free(m);
	kb_wire_destroy(bb);
	/* No buffer: an empty message. */
	KBT_ASSERT_OK(kb_wire_unpack(
	    &keybroker__v1__create_tenant_request__descriptor, NULL, 1024, &m));
	KBT_ASSERT_STR(
	    ((Keybroker__V1__CreateTenantRequest *)(void *)m)->id, "");
	kb_wire_free(m);
}

static void
test_refusals(void)
{
	/* field 1 (id), length 6: "ac\0me!" */
	static const uint8_t nul[] = {0x0a, 0x06, 'a', 'c', 0, 'm', 'e', '!'};
	static const uint8_t bad_utf8[] = {0x0a, 0x03, 'a', 0xff, 'b'};
	static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
	/* ListEventsRequest.filter (field 1, a message) with tenant_id (3)
	 * holding invalid UTF-8: nested strings are checked too. */
	static const uint8_t nested[] = {0x0a, 0x04, 0x1a, 0x02, 0xc0, 0xaf};
	static const uint8_t big[2048] = {0};
	ProtobufCMessage *m = NULL;
	grpc_byte_buffer *bb;

	bb = raw(nul, sizeof(nul));
	KBT_ASSERT_ERR(
	    kb_wire_unpack(&keybroker__v1__create_tenant_request__descriptor,
	        bb, 1024, &m),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_INVALID_ARGUMENT),
	    "field \"id\" contains a NUL byte");
	kb_wire_destroy(bb);
	bb = raw(bad_utf8, sizeof(bad_utf8));
	KBT_ASSERT_ERR(
	    kb_wire_unpack(&keybroker__v1__create_tenant_request__descriptor,
	        bb, 1024, &m),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_INVALID_ARGUMENT), "not valid UTF-8");
	kb_wire_destroy(bb);
	bb = raw(nested, sizeof(nested));
	KBT_ASSERT_ERR(
	    kb_wire_unpack(
	        &keybroker__v1__list_events_request__descriptor, bb, 1024, &m),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_INVALID_ARGUMENT), "tenant_id");
	kb_wire_destroy(bb);
	bb = raw(garbage, sizeof(garbage));
	KBT_ASSERT_ERR(
	    kb_wire_unpack(&keybroker__v1__create_tenant_request__descriptor,
	        bb, 1024, &m),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_INVALID_ARGUMENT), "not a valid");
	kb_wire_destroy(bb);
	bb = raw(big, sizeof(big));
	KBT_ASSERT_ERR(
	    kb_wire_unpack(&keybroker__v1__create_tenant_request__descriptor,
	        bb, 1024, &m),
	    KB_ERR_RESOURCE_EXHAUSTED);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_RESOURCE_EXHAUSTED), "limit of 1024");
	kb_wire_destroy(bb);
	KBT_ASSERT(m == NULL);
}

static void
test_wipe(void)
{
	Keybroker__V1__GetDataKeyResponse r =
	    KEYBROKER__V1__GET_DATA_KEY_RESPONSE__INIT;
	Keybroker__V1__GetDataKeyResponse *got;
	ProtobufCMessage *m = NULL;
	uint8_t dek[32];
	grpc_byte_buffer *bb;
	uint8_t *p;
	size_t i;

	memset(dek, 0x5a, sizeof(dek));
	r.dek.data = dek;
	r.dek.len = sizeof(dek);
	bb = kb_wire_pack(&r.base);
	KBT_ASSERT_OK(kb_wire_unpack(
	    &keybroker__v1__get_data_key_response__descriptor, bb, 1024, &m));
	got = (void *)m;
	p = got->dek.data;
	kb_wire_wipe(m);
	for (i = 0; i < 32; i++)
		KBT_ASSERT_INT(p[i], ==, 0);
	kb_wire_free(m);
	kb_wire_destroy(bb);
}

static void
test_utf8_clean(void)
{
	char a[] = "caf\xc3\xa9";
	char b[] = "x\xffy\xc3";
	char c[] = "\xe2\x82\xac\xe2\x82\xac";

	kb_utf8_clean(a, 5); /* room for 4 bytes: the 2-byte char won't fit */
	KBT_ASSERT_STR(a, "caf");
	kb_utf8_clean(b, sizeof(b));
	KBT_ASSERT_STR(b, "x?y?");
	kb_utf8_clean(c, 6); /* one euro sign (3 bytes) fits, not two */
	KBT_ASSERT_STR(c, "\xe2\x82\xac");
	KBT_ASSERT_INT(
	    kb_utf8_seq((const unsigned char *)"\xf0\x9f\x98\x80", 4), ==, 4);
	KBT_ASSERT_INT(
	    kb_utf8_seq((const unsigned char *)"\xed\xa0\x80", 3), ==, 0);
}

static const struct kbt_case cases[] = {{"/wire/utf8-clean", test_utf8_clean},
    {"/wire/round-trip", test_round_trip}, {"/wire/refusals", test_refusals},
    {"/wire/wipe", test_wipe}, {NULL, NULL}};

int
main(int argc, char **argv)
{
	int r;

	grpc_init();
	r = kbt_run(cases, argc, argv);
	grpc_shutdown();
	return r;
}
