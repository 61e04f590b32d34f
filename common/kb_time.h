/* SPDX-License-Identifier: Apache-2.0 */
/* kb_time.h: wall-clock helpers shared by broker and client. */
#ifndef KB_TIME_H
#define KB_TIME_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/asn1.h>

/* Microseconds since the Unix epoch (CLOCK_REALTIME). */
int64_t kb_time_now_us(void);

/* Monotonic microseconds, for durations. */
int64_t kb_time_mono_us(void);

/* Format `us` as RFC 3339 UTC ("2026-11-22T04:39:11.123456Z") into buf
 * (at least 32 bytes). Returns buf. */
char *kb_time_format(int64_t us, char *buf, size_t len);

/* Parse RFC 3339 UTC ("2026-11-22T04:39:11Z", optional fraction) or a
 * relative "-15m"/"-2h"/"-3d" into microseconds. Returns 0 on success. */
int kb_time_parse(const char *s, int64_t now_us, int64_t *out);

/* An ASN.1 time (a certificate's notAfter, a CRL's nextUpdate) in
 * microseconds since the Unix epoch; 0 for NULL or one that cannot be
 * read. */
int64_t kb_time_asn1_us(const ASN1_TIME *t);

#endif /* KB_TIME_H */
