/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl_audit.c: kbctl's audit log handlers: list (filters, pages), tail
 * (the last events, or -f: follow live and resume after a disconnect, with
 * a state file across restarts), export (JSON Lines with the public key),
 * verify (an export offline, or the broker's log --online) and the key. */
#include "kbctl.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "audit_export.h"
#include "kb_err_grpc.h"
#include "kb_time.h"
#include "kbctl_out.h"
#include "kbctl_secret.h"
#include "keybroker.pb-c.h"

#define PAGE_MAX 1000 /* the broker's largest page */
#define REASON_COLS 60 /* REASON column of `audit list` */
#define TAIL_DEFAULT 20 /* `audit tail` without -n */
#define TAIL_MAX 100000 /* -n at most */
#define TAIL_POLL_MS 250 /* how often a follow checks for a signal */
#define BACKOFF_FIRST_MS 250 /* reconnecting: first wait, doubled ... */
#define BACKOFF_MAX_MS 5000 /* ... up to this */
#define STREAM_STABLE_US (10 * 1000000) /* a stream up this long resets it */

/* ---- signals: Ctrl-C and SIGTERM end a follow or an export cleanly ---- */

static volatile sig_atomic_t stop_signal;

static void
on_stop(int sig)
{
	stop_signal = sig;
}

static void
stop_signals_catch(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_stop;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

void
kbctl_stop_signals_catch(void)
{
	stop_signals_catch();
}

int
kbctl_stop_signal(void)
{
	return stop_signal != 0;
}

/* Sleep ms milliseconds, or less when a stop signal comes. */
static void
nap(int ms)
{
	struct timespec ts;

	while (ms > 0 && !stop_signal) {
		int step = ms < 100 ? ms : 100;

		ts.tv_sec = 0;
		ts.tv_nsec = (long)step * 1000000;
		nanosleep(&ts, NULL);
		ms -= step;
	}
}

/* ---- flags ---- */

static int
parse_u64(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (s == NULL || s[0] < '0' || s[0] > '9')
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0')
		return -1;
	*out = v;
	return 0;
}

/* The filter flags into f (strings point into argv). Returns -1, or a
 * usage error's exit code. */
static int
filter_parse(const struct kbctl_args *a, Keybroker__V1__EventFilter *f)
{
	const char *since = kbctl_flag(a, "--since");
	const char *until = kbctl_flag(a, "--until");
	const char *res = kbctl_flag(a, "--result"), *s;
	int64_t now = kb_time_now_us();

	keybroker__v1__event_filter__init(f);
	if (since != NULL && kb_time_parse(since, now, &f->since_us) != 0)
		return kbctl_usage_error(a,
		    "bad --since \"%s\": a time in RFC 3339 "
		    "(2026-01-02T03:04:05Z) or relative (-15m, -2h, -7d)",
		    since);
	if (until != NULL && kb_time_parse(until, now, &f->until_us) != 0)
		return kbctl_usage_error(a,
		    "bad --until \"%s\": a time in RFC 3339 "
		    "(2026-01-02T03:04:05Z) or relative (-15m, -2h, -7d)",
		    until);
	if (since != NULL && until != NULL && f->since_us >= f->until_us)
		return kbctl_usage_error(a, "--since must be before --until");
	if (res != NULL && strcmp(res, "ok") != 0 && strcmp(res, "denied") != 0
	    && strcmp(res, "error") != 0 && strcmp(res, "started") != 0
	    && strcmp(res, "requested") != 0)
		return kbctl_usage_error(a,
		    "bad --result \"%s\": ok, denied, error, started or "
		    "requested",
		    res);
	if ((s = kbctl_flag(a, "--tenant")) != NULL)
		f->tenant_id = (char *)s;
	if ((s = kbctl_flag(a, "--env")) != NULL)
		f->environment = (char *)s;
	if ((s = kbctl_flag(a, "--method")) != NULL)
		f->method = (char *)s;
	if ((s = kbctl_flag(a, "--actor")) != NULL)
		f->actor = (char *)s;
	if (res != NULL)
		f->result = (char *)res;
	if ((s = kbctl_flag(a, "--request")) != NULL)
		f->request_id = (char *)s;
	return -1;
}

/* ---- calls ---- */

static int
call_events(struct kbctl *k, const Keybroker__V1__EventFilter *f,
    uint64_t after, uint32_t page_size, Keybroker__V1__ListEventsResponse **out)
{
	Keybroker__V1__ListEventsRequest req =
	    KEYBROKER__V1__LIST_EVENTS_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	int rc;

	req.filter = (Keybroker__V1__EventFilter *)f;
	req.after_seq = after;
	req.page_size = page_size;
	rc = kbctl_call(k, KB_METHOD_LIST_EVENTS, &req.base,
	    &keybroker__v1__list_events_response__descriptor, &m);
	*out = (Keybroker__V1__ListEventsResponse *)m;
	return rc;
}

static int
call_checkpoints(struct kbctl *k, uint64_t after, uint32_t page_size,
    Keybroker__V1__ListCheckpointsResponse **out)
{
	Keybroker__V1__ListCheckpointsRequest req =
	    KEYBROKER__V1__LIST_CHECKPOINTS_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	int rc;

	req.after_seq = after;
	req.page_size = page_size;
	rc = kbctl_call(k, KB_METHOD_LIST_CHECKPOINTS, &req.base,
	    &keybroker__v1__list_checkpoints_response__descriptor, &m);
	*out = (Keybroker__V1__ListCheckpointsResponse *)m;
	return rc;
}

/* The first event (or checkpoint) with seq > after, in *seq (0: none).
 * Returns an exit code. */
static int
probe(struct kbctl *k, int checkpoints, uint64_t after, uint64_t *seq)
{
	Keybroker__V1__ListEventsResponse *e = NULL;
	Keybroker__V1__ListCheckpointsResponse *c = NULL;
	int rc;

	*seq = 0;
	if (checkpoints) {
		if ((rc = call_checkpoints(k, after, 1, &c)) != KBCTL_EXIT_OK)
			return rc;
		if (c->n_checkpoints > 0)
			*seq = c->checkpoints[0]->seq;
		kb_wire_free(&c->base);
	} else {
		Keybroker__V1__EventFilter none =
		    KEYBROKER__V1__EVENT_FILTER__INIT;

		if ((rc = call_events(k, &none, after, 1, &e)) != KBCTL_EXIT_OK)
			return rc;
		if (e->n_events > 0)
			*seq = e->events[0]->seq;
		kb_wire_free(&e->base);
	}
	return KBCTL_EXIT_OK;
}

/* The newest sequence number of the events this certificate may read (or
 * of the checkpoints), 0 when there are none. The API lists forward only:
 * an exponential then a binary search, about 2 log2(N) small calls. */
static int
newest_seq(struct kbctl *k, int checkpoints, uint64_t *out)
{
	uint64_t lo, hi, d = 1, s, mid;
	int rc;

	*out = 0;
	if ((rc = probe(k, checkpoints, 0, &lo)) != KBCTL_EXIT_OK || lo == 0)
		return rc;
	/* lo exists; find hi with nothing after it. */
	for (;;) {
		if ((rc = probe(k, checkpoints, lo + d, &s)) != KBCTL_EXIT_OK)
			return rc;
		if (s == 0) {
			hi = lo + d;
			break;
		}
		lo = s;
		d *= 2;
	}
	while (hi > lo) {
		mid = lo + (hi - lo + 1) / 2;
		if ((rc = probe(k, checkpoints, mid - 1, &s)) != KBCTL_EXIT_OK)
			return rc;
		if (s != 0)
			lo = s;
		else
			hi = mid - 1;
	}
	*out = lo;
	return KBCTL_EXIT_OK;
}

/* ---- events as text ---- */

static const char *const event_headers[] = {"SEQ", "TIME", "ACTOR", "ROLE",
    "METHOD", "TENANT", "ENV", "KEY", "RESULT", "REASON"};
#define EVENT_NCOLS 10

/* At most REASON_COLS bytes of s, cut at a character boundary, "..." when
 * cut. */
static void
reason_cut(const char *s, char *out, size_t len)
{
	size_t n = strlen(s);

	if (n <= REASON_COLS) {
		snprintf(out, len, "%s", s);
		return;
	}
	n = REASON_COLS - 3;
	while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
		n--;
	snprintf(out, len, "%.*s...", (int)n, s);
}

static int
event_row(struct kbctl_table *t, const Keybroker__V1__Event *e)
{
	char seq[24], tm[40], reason[REASON_COLS + 8];
	const char *cells[EVENT_NCOLS];

	snprintf(seq, sizeof(seq), "%" PRIu64, e->seq);
	reason_cut(e->reason, reason, sizeof(reason));
	cells[0] = seq;
	cells[1] = kbctl_time_sec(e->time_us, tm, sizeof(tm));
	cells[2] = kbctl_or_dash(e->actor);
	cells[3] = kbctl_or_dash(e->role);
	cells[4] = kbctl_or_dash(e->method);
	cells[5] = kbctl_or_dash(e->tenant_id);
	cells[6] = kbctl_or_dash(e->environment);
	cells[7] = kbctl_or_dash(e->key_id);
	cells[8] = kbctl_or_dash(e->result);
	cells[9] = kbctl_or_dash(e->reason[0] != '\0' ? reason : "");
	return kbctl_table_add(t, cells);
}

/* One event as tail prints it, with its newline (malloc'd; NULL when out
 * of memory): a JSON object (--json), or "SEQ TIME ACTOR ROLE METHOD
 * TENANT ENV KEY RESULT [REASON]" with "-" for empty fields. */
static char *
event_line(const struct kbctl *k, const Keybroker__V1__Event *e)
{
	const char *f[8] = {e->actor, e->role, e->method, e->tenant_id,
	    e->environment, e->key_id, e->result, e->reason};
	char *buf = NULL, *line, *clean[8] = {NULL}, tm[40];
	size_t i, n;
	json_t *j;

	if (k->json) {
		if ((j = audit_export_event_json(e, 0)) == NULL)
			return NULL;
		buf = json_dumps(j, JSON_COMPACT);
		json_decref(j);
		if (buf == NULL || asprintf(&line, "%s\n", buf) < 0)
			line = NULL;
		free(buf);
		return line;
	}
	for (i = 0; i < 8; i++) {
		n = strlen(kbctl_or_dash(f[i])) + 1;
		if ((clean[i] = malloc(n)) == NULL)
			goto out;
		kbctl_sanitize(kbctl_or_dash(f[i]), clean[i], n);
	}
	if (asprintf(&buf, "%" PRIu64 " %s %s %s %s %s %s %s %s%s%s\n", e->seq,
	        kb_time_format(e->time_us, tm, sizeof(tm)), clean[0], clean[1],
	        clean[2], clean[3], clean[4], clean[5], clean[6],
	        e->reason[0] != '\0' ? " " : "",
	        e->reason[0] != '\0' ? clean[7] : "")
	    < 0)
		buf = NULL;
out:
	for (i = 0; i < 8; i++)
		free(clean[i]);
	return buf;
}

/* ---- audit list ---- */

int
kbctl_cmd_audit_list(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__EventFilter f;
	Keybroker__V1__ListEventsResponse *resp = NULL;
	const char *ps = kbctl_flag(a, "--page-size");
	const char *af = kbctl_flag(a, "--after");
	int all = kbctl_flag(a, "--all") != NULL, more = 0, rc;
	uint64_t after = 0, v = 0, next;
	uint32_t page = 0;
	struct kbctl_table *t = NULL;
	json_t *arr = NULL, *o;
	size_t i;

	if ((rc = filter_parse(a, &f)) >= 0)
		return rc;
	if (af != NULL && parse_u64(af, &after) != 0)
		return kbctl_usage_error(
		    a, "bad --after \"%s\": a sequence number", af);
	if (ps != NULL) {
		if (parse_u64(ps, &v) != 0 || v < 1 || v > PAGE_MAX)
			return kbctl_usage_error(a,
			    "bad --page-size \"%s\": a number from 1 to %d", ps,
			    PAGE_MAX);
		page = (uint32_t)v;
	}
	if (k->json ? (arr = json_array()) == NULL
	            : (t = kbctl_table_new(EVENT_NCOLS, event_headers)) == NULL)
		goto oom;
	next = after;
	for (;;) {
		if ((rc = call_events(k, &f, next, page, &resp))
		    != KBCTL_EXIT_OK)
			goto out;
		rc = KBCTL_EXIT_FAIL;
		for (i = 0; i < resp->n_events; i++) {
			if (arr != NULL ? (o = audit_export_event_json(
			                       resp->events[i], 0))
			                == NULL
			            || json_array_append_new(arr, o) != 0
			                : event_row(t, resp->events[i]) != 0)
				goto oom;
		}
		more = resp->more;
		if (more && resp->next_after_seq <= next) {
			fprintf(stderr,
			    "kbctl: the broker's next page starts at %" PRIu64
			    " again; stopping\n",
			    next);
			goto out;
		}
		next = resp->next_after_seq;
		kb_wire_free(&resp->base);
		resp = NULL;
		if (!all || !more)
			break;
	}
	if (arr != NULL) {
		o = json_object();
		kbctl_jset(o, "events", arr);
		arr = NULL;
		kbctl_jset(o, "next_after_seq", json_integer((json_int_t)next));
		kbctl_jset(o, "more", json_boolean(more));
		rc = kbctl_json_print(o);
		goto out;
	}
	rc = kbctl_table_done(t);
	t = NULL;
	if (rc == KBCTL_EXIT_OK && more)
		fprintf(stderr,
		    "kbctl: more events follow: add --all to list them all, or "
		    "--after %" PRIu64 " for the next page\n",
		    next);
	goto out;
oom:
	fprintf(stderr, "kbctl: out of memory\n");
	rc = KBCTL_EXIT_FAIL;
out:
	if (resp != NULL)
		kb_wire_free(&resp->base);
	json_decref(arr);
	kbctl_table_free(t);
	return rc;
}

/* ---- audit tail ---- */

/* The last n events, formatted, oldest first. */
struct ring {
	char **line;
	size_t cap, n, start;
	uint64_t last_seq; /* of the newest event pushed (0: none) */
};

static void
ring_clear(struct ring *r)
{
	size_t i;

	for (i = 0; i < r->n; i++)
		free(r->line[(r->start + i) % r->cap]);
	r->n = 0;
	r->start = 0;
	r->last_seq = 0;
}

/* Takes `line`. */
static void
ring_push(struct ring *r, char *line, uint64_t seq)
{
	if (r->cap == 0) {
		free(line);
	} else if (r->n < r->cap) {
		r->line[(r->start + r->n++) % r->cap] = line;
	} else {
		free(r->line[r->start]);
		r->line[r->start] = line;
		r->start = (r->start + 1) % r->cap;
	}
	r->last_seq = seq;
}

/* Print an event line and record it: stdout flushed first, then the state
 * file (a kill between the two prints that one event again on restart,
 * never skips it). Returns -1, or an exit code. */
static int
emit(const char *line, uint64_t seq, const char *state)
{
	enum kb_err e;

	if (fputs(line, stdout) == EOF || fflush(stdout) != 0) {
		perror("kbctl: writing the output");
		return KBCTL_EXIT_FAIL;
	}
	if (state != NULL && (e = audit_state_write(state, seq)) != KB_OK)
		return kbctl_err(e, KBCTL_EXIT_FAIL);
	return -1;
}

/* The last r->cap events matching f into r, and in *cursor where a
 * follow goes on from: no event after it is older than the scan. The
 * window grows backwards from the newest event until it holds enough. */
static int
tail_window(struct kbctl *k, const Keybroker__V1__EventFilter *f,
    struct ring *r, uint64_t *cursor)
{
	Keybroker__V1__ListEventsResponse *resp = NULL;
	uint64_t head, start, w, after, total;
	size_t i;
	int rc, more;
	char *line;

	if ((rc = newest_seq(k, 0, &head)) != KBCTL_EXIT_OK)
		return rc;
	*cursor = head;
	if (r->cap == 0)
		return KBCTL_EXIT_OK;
	w = r->cap * 4 > 1000 ? r->cap * 4 : 1000;
	for (;;) {
		start = head > w ? head - w : 0;
		ring_clear(r);
		total = 0;
		after = start;
		for (;;) {
			if ((rc = call_events(k, f, after, PAGE_MAX, &resp))
			    != KBCTL_EXIT_OK)
				return rc;
			for (i = 0; i < resp->n_events; i++) {
				if ((line = event_line(k, resp->events[i]))
				    == NULL) {
					kb_wire_free(&resp->base);
					fprintf(
					    stderr, "kbctl: out of memory\n");
					return KBCTL_EXIT_FAIL;
				}
				ring_push(r, line, resp->events[i]->seq);
				total++;
			}
			after = resp->next_after_seq;
			more = resp->more && resp->n_events > 0;
			kb_wire_free(&resp->base);
			if (!more)
				break;
		}
		if (total >= r->cap || start == 0 || stop_signal)
			break;
		w *= 4;
	}
	/* Nothing in (last match, head] matched: go on after both. */
	*cursor = r->last_seq > head ? r->last_seq : head;
	return KBCTL_EXIT_OK;
}

/* Codes a retry cannot change: stop (exit 1). */
static int
stream_status_final(grpc_status_code c)
{
	switch (c) {
	case GRPC_STATUS_INVALID_ARGUMENT:
	case GRPC_STATUS_NOT_FOUND:
	case GRPC_STATUS_ALREADY_EXISTS:
	case GRPC_STATUS_PERMISSION_DENIED:
	case GRPC_STATUS_UNAUTHENTICATED:
	case GRPC_STATUS_FAILED_PRECONDITION:
	case GRPC_STATUS_OUT_OF_RANGE:
	case GRPC_STATUS_UNIMPLEMENTED:
	case GRPC_STATUS_DATA_LOSS: return 1;
	case GRPC_STATUS_OK:
	case GRPC_STATUS_CANCELLED:
	case GRPC_STATUS_UNKNOWN:
	case GRPC_STATUS_DEADLINE_EXCEEDED:
	case GRPC_STATUS_RESOURCE_EXHAUSTED:
	case GRPC_STATUS_ABORTED:
	case GRPC_STATUS_INTERNAL:
	case GRPC_STATUS_UNAVAILABLE:
	case GRPC_STATUS__DO_NOT_USE: break;
	}
	return 0;
}

int
kbctl_events_follow(struct kbctl *k, const Keybroker__V1__EventFilter *f,
    uint64_t cursor, int from_now,
    int (*on_event)(struct kbctl *k, const Keybroker__V1__Event *ev, void *arg),
    void *arg)
{
	Keybroker__V1__TailEventsRequest req =
	    KEYBROKER__V1__TAIL_EVENTS_REQUEST__INIT;
	struct kb_client_stream *s = NULL;
	struct kb_status st;
	ProtobufCMessage *m;
	Keybroker__V1__Event *ev;
	enum kb_stream_next r;
	enum kb_err e;
	int64_t opened;
	int backoff = 0, rc, broke = 0;
	int several = strchr(k->opts.addr, ',') != NULL;
	char msg[sizeof(st.message)], was[300];

	/* "From now on" is after the newest event, fixed here: a stream
	 * that breaks before its first event resumes from that, not from a
	 * later "now". */
	if (from_now && cursor == 0
	    && (rc = newest_seq(k, 0, &cursor)) != KBCTL_EXIT_OK)
		return rc;
	req.filter = (Keybroker__V1__EventFilter *)f;
	while (!stop_signal) {
		/* after_seq 0 would mean "from now on": from the start
		 * instead, as nothing has been seen. */
		req.after_seq = cursor;
		req.from_start = cursor == 0;
		if ((e = kb_client_stream_open(k->client, KB_METHOD_TAIL_EVENTS,
		         &req.base, &keybroker__v1__event__descriptor, 0, &s,
		         &st))
		    != KB_OK)
			return kbctl_fail_status(&st);
		opened = kb_time_mono_us();
		if (broke && several) {
			kbctl_sanitize(kb_client_addr(k->client), msg, 200);
			fprintf(stderr,
			    "kbctl: following on %s, after event %" PRIu64 "\n",
			    msg, cursor);
		}
		for (;;) {
			r = kb_client_stream_next(s, TAIL_POLL_MS, &m, &st);
			if (r == KB_STREAM_MESSAGE && stop_signal)
				kb_wire_free(m); /* not handed over */
			if (r == KB_STREAM_ENDED || stop_signal)
				break;
			if (r == KB_STREAM_WAITING) {
				if (backoff > 0
				    && kb_time_mono_us() - opened
				        > STREAM_STABLE_US)
					backoff = 0;
				continue;
			}
			ev = (Keybroker__V1__Event *)m;
			rc = -1;
			if (ev->seq > cursor) {
				rc = on_event(k, ev, arg);
				cursor = ev->seq;
			}
			kb_wire_free(m);
			backoff = 0;
			if (rc >= 0) {
				kb_client_stream_close(s);
				return rc;
			}
		}
		kb_client_stream_close(s);
		s = NULL;
		if (stop_signal)
			break;
		if (stream_status_final(st.code))
			return kbctl_fail_status(&st);
		/* With several brokers the first try goes at once, to the
		 * next that answers; then (and with one) a growing wait. */
		if (several && !broke)
			backoff = 0;
		else
			backoff = backoff == 0
			    ? BACKOFF_FIRST_MS
			    : (backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS
			                                    : backoff * 2);
		broke = 1;
		kbctl_sanitize(st.message, msg, sizeof(msg));
		kbctl_sanitize(kb_client_addr(k->client), was, sizeof(was));
		fprintf(stderr,
		    "kbctl: the stream from %s ended (%s: %s); reconnecting in "
		    "%.2g s, after event %" PRIu64 "\n",
		    was, kb_grpc_status_name(st.code), msg, backoff / 1000.0,
		    cursor);
		nap(backoff);
		if (stop_signal)
			break;
		if (several)
			continue; /* each stream open retries every broker */
		/* A new channel: gRPC's own reconnection backoff on the old
		 * one can grow to minutes. */
		kb_client_close(k->client);
		k->client = NULL;
		if ((e = kb_client_open(&k->opts, &k->client)) != KB_OK)
			return kbctl_err(e, KBCTL_EXIT_FAIL);
	}
	return KBCTL_EXIT_OK;
}

/* tail -f's handler: print the event's line and record its seq. */
static int
tail_event(struct kbctl *k, const Keybroker__V1__Event *ev, void *arg)
{
	const char *state = arg;
	char *line;
	int rc;

	if ((line = event_line(k, ev)) == NULL) {
		fprintf(stderr, "kbctl: out of memory\n");
		return KBCTL_EXIT_FAIL;
	}
	rc = emit(line, ev->seq, state);
	free(line);
	return rc;
}

/* Follow TailEvents after `cursor` until a stop signal (exit 0) or a
 * refusal (exit 1). A broken stream is opened again after the last event
 * printed: no gap, no duplicate. */
static int
tail_follow(struct kbctl *k, const Keybroker__V1__EventFilter *f,
    uint64_t cursor, const char *state)
{
	return kbctl_events_follow(
	    k, f, cursor, 0, tail_event, (void *)(uintptr_t)state);
}

int
kbctl_cmd_audit_tail(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__EventFilter f;
	Keybroker__V1__ListEventsResponse *resp = NULL;
	const char *nf = kbctl_flag(a, "--lines"),
	           *af = kbctl_flag(a, "--after");
	const char *state = kbctl_flag(a, "--state-file");
	int follow = kbctl_flag(a, "--follow") != NULL;
	int from_start = kbctl_flag(a, "--from-start") != NULL, found = 0, rc;
	uint64_t n = TAIL_DEFAULT, cursor = 0, after = 0;
	struct ring r;
	enum kb_err e;
	size_t i;

	memset(&r, 0, sizeof(r));
	if ((rc = filter_parse(a, &f)) >= 0)
		return rc;
	if (nf != NULL && (parse_u64(nf, &n) != 0 || n > TAIL_MAX))
		return kbctl_usage_error(
		    a, "bad -n \"%s\": a number from 0 to %d", nf, TAIL_MAX);
	if (af != NULL && parse_u64(af, &after) != 0)
		return kbctl_usage_error(
		    a, "bad --after \"%s\": a sequence number", af);
	if (!follow && (af != NULL || from_start || state != NULL))
		return kbctl_usage_error(a,
		    "--after, --from-start and --state-file go with -f (to "
		    "list from a sequence number: 'kbctl audit list --after "
		    "SEQ')");
	if (af != NULL && from_start)
		return kbctl_usage_error(
		    a, "--after and --from-start: give one of them");
	if (follow && nf != NULL && (af != NULL || from_start))
		return kbctl_usage_error(a,
		    "-n starts at the last events: not with --after or "
		    "--from-start");
	stop_signals_catch();
	if (state != NULL
	    && (e = audit_state_read(state, &cursor, &found)) != KB_OK)
		return kbctl_err(e, KBCTL_EXIT_FAIL);
	if (found || af != NULL || from_start) {
		if (!found)
			cursor = after;
		/* One call first: an unreachable broker, a refusal or a bad
		 * filter stops here (exit 1); once following, kbctl retries. */
		if ((rc = call_events(k, &f, cursor, 1, &resp))
		    != KBCTL_EXIT_OK)
			goto out;
	} else {
		/* -f alone: from now on (after the newest event); -n N: the
		 * last N first. */
		r.cap = follow && nf == NULL ? 0 : (size_t)n;
		if (r.cap > 0
		    && (r.line = calloc(r.cap, sizeof(char *))) == NULL) {
			fprintf(stderr, "kbctl: out of memory\n");
			return KBCTL_EXIT_FAIL;
		}
		if ((rc = tail_window(k, &f, &r, &cursor)) != KBCTL_EXIT_OK)
			goto out;
		for (i = 0; i < r.n; i++)
			if ((rc = emit(r.line[(r.start + i) % r.cap], 0, NULL))
			    >= 0)
				goto out;
		/* Where the follow starts, recorded before it does. */
		if (follow && state != NULL && cursor > 0
		    && (e = audit_state_write(state, cursor)) != KB_OK) {
			rc = kbctl_err(e, KBCTL_EXIT_FAIL);
			goto out;
		}
	}
	rc = follow ? tail_follow(k, &f, cursor, state) : KBCTL_EXIT_OK;
out:
	if (resp != NULL)
		kb_wire_free(&resp->base);
	ring_clear(&r);
	free(r.line);
	return rc;
}

/* ---- reading the whole log, in order, up to a head ---- */

/* Events and checkpoints merged in log order, up to `head`: a checkpoint
 * right after the event with its seq, or where that seq would be. */
struct log_reader {
	struct kbctl *k;
	uint64_t head;
	Keybroker__V1__EventFilter none;
	Keybroker__V1__ListEventsResponse *ev;
	Keybroker__V1__ListCheckpointsResponse *cp;
	size_t ei, ci;
	uint64_t ev_after, cp_after;
	int ev_end, cp_end;
};

/* Fix the head: the newest event, or the newest checkpoint if that is
 * newer (its events were removed: the checkpoint must be in). A checkpoint
 * written later covers at least this head and is left out. */
static int
log_reader_start(struct kbctl *k, struct log_reader *r)
{
	uint64_t hc = 0;
	int rc;

	memset(r, 0, sizeof(*r));
	r->k = k;
	keybroker__v1__event_filter__init(&r->none);
	if ((rc = newest_seq(k, 1, &hc)) != KBCTL_EXIT_OK
	    || (rc = newest_seq(k, 0, &r->head)) != KBCTL_EXIT_OK)
		return rc;
	if (hc > r->head)
		r->head = hc;
	return KBCTL_EXIT_OK;
}

static void
log_reader_done(struct log_reader *r)
{
	if (r->ev != NULL)
		kb_wire_free(&r->ev->base);
	if (r->cp != NULL)
		kb_wire_free(&r->cp->base);
	r->ev = NULL;
	r->cp = NULL;
}

/* The next item: 1 with *ev or *cp set (valid until the next call), 0 at
 * the end, -1 on a failure (said on stderr). */
static int
log_reader_next(struct log_reader *r, const Keybroker__V1__Event **ev,
    const Keybroker__V1__Checkpoint **cp)
{
	const Keybroker__V1__Event *e = NULL;
	const Keybroker__V1__Checkpoint *c = NULL;

	*ev = NULL;
	*cp = NULL;
	while (!r->ev_end && (r->ev == NULL || r->ei == r->ev->n_events)) {
		if (r->ev != NULL) {
			int more = r->ev->more && r->ev->n_events > 0;

			kb_wire_free(&r->ev->base);
			r->ev = NULL;
			if (!more) {
				r->ev_end = 1;
				break;
			}
		}
		if (call_events(r->k, &r->none, r->ev_after, PAGE_MAX, &r->ev)
		    != KBCTL_EXIT_OK)
			return -1;
		r->ei = 0;
		if (r->ev->n_events > 0)
			r->ev_after = r->ev->events[r->ev->n_events - 1]->seq;
	}
	while (!r->cp_end && (r->cp == NULL || r->ci == r->cp->n_checkpoints)) {
		if (r->cp != NULL) {
			int more = r->cp->more && r->cp->n_checkpoints > 0;

			kb_wire_free(&r->cp->base);
			r->cp = NULL;
			if (!more) {
				r->cp_end = 1;
				break;
			}
		}
		if (call_checkpoints(r->k, r->cp_after, PAGE_MAX, &r->cp)
		    != KBCTL_EXIT_OK)
			return -1;
		r->ci = 0;
		if (r->cp->n_checkpoints > 0)
			r->cp_after =
			    r->cp->checkpoints[r->cp->n_checkpoints - 1]->seq;
	}
	if (!r->ev_end && (e = r->ev->events[r->ei])->seq > r->head) {
		r->ev_end = 1;
		e = NULL;
	}
	if (!r->cp_end && (c = r->cp->checkpoints[r->ci])->seq > r->head) {
		r->cp_end = 1;
		c = NULL;
	}
	if (e == NULL && c == NULL)
		return 0;
	if (e != NULL && (c == NULL || e->seq <= c->seq)) {
		*ev = e;
		r->ei++;
	} else {
		*cp = c;
		r->ci++;
	}
	return 1;
}

/* The broker's audit key; its fingerprint is checked against the PEM. */
static int
audit_key_get(struct kbctl *k, Keybroker__V1__AuditKey **out)
{
	Keybroker__V1__GetAuditKeyRequest req =
	    KEYBROKER__V1__GET_AUDIT_KEY_REQUEST__INIT;
	Keybroker__V1__AuditKey *x;
	ProtobufCMessage *m = NULL;
	EVP_PKEY *pk = NULL;
	char fp[65];
	enum kb_err e;
	int rc;

	*out = NULL;
	if ((rc = kbctl_call(k, KB_METHOD_GET_AUDIT_KEY, &req.base,
	         &keybroker__v1__audit_key__descriptor, &m))
	    != KBCTL_EXIT_OK)
		return rc;
	x = (Keybroker__V1__AuditKey *)m;
	if ((e = audit_export_key_load(x->public_key_pem, &pk, fp)) != KB_OK) {
		kb_wire_free(&x->base);
		return kbctl_err(e, KBCTL_EXIT_FAIL);
	}
	EVP_PKEY_free(pk);
	if (strcasecmp(fp, x->fingerprint) != 0) {
		fprintf(stderr,
		    "kbctl: the broker says its audit key's fingerprint is "
		    "%.64s, but the public key it sent has %s\n",
		    x->fingerprint, fp);
		kb_wire_free(&x->base);
		return KBCTL_EXIT_FAIL;
	}
	*out = x;
	return KBCTL_EXIT_OK;
}

/* Every key the log has used (NULL in *out from a broker that cannot
 * list them: then only the key in force is in the header). */
static int
audit_keys_get(struct kbctl *k, Keybroker__V1__ListAuditKeysResponse **out)
{
	Keybroker__V1__ListAuditKeysRequest req =
	    KEYBROKER__V1__LIST_AUDIT_KEYS_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	struct kb_status st;

	*out = NULL;
	if (kb_client_call(k->client, KB_METHOD_LIST_AUDIT_KEYS, &req.base,
	        &keybroker__v1__list_audit_keys_response__descriptor, &m, &st)
	    != KB_OK) {
		if (st.code == GRPC_STATUS_UNIMPLEMENTED)
			return KBCTL_EXIT_OK;
		return kbctl_fail_status(&st);
	}
	*out = (Keybroker__V1__ListAuditKeysResponse *)m;
	return KBCTL_EXIT_OK;
}

/* ---- audit export ---- */

/* One item as a line of f; decrefs j. Returns 0, or -1. */
static int
write_item(FILE *f, json_t *j)
{
	int r = -1;

	if (j != NULL && json_dumpf(j, f, JSON_COMPACT) == 0
	    && fputc('\n', f) != EOF)
		r = 0;
	json_decref(j);
	return r;
}

/* What an export or an online verification saw: for the warnings. */
struct log_seen {
	uint64_t events, first, last, checkpoints;
	uint64_t gap_from, gap_to, gaps;
};

static void
log_seen_event(struct log_seen *s, uint64_t seq)
{
	uint64_t want = s->events > 0 ? s->last + 1 : 1;

	if (seq > want) {
		if (s->gaps++ == 0) {
			s->gap_from = want;
			s->gap_to = seq - 1;
		}
	}
	if (s->events++ == 0)
		s->first = seq;
	s->last = seq;
}

int
kbctl_cmd_audit_export(struct kbctl *k, const struct kbctl_args *a)
{
	const char *path = kbctl_flag(a, "--out");
	int force = kbctl_flag(a, "--force") != NULL, fd = -1, rc, n;
	Keybroker__V1__AuditKey *key = NULL;
	Keybroker__V1__ListAuditKeysResponse *all = NULL;
	const Keybroker__V1__Event *ev;
	const Keybroker__V1__Checkpoint *cp;
	struct log_reader r;
	struct log_seen seen;
	struct stat sb;
	char *tmp = NULL;
	FILE *f = NULL;
	json_t *o;

	memset(&r, 0, sizeof(r));
	memset(&seen, 0, sizeof(seen));
	if (path[0] == '\0')
		return kbctl_usage_error(a, "--out needs a file name");
	if (!force && lstat(path, &sb) == 0)
		return kbctl_usage_error(a,
		    "--out %s exists; it is left alone (--force replaces it)",
		    path);
	if (force && lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
		return kbctl_usage_error(a, "--out %s is a directory", path);
	stop_signals_catch();
	if ((rc = audit_key_get(k, &key)) != KBCTL_EXIT_OK
	    || (rc = audit_keys_get(k, &all)) != KBCTL_EXIT_OK
	    || (rc = log_reader_start(k, &r)) != KBCTL_EXIT_OK)
		goto out;
	rc = KBCTL_EXIT_FAIL;
	if ((fd = kbctl_tmp_beside(path, &tmp)) < 0)
		goto out;
	if ((f = fdopen(fd, "w")) == NULL) {
		fprintf(stderr, "kbctl: cannot create %s: %s\n", tmp,
		    strerror(errno));
		close(fd);
		goto out; /* out: unlinks tmp */
	}
	fd = -1;
	if (write_item(
	        f, audit_export_header_json(key, all, kb_time_now_us(), r.head))
	    != 0)
		goto write_fail;
	while ((n = log_reader_next(&r, &ev, &cp)) > 0 && !stop_signal) {
		if (ev != NULL) {
			log_seen_event(&seen, ev->seq);
			o = audit_export_event_json(ev, 1);
		} else {
			seen.checkpoints++;
			o = audit_export_checkpoint_json(cp);
		}
		if (write_item(f, o) != 0)
			goto write_fail;
	}
	if (stop_signal) {
		fprintf(stderr, "kbctl: interrupted; no export written\n");
		rc = KBCTL_EXIT_INTERRUPTED;
		goto out;
	}
	if (n < 0)
		goto out;
	if (fflush(f) != 0 || ferror(f) || fsync(fileno(f)) != 0)
		goto write_fail;
	if (fclose(f) != 0) {
		f = NULL;
		goto write_fail;
	}
	f = NULL;
	if (kbctl_tmp_publish(tmp, path, force) != 0)
		goto out;
	free(tmp);
	tmp = NULL;
	if (seen.gaps > 0 || (seen.events > 0 && seen.first != 1))
		fprintf(stderr,
		    "kbctl: warning: events %" PRIu64 "..%" PRIu64
		    " are not in the log the broker serves (removed, or not "
		    "visible to this certificate)%s: 'kbctl audit verify' will "
		    "say so\n",
		    seen.gaps > 0 ? seen.gap_from : 1,
		    seen.gaps > 0 ? seen.gap_to : seen.first - 1,
		    seen.gaps > 1 ? ", and more" : "");
	if (k->json) {
		o = json_object();
		kbctl_jset(o, "file", kbctl_jstr(path));
		kbctl_jset(o, "events", json_integer((json_int_t)seen.events));
		kbctl_jset(
		    o, "first_seq", json_integer((json_int_t)seen.first));
		kbctl_jset(o, "last_seq", json_integer((json_int_t)seen.last));
		kbctl_jset(o, "checkpoints",
		    json_integer((json_int_t)seen.checkpoints));
		kbctl_jset(o, "head_seq", json_integer((json_int_t)r.head));
		kbctl_jset(o, "fingerprint", kbctl_jstr(key->fingerprint));
		rc = kbctl_json_print(o);
	} else {
		printf("exported %" PRIu64 " events (%" PRIu64 "..%" PRIu64
		       ") and %" PRIu64 " checkpoints to %s\n",
		    seen.events, seen.first, seen.last, seen.checkpoints, path);
		rc = KBCTL_EXIT_OK;
	}
	goto out;
write_fail:
	fprintf(stderr, "kbctl: cannot write %s: %s\n", tmp,
	    errno != 0 ? strerror(errno) : "out of memory");
	rc = KBCTL_EXIT_FAIL;
out:
	if (f != NULL)
		fclose(f);
	if (tmp != NULL) {
		(void)unlink(tmp);
		free(tmp);
	}
	log_reader_done(&r);
	if (key != NULL)
		kb_wire_free(&key->base);
	if (all != NULL)
		kb_wire_free(&all->base);
	return rc;
}

/* ---- audit verify ---- */

/* "seq N METHOD TENANT[/ENV] by ACTOR (REQUEST_ID)", sanitized. */
static void
unfinished_format(const struct kb_audit_unfinished *u, char *out, size_t len)
{
	char m[sizeof(u->method)], t[sizeof(u->tenant)], e[sizeof(u->env)];
	char a[sizeof(u->actor)], r[sizeof(u->request_id)];

	kbctl_sanitize(u->method, m, sizeof(m));
	kbctl_sanitize(u->tenant, t, sizeof(t));
	kbctl_sanitize(u->env, e, sizeof(e));
	kbctl_sanitize(u->actor, a, sizeof(a));
	kbctl_sanitize(u->request_id, r, sizeof(r));
	snprintf(out, len, "seq %" PRIu64 " %s%s%s%s%s by %s (%s)", u->seq, m,
	    t[0] != '\0' ? " " : "", t, e[0] != '\0' ? "/" : "", e,
	    a[0] != '\0' ? a : "-", r[0] != '\0' ? r : "no request id");
}

/* Why a call was cut short (a KB_AUDIT_CUT_*): the note's words, and the
 * event that cut it (--json's cut_short_by). */
static const char *
cut_why(int cut)
{
	return cut == KB_AUDIT_CUT_AUDIT_OUTAGE
	    ? "its outcome was lost while the broker's audit log could not "
	      "write"
	    : "the broker stopped mid-call";
}

static const char *
cut_event(int cut)
{
	return cut == KB_AUDIT_CUT_AUDIT_OUTAGE ? "audit.recovered"
	                                        : "broker.start";
}

/* The state changes with no recorded outcome, after the verified line:
 * information, the log itself verified. */
static void
unfinished_print(const struct audit_export_report *rep)
{
	const struct kb_audit_unfinished *u = rep->unfinished_first;
	uint64_t intr = rep->unfinished_interrupted;
	uint64_t running = rep->unfinished - intr;
	char line[512];
	size_t i;

	if (rep->unfinished == 0)
		return;
	if (rep->unfinished == 1 && rep->unfinished_shown == 1) {
		unfinished_format(u, line, sizeof(line));
		printf("note: 1 state change started without a recorded "
		       "outcome (%s; check the state): %s\n",
		    u->interrupted ? cut_why(u->interrupted)
		                   : "it may still be running, or the broker "
		                     "stopped mid-call",
		    line);
		return;
	}
	printf("note: %" PRIu64 " state changes started without a recorded "
	       "outcome (",
	    rep->unfinished);
	if (running == 0)
		printf("cut short: the broker stopped, or its audit log "
		       "could not write, mid-call");
	else if (intr == 0)
		printf("they may still be running, or the broker stopped "
		       "mid-call");
	else
		printf("%" PRIu64 " cut short (the broker stopped, or its "
		       "audit log could not write, mid-call), %" PRIu64
		       " that may still be running",
		    intr, running);
	printf("; check the state):\n");
	for (i = 0; i < rep->unfinished_shown; i++) {
		unfinished_format(&u[i], line, sizeof(line));
		printf("  %s: %s\n", line,
		    u[i].interrupted ? cut_why(u[i].interrupted)
		                     : "may still be running");
	}
	if (rep->unfinished > rep->unfinished_shown)
		printf("  and %" PRIu64 " more\n",
		    rep->unfinished - rep->unfinished_shown);
	if (rep->unfinished_overflow > 0)
		printf("  (%" PRIu64 " of them counted when %d calls were "
		       "waiting for an outcome at once)\n",
		    rep->unfinished_overflow, KB_AUDIT_PENDING_MAX);
}

/* The same as a JSON array. */
static json_t *
unfinished_json(const struct audit_export_report *rep)
{
	const struct kb_audit_unfinished *u;
	json_t *arr = json_array(), *o;
	size_t i;

	for (i = 0; arr != NULL && i < rep->unfinished_shown; i++) {
		u = &rep->unfinished_first[i];
		if ((o = json_object()) == NULL) {
			json_decref(arr);
			return NULL;
		}
		kbctl_jset(o, "seq", json_integer((json_int_t)u->seq));
		kbctl_jset(o, "method", kbctl_jstr(u->method));
		kbctl_jset(o, "tenant_id", kbctl_jstr(u->tenant));
		kbctl_jset(o, "environment", kbctl_jstr(u->env));
		kbctl_jset(o, "actor", kbctl_jstr(u->actor));
		kbctl_jset(o, "request_id", kbctl_jstr(u->request_id));
		kbctl_jset(o, "interrupted", json_boolean(u->interrupted));
		if (u->interrupted)
			kbctl_jset(o, "cut_short_by",
			    json_string(cut_event(u->interrupted)));
		if (json_array_append_new(arr, o) != 0) {
			json_decref(arr);
			return NULL;
		}
	}
	return arr;
}

static int
report_print(const struct kbctl *k, const struct audit_export_report *rep,
    const char *source)
{
	char why[sizeof(rep->reason)];
	int uncovered = rep->ok && rep->covered_seq < rep->last_seq;
	uint64_t from = rep->covered_seq + 1;
	json_t *o;

	kbctl_sanitize(rep->reason, why, sizeof(why));
	if (k->json) {
		o = json_object();
		kbctl_jset(o, "verified", json_boolean(rep->ok));
		kbctl_jset(o, "source", kbctl_jstr(source));
		kbctl_jset(o, "events", json_integer((json_int_t)rep->events));
		kbctl_jset(
		    o, "first_seq", json_integer((json_int_t)rep->first_seq));
		kbctl_jset(
		    o, "last_seq", json_integer((json_int_t)rep->last_seq));
		kbctl_jset(o, "checkpoints",
		    json_integer((json_int_t)rep->checkpoints));
		kbctl_jset(o, "signed_through",
		    json_integer((json_int_t)rep->covered_seq));
		kbctl_jset(o, "fingerprint", kbctl_jstr(rep->fingerprint));
		kbctl_jset(o, "key_id", kbctl_jstr(rep->key_id));
		kbctl_jset(o, "key_pinned", json_boolean(rep->pinned));
		kbctl_jset(o, "key_rotations",
		    json_integer((json_int_t)rep->rotations));
		if (uncovered) {
			json_t *u = json_object();

			kbctl_jset(u, "from", json_integer((json_int_t)from));
			kbctl_jset(
			    u, "to", json_integer((json_int_t)rep->last_seq));
			kbctl_jset(o, "not_covered", u);
		} else {
			kbctl_jset(o, "not_covered", json_null());
		}
		kbctl_jset(o, "failed_seq",
		    rep->ok ? json_null() : json_integer((json_int_t)rep->seq));
		kbctl_jset(o, "failed_line",
		    rep->ok || rep->line == 0
		        ? json_null()
		        : json_integer((json_int_t)rep->line));
		kbctl_jset(
		    o, "reason", rep->ok ? json_null() : kbctl_jstr(why));
		/* Counted up to the first failure: shown only when verified. */
		kbctl_jset(o, "unfinished",
		    rep->ok ? unfinished_json(rep) : json_null());
		kbctl_jset(o, "unfinished_count",
		    rep->ok ? json_integer((json_int_t)rep->unfinished)
		            : json_null());
		kbctl_jset(o, "unfinished_interrupted",
		    rep->ok
		        ? json_integer((json_int_t)rep->unfinished_interrupted)
		        : json_null());
		kbctl_jset(o, "unfinished_overflow",
		    rep->ok ? json_integer((json_int_t)rep->unfinished_overflow)
		            : json_null());
		if (kbctl_json_print(o) != KBCTL_EXIT_OK)
			return KBCTL_EXIT_FAIL;
	} else if (rep->ok) {
		if (rep->checkpoints > 0)
			printf("verified: events %" PRIu64 "..%" PRIu64
			       " (%" PRIu64
			       " checkpoints; signed through %" PRIu64
			       "); audit key fingerprint %s\n",
			    rep->first_seq, rep->last_seq, rep->checkpoints,
			    rep->covered_seq, rep->fingerprint);
		else
			printf("verified: events %" PRIu64 "..%" PRIu64
			       " (0 checkpoints; none signed yet); audit key "
			       "fingerprint %s\n",
			    rep->first_seq, rep->last_seq, rep->fingerprint);
		if (rep->rotations > 0)
			printf(
			    "the audit key was rotated %" PRIu64 " time%s; "
			    "each new key was vouched for by the one before\n",
			    rep->rotations, rep->rotations == 1 ? "" : "s");
		if (!rep->pinned)
			printf("unpinned: the audit key was not pinned: this "
			       "shows the log is consistent with the key it "
			       "carries; to show it is the broker's, pass "
			       "--key-fingerprint from 'kbctl audit key' (or a "
			       "trusted earlier export)\n");
		unfinished_print(rep);
	} else if (rep->line > 0 && rep->seq > 0) {
		printf("FAILED at line %lu (seq %" PRIu64 "): %s\n", rep->line,
		    rep->seq, why);
	} else if (rep->line > 0) {
		printf("FAILED at line %lu: %s\n", rep->line, why);
	} else if (rep->seq > 0) {
		printf("FAILED at seq %" PRIu64 ": %s\n", rep->seq, why);
	} else {
		printf("FAILED: %s\n", why);
	}
	if (uncovered)
		fprintf(stderr,
		    "kbctl: warning: events %" PRIu64 "..%" PRIu64
		    " are not yet covered by a checkpoint\n",
		    from, rep->last_seq);
	return rep->ok ? KBCTL_EXIT_OK : KBCTL_EXIT_FAIL;
}

static int
verify_file(const struct kbctl *k, const char *path, const char *pin,
    int allow_unsigned)
{
	struct audit_export_verifier *v = NULL;
	struct audit_export_report rep;
	unsigned long line = 0;
	FILE *f;
	char *buf = NULL;
	size_t cap = 0;
	ssize_t n;
	enum kb_err e;
	int rc = KBCTL_EXIT_FAIL;

	f = strcmp(path, "-") == 0 ? stdin : fopen(path, "re");
	if (f == NULL) {
		fprintf(stderr, "kbctl: cannot read %s: %s\n", path,
		    strerror(errno));
		return KBCTL_EXIT_FAIL;
	}
	if ((e = audit_export_verifier_new(pin, &v)) != KB_OK) {
		rc = kbctl_err(e, KBCTL_EXIT_FAIL);
		goto out;
	}
	if (allow_unsigned)
		audit_export_verifier_allow_unsigned(v);
	while ((n = getline(&buf, &cap, f)) >= 0) {
		line++;
		if (n > 0 && buf[n - 1] == '\n')
			n--;
		if (audit_export_verifier_line(v, buf, (size_t)n, line) != 0)
			break;
	}
	if (ferror(f)) {
		fprintf(stderr, "kbctl: cannot read %s: %s\n", path,
		    strerror(errno));
		goto out;
	}
	audit_export_verifier_finish(v, line + 1, &rep);
	rc = report_print(k, &rep, path);
out:
	free(buf);
	audit_export_verifier_free(v);
	if (f != stdin)
		fclose(f);
	return rc;
}

static int
verify_online(struct kbctl *k, const char *pin, int allow_unsigned)
{
	struct audit_export_verifier *v = NULL;
	struct audit_export_report rep;
	Keybroker__V1__AuditKey *key = NULL;
	Keybroker__V1__ListAuditKeysResponse *all = NULL;
	const Keybroker__V1__Event *ev;
	const Keybroker__V1__Checkpoint *cp;
	struct log_reader r;
	json_t *o;
	enum kb_err e;
	int rc, n = 0, bad = 0;

	memset(&r, 0, sizeof(r));
	if ((rc = kbctl_connect(k)) >= 0)
		return rc;
	stop_signals_catch();
	if ((rc = audit_key_get(k, &key)) != KBCTL_EXIT_OK
	    || (rc = audit_keys_get(k, &all)) != KBCTL_EXIT_OK
	    || (rc = log_reader_start(k, &r)) != KBCTL_EXIT_OK)
		goto out;
	rc = KBCTL_EXIT_FAIL;
	if ((e = audit_export_verifier_new(pin, &v)) != KB_OK) {
		rc = kbctl_err(e, KBCTL_EXIT_FAIL);
		goto out;
	}
	if (allow_unsigned)
		audit_export_verifier_allow_unsigned(v);
	/* The same items an export holds, fed as they come. */
	o = audit_export_header_json(key, all, kb_time_now_us(), r.head);
	if (o == NULL)
		goto oom;
	bad = audit_export_verifier_item(v, o, 0) != 0;
	json_decref(o);
	while (!bad && (n = log_reader_next(&r, &ev, &cp)) > 0) {
		if (stop_signal) {
			rc = KBCTL_EXIT_INTERRUPTED;
			goto out;
		}
		o = ev != NULL ? audit_export_event_json(ev, 1)
		               : audit_export_checkpoint_json(cp);
		if (o == NULL)
			goto oom;
		bad = audit_export_verifier_item(v, o, 0) != 0;
		json_decref(o);
	}
	if (!bad && n < 0)
		goto out;
	audit_export_verifier_finish(v, 0, &rep);
	rc = report_print(k, &rep, kb_client_addr(k->client));
	goto out;
oom:
	fprintf(stderr, "kbctl: out of memory\n");
out:
	audit_export_verifier_free(v);
	log_reader_done(&r);
	if (key != NULL)
		kb_wire_free(&key->base);
	if (all != NULL)
		kb_wire_free(&all->base);
	return rc;
}

int
kbctl_cmd_audit_verify(struct kbctl *k, const struct kbctl_args *a)
{
	const char *fp = kbctl_flag(a, "--key-fingerprint");
	int online = kbctl_flag(a, "--online") != NULL;
	int unsigned_ok = kbctl_flag(a, "--allow-unsigned") != NULL;
	char pin[65];

	if (online == (a->argc > 0))
		return kbctl_usage_error(a,
		    online ? "give FILE or --online, not both"
		           : "missing FILE (an export), or --online");
	if (fp != NULL && audit_export_fp_normalize(fp, pin) != 0)
		return kbctl_usage_error(a,
		    "bad --key-fingerprint \"%s\": 64 hex digits (from 'kbctl "
		    "audit key')",
		    fp);
	if (online)
		return verify_online(k, fp != NULL ? pin : NULL, unsigned_ok);
	return verify_file(k, a->argv[0], fp != NULL ? pin : NULL, unsigned_ok);
}

/* ---- audit key ---- */

/* An audit key as `audit key`, `audit keys` and `audit rotate-key` print
 * it in --json (with its state and creation time when `listed`). */
static json_t *
audit_key_json(const Keybroker__V1__AuditKey *x, int listed)
{
	json_t *o = json_object();

	kbctl_jset(o, "key_id", kbctl_jstr(x->key_id));
	if (listed)
		kbctl_jset(o, "state", kbctl_jstr(x->state));
	kbctl_jset(o, "algorithm", kbctl_jstr(x->algorithm));
	kbctl_jset(o, "fingerprint", kbctl_jstr(x->fingerprint));
	if (listed)
		kbctl_jset(o, "create_time_us",
		    json_integer((json_int_t)x->create_time_us));
	kbctl_jset(o, "public_key_pem", kbctl_jstr(x->public_key_pem));
	return o;
}

int
kbctl_cmd_audit_key(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__AuditKey *x = NULL;
	const char *pem;
	int rc;

	(void)a;
	if ((rc = audit_key_get(k, &x)) != KBCTL_EXIT_OK)
		return rc;
	if (k->json) {
		rc = kbctl_json_print(audit_key_json(x, 0));
	} else {
		kbctl_kv("key_id", x->key_id);
		kbctl_kv("algorithm", x->algorithm);
		kbctl_kv("fingerprint", x->fingerprint);
		pem = x->public_key_pem;
		fputs(pem, stdout);
		if (pem[0] != '\0' && pem[strlen(pem) - 1] != '\n')
			putchar('\n');
	}
	kb_wire_free(&x->base);
	return rc;
}

/* ---- audit keys, rotate-key ---- */

int
kbctl_cmd_audit_keys(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__ListAuditKeysResponse *all = NULL;
	json_t *arr, *o;
	char t[40];
	size_t i;
	int rc;

	(void)a;
	if ((rc = audit_keys_get(k, &all)) != KBCTL_EXIT_OK)
		return rc;
	if (all == NULL) {
		fprintf(stderr,
		    "kbctl: this broker does not list its audit keys "
		    "(it is older than kbctl): use 'kbctl audit key'\n");
		return KBCTL_EXIT_FAIL;
	}
	if (k->json) {
		arr = json_array();
		for (i = 0; i < all->n_keys; i++) {
			json_array_append_new(
			    arr, audit_key_json(all->keys[i], 1));
		}
		o = json_object();
		kbctl_jset(o, "keys", arr);
		rc = kbctl_json_print(o);
	} else {
		printf("%-28s %-8s %-20s %s\n", "KEY", "STATE", "CREATED",
		    "FINGERPRINT");
		for (i = 0; i < all->n_keys; i++) {
			const Keybroker__V1__AuditKey *x = all->keys[i];

			printf("%-28s %-8s %-20.19s %s\n", x->key_id, x->state,
			    kb_time_format(x->create_time_us, t, sizeof(t)),
			    x->fingerprint);
		}
		rc = KBCTL_EXIT_OK;
	}
	kb_wire_free(&all->base);
	return rc;
}

int
kbctl_cmd_audit_rotate_key(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__RotateAuditKeyRequest req =
	    KEYBROKER__V1__ROTATE_AUDIT_KEY_REQUEST__INIT;
	Keybroker__V1__AuditKey *x;
	ProtobufCMessage *m = NULL;
	int rc;

	(void)a;
	if ((rc = kbctl_call(k, KB_METHOD_ROTATE_AUDIT_KEY, &req.base,
	         &keybroker__v1__audit_key__descriptor, &m))
	    != KBCTL_EXIT_OK)
		return rc;
	x = (Keybroker__V1__AuditKey *)m;
	if (k->json) {
		rc = kbctl_json_print(audit_key_json(x, 0));
	} else {
		printf("audit key rotated: %s now signs the checkpoints\n",
		    x->key_id);
		kbctl_kv("fingerprint", x->fingerprint);
		printf("pin the new fingerprint where you keep the old one; "
		       "old checkpoints still verify with the retired key\n");
	}
	kb_wire_free(m);
	return rc;
}
