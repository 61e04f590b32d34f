/* SPDX-License-Identifier: Apache-2.0 */
/* workq.c: worker threads so token and database work stays off the gRPC
 * completion-queue thread. */
#include "workq.h"

#include <pthread.h>
#include <stdlib.h>

struct job {
	workq_fn fn;
	void *arg;
};

struct workq {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct job *ring;
	size_t cap, head, len, running;
	int stopping;
	pthread_t *threads;
	unsigned nthreads;
};

static void *
worker_main(void *p)
{
	struct workq *q = p;
	struct job j;

	pthread_mutex_lock(&q->mu);
	for (;;) {
		while (q->len == 0 && !q->stopping)
			pthread_cond_wait(&q->cv, &q->mu);
		if (q->len == 0 && q->stopping)
			break;
		j = q->ring[q->head];
		q->head = (q->head + 1) % q->cap;
		q->len--;
		q->running++;
		pthread_mutex_unlock(&q->mu);
		j.fn(j.arg);
		pthread_mutex_lock(&q->mu);
		q->running--;
	}
	pthread_mutex_unlock(&q->mu);
	return NULL;
}

enum kb_err
workq_new(unsigned threads, size_t max_queued, struct workq **out)
{
	struct workq *q;
	unsigned i;

	*out = NULL;
	if ((q = calloc(1, sizeof(*q))) == NULL
	    || (q->ring = calloc(max_queued, sizeof(*q->ring))) == NULL
	    || (q->threads = calloc(threads, sizeof(*q->threads))) == NULL) {
		if (q != NULL)
			free(q->ring);
		free(q);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	q->cap = max_queued;
	pthread_mutex_init(&q->mu, NULL);
	pthread_cond_init(&q->cv, NULL);
	for (i = 0; i < threads; i++) {
		if (pthread_create(&q->threads[i], NULL, worker_main, q) != 0) {
			workq_free(q);
			return kb_errf(KB_ERR_RESOURCE_EXHAUSTED,
			    "cannot start "
			    "worker thread %u",
			    i);
		}
		q->nthreads++;
	}
	*out = q;
	return KB_OK;
}

enum kb_err
workq_push(struct workq *q, workq_fn fn, void *arg)
{
	pthread_mutex_lock(&q->mu);
	if (q->stopping || q->len == q->cap) {
		pthread_mutex_unlock(&q->mu);
		return kb_errf(KB_ERR_RESOURCE_EXHAUSTED,
		    "the broker is "
		    "overloaded (%zu requests queued); retry with backoff",
		    q->cap);
	}
	q->ring[(q->head + q->len) % q->cap] = (struct job){fn, arg};
	q->len++;
	pthread_cond_signal(&q->cv);
	pthread_mutex_unlock(&q->mu);
	return KB_OK;
}

void
workq_stats(struct workq *q, size_t *queued, size_t *running, unsigned *threads)
{
	pthread_mutex_lock(&q->mu);
	*queued = q->len;
	*running = q->running;
	*threads = q->nthreads;
	pthread_mutex_unlock(&q->mu);
}

void
workq_free(struct workq *q)
{
	unsigned i;

	if (q == NULL)
		return;
	pthread_mutex_lock(&q->mu);
	q->stopping = 1;
	pthread_cond_broadcast(&q->cv);
	pthread_mutex_unlock(&q->mu);
	for (i = 0; i < q->nthreads; i++)
		pthread_join(q->threads[i], NULL);
	pthread_mutex_destroy(&q->mu);
	pthread_cond_destroy(&q->cv);
	free(q->threads);
	free(q->ring);
	free(q);
}
