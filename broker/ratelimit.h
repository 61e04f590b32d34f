/* SPDX-License-Identifier: Apache-2.0 */
/* ratelimit.h: fair shares of the broker: a token bucket per caller
 * identity and per tenant, and a cap on the server-streaming calls one
 * identity holds open.
 *
 * Buckets live in memory only, in two fixed-size tables (identities,
 * tenants) of RATELIMIT_SHARDS shards of RATELIMIT_WAYS entries, each shard
 * with its own mutex: a flood of distinct identities evicts the least
 * recently used entries of a shard instead of growing memory. An entry
 * whose bucket is full (idle) is evicted first, which loses nothing; an
 * entry holding a stream is never evicted. A refused call is counted, not
 * logged or audited by itself: a summary goes out once per interval. */
#ifndef KB_RATELIMIT_H
#define KB_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

#include "method.h"
#include "kb_err.h"

#define RATELIMIT_SHARDS 64
#define RATELIMIT_WAYS 32 /* entries per shard: 2048 per table */

struct ratelimit;
struct ratelimit_slot; /* one open stream of an identity */

/* The limits (config keys of the same names). A rate is calls per second,
 * 0 = unlimited; a burst is the calls a full bucket lets through at once,
 * 0 = one second's worth of the rate. max_streams 0 = unlimited. */
struct ratelimit_limits {
	unsigned identity_rate, identity_burst; /* rate_per_identity[_burst] */
	unsigned tenant_rate, tenant_burst; /* rate_per_tenant[_burst] */
	unsigned max_streams; /* max_streams_per_identity */
};

enum ratelimit_kind {
	RATELIMIT_IDENTITY = 0,
	RATELIMIT_TENANT,
	RATELIMIT_STREAMS,
	RATELIMIT_KINDS_ /* not a limit: their number */
};

/* Why a call was refused. */
struct ratelimit_verdict {
	enum ratelimit_kind kind;
	int64_t retry_us; /* rates: when one more call would fit */
	unsigned streams; /* streams: how many the identity holds */
};

/* A limiter with these limits (copied). Free with ratelimit_free(). */
enum kb_err ratelimit_new(
    const struct ratelimit_limits *l, struct ratelimit **out);

/* Stop the reporter (sending it a last summary if anything was refused
 * since the one before) and free everything. No call may be in
 * ratelimit_take() or hold a slot any more. Accepts NULL. */
void ratelimit_free(struct ratelimit *rl);

/* Whether a call by `identity` (any string naming the caller, shown as it
 * is in summaries) charged to `tenant` (NULL or "": no tenant bucket) fits
 * at monotonic time `now_us`; `stream` asks for a stream slot too. Returns
 * 1 and charges both buckets (and, for a stream under a cap, sets *slot:
 * give it back with ratelimit_slot_release) or 0 with *v saying which limit
 * refused, charging nothing. A caller that cannot be given an entry (a
 * shard whose every entry holds a stream) is let through, and counted. */
int ratelimit_take(struct ratelimit *rl, const char *identity,
    const char *tenant, int stream, int64_t now_us,
    struct ratelimit_slot **slot, struct ratelimit_verdict *v);

/* The stream ended: free its slot. Accepts NULL. */
void ratelimit_slot_release(
    struct ratelimit *rl, struct ratelimit_slot *slot, int64_t now_us);

/* If anything was refused since the last summary, write one line saying
 * how many calls each limit refused and who was refused most into `buf`,
 * start the next interval, and return 1; else return 0. */
int ratelimit_summary(
    struct ratelimit *rl, int64_t now_us, char *buf, size_t len);

/* Call fn(arg, summary) from a thread of its own every `interval_s`
 * seconds when there is a summary, and once more from ratelimit_free(). */
typedef void (*ratelimit_report_fn)(void *arg, const char *summary);
enum kb_err ratelimit_report_every(struct ratelimit *rl, unsigned interval_s,
    ratelimit_report_fn fn, void *arg);

/* Tests: the monotonic clock (microseconds) the dispatcher's calls read;
 * kb_time_mono_us by default. */
void ratelimit_set_clock(struct ratelimit *rl, int64_t (*now_us)(void));

/* The dispatcher's one question, after authentication: whether the call
 * `m` by ctx->id, naming `tenant` (its tenant_id field, or NULL), is over a
 * limit. The call is charged to the caller's identity (role and CN) and to
 * a tenant: for a service the named tenant if it is bound to it, else the
 * tenant its certificate is bound to first; for an admin the named tenant
 * (a well-formed id) if it may act on it; auditors to none. If it is over,
 * fills `res` (RESOURCE_EXHAUSTED naming the limit, its config key and when to
 * retry) and returns 1: the refusal is counted for the summary, not audited.
 * Otherwise returns 0, holding a stream slot in ctx->rate_slot for a
 * stream under a cap: ratelimit_done() gives it back. rl NULL: no limits. */
int ratelimit_refused(struct ratelimit *rl, struct rpc_ctx *ctx,
    const struct rpc_method *m, const char *tenant,
    struct dispatch_result *res);

/* The call has ended (a stream: its client went, its deadline passed or
 * the broker is stopping): free what ratelimit_refused() held for it. */
void ratelimit_done(struct ratelimit *rl, struct rpc_ctx *ctx);

#endif /* KB_RATELIMIT_H */
