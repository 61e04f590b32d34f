/* SPDX-License-Identifier: Apache-2.0 */
/* test-harness.c: the unit harness itself. A failed assertion inside a
 * helper, however deep, fails its case and stops it there; the next case
 * runs as usual; an assertion on another thread fails the case too. */
#include <pthread.h>

#include "harness.h"

static int reached_after_helper, reached_next_case, deep_returned;

static void
helper_depth2(void)
{
	KBT_ASSERT(1 == 2);
	deep_returned = 1;
}

static void
helper_depth1(void)
{
	helper_depth2();
	deep_returned = 1;
}

static void
inner_fails_in_helper(void)
{
	helper_depth1();
	reached_after_helper = 1;
}

static void
inner_next(void)
{
	reached_next_case = 1;
}

static void
assert_wrong_sum(void)
{
	KBT_ASSERT_INT(2 + 2, ==, 5);
}

static void *
thread_asserts(void *arg)
{
	(void)arg;
	assert_wrong_sum();
	return NULL;
}

static void
inner_fails_in_thread(void)
{
	pthread_t t;

	pthread_create(&t, NULL, thread_asserts, NULL);
	pthread_join(t, NULL);
}

static const struct kbt_case inner_helper[] = {
    {"/inner/fails-in-helper", inner_fails_in_helper},
    {"/inner/next", inner_next},
    {NULL, NULL},
};

static const struct kbt_case inner_thread[] = {
    {"/inner/fails-in-thread", inner_fails_in_thread},
    {NULL, NULL},
};

/* The inner runs print their own lines; what matters is what they return
 * and what ran. */
static void
test_helper_failure(void)
{
	int rc = kbt_run(inner_helper, 1, NULL);

	kbt_failed_current = 0;
	KBT_ASSERT_INT(rc, ==, 1);
	KBT_ASSERT_INT(reached_after_helper, ==, 0);
	KBT_ASSERT_INT(deep_returned, ==, 0);
	KBT_ASSERT_INT(reached_next_case, ==, 1);
}

static void
test_thread_failure(void)
{
	int rc = kbt_run(inner_thread, 1, NULL);

	kbt_failed_current = 0;
	KBT_ASSERT_INT(rc, ==, 1);
}

static const struct kbt_case cases[] = {
    {"/harness/helper-failure", test_helper_failure},
    {"/harness/thread-failure", test_thread_failure},
    {NULL, NULL},
};

int
main(int argc, char **argv)
{
	return kbt_run(cases, argc, argv);
}
