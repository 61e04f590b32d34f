/* SPDX-License-Identifier: Apache-2.0 */
/* test-policy.c: every rule of DESIGN.md's Policy table, just before and
 * just after its boundary (pure functions; the broker-level tests move the
 * real broker's clock). */
#include "harness.h"

#include "policy.h"

#define T0 1800000000000000LL /* an arbitrary moment, in microseconds */

static struct policy_tenant
base(void)
{
	struct policy_tenant t;

	memset(&t, 0, sizeof(t));
	t.id = "acme";
	t.has_active_key = 1;
	return t;
}

static void
test_activation_cooldown(void)
{
	struct policy_tenant t = base();

	KBT_ASSERT_OK(policy_may_activate(&t, T0)); /* never activated */
	t.last_activation_us = T0;
	KBT_ASSERT_ERR(
	    policy_may_activate(&t, T0 + POLICY_ACTIVATION_COOLDOWN_US - 1),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_FAILED_PRECONDITION),
	    "24-hour activation cooldown");
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_FAILED_PRECONDITION),
	    "allowed from 2027-01-16T08:00:00.000000Z");
	KBT_ASSERT_OK(
	    policy_may_activate(&t, T0 + POLICY_ACTIVATION_COOLDOWN_US));
	KBT_ASSERT_INT(
	    POLICY_ACTIVATION_COOLDOWN_US, ==, 24LL * 3600 * 1000000);
}

static void
test_lock_cooldown(void)
{
	struct policy_tenant t = base();

	t.last_key_change_us = T0;
	KBT_ASSERT_ERR(policy_may_lock(&t, T0 + POLICY_LOCK_COOLDOWN_US - 1),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_FAILED_PRECONDITION), "72-hour lock cooldown");
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_FAILED_PRECONDITION), "allowed from");
	KBT_ASSERT_OK(policy_may_lock(&t, T0 + POLICY_LOCK_COOLDOWN_US));
	KBT_ASSERT_INT(POLICY_LOCK_COOLDOWN_US, ==, 72LL * 3600 * 1000000);
	/* Other lock preconditions. */
	t.has_active_key = 0;
	KBT_ASSERT_ERR(policy_may_lock(&t, T0 + POLICY_LOCK_COOLDOWN_US),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_FAILED_PRECONDITION), "no active key");
	t = base();
	t.activation_running = 1;
	KBT_ASSERT_ERR(policy_may_lock(&t, T0), KB_ERR_FAILED_PRECONDITION);
	t = base();
	t.locked = 1;
	KBT_ASSERT_ERR(policy_may_lock(&t, T0), KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_FAILED_PRECONDITION), "already locked");
}

static void
test_unlock_cooldown(void)
{
	struct policy_tenant t = base();

	KBT_ASSERT_ERR(policy_may_unlock(&t, T0), KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_FAILED_PRECONDITION), "not locked");
	t.locked = 1;
	t.lock_time_us = T0;
	KBT_ASSERT_ERR(
	    policy_may_unlock(&t, T0 + POLICY_UNLOCK_COOLDOWN_US - 1),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_FAILED_PRECONDITION), "1-hour unlock cooldown");
	KBT_ASSERT_OK(policy_may_unlock(&t, T0 + POLICY_UNLOCK_COOLDOWN_US));
	KBT_ASSERT_INT(POLICY_UNLOCK_COOLDOWN_US, ==, 3600LL * 1000000);
}

static void
test_retention(void)
{
	KBT_ASSERT(!policy_env_expired(0, T0));
	KBT_ASSERT(
	    !policy_env_expired(T0, T0 + POLICY_LOCKED_RETENTION_US - 1));
	KBT_ASSERT(policy_env_expired(T0, T0 + POLICY_LOCKED_RETENTION_US));
	KBT_ASSERT_INT(POLICY_LOCKED_RETENTION_US, ==, 28LL * 86400 * 1000000);
}

static void
test_locked_environments(void)
{
	struct policy_tenant t = base();

	KBT_ASSERT_OK(policy_may_add_key(&t, T0));
	t.locked_envs = 2;
	KBT_ASSERT_ERR(policy_may_add_key(&t, T0), KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_FAILED_PRECONDITION), "2 locked environment(s)");
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_FAILED_PRECONDITION), "locked-environments rule");
	KBT_ASSERT_ERR(policy_may_activate(&t, T0), KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_FAILED_PRECONDITION), "locked-environments rule");
	t.last_env_lock_us = T0;
	KBT_ASSERT_ERR(policy_may_add_key(&t, T0), KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_FAILED_PRECONDITION),
	    "from 2027-02-12T08:00:00.000000Z");
	t.locked_envs = 0;
	t.locked = 1;
	t.lock_time_us = T0;
	KBT_ASSERT_ERR(policy_may_add_key(&t, T0), KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_FAILED_PRECONDITION), "tenant-locked rule");
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_FAILED_PRECONDITION),
	    "allowed from 2027-01-15T09:00:00.000000Z");
	KBT_ASSERT_ERR(policy_may_activate(&t, T0), KB_ERR_FAILED_PRECONDITION);
}

static void
test_env_changes(void)
{
	struct policy_tenant t = base();

	KBT_ASSERT_OK(policy_may_change_env(&t, "restore"));
	t.activation_running = 1;
	KBT_ASSERT_ERR(
	    policy_may_change_env(&t, "restore"), KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_FAILED_PRECONDITION), "activating");
	KBT_ASSERT_ERR(policy_may_activate(&t, T0), KB_ERR_FAILED_PRECONDITION);
	t = base();
	t.locked = 1;
	KBT_ASSERT_ERR(
	    policy_may_change_env(&t, "copy"), KB_ERR_FAILED_PRECONDITION);
}

/* Policy time against the wall clock and the durable mark (timemark.c). */
static void
test_clock_check(void)
{
	int64_t hour = POLICY_HOUR_US;

	/* Running on from the mark, within the limit. */
	KBT_ASSERT_INT(policy_clock_check(T0 + 10, T0 + 10, T0, hour), ==,
	    POLICY_CLOCK_OK);
	KBT_ASSERT_INT(policy_clock_check(T0 + hour, T0 + hour, T0, hour), ==,
	    POLICY_CLOCK_OK);
	/* Beyond the limit: a jump; with no mark kept yet, none can be said. */
	KBT_ASSERT_INT(
	    policy_clock_check(T0 + hour + 1, T0 + hour + 1, T0, hour), ==,
	    POLICY_CLOCK_JUMP);
	KBT_ASSERT_INT(policy_clock_check(
	                   T0 + 30 * 24 * hour, T0 + 30 * 24 * hour, 0, hour),
	    ==, POLICY_CLOCK_OK);
	/* Set back: policy time stays ahead; a step within the slack (NTP)
	 * is not one. */
	KBT_ASSERT_INT(
	    policy_clock_check(T0 - POLICY_CLOCK_SLACK_US, T0, T0, hour), ==,
	    POLICY_CLOCK_OK);
	KBT_ASSERT_INT(
	    policy_clock_check(T0 - POLICY_CLOCK_SLACK_US - 1, T0, T0, hour),
	    ==, POLICY_CLOCK_BACKWARD);
	KBT_ASSERT_INT(policy_clock_check(T0 - 3 * 24 * hour, T0, T0, hour), ==,
	    POLICY_CLOCK_BACKWARD);
}

static void
test_sweep_pause(void)
{
	KBT_ASSERT_OK(policy_may_sweep(0, 0));
	KBT_ASSERT_ERR(policy_may_sweep(T0, T0 + 29 * 24 * POLICY_HOUR_US),
	    KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_FAILED_PRECONDITION),
	    "refused by the clock-jump rule: the clock jumped forward 2505600 "
	    "s, "
	    "from 2027-01-15T08:00:00.000000Z to 2027-02-13T08:00:00.000000Z");
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_FAILED_PRECONDITION), "kbctl clock confirm");
}

static const struct kbt_case cases[] = {
    {"/policy/activation-cooldown-24h", test_activation_cooldown},
    {"/policy/lock-cooldown-72h", test_lock_cooldown},
    {"/policy/unlock-cooldown-1h", test_unlock_cooldown},
    {"/policy/retention-28d", test_retention},
    {"/policy/locked-environments", test_locked_environments},
    {"/policy/env-changes", test_env_changes},
    {"/policy/clock-check", test_clock_check},
    {"/policy/sweep-pause", test_sweep_pause}, {NULL, NULL}};

int
main(int argc, char **argv)
{
	return kbt_run(cases, argc, argv);
}
