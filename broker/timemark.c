/* SPDX-License-Identifier: Apache-2.0 */
/* timemark.c: policy time's durable high-water mark; the clock set back,
 * and forward clock jumps that pause the sweeper until an admin confirms. */
#include "timemark.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "kb_time.h"
#include "log.h"
#include "policy.h"

struct timemark {
	struct store *store;
	unsigned limit_s; /* clock_jump_limit_s */
	timemark_record_fn record;
	void *record_arg;
	pthread_mutex_t mu; /* one check at a time; guards what follows */
	pthread_cond_t cv; /* CLOCK_MONOTONIC: a clock set back does not
	                      stretch the keeper's sleep */
	struct store_clock row; /* what is (or, after a failed write, should
	                           be) stored */
	int dirty; /* the last write failed */
	int64_t checked_mono_us; /* the last check (kb_time_mono_us) */
	int behind; /* the wall clock is behind (and was said) */
	int pause_said; /* the sweeper's pause was logged */
	int stopping;
	int started;
	pthread_t thread;
};

enum kb_err
timemark_open(struct store *store, unsigned jump_limit_s,
    timemark_record_fn record, void *arg, struct timemark **out)
{
	struct timemark *tm;
	pthread_condattr_t ca;
	enum kb_err e;

	*out = NULL;
	if ((tm = calloc(1, sizeof(*tm))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	tm->store = store;
	tm->limit_s = jump_limit_s;
	tm->record = record;
	tm->record_arg = arg;
	if ((e = store_clock_get(store, &tm->row)) != KB_OK) {
		free(tm);
		return e;
	}
	pthread_mutex_init(&tm->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&tm->cv, &ca);
	pthread_condattr_destroy(&ca);
	/* From here on no record is stamped before the mark. */
	clock_floor_raise(tm->row.mark_us);
	*out = tm;
	return KB_OK;
}

/* "2419200 s (28 d 0 h)" for messages. */
static const char *
span(int64_t us, char *buf, size_t len)
{
	int64_t s = us / 1000000;

	if (s >= 86400)
		snprintf(buf, len, "%lld s (%lld d %lld h)", (long long)s,
		    (long long)(s / 86400), (long long)(s % 86400 / 3600));
	else
		snprintf(buf, len, "%lld s", (long long)s);
	return buf;
}

static void
said_backward(struct timemark *tm, int64_t wall, int64_t now)
{
	char w[40], n[40], d[48], why[400];

	kb_time_format(wall, w, sizeof(w));
	kb_time_format(now, n, sizeof(n));
	span(now - wall, d, sizeof(d));
	snprintf(why, sizeof(why),
	    "the wall clock (%s) is %s behind policy "
	    "time (%s): it was set back; policy time stays at %s until the "
	    "wall clock catches up, so no time rule goes back",
	    w, d, n, n);
	log_error("CLOCK SET BACK: %s", why);
	tm->record(tm->record_arg, "clock.backward", "error", why);
}

static void
said_jump(struct timemark *tm, int64_t mark, int64_t wall)
{
	char m[40], w[40], d[48], why[480];

	kb_time_format(mark, m, sizeof(m));
	kb_time_format(wall, w, sizeof(w));
	span(wall - mark, d, sizeof(d));
	snprintf(why, sizeof(why),
	    "the wall clock (%s) is %s ahead of the "
	    "last mark (%s), more than clock_jump_limit_s = %u: it jumped, or "
	    "the broker was stopped that long; the sweeper's deletions are "
	    "paused until a platform-wide admin runs kbctl clock confirm",
	    w, d, m, tm->limit_s);
	log_error("CLOCK JUMPED FORWARD: %s", why);
	tm->record(tm->record_arg, "clock.jump", "error", why);
}

/* Compare the wall clock with policy time and the mark, say what is new,
 * and store the mark at policy time now. Called with tm->mu held. On a
 * failed write the row is kept in memory (a jump found still pauses the
 * sweeper) and written at the next check. */
static enum kb_err
check(struct timemark *tm, int64_t *now_out)
{
	int64_t limit = (int64_t)tm->limit_s * 1000000;
	int64_t wall = clock_wall_us(), now = clock_now_us();
	enum policy_clock pc;
	enum kb_err e;

	tm->checked_mono_us = kb_time_mono_us();
	pc = policy_clock_check(
	    wall, now, tm->row.kept ? tm->row.mark_us : 0, limit);
	switch (pc) {
	case POLICY_CLOCK_BACKWARD:
		if (!tm->behind)
			said_backward(tm, wall, now);
		tm->behind = 1;
		break;
	case POLICY_CLOCK_JUMP:
		said_jump(tm, tm->row.mark_us, wall);
		/* Jumps in a row while one waits make one longer jump. */
		if (tm->row.jump_from_us == 0)
			tm->row.jump_from_us = tm->row.mark_us;
		tm->row.jump_to_us = wall;
		tm->pause_said = 0;
		break;
	case POLICY_CLOCK_OK: break;
	}
	if (pc != POLICY_CLOCK_BACKWARD && tm->behind) {
		tm->behind = 0;
		log_warn("the wall clock has caught up with policy time: time "
		         "rules follow it again");
	}
	if (now > tm->row.mark_us)
		tm->row.mark_us = now;
	tm->row.kept = 1;
	if ((e = store_clock_put(tm->store, &tm->row)) != KB_OK) {
		if (!tm->dirty)
			log_error(
			    "clock: the mark cannot be stored (%s); decisions "
			    "that destroy or unlock something are refused "
			    "until it "
			    "can",
			    kb_err_msg(e));
		tm->dirty = 1;
		return e;
	}
	if (tm->dirty)
		log_info("clock: the mark is stored again");
	tm->dirty = 0;
	if (now_out != NULL)
		*now_out = now;
	return KB_OK;
}

/* Whether a check now would say something new: a jump, a clock set back,
 * or one caught up. Called with tm->mu held. */
static int
news(struct timemark *tm)
{
	int64_t limit = (int64_t)tm->limit_s * 1000000;
	enum policy_clock pc;

	pc = policy_clock_check(clock_wall_us(), clock_now_us(),
	    tm->row.kept ? tm->row.mark_us : 0, limit);
	return pc == POLICY_CLOCK_JUMP
	    || (pc == POLICY_CLOCK_BACKWARD) != (tm->behind != 0);
}

enum kb_err
timemark_advance(struct timemark *tm, int64_t *now)
{
	enum kb_err e;

	pthread_mutex_lock(&tm->mu);
	e = check(tm, now);
	pthread_mutex_unlock(&tm->mu);
	return e;
}

enum kb_err
timemark_may_sweep(struct timemark *tm, int64_t *now)
{
	enum kb_err e;

	pthread_mutex_lock(&tm->mu);
	if ((e = check(tm, now)) == KB_OK
	    && (e = policy_may_sweep(tm->row.jump_from_us, tm->row.jump_to_us))
	        != KB_OK
	    && !tm->pause_said) {
		log_warn("sweeper PAUSED: %s", kb_err_msg(e));
		tm->pause_said = 1;
	}
	pthread_mutex_unlock(&tm->mu);
	return e;
}

/* Called with tm->mu held. */
static void
fill(struct timemark *tm, struct timemark_state *out)
{
	memset(out, 0, sizeof(*out));
	out->now_us = clock_now_us();
	out->wall_us = clock_wall_us();
	out->mark_us = tm->row.mark_us;
	out->limit_s = tm->limit_s;
	out->jump_from_us = tm->row.jump_from_us;
	out->jump_to_us = tm->row.jump_to_us;
	out->confirm_time_us = tm->row.confirm_time_us;
	snprintf(
	    out->confirm_by, sizeof(out->confirm_by), "%s", tm->row.confirm_by);
}

enum kb_err
timemark_state(struct timemark *tm, struct timemark_state *out)
{
	enum kb_err e;

	pthread_mutex_lock(&tm->mu);
	/* A read stores the mark at most once a second, however often anyone
	 * asks, unless the clock did something new (said at once; a jump
	 * moves the mark, so it is said once). */
	e = KB_OK;
	if (kb_time_mono_us() - tm->checked_mono_us >= 1000000 || news(tm))
		e = check(tm, NULL);
	fill(tm, out);
	pthread_mutex_unlock(&tm->mu);
	return e;
}

enum kb_err
timemark_confirm(
    struct timemark *tm, const char *who, struct timemark_state *out)
{
	struct store_clock was;
	char f[40], t[40], d[48], why[400];
	int64_t now = 0;
	enum kb_err e;

	pthread_mutex_lock(&tm->mu);
	if ((e = check(tm, &now)) != KB_OK)
		goto out;
	if (tm->row.jump_from_us == 0) {
		e = kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "no forward clock jump "
		    "is waiting for confirmation: the sweeper is not paused "
		    "(kbctl clock show)");
		goto out;
	}
	was = tm->row;
	tm->row.jump_from_us = tm->row.jump_to_us = 0;
	tm->row.confirm_time_us = now;
	snprintf(tm->row.confirm_by, sizeof(tm->row.confirm_by), "%s", who);
	if ((e = store_clock_put(tm->store, &tm->row)) != KB_OK) {
		tm->row = was;
		goto out;
	}
	snprintf(why, sizeof(why),
	    "forward clock jump of %s (%s to %s) "
	    "confirmed by %s: the sweeper deletes again, by the clock as it "
	    "is now",
	    span(was.jump_to_us - was.jump_from_us, d, sizeof(d)),
	    kb_time_format(was.jump_from_us, f, sizeof(f)),
	    kb_time_format(was.jump_to_us, t, sizeof(t)), who);
	log_warn("%s", why);
	tm->record(tm->record_arg, "clock.jump.confirm", "ok", why);
	tm->pause_said = 0;
out:
	fill(tm, out);
	pthread_mutex_unlock(&tm->mu);
	return e;
}

static void *
keeper_main(void *p)
{
	struct timemark *tm = p;
	struct timespec until;

	pthread_mutex_lock(&tm->mu);
	while (!tm->stopping) {
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_sec += TIMEMARK_INTERVAL_S;
		while (!tm->stopping
		    && pthread_cond_timedwait(&tm->cv, &tm->mu, &until)
		        != ETIMEDOUT)
			;
		if (!tm->stopping)
			(void)check(tm, NULL); /* logged there */
	}
	pthread_mutex_unlock(&tm->mu);
	return NULL;
}

enum kb_err
timemark_start(struct timemark *tm)
{
	enum kb_err e;

	/* Policy time already starts from the stored mark: a database that
	 * cannot be written now (logged by check) lets the broker serve
	 * reads; what destroys or unlocks waits until the mark is stored. */
	if ((e = timemark_advance(tm, NULL)) != KB_OK)
		kb_err_clear();
	if (tm->row.jump_from_us != 0)
		log_warn(
		    "a forward clock jump waits for confirmation (kbctl "
		    "clock confirm): the sweeper deletes nothing until then");
	if (pthread_create(&tm->thread, NULL, keeper_main, tm) != 0)
		return kb_errf(KB_ERR_RESOURCE_EXHAUSTED,
		    "cannot start the "
		    "clock's mark keeper thread");
	tm->started = 1;
	return KB_OK;
}

void
timemark_close(struct timemark *tm)
{
	if (tm == NULL)
		return;
	pthread_mutex_lock(&tm->mu);
	tm->stopping = 1;
	pthread_cond_broadcast(&tm->cv);
	pthread_mutex_unlock(&tm->mu);
	if (tm->started) {
		pthread_join(tm->thread, NULL);
		/* The last mark, so a restart starts from here. */
		(void)timemark_advance(tm, NULL);
	}
	pthread_mutex_destroy(&tm->mu);
	pthread_cond_destroy(&tm->cv);
	free(tm);
}
