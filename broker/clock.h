/* SPDX-License-Identifier: Apache-2.0 */
/* clock.h: the one clock every policy rule reads.
 *
 * Two implementations link against the same broker: clock.c (keybrokerd:
 * real time only) and clock_test.c (keybrokerd-testclock, built for tests:
 * real time plus an offset read from a file, so tests can move time across
 * the policy boundaries). A production broker cannot be made to move its
 * clock: its clock_init() refuses a test clock file. */
#ifndef KB_CLOCK_H
#define KB_CLOCK_H

#include <stdint.h>

#include "kb_err.h"

/* Set up the clock. `test_clock_file` is NULL in production; a non-NULL path
 * is accepted only by the test build (KB_ERR_CONFIG otherwise). */
enum kb_err clock_init(const char *test_clock_file);

/* Microseconds since the Unix epoch, UTC. */
int64_t clock_now_us(void);

/* Whether this build can move its clock (for start-up logging). */
int clock_is_test(void);

/* A named moment where the test build dies at once (SIGKILL to itself)
 * when the environment variable KB_TEST_CRASH_AT names it: a crash exactly
 * there, for tests of what the next start finds. A no-op in keybrokerd. */
void clock_crash_point(const char *name);

#endif /* KB_CLOCK_H */
