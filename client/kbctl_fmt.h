/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl_fmt.h: kbctl's text output for people: tables, times, enum words. */
#ifndef KB_KBCTL_FMT_H
#define KB_KBCTL_FMT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <protobuf-c/protobuf-c.h>

/* A table of text cells printed with aligned columns, two spaces apart. */
struct kbctl_table;

/* A table with `ncols` columns headed by `headers` (copied). NULL when out
 * of memory. Free with kbctl_table_free. */
struct kbctl_table *kbctl_table_new(size_t ncols, const char *const *headers);

/* Append a row of ncols cells (copied, control characters replaced; NULL
 * prints as "-"). Returns 0, or -1 when out of memory (table unchanged). */
int kbctl_table_add(struct kbctl_table *t, const char *const *cells);

/* The whole table as text, one line per row, no trailing spaces. The caller
 * frees the string. NULL when out of memory. */
char *kbctl_table_format(const struct kbctl_table *t);

/* Format and write to `f`. Returns 0, or -1 on failure. */
int kbctl_table_print(const struct kbctl_table *t, FILE *f);

/* Number of rows (the header excluded). */
size_t kbctl_table_rows(const struct kbctl_table *t);

/* Accepts NULL. */
void kbctl_table_free(struct kbctl_table *t);

/* Copy `in` to out[0..len) replacing control characters (C0, DEL, C1)
 * with '?', so a name from the broker cannot drive the terminal. */
void kbctl_sanitize(const char *in, char *out, size_t len);

/* Terminal columns of UTF-8 text: wide (CJK) characters count two,
 * combining marks none, bytes that are not UTF-8 one each. */
size_t kbctl_text_width(const char *s);

/* RFC 3339 UTC to the second ("2026-11-22T04:39:11Z"), or "-" for 0.
 * `len` >= 32. Returns buf. */
char *kbctl_time_sec(int64_t us, char *buf, size_t len);

/* Lower-case word of an enum value without the prefix shared by all its
 * values: ENCRYPTION_MODE_PLATFORM -> "platform", ROLE_ADMIN -> "admin".
 * Unknown values give "unknown(7)". `len` >= 32. Returns buf. */
const char *kbctl_enum_word(
    const ProtobufCEnumDescriptor *d, int value, char *buf, size_t len);

/* A key fingerprint for tables: its first 16 characters and "\u2026"
 * ("3f9a0c...": the rest is in `keys show`); shorter ones unchanged, ""
 * gives "-". `len` >= 24. Returns buf. */
char *kbctl_fingerprint_short(const char *fp, char *buf, size_t len);

/* Width of the progress bar between the brackets. */
#define KBCTL_PROGRESS_WIDTH 20

/* A re-wrap progress line:
 * "[########------------]  412/1000 environments re-wrapped".
 * The bar fills in proportion (rounding down, full only when done ==
 * total); done > total counts as total; total 0 is a full bar. `len` >= 80.
 * Returns buf. */
char *kbctl_progress_bar(uint64_t done, uint64_t total, char *buf, size_t len);

#endif /* KB_KBCTL_FMT_H */
