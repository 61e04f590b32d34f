/* SPDX-License-Identifier: Apache-2.0 */
/* health.h: is the broker serving? A probe thread asks the token, the
 * store's database and the audit log, so a health check gets an answer
 * within a bound even when the token or the database server stops
 * answering (a hung call holds its worker, not health). */
#ifndef KB_HEALTH_H
#define KB_HEALTH_H

#include "kb_err.h"

struct audit;
struct health;
struct hsm;
struct store;

/* What the probe looks at, and whom it tells. It never stops the process
 * itself: that is main()'s decision, through listener_lost. */
struct health_deps {
	struct hsm *hsm;
	struct audit *audit;
	/* Pinged at most once a second (store_ping): a PostgreSQL server
	 * that cannot be reached is NOT_SERVING until it is back. NULL: not
	 * checked. */
	struct store *store;
	/* Whether the listener has stopped accepting connections. */
	int (*listener_failed)(void);
	/* Called once, from the probe thread, when it has. */
	void (*listener_lost)(void *arg);
	void *arg;
};

/* Start the probe thread. */
enum kb_err health_start(const struct health_deps *d, struct health **out);

/* KB_OK when serving (h NULL: not started, never serving): a probe that
 * started after this call found the token logged in, the database
 * reachable (a ping at most a second old) and the audit log recording.
 * Otherwise the reason (always KB_ERR_UNAVAILABLE): the probe's error, or
 * which of them has not answered within `timeout_ms`. Probes are shared by
 * concurrent callers. */
enum kb_err health_status(struct health *h, int timeout_ms);

/* The last probe's findings (at most about a second old), without
 * waiting: serving, the token answered, the audit log records (1/0; all 0
 * before the first probe or with h NULL). For the metrics endpoint. */
void health_last(struct health *h, int *serving, int *token_ok, int *audit_ok);

/* Stop the thread; waits for a probe in progress. Accepts NULL. */
void health_stop(struct health *h);

#endif /* KB_HEALTH_H */
