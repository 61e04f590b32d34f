/* SPDX-License-Identifier: Apache-2.0 */
/* metrics.h: Prometheus metrics (text exposition format 0.0.4) on a
 * listener of their own, served by libmicrohttpd. The call path costs two
 * or three relaxed atomic adds: counters by method and gRPC status, and a
 * latency histogram per method. Everything else (queues, jobs, keys,
 * certificates, health) is read when a scrape asks, by a collector that
 * main() hands in (metrics_collect.c). */
#ifndef KB_METRICS_H
#define KB_METRICS_H

#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include <grpc/status.h>

#include "kb_err.h"

struct kb_hist;
struct metrics;

/* The default listener: loopback only, beside the gRPC port 7443. */
#define METRICS_LISTEN_DEFAULT "127.0.0.1:7444"

/* Parse a metrics_listen value: a numeric IPv4 "A.B.C.D:PORT" or IPv6
 * "[ADDR]:PORT" (no host names: they may resolve anywhere). An address
 * that is not loopback is refused unless `allow_remote`
 * (metrics_allow_remote = true). KB_ERR_CONFIG naming the key. */
enum kb_err metrics_addr_parse(const char *s, int allow_remote,
    struct sockaddr_storage *out, socklen_t *len);

/* Counters for `nmethods` methods named `names[i]` (the dispatch table's
 * order; pointers kept, not copied) and one slot, index `nmethods`, for
 * paths no method has. */
enum kb_err metrics_new(
    const char *const *names, size_t nmethods, struct metrics **out);

/* One answered call of method `idx` (nmethods: unknown) with `code`;
 * `start_ns` (kb_hist_now_ns) when it arrived, 0 to count it without a
 * latency (a stream). `m` may be NULL (metrics off): nothing happens. */
void metrics_call(
    struct metrics *m, size_t idx, grpc_status_code code, uint64_t start_ns);

/* Writes the gauges of one scrape to `out`, with the helpers below. */
typedef void (*metrics_collect_fn)(void *arg, FILE *out);

/* Serve GET /metrics on `addr` (checked by metrics_addr_parse) from a
 * thread of libmicrohttpd's. KB_ERR_CONFIG naming metrics_listen when it
 * cannot listen there. */
enum kb_err metrics_listen(struct metrics *m, const char *addr,
    int allow_remote, metrics_collect_fn collect, void *arg);

/* The whole page, as a scrape gets it: malloc'd text, caller frees. */
char *metrics_render(struct metrics *m, size_t *len);

/* Stop the listener (waits for a scrape in progress) and free. Accepts
 * NULL. */
void metrics_free(struct metrics *m);

/* Exposition helpers for collectors. `labels` is NULL or the inside of
 * the braces, already escaped ("kind=\"activate\""). */
void metrics_head(
    FILE *out, const char *name, const char *type, const char *help);
void metrics_value(
    FILE *out, const char *name, const char *labels, double value);
void metrics_hist(
    FILE *out, const char *name, const char *labels, const struct kb_hist *h);
/* Write `s` escaped as a label value (backslash, quote, newline). */
void metrics_label_escape(FILE *out, const char *s);

#endif /* KB_METRICS_H */
