/* SPDX-License-Identifier: Apache-2.0 */
/* policy.c: cooldowns and state rules for tenant keys, lock and unlock. */
#include "policy.h"

#include "kb_time.h"

/* Refuse until `from_us`, naming the rule, what started it and when. */
static enum kb_err
refuse_until(const char *op, const char *rule, const char *since_what,
    int64_t since_us, int64_t from_us)
{
	char since[40], from[40];

	return kb_errf(KB_ERR_FAILED_PRECONDITION,
	    "%s refused by the %s rule: "
	    "%s at %s; allowed from %s",
	    op, rule, since_what,
	    kb_time_format(since_us, since, sizeof(since)),
	    kb_time_format(from_us, from, sizeof(from)));
}

/* The tenant is locked: nothing changes until it is unlocked, which the
 * unlock cooldown allows from lock + 1 hour. */
static enum kb_err
refuse_locked(const struct policy_tenant *t, const char *op)
{
	char from[40];

	return kb_errf(KB_ERR_FAILED_PRECONDITION,
	    "%s refused by the "
	    "tenant-locked rule: tenant \"%s\" is locked; unlock it with the "
	    "key "
	    "that locked it (kbctl tenants unlock), allowed from %s",
	    op, t->id,
	    kb_time_format(t->lock_time_us + POLICY_UNLOCK_COOLDOWN_US, from,
	        sizeof(from)));
}

/* Locked environments block key changes until each is unlocked, or deleted
 * by the sweeper 28 days after its lock at the latest. */
static enum kb_err
refuse_locked_envs(const struct policy_tenant *t, const char *op)
{
	char from[40];

	return kb_errf(KB_ERR_FAILED_PRECONDITION,
	    "%s refused by the "
	    "locked-environments rule: tenant \"%s\" has %u locked "
	    "environment(s); allowed once each is unlocked (kbctl envs "
	    "unlock), "
	    "or from %s when the last is deleted",
	    op, t->id, t->locked_envs,
	    kb_time_format(t->last_env_lock_us + POLICY_LOCKED_RETENTION_US,
	        from, sizeof(from)));
}

enum kb_err
policy_may_add_key(const struct policy_tenant *t, int64_t now)
{
	(void)now;
	if (t->locked)
		return refuse_locked(t, "adding a key");
	if (t->locked_envs > 0)
		return refuse_locked_envs(t, "adding a key");
	return KB_OK;
}

enum kb_err
policy_may_activate(const struct policy_tenant *t, int64_t now)
{
	if (t->locked)
		return refuse_locked(t, "activation");
	if (t->locked_envs > 0)
		return refuse_locked_envs(t, "activation");
	if (t->activation_running)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "tenant \"%s\" is "
		    "already activating (or retiring) a key: wait for its job "
		    "to finish",
		    t->id);
	if (t->last_activation_us != 0
	    && now < t->last_activation_us + POLICY_ACTIVATION_COOLDOWN_US)
		return refuse_until("activation", "24-hour activation cooldown",
		    "the previous activation was", t->last_activation_us,
		    t->last_activation_us + POLICY_ACTIVATION_COOLDOWN_US);
	return KB_OK;
}

enum kb_err
policy_may_lock(const struct policy_tenant *t, int64_t now)
{
	if (t->locked)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "tenant \"%s\" is "
		    "already locked",
		    t->id);
	if (t->activation_running)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "tenant \"%s\" is "
		    "activating (or retiring) a key: a tenant cannot be locked "
		    "while that job runs",
		    t->id);
	if (!t->has_active_key)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "tenant \"%s\" has no "
		    "active key: only a tenant with an active key can be "
		    "locked",
		    t->id);
	if (t->last_key_change_us != 0
	    && now < t->last_key_change_us + POLICY_LOCK_COOLDOWN_US)
		return refuse_until("lock", "72-hour lock cooldown",
		    "the last key change or activation was",
		    t->last_key_change_us,
		    t->last_key_change_us + POLICY_LOCK_COOLDOWN_US);
	return KB_OK;
}

enum kb_err
policy_may_unlock(const struct policy_tenant *t, int64_t now)
{
	if (!t->locked)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "tenant \"%s\" is not "
		    "locked",
		    t->id);
	if (now < t->lock_time_us + POLICY_UNLOCK_COOLDOWN_US)
		return refuse_until("unlock", "1-hour unlock cooldown",
		    "the tenant was locked", t->lock_time_us,
		    t->lock_time_us + POLICY_UNLOCK_COOLDOWN_US);
	return KB_OK;
}

enum kb_err
policy_may_change_env(const struct policy_tenant *t, const char *what)
{
	if (t->locked)
		return refuse_locked(t, what);
	if (t->activation_running)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "%s refused: tenant "
		    "\"%s\" is activating (or retiring) a key; retry when the "
		    "job is done",
		    what, t->id);
	return KB_OK;
}

int
policy_env_expired(int64_t env_lock_time_us, int64_t now)
{
	return env_lock_time_us != 0
	    && now >= env_lock_time_us + POLICY_LOCKED_RETENTION_US;
}

enum policy_clock
policy_clock_check(int64_t wall, int64_t now, int64_t mark, int64_t limit_us)
{
	if (now - wall > POLICY_CLOCK_SLACK_US)
		return POLICY_CLOCK_BACKWARD;
	if (mark != 0 && wall - mark > limit_us)
		return POLICY_CLOCK_JUMP;
	return POLICY_CLOCK_OK;
}

enum kb_err
policy_may_sweep(int64_t jump_from, int64_t jump_to)
{
	char from[40], to[40];

	if (jump_from == 0)
		return KB_OK;
	return kb_errf(KB_ERR_FAILED_PRECONDITION,
	    "deleting locked "
	    "environments refused by the clock-jump rule: the clock jumped "
	    "forward %lld s, from %s to %s, more than clock_jump_limit_s "
	    "allows; a platform-wide admin who has checked the clock confirms "
	    "it with kbctl clock confirm",
	    (long long)((jump_to - jump_from) / 1000000),
	    kb_time_format(jump_from, from, sizeof(from)),
	    kb_time_format(jump_to, to, sizeof(to)));
}
