/* SPDX-License-Identifier: Apache-2.0 */
/* kb_utf8.c: UTF-8 validation and cleaning. */
#include "kb_utf8.h"

#include <string.h>

size_t
kb_utf8_seq(const unsigned char *p, size_t left)
{
	unsigned cp;
	size_t n, i;

	if (p[0] < 0x80)
		return 1;
	if ((p[0] & 0xe0) == 0xc0) {
		n = 2;
		cp = p[0] & 0x1f;
	} else if ((p[0] & 0xf0) == 0xe0) {
		n = 3;
		cp = p[0] & 0x0f;
	} else if ((p[0] & 0xf8) == 0xf0) {
		n = 4;
		cp = p[0] & 0x07;
	} else {
		return 0;
	}
	if (n > left)
		return 0;
	for (i = 1; i < n; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[i] & 0x3f);
	}
	if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800)
	    || (n == 4 && cp < 0x10000) || cp > 0x10ffff
	    || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return n;
}

void
kb_utf8_clean(char *s, size_t max)
{
	unsigned char *p = (unsigned char *)s;
	size_t len = strlen(s), i = 0, k;

	while (i < len) {
		if ((k = kb_utf8_seq(p + i, len - i)) == 0) {
			p[i] = '?';
			k = 1;
		}
		if (i + k >= max)
			break;
		i += k;
	}
	p[i < len ? i : len] = '\0';
}
