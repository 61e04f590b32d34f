/* SPDX-License-Identifier: Apache-2.0 */
/* test-metrics.c: the call counters and the text format, and what a
 * counted call costs (printed, not asserted). */
#include "harness.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "kb_hist.h"
#include "metrics.h"

static const char *const names[] = {"Health.Check", "GetDataKey"};

static void
test_counts_and_format(void)
{
	struct metrics *m = NULL;
	uint64_t t0;
	size_t len;
	char *page;
	int i;

	KBT_ASSERT_OK(metrics_new(names, 2, &m));
	t0 = kb_hist_now_ns();
	for (i = 0; i < 1000; i++)
		metrics_call(m, 1, GRPC_STATUS_OK, t0);
	metrics_call(m, 1, GRPC_STATUS_PERMISSION_DENIED, t0);
	metrics_call(m, 7, GRPC_STATUS_UNIMPLEMENTED, 0); /* past the table */
	metrics_call(m, 0, (grpc_status_code)99, 0); /* not a status */
	metrics_call(NULL, 0, GRPC_STATUS_OK, t0); /* metrics off */
	page = metrics_render(m, &len);
	KBT_ASSERT(page != NULL && strlen(page) == len);
	KBT_ASSERT_CONTAINS(page,
	    "\nkeybroker_calls_total{method=\"GetDataKey\",code=\"OK\"} "
	    "1000\n");
	KBT_ASSERT_CONTAINS(page,
	    "\nkeybroker_calls_total{method=\"GetDataKey\","
	    "code=\"PERMISSION_DENIED\"} 1\n");
	KBT_ASSERT_CONTAINS(page,
	    "\nkeybroker_calls_total{method=\"unknown\","
	    "code=\"UNIMPLEMENTED\"} 1\n");
	KBT_ASSERT_CONTAINS(page,
	    "\nkeybroker_calls_total{method=\"Health.Check\","
	    "code=\"UNKNOWN\"} 1\n");
	KBT_ASSERT_CONTAINS(page,
	    "\nkeybroker_call_duration_seconds_count{method=\"GetDataKey\"} "
	    "1001\n");
	KBT_ASSERT_CONTAINS(page,
	    "\nkeybroker_call_duration_seconds_bucket{method=\"GetDataKey\","
	    "le=\"+Inf\"} 1001\n");
	/* Health.Check had a call but no latency: an empty histogram. */
	KBT_ASSERT_CONTAINS(page,
	    "\nkeybroker_call_duration_seconds_count{method=\"Health.Check\"} "
	    "0\n");
	KBT_ASSERT_CONTAINS(page, "# TYPE keybroker_calls_total counter\n");
	KBT_ASSERT_CONTAINS(
	    page, "# TYPE keybroker_call_duration_seconds histogram\n");
	free(page);
	metrics_free(m);
	metrics_free(NULL);
}

static void
test_hist_buckets(void)
{
	struct kb_hist h;
	struct kb_hist_snap s;

	memset(&h, 0, sizeof(h));
	kb_hist_observe(&h, 25000); /* on the first bound: le 25 us */
	kb_hist_observe(&h, 25001);
	kb_hist_observe(&h, 20000000000ULL); /* 20 s: +Inf only */
	kb_hist_read(&h, &s);
	KBT_ASSERT_INT(s.le[0], ==, 1);
	KBT_ASSERT_INT(s.le[1], ==, 2);
	KBT_ASSERT_INT(s.le[KB_HIST_BUCKETS - 1], ==, 2);
	KBT_ASSERT_INT(s.le[KB_HIST_BUCKETS], ==, 3);
	KBT_ASSERT_INT(s.count, ==, 3);
	KBT_ASSERT(s.sum_s > 20.0 && s.sum_s < 20.001);
}

#define COST_CALLS 2000000

static void *
cost_thread(void *p)
{
	struct metrics *m = p;
	uint64_t t0 = kb_hist_now_ns();
	int i;

	for (i = 0; i < COST_CALLS; i++)
		metrics_call(m, 1, GRPC_STATUS_OK, t0);
	return NULL;
}

/* What a counted call costs: one thread, then two on one method (the
 * same cache lines). Printed for the README, not asserted. */
static void
test_cost(void)
{
	struct metrics *m = NULL;
	pthread_t th[2];
	uint64_t a, b;
	int n, i;

	KBT_ASSERT_OK(metrics_new(names, 2, &m));
	for (n = 1; n <= 2; n++) {
		a = kb_hist_now_ns();
		for (i = 0; i < n; i++)
			pthread_create(&th[i], NULL, cost_thread, m);
		for (i = 0; i < n; i++)
			pthread_join(th[i], NULL);
		b = kb_hist_now_ns();
		printf("  %d thread(s): %.1f ns per counted call (counter, "
		       "histogram, clock read)\n",
		    n, (double)(b - a) / COST_CALLS);
	}
	metrics_free(m);
}

static const struct kbt_case cases[] = {
    {"/metrics/counts-and-format", test_counts_and_format},
    {"/metrics/hist-buckets", test_hist_buckets}, {"/metrics/cost", test_cost},
    {NULL, NULL}};

int
main(int argc, char **argv)
{
	return kbt_run(cases, argc, argv);
}
