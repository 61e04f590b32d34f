/* SPDX-License-Identifier: Apache-2.0 */
/* ratelimit.c: token buckets per identity and per tenant, stream caps per
 * identity, and the bounded summary of what they refused.
 *
 * Each bucket is one number, its theoretical arrival time (GCRA, the
 * token bucket's equivalent): a call at `now` fits if tat - now <= tau,
 * where T = 1 s / rate is the cost of a call and tau = (burst - 1) * T;
 * it then moves tat to max(tat, now) + T. A bucket whose tat is behind now
 * is full: forgetting it loses nothing, so such entries are evicted
 * first. */
#include "ratelimit.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "kb_err_grpc.h"
#include "kb_time.h"
#include "kb_utf8.h"
#include "names.h"

#define RL_KEY_MAX 160 /* role + " \"" + CN (< 128) + "\"" */
#define RL_TOP 3 /* offenders named in a summary */
#define NS_PER_S 1000000000LL

struct rl_entry {
	uint64_t hash;
	int64_t tat_ns; /* the bucket (see above) */
	int64_t last_ns; /* last call, allowed or not: for LRU */
	uint64_t refused; /* since the last summary */
	unsigned streams; /* open streams (identity entries) */
	unsigned shard;
	int used;
	char key[RL_KEY_MAX];
};

struct rl_shard {
	pthread_mutex_t mu;
	struct rl_entry e[RATELIMIT_WAYS];
};

struct rl_table {
	struct rl_shard shard[RATELIMIT_SHARDS];
};

/* One configured rate; rate 0 = unlimited. */
struct rl_rate {
	unsigned rate, burst;
	int64_t t_ns, tau_ns;
};

struct ratelimit {
	struct rl_rate ident, tenant;
	unsigned max_streams;
	uint64_t seed;
	int64_t (*clock_us)(void);
	struct rl_table ids, tenants;
	/* Refusals since the last summary, and since the start. */
	atomic_uint_fast64_t refused[RATELIMIT_KINDS_];
	atomic_uint_fast64_t total;
	atomic_uint_fast64_t untracked; /* let through: no entry free */
	atomic_uint_fast64_t evicted_busy; /* non-full buckets forgotten */
	atomic_int_fast64_t first_ns; /* first refusal since, plus 1 */
	pthread_mutex_t summary_mu;
	/* The reporter thread. */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_t thread;
	int have_thread, stopping;
	unsigned interval_s;
	ratelimit_report_fn report;
	void *report_arg;
};

static const char *const kind_key[RATELIMIT_KINDS_] = {
    "rate_per_identity",
    "rate_per_tenant",
    "max_streams_per_identity",
};

static void
rate_init(struct rl_rate *r, unsigned rate, unsigned burst)
{
	memset(r, 0, sizeof(*r));
	if ((r->rate = rate) == 0)
		return;
	r->burst = burst != 0 ? burst : rate;
	r->t_ns = NS_PER_S / rate;
	r->tau_ns = (int64_t)(r->burst - 1) * r->t_ns;
}

/* Whether one more call fits the bucket `tat` at `now`: 1 with the bucket
 * after it in *next, or 0 with the wait until it would fit in *wait. */
static int
rate_fits(const struct rl_rate *r, int64_t tat, int64_t now, int64_t *next,
    int64_t *wait)
{
	if (tat < now)
		tat = now;
	if (tat - now > r->tau_ns) {
		*wait = tat - now - r->tau_ns;
		return 0;
	}
	*next = tat + r->t_ns;
	return 1;
}

/* FNV-1a under a per-process seed, then a finalizer so that the low bits
 * (the shard) depend on every byte. */
static uint64_t
key_hash(const struct ratelimit *rl, const char *key)
{
	uint64_t h = 0xcbf29ce484222325ULL ^ rl->seed;
	const unsigned char *p;

	for (p = (const unsigned char *)key; *p != '\0'; p++) {
		h ^= *p;
		h *= 0x100000001b3ULL;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return h;
}

/* With the shard locked: the entry for `key`, made if need be (evicting,
 * in this order, a free entry, the least recently used full bucket, the
 * least recently used bucket), or NULL if every entry holds a stream. */
static struct rl_entry *
entry_get(struct ratelimit *rl, struct rl_shard *sh, unsigned shard, uint64_t h,
    const char *key, int64_t now)
{
	struct rl_entry *e, *victim = NULL;
	int rank, victim_rank = -1;
	size_t i;

	for (i = 0; i < RATELIMIT_WAYS; i++) {
		e = &sh->e[i];
		if (e->used && e->hash == h && strcmp(e->key, key) == 0)
			return e;
		if (e->used && e->streams > 0)
			continue;
		rank = !e->used ? 2 : e->tat_ns <= now ? 1 : 0;
		if (rank > victim_rank
		    || (rank == victim_rank && e->last_ns < victim->last_ns)) {
			victim = e;
			victim_rank = rank;
		}
	}
	if (victim == NULL)
		return NULL;
	if (victim_rank == 0)
		atomic_fetch_add(&rl->evicted_busy, 1);
	memset(victim, 0, sizeof(*victim));
	victim->used = 1;
	victim->hash = h;
	victim->shard = shard;
	snprintf(victim->key, sizeof(victim->key), "%s", key);
	return victim;
}

static struct rl_shard *
shard_lock(struct ratelimit *rl, struct rl_table *t, const char *key,
    uint64_t *h, unsigned *idx)
{
	struct rl_shard *sh;

	*h = key_hash(rl, key);
	*idx = (unsigned)(*h % RATELIMIT_SHARDS);
	sh = &t->shard[*idx];
	pthread_mutex_lock(&sh->mu);
	return sh;
}

int
ratelimit_take(struct ratelimit *rl, const char *identity, const char *tenant,
    int stream, int64_t now_us, struct ratelimit_slot **slot,
    struct ratelimit_verdict *v)
{
	struct rl_shard *is = NULL, *ts = NULL;
	struct rl_entry *ie = NULL, *te = NULL, *refused = NULL;
	int64_t now = now_us * 1000, id_next = 0, t_next = 0, wait = 0;
	int capped = stream && rl->max_streams != 0;
	unsigned idx;
	uint64_t h;

	*slot = NULL;
	memset(v, 0, sizeof(*v));
	if (tenant != NULL && tenant[0] == '\0')
		tenant = NULL;
	if (rl->ident.rate == 0 && !capped
	    && (tenant == NULL || rl->tenant.rate == 0))
		return 1;
	/* Identity shard, then tenant shard: always this order. */
	if (rl->ident.rate != 0 || capped) {
		is = shard_lock(rl, &rl->ids, identity, &h, &idx);
		if ((ie = entry_get(rl, is, idx, h, identity, now)) == NULL)
			atomic_fetch_add(&rl->untracked, 1);
	}
	if (ie != NULL && rl->ident.rate != 0
	    && !rate_fits(&rl->ident, ie->tat_ns, now, &id_next, &wait)) {
		v->kind = RATELIMIT_IDENTITY;
		refused = ie;
		goto out;
	}
	if (ie != NULL && capped && ie->streams >= rl->max_streams) {
		v->kind = RATELIMIT_STREAMS;
		v->streams = ie->streams;
		refused = ie;
		goto out;
	}
	if (tenant != NULL && rl->tenant.rate != 0) {
		ts = shard_lock(rl, &rl->tenants, tenant, &h, &idx);
		if ((te = entry_get(rl, ts, idx, h, tenant, now)) == NULL)
			atomic_fetch_add(&rl->untracked, 1);
		else if (!rate_fits(
		             &rl->tenant, te->tat_ns, now, &t_next, &wait)) {
			v->kind = RATELIMIT_TENANT;
			refused = te;
			goto out;
		}
	}
	/* Everything fits: charge it all. */
	if (ie != NULL) {
		if (rl->ident.rate != 0)
			ie->tat_ns = id_next;
		ie->last_ns = now;
		if (capped) {
			ie->streams++;
			*slot = (struct ratelimit_slot *)ie;
		}
	}
	if (te != NULL) {
		te->tat_ns = t_next;
		te->last_ns = now;
	}
out:
	if (refused != NULL) {
		/* A refused caller stays recent: evicting its bucket would
		 * hand it a full one. */
		refused->refused++;
		refused->last_ns = now;
		v->retry_us = (wait + 999) / 1000;
		atomic_fetch_add(&rl->refused[v->kind], 1);
		atomic_fetch_add(&rl->total, 1);
		if (atomic_load(&rl->first_ns) == 0) {
			int_fast64_t none = 0;

			atomic_compare_exchange_strong(
			    &rl->first_ns, &none, now + 1);
		}
	}
	if (ts != NULL)
		pthread_mutex_unlock(&ts->mu);
	if (is != NULL)
		pthread_mutex_unlock(&is->mu);
	return refused == NULL;
}

void
ratelimit_slot_release(
    struct ratelimit *rl, struct ratelimit_slot *slot, int64_t now_us)
{
	/* A slot is its identity's entry, which holds still (is never
	 * evicted) while it has a stream. */
	struct rl_entry *e = (struct rl_entry *)slot;
	struct rl_shard *sh;

	if (rl == NULL || e == NULL)
		return;
	sh = &rl->ids.shard[e->shard];
	pthread_mutex_lock(&sh->mu);
	if (e->streams > 0)
		e->streams--;
	e->last_ns = now_us * 1000;
	pthread_mutex_unlock(&sh->mu);
}

struct top {
	uint64_t n;
	char who[RL_KEY_MAX + 16];
};

/* Take the refusal counts of a table's entries (resetting them) into the
 * RL_TOP largest of `top`; `tenants`: the keys are tenant ids. */
static void
collect_top(struct rl_table *t, int tenants, struct top *top)
{
	struct rl_entry *e;
	size_t s, i, j;

	for (s = 0; s < RATELIMIT_SHARDS; s++) {
		pthread_mutex_lock(&t->shard[s].mu);
		for (i = 0; i < RATELIMIT_WAYS; i++) {
			e = &t->shard[s].e[i];
			if (!e->used || e->refused == 0)
				continue;
			for (j = 0; j < RL_TOP && top[j].n >= e->refused; j++)
				;
			if (j < RL_TOP) {
				memmove(&top[j + 1], &top[j],
				    (RL_TOP - 1 - j) * sizeof(top[0]));
				top[j].n = e->refused;
				snprintf(top[j].who, sizeof(top[j].who),
				    tenants ? "tenant \"%s\"" : "%s", e->key);
			}
			e->refused = 0;
		}
		pthread_mutex_unlock(&t->shard[s].mu);
	}
}

int
ratelimit_summary(struct ratelimit *rl, int64_t now_us, char *buf, size_t len)
{
	struct top top[RL_TOP];
	uint64_t n[RATELIMIT_KINDS_], sum = 0, untracked, busy;
	int64_t now = now_us * 1000, first, secs;
	size_t i, off;

	pthread_mutex_lock(&rl->summary_mu);
	first = atomic_exchange(&rl->first_ns, 0) - 1;
	for (i = 0; i < RATELIMIT_KINDS_; i++)
		sum += n[i] = atomic_exchange(&rl->refused[i], 0);
	untracked = atomic_exchange(&rl->untracked, 0);
	busy = atomic_exchange(&rl->evicted_busy, 0);
	if (sum == 0 && untracked == 0 && busy == 0) {
		pthread_mutex_unlock(&rl->summary_mu);
		return 0;
	}
	memset(top, 0, sizeof(top));
	collect_top(&rl->ids, 0, top);
	collect_top(&rl->tenants, 1, top);
	/* The interval runs from its first refusal. */
	secs = first >= 0 ? (now - first + NS_PER_S / 2) / NS_PER_S : 0;
	off = (size_t)snprintf(buf, len,
	    "rate limits refused %llu calls in "
	    "the last %lld s (%llu since start): %s %llu, %s %llu, %s %llu",
	    (unsigned long long)sum, (long long)(secs > 0 ? secs : 1),
	    (unsigned long long)atomic_load(&rl->total), kind_key[0],
	    (unsigned long long)n[0], kind_key[1], (unsigned long long)n[1],
	    kind_key[2], (unsigned long long)n[2]);
	for (i = 0; i < RL_TOP && top[i].n > 0 && off < len; i++)
		off += (size_t)snprintf(buf + off, len - off, "%s%s %llu",
		    i == 0 ? "; most refused: " : ", ", top[i].who,
		    (unsigned long long)top[i].n);
	if (untracked > 0 && off < len)
		off += (size_t)snprintf(buf + off, len - off,
		    "; %llu calls let "
		    "through untracked (their table shard was full of open "
		    "streams)",
		    (unsigned long long)untracked);
	if (busy > 0 && off < len)
		snprintf(buf + off, len - off,
		    "; %llu buckets not full were "
		    "evicted by new callers (more than %d callers at once)",
		    (unsigned long long)busy,
		    RATELIMIT_SHARDS * RATELIMIT_WAYS);
	pthread_mutex_unlock(&rl->summary_mu);
	/* Names are cut inside a character at worst: whole ones only. */
	kb_utf8_clean(buf, len);
	return 1;
}

enum kb_err
ratelimit_new(const struct ratelimit_limits *l, struct ratelimit **out)
{
	struct ratelimit *rl;
	pthread_condattr_t ca;
	size_t i;

	*out = NULL;
	if ((rl = calloc(1, sizeof(*rl))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	rate_init(&rl->ident, l->identity_rate, l->identity_burst);
	rate_init(&rl->tenant, l->tenant_rate, l->tenant_burst);
	rl->max_streams = l->max_streams;
	/* A seed nobody knows: callers cannot pick names that share a shard. */
	if (RAND_bytes((unsigned char *)&rl->seed, sizeof(rl->seed)) != 1)
		rl->seed = (uint64_t)kb_time_now_us();
	rl->clock_us = kb_time_mono_us;
	for (i = 0; i < RATELIMIT_SHARDS; i++) {
		pthread_mutex_init(&rl->ids.shard[i].mu, NULL);
		pthread_mutex_init(&rl->tenants.shard[i].mu, NULL);
	}
	for (i = 0; i < RATELIMIT_KINDS_; i++)
		atomic_init(&rl->refused[i], 0);
	atomic_init(&rl->total, 0);
	atomic_init(&rl->untracked, 0);
	atomic_init(&rl->evicted_busy, 0);
	atomic_init(&rl->first_ns, 0);
	pthread_mutex_init(&rl->summary_mu, NULL);
	pthread_mutex_init(&rl->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&rl->cv, &ca);
	pthread_condattr_destroy(&ca);
	*out = rl;
	return KB_OK;
}

static void *
report_main(void *arg)
{
	struct ratelimit *rl = arg;
	struct timespec until;
	char buf[600];

	pthread_mutex_lock(&rl->mu);
	while (!rl->stopping) {
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_sec += rl->interval_s;
		while (!rl->stopping
		    && pthread_cond_timedwait(&rl->cv, &rl->mu, &until) == 0)
			;
		if (rl->stopping)
			break;
		pthread_mutex_unlock(&rl->mu);
		if (ratelimit_summary(rl, rl->clock_us(), buf, sizeof(buf)))
			rl->report(rl->report_arg, buf);
		pthread_mutex_lock(&rl->mu);
	}
	pthread_mutex_unlock(&rl->mu);
	return NULL;
}

enum kb_err
ratelimit_report_every(struct ratelimit *rl, unsigned interval_s,
    ratelimit_report_fn fn, void *arg)
{
	if (rl->have_thread)
		return kb_errf(KB_ERR_INTERNAL,
		    "the rate limit reporter runs "
		    "already");
	rl->interval_s = interval_s > 0 ? interval_s : 1;
	rl->report = fn;
	rl->report_arg = arg;
	if (pthread_create(&rl->thread, NULL, report_main, rl) != 0)
		return kb_errf(KB_ERR_RESOURCE_EXHAUSTED,
		    "cannot start the rate "
		    "limit reporter thread");
	rl->have_thread = 1;
	return KB_OK;
}

void
ratelimit_set_clock(struct ratelimit *rl, int64_t (*now_us)(void))
{
	rl->clock_us = now_us;
}

void
ratelimit_free(struct ratelimit *rl)
{
	char buf[600];
	size_t i;

	if (rl == NULL)
		return;
	if (rl->have_thread) {
		pthread_mutex_lock(&rl->mu);
		rl->stopping = 1;
		pthread_cond_broadcast(&rl->cv);
		pthread_mutex_unlock(&rl->mu);
		pthread_join(rl->thread, NULL);
		if (ratelimit_summary(rl, rl->clock_us(), buf, sizeof(buf)))
			rl->report(rl->report_arg, buf);
	}
	for (i = 0; i < RATELIMIT_SHARDS; i++) {
		pthread_mutex_destroy(&rl->ids.shard[i].mu);
		pthread_mutex_destroy(&rl->tenants.shard[i].mu);
	}
	pthread_mutex_destroy(&rl->summary_mu);
	pthread_mutex_destroy(&rl->mu);
	pthread_cond_destroy(&rl->cv);
	free(rl);
}

/* The tenant a call is charged to (see ratelimit.h): never one the caller
 * may not act on, so nobody can spend another tenant's share. */
static const char *
charged_tenant(const struct identity *id, const char *named)
{
	/* A name that is no tenant id (the handler refuses it) would only
	 * fill the table. */
	if (named != NULL && names_check_id("tenant id", named) != KB_OK) {
		kb_err_clear();
		named = NULL;
	}
	switch (id->role) {
	case ROLE_SERVICE:
		if (named != NULL && identity_may_tenant(id, named))
			return named;
		return id->nscopes > 0 ? id->scopes[0].tenant : NULL;
	case ROLE_ADMIN:
		return named != NULL && identity_may_tenant(id, named) ? named
		                                                       : NULL;
	case ROLE_AUDITOR:
	case ROLE_NONE: break;
	}
	return NULL;
}

int
ratelimit_refused(struct ratelimit *rl, struct rpc_ctx *ctx,
    const struct rpc_method *m, const char *tenant, struct dispatch_result *res)
{
	const struct identity *id = ctx->id;
	const char *role = identity_role_name(id->role);
	struct ratelimit_verdict v;
	char key[RL_KEY_MAX];
	long long ms;
	enum kb_err e;

	if (rl == NULL)
		return 0;
	snprintf(key, sizeof(key), "%s \"%s\"", role, id->name);
	tenant = charged_tenant(id, tenant);
	if (ratelimit_take(rl, key, tenant, m->stream != NULL, rl->clock_us(),
	        &ctx->rate_slot, &v))
		return 0;
	ms = (long long)(v.retry_us + 999) / 1000;
	switch (v.kind) {
	case RATELIMIT_IDENTITY:
		e = kb_errf(KB_ERR_RESOURCE_EXHAUSTED,
		    "%s \"%s\" is over its "
		    "rate limit (rate_per_identity = %u calls/s, "
		    "rate_per_identity_burst = %u): retry in %lld ms",
		    role, id->name, rl->ident.rate, rl->ident.burst, ms);
		break;
	case RATELIMIT_TENANT:
		e = kb_errf(KB_ERR_RESOURCE_EXHAUSTED,
		    "tenant \"%s\" is over "
		    "its rate limit, shared by all its callers "
		    "(rate_per_tenant "
		    "= %u calls/s, rate_per_tenant_burst = %u): retry in %lld "
		    "ms",
		    tenant, rl->tenant.rate, rl->tenant.burst, ms);
		break;
	case RATELIMIT_STREAMS:
	case RATELIMIT_KINDS_:
	default:
		ms = 0;
		e = kb_errf(KB_ERR_RESOURCE_EXHAUSTED,
		    "%s \"%s\" already has "
		    "%u streams open, the most one identity may hold "
		    "(max_streams_per_identity = %u): retry once one of them "
		    "has "
		    "ended",
		    role, id->name, v.streams, rl->max_streams);
		break;
	}
	res->code = kb_err_to_grpc(e);
	snprintf(res->message, sizeof(res->message), "%s", kb_err_msg(e));
	kb_utf8_clean(res->message, sizeof(res->message));
	res->retry_after_ms = ms > 0 ? (unsigned)ms : 0;
	return 1;
}

void
ratelimit_done(struct ratelimit *rl, struct rpc_ctx *ctx)
{
	if (ctx->rate_slot == NULL)
		return;
	ratelimit_slot_release(rl, ctx->rate_slot, rl->clock_us());
	ctx->rate_slot = NULL;
}
