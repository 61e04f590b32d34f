/* SPDX-License-Identifier: Apache-2.0 */
/* kb_hist.h: a lock-free latency histogram with fixed buckets, cheap
 * enough for every call (two relaxed atomic adds), read by the metrics
 * endpoint. */
#ifndef KB_HIST_H
#define KB_HIST_H

#include <stdatomic.h>
#include <stdint.h>

/* Upper bounds of the buckets, in seconds: 25 us to 10 s. */
#define KB_HIST_BUCKETS 18
extern const double kb_hist_bounds_s[KB_HIST_BUCKETS];

/* Zero-initialized (static, calloc or memset) is an empty histogram. The
 * count is the sum of the buckets, so a reader never sees a count that
 * disagrees with them. */
struct kb_hist {
	_Atomic uint64_t bucket[KB_HIST_BUCKETS + 1]; /* last: above 10 s */
	_Atomic uint64_t sum_ns;
};

/* What a reader gets: cumulative bucket counts, as Prometheus wants. */
struct kb_hist_snap {
	uint64_t le[KB_HIST_BUCKETS + 1]; /* le[KB_HIST_BUCKETS] is +Inf */
	uint64_t count;
	double sum_s;
};

/* Monotonic nanoseconds, for durations. */
uint64_t kb_hist_now_ns(void);

/* Record one observation of `ns` nanoseconds. Never blocks. */
void kb_hist_observe(struct kb_hist *h, uint64_t ns);

/* Record the time since `start_ns` (from kb_hist_now_ns). */
void kb_hist_since(struct kb_hist *h, uint64_t start_ns);

/* Read `h` into `out` (buckets made cumulative). */
void kb_hist_read(const struct kb_hist *h, struct kb_hist_snap *out);

#endif /* KB_HIST_H */
