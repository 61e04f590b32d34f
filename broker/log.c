/* SPDX-License-Identifier: Apache-2.0 */
/* log.c: one event per line on stderr (logfmt or JSON), one write per
 * line. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kb_time.h"
#include "kb_utf8.h"

#define LINE_MAX_BYTES 4096
#define MSG_MAX_BYTES 2048
/* Kept free while a line is built: the closing quote and brace and the
 * newline always fit, so a cut line is still one valid record. */
#define RESERVE 4

static enum log_level level = LOG_INFO;
static enum log_format format = LOG_FORMAT_TEXT;

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
log_set_format(enum log_format f)
{
	format = f;
}

int
log_format_parse(const char *s)
{
	if (strcmp(s, "text") == 0)
		return LOG_FORMAT_TEXT;
	if (strcmp(s, "json") == 0)
		return LOG_FORMAT_JSON;
	return -1;
}

struct line {
	char buf[LINE_MAX_BYTES];
	size_t n;
};

/* Append `len` bytes if they fit before the reserve; all or nothing. */
static int
put(struct line *l, const char *s, size_t len)
{
	if (l->n + len + RESERVE > sizeof(l->buf))
		return 0;
	memcpy(l->buf + l->n, s, len);
	l->n += len;
	return 1;
}

static void
puts_raw(struct line *l, const char *s)
{
	(void)put(l, s, strlen(s));
}

/* A logfmt value needs quotes unless it is a plain word. */
static int
plain(const char *s)
{
	if (*s == '\0')
		return 0;
	for (; *s != '\0'; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z')
		        || (*s >= '0' && *s <= '9')
		        || strchr("-_.:/@+,%[]", *s) != NULL))
			return 0;
	return 1;
}

/* Append `s` escaped for the format, inside quotes (JSON always; logfmt
 * when not plain). Invalid UTF-8 becomes '?'. */
static void
put_value(struct line *l, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	int quote = format == LOG_FORMAT_JSON || !plain(s);
	char esc[8];
	size_t k, left = strlen(s);

	if (quote && !put(l, "\"", 1))
		return;
	while (left > 0) {
		if (*p == '"' || *p == '\\') {
			esc[0] = '\\';
			esc[1] = (char)*p;
			k = 1;
			if (!put(l, esc, 2))
				break;
		} else if (*p < 0x20 || *p == 0x7f) {
			if (*p == '\n')
				snprintf(esc, sizeof(esc), "\\n");
			else if (*p == '\t')
				snprintf(esc, sizeof(esc), "\\t");
			else if (format == LOG_FORMAT_JSON)
				snprintf(esc, sizeof(esc), "\\u%04x", *p);
			else
				snprintf(esc, sizeof(esc), "\\x%02x", *p);
			k = 1;
			if (!put(l, esc, strlen(esc)))
				break;
		} else if (*p < 0x80) {
			k = 1;
			if (!put(l, (const char *)p, 1))
				break;
		} else if ((k = kb_utf8_seq(p, left)) != 0) {
			if (!put(l, (const char *)p, k))
				break;
		} else {
			k = 1;
			if (!put(l, "?", 1))
				break;
		}
		p += k;
		left -= k;
	}
	/* The reserve holds the closing quote. */
	if (quote)
		l->buf[l->n++] = '"';
}

static void
put_field(struct line *l, const char *key, const char *value, int first)
{
	/* The key, its separators and the value's quotes, or nothing. */
	if (l->n + strlen(key) + 6 + RESERVE > sizeof(l->buf))
		return;
	if (format == LOG_FORMAT_JSON) {
		if (!put(l, first ? "\"" : ",\"", first ? 1 : 2))
			return;
		puts_raw(l, key);
		if (!put(l, "\":", 2))
			return;
	} else {
		if (!first && !put(l, " ", 1))
			return;
		puts_raw(l, key);
		if (!put(l, "=", 1))
			return;
	}
	put_value(l, value);
}

static void
emit(enum log_level lv, const char *event, const char *const *kv,
    const char *msg)
{
	struct line l;
	char ts[40];

	l.n = 0;
	kb_time_format(kb_time_now_us(), ts, sizeof(ts));
	if (format == LOG_FORMAT_JSON)
		puts_raw(&l, "{");
	put_field(&l, "ts", ts, 1);
	put_field(&l, "level", names[lv], 0);
	put_field(&l, "event", event, 0);
	put_field(&l, "msg", msg, 0);
	for (; kv != NULL && kv[0] != NULL; kv += 2)
		if (kv[1] != NULL)
			put_field(&l, kv[0], kv[1], 0);
	if (format == LOG_FORMAT_JSON)
		l.buf[l.n++] = '}';
	l.buf[l.n++] = '\n';
	(void)!write(STDERR_FILENO, l.buf, l.n);
}

void
log_event(enum log_level l, const char *event, const char *const *kv,
    const char *fmt, ...)
{
	char msg[MSG_MAX_BYTES];
	va_list ap;

	if (l > level)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	emit(l, event, kv, msg);
}

void
log_at(
    enum log_level l, const char *file, const char *func, const char *fmt, ...)
{
	char msg[MSG_MAX_BYTES], event[96];
	const char *base = strrchr(file, '/');
	size_t n;
	va_list ap;

	if (l > level)
		return;
	base = base != NULL ? base + 1 : file;
	n = strcspn(base, ".");
	snprintf(event, sizeof(event), "%.*s.%s", (int)n, base, func);
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	emit(l, event, NULL, msg);
}
