/* SPDX-License-Identifier: Apache-2.0 */
/* log.c: timestamped log lines on stderr, one write per line. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kb_time.h"

static enum log_level level = LOG_INFO;

static const char *const names[] = {"error", "warn", "info", "debug"};

void
log_set_level(enum log_level l)
{
	level = l;
}

int
log_level_parse(const char *s)
{
	int i;

	for (i = 0; i < 4; i++)
		if (strcmp(s, names[i]) == 0)
			return i;
	return -1;
}

void
log_msg(enum log_level l, const char *fmt, ...)
{
	char line[2048], ts[40];
	va_list ap;
	int n;

	if (l > level)
		return;
	kb_time_format(kb_time_now_us(), ts, sizeof(ts));
	n = snprintf(line, sizeof(line), "%s %s ", ts, names[l]);
	va_start(ap, fmt);
	if (n > 0 && (size_t)n < sizeof(line))
		n += vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(line) - 1)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	(void)!write(STDERR_FILENO, line, (size_t)n);
}
