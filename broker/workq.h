/* SPDX-License-Identifier: Apache-2.0 */
/* workq.h: a fixed pool of worker threads running queued jobs. */
#ifndef KB_WORKQ_H
#define KB_WORKQ_H

#include <stddef.h>

#include "kb_err.h"

struct workq;

typedef void (*workq_fn)(void *arg);

/* Start `threads` workers; at most `max_queued` jobs wait at once. */
enum kb_err workq_new(unsigned threads, size_t max_queued, struct workq **out);

/* Queue fn(arg). KB_ERR_RESOURCE_EXHAUSTED when the queue is full (the
 * caller sheds the load) or the pool is stopping. */
enum kb_err workq_push(struct workq *q, workq_fn fn, void *arg);

/* Jobs waiting, jobs running now, and the pool's threads: a moment's
 * picture (under the queue's lock, briefly), for the metrics endpoint. */
void workq_stats(
    struct workq *q, size_t *queued, size_t *running, unsigned *threads);

/* Run every queued job, then join the workers and free the pool. */
void workq_free(struct workq *q);

#endif /* KB_WORKQ_H */
