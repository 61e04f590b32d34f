/* SPDX-License-Identifier: Apache-2.0 */
/* kb_time.c: time formatting and parsing. */
#include "kb_time.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int64_t
kb_time_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t
kb_time_mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

char *
kb_time_format(int64_t us, char *buf, size_t len)
{
	time_t secs = (time_t)(us / 1000000);
	long frac = (long)(us % 1000000);
	struct tm tm;

	if (frac < 0) {
		frac += 1000000;
		secs -= 1;
	}
	gmtime_r(&secs, &tm);
	snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ",
	    tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
	    tm.tm_sec, frac);
	return buf;
}

int
kb_time_parse(const char *s, int64_t now_us, int64_t *out)
{
	struct tm tm;
	char *end;
	long frac = 0;
	int digits = 0;

	if (s == NULL || *s == '\0')
		return -1;
	if (s[0] == '-' || s[0] == '+') {
		long long v = strtoll(s + 1, &end, 10);
		int64_t unit;

		if (end == s + 1 || v < 0 || end[0] == '\0' || end[1] != '\0')
			return -1;
		switch (*end) {
		case 's': unit = 1000000; break;
		case 'm': unit = 60LL * 1000000; break;
		case 'h': unit = 3600LL * 1000000; break;
		case 'd': unit = 86400LL * 1000000; break;
		default: return -1;
		}
		*out = now_us + (s[0] == '-' ? -1 : 1) * (int64_t)v * unit;
		return 0;
	}
	memset(&tm, 0, sizeof(tm));
	end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (end == NULL) {
		memset(&tm, 0, sizeof(tm));
		end = strptime(s, "%Y-%m-%d", &tm);
		if (end == NULL || *end != '\0')
			return -1;
		*out = (int64_t)timegm(&tm) * 1000000;
		return 0;
	}
	if (*end == '.') {
		end++;
		while (*end >= '0' && *end <= '9') {
			if (digits < 6) {
				frac = frac * 10 + (*end - '0');
				digits++;
			}
			end++;
		}
		while (digits < 6) {
			frac *= 10;
			digits++;
		}
	}
	if (*end == 'Z')
		end++;
	if (*end != '\0')
		return -1;
	*out = (int64_t)timegm(&tm) * 1000000 + frac;
	return 0;
}

int64_t
kb_time_asn1_us(const ASN1_TIME *t)
{
	struct tm tm;

	if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
		return 0;
	return (int64_t)timegm(&tm) * 1000000;
}
