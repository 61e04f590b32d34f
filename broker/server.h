/* SPDX-License-Identifier: Apache-2.0 */
/* server.h: the gRPC server (gRPC core C API, mutual TLS). One thread polls
 * the completion queue; requests run on a worker pool. */
#ifndef KB_SERVER_H
#define KB_SERVER_H

#include "broker.h"

struct server;

/* Listen on b->cfg->listen with the configured certificates and start the
 * workers. KB_ERR_CONFIG when the address cannot be bound or a PEM file
 * cannot be read. */
enum kb_err server_start(struct broker *b, struct server **out);

/* Serve until server_shutdown() has been called and every call in flight
 * has finished (or the drain grace period ran out). */
void server_run(struct server *s);

/* Ask the server to stop: no new calls; calls in flight finish. Safe from
 * any thread (not from a signal handler). */
void server_shutdown(struct server *s);

/* A moment's picture of the worker pool and the streams, for metrics. */
struct server_stats {
	size_t queued, max_queued; /* calls waiting for a worker */
	size_t busy; /* workers running a call */
	unsigned workers;
	unsigned streams, max_streams; /* streams open (own threads) */
};
void server_stats(struct server *s, struct server_stats *out);

void server_free(struct server *s);

/* Send gRPC's own log lines to ours (call before grpc_init). */
void server_log_init(void);

/* True once gRPC has failed to accept a connection for want of file
 * descriptors: gRPC 1.51 then never accepts again (grpc/grpc#20418), so the
 * broker reports NOT_SERVING and restarts (health.c). */
int server_listener_failed(void);

#endif /* KB_SERVER_H */
