/* SPDX-License-Identifier: Apache-2.0 */
/* kb_hist.c: lock-free latency histograms. */
#include "kb_hist.h"

#include <time.h>

const double kb_hist_bounds_s[KB_HIST_BUCKETS] = {0.000025, 0.00005, 0.0001,
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
    2.5, 5, 10};

/* The same bounds in nanoseconds, compared on every observation. */
static const uint64_t bounds_ns[KB_HIST_BUCKETS] = {25000, 50000, 100000,
    250000, 500000, 1000000, 2500000, 5000000, 10000000, 25000000, 50000000,
    100000000, 250000000, 500000000, 1000000000, 2500000000ULL, 5000000000ULL,
    10000000000ULL};

uint64_t
kb_hist_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

void
kb_hist_observe(struct kb_hist *h, uint64_t ns)
{
	unsigned i;

	for (i = 0; i < KB_HIST_BUCKETS && ns > bounds_ns[i]; i++)
		;
	atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->sum_ns, ns, memory_order_relaxed);
}

void
kb_hist_since(struct kb_hist *h, uint64_t start_ns)
{
	uint64_t now = kb_hist_now_ns();

	kb_hist_observe(h, now > start_ns ? now - start_ns : 0);
}

void
kb_hist_read(const struct kb_hist *h, struct kb_hist_snap *out)
{
	uint64_t n = 0;
	unsigned i;

	for (i = 0; i <= KB_HIST_BUCKETS; i++) {
		n += atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
		out->le[i] = n;
	}
	out->count = n;
	out->sum_s =
	    (double)atomic_load_explicit(&h->sum_ns, memory_order_relaxed)
	    / 1e9;
}
