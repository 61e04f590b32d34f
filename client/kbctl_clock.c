/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl_clock.c: the broker's policy time (clock show) and the
 * confirmation of a forward clock jump (clock confirm). */
#include <stdio.h>
#include <string.h>

#include "kbctl.h"
#include "kbctl_out.h"
#include "kbctl_secret.h"
#include "keybroker.pb-c.h"

static json_t *
clock_json(const Keybroker__V1__ClockState *x)
{
	json_t *o = json_object();

	kbctl_jset_time(o, "policy_time", x->policy_time_us);
	kbctl_jset_time(o, "wall_time", x->wall_time_us);
	kbctl_jset_time(o, "mark_time", x->mark_time_us);
	kbctl_jset(o, "jump_limit_s", json_integer(x->jump_limit_s));
	kbctl_jset(o, "sweeper_paused", json_boolean(x->sweeper_paused));
	kbctl_jset_time(o, "jump_from_time", x->jump_from_time_us);
	kbctl_jset_time(o, "jump_to_time", x->jump_to_time_us);
	kbctl_jset_time(o, "confirm_time", x->confirm_time_us);
	kbctl_jset(o, "confirmed_by", kbctl_jstr(x->confirmed_by));
	return o;
}

/* "4 d 2 h", "3 h 5 min", "42 s". */
static const char *
span(int64_t us, char *buf, size_t len)
{
	long long s = (long long)(us / 1000000);

	if (s >= 86400)
		snprintf(
		    buf, len, "%lld d %lld h", s / 86400, s % 86400 / 3600);
	else if (s >= 3600)
		snprintf(buf, len, "%lld h %lld min", s / 3600, s % 3600 / 60);
	else
		snprintf(buf, len, "%lld s", s);
	return buf;
}

static void
clock_show(const Keybroker__V1__ClockState *x)
{
	char t[40], f[40], d[48], line[200], who[130];
	int64_t behind = x->policy_time_us - x->wall_time_us;

	kbctl_kv(
	    "policy_time", kbctl_time_sec(x->policy_time_us, t, sizeof(t)));
	if (behind > 2000000) {
		snprintf(line, sizeof(line),
		    "%s (%s behind policy time: set back; "
		    "time rules wait for it)",
		    kbctl_time_sec(x->wall_time_us, t, sizeof(t)),
		    span(behind, d, sizeof(d)));
		kbctl_kv("wall_time", line);
	} else {
		kbctl_kv(
		    "wall_time", kbctl_time_sec(x->wall_time_us, t, sizeof(t)));
	}
	kbctl_kv("mark_time", kbctl_time_sec(x->mark_time_us, t, sizeof(t)));
	kbctl_kv_u("jump_limit_s", x->jump_limit_s);
	if (x->sweeper_paused) {
		snprintf(line, sizeof(line),
		    "PAUSED: the clock jumped %s forward "
		    "(%s to %s); confirm with 'kbctl clock confirm'",
		    span(x->jump_to_time_us - x->jump_from_time_us, d,
		        sizeof(d)),
		    kbctl_time_sec(x->jump_from_time_us, f, sizeof(f)),
		    kbctl_time_sec(x->jump_to_time_us, t, sizeof(t)));
		kbctl_kv("sweeper", line);
	} else {
		kbctl_kv("sweeper", "deleting (no clock jump waits)");
	}
	if (x->confirm_time_us != 0) {
		kbctl_sanitize(x->confirmed_by, who, sizeof(who));
		snprintf(line, sizeof(line), "%s by %s",
		    kbctl_time_sec(x->confirm_time_us, t, sizeof(t)), who);
		kbctl_kv("last_confirmed", line);
	} else {
		kbctl_kv("last_confirmed", "-");
	}
}

static int
print_clock(const struct kbctl *k, const ProtobufCMessage *m)
{
	const Keybroker__V1__ClockState *x =
	    (const Keybroker__V1__ClockState *)m;

	if (k->json)
		return kbctl_json_print(clock_json(x));
	clock_show(x);
	return KBCTL_EXIT_OK;
}

int
kbctl_cmd_clock_show(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__GetClockStateRequest req =
	    KEYBROKER__V1__GET_CLOCK_STATE_REQUEST__INIT;

	(void)a;
	return kbctl_call_print(k, KB_METHOD_GET_CLOCK_STATE, &req.base,
	    &keybroker__v1__clock_state__descriptor, print_clock);
}

int
kbctl_cmd_clock_confirm(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__GetClockStateRequest sreq =
	    KEYBROKER__V1__GET_CLOCK_STATE_REQUEST__INIT;
	Keybroker__V1__ConfirmClockJumpRequest req =
	    KEYBROKER__V1__CONFIRM_CLOCK_JUMP_REQUEST__INIT;
	const Keybroker__V1__ClockState *x;
	ProtobufCMessage *m = NULL;
	char explain[900], f[40], t[40], n[40], d[48];
	int rc;

	/* Without a terminal and --yes, stop before calling anything. */
	if (kbctl_flag(a, "--yes") == NULL && !kbctl_stdin_is_tty())
		return kbctl_confirm_or_yes(a, "", "", "");
	if (kbctl_flag(a, "--yes") == NULL) {
		if ((rc = kbctl_call(k, KB_METHOD_GET_CLOCK_STATE, &sreq.base,
		         &keybroker__v1__clock_state__descriptor, &m))
		    != KBCTL_EXIT_OK)
			return rc;
		x = (const Keybroker__V1__ClockState *)m;
		if (!x->sweeper_paused) {
			kb_wire_free(m);
			fprintf(stderr,
			    "kbctl: no forward clock jump waits for "
			    "confirmation: the sweeper is not paused\n");
			return KBCTL_EXIT_FAIL;
		}
		snprintf(explain, sizeof(explain),
		    "The broker's clock jumped %s forward, from %s to %s, and\n"
		    "its policy time is now %s. Confirming says this clock is "
		    "right:\nthe sweeper then deletes, for good, every locked "
		    "environment\nlocked 28 days before it.\n",
		    span(x->jump_to_time_us - x->jump_from_time_us, d,
		        sizeof(d)),
		    kbctl_time_sec(x->jump_from_time_us, f, sizeof(f)),
		    kbctl_time_sec(x->jump_to_time_us, t, sizeof(t)),
		    kbctl_time_sec(x->policy_time_us, n, sizeof(n)));
		kb_wire_free(m);
		m = NULL;
		if ((rc = kbctl_confirm_or_yes(
		         a, explain, "the word", "confirm"))
		    >= 0)
			return rc;
	}
	return kbctl_call_print(k, KB_METHOD_CONFIRM_CLOCK_JUMP, &req.base,
	    &keybroker__v1__clock_state__descriptor, print_clock);
}
