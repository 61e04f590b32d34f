/* SPDX-License-Identifier: Apache-2.0 */
/* metrics.c: call counters and histograms, the Prometheus text format, and
 * the HTTP listener (libmicrohttpd). */
#include "metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "kb_err_grpc.h"
#include "kb_hist.h"
#include "kb_time.h"
#include "log.h"

#define STATUSES 17 /* gRPC status codes 0 (OK) to 16 (UNAUTHENTICATED) */
#define SCRAPES_AT_ONCE 8

struct method_stats {
	_Atomic uint64_t calls[STATUSES];
	struct kb_hist latency;
};

struct metrics {
	const char *const *names;
	size_t n; /* methods; stats[n] is for unknown paths */
	struct method_stats *stats;
	int64_t start_us;
	struct MHD_Daemon *mhd;
	metrics_collect_fn collect;
	void *arg;
	char addr[80];
	_Atomic uint64_t scrapes;
};

enum kb_err
metrics_addr_parse(const char *s, int allow_remote,
    struct sockaddr_storage *out, socklen_t *len)
{
	char host[64];
	const char *colon, *h = s;
	unsigned long port;
	char *end;
	size_t hl;
	int loop;

	memset(out, 0, sizeof(*out));
	if (s[0] == '[') {
		if ((colon = strstr(s, "]:")) == NULL)
			goto bad;
		h = s + 1;
		hl = (size_t)(colon - h);
		colon++;
	} else {
		if ((colon = strrchr(s, ':')) == NULL)
			goto bad;
		hl = (size_t)(colon - s);
	}
	if (hl == 0 || hl >= sizeof(host) || colon[1] < '0' || colon[1] > '9')
		goto bad;
	memcpy(host, h, hl);
	host[hl] = '\0';
	port = strtoul(colon + 1, &end, 10);
	if (*end != '\0' || port > 65535)
		goto bad;
	if (s[0] == '[') {
		struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)out;

		if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1)
			goto bad;
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons((uint16_t)port);
		*len = sizeof(*a6);
		loop = IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr);
	} else {
		struct sockaddr_in *a4 = (struct sockaddr_in *)out;

		if (inet_pton(AF_INET, host, &a4->sin_addr) != 1)
			goto bad;
		a4->sin_family = AF_INET;
		a4->sin_port = htons((uint16_t)port);
		*len = sizeof(*a4);
		loop = (ntohl(a4->sin_addr.s_addr) >> 24) == 127;
	}
	if (!loop && !allow_remote)
		return kb_errf(KB_ERR_CONFIG,
		    "metrics_listen = %s is not a loopback address: the "
		    "metrics page is plain HTTP without authentication; set "
		    "metrics_allow_remote = true to serve it there anyway, or "
		    "use 127.0.0.1:PORT",
		    s);
	return KB_OK;
bad:
	return kb_errf(KB_ERR_CONFIG,
	    "metrics_listen = \"%.80s\" is not a numeric address and port "
	    "(127.0.0.1:7444, [::1]:7444; empty turns metrics off)",
	    s);
}

enum kb_err
metrics_new(const char *const *names, size_t nmethods, struct metrics **out)
{
	struct metrics *m;

	*out = NULL;
	if ((m = calloc(1, sizeof(*m))) == NULL
	    || (m->stats = calloc(nmethods + 1, sizeof(*m->stats))) == NULL) {
		free(m);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	m->names = names;
	m->n = nmethods;
	m->start_us = kb_time_now_us();
	*out = m;
	return KB_OK;
}

void
metrics_call(
    struct metrics *m, size_t idx, grpc_status_code code, uint64_t start_ns)
{
	struct method_stats *st;

	if (m == NULL)
		return;
	st = &m->stats[idx < m->n ? idx : m->n];
	atomic_fetch_add_explicit(
	    &st->calls[(unsigned)code < STATUSES ? code : GRPC_STATUS_UNKNOWN],
	    1, memory_order_relaxed);
	if (start_ns != 0)
		kb_hist_since(&st->latency, start_ns);
}

/* ---- the text format ---- */

void
metrics_label_escape(FILE *out, const char *s)
{
	for (; *s != '\0'; s++) {
		if (*s == '\\' || *s == '"')
			fputc('\\', out);
		if (*s == '\n')
			fputs("\\n", out);
		else
			fputc(*s, out);
	}
}

void
metrics_head(FILE *out, const char *name, const char *type, const char *help)
{
	fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void
metrics_value(FILE *out, const char *name, const char *labels, double value)
{
	/* %.17g keeps every integer a counter can hold below 2^53 exact. */
	if (labels != NULL && labels[0] != '\0')
		fprintf(out, "%s{%s} %.17g\n", name, labels, value);
	else
		fprintf(out, "%s %.17g\n", name, value);
}

void
metrics_hist(
    FILE *out, const char *name, const char *labels, const struct kb_hist *h)
{
	struct kb_hist_snap s;
	const char *sep = labels != NULL && labels[0] != '\0' ? "," : "";
	unsigned i;

	if (labels == NULL)
		labels = "";
	kb_hist_read(h, &s);
	for (i = 0; i < KB_HIST_BUCKETS; i++)
		fprintf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels,
		    sep, kb_hist_bounds_s[i], (unsigned long long)s.le[i]);
	fprintf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
	    (unsigned long long)s.le[KB_HIST_BUCKETS]);
	if (labels[0] != '\0') {
		fprintf(out, "%s_sum{%s} %.9f\n", name, labels, s.sum_s);
		fprintf(out, "%s_count{%s} %llu\n", name, labels,
		    (unsigned long long)s.count);
	} else {
		fprintf(out, "%s_sum %.9f\n", name, s.sum_s);
		fprintf(
		    out, "%s_count %llu\n", name, (unsigned long long)s.count);
	}
}

static const char *
method_name(const struct metrics *m, size_t i)
{
	return i < m->n ? m->names[i] : "unknown";
}

static void
render_calls(struct metrics *m, FILE *out)
{
	char labels[160];
	uint64_t v;
	size_t i;
	int c;

	metrics_head(out, "keybroker_calls_total", "counter",
	    "Calls answered, by method and gRPC status (shed and refused "
	    "calls included).");
	for (i = 0; i <= m->n; i++)
		for (c = 0; c < STATUSES; c++) {
			v = atomic_load_explicit(
			    &m->stats[i].calls[c], memory_order_relaxed);
			/* Every method's OK line always, other statuses once
			 * seen: rate() needs the series from the start. */
			if (v == 0 && c != GRPC_STATUS_OK)
				continue;
			snprintf(labels, sizeof(labels),
			    "method=\"%s\",code=\"%s\"", method_name(m, i),
			    kb_grpc_status_name((grpc_status_code)c));
			metrics_value(
			    out, "keybroker_calls_total", labels, (double)v);
		}
	metrics_head(out, "keybroker_call_duration_seconds", "histogram",
	    "Time from a unary call's arrival to its answer (queue wait "
	    "included), by method; a method's series start with its first "
	    "call.");
	for (i = 0; i <= m->n; i++) {
		/* 20 lines a method: only for methods called at least once
		 * (a series appears with its first observation). */
		for (c = 0, v = 0; c < STATUSES; c++)
			v += atomic_load_explicit(
			    &m->stats[i].calls[c], memory_order_relaxed);
		if (v == 0)
			continue;
		snprintf(
		    labels, sizeof(labels), "method=\"%s\"", method_name(m, i));
		metrics_hist(out, "keybroker_call_duration_seconds", labels,
		    &m->stats[i].latency);
	}
}

char *
metrics_render(struct metrics *m, size_t *len)
{
	char *buf = NULL;
	size_t n = 0;
	FILE *out;

	*len = 0;
	if ((out = open_memstream(&buf, &n)) == NULL)
		return NULL;
	render_calls(m, out);
	if (m->collect != NULL)
		m->collect(m->arg, out);
	metrics_head(out, "keybroker_start_time_seconds", "gauge",
	    "When this broker process started (Unix time).");
	metrics_value(out, "keybroker_start_time_seconds", NULL,
	    (double)(m->start_us / 1000000));
	metrics_head(out, "keybroker_metrics_scrapes_total", "counter",
	    "Scrapes of this page served, this one included.");
	metrics_value(out, "keybroker_metrics_scrapes_total", NULL,
	    (double)(atomic_fetch_add(&m->scrapes, 1) + 1));
	if (fclose(out) != 0) {
		free(buf);
		return NULL;
	}
	*len = n;
	return buf;
}

/* ---- the listener ---- */

static enum MHD_Result
answer(struct MHD_Connection *conn, unsigned status, char *body, size_t len,
    const char *type)
{
	struct MHD_Response *r;
	enum MHD_Result ret;

	r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
	if (r == NULL) {
		free(body);
		return MHD_NO;
	}
	(void)MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	ret = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result
on_request(void *cls, struct MHD_Connection *conn, const char *url,
    const char *method, const char *version, const char *upload_data,
    size_t *upload_data_size, void **con_cls)
{
	struct metrics *m = cls;
	char *body;
	size_t len;

	(void)version;
	(void)upload_data;
	(void)con_cls;
	if (*upload_data_size != 0) {
		*upload_data_size = 0; /* a body we ignore */
		return MHD_YES;
	}
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
		body = strdup("only GET /metrics is served here\n");
		return answer(conn, MHD_HTTP_METHOD_NOT_ALLOWED, body,
		    body != NULL ? strlen(body) : 0, "text/plain");
	}
	if (strcmp(url, "/metrics") != 0) {
		body = strdup("not found: the metrics are at /metrics\n");
		return answer(conn, MHD_HTTP_NOT_FOUND, body,
		    body != NULL ? strlen(body) : 0, "text/plain");
	}
	if ((body = metrics_render(m, &len)) == NULL)
		return MHD_NO;
	return answer(conn, MHD_HTTP_OK, body, len,
	    "text/plain; version=0.0.4; charset=utf-8");
}

/* libmicrohttpd's own messages, as our log lines. */
static void mhd_log(void *, const char *, va_list)
    __attribute__((format(printf, 2, 0)));

static void
mhd_log(void *cls, const char *fmt, va_list ap)
{
	char msg[512];
	size_t n;

	(void)cls;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	n = strlen(msg);
	while (n > 0 && msg[n - 1] == '\n')
		msg[--n] = '\0';
	log_event(LOG_WARN, "metrics.http", LOG_KV("error", msg),
	    "libmicrohttpd: %s", msg);
}

enum kb_err
metrics_listen(struct metrics *m, const char *addr, int allow_remote,
    metrics_collect_fn collect, void *arg)
{
	struct sockaddr_storage sa;
	socklen_t sl;
	enum kb_err e;
	unsigned flags =
	    MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ERROR_LOG;

	if ((e = metrics_addr_parse(addr, allow_remote, &sa, &sl)) != KB_OK)
		return e;
	if (sa.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	m->collect = collect;
	m->arg = arg;
	snprintf(m->addr, sizeof(m->addr), "%s", addr);
	/* One polling thread answers every scrape in turn: a scrape takes
	 * a few milliseconds, and nothing here should compete with calls. */
	m->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, m,
	    MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
	    MHD_OPTION_CONNECTION_LIMIT, (unsigned)SCRAPES_AT_ONCE,
	    MHD_OPTION_CONNECTION_TIMEOUT, 10U, MHD_OPTION_EXTERNAL_LOGGER,
	    mhd_log, NULL, MHD_OPTION_END);
	if (m->mhd == NULL)
		return kb_errf(KB_ERR_CONFIG,
		    "metrics_listen = %s: cannot listen there (address in use, "
		    "or not an address of this machine?); set another "
		    "address, or metrics_listen = (empty) to turn metrics off",
		    addr);
	(void)sl;
	return KB_OK;
}

void
metrics_free(struct metrics *m)
{
	if (m == NULL)
		return;
	if (m->mhd != NULL)
		MHD_stop_daemon(m->mhd);
	free(m->stats);
	free(m);
}
