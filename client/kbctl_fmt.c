/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl_fmt.c: kbctl's text output for people: tables, times, enum words. */
#include "kbctl_fmt.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "kb_time.h"

struct kbctl_table {
	size_t ncols;
	size_t nrows; /* including the header row */
	size_t cap; /* rows allocated */
	char **cells; /* nrows * ncols, row-major */
};

static char *
cell_dup(const char *s)
{
	size_t n;
	char *c;

	if (s == NULL)
		s = "-";
	n = strlen(s) + 1;
	if ((c = malloc(n)) != NULL)
		kbctl_sanitize(s, c, n);
	return c;
}

struct kbctl_table *
kbctl_table_new(size_t ncols, const char *const *headers)
{
	struct kbctl_table *t;

	if (ncols == 0 || (t = calloc(1, sizeof(*t))) == NULL)
		return NULL;
	t->ncols = ncols;
	if (kbctl_table_add(t, headers) != 0) {
		kbctl_table_free(t);
		return NULL;
	}
	return t;
}

int
kbctl_table_add(struct kbctl_table *t, const char *const *cells)
{
	size_t i;
	char **row;

	if (t->nrows == t->cap) {
		size_t ncap = t->cap == 0 ? 16 : t->cap * 2;
		char **n = realloc(t->cells, ncap * t->ncols * sizeof(*n));

		if (n == NULL)
			return -1;
		t->cells = n;
		t->cap = ncap;
	}
	row = t->cells + t->nrows * t->ncols;
	for (i = 0; i < t->ncols; i++) {
		if ((row[i] = cell_dup(cells[i])) == NULL) {
			while (i > 0)
				free(row[--i]);
			return -1;
		}
	}
	t->nrows++;
	return 0;
}

size_t
kbctl_table_rows(const struct kbctl_table *t)
{
	return t->nrows > 0 ? t->nrows - 1 : 0;
}

char *
kbctl_table_format(const struct kbctl_table *t)
{
	size_t *w, i, j, total = 1;
	char *out, *p;

	if ((w = calloc(t->ncols, sizeof(*w))) == NULL)
		return NULL;
	for (i = 0; i < t->nrows; i++) {
		for (j = 0; j < t->ncols; j++) {
			const char *c = t->cells[i * t->ncols + j];
			size_t cw = kbctl_text_width(c);

			if (cw > w[j])
				w[j] = cw;
			/* Bytes may exceed the width (UTF-8): count both. */
			total += strlen(c) + 2;
		}
		total += 1;
	}
	for (j = 0; j < t->ncols; j++)
		total += w[j] * t->nrows;
	if ((out = malloc(total)) == NULL) {
		free(w);
		return NULL;
	}
	p = out;
	for (i = 0; i < t->nrows; i++) {
		char *line = p;

		for (j = 0; j < t->ncols; j++) {
			const char *c = t->cells[i * t->ncols + j];
			size_t n = strlen(c), pad;

			memcpy(p, c, n);
			p += n;
			if (j + 1 == t->ncols)
				break;
			pad = w[j] - kbctl_text_width(c) + 2;
			memset(p, ' ', pad);
			p += pad;
		}
		/* Empty trailing cells would leave spaces at the line end. */
		while (p > line && p[-1] == ' ')
			p--;
		*p++ = '\n';
	}
	*p = '\0';
	free(w);
	return out;
}

int
kbctl_table_print(const struct kbctl_table *t, FILE *f)
{
	char *s = kbctl_table_format(t);
	int r;

	if (s == NULL)
		return -1;
	r = fputs(s, f) < 0 ? -1 : 0;
	free(s);
	return r;
}

void
kbctl_table_free(struct kbctl_table *t)
{
	size_t i;

	if (t == NULL)
		return;
	for (i = 0; i < t->nrows * t->ncols; i++)
		free(t->cells[i]);
	free(t->cells);
	free(t);
}

void
kbctl_sanitize(const char *in, char *out, size_t len)
{
	const unsigned char *s = (const unsigned char *)in;
	size_t o = 0;

	if (len == 0)
		return;
	while (*s != '\0' && o + 1 < len) {
		if (*s < 0x20 || *s == 0x7f) {
			out[o++] = '?';
			s++;
		} else if (s[0] == 0xc2 && s[1] >= 0x80 && s[1] <= 0x9f) {
			/* C1 controls (CSI is U+009B) in UTF-8. */
			out[o++] = '?';
			s += 2;
		} else {
			out[o++] = (char)*s++;
		}
	}
	out[o] = '\0';
}

/* Columns a code point takes on a terminal: East Asian wide characters
 * and emoji take two, combining marks none (the ranges of wcwidth that
 * matter for names; no locale needed). */
static size_t
cp_width(uint32_t c)
{
	if ((c >= 0x0300 && c <= 0x036f) || c == 0x200b || c == 0x200d
	    || (c >= 0xfe00 && c <= 0xfe0f))
		return 0;
	if ((c >= 0x1100 && c <= 0x115f)
	    || (c >= 0x2e80 && c <= 0xa4cf && c != 0x303f)
	    || (c >= 0xac00 && c <= 0xd7a3) || (c >= 0xf900 && c <= 0xfaff)
	    || (c >= 0xfe30 && c <= 0xfe4f) || (c >= 0xff00 && c <= 0xff60)
	    || (c >= 0xffe0 && c <= 0xffe6) || (c >= 0x1f300 && c <= 0x1f64f)
	    || (c >= 0x1f900 && c <= 0x1f9ff) || (c >= 0x20000 && c <= 0x3fffd))
		return 2;
	return 1;
}

size_t
kbctl_text_width(const char *str)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t w = 0, n, i;
	uint32_t c;

	while (*s != '\0') {
		if (*s < 0x80) {
			w++;
			s++;
			continue;
		}
		if ((*s & 0xe0) == 0xc0) {
			n = 1;
			c = *s & 0x1f;
		} else if ((*s & 0xf0) == 0xe0) {
			n = 2;
			c = *s & 0x0f;
		} else if ((*s & 0xf8) == 0xf0) {
			n = 3;
			c = *s & 0x07;
		} else {
			w++; /* not UTF-8: one column per byte */
			s++;
			continue;
		}
		for (i = 1; i <= n; i++) {
			if ((s[i] & 0xc0) != 0x80)
				break;
			c = c << 6 | (s[i] & 0x3f);
		}
		if (i <= n) {
			w++;
			s++;
			continue;
		}
		w += cp_width(c);
		s += n + 1;
	}
	return w;
}

char *
kbctl_time_sec(int64_t us, char *buf, size_t len)
{
	char full[40];

	if (us == 0) {
		snprintf(buf, len, "-");
		return buf;
	}
	kb_time_format(us, full, sizeof(full));
	/* "2026-11-22T04:39:11.123456Z" -> "2026-11-22T04:39:11Z" */
	snprintf(buf, len, "%.19sZ", full);
	return buf;
}

const char *
kbctl_enum_word(
    const ProtobufCEnumDescriptor *d, int value, char *buf, size_t len)
{
	const ProtobufCEnumValue *v =
	    protobuf_c_enum_descriptor_get_value(d, value);
	size_t prefix = 0, i, o = 0;
	const char *name;

	if (v == NULL) {
		snprintf(buf, len, "unknown(%d)", value);
		return buf;
	}
	/* The prefix all values share, cut after its last '_'. */
	if (d->n_values > 1) {
		const char *first = d->values[0].name;

		prefix = strlen(first);
		for (i = 1; i < d->n_values; i++) {
			size_t k = 0;

			while (k < prefix && d->values[i].name[k] == first[k])
				k++;
			prefix = k;
		}
		while (prefix > 0 && first[prefix - 1] != '_')
			prefix--;
	}
	name = v->name + prefix;
	for (; name[o] != '\0' && o + 1 < len; o++)
		buf[o] = (char)tolower((unsigned char)name[o]);
	buf[o] = '\0';
	return buf;
}

char *
kbctl_fingerprint_short(const char *fp, char *buf, size_t len)
{
	if (fp == NULL || *fp == '\0')
		snprintf(buf, len, "-");
	else if (strlen(fp) <= 16)
		snprintf(buf, len, "%s", fp);
	else
		snprintf(buf, len, "%.16s\xe2\x80\xa6", fp);
	return buf;
}

char *
kbctl_progress_bar(uint64_t done, uint64_t total, char *buf, size_t len)
{
	char bar[KBCTL_PROGRESS_WIDTH + 1];
	size_t fill, i;

	if (done > total)
		done = total;
	if (total == 0)
		fill = KBCTL_PROGRESS_WIDTH;
	else if (total <= UINT64_MAX / KBCTL_PROGRESS_WIDTH)
		fill = (size_t)(done * KBCTL_PROGRESS_WIDTH / total);
	else /* no overflow for absurd totals */
		fill = (size_t)(done / (total / KBCTL_PROGRESS_WIDTH));
	/* Rounding down leaves one '-' until the last environment is done. */
	if (fill >= KBCTL_PROGRESS_WIDTH && done < total)
		fill = KBCTL_PROGRESS_WIDTH - 1;
	for (i = 0; i < KBCTL_PROGRESS_WIDTH; i++)
		bar[i] = i < fill ? '#' : '-';
	bar[KBCTL_PROGRESS_WIDTH] = '\0';
	snprintf(buf, len, "[%s]  %llu/%llu environments re-wrapped", bar,
	    (unsigned long long)done, (unsigned long long)total);
	return buf;
}
