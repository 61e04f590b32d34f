/* SPDX-License-Identifier: Apache-2.0 */
/* kb_codec.h: the one hex and the one base64 codec of the tree, for the
 * broker and the client alike. Encoders write a NUL-terminated string;
 * none of them allocates. */
#ifndef KB_CODEC_H
#define KB_CODEC_H

#include <stddef.h>
#include <stdint.h>

/* Lower-case hex of `len` bytes into out (2 * len + 1 bytes). */
void kb_hex_encode(const uint8_t *in, size_t len, char *out);

/* One hex digit's value (either case), or -1. */
int kb_hex_digit(char c);

/* Hex (either case, even length) into out: 0, or -1 when malformed or
 * longer than cap bytes. */
int kb_hex_decode(const char *in, uint8_t *out, size_t cap, size_t *len);

/* Base64 flavours: RFC 4648 section 4 (+/ and '=' padding) or section 5
 * (base64url: -_ and no padding). */
#define KB_B64_STD 0
#define KB_B64_URL 1

/* The encoded length of n bytes (without the NUL). */
size_t kb_base64_len(size_t n, int flavour);

/* Encode into out; returns the length written, or 0 (out untouched but
 * for a NUL when cap > 0) when cap cannot hold it and its NUL. */
size_t kb_base64_encode(
    const uint8_t *in, size_t n, char *out, size_t cap, int flavour);

/* Decoding. KB_B64_STRICT: the standard alphabet, padding required (a
 * format we wrote ourselves); without it both alphabets, padded or not
 * (files others make). Returns 0 with *len bytes in out, or
 * KB_B64_BAD_CHAR (*where: the 0-based position of the character),
 * KB_B64_BAD_LENGTH (no whole number of bytes: truncated), or
 * KB_B64_TOO_LONG (more than cap bytes). */
#define KB_B64_STRICT 1
#define KB_B64_BAD_CHAR (-1)
#define KB_B64_BAD_LENGTH (-2)
#define KB_B64_TOO_LONG (-3)

/* The most bytes n characters decode to. */
size_t kb_base64_decoded_max(size_t n);

int kb_base64_decode(const char *in, size_t n, uint8_t *out, size_t cap,
    size_t *len, size_t *where, int flags);

#endif /* KB_CODEC_H */
