/* SPDX-License-Identifier: Apache-2.0 */
/* clock.c: the production wall clock: real time, nothing else. */
#include "clock.h"

#include "kb_time.h"

enum kb_err
clock_init(const char *test_clock_file)
{
	if (test_clock_file != NULL)
		return kb_errf(KB_ERR_CONFIG,
		    "test_clock_file is set, but this "
		    "keybrokerd is a production build whose clock cannot be "
		    "moved; remove the setting (only keybrokerd-testclock, "
		    "built "
		    "for tests, accepts it)");
	return KB_OK;
}

int64_t
clock_wall_us(void)
{
	return kb_time_now_us();
}

int
clock_is_test(void)
{
	return 0;
}

void
clock_crash_point(const char *name)
{
	(void)name;
}
