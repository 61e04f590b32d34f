/* SPDX-License-Identifier: Apache-2.0 */
/* test-err.c: every error code has a message and a gRPC status. */
#include "harness.h"

#include "kb_err.h"
#include "kb_err_grpc.h"

static void
test_every_code_has_message(void)
{
	int e;

	for (e = 0; e < KB_ERR_COUNT_; e++) {
		const char *m = kb_strerror((enum kb_err)e);
		KBT_ASSERT(m != NULL);
		if (strcmp(m, "unknown error") == 0)
			KBT_FAIL("code %d has no message", e);
	}
}

static void
test_every_code_maps(void)
{
	int e;

	KBT_ASSERT_INT(kb_err_to_grpc(KB_OK), ==, GRPC_STATUS_OK);
	for (e = 1; e < KB_ERR_COUNT_; e++) {
		grpc_status_code s = kb_err_to_grpc((enum kb_err)e);
		if (s == GRPC_STATUS_OK || s == GRPC_STATUS_UNKNOWN)
			KBT_FAIL("code %d (%s) maps to %s", e,
			    kb_strerror((enum kb_err)e),
			    kb_grpc_status_name(s));
	}
	KBT_ASSERT_INT(
	    kb_err_to_grpc(KB_ERR_NOT_FOUND), ==, GRPC_STATUS_NOT_FOUND);
	KBT_ASSERT_INT(kb_err_to_grpc(KB_ERR_PERMISSION_DENIED), ==,
	    GRPC_STATUS_PERMISSION_DENIED);
}

static void
test_message_and_wrap(void)
{
	kb_err_clear();
	KBT_ASSERT_STR(kb_err_msg(KB_ERR_NOT_FOUND), "not found");
	KBT_ASSERT_INT(
	    kb_errf(KB_ERR_NOT_FOUND, "tenant \"%s\" not found", "a"), ==,
	    KB_ERR_NOT_FOUND);
	KBT_ASSERT_STR(kb_err_msg(KB_ERR_NOT_FOUND), "tenant \"a\" not found");
	kb_err_wrap(KB_ERR_NOT_FOUND, "loading %s", "x");
	KBT_ASSERT_STR(
	    kb_err_msg(KB_ERR_NOT_FOUND), "loading x: tenant \"a\" not found");
	/* The current message may be an argument of the next. */
	kb_errf(KB_ERR_IO, "x");
	kb_errf(KB_ERR_UNAVAILABLE, "y (%s)", kb_err_msg(KB_ERR_IO));
	KBT_ASSERT_STR(kb_err_msg(KB_ERR_UNAVAILABLE), "y (x)");
	kb_err_clear();
}

static void
test_status_names(void)
{
	KBT_ASSERT_STR(kb_grpc_status_name(GRPC_STATUS_FAILED_PRECONDITION),
	    "FAILED_PRECONDITION");
	KBT_ASSERT_STR(kb_grpc_status_name(GRPC_STATUS_UNAUTHENTICATED),
	    "UNAUTHENTICATED");
}

static const struct kbt_case cases[] = {
    {"/err/every-code-has-message", test_every_code_has_message},
    {"/err/every-code-maps", test_every_code_maps},
    {"/err/message-and-wrap", test_message_and_wrap},
    {"/err/status-names", test_status_names}, {NULL, NULL}};

int
main(int argc, char **argv)
{
	return kbt_run(cases, argc, argv);
}
