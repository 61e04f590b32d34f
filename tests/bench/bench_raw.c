/* SPDX-License-Identifier: Apache-2.0 */
/* bench_raw.c: the ceilings, measured in-process through hsm/ on the same
 * token with the broker stopped: RSA-OAEP decrypts of a wrapped 32-byte DEK
 * (1, 2 and `workers` threads), re-wraps (decrypt + encrypt under a second
 * key, the broker's rewrap_threads), and the audit log's group commit
 * (broker/audit.c itself) alone and inside an emulated worker loop. */
#include "bench.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit.h"
#include "hsm.h"
#include "kb_secmem.h"
#include "kb_time.h"

#define RAW_KEY "kb-bench-raw-0"
#define RAW_KEY2 "kb-bench-raw-1"
#define RAW_SIGN "kb-bench-audit"
#define MAX_THREADS 256

struct rawctx {
	struct hsm *h;
	const char *alg;
	uint8_t *blob;
	size_t blob_len;
	struct audit *audit;
};

/* Threads run op() in a loop; calls that start and end inside the window
 * count. */
struct runner {
	pthread_barrier_t bar;
	double win_start, win_end;
	int (*op)(struct rawctx *c, unsigned idx);
	struct rawctx *c;
	uint64_t ok[MAX_THREADS], err[MAX_THREADS];
	struct bench_vec lat[MAX_THREADS];
	int want_lat;
};

struct targ {
	struct runner *r;
	unsigned idx;
};

static void *
runner_main(void *p)
{
	struct targ *a = p;
	struct runner *r = a->r;
	double t0, t1;
	int rc;

	pthread_barrier_wait(&r->bar);
	for (;;) {
		if ((t0 = bench_now()) >= r->win_end)
			break;
		rc = r->op(r->c, a->idx);
		t1 = bench_now();
		if (t0 < r->win_start || t1 > r->win_end)
			continue;
		if (rc != 0) {
			r->err[a->idx]++;
			continue;
		}
		r->ok[a->idx]++;
		if (r->want_lat)
			bench_vec_add(&r->lat[a->idx], t1 - t0);
	}
	return NULL;
}

/* `n` threads run op() for warm + secs seconds; *out gets the window's
 * rate (and latencies when want_lat). Any failed operation fails it. */
static enum kb_err
run(struct rawctx *c, int (*op)(struct rawctx *, unsigned), unsigned n,
    double warm, double secs, int want_lat, struct bench_lat *out)
{
	struct runner *r;
	struct targ a[MAX_THREADS];
	pthread_t th[MAX_THREADS];
	struct bench_cpu_mark m0, m1;
	unsigned i;

	memset(out, 0, sizeof(*out));
	if (n == 0 || n > MAX_THREADS)
		return kb_errf(
		    KB_ERR_INVALID_ARGUMENT, "1 to %d threads", MAX_THREADS);
	if ((r = calloc(1, sizeof(*r))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	r->op = op;
	r->c = c;
	r->want_lat = want_lat;
	pthread_barrier_init(&r->bar, NULL, n + 1);
	for (i = 0; i < n; i++) {
		a[i] = (struct targ){r, i};
		if (pthread_create(&th[i], NULL, runner_main, &a[i]) != 0) {
			/* Nothing sane is left to measure. */
			fprintf(
			    stderr, "kb-bench: cannot start thread %u\n", i);
			abort();
		}
	}
	r->win_start = bench_now() + warm;
	r->win_end = r->win_start + secs;
	pthread_barrier_wait(&r->bar);
	bench_sleep(r->win_start - bench_now());
	bench_cpu_mark(&m0, 0);
	bench_sleep(r->win_end - bench_now());
	bench_cpu_mark(&m1, 0);
	for (i = 0; i < n; i++)
		pthread_join(th[i], NULL);
	pthread_barrier_destroy(&r->bar);
	out->threads = n;
	out->secs = secs;
	for (i = 0; i < n; i++) {
		out->calls += r->ok[i];
		out->errors += r->err[i];
	}
	out->rate = (double)out->calls / secs;
	out->other =
	    bench_cpu_other(&m0, &m1, &out->self_cpu, &out->broker_cpu);
	bench_vec_stats(r->lat, n, out);
	free(r);
	if (out->errors > 0)
		return kb_errf(KB_ERR_HSM, "%llu of %llu operations failed",
		    (unsigned long long)out->errors,
		    (unsigned long long)(out->calls + out->errors));
	return KB_OK;
}

static int
op_decrypt(struct rawctx *c, unsigned idx)
{
	uint8_t *pt = NULL;
	size_t n = 0;
	enum kb_err e;

	(void)idx;
	e = hsm_decrypt(c->h, RAW_KEY, c->alg, c->blob, c->blob_len, &pt, &n);
	kb_freezero(pt, n);
	return e == KB_OK && n == 32 ? 0 : -1;
}

/* What dek_rewrap does: unwrap under the old key, wrap under the new. */
static int
op_rewrap(struct rawctx *c, unsigned idx)
{
	uint8_t *pt = NULL, *ct = NULL;
	size_t n = 0, cn = 0;
	enum kb_err e;

	(void)idx;
	e = hsm_decrypt(c->h, RAW_KEY, c->alg, c->blob, c->blob_len, &pt, &n);
	if (e == KB_OK)
		e = hsm_encrypt(c->h, RAW_KEY2, c->alg, pt, n, &ct, &cn);
	kb_freezero(pt, n);
	free(ct);
	return e == KB_OK && cn > 0 ? 0 : -1;
}

/* The record dispatch.c appends for a successful GetDataKey, with
 * fields of the usual sizes. */
static int
op_audit(struct rawctx *c, unsigned idx)
{
	struct audit_record r;
	char rid[40], peer[40];

	snprintf(rid, sizeof(rid), "r-%016llx",
	    (unsigned long long)kb_time_mono_us() * 131u + idx);
	snprintf(peer, sizeof(peer), "ipv4:127.0.0.1:%u", 40000 + idx);
	memset(&r, 0, sizeof(r));
	r.actor = "bench-load-0";
	r.role = "service";
	r.peer = peer;
	r.method = "GetDataKey";
	r.tenant = "bench";
	r.env = "load-0";
	r.key_id = "platform-0000000000000000";
	r.result = "ok";
	r.reason = "";
	r.request_id = rid;
	return audit_append(c->audit, &r, NULL) == KB_OK ? 0 : -1;
}

static int
op_decrypt_audit(struct rawctx *c, unsigned idx)
{
	return op_decrypt(c, idx) == 0 ? op_audit(c, idx) : -1;
}

static int64_t
now_us(void)
{
	return kb_time_now_us();
}

/* The audit phases: its own database in the bench directory, signed
 * checkpoints with a token key, as keybrokerd configures it. */
static enum kb_err
audit_phases(struct bench *b, struct rawctx *c, struct bench_raw *r)
{
	const struct bench_opts *o = b->o;
	struct audit_config ac;
	char path[700];
	uint64_t w0, w1, x0, x1, s0, s1;
	double secs = o->point_s;
	enum kb_err e;

	snprintf(path, sizeof(path), "%s/kb-bench-audit.db", b->dir);
	if ((e = hsm_rsa_generate(c->h, RAW_SIGN, 2048, HSM_USE_SIGN)) != KB_OK)
		return e;
	if (kbt_vfs_register() != 0) {
		e = kb_errf(KB_ERR_INTERNAL,
		    "cannot register the counting SQLite "
		    "VFS");
		goto out;
	}
	memset(&ac, 0, sizeof(ac));
	ac.path = path;
	ac.hsm = c->h;
	ac.sign_key_id = RAW_SIGN;
	ac.checkpoint_events = 1000;
	ac.checkpoint_interval_s = 60;
	ac.now_us = now_us;
	if ((e = audit_open(&ac, &c->audit)) != KB_OK)
		goto out;

	fprintf(stderr, "kb-bench: audit log alone, %u appenders...\n",
	    r->audit_threads);
	/* Events per commit: every event the span wrote (warm-up included)
	 * over every sync of the write-ahead log in the same span. */
	s0 = audit_last_seq(c->audit);
	kbt_vfs_counts(&w0, &x0);
	if ((e = run(
	         c, op_audit, r->audit_threads, o->warm_s, secs, 1, &r->audit))
	    != KB_OK)
		goto out;
	kbt_vfs_counts(&w1, &x1);
	s1 = audit_last_seq(c->audit);
	r->audit_per_commit =
	    w1 > w0 ? (double)(s1 - s0) / (double)(w1 - w0) : 0;

	fprintf(stderr, "kb-bench: audit log alone, 1 appender...\n");
	if ((e = run(c, op_audit, 1, o->warm_s, secs, 1, &r->audit_serial))
	    != KB_OK)
		goto out;

	fprintf(stderr,
	    "kb-bench: decrypt + audit append, %u threads "
	    "(keybrokerd's workers)...\n",
	    r->worker_threads);
	if ((e = run(c, op_decrypt_audit, r->worker_threads, o->warm_s, secs, 0,
	         &r->worker_audit))
	    != KB_OK)
		goto out;
	e = KB_OK;
out:
	audit_close(c->audit);
	c->audit = NULL;
	kbt_vfs_unregister();
	(void)hsm_key_destroy(c->h, RAW_SIGN);
	return e;
}

enum kb_err
bench_raw_run(struct bench *b, struct bench_raw *r)
{
	const struct bench_opts *o = b->o;
	struct hsm_config hc;
	struct rawctx c;
	uint8_t dek[32];
	const char *alg = NULL;
	unsigned i;
	enum kb_err e;

	memset(&c, 0, sizeof(c));
	memset(&hc, 0, sizeof(hc));
	hc.module_path = NULL; /* SoftHSMv2's, like keybrokerd */
	hc.token_uri = "pkcs11:token=keybroker";
	hc.pin_file = b->pin;
	hc.check_pin_mode = 1;
	hc.sessions = b->hsm_sessions;
	if ((e = hsm_open(&hc, &c.h)) != KB_OK)
		return e;
	{
		struct hsm_token_info ti;

		hsm_token_info(c.h, &ti);
		snprintf(b->token_info, sizeof(b->token_info),
		    "%s %s, token "
		    "'%s'",
		    ti.manufacturer, ti.model, ti.label);
	}
	if ((e = hsm_rsa_generate(c.h, RAW_KEY, 2048, HSM_USE_ENCRYPT)) != KB_OK
	    || (e = hsm_rsa_generate(c.h, RAW_KEY2, 2048, HSM_USE_ENCRYPT))
	        != KB_OK
	    || (e = hsm_oaep_probe(c.h, RAW_KEY, &alg)) != KB_OK
	    || (e = hsm_random(c.h, dek, sizeof(dek))) != KB_OK
	    || (e = hsm_encrypt(
	            c.h, RAW_KEY, alg, dek, sizeof(dek), &c.blob, &c.blob_len))
	        != KB_OK)
		goto out;
	kb_wipe(dek, sizeof(dek));
	c.alg = alg;
	snprintf(r->alg, sizeof(r->alg), "%s", alg);

	for (i = 0; i < 3; i++) {
		unsigned n = i == 0 ? 1 : i == 1 ? 2 : r->worker_threads;

		fprintf(stderr, "kb-bench: raw decrypt, %u thread(s)...\n", n);
		if ((e = run(&c, op_decrypt, n, o->warm_s, o->point_s, 1,
		         &r->decrypt[i]))
		    != KB_OK)
			goto out;
	}
	fprintf(stderr, "kb-bench: raw re-wrap, %u threads...\n",
	    r->rewrap_threads);
	if ((e = run(&c, op_rewrap, r->rewrap_threads, o->warm_s, o->point_s, 0,
	         &r->rewrap))
	    != KB_OK)
		goto out;
	e = audit_phases(b, &c, r);
out:
	free(c.blob);
	(void)hsm_key_destroy(c.h, RAW_KEY);
	(void)hsm_key_destroy(c.h, RAW_KEY2);
	hsm_close(c.h);
	return e;
}
