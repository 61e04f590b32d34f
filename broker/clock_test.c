/* SPDX-License-Identifier: Apache-2.0 */
/* clock_test.c: the test build's wall clock: real time plus an offset in
 * seconds (negative moves it back) read from a file at every call (absent
 * or empty file: no offset). Linked only into keybrokerd-testclock and test
 * binaries. */
#include "clock.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kb_time.h"

static char *offset_file;

enum kb_err
clock_init(const char *test_clock_file)
{
	free(offset_file);
	offset_file = NULL;
	if (test_clock_file != NULL
	    && (offset_file = strdup(test_clock_file)) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	return KB_OK;
}

static int64_t
offset_us(void)
{
	char buf[64];
	ssize_t n;
	int fd;

	if (offset_file == NULL || (fd = open(offset_file, O_RDONLY)) < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = '\0';
	return strtoll(buf, NULL, 10) * 1000000;
}

int64_t
clock_wall_us(void)
{
	return kb_time_now_us() + offset_us();
}

int
clock_is_test(void)
{
	return 1;
}

void
clock_crash_point(const char *name)
{
	const char *at = getenv("KB_TEST_CRASH_AT");

	if (at != NULL && strcmp(at, name) == 0)
		(void)kill(getpid(), SIGKILL);
}
