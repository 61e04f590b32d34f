/* SPDX-License-Identifier: Apache-2.0 */
/* names.c: identifier and display-name rules. */
#include "names.h"

#include "kb_utf8.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define ID_RULE                                                                \
	"use 1 to 63 characters of a-z, 0-9 and '-', starting and "            \
	"ending with a letter or digit"

static int
id_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
}

static int
printable(const char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f)
			return 0;
	return 1;
}

enum kb_err
names_check_id(const char *what, const char *s)
{
	size_t n, i;

	if (s == NULL || s[0] == '\0')
		return kb_errf(
		    KB_ERR_INVALID_ARGUMENT, "%s is empty: " ID_RULE, what);
	n = strlen(s);
	if (n > NAMES_ID_MAX)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "%s is %zu characters "
		    "long: " ID_RULE,
		    what, n);
	for (i = 0; i < n; i++) {
		if (!id_char(s[i])) {
			unsigned char c = (unsigned char)s[i];
			/* Echo the name only when all of it is printable ASCII:
			 * a later ESC or newline would reach the log and the
			 * caller's terminal. */
			if (c >= 0x20 && c < 0x7f && printable(s))
				return kb_errf(KB_ERR_INVALID_ARGUMENT,
				    "%s \"%s\" "
				    "contains '%c' at position %zu: " ID_RULE,
				    what, s, c, i + 1);
			if (c >= 0x20 && c < 0x7f)
				return kb_errf(KB_ERR_INVALID_ARGUMENT,
				    "%s "
				    "contains '%c' at position %zu: " ID_RULE,
				    what, c, i + 1);
			return kb_errf(KB_ERR_INVALID_ARGUMENT,
			    "%s contains byte "
			    "0x%02x at position %zu: " ID_RULE,
			    what, c, i + 1);
		}
	}
	if (s[0] == '-' || s[n - 1] == '-')
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "%s \"%s\" starts or ends "
		    "with '-': " ID_RULE,
		    what, s);
	return KB_OK;
}

/* Length of the character at s, or 0 when it is not valid UTF-8 or is a
 * C1 control character (U+0080..U+009F, encoded C2 80..C2 9F). */
static size_t
display_char(const unsigned char *s, size_t left)
{
	size_t n = kb_utf8_seq(s, left);

	if (n == 2 && s[0] == 0xc2 && s[1] <= 0x9f)
		return 0;
	return n;
}

enum kb_err
names_check_display(const char *what, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t n, i, k;

	if (s == NULL)
		return KB_OK;
	n = strlen(s);
	if (n > NAMES_DISPLAY_MAX)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "%s is %zu bytes long; "
		    "the limit is %d",
		    what, n, NAMES_DISPLAY_MAX);
	for (i = 0; i < n; i += k) {
		if (p[i] < 0x20 || p[i] == 0x7f)
			return kb_errf(KB_ERR_INVALID_ARGUMENT,
			    "%s contains the "
			    "control character 0x%02x at byte %zu",
			    what, p[i], i + 1);
		if ((k = display_char(p + i, n - i)) == 0)
			return kb_errf(KB_ERR_INVALID_ARGUMENT,
			    "%s is not valid "
			    "UTF-8 (or has a control character) at byte %zu",
			    what, i + 1);
	}
	return KB_OK;
}

enum kb_err
names_check_object_id(const char *what, const char *s)
{
	size_t i, n = strlen(s);

	if (n == 0)
		return kb_errf(KB_ERR_INVALID_ARGUMENT, "%s is empty", what);
	if (n > 71)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "%s is %zu bytes long; "
		    "ids the broker makes are at most 71",
		    what, n);
	for (i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];

		if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z')
		    || (ch >= '0' && ch <= '9') || ch == '.' || ch == '_'
		    || ch == '-')
			continue;
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "%s has a character "
		    "outside [A-Za-z0-9._-] at position %zu: the ids the "
		    "broker "
		    "makes look like k-0123456789abcdef",
		    what, i + 1);
	}
	return KB_OK;
}
