/* SPDX-License-Identifier: Apache-2.0 */
/* timemark.h: policy time's durable high-water mark and the clock-jump
 * rule. The mark is stored in the database at start-up, every
 * TIMEMARK_INTERVAL_S seconds and before every decision that destroys or
 * unlocks something, so that policy time (clock.h) never goes backward,
 * across restarts included. A wall clock set back is logged loudly (once)
 * and audited; one that jumped forward more than clock_jump_limit_s from
 * the mark is audited and pauses the sweeper's deletions until a
 * platform-wide admin confirms it. */
#ifndef KB_TIMEMARK_H
#define KB_TIMEMARK_H

#include <stdint.h>

#include "kb_err.h"
#include "store.h"

#define TIMEMARK_INTERVAL_S 10

struct timemark;

/* What GetClockState shows. */
struct timemark_state {
	int64_t now_us; /* policy time */
	int64_t wall_us; /* the wall clock */
	int64_t mark_us; /* the durable mark */
	unsigned limit_s; /* clock_jump_limit_s */
	int64_t jump_from_us; /* a jump waiting for confirmation (0: none) */
	int64_t jump_to_us;
	int64_t confirm_time_us; /* the last confirmation (0: never) */
	char confirm_by[128];
};

/* Records what the clock did (an audit event of role "system"): `what`
 * ("clock.jump"), `result` ("ok", "error") and why. */
typedef void (*timemark_record_fn)(
    void *arg, const char *what, const char *result, const char *why);

/* Read the stored mark from `store` and raise policy time to it, before
 * anything reads the clock for a record. `record` is called for each
 * backward step, jump and confirmation. Free with timemark_close(). */
enum kb_err timemark_open(struct store *store, unsigned jump_limit_s,
    timemark_record_fn record, void *arg, struct timemark **out);

/* Once the audit log is open: check the clock against the mark (recording
 * what is found), store the mark (a database that cannot be written now is
 * logged, not fatal: policy time already starts from the stored mark), and
 * keep storing it on a thread of its own. */
enum kb_err timemark_start(struct timemark *tm);

/* Check the clock against the mark and store the mark now: call before a
 * decision that destroys or unlocks something, and refuse the decision on
 * failure (the error of the database). *now (may be NULL) gets the policy
 * time made durable. */
enum kb_err timemark_advance(struct timemark *tm, int64_t *now);

/* KB_OK when the sweeper may delete; else KB_ERR_FAILED_PRECONDITION
 * naming the clock-jump rule (logged once per jump). Checks first, as
 * timemark_advance does; *now (may be NULL) as there. */
enum kb_err timemark_may_sweep(struct timemark *tm, int64_t *now);

/* Check (unless a check ran in the last second: a read stores the mark at
 * most once a second), then fill *out. */
enum kb_err timemark_state(struct timemark *tm, struct timemark_state *out);

/* Check, then confirm the jump waiting (as `who`, a certificate CN): the
 * sweeper deletes again, by the clock as it is now. An audit event records
 * it. KB_ERR_FAILED_PRECONDITION if no jump is waiting. Fills *out. */
enum kb_err timemark_confirm(
    struct timemark *tm, const char *who, struct timemark_state *out);

/* Stop the thread and store a last mark. Accepts NULL. */
void timemark_close(struct timemark *tm);

#endif /* KB_TIMEMARK_H */
