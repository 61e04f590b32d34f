/* SPDX-License-Identifier: Apache-2.0 */
/* names.c: identifier and display-name rules. */
#include "names.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define ID_RULE "use 1 to 63 characters of a-z, 0-9 and '-', starting and " \
	"ending with a letter or digit"

static int
id_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
}

enum kb_err
names_check_id(const char *what, const char *s)
{
	size_t n, i;

	if (s == NULL || s[0] == '\0')
		return kb_errf(KB_ERR_INVALID_ARGUMENT, "%s is empty: " ID_RULE,
		    what);
	n = strlen(s);
	if (n > NAMES_ID_MAX)
		return kb_errf(KB_ERR_INVALID_ARGUMENT, "%s is %zu characters "
		    "long: " ID_RULE, what, n);
	for (i = 0; i < n; i++) {
		if (!id_char(s[i])) {
			unsigned char c = (unsigned char)s[i];
			if (c >= 0x20 && c < 0x7f)
				return kb_errf(KB_ERR_INVALID_ARGUMENT, "%s \"%s\" "
				    "contains '%c' at position %zu: " ID_RULE,
				    what, s, c, i + 1);
			return kb_errf(KB_ERR_INVALID_ARGUMENT, "%s contains byte "
			    "0x%02x at position %zu: " ID_RULE, what, c, i + 1);
		}
	}
	if (s[0] == '-' || s[n - 1] == '-')
		return kb_errf(KB_ERR_INVALID_ARGUMENT, "%s \"%s\" starts or ends "
		    "with '-': " ID_RULE, what, s);
	return KB_OK;
}

/* Length of the UTF-8 sequence at s (1..4), or 0 if invalid. */
static size_t
utf8_len(const unsigned char *s, size_t left)
{
	uint32_t cp;
	size_t n, i;

	if (s[0] < 0x80)
		return 1;
	if ((s[0] & 0xe0) == 0xc0) {
		n = 2;
		cp = s[0] & 0x1f;
	} else if ((s[0] & 0xf0) == 0xe0) {
		n = 3;
		cp = s[0] & 0x0f;
	} else if ((s[0] & 0xf8) == 0xf0) {
		n = 4;
		cp = s[0] & 0x07;
	} else {
		return 0;
	}
	if (n > left)
		return 0;
	for (i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	/* Overlong forms, surrogates, beyond U+10FFFF. */
	if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) ||
	    (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	/* C1 control characters. */
	if (cp >= 0x80 && cp <= 0x9f)
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
		return kb_errf(KB_ERR_INVALID_ARGUMENT, "%s is %zu bytes long; "
		    "the limit is %d", what, n, NAMES_DISPLAY_MAX);
	for (i = 0; i < n; i += k) {
		if (p[i] < 0x20 || p[i] == 0x7f)
			return kb_errf(KB_ERR_INVALID_ARGUMENT, "%s contains the "
			    "control character 0x%02x at byte %zu", what, p[i],
			    i + 1);
		if ((k = utf8_len(p + i, n - i)) == 0)
			return kb_errf(KB_ERR_INVALID_ARGUMENT, "%s is not valid "
			    "UTF-8 (or has a control character) at byte %zu",
			    what, i + 1);
	}
	return KB_OK;
}
