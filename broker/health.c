/* SPDX-License-Identifier: Apache-2.0 */
/* health.c: the probe thread behind grpc.health.v1.Health/Check.
 *
 * A check asks for a probe that starts after it (so a token removed a
 * moment ago is seen) and waits for it with a bound. Callers that arrive
 * while a probe runs share the next one. The thread also probes once a
 * second on its own, so the log says when serving stops and starts again
 * even if nobody asks, and a broken session pool is rebuilt early. The
 * database is pinged at most once a second whatever the rate of checks
 * (a round trip to a PostgreSQL server per check would be one more load
 * a probe storm puts on it). */
#include "health.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "audit.h"
#include "hsm.h"
#include "log.h"
#include "store.h"

#define PROBE_INTERVAL_S 1
#define STORE_PING_CACHE_MS 1000

struct health {
	struct health_deps d;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t want_cv; /* the thread: a probe was asked for */
	pthread_cond_t done_cv; /* callers: a probe ended */
	uint64_t started; /* probes started; the running one's number */
	uint64_t finished; /* probes finished */
	int64_t probe_since_ms; /* monotonic start of the running probe, or 0 */
	int wanted, stopping;
	int restart_asked; /* the probe thread's own */
	enum kb_err result; /* of probe number `finished` */
	atomic_int token_ok, audit_ok, store_ok, serving; /* the last probe's */
	/* What the running probe waits for ("token", ...): named when a
	 * check times out. */
	_Atomic(const char *) stage;
	char msg[512];
	/* The probe thread's own: the last store ping and when (monotonic). */
	int64_t ping_ms;
	enum kb_err ping_result;
	char ping_msg[512];
};

static int64_t
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The store's database answers: a ping, reused for STORE_PING_CACHE_MS.
 * A failure keeps its message (the server's reason) for the checks that
 * reuse it. Probe thread only. */
static enum kb_err
store_probe(struct health *h)
{
	enum kb_err e;
	int64_t now = mono_ms();

	if (h->d.store == NULL)
		return KB_OK;
	if (h->ping_ms != 0 && now - h->ping_ms < STORE_PING_CACHE_MS) {
		if (h->ping_result == KB_OK)
			return KB_OK;
		return kb_errf(h->ping_result, "%s", h->ping_msg);
	}
	kb_err_clear();
	e = store_ping(h->d.store);
	h->ping_ms = mono_ms();
	h->ping_result = e == KB_OK ? KB_OK : KB_ERR_UNAVAILABLE;
	if (e == KB_OK) {
		h->ping_msg[0] = '\0';
		return KB_OK;
	}
	snprintf(h->ping_msg, sizeof(h->ping_msg),
	    "the database does not answer (%s): calls that need it fail "
	    "until it is back; health turns SERVING again by itself then",
	    kb_err_msg(e));
	return kb_errf(h->ping_result, "%s", h->ping_msg);
}

/* Keep the first part's failure and its message (the next parts' calls
 * would overwrite the thread's message). */
static void
keep_first(enum kb_err *first, char *msg, size_t len, enum kb_err e)
{
	if (e != KB_OK && *first == KB_OK) {
		*first = e;
		snprintf(msg, len, "%s", kb_err_msg(e));
	}
	kb_err_clear();
}

/* Serving needs the token, a database that answers and an audit log that
 * records: no data key goes out unaudited. */
static enum kb_err
probe(struct health *h)
{
	const struct health_deps *d = &h->d;
	enum kb_err e, first = KB_OK;
	char msg[sizeof(h->msg)] = "";

	if (d->listener_failed != NULL && d->listener_failed())
		return kb_errf(KB_ERR_UNAVAILABLE,
		    "the listener stopped "
		    "accepting connections (out of file descriptors); the "
		    "broker "
		    "is restarting");
	/* Every part each time, so the metrics and the log can say which
	 * one failed; the first failure is the answer. */
	atomic_store(&h->stage, "token");
	e = hsm_check(d->hsm);
	atomic_store(&h->token_ok, e == KB_OK);
	keep_first(&first, msg, sizeof(msg), e);
	atomic_store(&h->stage, "database");
	e = store_probe(h);
	atomic_store(&h->store_ok, e == KB_OK);
	keep_first(&first, msg, sizeof(msg), e);
	atomic_store(&h->stage, "audit log");
	e = audit_check(d->audit);
	atomic_store(&h->audit_ok, e == KB_OK);
	keep_first(&first, msg, sizeof(msg), e);
	atomic_store(&h->stage, NULL);
	return first == KB_OK ? KB_OK : kb_errf(first, "%s", msg);
}

static void *
probe_main(void *arg)
{
	struct health *h = arg;
	struct timespec until;
	enum kb_err e, was = KB_OK;
	char msg[sizeof(h->msg)];

	pthread_mutex_lock(&h->mu);
	while (!h->stopping) {
		if (!h->wanted) {
			clock_gettime(CLOCK_MONOTONIC, &until);
			until.tv_sec += PROBE_INTERVAL_S;
			while (!h->wanted && !h->stopping
			    && pthread_cond_timedwait(
			           &h->want_cv, &h->mu, &until)
			        == 0)
				;
			if (h->stopping)
				break;
		}
		h->wanted = 0;
		h->started++;
		h->probe_since_ms = mono_ms();
		pthread_mutex_unlock(&h->mu);

		kb_err_clear();
		e = probe(h);
		snprintf(
		    msg, sizeof(msg), "%s", e == KB_OK ? "" : kb_err_msg(e));
		if (e != KB_OK && was == KB_OK)
			log_event(LOG_WARN, "health.not_serving",
			    LOG_KV("token",
			        atomic_load(&h->token_ok) ? "up" : "down",
			        "database",
			        atomic_load(&h->store_ok) ? "up" : "down",
			        "audit",
			        atomic_load(&h->audit_ok) ? "up" : "down"),
			    "health: NOT_SERVING: %s", msg);
		else if (e == KB_OK && was != KB_OK)
			log_event(LOG_INFO, "health.serving", NULL,
			    "health: SERVING again");
		was = e;
		/* A listener that accepts nothing serves nobody new: whoever
		 * started us decides what to do (keybrokerd: drain and exit
		 * with EX_TEMPFAIL to be restarted). */
		if (h->d.listener_failed != NULL && h->d.listener_failed()
		    && !h->restart_asked) {
			h->restart_asked = 1;
			if (h->d.listener_lost != NULL)
				h->d.listener_lost(h->d.arg);
		}

		pthread_mutex_lock(&h->mu);
		h->result = e;
		atomic_store(&h->serving, e == KB_OK);
		memcpy(h->msg, msg, sizeof(msg));
		h->finished = h->started;
		h->probe_since_ms = 0;
		pthread_cond_broadcast(&h->done_cv);
	}
	pthread_mutex_unlock(&h->mu);
	return NULL;
}

enum kb_err
health_start(const struct health_deps *d, struct health **out)
{
	pthread_condattr_t ca;
	struct health *h;

	*out = NULL;
	if ((h = calloc(1, sizeof(*h))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	h->d = *d;
	h->result = KB_ERR_UNAVAILABLE;
	snprintf(h->msg, sizeof(h->msg), "no health probe has run yet");
	pthread_mutex_init(&h->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&h->want_cv, &ca);
	pthread_cond_init(&h->done_cv, &ca);
	pthread_condattr_destroy(&ca);
	h->wanted = 1;
	if (pthread_create(&h->thread, NULL, probe_main, h) != 0) {
		pthread_cond_destroy(&h->want_cv);
		pthread_cond_destroy(&h->done_cv);
		pthread_mutex_destroy(&h->mu);
		free(h);
		return kb_errf(KB_ERR_RESOURCE_EXHAUSTED,
		    "cannot start the "
		    "health probe thread");
	}
	*out = h;
	return KB_OK;
}

enum kb_err
health_status(struct health *h, int timeout_ms)
{
	struct timespec until;
	uint64_t need;
	int64_t since;
	enum kb_err e;

	if (h == NULL)
		return kb_errf(KB_ERR_UNAVAILABLE,
		    "the health probe is not "
		    "running");
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += timeout_ms / 1000;
	until.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (until.tv_nsec >= 1000000000) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&h->mu);
	/* The next probe to start answers this call. */
	need = h->started + 1;
	h->wanted = 1;
	pthread_cond_signal(&h->want_cv);
	while (h->finished < need && !h->stopping
	    && pthread_cond_timedwait(&h->done_cv, &h->mu, &until) == 0)
		;
	if (h->finished >= need) {
		e = h->result == KB_OK
		    ? KB_OK
		    : kb_errf(KB_ERR_UNAVAILABLE, "%s", h->msg);
	} else if (h->stopping) {
		e = kb_errf(KB_ERR_UNAVAILABLE, "the broker is stopping");
	} else {
		const char *stage = atomic_load(&h->stage);
		long long ms;

		since = h->probe_since_ms;
		ms = since != 0 ? (long long)(mono_ms() - since)
		                : (long long)timeout_ms;
		if (stage != NULL && strcmp(stage, "database") == 0)
			e = kb_errf(KB_ERR_UNAVAILABLE,
			    "the database has not answered a ping for %lld "
			    "ms (a hung, overloaded or unreachable database "
			    "server; calls that need it wait for it)",
			    ms);
		else if (stage != NULL && strcmp(stage, "audit log") == 0)
			e = kb_errf(KB_ERR_UNAVAILABLE,
			    "the audit log has not answered a check for %lld "
			    "ms (its database is hung or very slow; calls "
			    "that change state wait for it)",
			    ms);
		else
			e = kb_errf(KB_ERR_UNAVAILABLE,
			    "the token has not answered a "
			    "session check for %lld ms (a hung or very slow "
			    "token; calls that need it wait for it)",
			    ms);
	}
	pthread_mutex_unlock(&h->mu);
	return e;
}

void
health_stop(struct health *h)
{
	if (h == NULL)
		return;
	pthread_mutex_lock(&h->mu);
	h->stopping = 1;
	pthread_cond_broadcast(&h->want_cv);
	pthread_cond_broadcast(&h->done_cv);
	pthread_mutex_unlock(&h->mu);
	pthread_join(h->thread, NULL);
	pthread_cond_destroy(&h->want_cv);
	pthread_cond_destroy(&h->done_cv);
	pthread_mutex_destroy(&h->mu);
	free(h);
}

void
health_last(struct health *h, int *serving, int *token_ok, int *audit_ok)
{
	*serving = h != NULL && atomic_load(&h->serving);
	*token_ok = h != NULL && atomic_load(&h->token_ok);
	*audit_ok = h != NULL && atomic_load(&h->audit_ok);
}
