/* SPDX-License-Identifier: Apache-2.0 */
/* server.c: gRPC core glue: accept calls, hand them to workers, send
 * answers, drain on shutdown. */
#include "server.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>

#include "dispatch.h"
#include "kb_err_grpc.h"
#include "kb_secmem.h"
#include "kb_wire.h"
#include "kb_hist.h"
#include "log.h"
#include "metrics.h"
#include "workq.h"

#define PENDING_REQUESTS 128 /* calls we are ready to accept at once */
#define MAX_QUEUED 4096 /* requests waiting for a worker */
#define HEALTH_WORKERS 2 /* threads answering health checks */
#define HEALTH_QUEUED 256 /* health checks waiting for them */
#define DRAIN_GRACE_S 15 /* then calls still running are cancelled */
#define PEM_MAX (1 << 20)

#define MAX_STREAMS 64 /* server-streaming calls at once */

enum phase {
	PHASE_NEW, /* waiting for grpc_server_request_call */
	PHASE_RECV, /* waiting for the request message */
	PHASE_SENT, /* final status sent, waiting for the batch */
	PHASE_STREAM_SEND, /* one streamed message sent */
	PHASE_STREAM_CLOSE, /* the client closed or cancelled a stream */
	PHASE_SHUTDOWN, /* the server's shutdown notification */
};

struct call;

/* A completion-queue tag: which step of which call completed. */
struct tag {
	enum phase phase;
	struct call *call;
};

struct call {
	struct tag main, send, close;
	struct server *srv;
	grpc_call *call;
	grpc_call_details details;
	grpc_metadata_array md;
	grpc_byte_buffer *req;
	grpc_byte_buffer *resp;
	grpc_slice status_details;
	int cancelled;
	atomic_int refs; /* completions still due before freeing */
	/* Every call waits for gRPC's close (RECV_CLOSE_ON_SERVER) from the
	 * start, so a call the client cancelled while it queued is skipped,
	 * and a stream ends when its client goes. */
	pthread_mutex_t smu;
	pthread_cond_t scv;
	int streaming, send_pending, send_ok, closed, initial_md_sent;
	/* Over a rate limit: the trailer retry-after-ms (0: none). */
	unsigned retry_after_ms;
	/* A quorum-covered call: the trailer kb-request-id ("": none). */
	char request_id[40];
	grpc_metadata trailer;
	uint64_t arrived_ns; /* the request message received (kb_hist) */
};

struct server {
	struct broker *b;
	grpc_server *server;
	grpc_completion_queue *cq;
	struct workq *wq;
	struct workq *health_wq; /* health checks: never behind a hung token */
	struct tag shutdown_tag;
	atomic_int shutting_down;
	atomic_int streams;
	atomic_int busy; /* calls owned by workers or stream threads */
	int64_t shutdown_started;
	int cancelled_all;
	int pending; /* outstanding request_call count */
};

static char *
read_pem(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf;
	size_t n;

	if (f == NULL) {
		kb_errf(
		    KB_ERR_CONFIG, "cannot open %s: %s", path, strerror(errno));
		return NULL;
	}
	if ((buf = malloc(PEM_MAX + 1)) == NULL) {
		fclose(f);
		kb_errf(KB_ERR_NOMEM, "out of memory");
		return NULL;
	}
	n = fread(buf, 1, PEM_MAX, f);
	fclose(f);
	buf[n] = '\0';
	if (n == 0 || strstr(buf, "-----BEGIN") == NULL) {
		kb_freezero(buf, PEM_MAX + 1);
		kb_errf(KB_ERR_CONFIG, "%s is not a PEM file", path);
		return NULL;
	}
	return buf;
}

static void
call_free(struct call *c)
{
	if (c == NULL)
		return;
	if (c->call != NULL)
		grpc_call_unref(c->call);
	grpc_call_details_destroy(&c->details);
	grpc_metadata_array_destroy(&c->md);
	if (c->req != NULL)
		kb_wire_destroy(c->req);
	if (c->resp != NULL)
		kb_wire_destroy(c->resp);
	grpc_slice_unref(c->status_details);
	grpc_slice_unref(c->trailer.value);
	pthread_mutex_destroy(&c->smu);
	pthread_cond_destroy(&c->scv);
	free(c);
}

/* One of the call's outstanding completions is done. */
static void
call_unref(struct call *c)
{
	if (atomic_fetch_sub(&c->refs, 1) == 1)
		call_free(c);
}

/* Count an answered call for the metrics (nothing when they are off):
 * `m` the method (NULL: looked up, or a path no method has); `timed` adds
 * its time since it arrived to the method's latency histogram. */
static void
call_count(struct call *c, const struct rpc_method *m, grpc_status_code code,
    int timed)
{
	struct metrics *mx = c->srv->b->metrics;

	if (mx == NULL)
		return;
	if (m == NULL)
		m = dispatch_find(
		    (const char *)GRPC_SLICE_START_PTR(c->details.method),
		    GRPC_SLICE_LENGTH(c->details.method));
	metrics_call(mx,
	    m != NULL ? (size_t)(m - dispatch_methods)
	              : dispatch_method_count(),
	    code, timed ? c->arrived_ns : 0);
}

/* Offer gRPC one more slot for an incoming call. */
static void
request_call(struct server *s)
{
	struct call *c = calloc(1, sizeof(*c));
	grpc_call_error err;

	if (c == NULL) {
		log_error("out of memory accepting calls");
		return;
	}
	c->main = (struct tag){PHASE_NEW, c};
	c->send = (struct tag){PHASE_STREAM_SEND, c};
	c->close = (struct tag){PHASE_STREAM_CLOSE, c};
	atomic_init(&c->refs, 1);
	pthread_mutex_init(&c->smu, NULL);
	pthread_cond_init(&c->scv, NULL);
	c->srv = s;
	c->status_details = grpc_empty_slice();
	c->trailer.key = grpc_slice_from_static_string("retry-after-ms");
	c->trailer.value = grpc_empty_slice();
	grpc_call_details_init(&c->details);
	grpc_metadata_array_init(&c->md);
	err = grpc_server_request_call(
	    s->server, &c->call, &c->details, &c->md, s->cq, s->cq, &c->main);
	if (err != GRPC_CALL_OK) {
		log_error("grpc_server_request_call: error %d", (int)err);
		call_free(c);
		return;
	}
	s->pending++;
}

/* Send the status (and message) and let the completion queue free the
 * call when gRPC is done with it. */
static void
send_answer(struct call *c, grpc_status_code code, const char *msg)
{
	grpc_op ops[4];
	grpc_op *op = ops;
	grpc_call_error err;

	memset(ops, 0, sizeof(ops));
	if (!c->initial_md_sent) {
		op->op = GRPC_OP_SEND_INITIAL_METADATA;
		op++;
	}
	if (code == GRPC_STATUS_OK && c->resp != NULL) {
		op->op = GRPC_OP_SEND_MESSAGE;
		op->data.send_message.send_message = c->resp;
		op++;
	}
	grpc_slice_unref(c->status_details);
	c->status_details = grpc_slice_from_copied_string(msg);
	op->op = GRPC_OP_SEND_STATUS_FROM_SERVER;
	op->data.send_status_from_server.status = code;
	op->data.send_status_from_server.status_details =
	    code == GRPC_STATUS_OK ? NULL : &c->status_details;
	if (code != GRPC_STATUS_OK
	    && (c->retry_after_ms != 0 || c->request_id[0] != '\0')) {
		char v[40];

		if (c->request_id[0] != '\0') {
			c->trailer.key =
			    grpc_slice_from_static_string("kb-request-id");
			snprintf(v, sizeof(v), "%s", c->request_id);
		} else
			snprintf(v, sizeof(v), "%u", c->retry_after_ms);
		grpc_slice_unref(c->trailer.value);
		c->trailer.value = grpc_slice_from_copied_string(v);
		op->data.send_status_from_server.trailing_metadata_count = 1;
		op->data.send_status_from_server.trailing_metadata =
		    &c->trailer;
	}
	op++;
	c->main.phase = PHASE_SENT;
	err = grpc_call_start_batch(
	    c->call, ops, (size_t)(op - ops), &c->main, NULL);
	if (err != GRPC_CALL_OK) {
		/* The batch will never complete: drop its reference here. */
		log_error("grpc_call_start_batch (answer): error %d", (int)err);
		call_unref(c);
	}
}

/* rpc_stream_ops for gRPC streams: one message per batch, waiting for its
 * completion (delivered by the completion-queue thread). */
static enum kb_err
stream_send(struct rpc_stream *st, const ProtobufCMessage *msg)
{
	struct call *c = (struct call *)st;
	grpc_byte_buffer *bb;
	grpc_op ops[2];
	grpc_op *op = ops;
	int ok;

	if ((bb = kb_wire_pack(msg)) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	memset(ops, 0, sizeof(ops));
	if (!c->initial_md_sent) {
		op->op = GRPC_OP_SEND_INITIAL_METADATA;
		op++;
		c->initial_md_sent = 1;
	}
	op->op = GRPC_OP_SEND_MESSAGE;
	op->data.send_message.send_message = bb;
	op++;
	pthread_mutex_lock(&c->smu);
	if (c->closed || atomic_load(&c->srv->shutting_down)) {
		pthread_mutex_unlock(&c->smu);
		kb_wire_destroy(bb);
		return KB_ERR_CANCELLED;
	}
	c->send_pending = 1;
	if (grpc_call_start_batch(
	        c->call, ops, (size_t)(op - ops), &c->send, NULL)
	    != GRPC_CALL_OK) {
		c->send_pending = 0;
		pthread_mutex_unlock(&c->smu);
		kb_wire_destroy(bb);
		return KB_ERR_CANCELLED;
	}
	while (c->send_pending)
		pthread_cond_wait(&c->scv, &c->smu);
	ok = c->send_ok;
	pthread_mutex_unlock(&c->smu);
	kb_wire_destroy(bb);
	return ok ? KB_OK : KB_ERR_CANCELLED;
}

static int
stream_done(struct rpc_stream *st)
{
	struct call *c = (struct call *)st;
	int done;

	pthread_mutex_lock(&c->smu);
	done = c->closed || atomic_load(&c->srv->shutting_down);
	pthread_mutex_unlock(&c->smu);
	return done;
}

static const struct rpc_stream_ops stream_ops = {stream_send, stream_done};

/* The caller's address and certificate, from the call. The strings are
 * valid until the returned context and peer are released. */
static void
call_peer(struct call *c, struct dispatch_peer *p, grpc_auth_context **ac,
    char **peer)
{
	grpc_auth_property_iterator it;
	const grpc_auth_property *prop = NULL;

	*peer = grpc_call_get_peer(c->call);
	if ((*ac = grpc_call_auth_context(c->call)) != NULL) {
		it = grpc_auth_context_find_properties_by_name(
		    *ac, GRPC_X509_PEM_CERT_PROPERTY_NAME);
		prop = grpc_auth_property_iterator_next(&it);
	}
	p->peer = *peer != NULL ? *peer : "?";
	p->cert_pem = prop != NULL ? prop->value : NULL;
	p->pem_len = prop != NULL ? prop->value_length : 0;
}

/* A stream runs on its own thread: it may last as long as the client
 * follows it, and must not hold a worker. */
static void *
stream_main(void *arg)
{
	struct call *c = arg;
	struct server *s = c->srv;
	struct dispatch_result res;
	struct dispatch_peer p;
	grpc_auth_context *ac = NULL;
	char *peer = NULL;

	call_peer(c, &p, &ac, &peer);
	dispatch_call(s->b,
	    (const char *)GRPC_SLICE_START_PTR(c->details.method),
	    GRPC_SLICE_LENGTH(c->details.method), &p, c->req, &stream_ops,
	    (struct rpc_stream *)c, &res);
	grpc_auth_context_release(ac);
	gpr_free(peer);
	kb_wire_destroy(c->req);
	c->req = NULL;
	atomic_fetch_sub(&s->streams, 1);
	c->retry_after_ms = res.retry_after_ms;
	snprintf(c->request_id, sizeof(c->request_id), "%s", res.request_id);
	call_count(c, NULL, res.code, 0); /* a stream's length is no latency */
	send_answer(c, res.code, res.message);
	/* Last touch of the server: server_run waits for busy to reach 0
	 * before it shuts the completion queue. */
	atomic_fetch_sub(&s->busy, 1);
	return NULL;
}

/* Hand a streaming call to its own thread. Returns 1 if the thread took
 * the call (and the busy count with it), 0 if it was answered here. */
static int
start_stream(struct call *c)
{
	struct server *s = c->srv;
	pthread_attr_t attr;
	pthread_t th;
	int started;

	if (atomic_fetch_add(&s->streams, 1) >= MAX_STREAMS) {
		atomic_fetch_sub(&s->streams, 1);
		call_count(c, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, 0);
		send_answer(c, GRPC_STATUS_RESOURCE_EXHAUSTED,
		    "too many streams "
		    "open at once; retry later");
		return 0;
	}
	c->streaming = 1;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	started = pthread_create(&th, &attr, stream_main, c) == 0;
	pthread_attr_destroy(&attr);
	if (!started) {
		atomic_fetch_sub(&s->streams, 1);
		call_count(c, NULL, GRPC_STATUS_RESOURCE_EXHAUSTED, 0);
		send_answer(c, GRPC_STATUS_RESOURCE_EXHAUSTED,
		    "cannot start a "
		    "stream thread");
	}
	return started;
}

static int
call_closed(struct call *c)
{
	int closed;

	pthread_mutex_lock(&c->smu);
	closed = c->closed;
	pthread_mutex_unlock(&c->smu);
	return closed;
}

/* Worker: run the request and answer it. */
static void
handle_call(void *arg)
{
	struct call *c = arg;
	struct server *s = c->srv;
	struct dispatch_result res;
	struct dispatch_peer p;
	grpc_auth_context *ac = NULL;
	const struct rpc_method *m;
	char *peer = NULL;

	m = dispatch_find((const char *)GRPC_SLICE_START_PTR(c->details.method),
	    GRPC_SLICE_LENGTH(c->details.method));
	if (call_closed(c)) {
		/* The client gave up while the call queued: do no work. */
		call_count(c, m, GRPC_STATUS_CANCELLED, 1);
		send_answer(c, GRPC_STATUS_CANCELLED,
		    "cancelled by the client "
		    "before the broker started it");
		goto done;
	}
	if (gpr_time_cmp(
	        c->details.deadline, gpr_now(c->details.deadline.clock_type))
	    < 0) {
		call_count(c, m, GRPC_STATUS_DEADLINE_EXCEEDED, 1);
		send_answer(c, GRPC_STATUS_DEADLINE_EXCEEDED,
		    "the call's deadline "
		    "passed before the broker could start it");
		goto done;
	}
	if (m != NULL && m->stream != NULL) {
		if (start_stream(c))
			return; /* the stream thread owns the call now */
		goto done;
	}
	call_peer(c, &p, &ac, &peer);
	dispatch_call(s->b,
	    (const char *)GRPC_SLICE_START_PTR(c->details.method),
	    GRPC_SLICE_LENGTH(c->details.method), &p, c->req, NULL, NULL, &res);
	grpc_auth_context_release(ac);
	gpr_free(peer);
	/* The request may hold secrets (passwords, key files): wipe it. */
	kb_wire_destroy(c->req);
	c->req = NULL;
	c->resp = res.resp;
	c->retry_after_ms = res.retry_after_ms;
	snprintf(c->request_id, sizeof(c->request_id), "%s", res.request_id);
	/* Counted before the answer goes: a client that has its answer sees
	 * it in the next scrape. */
	call_count(c, m, res.code, 1);
	send_answer(c, res.code, res.message);
done:
	atomic_fetch_sub(&s->busy, 1);
}

static atomic_int listener_failed;

/* Refused TLS handshakes (a client certificate that does not chain to the
 * client CA, has expired, or no TLS at all) are counted, not logged one by
 * one: a flood of them costs one line per interval, and no audit write. */
#define HANDSHAKE_LOG_INTERVAL_S 10

static struct {
	pthread_mutex_t mu;
	uint64_t count; /* since the last summary */
	uint64_t total;
	int64_t first_s, last_s; /* monotonic seconds */
	int64_t logged_s;
	char last[200];
} hs = {PTHREAD_MUTEX_INITIALIZER, 0, 0, 0, 0, 0, ""};

static int64_t
mono_s(void)
{
	return gpr_now(GPR_CLOCK_MONOTONIC).tv_sec;
}

/* With hs.mu held: the summary line, if there is anything to say and
 * `force` or an interval has passed since the last one. */
static void
handshake_summary_locked(int64_t now, int force)
{
	if (hs.count == 0
	    || (!force && now - hs.logged_s < HANDSHAKE_LOG_INTERVAL_S))
		return;
	{
		char count[24], total[24];

		snprintf(
		    count, sizeof(count), "%llu", (unsigned long long)hs.count);
		snprintf(
		    total, sizeof(total), "%llu", (unsigned long long)hs.total);
		log_event(LOG_WARN, "tls.handshakes_refused",
		    LOG_KV("count", count, "total", total, "last", hs.last),
		    "TLS handshakes refused: %llu in the last %lld s (%llu "
		    "since start); last: %s (the peer's address is not known "
		    "at this stage)",
		    (unsigned long long)hs.count,
		    (long long)(now - hs.first_s > 0 ? now - hs.first_s : 1),
		    (unsigned long long)hs.total, hs.last);
	}
	hs.count = 0;
	hs.logged_s = now;
}

static void
handshake_failed(const char *msg)
{
	const char *why = strstr(msg, "error:");
	int64_t now = mono_s();

	pthread_mutex_lock(&hs.mu);
	if (hs.count == 0)
		hs.first_s = now;
	hs.count++;
	hs.total++;
	hs.last_s = now;
	snprintf(hs.last, sizeof(hs.last), "%s", why != NULL ? why : msg);
	handshake_summary_locked(now, 0);
	pthread_mutex_unlock(&hs.mu);
}

/* Called from the completion-queue loop: a flood that stopped still gets
 * its summary line within an interval. */
static void
handshake_log_flush(void)
{
	int64_t now = mono_s();

	pthread_mutex_lock(&hs.mu);
	handshake_summary_locked(now, 0);
	pthread_mutex_unlock(&hs.mu);
}

/* gRPC's log lines, in ours. "Failed accept4: Too many open files" is the
 * one that matters: gRPC 1.51 stops accepting after it for good. A refused
 * TLS handshake is one ERROR line from tsi/ssl_transport_security.cc
 * ("Handshake failed with fatal error SSL_ERROR_SSL: ...certificate verify
 * failed"): counted, summarized at a bounded rate, not logged each. */
static void
grpc_log_hook(gpr_log_func_args *a)
{
	if (a->severity == GPR_LOG_SEVERITY_ERROR
	    && strstr(a->message, "accept4") != NULL
	    && strstr(a->message, "Too many open files") != NULL
	    && atomic_exchange(&listener_failed, 1) == 0)
		log_error(
		    "the listener ran out of file descriptors (accept4: "
		    "EMFILE); gRPC accepts no connection after this: raise "
		    "LimitNOFILE, find who holds the connections; the broker "
		    "will restart");
	if (strncmp(a->message, "Handshake failed", 16) == 0 && a->file != NULL
	    && strstr(a->file, "ssl_transport_security") != NULL) {
		handshake_failed(a->message);
		return;
	}
	{
		char line[16];

		snprintf(line, sizeof(line), "%d", a->line);
		log_event(a->severity == GPR_LOG_SEVERITY_ERROR ? LOG_ERROR
		                                                : LOG_DEBUG,
		    "grpc.log", LOG_KV("file", a->file, "line", line),
		    "grpc: %s (%s:%d)", a->message, a->file, a->line);
	}
}

void
server_log_init(void)
{
	gpr_set_log_function(grpc_log_hook);
}

int
server_listener_failed(void)
{
	return atomic_load(&listener_failed);
}

/* Health checks have workers of their own: when every worker waits on a
 * hung token, a health check still answers (health.c bounds its wait). */
static int
is_health(const struct call *c)
{
	static const char path[] = "/grpc.health.v1.Health/Check";
	const grpc_slice *m = &c->details.method;

	return GRPC_SLICE_LENGTH(*m) == sizeof(path) - 1
	    && memcmp(GRPC_SLICE_START_PTR(*m), path, sizeof(path) - 1) == 0;
}

static void
on_event(struct server *s, struct tag *t, int ok)
{
	struct call *c = t->call;
	grpc_op op;
	grpc_call_error err;
	enum kb_err e;

	switch (t->phase) {
	case PHASE_NEW:
		s->pending--;
		if (!ok) { /* server shutting down */
			call_free(c);
			return;
		}
		if (!atomic_load(&s->shutting_down))
			request_call(s);
		memset(&op, 0, sizeof(op));
		op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
		op.data.recv_close_on_server.cancelled = &c->cancelled;
		if (grpc_call_start_batch(c->call, &op, 1, &c->close, NULL)
		    == GRPC_CALL_OK)
			atomic_fetch_add(&c->refs, 1);
		else
			c->closed = 1;
		memset(&op, 0, sizeof(op));
		op.op = GRPC_OP_RECV_MESSAGE;
		op.data.recv_message.recv_message = &c->req;
		c->main.phase = PHASE_RECV;
		err = grpc_call_start_batch(c->call, &op, 1, &c->main, NULL);
		if (err != GRPC_CALL_OK) {
			log_error("grpc_call_start_batch (receive): error %d",
			    (int)err);
			grpc_call_cancel(c->call, NULL);
			call_unref(c);
		}
		return;
	case PHASE_RECV:
		if (!ok) {
			call_count(c, NULL, GRPC_STATUS_CANCELLED, 0);
			send_answer(
			    c, GRPC_STATUS_CANCELLED, "request not received");
			return;
		}
		c->arrived_ns = s->b->metrics != NULL ? kb_hist_now_ns() : 0;
		atomic_fetch_add(&s->busy, 1);
		if ((e = workq_push(
		         is_health(c) ? s->health_wq : s->wq, handle_call, c))
		    != KB_OK) {
			/* Shed load: answer at once rather than queue forever.
			 */
			atomic_fetch_sub(&s->busy, 1);
			call_count(c, NULL, kb_err_to_grpc(e), 1);
			send_answer(c, kb_err_to_grpc(e), kb_err_msg(e));
		}
		return;
	case PHASE_STREAM_SEND:
		pthread_mutex_lock(&c->smu);
		c->send_pending = 0;
		c->send_ok = ok;
		pthread_cond_broadcast(&c->scv);
		pthread_mutex_unlock(&c->smu);
		return;
	case PHASE_STREAM_CLOSE:
		pthread_mutex_lock(&c->smu);
		c->closed = 1;
		pthread_cond_broadcast(&c->scv);
		pthread_mutex_unlock(&c->smu);
		call_unref(c);
		return;
	case PHASE_SENT: call_unref(c); return;
	case PHASE_SHUTDOWN: return;
	}
}

enum kb_err
server_start(struct broker *b, struct server **out)
{
	struct server *s = NULL;
	grpc_server_credentials *creds = NULL;
	grpc_ssl_pem_key_cert_pair pair = {NULL, NULL};
	char *ca = NULL, *cert = NULL, *key = NULL;
	size_t key_len = 0;
	grpc_arg args[5];
	grpc_channel_args chargs;
	enum kb_err e = KB_ERR_INTERNAL;
	int i;

	*out = NULL;
	if ((ca = read_pem(b->cfg->client_ca)) == NULL
	    || (cert = read_pem(b->cfg->tls_cert)) == NULL) {
		e = KB_ERR_CONFIG;
		goto out;
	}
	/* The server's private key is a secret like the PIN: refused when
	 * group or others may read it, kept in locked memory. */
	if ((e = kb_secret_file_read(b->cfg->tls_key, 1, &key, &key_len))
	    != KB_OK) {
		kb_err_wrap(e, "tls_key");
		goto out;
	}
	if (strstr(key, "-----BEGIN") == NULL) {
		e = kb_errf(KB_ERR_CONFIG, "tls_key %s is not a PEM file",
		    b->cfg->tls_key);
		goto out;
	}
	if ((s = calloc(1, sizeof(*s))) == NULL) {
		e = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	s->b = b;
	s->shutdown_tag.phase = PHASE_SHUTDOWN;
	atomic_init(&s->shutting_down, 0);
	atomic_init(&s->streams, 0);
	atomic_init(&s->busy, 0);
	if ((e = workq_new(b->cfg->workers, MAX_QUEUED, &s->wq)) != KB_OK
	    || (e = workq_new(HEALTH_WORKERS, HEALTH_QUEUED, &s->health_wq))
	        != KB_OK)
		goto out;

	pair.private_key = key;
	pair.cert_chain = cert;
	/* Require a client certificate; its chain, validity and role are
	 * checked per call by identity.c, so a refused caller gets a precise
	 * UNAUTHENTICATED status instead of a failed handshake. */
	creds = grpc_ssl_server_credentials_create_ex(ca, &pair, 1,
	    GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY, NULL);
	if (creds == NULL) {
		e = kb_errf(KB_ERR_CONFIG,
		    "cannot use the TLS certificate %s "
		    "and key %s",
		    b->cfg->tls_cert, b->cfg->tls_key);
		goto out;
	}
	args[0].type = GRPC_ARG_INTEGER;
	args[0].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
	args[0].value.integer = (int)b->cfg->max_message_bytes;
	args[1].type = GRPC_ARG_INTEGER;
	args[1].key = (char *)GRPC_ARG_MAX_CONCURRENT_STREAMS;
	args[1].value.integer = 256;
	args[2].type = GRPC_ARG_INTEGER;
	args[2].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
	args[2].value.integer = 16 << 20;
	/* Connections that never finish the TLS handshake, or sit idle, are
	 * dropped: each holds a file descriptor. */
	args[3].type = GRPC_ARG_INTEGER;
	args[3].key = (char *)GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS;
	args[3].value.integer = 10000;
	args[4].type = GRPC_ARG_INTEGER;
	args[4].key = (char *)GRPC_ARG_MAX_CONNECTION_IDLE_MS;
	args[4].value.integer = 300000;
	chargs.num_args = 5;
	chargs.args = args;
	s->server = grpc_server_create(&chargs, NULL);
	s->cq = grpc_completion_queue_create_for_next(NULL);
	grpc_server_register_completion_queue(s->server, s->cq, NULL);
	if (grpc_server_add_http2_port(s->server, b->cfg->listen, creds) == 0) {
		e = kb_errf(KB_ERR_CONFIG,
		    "cannot listen on %s (address in use, "
		    "or not a HOST:PORT this machine has?)",
		    b->cfg->listen);
		goto out;
	}
	grpc_server_start(s->server);
	for (i = 0; i < PENDING_REQUESTS; i++)
		request_call(s);
	*out = s;
	s = NULL;
	e = KB_OK;
out:
	if (creds != NULL)
		grpc_server_credentials_release(creds);
	if (s != NULL) {
		if (s->server != NULL) {
			grpc_server_shutdown_and_notify(
			    s->server, s->cq, &s->shutdown_tag);
			atomic_store(&s->shutting_down, 1);
			server_run(s);
		}
		server_free(s);
	}
	free(ca);
	free(cert);
	kb_secure_free(key);
	return e;
}

void
server_shutdown(struct server *s)
{
	int expected = 0;

	if (!atomic_compare_exchange_strong(&s->shutting_down, &expected, 1))
		return;
	log_info("shutting down: refusing new calls, draining calls in flight");
	grpc_server_shutdown_and_notify(s->server, s->cq, &s->shutdown_tag);
}

void
server_run(struct server *s)
{
	grpc_event ev;
	int drained = 0, cq_shut = 0;

	for (;;) {
		/* gRPC counts a cancelled call as finished, but a worker or a
		 * stream thread may still answer it: shut the queue only once
		 * none of our threads holds a call. */
		if (drained && !cq_shut && atomic_load(&s->busy) == 0) {
			grpc_completion_queue_shutdown(s->cq);
			cq_shut = 1;
		}
		ev = grpc_completion_queue_next(s->cq,
		    gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
		        gpr_time_from_millis(drained ? 50 : 500, GPR_TIMESPAN)),
		    NULL);
		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			break;
		if (ev.type == GRPC_QUEUE_TIMEOUT) {
			handshake_log_flush();
			if (atomic_load(&s->shutting_down)
			    && !s->cancelled_all) {
				if (s->shutdown_started == 0)
					s->shutdown_started =
					    gpr_now(GPR_CLOCK_MONOTONIC).tv_sec;
				else if (gpr_now(GPR_CLOCK_MONOTONIC).tv_sec
				        - s->shutdown_started
				    >= DRAIN_GRACE_S) {
					log_warn(
					    "calls still running after %d s: "
					    "cancelling them",
					    DRAIN_GRACE_S);
					grpc_server_cancel_all_calls(s->server);
					s->cancelled_all = 1;
				}
			}
			continue;
		}
		if (ev.tag == &s->shutdown_tag) {
			/* Every call has finished; gRPC may still hand back the
			 * pending request slots and final batches. */
			drained = 1;
			continue;
		}
		on_event(s, ev.tag, ev.success);
	}
	pthread_mutex_lock(&hs.mu);
	handshake_summary_locked(mono_s(), 1);
	pthread_mutex_unlock(&hs.mu);
	if (drained)
		log_info("all calls drained");
}

void
server_stats(struct server *s, struct server_stats *out)
{
	memset(out, 0, sizeof(*out));
	workq_stats(s->wq, &out->queued, &out->busy, &out->workers);
	out->max_queued = MAX_QUEUED;
	out->streams = (unsigned)atomic_load(&s->streams);
	out->max_streams = MAX_STREAMS;
}

void
server_free(struct server *s)
{
	if (s == NULL)
		return;
	/* Workers first: none may touch a call after this. */
	workq_free(s->wq);
	workq_free(s->health_wq);
	if (s->server != NULL)
		grpc_server_destroy(s->server);
	if (s->cq != NULL)
		grpc_completion_queue_destroy(s->cq);
	free(s);
}
