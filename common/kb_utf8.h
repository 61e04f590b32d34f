/* SPDX-License-Identifier: Apache-2.0 */
/* kb_utf8.h: UTF-8 validation and cleaning. */
#ifndef KB_UTF8_H
#define KB_UTF8_H

#include <stddef.h>

/* Length (1..4) of the well-formed UTF-8 sequence at p, or 0 when it is
 * not one (bad lead or continuation byte, overlong form, surrogate, beyond
 * U+10FFFF, or cut short by `left`). */
size_t kb_utf8_seq(const unsigned char *p, size_t left);

/* Make `s` valid UTF-8 in place: invalid bytes become '?', and the string is
 * cut to at most max - 1 bytes (max >= 1) at a character boundary. Messages
 * are cut by printf precisions, which know nothing of characters. */
void kb_utf8_clean(char *s, size_t max);

#endif /* KB_UTF8_H */
