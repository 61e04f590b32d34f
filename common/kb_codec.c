/* SPDX-License-Identifier: Apache-2.0 */
/* kb_codec.c: hex and base64 (RFC 4648). */
#include "kb_codec.h"

#include <string.h>

void
kb_hex_encode(const uint8_t *in, size_t len, char *out)
{
	static const char hexd[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < len; i++) {
		out[2 * i] = hexd[in[i] >> 4];
		out[2 * i + 1] = hexd[in[i] & 15];
	}
	out[2 * len] = '\0';
}

int
kb_hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int
kb_hex_decode(const char *in, uint8_t *out, size_t cap, size_t *len)
{
	size_t n = strlen(in), i;

	if (n % 2 != 0 || n / 2 > cap)
		return -1;
	for (i = 0; i < n / 2; i++) {
		int hi = kb_hex_digit(in[2 * i]),
		    lo = kb_hex_digit(in[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return -1;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	*len = n / 2;
	return 0;
}

size_t
kb_base64_len(size_t n, int flavour)
{
	if (flavour == KB_B64_URL)
		return n / 3 * 4 + (n % 3 == 0 ? 0 : n % 3 + 1);
	return (n + 2) / 3 * 4;
}

size_t
kb_base64_encode(
    const uint8_t *in, size_t n, char *out, size_t cap, int flavour)
{
	static const char std[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	static const char url[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	const char *tab = flavour == KB_B64_URL ? url : std;
	size_t i, o = 0;

	if (cap < kb_base64_len(n, flavour) + 1) {
		if (cap > 0)
			out[0] = '\0';
		return 0;
	}
	for (i = 0; i + 2 < n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8
		    | in[i + 2];

		out[o++] = tab[(v >> 18) & 63];
		out[o++] = tab[(v >> 12) & 63];
		out[o++] = tab[(v >> 6) & 63];
		out[o++] = tab[v & 63];
	}
	if (i < n) {
		uint32_t v = (uint32_t)in[i] << 16;

		if (i + 1 < n)
			v |= (uint32_t)in[i + 1] << 8;
		out[o++] = tab[(v >> 18) & 63];
		out[o++] = tab[(v >> 12) & 63];
		if (i + 1 < n)
			out[o++] = tab[(v >> 6) & 63];
		else if (flavour != KB_B64_URL)
			out[o++] = '=';
		if (flavour != KB_B64_URL)
			out[o++] = '=';
	}
	out[o] = '\0';
	return o;
}

/* 0..63 for a character of the alphabets allowed, else -1. */
static int
b64_value(unsigned char c, int strict)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+' || (!strict && c == '-'))
		return 62;
	if (c == '/' || (!strict && c == '_'))
		return 63;
	return -1;
}

size_t
kb_base64_decoded_max(size_t n)
{
	return n / 4 * 3 + 3;
}

int
kb_base64_decode(const char *in, size_t n, uint8_t *out, size_t cap,
    size_t *len, size_t *where, int flags)
{
	int strict = (flags & KB_B64_STRICT) != 0;
	size_t data = n, i, o = 0, rem, pad = 0;
	uint32_t acc = 0;
	int v;

	*len = 0;
	if (where != NULL)
		*where = 0;
	while (data > 0 && in[data - 1] == '=' && pad < 2) {
		data--;
		pad++;
	}
	for (i = 0; i < data; i++)
		if (b64_value((unsigned char)in[i], strict) < 0) {
			if (where != NULL)
				*where = i;
			return KB_B64_BAD_CHAR;
		}
	rem = data % 4;
	if (rem == 1 || (pad > 0 && n % 4 != 0) || (strict && n % 4 != 0))
		return KB_B64_BAD_LENGTH;
	if (data / 4 * 3 + (rem == 0 ? 0 : rem - 1) > cap)
		return KB_B64_TOO_LONG;
	for (i = 0; i < data; i++) {
		v = b64_value((unsigned char)in[i], strict);
		acc = (acc << 6) | (uint32_t)v;
		if (i % 4 == 3) {
			out[o++] = (uint8_t)(acc >> 16);
			out[o++] = (uint8_t)(acc >> 8);
			out[o++] = (uint8_t)acc;
			acc = 0;
		}
	}
	if (rem == 2) {
		out[o++] = (uint8_t)(acc >> 4);
	} else if (rem == 3) {
		out[o++] = (uint8_t)(acc >> 10);
		out[o++] = (uint8_t)(acc >> 2);
	}
	*len = o;
	return 0;
}
