/* SPDX-License-Identifier: Apache-2.0 */
/* test-log.c: log lines, logfmt and JSON: one valid record per line
 * whatever the message holds (quotes, newlines, control characters,
 * invalid UTF-8, more than a line's room). */
#include "harness.h"

#include <jansson.h>
#include <stdlib.h>
#include <unistd.h>

#include "log.h"

/* Run fn() with stderr going to a pipe; the bytes written, NUL-ended. */
static char *
capture(void (*fn)(void))
{
	static char buf[65536];
	int p[2], saved;
	ssize_t n;
	size_t len = 0;

	if (pipe(p) != 0)
		return NULL;
	saved = dup(STDERR_FILENO);
	dup2(p[1], STDERR_FILENO);
	close(p[1]);
	fn();
	dup2(saved, STDERR_FILENO);
	close(saved);
	while ((n = read(p[0], buf + len, sizeof(buf) - 1 - len)) > 0)
		len += (size_t)n;
	close(p[0]);
	buf[len] = '\0';
	return buf;
}

static void
emit_nasty(void)
{
	log_event(LOG_WARN, "test.nasty",
	    LOG_KV("quote", "say \"hi\"\\", "skipped", NULL, "ctl", "a\tb\x01",
	        "utf8", "caf\xc3\xa9 \xff\xfe"),
	    "line one\nline \"two\" \x7f end");
}

static void
emit_long(void)
{
	static char big[6000];

	memset(big, '"', sizeof(big) - 1);
	log_event(LOG_INFO, "test.long", LOG_KV("k", big), "%s", big);
}

static void
emit_site(void)
{
	log_info("from %s", "here");
	log_debug("not shown at info");
}

static void
test_json(void)
{
	json_t *o;
	json_error_t je;
	char *out;

	log_set_level(LOG_INFO);
	log_set_format(LOG_FORMAT_JSON);
	out = capture(emit_nasty);
	KBT_ASSERT(out != NULL);
	KBT_ASSERT_INT(strchr(out, '\n') - out, ==, (long)strlen(out) - 1);
	o = json_loads(out, 0, &je);
	KBT_ASSERT(o != NULL);
	KBT_ASSERT_STR(json_string_value(json_object_get(o, "level")), "warn");
	KBT_ASSERT_STR(
	    json_string_value(json_object_get(o, "event")), "test.nasty");
	KBT_ASSERT_STR(json_string_value(json_object_get(o, "msg")),
	    "line one\nline \"two\" \x7f end");
	KBT_ASSERT_STR(
	    json_string_value(json_object_get(o, "quote")), "say \"hi\"\\");
	KBT_ASSERT_STR(
	    json_string_value(json_object_get(o, "ctl")), "a\tb\x01");
	KBT_ASSERT_STR(
	    json_string_value(json_object_get(o, "utf8")), "caf\xc3\xa9 ??");
	KBT_ASSERT(json_object_get(o, "skipped") == NULL);
	KBT_ASSERT(json_object_get(o, "ts") != NULL);
	json_decref(o);
	log_set_format(LOG_FORMAT_TEXT);
}

static void
test_json_long(void)
{
	json_t *o;
	json_error_t je;
	char *out;

	log_set_format(LOG_FORMAT_JSON);
	out = capture(emit_long);
	log_set_format(LOG_FORMAT_TEXT);
	KBT_ASSERT_INT(strlen(out), <=, 4096);
	KBT_ASSERT_INT(strchr(out, '\n') - out, ==, (long)strlen(out) - 1);
	o = json_loads(out, 0, &je);
	KBT_ASSERT(o != NULL);
	KBT_ASSERT_STR(
	    json_string_value(json_object_get(o, "event")), "test.long");
	json_decref(o);
}

static void
test_logfmt(void)
{
	char *out;

	log_set_format(LOG_FORMAT_TEXT);
	out = capture(emit_nasty);
	KBT_ASSERT(strncmp(out, "ts=", 3) == 0);
	KBT_ASSERT_CONTAINS(out,
	    " level=warn event=test.nasty msg=\"line "
	    "one\\nline \\\"two\\\" \\x7f end\" quote=");
	KBT_ASSERT_CONTAINS(out, " quote=\"say \\\"hi\\\"\\\\\"");
	KBT_ASSERT_CONTAINS(out, " ctl=\"a\\tb\\x01\"");
	KBT_ASSERT(strstr(out, "skipped") == NULL);
	KBT_ASSERT_INT(strchr(out, '\n') - out, ==, (long)strlen(out) - 1);
	out = capture(emit_site);
	/* The event of a line without a name: the file and the function. */
	KBT_ASSERT_CONTAINS(
	    out, " level=info event=test-log.emit_site msg=\"from here\"\n");
	KBT_ASSERT(strstr(out, "not shown") == NULL);
}

static void
test_parse(void)
{
	KBT_ASSERT_INT(log_format_parse("json"), ==, LOG_FORMAT_JSON);
	KBT_ASSERT_INT(log_format_parse("text"), ==, LOG_FORMAT_TEXT);
	KBT_ASSERT_INT(log_format_parse("JSON"), ==, -1);
	KBT_ASSERT_INT(log_level_parse("debug"), ==, LOG_DEBUG);
}

static const struct kbt_case cases[] = {{"/log/json", test_json},
    {"/log/json-long", test_json_long}, {"/log/logfmt", test_logfmt},
    {"/log/parse", test_parse}, {NULL, NULL}};

int
main(int argc, char **argv)
{
	return kbt_run(cases, argc, argv);
}
