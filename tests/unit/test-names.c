/* SPDX-License-Identifier: Apache-2.0 */
/* test-names.c: identifier and display-name rules. */
#include "harness.h"

#include "names.h"

static void
test_ids_accepted(void)
{
	KBT_ASSERT_OK(names_check_id("tenant id", "acme"));
	KBT_ASSERT_OK(names_check_id("tenant id", "a"));
	KBT_ASSERT_OK(names_check_id("tenant id", "0"));
	KBT_ASSERT_OK(names_check_id("tenant id", "acme-prod-2"));
	KBT_ASSERT_OK(names_check_id("tenant id",
	    "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij123"));
}

static void
test_ids_refused(void)
{
	static const char *const bad[] = {"", "Acme", "a_b", "a b", "a/b", "-a",
	    "a-", "a.b", "caf\xc3\xa9", "a\tb",
	    "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij1234",
	    NULL};
	int i;

	for (i = 0; bad[i] != NULL; i++) {
		enum kb_err e = names_check_id("tenant id", bad[i]);
		if (e != KB_ERR_INVALID_ARGUMENT)
			KBT_FAIL("\"%s\" accepted", bad[i]);
		KBT_ASSERT_CONTAINS(kb_err_msg(e), "tenant id");
		KBT_ASSERT_CONTAINS(kb_err_msg(e), "a-z, 0-9 and '-'");
	}
	KBT_ASSERT_CONTAINS(kb_err_msg(names_check_id("environment name", "")),
	    "environment name is empty");
	KBT_ASSERT_CONTAINS(kb_err_msg(names_check_id("tenant id", "Acme")),
	    "contains 'A' at position 1");
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(names_check_id("tenant id", "Acme")), "\"Acme\"");
	/* A name with a control character further on is not echoed. */
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(names_check_id("tenant id", "Acme\x1b[31m")),
	    "tenant id contains 'A' at position 1");
	KBT_ASSERT(strstr(kb_err_msg(KB_ERR_INVALID_ARGUMENT), "\x1b") == NULL);
}

static void
test_display(void)
{
	char big[202];

	KBT_ASSERT_OK(names_check_display("display_name", "Acme Corp"));
	KBT_ASSERT_OK(names_check_display("display_name", ""));
	KBT_ASSERT_OK(
	    names_check_display("display_name", "Caf\xc3\xa9 \xe2\x82\xac"));
	KBT_ASSERT_ERR(names_check_display("display_name", "a\nb"),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_ERR(names_check_display("display_name", "bad \xff utf8"),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_ERR(names_check_display("display_name", "overlong \xc0\xaf"),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_ERR(
	    names_check_display("display_name", "surrogate \xed\xa0\x80"),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_ERR(names_check_display("display_name", "cut \xe2\x82"),
	    KB_ERR_INVALID_ARGUMENT);
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	KBT_ASSERT_ERR(
	    names_check_display("display_name", big), KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_INVALID_ARGUMENT), "limit is 200");
}

/* Ids a caller names must be the broker's shape before they are echoed. */
static void
test_object_ids(void)
{
	static const char *const bad[] = {"", "k-1\n2", "k-1 2", "k-%00",
	    "k-\xc3\xa9", "k-1\"2", "../etc",
	    "k-"
	    "012345678901234567890123456789012345678901234567890123456789012345"
	    "6789"};
	size_t i;

	KBT_ASSERT_OK(names_check_object_id("key id", "k-0123456789abcdef"));
	KBT_ASSERT_OK(names_check_object_id("backup id", "b-0A.b_c"));
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		KBT_ASSERT_ERR(names_check_object_id("key id", bad[i]),
		    KB_ERR_INVALID_ARGUMENT);
}

static const struct kbt_case cases[] = {
    {"/names/ids-accepted", test_ids_accepted},
    {"/names/ids-refused", test_ids_refused}, {"/names/display", test_display},
    {"/names/object-ids", test_object_ids}, {NULL, NULL}};

int
main(int argc, char **argv)
{
	return kbt_run(cases, argc, argv);
}
