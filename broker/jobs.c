/* SPDX-License-Identifier: Apache-2.0 */
/* jobs.c: activation jobs and the retention sweeper, on their own threads. */
#include "jobs.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "dek.h"
#include "kb_time.h"
#include "log.h"
#include "policy.h"

#define REWRAP_BATCH 256
#define SWEEP_BATCH 100
#define RETRY_DELAY_MS 1000

struct jobs {
	struct broker *b;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int stopping;
	int kicked;
	pthread_t job_thread, sweep_thread;
	int job_started, sweep_started;
};

/* One thread's share of a batch: it takes the next row not yet taken, so
 * a thread that gets less CPU (or slower rows) does not leave the others
 * idle at the end of the batch. */
struct slice {
	struct broker *b;
	struct store_rewrap *rows;
	char (*old)[STORE_KEY_ID_MAX];
	atomic_size_t *next;
	size_t n;
	const char *key_id, *alg;
	enum kb_err err;
	char msg[256];
};

static void *
slice_main(void *p)
{
	struct slice *s = p;
	size_t i;

	s->err = KB_OK;
	while ((i = atomic_fetch_add(s->next, 1)) < s->n) {
		snprintf(s->old[i], STORE_KEY_ID_MAX, "%s", s->rows[i].dek.key_id);
		s->err = dek_rewrap(s->b, &s->rows[i].dek, s->key_id, s->alg,
		    &s->rows[i].dek);
		if (s->err != KB_OK) {
			snprintf(s->msg, sizeof(s->msg), "data key %u of "
			    "environment #%lld: %s", s->rows[i].version,
			    (long long)s->rows[i].env_id, kb_err_msg(s->err));
			break;
		}
	}
	/* The DEKs were wiped inside dek_rewrap; nothing secret remains. */
	return NULL;
}

/* Re-wrap rows[0..n) with up to `threads` threads in parallel. */
static enum kb_err
rewrap_rows(struct broker *b, struct store_rewrap *rows,
    char (*old)[STORE_KEY_ID_MAX], size_t n, const char *key_id,
    unsigned threads)
{
	struct slice sl[64];
	pthread_t th[64];
	int started[64] = { 0 };
	atomic_size_t next;
	unsigned t;
	enum kb_err e = KB_OK;

	if (threads > 64)
		threads = 64;
	if (threads > n)
		threads = (unsigned)n;
	atomic_init(&next, 0);
	for (t = 0; t < threads; t++) {
		sl[t] = (struct slice){ b, rows, old, &next, n, key_id,
		    b->wrap_alg, KB_OK, "" };
		if (t > 0 && pthread_create(&th[t], NULL, slice_main, &sl[t]) == 0)
			started[t] = 1;
	}
	/* Slice 0 (and any whose thread did not start) runs here. */
	for (t = 0; t < threads; t++)
		if (!started[t])
			slice_main(&sl[t]);
	for (t = 1; t < threads; t++)
		if (started[t])
			pthread_join(th[t], NULL);
	for (t = 0; t < threads; t++) {
		if (sl[t].err != KB_OK) {
			e = kb_errf(sl[t].err, "%s", sl[t].msg);
			break;
		}
	}
	return e;
}

static int
stopping(struct jobs *j)
{
	int s;

	pthread_mutex_lock(&j->mu);
	s = j->stopping;
	pthread_mutex_unlock(&j->mu);
	return s;
}

/* Sleep up to ms milliseconds, waking early on stop. */
static void
nap(struct jobs *j, unsigned ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&j->mu);
	if (!j->stopping)
		pthread_cond_timedwait(&j->cv, &j->mu, &ts);
	pthread_mutex_unlock(&j->mu);
}

/* Run one activation job to its end (or until stop). Progress is stored
 * with every batch, so a restart resumes where it was. */
static void
run_activation(struct jobs *j, struct store_job *job)
{
	struct broker *b = j->b;
	struct store_rewrap *rows;
	char (*old)[STORE_KEY_ID_MAX];
	int64_t after_env = 0;
	uint32_t after_version = 0;
	size_t n;
	enum kb_err e;

	rows = calloc(REWRAP_BATCH, sizeof(*rows));
	old = calloc(REWRAP_BATCH, sizeof(*old));
	if (rows == NULL || old == NULL) {
		log_error("job %s: out of memory", job->id);
		goto out;
	}
	log_info("job %s: re-wrapping tenant %s's environments under key %s "
	    "(%llu of %llu done)", job->id, job->tenant_id, job->key_id,
	    (unsigned long long)job->done, (unsigned long long)job->total);
	{
		char why[128];

		snprintf(why, sizeof(why), "job %s: %llu of %llu data keys "
		    "re-wrapped so far", job->id, (unsigned long long)job->done,
		    (unsigned long long)job->total);
		(void)broker_audit_system(b, "job.activate.start", job->tenant_id,
		    NULL, job->key_id, "ok", why);
	}
	while (!stopping(j)) {
		/* From where the last batch ended: a fetch reads the rows it
		 * returns, not the ones done before (O(N) in all, not N^2). */
		e = store_rewrap_fetch_after(b->store, job->tenant_id, job->key_id,
		    after_env, after_version, rows, REWRAP_BATCH, &n);
		if (e == KB_OK && n == 0 && (after_env != 0 || after_version != 0)) {
			/* One more pass from the start catches rows changed
			 * behind the position: the job ends only when a whole
			 * pass finds nothing left, as it always did. */
			after_env = 0;
			after_version = 0;
			continue;
		}
		if (e == KB_OK && n == 0) {
			broker_tenant_lock(b, job->tenant_id);
			e = store_activation_finish(b->store, job, clock_now_us());
			broker_tenant_unlock(b, job->tenant_id);
			if (e == KB_OK) {
				log_info("job %s: done; key %s is tenant %s's active "
				    "key", job->id, job->key_id, job->tenant_id);
				(void)broker_audit_system(b, "job.activate.done",
				    job->tenant_id, NULL, job->key_id, "ok", job->id);
				break;
			}
		}
		if (e == KB_OK)
			e = rewrap_rows(b, rows, old, n, job->key_id,
			    b->cfg->rewrap_threads);
		if (e == KB_OK)
			e = store_rewrap_commit(b->store, job->id, rows, old, n,
			    clock_now_us());
		if (e == KB_OK) {
			after_env = rows[n - 1].env_id;
			after_version = rows[n - 1].version;
			continue;
		}
		/* The token or the disk may come back: retry those. A data
		 * key that does not unwrap will not: the job fails, and the
		 * environments already re-wrapped stay readable. */
		if (e == KB_ERR_UNAVAILABLE || e == KB_ERR_STORAGE_FULL ||
		    e == KB_ERR_READ_ONLY || e == KB_ERR_STORE) {
			log_warn("job %s: %s; retrying", job->id, kb_err_msg(e));
			nap(j, RETRY_DELAY_MS);
			continue;
		}
		{
			char why[300];

			snprintf(why, sizeof(why), "job %s: %s", job->id,
			    kb_err_msg(e));
			log_error("%s", why);
			broker_tenant_lock(b, job->tenant_id);
			(void)store_job_fail(b->store, job->id, kb_err_msg(e),
			    clock_now_us());
			broker_tenant_unlock(b, job->tenant_id);
			(void)broker_audit_system(b, "job.activate.failed",
			    job->tenant_id, NULL, job->key_id, "error", why);
		}
		break;
	}
out:
	free(rows);
	free(old);
}

static void *
job_main(void *p)
{
	struct jobs *j = p;
	struct store_job *v;
	size_t n, i;

	while (!stopping(j)) {
		pthread_mutex_lock(&j->mu);
		j->kicked = 0;
		pthread_mutex_unlock(&j->mu);
		if (store_jobs_running(j->b->store, &v, &n) == KB_OK) {
			for (i = 0; i < n && !stopping(j); i++)
				run_activation(j, &v[i]);
			free(v);
		} else {
			log_error("listing jobs: %s", kb_err_msg(KB_ERR_STORE));
		}
		pthread_mutex_lock(&j->mu);
		while (!j->kicked && !j->stopping)
			pthread_cond_wait(&j->cv, &j->mu);
		pthread_mutex_unlock(&j->mu);
	}
	return NULL;
}

unsigned
jobs_sweep(struct broker *b)
{
	struct store_env *v = NULL;
	size_t n = 0, i;
	unsigned deleted = 0;
	int64_t now = clock_now_us();
	enum kb_err e;

	if ((e = store_envs_locked_before(b->store,
	    now - POLICY_LOCKED_RETENTION_US, &v, &n, SWEEP_BATCH)) != KB_OK) {
		log_error("sweep: %s", kb_err_msg(e));
		return 0;
	}
	for (i = 0; i < n; i++) {
		char since[40];

		if (!policy_env_expired(v[i].lock_time_us, now))
			continue;
		broker_tenant_lock(b, v[i].tenant_id);
		e = store_env_purge(b->store, v[i].tenant_id, v[i].name, now);
		broker_tenant_unlock(b, v[i].tenant_id);
		if (e != KB_OK) {
			log_error("sweep: deleting %s/%s: %s", v[i].tenant_id,
			    v[i].name, kb_err_msg(e));
			continue;
		}
		deleted++;
		(void)broker_audit_system(b, "sweeper.delete", v[i].tenant_id,
		    v[i].name, v[i].key_id, "ok", "locked for 28 days: data keys "
		    "destroyed");
		log_warn("environment %s/%s DELETED: locked since %s and not "
		    "unlocked within 28 days; its data keys are destroyed",
		    v[i].tenant_id, v[i].name,
		    kb_time_format(v[i].lock_time_us, since, sizeof(since)));
	}
	free(v);
	return deleted;
}

static void *
sweep_main(void *p)
{
	struct jobs *j = p;

	while (!stopping(j)) {
		/* Several batches when many expired at once. */
		while (!stopping(j) && jobs_sweep(j->b) == SWEEP_BATCH)
			;
		nap(j, j->b->cfg->sweep_interval_s * 1000);
	}
	return NULL;
}

enum kb_err
jobs_start(struct broker *b, struct jobs **out)
{
	struct jobs *j;

	*out = NULL;
	if ((j = calloc(1, sizeof(*j))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	j->b = b;
	pthread_mutex_init(&j->mu, NULL);
	pthread_cond_init(&j->cv, NULL);
	if (pthread_create(&j->job_thread, NULL, job_main, j) != 0) {
		jobs_stop(j);
		return kb_errf(KB_ERR_RESOURCE_EXHAUSTED, "cannot start the job "
		    "thread");
	}
	j->job_started = 1;
	if (pthread_create(&j->sweep_thread, NULL, sweep_main, j) != 0) {
		jobs_stop(j);
		return kb_errf(KB_ERR_RESOURCE_EXHAUSTED, "cannot start the "
		    "sweeper thread");
	}
	j->sweep_started = 1;
	*out = j;
	return KB_OK;
}

void
jobs_kick(struct jobs *j)
{
	if (j == NULL)
		return;
	pthread_mutex_lock(&j->mu);
	j->kicked = 1;
	pthread_cond_broadcast(&j->cv);
	pthread_mutex_unlock(&j->mu);
}

void
jobs_stop(struct jobs *j)
{
	if (j == NULL)
		return;
	pthread_mutex_lock(&j->mu);
	j->stopping = 1;
	pthread_cond_broadcast(&j->cv);
	pthread_mutex_unlock(&j->mu);
	if (j->job_started)
		pthread_join(j->job_thread, NULL);
	if (j->sweep_started)
		pthread_join(j->sweep_thread, NULL);
	pthread_mutex_destroy(&j->mu);
	pthread_cond_destroy(&j->cv);
	free(j);
}
