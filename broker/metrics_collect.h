/* SPDX-License-Identifier: Apache-2.0 */
/* metrics_collect.h: the gauges of a scrape, read from the broker's parts
 * when it asks: the worker pool, jobs, environments and keys in the
 * database, certificates, health, token and audit latencies. */
#ifndef KB_METRICS_COLLECT_H
#define KB_METRICS_COLLECT_H

#include <stdio.h>

struct broker;
struct server;

/* What a scrape reads; main() fills it and keeps it while metrics run. */
struct metrics_sources {
	struct broker *b;
	struct server *srv;
};

/* A metrics_collect_fn (metrics.h); `arg` is a struct metrics_sources. */
void metrics_collect(void *arg, FILE *out);

#endif /* KB_METRICS_COLLECT_H */
