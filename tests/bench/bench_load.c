/* SPDX-License-Identifier: Apache-2.0 */
/* bench_load.c: GetDataKey load from C clients (one kb_client, so one
 * channel and one TLS connection, per thread), the admin calls kb-bench
 * needs, and the reader that checks data keys while a job runs. */
#include "bench.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/pkcs12.h>
#include <openssl/x509.h>

#include "kb_err_grpc.h"
#include "kb_secmem.h"
#include "keybroker.pb-c.h"

#define MAX_CLIENTS 1024
#define PFX_PASSWORD "kb-bench: not a secret"

/* ---- latency vectors ---- */

void
bench_vec_add(struct bench_vec *v, double secs)
{
	double us = secs * 1e6;

	if (v->n == v->cap) {
		size_t cap = v->cap ? v->cap * 2 : 4096;
		uint32_t *p = realloc(v->us, cap * sizeof(*p));

		if (p == NULL)
			return; /* a sample lost, not the run */
		v->us = p;
		v->cap = cap;
	}
	v->us[v->n++] = us > 4e9 ? 4000000000u : (uint32_t)us;
}

static int
cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

void
bench_vec_stats(struct bench_vec *v, unsigned nv, struct bench_lat *out)
{
	size_t total = 0, k = 0, i;
	uint32_t *all;
	unsigned j;

	for (j = 0; j < nv; j++)
		total += v[j].n;
	out->p50_ms = out->p99_ms = out->max_ms = 0;
	if (total > 0 && (all = malloc(total * sizeof(*all))) != NULL) {
		for (j = 0; j < nv; j++) {
			memcpy(all + k, v[j].us, v[j].n * sizeof(*all));
			k += v[j].n;
		}
		qsort(all, total, sizeof(*all), cmp_u32);
		/* Nearest rank. */
		i = (total * 50 + 99) / 100;
		out->p50_ms = all[i ? i - 1 : 0] / 1000.0;
		i = (total * 99 + 99) / 100;
		out->p99_ms = all[i ? i - 1 : 0] / 1000.0;
		out->max_ms = all[total - 1] / 1000.0;
		free(all);
	}
	for (j = 0; j < nv; j++) {
		free(v[j].us);
		memset(&v[j], 0, sizeof(v[j]));
	}
}

/* ---- GetDataKey load ---- */

struct load {
	struct bench *b;
	enum bench_call what;
	pthread_barrier_t bar;
	double win_start, win_end;
	uint64_t ok[MAX_CLIENTS], err[MAX_CLIENTS];
	struct bench_vec lat[MAX_CLIENTS];
	char first_error[256];
	pthread_mutex_t mu;
};

struct load_arg {
	struct load *l;
	unsigned idx;
};

static void
load_error(struct load *l, const char *env, const char *msg)
{
	pthread_mutex_lock(&l->mu);
	if (l->first_error[0] == '\0')
		snprintf(l->first_error, sizeof(l->first_error),
		    "%.60s: %.190s", env, msg);
	pthread_mutex_unlock(&l->mu);
}

/* One call; 0 if it answered as it should. */
static int
load_call(
    struct load *l, struct kb_client *c, const char *env, struct kb_status *st)
{
	Keybroker__V1__WhoAmIRequest who = KEYBROKER__V1__WHO_AM_IREQUEST__INIT;
	ProtobufCMessage *m = NULL;
	uint8_t dek[64];
	size_t len = 0;
	enum kb_err e;

	if (l->what == BENCH_WHO_AM_I) {
		e = kb_client_call(c, KB_METHOD_WHOAMI, &who.base,
		    &keybroker__v1__who_am_iresponse__descriptor, &m, st);
		kb_wire_free(m);
		return e == KB_OK ? 0 : -1;
	}
	e = kb_client_get_data_key(
	    c, l->b->tenant, env, dek, sizeof(dek), &len, NULL, st);
	kb_wipe(dek, sizeof(dek));
	if (e == KB_OK && len != 32) {
		snprintf(st->message, sizeof(st->message), "a DEK of %zu bytes",
		    len);
		return -1;
	}
	return e == KB_OK ? 0 : -1;
}

static void *
load_main(void *p)
{
	struct load_arg *a = p;
	struct load *l = a->l;
	struct bench *b = l->b;
	unsigned k = a->idx % BENCH_LOAD_ENVS;
	const char *env = b->load_env[k];
	struct kb_client *c = NULL;
	struct kb_status st;
	double t0, t1;
	enum kb_err e;

	/* Connect (TLS handshake) and make one call before the clock runs. */
	if ((e = bench_client_at(b,
	         b->nload_addrs ? b->load_addrs[a->idx % b->nload_addrs]
	                        : b->addr,
	         b->load_crt[k], b->load_key[k], 30000, &c))
	    != KB_OK)
		load_error(l, env, kb_err_msg(e));
	else if (load_call(l, c, env, &st) != 0)
		load_error(l, env, st.message);
	/* Twice: all connected, then the window is set. */
	pthread_barrier_wait(&l->bar);
	pthread_barrier_wait(&l->bar);
	while (c != NULL) {
		if ((t0 = bench_now()) >= l->win_end)
			break;
		e = load_call(l, c, env, &st) == 0 ? KB_OK : KB_ERR_INTERNAL;
		t1 = bench_now();
		if (t0 < l->win_start || t1 > l->win_end)
			continue;
		if (e != KB_OK) {
			l->err[a->idx]++;
			load_error(l, env, st.message);
			continue;
		}
		l->ok[a->idx]++;
		bench_vec_add(&l->lat[a->idx], t1 - t0);
	}
	kb_client_close(c);
	return NULL;
}

enum kb_err
bench_load_run(struct bench *b, enum bench_call what, unsigned n, double secs,
    struct bench_lat *out)
{
	struct load *l;
	struct load_arg *a;
	struct bench_cpu_mark m0, m1;
	pthread_t *th;
	unsigned i, started = 0;
	enum kb_err e = KB_OK;

	if (n == 0 || n > MAX_CLIENTS)
		return kb_errf(
		    KB_ERR_INVALID_ARGUMENT, "1 to %d clients", MAX_CLIENTS);
	l = calloc(1, sizeof(*l));
	a = calloc(n, sizeof(*a));
	th = calloc(n, sizeof(*th));
	if (l == NULL || a == NULL || th == NULL) {
		e = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	l->b = b;
	l->what = what;
	pthread_mutex_init(&l->mu, NULL);
	l->win_start = l->win_end = 1e300;
	pthread_barrier_init(&l->bar, NULL, n + 1);
	for (i = 0; i < n; i++) {
		a[i] = (struct load_arg){l, i};
		if (pthread_create(&th[i], NULL, load_main, &a[i]) != 0)
			break;
		started++;
	}
	if (started < n) {
		/* Cannot happen with a sane ulimit; do not wait forever. */
		fprintf(stderr, "kb-bench: only %u of %u threads started\n",
		    started, n);
		abort();
	}
	/* Every client has connected once when the barrier opens; the
	 * window is set before the second one lets them run. */
	pthread_barrier_wait(&l->bar);
	l->win_start = bench_now() + b->o->warm_s;
	l->win_end = l->win_start + secs;
	pthread_barrier_wait(&l->bar);
	bench_sleep(l->win_start - bench_now());
	bench_cpu_mark(&m0, b->pid);
	bench_sleep(l->win_end - bench_now());
	bench_cpu_mark(&m1, b->pid);
	for (i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	pthread_barrier_destroy(&l->bar);
	memset(out, 0, sizeof(*out));
	out->threads = n;
	out->secs = secs;
	for (i = 0; i < n; i++) {
		out->calls += l->ok[i];
		out->errors += l->err[i];
	}
	out->rate = (double)out->calls / secs;
	out->other =
	    bench_cpu_other(&m0, &m1, &out->self_cpu, &out->broker_cpu);
	bench_vec_stats(l->lat, n, out);
	snprintf(
	    out->first_error, sizeof(out->first_error), "%s", l->first_error);
	pthread_mutex_destroy(&l->mu);
out:
	free(l);
	free(a);
	free(th);
	return e;
}

/* ---- admin calls ---- */

static enum kb_err
call(struct kb_client *c, const char *method, const ProtobufCMessage *req,
    const ProtobufCMessageDescriptor *d, ProtobufCMessage **resp)
{
	struct kb_status st;
	enum kb_err e;

	if ((e = kb_client_call(c, method, req, d, resp, &st)) != KB_OK)
		return kb_errf(e, "%s: %s: %s", strrchr(method, '/') + 1,
		    kb_grpc_status_name(st.code), st.message);
	return KB_OK;
}

static enum kb_err
admin(struct bench *b, struct kb_client **c)
{
	return bench_client(b, b->admin_crt, b->admin_key, 120000, c);
}

/* The public key from a .pfx GenerateKey returned. */
static enum kb_err
pfx_public(const ProtobufCBinaryData *pfx, EVP_PKEY **out)
{
	const unsigned char *p = pfx->data;
	unsigned char *der = NULL;
	const unsigned char *q;
	PKCS12 *p12 = NULL;
	EVP_PKEY *key = NULL;
	X509 *cert = NULL;
	int len;
	enum kb_err e = KB_ERR_CRYPTO;

	*out = NULL;
	if ((p12 = d2i_PKCS12(NULL, &p, (long)pfx->len)) == NULL
	    || !PKCS12_parse(p12, PFX_PASSWORD, &key, &cert, NULL)
	    || key == NULL || (len = i2d_PUBKEY(key, &der)) <= 0) {
		e = kb_err_openssl(KB_ERR_CRYPTO, "reading the generated .pfx");
		goto out;
	}
	q = der;
	if ((*out = d2i_PUBKEY(NULL, &q, len)) == NULL) {
		e = kb_err_openssl(KB_ERR_CRYPTO, "copying the public key");
		goto out;
	}
	e = KB_OK;
out:
	OPENSSL_free(der);
	EVP_PKEY_free(key); /* wipes the private key */
	X509_free(cert);
	PKCS12_free(p12);
	return e;
}

static enum kb_err
generate_key(
    struct kb_client *c, struct bench *b, char *id, size_t len, EVP_PKEY **pub)
{
	Keybroker__V1__GenerateKeyRequest req =
	    KEYBROKER__V1__GENERATE_KEY_REQUEST__INIT;
	Keybroker__V1__GenerateKeyResponse *r = NULL;
	enum kb_err e;

	req.tenant_id = b->tenant;
	req.password = (char *)PFX_PASSWORD;
	if ((e = call(c, KB_METHOD_GENERATE_KEY, &req.base,
	         &keybroker__v1__generate_key_response__descriptor,
	         (ProtobufCMessage **)&r))
	    != KB_OK)
		return e;
	if (r->key == NULL) {
		kb_wire_free(&r->base);
		return kb_errf(KB_ERR_INTERNAL, "GenerateKey returned no key");
	}
	snprintf(id, len, "%s", r->key->id);
	e = pub != NULL ? pfx_public(&r->pfx, pub) : KB_OK;
	kb_wire_free(&r->base);
	return e;
}

enum kb_err
bench_admin_setup(struct bench *b, EVP_PKEY **pub)
{
	Keybroker__V1__WhoAmIRequest who = KEYBROKER__V1__WHO_AM_IREQUEST__INIT;
	Keybroker__V1__WhoAmIResponse *wr = NULL;
	Keybroker__V1__CreateTenantRequest ct =
	    KEYBROKER__V1__CREATE_TENANT_REQUEST__INIT;
	Keybroker__V1__CreateEnvironmentRequest ce =
	    KEYBROKER__V1__CREATE_ENVIRONMENT_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	struct kb_client *c = NULL;
	unsigned i;
	enum kb_err e;

	*pub = NULL;
	if ((e = admin(b, &c)) != KB_OK)
		return e;
	if ((e = call(c, KB_METHOD_WHOAMI, &who.base,
	         &keybroker__v1__who_am_iresponse__descriptor,
	         (ProtobufCMessage **)&wr))
	    != KB_OK)
		goto out;
	snprintf(b->wrap_alg, sizeof(b->wrap_alg), "%s", wr->wrap_algorithm);
	kb_wire_free(&wr->base);
	ct.id = b->tenant;
	ct.display_name = (char *)"kb-bench";
	if ((e = call(c, KB_METHOD_CREATE_TENANT, &ct.base,
	         &keybroker__v1__tenant__descriptor, &m))
	    != KB_OK)
		goto out;
	kb_wire_free(m);
	ct.id = b->rot_tenant;
	ct.display_name = (char *)"kb-bench platform rotation";
	if ((e = call(c, KB_METHOD_CREATE_TENANT, &ct.base,
	         &keybroker__v1__tenant__descriptor, &m))
	    != KB_OK)
		goto out;
	kb_wire_free(m);
	for (i = 0; i < BENCH_LOAD_ENVS; i++) {
		ce.tenant_id = b->tenant;
		ce.name = b->load_env[i];
		if ((e = call(c, KB_METHOD_CREATE_ENVIRONMENT, &ce.base,
		         &keybroker__v1__environment__descriptor, &m))
		    != KB_OK)
			goto out;
		kb_wire_free(m);
	}
	if ((e = generate_key(c, b, b->k0, sizeof(b->k0), pub)) != KB_OK
	    || (e = generate_key(c, b, b->k1, sizeof(b->k1), NULL)) != KB_OK)
		goto out;
	e = KB_OK;
out:
	kb_client_close(c);
	return e;
}

static void
job_fields(const Keybroker__V1__Job *j, char *id, int *state, uint64_t *done,
    uint64_t *total, char *err)
{
	if (id != NULL)
		snprintf(id, 80, "%s", j->id);
	if (state != NULL)
		*state = (int)j->state;
	if (done != NULL)
		*done = j->done;
	if (total != NULL)
		*total = j->total;
	if (err != NULL)
		snprintf(err, 256, "%s", j->error);
}

enum kb_err
bench_activate(struct bench *b, char *job_id, uint64_t *total)
{
	Keybroker__V1__ActivateKeyRequest req =
	    KEYBROKER__V1__ACTIVATE_KEY_REQUEST__INIT;
	Keybroker__V1__Job *j = NULL;
	struct kb_client *c = NULL;
	enum kb_err e;

	if ((e = admin(b, &c)) != KB_OK)
		return e;
	req.tenant_id = b->tenant;
	req.key_id = b->k1;
	if ((e = call(c, KB_METHOD_ACTIVATE_KEY, &req.base,
	         &keybroker__v1__job__descriptor, (ProtobufCMessage **)&j))
	    == KB_OK) {
		job_fields(j, job_id, NULL, NULL, total, NULL);
		kb_wire_free(&j->base);
	}
	kb_client_close(c);
	return e;
}

enum kb_err
bench_rotate(struct bench *b, char *job_id, uint64_t *total)
{
	Keybroker__V1__RotatePlatformKeyRequest req =
	    KEYBROKER__V1__ROTATE_PLATFORM_KEY_REQUEST__INIT;
	Keybroker__V1__Job *j = NULL;
	struct kb_client *c = NULL;
	enum kb_err e;

	if ((e = admin(b, &c)) != KB_OK)
		return e;
	if ((e = call(c, KB_METHOD_ROTATE_PLATFORM_KEY, &req.base,
	         &keybroker__v1__job__descriptor, (ProtobufCMessage **)&j))
	    == KB_OK) {
		job_fields(j, job_id, NULL, NULL, total, NULL);
		kb_wire_free(&j->base);
	}
	kb_client_close(c);
	return e;
}

enum kb_err
bench_job_get(struct bench *b, struct kb_client **c, const char *job_id,
    int *state, uint64_t *done, uint64_t *total, char *err)
{
	Keybroker__V1__GetJobRequest req = KEYBROKER__V1__GET_JOB_REQUEST__INIT;
	Keybroker__V1__Job *j = NULL;
	enum kb_err e;

	if (*c == NULL
	    && (e = bench_client(b, b->admin_crt, b->admin_key, 10000, c))
	        != KB_OK)
		return e;
	req.id = (char *)job_id;
	if ((e = call(*c, KB_METHOD_GET_JOB, &req.base,
	         &keybroker__v1__job__descriptor, (ProtobufCMessage **)&j))
	    == KB_OK) {
		job_fields(j, NULL, state, done, total, err);
		kb_wire_free(&j->base);
	} else {
		/* A new channel next time: the broker may be restarting. */
		kb_client_close(*c);
		*c = NULL;
	}
	return e;
}

/* ---- the reader during the job ---- */

struct bench_reader {
	struct bench *b;
	const struct bench_samples *s;
	pthread_t th;
	double pause_s;
	atomic_int stop, down;
	uint64_t calls, errors, mismatches, outage_errors;
	double start, max_ms, max_at;
	char first_error[256];
};

static void *
reader_main(void *p)
{
	struct bench_reader *r = p;
	struct bench *b = r->b;
	const struct bench_samples *s = r->s;
	struct kb_client *c[BENCH_SAMPLES] = {NULL};
	struct kb_status st;
	uint8_t dek[64];
	size_t len;
	unsigned i = 0, k;
	double t0, ms;
	enum kb_err e;

	while (!atomic_load(&r->stop)) {
		k = i++ % BENCH_SAMPLES;
		if (c[k] == NULL
		    && (e = bench_client(b, s->crt[k], s->key[k], 10000, &c[k]))
		        != KB_OK) {
			r->errors++;
			snprintf(r->first_error, sizeof(r->first_error), "%s",
			    kb_err_msg(e));
			bench_sleep(r->pause_s);
			continue;
		}
		t0 = bench_now();
		e = kb_client_get_data_key(c[k], s->tenant, s->env[k], dek,
		    sizeof(dek), &len, NULL, &st);
		ms = (bench_now() - t0) * 1000.0;
		if (e != KB_OK) {
			if (atomic_load(&r->down)) {
				r->outage_errors++;
			} else {
				r->errors++;
				if (r->first_error[0] == '\0')
					snprintf(r->first_error,
					    sizeof(r->first_error),
					    "%.60s: %.190s", s->env[k],
					    st.message);
			}
			/* A new channel: no reconnect back-off after a
			 * restart. */
			kb_client_close(c[k]);
			c[k] = NULL;
		} else {
			r->calls++;
			if (ms > r->max_ms) {
				r->max_ms = ms;
				r->max_at = t0 - r->start;
			}
			if (len != 32 || memcmp(dek, s->dek[k], 32) != 0)
				r->mismatches++;
		}
		bench_sleep(r->pause_s);
	}
	kb_wipe(dek, sizeof(dek));
	for (k = 0; k < BENCH_SAMPLES; k++)
		kb_client_close(c[k]);
	return NULL;
}

enum kb_err
bench_reader_start(struct bench *b, const struct bench_samples *s,
    double pause_s, struct bench_reader **out)
{
	struct bench_reader *r;

	if ((r = calloc(1, sizeof(*r))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	r->b = b;
	r->s = s;
	r->pause_s = pause_s;
	r->start = bench_now();
	if (pthread_create(&r->th, NULL, reader_main, r) != 0) {
		free(r);
		return kb_errf(KB_ERR_RESOURCE_EXHAUSTED,
		    "cannot start the "
		    "reader");
	}
	*out = r;
	return KB_OK;
}

void
bench_reader_outage(struct bench_reader *r, int down)
{
	atomic_store(&r->down, down);
}

void
bench_reader_stop(struct bench_reader *r, uint64_t *calls, uint64_t *errors,
    uint64_t *mismatches, uint64_t *outage_errors, double *max_ms,
    double *max_at, char *first_error, size_t len)
{
	atomic_store(&r->stop, 1);
	pthread_join(r->th, NULL);
	*calls = r->calls;
	*errors = r->errors;
	*mismatches = r->mismatches;
	*outage_errors = r->outage_errors;
	*max_ms = r->max_ms;
	*max_at = r->max_at;
	snprintf(first_error, len, "%s", r->first_error);
	free(r);
}
