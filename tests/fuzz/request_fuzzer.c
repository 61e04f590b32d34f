/* SPDX-License-Identifier: Apache-2.0 */
/* request_fuzzer.c: libFuzzer target for every request message, run
 * in-process through dispatch_call: decoding, authentication, the role
 * table, the handler (real SoftHSMv2 token, real SQLite) and the audit
 * record.
 *
 * Input: byte 0 picks the method (dispatch_methods[], modulo its length),
 * byte 1 the caller (enum fuzz_caller in request_pki.h, modulo
 * FUZZ_CALLERS), the rest is the request message as it comes off the wire.
 * The placeholders of request_pki.h in the message are replaced by the ids
 * of the world built in LLVMFuzzerInitialize (a token and a database in a
 * temporary directory under $TMPDIR; never the system token directory).
 *
 * Besides the sanitizers, each call is checked against what dispatch.h
 * promises: always a status; a message with every refusal; an answer
 * exactly when OK; never OK for a caller without a valid certificate or
 * without the method's role; a service's data key only for its
 * environment; a tenant-limited admin never sees another tenant.
 *
 * State grows as the fuzzer creates tenants, environments and keys; set
 * KB_FUZZ_RESET_EVERY=N to rebuild the world every N inputs on long runs
 * (default: 5000). KB_FUZZ_PROFILE=1 prints the time spent per method at
 * exit. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <grpc/grpc.h>
#include <grpc/byte_buffer.h>
#include <grpc/slice.h>

#include "startup.h"
#include "config.h"
#include "dispatch.h"
#include "quorum.h"
#include "rpc.h"
#include "grpc/health/v1/health.pb-c.h"
#include "harness.h"
#include "kb_err.h"
#include "kb_err_grpc.h"
#include "kb_wire.h"
#include "keybroker.pb-c.h"
#include "log.h"
#include "request_pki.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define KB_PATH "/keybroker.v1.KeyBroker/"
#define STREAM_MAX 4 /* messages a stream may send per input */
#define RESET_EVERY_DEFAULT 5000

/* A server-streaming call's sink: packs each message as the transport
 * would, and ends the stream after a few. */
struct rpc_stream {
	unsigned sent;
	unsigned polls;
	enum fuzz_caller caller;
};

static struct world {
	char dir[256];
	struct fuzz_pki pki;
	struct broker *b;
	char active_key[STORE_KEY_ID_MAX];
	char spare_key[STORE_KEY_ID_MAX];
	char job[STORE_KEY_ID_MAX];
	char backup[STORE_KEY_ID_MAX];
	char kek[STORE_KEY_ID_MAX];
	unsigned long inputs;
	unsigned long reset_every;
	int profile; /* KB_FUZZ_PROFILE: time per method */
} w;

/* With KB_FUZZ_PROFILE=1: calls and time spent per method, printed at
 * exit (to see what bounds the inputs per second). */
static struct {
	unsigned long calls;
	double seconds;
} prof[64];

static size_t nmethods;

static void die(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));

/* A broken promise (or a broken setup): report it and crash, so that
 * libFuzzer saves the input. */
static void
die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "request_fuzzer: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	abort();
}

/* ---- checks ---- */

/* The method's answer type, from the generated service descriptors. */
static const ProtobufCMessageDescriptor *
response_descriptor(const struct rpc_method *m)
{
	const ProtobufCMethodDescriptor *md;

	if (strncmp(m->path, KB_PATH, strlen(KB_PATH)) == 0)
		md = protobuf_c_service_descriptor_get_method_by_name(
		    &keybroker__v1__key_broker__descriptor, m->name);
	else
		md = protobuf_c_service_descriptor_get_method_by_name(
		    &grpc__health__v1__health__descriptor, "Check");
	return md != NULL ? md->output : NULL;
}

/* Abort if `msg` or a message in it has a "tenant_id" other than `tenant`
 * (an empty one too: a tenant-limited admin reads its tenants' records
 * only, not the broker's own). */
static void
check_tenant(const ProtobufCMessage *msg, const char *tenant)
{
	const ProtobufCMessageDescriptor *d = msg->descriptor;
	const ProtobufCFieldDescriptor *f;
	const void *field;
	const char *v;
	ProtobufCMessage *const *subs;
	size_t j, n;
	unsigned i;

	for (i = 0; i < d->n_fields; i++) {
		f = &d->fields[i];
		field = (const char *)msg + f->offset;
		if (f->type == PROTOBUF_C_TYPE_STRING
		    && f->label != PROTOBUF_C_LABEL_REPEATED
		    && strcmp(f->name, "tenant_id") == 0) {
			v = *(const char *const *)field;
			if (v == NULL || strcmp(v, tenant) != 0)
				die("a tenant-limited admin was shown tenant "
				    "\"%s\"",
				    v != NULL ? v : "");
		}
		if (f->type != PROTOBUF_C_TYPE_MESSAGE)
			continue;
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			n = *(const size_t *)(const void *)((const char *)msg
			    + f->quantifier_offset);
			subs = *(ProtobufCMessage *const *const *)field;
		} else {
			n = 1;
			subs = (ProtobufCMessage *const *)field;
		}
		for (j = 0; j < n; j++)
			if (subs[j] != NULL)
				check_tenant(subs[j], tenant);
	}
}

/* The role of each caller whose certificate the broker must accept;
 * ROLE_NONE for those it must refuse. */
static enum role
caller_role(enum fuzz_caller c)
{
	switch (c) {
	case FUZZ_ADMIN:
	case FUZZ_TENANT_ADMIN: return ROLE_ADMIN;
	case FUZZ_SERVICE: return ROLE_SERVICE;
	case FUZZ_AUDITOR: return ROLE_AUDITOR;
	case FUZZ_NONE:
	case FUZZ_GARBAGE:
	case FUZZ_OTHER_CA:
	case FUZZ_EXPIRED:
	case FUZZ_NO_ROLE:
	case FUZZ_FROM_INPUT: /* cannot chain to a CA made at run time */
	case FUZZ_CALLERS: break;
	}
	return ROLE_NONE;
}

static void
check_result(const struct rpc_method *m, enum fuzz_caller caller,
    const uint8_t *msg, size_t len, const struct dispatch_result *res)
{
	const ProtobufCMessageDescriptor *rd;
	ProtobufCMessage *in, *out;
	enum role role = caller_role(caller);

	if ((unsigned)res->code > GRPC_STATUS_UNAUTHENTICATED)
		die("%s: status code out of range", m->name);
	if (res->code != GRPC_STATUS_OK) {
		if (res->resp != NULL)
			die("%s: an answer with a refusal", m->name);
		if (res->message[0] == '\0')
			die("%s: a refusal without a message", m->name);
		return;
	}
	if (m->stream == NULL && res->resp == NULL)
		die("%s: OK without an answer", m->name);
	if (role == ROLE_NONE)
		die("%s: OK for a caller without a valid certificate", m->name);
	if (!(m->roles & ROLE_BIT(role)))
		die("%s: OK for a role the table does not allow", m->name);
	if (strcmp(m->name, "GetDataKey") == 0) {
		const Keybroker__V1__GetDataKeyRequest *r;

		in = protobuf_c_message_unpack(m->req, NULL, len, msg);
		r = (const void *)in;
		if (in == NULL || strcmp(r->tenant_id, "acme") != 0
		    || strcmp(r->environment, "prod") != 0)
			die("GetDataKey: a data key outside the service's "
			    "environment (%s)",
			    in != NULL ? r->tenant_id : "?");
		protobuf_c_message_free_unpacked(in, NULL);
	}
	if (caller == FUZZ_TENANT_ADMIN && res->resp != NULL
	    && (rd = response_descriptor(m)) != NULL) {
		grpc_byte_buffer *copy = grpc_byte_buffer_copy(res->resp);

		if (kb_wire_unpack(rd, copy, SIZE_MAX, &out) != KB_OK)
			die("%s: the answer does not decode", m->name);
		check_tenant(out, "globex");
		kb_wire_free(out);
		grpc_byte_buffer_destroy(copy);
	}
}

/* ---- streams ---- */

static enum kb_err
stream_send(struct rpc_stream *st, const ProtobufCMessage *msg)
{
	grpc_byte_buffer *bb;

	if (st->caller == FUZZ_TENANT_ADMIN)
		check_tenant(msg, "globex");
	if ((bb = kb_wire_pack(msg)) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	kb_wire_destroy(bb);
	if (++st->sent >= STREAM_MAX)
		return kb_errf(KB_ERR_CANCELLED, "the fuzzer has seen enough");
	return KB_OK;
}

/* True from the second poll on: one pass over the log, then the end. */
static int
stream_done(struct rpc_stream *st)
{
	return st->sent >= STREAM_MAX || st->polls++ > 0;
}

static const struct rpc_stream_ops stream_ops = {stream_send, stream_done};

/* A TailEvents pass that found nothing to send waits for the next event
 * (up to half a second) before its second poll. While a stream runs, the
 * waker appends an event every few milliseconds to end that wait, so a
 * stream costs milliseconds, not half a second. */
static struct {
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int active; /* a stream is running */
	int busy; /* the waker is appending */
	int stop;
} waker = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void *
waker_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&waker.mu);
	while (!waker.stop) {
		if (!waker.active) {
			pthread_cond_wait(&waker.cv, &waker.mu);
			continue;
		}
		pthread_mutex_unlock(&waker.mu);
		usleep(3000);
		pthread_mutex_lock(&waker.mu);
		if (!waker.active || waker.stop)
			continue;
		waker.busy = 1;
		pthread_mutex_unlock(&waker.mu);
		(void)broker_audit_system(
		    w.b, "fuzz.wake", NULL, NULL, NULL, "ok", "");
		pthread_mutex_lock(&waker.mu);
		waker.busy = 0;
		pthread_cond_broadcast(&waker.cv);
	}
	pthread_mutex_unlock(&waker.mu);
	return NULL;
}

/* Mark a stream as running (1) or ended (0); on end, wait until the waker
 * is not appending, so the broker may be closed next. */
static void
waker_set(int active)
{
	pthread_mutex_lock(&waker.mu);
	waker.active = active;
	pthread_cond_broadcast(&waker.cv);
	while (!active && waker.busy)
		pthread_cond_wait(&waker.cv, &waker.mu);
	pthread_mutex_unlock(&waker.mu);
}

static void
waker_stop(void)
{
	pthread_mutex_lock(&waker.mu);
	waker.stop = 1;
	pthread_cond_broadcast(&waker.cv);
	pthread_mutex_unlock(&waker.mu);
	pthread_join(waker.thread, NULL);
}

/* ---- the world ---- */

static const struct rpc_method *
method(const char *name)
{
	const struct rpc_method *m;

	for (m = dispatch_methods; m->path != NULL; m++)
		if (strcmp(m->name, name) == 0)
			return m;
	die("no method %s", name);
}

static void
peer_for(enum fuzz_caller c, struct dispatch_peer *p)
{
	p->peer = "ipv4:127.0.0.1:5555";
	p->cert_pem = w.pki.pem[c];
	p->pem_len = p->cert_pem != NULL ? strlen(p->cert_pem) : 0;
}

/* One call made while building the world; it must succeed. Returns the
 * decoded answer (free with kb_wire_free) or NULL for no answer type. */
static ProtobufCMessage *
setup_call(const char *name, const ProtobufCMessage *req,
    const ProtobufCMessageDescriptor *resp_desc)
{
	const struct rpc_method *m = method(name);
	struct dispatch_peer peer;
	struct dispatch_result res;
	ProtobufCMessage *out = NULL;
	grpc_byte_buffer *bb = kb_wire_pack(req);

	peer_for(FUZZ_ADMIN, &peer);
	dispatch_call(
	    w.b, m->path, strlen(m->path), &peer, bb, NULL, NULL, &res);
	kb_wire_destroy(bb);
	if (res.code != GRPC_STATUS_OK) {
		fprintf(stderr, "request_fuzzer: setup: %s: %s: %s\n", name,
		    kb_grpc_status_name(res.code), res.message);
		abort();
	}
	if (resp_desc != NULL
	    && kb_wire_unpack(resp_desc, res.resp, SIZE_MAX, &out) != KB_OK)
		die("setup: %s: cannot decode the answer", name);
	kb_wire_destroy(res.resp);
	return out;
}

static uint8_t *
read_fixture(const char *name, size_t *len)
{
	const char *dir = getenv("KB_TEST_DATA");
	char path[1024];
	uint8_t *buf = NULL;
	long n;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s",
	    dir != NULL && dir[0] != '\0' ? dir : KB_FUZZ_DATA, name);
	if ((f = fopen(path, "rb")) == NULL || fseek(f, 0, SEEK_END) != 0
	    || (n = ftell(f)) <= 0 || fseek(f, 0, SEEK_SET) != 0
	    || (buf = malloc((size_t)n)) == NULL
	    || fread(buf, 1, (size_t)n, f) != (size_t)n)
		die("cannot read %s", path);
	fclose(f);
	*len = (size_t)n;
	return buf;
}

static void
upload(const char *file, char *password, char *key_id, size_t key_len)
{
	Keybroker__V1__UploadKeyRequest r =
	    KEYBROKER__V1__UPLOAD_KEY_REQUEST__INIT;
	Keybroker__V1__Key *k;

	r.tenant_id = "acme";
	r.format = KEYBROKER__V1__KEY_FILE_FORMAT__KEY_FILE_FORMAT_PFX;
	r.file.data = read_fixture(file, &r.file.len);
	r.password = password;
	k = (void *)setup_call(
	    "UploadKey", &r.base, &keybroker__v1__key__descriptor);
	snprintf(key_id, key_len, "%s", k->id);
	kb_wire_free(&k->base);
	free(r.file.data);
}

/* Tenants acme (prod, dev) and globex (prod); acme's active key (dev is
 * under it), a spare key, the activation job, a backup of acme/prod and
 * acme's KEK. */
static void
world_populate(void)
{
	Keybroker__V1__CreateTenantRequest ct =
	    KEYBROKER__V1__CREATE_TENANT_REQUEST__INIT;
	Keybroker__V1__CreateEnvironmentRequest ce =
	    KEYBROKER__V1__CREATE_ENVIRONMENT_REQUEST__INIT;
	Keybroker__V1__ActivateKeyRequest ak =
	    KEYBROKER__V1__ACTIVATE_KEY_REQUEST__INIT;
	Keybroker__V1__GetJobRequest gj = KEYBROKER__V1__GET_JOB_REQUEST__INIT;
	Keybroker__V1__EnvironmentRef ref =
	    KEYBROKER__V1__ENVIRONMENT_REF__INIT;
	Keybroker__V1__GetKeyExchangeKeyRequest kr =
	    KEYBROKER__V1__GET_KEY_EXCHANGE_KEY_REQUEST__INIT;
	Keybroker__V1__Job *job;
	Keybroker__V1__Backup *bk;
	Keybroker__V1__KeyExchangeKey *kek;
	static const char *const envs[][2] = {
	    {"acme", "prod"}, {"acme", "dev"}, {"globex", "prod"}};
	size_t i;
	int tries;

	ct.id = "acme";
	ct.display_name = "Acme Corp";
	kb_wire_free(setup_call("CreateTenant", &ct.base, NULL));
	ct.id = "globex";
	ct.display_name = "Globex";
	kb_wire_free(setup_call("CreateTenant", &ct.base, NULL));
	for (i = 0; i < sizeof(envs) / sizeof(envs[0]); i++) {
		ce.tenant_id = (char *)envs[i][0];
		ce.name = (char *)envs[i][1];
		kb_wire_free(setup_call("CreateEnvironment", &ce.base, NULL));
	}
	upload("openssl-modern.pfx", "modern-pass", w.active_key,
	    sizeof(w.active_key));
	ak.tenant_id = "acme";
	ak.key_id = w.active_key;
	job = (void *)setup_call(
	    "ActivateKey", &ak.base, &keybroker__v1__job__descriptor);
	snprintf(w.job, sizeof(w.job), "%s", job->id);
	kb_wire_free(&job->base);
	/* The job runs in the background: wait for it (no customer-managed
	 * environment yet, so it has nothing to re-wrap). */
	gj.id = w.job;
	for (tries = 0;; tries++) {
		int state;

		job = (void *)setup_call(
		    "GetJob", &gj.base, &keybroker__v1__job__descriptor);
		state = job->state;
		kb_wire_free(&job->base);
		if (state == KEYBROKER__V1__JOB_STATE__JOB_STATE_DONE)
			break;
		if (state == KEYBROKER__V1__JOB_STATE__JOB_STATE_FAILED
		    || tries > 600)
			die("setup: the activation job of %s did not finish",
			    w.active_key);
		usleep(50 * 1000);
	}
	upload("keytool.pfx", "keytool-pass", w.spare_key, sizeof(w.spare_key));
	ref.tenant_id = "acme";
	ref.name = "dev";
	kb_wire_free(setup_call("ApplyKey", &ref.base, NULL));
	ref.name = "prod";
	bk = (void *)setup_call(
	    "BackupEnvironment", &ref.base, &keybroker__v1__backup__descriptor);
	snprintf(w.backup, sizeof(w.backup), "%s", bk->id);
	kb_wire_free(&bk->base);
	kr.tenant_id = "acme";
	kek = (void *)setup_call("GetKeyExchangeKey", &kr.base,
	    &keybroker__v1__key_exchange_key__descriptor);
	snprintf(w.kek, sizeof(w.kek), "%s", kek->kid);
	kb_wire_free(&kek->base);
	if (strlen(w.active_key) != strlen(FUZZ_PH_ACTIVE_KEY)
	    || strlen(w.spare_key) != strlen(FUZZ_PH_SPARE_KEY)
	    || strlen(w.job) != strlen(FUZZ_PH_JOB)
	    || strlen(w.backup) != strlen(FUZZ_PH_BACKUP)
	    || strlen(w.kek) != strlen(FUZZ_PH_KEK))
		die("setup: an id is not as long as its placeholder (%s)",
		    w.kek);
}

static void
write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0)
		die("cannot write %s", path);
}

static void
world_open(void)
{
	struct config *cfg = NULL;
	char path[512], conf[1024];
	enum kb_err e;

	/* A fresh token in a new directory under $TMPDIR; SOFTHSM2_CONF
	 * points at it (never the system token directory). */
	snprintf(w.dir, sizeof(w.dir), "%s", kbt_softhsm_setup("fuzz"));
	if (fuzz_pki_make(&w.pki) != 0)
		abort();
	snprintf(path, sizeof(path), "%s/ca.crt", w.dir);
	write_text(path, w.pki.ca_pem);
	/* Paths are relative to w.dir. The server's certificate is never
	 * read: there is no server. */
	snprintf(conf, sizeof(conf),
	    "tls_cert = server.crt\ntls_key = server.key\nclient_ca = ca.crt\n"
	    "pin_file = pin\nsofthsm2_conf = softhsm2.conf\n"
	    "token_uri = pkcs11:token=fuzz\ndatabase = keybroker.db\n"
	    "workers = 2\nhsm_sessions = 4\nlog_level = error\n"
	    "max_message_bytes = 262144\nrewrap_threads = 1\n"
	    "sweep_interval_s = 3600\n");
	if ((e = config_parse(conf, strlen(conf), w.dir, &cfg)) != KB_OK
	    || (e = startup_open(cfg, &w.b)) != KB_OK)
		die("setup: %s", kb_err_msg(e));
	{
		struct quorum_hooks qh = {
		    dispatch_methods, dispatch_execute, rpc_lock_proof};

		quorum_hooks_set(&qh);
	}
	world_populate();
	w.inputs = 0;
}

static void
world_close(void)
{
	startup_close(w.b);
	w.b = NULL;
	fuzz_pki_free(&w.pki);
	if (w.dir[0] != '\0')
		kbt_rmtree(w.dir);
	w.dir[0] = '\0';
}

static void
profile_print(void)
{
	size_t i;

	for (i = 0; i < nmethods && i < 64; i++)
		if (prof[i].calls > 0)
			fprintf(stderr,
			    "request_fuzzer: %-20s %8lu calls %8.1f s "
			    "%8.2f ms/call\n",
			    dispatch_methods[i].name, prof[i].calls,
			    prof[i].seconds,
			    1000 * prof[i].seconds / (double)prof[i].calls);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *env = getenv("KB_FUZZ_RESET_EVERY");
	const struct rpc_method *m;

	(void)argc;
	(void)argv;
	for (m = dispatch_methods; m->path != NULL; m++)
		nmethods++;
	w.reset_every =
	    env != NULL ? strtoul(env, NULL, 10) : RESET_EVERY_DEFAULT;
	grpc_init();
	log_set_level(LOG_ERROR);
	world_open();
	atexit(world_close);
	if (pthread_create(&waker.thread, NULL, waker_main, NULL) != 0)
		die("cannot start the waker thread");
	atexit(waker_stop); /* runs before world_close */
	if ((env = getenv("KB_FUZZ_PROFILE")) != NULL && env[0] == '1') {
		w.profile = 1;
		atexit(profile_print);
	}
	return 0;
}

/* ---- one input ---- */

static void
replace_all(uint8_t *buf, size_t len, const char *ph, const char *real)
{
	size_t n = strlen(ph);
	uint8_t *p = buf, *end = buf + len;

	while ((size_t)(end - p) >= n
	    && (p = memmem(p, (size_t)(end - p), ph, n)) != NULL) {
		memcpy(p, real, n);
		p += n;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct rpc_method *m;
	enum fuzz_caller caller;
	struct dispatch_peer peer;
	struct dispatch_result res;
	struct rpc_stream st;
	struct timespec t0, t1;
	grpc_byte_buffer *bb;
	grpc_slice slice;
	uint8_t *msg;
	size_t len;

	if (size < 2)
		return 0;
	if (w.reset_every > 0 && ++w.inputs > w.reset_every) {
		clock_gettime(CLOCK_MONOTONIC, &t0);
		world_close();
		world_open();
		clock_gettime(CLOCK_MONOTONIC, &t1);
		fprintf(stderr,
		    "request_fuzzer: rebuilt the world after %lu "
		    "inputs in %.1f s\n",
		    w.reset_every,
		    (double)(t1.tv_sec - t0.tv_sec)
		        + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
	}
	m = &dispatch_methods[data[0] % nmethods];
	caller = (enum fuzz_caller)(data[1] % FUZZ_CALLERS);
	data += 2;
	size -= 2;
	peer_for(caller, &peer);
	if (caller == FUZZ_FROM_INPUT) {
		size_t pem_len = size < 2 ? 0 : (size_t)data[0] << 8 | data[1];

		data += size < 2 ? size : 2;
		size -= size < 2 ? size : 2;
		if (pem_len > size)
			pem_len = size;
		peer.cert_pem = (const char *)data;
		peer.pem_len = pem_len;
		data += pem_len;
		size -= pem_len;
	}
	/* The message, with the world's ids in place of the placeholders. */
	len = size;
	if ((msg = malloc(len + 1)) == NULL)
		return 0;
	memcpy(msg, data, len);
	replace_all(msg, len, FUZZ_PH_ACTIVE_KEY, w.active_key);
	replace_all(msg, len, FUZZ_PH_SPARE_KEY, w.spare_key);
	replace_all(msg, len, FUZZ_PH_JOB, w.job);
	replace_all(msg, len, FUZZ_PH_BACKUP, w.backup);
	replace_all(msg, len, FUZZ_PH_KEK, w.kek);
	slice = grpc_slice_from_copied_buffer((const char *)msg, len);
	bb = grpc_raw_byte_buffer_create(&slice, 1);
	grpc_slice_unref(slice);

	memset(&st, 0, sizeof(st));
	st.caller = caller;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (m->stream != NULL)
		waker_set(1);
	dispatch_call(
	    w.b, m->path, strlen(m->path), &peer, bb, &stream_ops, &st, &res);
	if (m->stream != NULL)
		waker_set(0);
	if (w.profile && m - dispatch_methods < 64) {
		clock_gettime(CLOCK_MONOTONIC, &t1);
		prof[m - dispatch_methods].calls++;
		prof[m - dispatch_methods].seconds +=
		    (double)(t1.tv_sec - t0.tv_sec)
		    + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
	}
	check_result(m, caller, msg, len, &res);
	kb_wire_destroy(res.resp);
	kb_wire_destroy(bb);
	free(msg);
	return 0;
}
