/* SPDX-License-Identifier: Apache-2.0 */
/* test-ratelimit.c: token buckets, stream caps, bounded tables and the
 * refusal summary, on an injected clock. */
#include "harness.h"

#include <pthread.h>
#include <time.h>

#include "kb_time.h"
#include "ratelimit.h"

#define MS 1000LL /* microseconds */
#define S (1000 * MS)

static struct ratelimit *
limiter(unsigned irate, unsigned iburst, unsigned trate, unsigned tburst,
    unsigned streams)
{
	struct ratelimit_limits l = {irate, iburst, trate, tburst, streams};
	struct ratelimit *rl = NULL;

	if (ratelimit_new(&l, &rl) != KB_OK)
		return NULL;
	return rl;
}

/* One call without a stream; 1 if it fits. */
static int
take(struct ratelimit *rl, const char *id, const char *tenant, int64_t now,
    struct ratelimit_verdict *v)
{
	struct ratelimit_slot *slot;

	return ratelimit_take(rl, id, tenant, 0, now, &slot, v);
}

static void
test_burst_then_rate(void)
{
	struct ratelimit *rl = limiter(10, 5, 0, 0, 0);
	struct ratelimit_verdict v;
	int i;

	KBT_ASSERT(rl != NULL);
	/* A full bucket lets the burst through at once, then one per 100 ms. */
	for (i = 0; i < 5; i++)
		KBT_ASSERT(take(rl, "svc", NULL, 1000 * S, &v));
	KBT_ASSERT(!take(rl, "svc", NULL, 1000 * S, &v));
	KBT_ASSERT_INT(v.kind, ==, RATELIMIT_IDENTITY);
	KBT_ASSERT_INT(v.retry_us, ==, 100 * MS);
	KBT_ASSERT(!take(rl, "svc", NULL, 1000 * S + 99 * MS, &v));
	KBT_ASSERT_INT(v.retry_us, ==, 1 * MS);
	KBT_ASSERT(take(rl, "svc", NULL, 1000 * S + 100 * MS, &v));
	KBT_ASSERT(!take(rl, "svc", NULL, 1000 * S + 100 * MS, &v));
	/* Refused calls cost nothing: after 1 s the burst is back. */
	for (i = 0; i < 5; i++)
		KBT_ASSERT(take(rl, "svc", NULL, 1001 * S + 100 * MS, &v));
	KBT_ASSERT(!take(rl, "svc", NULL, 1001 * S + 100 * MS, &v));
	/* Another identity has a bucket of its own. */
	KBT_ASSERT(take(rl, "other", NULL, 1001 * S + 100 * MS, &v));
	/* Burst 0 is one second's worth; a long idle time does not bank more.
	 */
	ratelimit_free(rl);
	KBT_ASSERT((rl = limiter(3, 0, 0, 0, 0)) != NULL);
	for (i = 0; i < 3; i++)
		KBT_ASSERT(take(rl, "svc", NULL, 0, &v));
	KBT_ASSERT(!take(rl, "svc", NULL, 0, &v));
	for (i = 0; i < 3; i++)
		KBT_ASSERT(take(rl, "svc", NULL, 3600 * S, &v));
	KBT_ASSERT(!take(rl, "svc", NULL, 3600 * S, &v));
	ratelimit_free(rl);
}

static void
test_unlimited(void)
{
	struct ratelimit *rl = limiter(0, 0, 0, 0, 0);
	struct ratelimit_verdict v;
	struct ratelimit_slot *slot;
	int i;

	KBT_ASSERT(rl != NULL);
	for (i = 0; i < 100000; i++)
		KBT_ASSERT(take(rl, "svc", "acme", 0, &v));
	KBT_ASSERT(ratelimit_take(rl, "aud", NULL, 1, 0, &slot, &v));
	KBT_ASSERT(slot == NULL);
	ratelimit_slot_release(rl, slot, 0);
	ratelimit_free(rl);
	ratelimit_free(NULL);
}

static void
test_tenant_shared(void)
{
	struct ratelimit *rl = limiter(100, 100, 4, 3, 0);
	struct ratelimit_verdict v;

	KBT_ASSERT(rl != NULL);
	/* Two callers of one tenant share its bucket of 3. */
	KBT_ASSERT(take(rl, "a", "acme", 0, &v));
	KBT_ASSERT(take(rl, "b", "acme", 0, &v));
	KBT_ASSERT(take(rl, "a", "acme", 0, &v));
	KBT_ASSERT(!take(rl, "b", "acme", 0, &v));
	KBT_ASSERT_INT(v.kind, ==, RATELIMIT_TENANT);
	KBT_ASSERT_INT(v.retry_us, ==, 250 * MS);
	/* Another tenant, and calls charged to no tenant, are not held up. */
	KBT_ASSERT(take(rl, "c", "globex", 0, &v));
	KBT_ASSERT(take(rl, "b", NULL, 0, &v));
	KBT_ASSERT(take(rl, "b", "", 0, &v));
	KBT_ASSERT(take(rl, "a", "acme", 250 * MS, &v));
	ratelimit_free(rl);

	/* A call the identity's bucket refuses costs its tenant nothing. */
	KBT_ASSERT((rl = limiter(1, 1, 100, 2, 0)) != NULL);
	KBT_ASSERT(take(rl, "flood", "acme", 0, &v));
	KBT_ASSERT(!take(rl, "flood", "acme", 0, &v));
	KBT_ASSERT_INT(v.kind, ==, RATELIMIT_IDENTITY);
	KBT_ASSERT(!take(rl, "flood", "acme", 0, &v));
	KBT_ASSERT(take(rl, "quiet", "acme", 0, &v));
	/* ... and one the tenant refuses costs the identity nothing. */
	KBT_ASSERT(!take(rl, "other", "acme", 0, &v));
	KBT_ASSERT_INT(v.kind, ==, RATELIMIT_TENANT);
	KBT_ASSERT(take(rl, "other", "globex", 0, &v));
	ratelimit_free(rl);
}

static void
test_streams(void)
{
	struct ratelimit *rl = limiter(0, 0, 0, 0, 2);
	struct ratelimit_verdict v;
	struct ratelimit_slot *s1, *s2, *s3;

	KBT_ASSERT(rl != NULL);
	KBT_ASSERT(ratelimit_take(rl, "aud", NULL, 1, 0, &s1, &v));
	KBT_ASSERT(ratelimit_take(rl, "aud", NULL, 1, 0, &s2, &v));
	KBT_ASSERT(s1 != NULL && s2 != NULL);
	KBT_ASSERT(!ratelimit_take(rl, "aud", NULL, 1, 0, &s3, &v));
	KBT_ASSERT(s3 == NULL);
	KBT_ASSERT_INT(v.kind, ==, RATELIMIT_STREAMS);
	KBT_ASSERT_INT(v.streams, ==, 2);
	/* Unary calls and other identities are not capped. */
	KBT_ASSERT(take(rl, "aud", NULL, 0, &v));
	KBT_ASSERT(ratelimit_take(rl, "aud2", NULL, 1, 0, &s3, &v));
	ratelimit_slot_release(rl, s3, 0);
	/* A stream that ends frees its slot. */
	ratelimit_slot_release(rl, s1, 1 * S);
	KBT_ASSERT(ratelimit_take(rl, "aud", NULL, 1, 1 * S, &s1, &v));
	KBT_ASSERT(!ratelimit_take(rl, "aud", NULL, 1, 1 * S, &s3, &v));
	ratelimit_slot_release(rl, s1, 2 * S);
	ratelimit_slot_release(rl, s2, 2 * S);
	KBT_ASSERT(ratelimit_take(rl, "aud", NULL, 1, 2 * S, &s1, &v));
	KBT_ASSERT(ratelimit_take(rl, "aud", NULL, 1, 2 * S, &s2, &v));
	ratelimit_slot_release(rl, s1, 3 * S);
	ratelimit_slot_release(rl, s2, 3 * S);
	ratelimit_free(rl);
}

/* A flood of distinct identities fits the fixed tables: it neither grows
 * memory (nothing is allocated after ratelimit_new) nor resets the bucket
 * of a flooder that keeps calling, nor loses an identity's open stream. */
static void
test_bounded_table(void)
{
	struct ratelimit *rl = limiter(1, 3, 0, 0, 1);
	struct ratelimit_verdict v;
	struct ratelimit_slot *slot, *s2;
	char name[32], sum[600];
	int64_t now = 0;
	int i, refused = 0;

	KBT_ASSERT(rl != NULL);
	for (i = 0; i < 3; i++)
		KBT_ASSERT(take(rl, "flood", NULL, now, &v));
	KBT_ASSERT(ratelimit_take(rl, "tail", NULL, 1, now, &slot, &v));
	KBT_ASSERT(slot != NULL);
	for (i = 0; i < 200000; i++) {
		if (i % 50 == 0)
			refused += !take(rl, "flood", NULL, ++now, &v);
		snprintf(name, sizeof(name), "id-%d", i);
		KBT_ASSERT(take(rl, name, NULL, ++now, &v));
	}
	/* 200,000 calls take under 1 s of the injected clock: every call of
	 * the flooder stayed refused. */
	KBT_ASSERT(now < 1 * S);
	KBT_ASSERT_INT(refused, ==, 200000 / 50);
	KBT_ASSERT(!ratelimit_take(rl, "tail", NULL, 1, ++now, &s2, &v));
	KBT_ASSERT_INT(v.kind, ==, RATELIMIT_STREAMS);
	ratelimit_slot_release(rl, slot, ++now);
	KBT_ASSERT(ratelimit_take(rl, "tail", NULL, 1, ++now, &slot, &v));
	ratelimit_slot_release(rl, slot, ++now);
	/* The summary says that buckets in use were forgotten. */
	KBT_ASSERT(ratelimit_summary(rl, now, sum, sizeof(sum)));
	KBT_ASSERT_CONTAINS(sum, "buckets not full were evicted");
	ratelimit_free(rl);
}

static void
test_summary(void)
{
	struct ratelimit *rl = limiter(1, 1, 2, 2, 1);
	struct ratelimit_verdict v;
	struct ratelimit_slot *slot, *s2;
	char sum[600];
	int i;

	KBT_ASSERT(rl != NULL);
	KBT_ASSERT(!ratelimit_summary(rl, 10 * S, sum, sizeof(sum)));
	for (i = 0; i < 10; i++)
		(void)take(rl, "service \"flood\"", "acme", 10 * S, &v);
	KBT_ASSERT(take(rl, "service \"q\"", "acme", 10 * S, &v));
	KBT_ASSERT(!take(rl, "service \"q2\"", "acme", 10 * S, &v));
	KBT_ASSERT(
	    ratelimit_take(rl, "auditor \"a\"", NULL, 1, 10 * S, &slot, &v));
	KBT_ASSERT(
	    !ratelimit_take(rl, "auditor \"a\"", NULL, 1, 11 * S, &s2, &v));
	KBT_ASSERT(ratelimit_summary(rl, 20 * S, sum, sizeof(sum)));
	KBT_ASSERT_CONTAINS(sum,
	    "rate limits refused 11 calls in the last 10 s "
	    "(11 since start): rate_per_identity 9, rate_per_tenant 1, "
	    "max_streams_per_identity 1; most refused: service \"flood\" 9, ");
	KBT_ASSERT_CONTAINS(sum, "tenant \"acme\" 1");
	KBT_ASSERT_CONTAINS(sum, "auditor \"a\" 1");
	/* Nothing new: no summary; the next interval counts afresh. */
	KBT_ASSERT(!ratelimit_summary(rl, 30 * S, sum, sizeof(sum)));
	KBT_ASSERT(take(rl, "service \"flood\"", "acme", 30 * S, &v));
	KBT_ASSERT(!take(rl, "service \"flood\"", "acme", 30 * S, &v));
	KBT_ASSERT(ratelimit_summary(rl, 40 * S, sum, sizeof(sum)));
	KBT_ASSERT_CONTAINS(sum,
	    "refused 1 calls in the last 10 s (12 since "
	    "start): rate_per_identity 1,");
	/* A short buffer is cut, not overrun. */
	KBT_ASSERT(take(rl, "service \"flood\"", "acme", 40 * S, &v));
	KBT_ASSERT(!take(rl, "service \"flood\"", "acme", 40 * S, &v));
	KBT_ASSERT(ratelimit_summary(rl, 41 * S, sum, 20));
	KBT_ASSERT_INT(strlen(sum), ==, 19);
	ratelimit_slot_release(rl, slot, 41 * S);
	ratelimit_free(rl);
}

static char reported[600];
static int nreported;

static void
report(void *arg, const char *summary)
{
	(void)arg;
	nreported++;
	snprintf(reported, sizeof(reported), "%s", summary);
}

static void
test_reporter(void)
{
	struct ratelimit *rl = limiter(1, 1, 0, 0, 0);
	struct ratelimit_verdict v;

	KBT_ASSERT(rl != NULL);
	KBT_ASSERT_OK(ratelimit_report_every(rl, 3600, report, NULL));
	KBT_ASSERT_ERR(
	    ratelimit_report_every(rl, 3600, report, NULL), KB_ERR_INTERNAL);
	KBT_ASSERT(take(rl, "x", NULL, 0, &v));
	KBT_ASSERT(!take(rl, "x", NULL, 0, &v));
	/* The last summary goes out when the limiter is freed. */
	ratelimit_free(rl);
	KBT_ASSERT_INT(nreported, ==, 1);
	KBT_ASSERT_CONTAINS(reported, "rate limits refused 1 calls");
	/* With nothing refused, nothing is reported. */
	KBT_ASSERT((rl = limiter(1, 1, 0, 0, 0)) != NULL);
	KBT_ASSERT_OK(ratelimit_report_every(rl, 3600, report, NULL));
	ratelimit_free(rl);
	KBT_ASSERT_INT(nreported, ==, 1);
}

static int64_t fake_now_us;

static int64_t
fake_clock(void)
{
	return fake_now_us;
}

static enum kb_err
fake_stream(struct rpc_ctx *ctx, const ProtobufCMessage *req,
    const struct rpc_stream_ops *ops, struct rpc_stream *st)
{
	(void)ctx;
	(void)req;
	(void)ops;
	(void)st;
	return KB_OK;
}

static void
set_identity(
    struct identity *id, enum role role, const char *name, const char *tenant)
{
	memset(id, 0, sizeof(*id));
	id->role = role;
	snprintf(id->name, sizeof(id->name), "%s", name);
	if (tenant != NULL) {
		snprintf(id->scopes[0].tenant, sizeof(id->scopes[0].tenant),
		    "%s", tenant);
		snprintf(id->scopes[0].env, sizeof(id->scopes[0].env), "prod");
		id->nscopes = 1;
	}
}

/* The dispatcher's view: messages, status, trailer and whom a call is
 * charged to. */
static void
test_dispatch_glue(void)
{
	struct ratelimit *rl = limiter(2, 1, 1, 1, 1);
	struct rpc_method unary, stream;
	struct dispatch_result res;
	struct identity id;
	struct rpc_ctx ctx, ctx2;

	KBT_ASSERT(rl != NULL);
	ratelimit_set_clock(rl, fake_clock);
	fake_now_us = 5 * S;
	memset(&unary, 0, sizeof(unary));
	memset(&stream, 0, sizeof(stream));
	stream.stream = fake_stream;
	memset(&ctx, 0, sizeof(ctx));
	memset(&res, 0, sizeof(res));
	ctx.id = &id;
	KBT_ASSERT(!ratelimit_refused(NULL, &ctx, &unary, "acme", &res));

	/* A service naming a tenant it is not bound to is charged to its own.
	 */
	set_identity(&id, ROLE_SERVICE, "acme-prod", "acme");
	KBT_ASSERT(!ratelimit_refused(rl, &ctx, &unary, "globex", &res));
	fake_now_us += 500 * MS;
	KBT_ASSERT(ratelimit_refused(rl, &ctx, &unary, "acme", &res));
	KBT_ASSERT_INT(res.code, ==, GRPC_STATUS_RESOURCE_EXHAUSTED);
	KBT_ASSERT_CONTAINS(res.message,
	    "tenant \"acme\" is over its rate "
	    "limit, shared by all its callers (rate_per_tenant = 1 calls/s, "
	    "rate_per_tenant_burst = 1): retry in 500 ms");
	KBT_ASSERT_INT(res.retry_after_ms, ==, 500);
	/* Its own bucket: 2/s, so the next call at once is over. */
	set_identity(&id, ROLE_SERVICE, "globex-prod", "globex");
	KBT_ASSERT(!ratelimit_refused(rl, &ctx, &unary, "globex", &res));
	memset(&res, 0, sizeof(res));
	KBT_ASSERT(ratelimit_refused(rl, &ctx, &unary, "globex", &res));
	KBT_ASSERT_CONTAINS(res.message,
	    "service \"globex-prod\" is over its "
	    "rate limit (rate_per_identity = 2 calls/s, "
	    "rate_per_identity_burst = 1): retry in 500 ms");

	/* An admin limited to acme naming globex spends no tenant's share;
	 * an auditor's calls are charged to no tenant. */
	fake_now_us += 10 * S;
	set_identity(&id, ROLE_ADMIN, "ops", "acme");
	id.scopes[0].env[0] = '\0';
	KBT_ASSERT(!ratelimit_refused(rl, &ctx, &unary, "globex", &res));
	fake_now_us += 1 * S;
	KBT_ASSERT(!ratelimit_refused(rl, &ctx, &unary, "globex", &res));
	set_identity(&id, ROLE_SERVICE, "globex-prod", "globex");
	KBT_ASSERT(!ratelimit_refused(rl, &ctx, &unary, "globex", &res));
	set_identity(&id, ROLE_AUDITOR, "carol", NULL);
	KBT_ASSERT(!ratelimit_refused(rl, &ctx, &unary, "globex", &res));
	/* A platform admin spends the share of the tenant it names, unless
	 * the name is no tenant id. */
	fake_now_us += 10 * S;
	set_identity(&id, ROLE_ADMIN, "root", NULL);
	id.platform = 1;
	KBT_ASSERT(!ratelimit_refused(rl, &ctx, &unary, "globex", &res));
	set_identity(&id, ROLE_SERVICE, "globex-prod", "globex");
	KBT_ASSERT(ratelimit_refused(rl, &ctx, &unary, "globex", &res));
	KBT_ASSERT_CONTAINS(res.message, "tenant \"globex\" is over");
	fake_now_us += 1 * S;
	set_identity(&id, ROLE_ADMIN, "root", NULL);
	id.platform = 1;
	KBT_ASSERT(!ratelimit_refused(rl, &ctx, &unary, "Globex!", &res));
	/* The name check's message is not left behind for the handler. */
	KBT_ASSERT(strstr(kb_err_msg(KB_ERR_INTERNAL), "Globex") == NULL);
	set_identity(&id, ROLE_SERVICE, "globex-prod", "globex");
	KBT_ASSERT(!ratelimit_refused(rl, &ctx, &unary, "globex", &res));
	set_identity(&id, ROLE_AUDITOR, "carol", NULL);

	/* Streams: the slot is held until ratelimit_done. */
	fake_now_us += 10 * S;
	KBT_ASSERT(!ratelimit_refused(rl, &ctx, &stream, NULL, &res));
	KBT_ASSERT(ctx.rate_slot != NULL);
	memset(&ctx2, 0, sizeof(ctx2));
	ctx2.id = &id;
	fake_now_us += 10 * S;
	memset(&res, 0, sizeof(res));
	KBT_ASSERT(ratelimit_refused(rl, &ctx2, &stream, NULL, &res));
	KBT_ASSERT(ctx2.rate_slot == NULL);
	KBT_ASSERT_CONTAINS(res.message,
	    "auditor \"carol\" already has 1 "
	    "streams open, the most one identity may hold "
	    "(max_streams_per_identity = 1): retry once one of them has ended");
	KBT_ASSERT_INT(res.retry_after_ms, ==, 0);
	ratelimit_done(rl, &ctx);
	KBT_ASSERT(ctx.rate_slot == NULL);
	ratelimit_done(rl, &ctx);
	fake_now_us += 10 * S;
	KBT_ASSERT(!ratelimit_refused(rl, &ctx2, &stream, NULL, &res));
	ratelimit_done(rl, &ctx2);
	ratelimit_free(rl);
}

/* Threads: the buckets neither lose nor invent calls. */
struct hammer {
	struct ratelimit *rl;
	const char *id;
	int n, ok;
};

static void *
hammer_main(void *arg)
{
	struct hammer *h = arg;
	struct ratelimit_verdict v;
	int i;

	for (i = 0; i < h->n; i++)
		h->ok += take(h->rl, h->id, "acme", 7 * S, &v);
	return NULL;
}

static void
test_threads(void)
{
	struct ratelimit *rl = limiter(1000, 30000, 1000, 50000, 0);
	struct hammer h[4];
	pthread_t th[4];
	int i, ok = 0;

	KBT_ASSERT(rl != NULL);
	for (i = 0; i < 4; i++) {
		h[i].rl = rl;
		h[i].id = i < 2 ? "one" : "two";
		h[i].n = 40000;
		h[i].ok = 0;
		KBT_ASSERT(
		    pthread_create(&th[i], NULL, hammer_main, &h[i]) == 0);
	}
	for (i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	for (i = 0; i < 4; i++)
		ok += h[i].ok;
	/* Each identity gets its burst of 30,000 but the tenant's 50,000
	 * bound them both, at one instant. */
	KBT_ASSERT_INT(ok, ==, 50000);
	KBT_ASSERT_INT(h[0].ok + h[1].ok, <=, 30000);
	KBT_ASSERT_INT(h[2].ok + h[3].ok, <=, 30000);
	ratelimit_free(rl);
}

/* What a call costs: printed for the README, not asserted. */
struct cost {
	struct ratelimit *rl;
	int n;
	double ns;
};

static void *
cost_main(void *arg)
{
	struct cost *c = arg;
	struct ratelimit_verdict v;
	struct timespec a, b;
	int i;

	clock_gettime(CLOCK_MONOTONIC, &a);
	for (i = 0; i < c->n; i++)
		(void)take(c->rl, "service \"acme-prod\"", "acme",
		    kb_time_mono_us(), &v);
	clock_gettime(CLOCK_MONOTONIC, &b);
	c->ns = ((double)(b.tv_sec - a.tv_sec) * 1e9
	            + (double)(b.tv_nsec - a.tv_nsec))
	    / c->n;
	return NULL;
}

static void
test_cost(void)
{
	struct ratelimit *rl = limiter(1000000, 10000000, 1000000, 10000000, 0);
	struct cost c[2];
	pthread_t th[2];
	int i;

	KBT_ASSERT(rl != NULL);
	c[0].rl = rl;
	c[0].n = 1000000;
	cost_main(&c[0]);
	printf("  one thread: %.0f ns per call (identity and tenant bucket, "
	       "clock read included)\n",
	    c[0].ns);
	for (i = 0; i < 2; i++) {
		c[i].rl = rl;
		c[i].n = 1000000;
		KBT_ASSERT(pthread_create(&th[i], NULL, cost_main, &c[i]) == 0);
	}
	for (i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	printf("  two threads, one identity: %.0f and %.0f ns per call\n",
	    c[0].ns, c[1].ns);
	ratelimit_free(rl);
}

static const struct kbt_case cases[] = {
    {"/ratelimit/burst-then-rate", test_burst_then_rate},
    {"/ratelimit/unlimited", test_unlimited},
    {"/ratelimit/tenant-shared", test_tenant_shared},
    {"/ratelimit/streams", test_streams},
    {"/ratelimit/bounded-table", test_bounded_table},
    {"/ratelimit/summary", test_summary},
    {"/ratelimit/reporter", test_reporter},
    {"/ratelimit/dispatch-glue", test_dispatch_glue},
    {"/ratelimit/threads", test_threads}, {"/ratelimit/cost", test_cost},
    {NULL, NULL}};

int
main(int argc, char **argv)
{
	return kbt_run(cases, argc, argv);
}
