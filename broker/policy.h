/* SPDX-License-Identifier: Apache-2.0 */
/* policy.h: the tenant-key rules (DESIGN.md, Policy) as pure functions of a
 * tenant's state and the time: no token, no database. Every refusal is
 * KB_ERR_FAILED_PRECONDITION naming the rule and, for time rules, the
 * moment from which the operation will be allowed. */
#ifndef KB_POLICY_H
#define KB_POLICY_H

#include <stdint.h>

#include "kb_err.h"

#define POLICY_HOUR_US (3600LL * 1000000)
#define POLICY_ACTIVATION_COOLDOWN_US (24 * POLICY_HOUR_US)
#define POLICY_LOCK_COOLDOWN_US (72 * POLICY_HOUR_US)
#define POLICY_UNLOCK_COOLDOWN_US (1 * POLICY_HOUR_US)
#define POLICY_LOCKED_RETENTION_US (28 * 24 * POLICY_HOUR_US)

/* What the rules need to know of a tenant. */
struct policy_tenant {
	const char *id;
	int locked; /* the tenant is locked */
	unsigned locked_envs; /* environments in state locked */
	int64_t last_env_lock_us; /* the newest of their lock times */
	int activation_running; /* a key is installing (or retiring) */
	int has_active_key;
	int64_t last_activation_us; /* 0 = never */
	int64_t last_key_change_us; /* generate, upload, activation, unlock */
	int64_t lock_time_us;
};

/* Generating or uploading a key: refused while the tenant is locked or has
 * locked environments. */
enum kb_err policy_may_add_key(const struct policy_tenant *t, int64_t now);

/* Activating a key: refused while locked, with locked environments, during
 * another activation, and within 24 hours of the previous activation. */
enum kb_err policy_may_activate(const struct policy_tenant *t, int64_t now);

/* Locking: needs an active key, no activation running, and 72 hours since the
 * last key change or activation. */
enum kb_err policy_may_lock(const struct policy_tenant *t, int64_t now);

/* Unlocking the tenant: it must be locked, and 1 hour must have passed. */
enum kb_err policy_may_unlock(const struct policy_tenant *t, int64_t now);

/* Changing an environment's encryption (apply, revert, restore, copy,
 * reset): not while the tenant is locked or a key is installing. */
enum kb_err policy_may_change_env(
    const struct policy_tenant *t, const char *what);

/* Whether a locked environment's retention has run out (28 days). */
int policy_env_expired(int64_t env_lock_time_us, int64_t now);

/* Policy time never goes backward (clock.h): a wall clock more than this
 * behind it counts as set back (NTP's small steps do not). */
#define POLICY_CLOCK_SLACK_US (2 * 1000000LL)

enum policy_clock {
	POLICY_CLOCK_OK, /* the wall clock runs on from the mark */
	POLICY_CLOCK_BACKWARD, /* the wall clock is behind policy time */
	POLICY_CLOCK_JUMP, /* it is further ahead of the mark than allowed */
};

/* How the wall clock `wall` stands against policy time `now` (never less
 * than wall) and the last durable mark `mark` (0: none kept yet, so no
 * jump can be judged): BACKWARD when wall is more than the slack behind
 * now; JUMP when wall is more than `limit_us` (clock_jump_limit_s) ahead
 * of the mark; else OK. */
enum policy_clock policy_clock_check(
    int64_t wall, int64_t now, int64_t mark, int64_t limit_us);

/* The sweeper's deletions (the 28-day rule): refused while a forward clock
 * jump from `jump_from` to `jump_to` (jump_from 0: none) waits for a
 * platform admin's confirmation (kbctl clock confirm). */
enum kb_err policy_may_sweep(int64_t jump_from, int64_t jump_to);

#endif /* KB_POLICY_H */
