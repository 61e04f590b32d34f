/* SPDX-License-Identifier: Apache-2.0 */
/* clock.h: the one clock every policy rule reads.
 *
 * Policy time (clock_now_us) is the wall clock that never goes backward:
 * it is never less than a time it handed out before, nor than the floor
 * restored from the database's durable high-water mark at start-up
 * (timemark.c), so a wall clock set back cannot reopen a rule that had
 * already let something happen. clock_floor.c keeps that floor.
 *
 * The wall clock has two implementations linked against the same broker:
 * clock.c (keybrokerd: real time only) and clock_test.c
 * (keybrokerd-testclock, built for tests: real time plus an offset read
 * from a file, so tests can move time across the policy boundaries, both
 * ways). A production broker cannot be made to move its clock: its
 * clock_init() refuses a test clock file. */
#ifndef KB_CLOCK_H
#define KB_CLOCK_H

#include <stdint.h>

#include "kb_err.h"

/* Set up the clock. `test_clock_file` is NULL in production; a non-NULL path
 * is accepted only by the test build (KB_ERR_CONFIG otherwise). */
enum kb_err clock_init(const char *test_clock_file);

/* Policy time: microseconds since the Unix epoch, UTC; the wall clock, or
 * the highest value this process has returned or been given by
 * clock_floor_raise(), whichever is later. Thread-safe, lock-free. */
int64_t clock_now_us(void);

/* The wall clock as it is, backward steps included (for detecting them;
 * no rule reads it). */
int64_t clock_wall_us(void);

/* Policy time will never again be less than `us` (the durable mark read
 * at start-up). A lower value changes nothing. */
void clock_floor_raise(int64_t us);

/* Whether this build can move its clock (for start-up logging). */
int clock_is_test(void);

/* A named moment where the test build dies at once (SIGKILL to itself)
 * when the environment variable KB_TEST_CRASH_AT names it: a crash exactly
 * there, for tests of what the next start finds. A no-op in keybrokerd. */
void clock_crash_point(const char *name);

#endif /* KB_CLOCK_H */
