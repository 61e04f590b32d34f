/* SPDX-License-Identifier: Apache-2.0 */
/* kbclient.c: connect to the broker with mutual TLS and make unary calls. */
#include "kbclient.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "grpc/health/v1/health.pb-c.h"
#include "kb_secmem.h"
#include "keybroker.pb-c.h"

#ifndef KB_VERSION
#define KB_VERSION "unknown"
#endif

/* PEM files larger than this are not certificates or keys we want. */
#define PEM_MAX (1024 * 1024)

/* One broker address and its channel. */
struct kb_target {
	grpc_channel *ch;
	char *addr;
};

struct kb_client {
	struct kb_target *t;
	size_t n;
	size_t cur; /* the target that last answered (__atomic access) */
	int timeout_ms;
	int connect_timeout_ms;
};

static pthread_once_t grpc_once = PTHREAD_ONCE_INIT;
static int grpc_started;

static void
grpc_start(void)
{
	grpc_init();
	grpc_started = 1;
}

void
kb_client_global_cleanup(void)
{
	if (grpc_started) {
		grpc_started = 0;
		grpc_shutdown_blocking();
	}
}

enum kb_err
kb_client_err_from_grpc(grpc_status_code s)
{
	switch (s) {
	case GRPC_STATUS_OK: return KB_OK;
	case GRPC_STATUS_CANCELLED: return KB_ERR_CANCELLED;
	case GRPC_STATUS_INVALID_ARGUMENT: return KB_ERR_INVALID_ARGUMENT;
	case GRPC_STATUS_OUT_OF_RANGE: return KB_ERR_INVALID_ARGUMENT;
	case GRPC_STATUS_DEADLINE_EXCEEDED: return KB_ERR_DEADLINE;
	case GRPC_STATUS_NOT_FOUND: return KB_ERR_NOT_FOUND;
	case GRPC_STATUS_ALREADY_EXISTS: return KB_ERR_ALREADY_EXISTS;
	case GRPC_STATUS_PERMISSION_DENIED: return KB_ERR_PERMISSION_DENIED;
	case GRPC_STATUS_UNAUTHENTICATED: return KB_ERR_UNAUTHENTICATED;
	case GRPC_STATUS_RESOURCE_EXHAUSTED: return KB_ERR_RESOURCE_EXHAUSTED;
	case GRPC_STATUS_FAILED_PRECONDITION: return KB_ERR_FAILED_PRECONDITION;
	/* ABORTED: the broker made an approval request instead of acting
	 * (st->request_id names it). */
	case GRPC_STATUS_ABORTED: return KB_ERR_APPROVAL_REQUIRED;
	case GRPC_STATUS_UNIMPLEMENTED: return KB_ERR_UNIMPLEMENTED;
	case GRPC_STATUS_UNAVAILABLE: return KB_ERR_UNAVAILABLE;
	case GRPC_STATUS_DATA_LOSS: return KB_ERR_CORRUPT;
	case GRPC_STATUS_UNKNOWN:
	case GRPC_STATUS_INTERNAL: return KB_ERR_INTERNAL;
	case GRPC_STATUS__DO_NOT_USE: break;
	}
	return KB_ERR_INTERNAL;
}

/* Read a whole PEM file into a NUL-terminated buffer. `what` names it in
 * errors ("client certificate"). Free with kb_freezero(*out, *len + 1). */
static enum kb_err
pem_read(const char *path, const char *what, char **out, size_t *len)
{
	FILE *f = NULL;
	struct stat sb;
	char *buf = NULL;
	size_t n = 0;
	enum kb_err r = KB_ERR_INTERNAL;

	*out = NULL;
	*len = 0;
	if (path == NULL || *path == '\0')
		return kb_errf(KB_ERR_CONFIG, "no %s file given", what);
	if ((f = fopen(path, "re")) == NULL) {
		r = kb_errf(KB_ERR_IO, "cannot read %s \"%s\": %s", what, path,
		    strerror(errno));
		goto out;
	}
	if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
		r = kb_errf(KB_ERR_IO,
		    "cannot read %s \"%s\": not a regular file", what, path);
		goto out;
	}
	if (sb.st_size > PEM_MAX) {
		r = kb_errf(KB_ERR_CONFIG,
		    "%s \"%s\" is too large to be PEM "
		    "(%lld bytes)",
		    what, path, (long long)sb.st_size);
		goto out;
	}
	if ((buf = calloc(1, (size_t)sb.st_size + 1)) == NULL) {
		r = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	n = fread(buf, 1, (size_t)sb.st_size, f);
	if (ferror(f)) {
		r = kb_errf(KB_ERR_IO, "cannot read %s \"%s\": %s", what, path,
		    strerror(errno));
		goto out;
	}
	buf[n] = '\0';
	if (strstr(buf, "-----BEGIN ") == NULL) {
		r = kb_errf(KB_ERR_CONFIG, "%s \"%s\" is not a PEM file%s",
		    what, path, n == 0 ? " (it is empty)" : "");
		goto out;
	}
	*out = buf;
	*len = n;
	buf = NULL;
	r = KB_OK;
out:
	if (buf != NULL)
		kb_freezero(buf, (size_t)sb.st_size + 1);
	if (f != NULL)
		fclose(f);
	return r;
}

/* OpenSSL must never prompt on the terminal for a key password. */
static int
no_password_cb(char *buf, int size, int rwflag, void *u)
{
	(void)buf;
	(void)size;
	(void)rwflag;
	(void)u;
	return -1;
}

/* KB_ERR_CONFIG with a formatted message and OpenSSL's reason. */
static enum kb_err ossl_fail(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static enum kb_err
ossl_fail(const char *fmt, ...)
{
	char what[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	return kb_err_openssl(KB_ERR_CONFIG, what);
}

/* gRPC checks nothing until the TLS handshake, and then only says
 * "handshake failed": check the files here so errors name them. */
static enum kb_err
pem_check(const struct kb_client_opts *o, const char *cert, const char *key,
    const char *ca)
{
	BIO *b = NULL;
	X509 *x = NULL, *cax = NULL;
	EVP_PKEY *pk = NULL;
	enum kb_err r = KB_ERR_INTERNAL;

	if ((b = BIO_new_mem_buf(cert, -1)) == NULL
	    || (x = PEM_read_bio_X509(b, NULL, no_password_cb, NULL)) == NULL) {
		r = ossl_fail("client certificate \"%s\" holds no "
		              "certificate",
		    o->cert_file);
		goto out;
	}
	BIO_free(b);
	b = NULL;
	if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0) {
		r = kb_errf(KB_ERR_CONFIG,
		    "client certificate \"%s\" has "
		    "expired",
		    o->cert_file);
		goto out;
	}
	if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0) {
		r = kb_errf(KB_ERR_CONFIG,
		    "client certificate \"%s\" is not "
		    "valid yet (check the clock)",
		    o->cert_file);
		goto out;
	}
	if (strstr(key, "ENCRYPTED") != NULL) {
		r = kb_errf(KB_ERR_CONFIG,
		    "client key \"%s\" is encrypted; "
		    "an unencrypted PEM key is needed",
		    o->key_file);
		goto out;
	}
	if ((b = BIO_new_mem_buf(key, -1)) == NULL
	    || (pk = PEM_read_bio_PrivateKey(b, NULL, no_password_cb, NULL))
	        == NULL) {
		r = ossl_fail(
		    "client key \"%s\" holds no private key", o->key_file);
		goto out;
	}
	BIO_free(b);
	b = NULL;
	if (X509_check_private_key(x, pk) != 1) {
		ERR_clear_error();
		r = kb_errf(KB_ERR_CONFIG,
		    "client key \"%s\" does not match "
		    "certificate \"%s\"",
		    o->key_file, o->cert_file);
		goto out;
	}
	if ((b = BIO_new_mem_buf(ca, -1)) == NULL
	    || (cax = PEM_read_bio_X509(b, NULL, no_password_cb, NULL))
	        == NULL) {
		r = ossl_fail(
		    "CA file \"%s\" holds no certificate", o->ca_file);
		goto out;
	}
	r = KB_OK;
out:
	BIO_free(b);
	X509_free(x);
	X509_free(cax);
	EVP_PKEY_free(pk); /* wipes the key */
	ERR_clear_error();
	return r;
}

/* 1 if list entry e is an address a channel can be made to; else 0 and
 * *why says what is wrong with it. */
static int
addr_entry_check(const char *e, const char **why)
{
	const char *colon, *p;
	char *end;
	long port;

	*why = NULL;
	if (strncmp(e, "unix:", 5) == 0 || strncmp(e, "unix-abstract:", 14) == 0
	    || strncmp(e, "ipv4:", 5) == 0 || strncmp(e, "ipv6:", 5) == 0
	    || strstr(e, "://") != NULL || strncmp(e, "dns:", 4) == 0) {
		if (strchr(e, ':')[1] == '\0')
			*why = "nothing after the scheme";
		return *why == NULL;
	}
	if (e[0] == '[') {
		if ((p = strchr(e, ']')) == NULL || p == e + 1) {
			*why = "an IPv6 address is written [ADDRESS]:PORT";
			return 0;
		}
		if (p[1] != ':') {
			*why = "no port (HOST:PORT)";
			return 0;
		}
		colon = p + 1;
	} else {
		if ((colon = strrchr(e, ':')) == NULL) {
			*why = "no port (HOST:PORT)";
			return 0;
		}
		if (memchr(e, ':', (size_t)(colon - e)) != NULL) {
			*why = "an IPv6 address is written [ADDRESS]:PORT";
			return 0;
		}
		if (colon == e) {
			*why = "no host (HOST:PORT)";
			return 0;
		}
	}
	if (colon[1] < '0' || colon[1] > '9') {
		*why = "the port is not a number from 1 to 65535";
		return 0;
	}
	errno = 0;
	port = strtol(colon + 1, &end, 10);
	if (errno != 0 || *end != '\0' || port < 1 || port > 65535) {
		*why = "the port is not a number from 1 to 65535";
		return 0;
	}
	return 1;
}

void
kb_client_addrs_free(char **v, size_t n)
{
	size_t i;

	if (v == NULL)
		return;
	for (i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

enum kb_err
kb_client_addrs_parse(const char *list, char ***out, size_t *n)
{
	char **v = NULL, *e = NULL;
	const char *p, *q, *why;
	size_t k = 0, i, len;
	enum kb_err r = KB_ERR_INTERNAL;

	*out = NULL;
	*n = 0;
	if (list == NULL || list[strspn(list, " \t")] == '\0')
		return kb_errf(KB_ERR_CONFIG,
		    "no broker address given (HOST:PORT, or several "
		    "separated by commas)");
	if ((v = calloc(KB_CLIENT_MAX_ADDRS, sizeof(*v))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	for (p = list;; p = q + 1) {
		q = strchr(p, ',');
		len = q != NULL ? (size_t)(q - p) : strlen(p);
		/* Blanks around an entry are a list's spacing, not its
		 * content. */
		while (len > 0 && (*p == ' ' || *p == '\t')) {
			p++;
			len--;
		}
		while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t'))
			len--;
		if (len == 0) {
			r = kb_errf(KB_ERR_CONFIG,
			    "broker address list \"%s\": entry %zu is empty",
			    list, k + 1);
			goto out;
		}
		if (k == KB_CLIENT_MAX_ADDRS) {
			r = kb_errf(KB_ERR_CONFIG,
			    "broker address list \"%s\": more than %d "
			    "addresses",
			    list, KB_CLIENT_MAX_ADDRS);
			goto out;
		}
		if ((e = strndup(p, len)) == NULL) {
			r = kb_errf(KB_ERR_NOMEM, "out of memory");
			goto out;
		}
		if (strpbrk(e, " \t\r\n") != NULL) {
			r = kb_errf(KB_ERR_CONFIG,
			    "broker address \"%s\": a blank inside it "
			    "(addresses are separated by commas)",
			    e);
			goto out;
		}
		if (!addr_entry_check(e, &why)) {
			r = kb_errf(
			    KB_ERR_CONFIG, "broker address \"%s\": %s", e, why);
			goto out;
		}
		for (i = 0; i < k; i++)
			if (strcmp(v[i], e) == 0) {
				r = kb_errf(KB_ERR_CONFIG,
				    "broker address \"%s\" is listed twice", e);
				goto out;
			}
		v[k++] = e;
		e = NULL;
		if (q == NULL)
			break;
	}
	*out = v;
	*n = k;
	v = NULL;
	r = KB_OK;
out:
	free(e);
	kb_client_addrs_free(v, k);
	return r;
}

enum kb_err
kb_client_open(const struct kb_client_opts *o, struct kb_client **out)
{
	struct kb_client *c = NULL;
	char *cert = NULL, *key = NULL, *ca = NULL, **addrs = NULL;
	size_t cert_len = 0, key_len = 0, ca_len = 0, naddrs = 0, i;
	grpc_channel_credentials *creds = NULL;
	grpc_ssl_pem_key_cert_pair pair;
	grpc_arg args[4];
	grpc_channel_args chargs;
	const char *addr;
	enum kb_err r = KB_ERR_INTERNAL;

	*out = NULL;
	addr = (o->addr != NULL && *o->addr != '\0') ? o->addr
	                                             : KB_CLIENT_DEFAULT_ADDR;
	if ((r = pem_read(o->cert_file, "client certificate", &cert, &cert_len))
	        != KB_OK
	    || (r = pem_read(o->key_file, "client key", &key, &key_len))
	        != KB_OK
	    || (r = pem_read(o->ca_file, "CA file", &ca, &ca_len)) != KB_OK
	    || (r = pem_check(o, cert, key, ca)) != KB_OK)
		goto out;
	/* One address is taken as it is (any gRPC target), as it always
	 * was; a list is checked entry by entry. */
	if (strchr(addr, ',') == NULL) {
		if ((addrs = calloc(1, sizeof(*addrs))) == NULL
		    || (addrs[0] = strdup(addr)) == NULL) {
			r = kb_errf(KB_ERR_NOMEM, "out of memory");
			goto out;
		}
		naddrs = 1;
	} else if ((r = kb_client_addrs_parse(addr, &addrs, &naddrs)) != KB_OK)
		goto out;

	pthread_once(&grpc_once, grpc_start);
	if ((c = calloc(1, sizeof(*c))) == NULL
	    || (c->t = calloc(naddrs, sizeof(*c->t))) == NULL) {
		r = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	c->n = naddrs;
	for (i = 0; i < naddrs; i++) {
		c->t[i].addr = addrs[i];
		addrs[i] = NULL;
	}
	c->timeout_ms =
	    o->timeout_ms > 0 ? o->timeout_ms : KB_CLIENT_DEFAULT_TIMEOUT_MS;
	c->connect_timeout_ms = o->connect_timeout_ms > 0
	    ? o->connect_timeout_ms
	    : KB_CLIENT_DEFAULT_CONNECT_TIMEOUT_MS;

	pair.private_key = key;
	pair.cert_chain = cert;
	/* gRPC copies the PEM strings into the credentials. */
	creds = grpc_ssl_credentials_create_ex(ca, &pair, NULL, NULL);
	if (creds == NULL) {
		r = kb_errf(KB_ERR_CONFIG,
		    "cannot create TLS credentials from "
		    "\"%s\", \"%s\" and \"%s\"",
		    o->cert_file, o->key_file, o->ca_file);
		goto out;
	}
	memset(args, 0, sizeof(args));
	chargs.num_args = 0;
	chargs.args = args;
	args[chargs.num_args].type = GRPC_ARG_STRING;
	args[chargs.num_args].key = (char *)GRPC_ARG_PRIMARY_USER_AGENT_STRING;
	args[chargs.num_args].value.string = (char *)"kbclient/" KB_VERSION;
	chargs.num_args++;
	/* A stream that waits for days (TailEvents) must notice a connection
	 * that died silently: ping when a call has been quiet for 6 minutes
	 * (servers refuse pings more often than every 5 by default), and give
	 * up on it 20 s later. Quick calls never reach it. */
	args[chargs.num_args].type = GRPC_ARG_INTEGER;
	args[chargs.num_args].key = (char *)GRPC_ARG_KEEPALIVE_TIME_MS;
	args[chargs.num_args].value.integer = 6 * 60 * 1000;
	chargs.num_args++;
	args[chargs.num_args].type = GRPC_ARG_INTEGER;
	args[chargs.num_args].key = (char *)GRPC_ARG_KEEPALIVE_TIMEOUT_MS;
	args[chargs.num_args].value.integer = 20 * 1000;
	chargs.num_args++;
	if (o->server_name != NULL && *o->server_name != '\0') {
		args[chargs.num_args].type = GRPC_ARG_STRING;
		args[chargs.num_args].key =
		    (char *)GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
		args[chargs.num_args].value.string = (char *)o->server_name;
		chargs.num_args++;
	}
	/* A channel connects on its first call, not here. */
	for (i = 0; i < c->n; i++) {
		c->t[i].ch = grpc_channel_create(c->t[i].addr, creds, &chargs);
		if (c->t[i].ch == NULL) {
			r = kb_errf(KB_ERR_CONFIG,
			    "cannot create a channel to \"%s\"", c->t[i].addr);
			goto out;
		}
	}
	*out = c;
	c = NULL;
	r = KB_OK;
out:
	if (creds != NULL)
		grpc_channel_credentials_release(creds);
	kb_freezero(cert, cert_len + 1);
	kb_freezero(key, key_len + 1);
	kb_freezero(ca, ca_len + 1);
	kb_client_addrs_free(addrs, naddrs);
	kb_client_close(c);
	return r;
}

void
kb_client_close(struct kb_client *c)
{
	size_t i;

	if (c == NULL)
		return;
	for (i = 0; c->t != NULL && i < c->n; i++) {
		if (c->t[i].ch != NULL)
			grpc_channel_destroy(c->t[i].ch);
		free(c->t[i].addr);
	}
	free(c->t);
	free(c);
}

static size_t
client_cur(const struct kb_client *c)
{
	return __atomic_load_n(&c->cur, __ATOMIC_RELAXED);
}

const char *
kb_client_addr(const struct kb_client *c)
{
	return c->t[client_cur(c)].addr;
}

/* Calls that change nothing, or whose repetition is the same as one call:
 * repeated on another broker after the first may have received them. A
 * method not listed is never repeated once it may have been sent. */
static const char *const retry_safe_methods[] = {
    KB_METHOD_WHOAMI,
    KB_METHOD_LIST_TENANTS,
    KB_METHOD_GET_TENANT,
    KB_METHOD_LIST_ENVIRONMENTS,
    KB_METHOD_GET_ENVIRONMENT,
    KB_METHOD_GET_DATA_KEY,
    KB_METHOD_LIST_KEYS,
    KB_METHOD_GET_KEY,
    KB_METHOD_GET_JOB,
    KB_METHOD_VERIFY_DATA_KEYS,
    KB_METHOD_GET_KEY_EXCHANGE_KEY,
    KB_METHOD_LIST_BACKUPS,
    KB_METHOD_LIST_EVENTS,
    KB_METHOD_TAIL_EVENTS,
    KB_METHOD_LIST_CHECKPOINTS,
    KB_METHOD_GET_AUDIT_KEY,
    KB_METHOD_LIST_AUDIT_KEYS,
    KB_METHOD_GET_CLOCK_STATE,
    "/keybroker.v1.KeyBroker/GetQuorum",
    "/keybroker.v1.KeyBroker/ListApprovalRequests",
    "/keybroker.v1.KeyBroker/GetApprovalRequest",
    KB_METHOD_HEALTH_CHECK,
};

int
kb_client_method_retry_safe(const char *method)
{
	size_t i;

	for (i = 0;
	     i < sizeof(retry_safe_methods) / sizeof(retry_safe_methods[0]);
	     i++)
		if (strcmp(method, retry_safe_methods[i]) == 0)
			return 1;
	return 0;
}

/* gRPC says "failed to connect to all addresses; last error: UNKNOWN:
 * ipv4:127.0.0.1:7443: Failed to connect to remote host: Connection
 * refused": keep the part a person can act on, and say what the usual
 * TLS failures mean. */
static void
connect_reason(const char *addr, const char *details, char *buf, size_t len)
{
	const char *p, *hint = "";
	size_t n;

	if ((p = strstr(details, "last error: ")) != NULL)
		details = p + strlen("last error: ");
	/* Drop a status word "UNKNOWN: " or "UNAVAILABLE: ". */
	n = strspn(details, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_");
	if (n > 0 && strncmp(details + n, ": ", 2) == 0)
		details += n + 2;
	/* Drop a resolved-address prefix "ipv4:1.2.3.4:7443: ". */
	if ((strncmp(details, "ipv4:", 5) == 0
	        || strncmp(details, "ipv6:", 5) == 0
	        || strncmp(details, "unix:", 5) == 0)
	    && (p = strstr(details, ": ")) != NULL)
		details = p + 2;
	if (strstr(details, "certificate verify failed") != NULL)
		hint = " (the broker's certificate is not signed by the CA "
		       "in the CA file)";
	else if (strstr(details, "is not in peer certificate") != NULL)
		hint = " (use a host name the broker's certificate carries, "
		       "or override the TLS server name)";
	else if (strstr(details, "Socket closed") != NULL
	    || strstr(details, "Connection reset") != NULL)
		hint =
		    " (the broker closed the connection: it may not trust "
		    "the client certificate, or it is not a TLS gRPC server)";
	else if (strstr(details, "wrong version number") != NULL)
		hint = " (is it a TLS gRPC server?)";
	/* Long details are cut to fit `buf`: their start says the most. */
	if (snprintf(
	        buf, len, "cannot connect to %s: %s%s", addr, details, hint)
	    < 0)
		snprintf(buf, len, "cannot connect to %s", addr);
}

static void status_set(struct kb_status *st, grpc_status_code code,
    const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void
status_set(struct kb_status *st, grpc_status_code code, const char *fmt, ...)
{
	va_list ap;

	st->code = code;
	st->request_id[0] = '\0';
	va_start(ap, fmt);
	vsnprintf(st->message, sizeof(st->message), fmt, ap);
	va_end(ap);
}

/* The approval request named by the trailer kb-request-id, into st. */
static void
trailer_request_id(const grpc_metadata_array *md, struct kb_status *st)
{
	size_t i, n;

	for (i = 0; i < md->count; i++) {
		if (grpc_slice_str_cmp(
		        md->metadata[i].key, KB_REQUEST_ID_TRAILER)
		    != 0)
			continue;
		n = GRPC_SLICE_LENGTH(md->metadata[i].value);
		if (n >= sizeof(st->request_id))
			n = sizeof(st->request_id) - 1;
		memcpy(st->request_id,
		    GRPC_SLICE_START_PTR(md->metadata[i].value), n);
		st->request_id[n] = '\0';
		return;
	}
}

/* Fill st from a call's final status and details: the broker's words, or
 * what gRPC's connection failures and deadlines mean. Returns the status's
 * kb_err (KB_OK for GRPC_STATUS_OK). *unsent (may be NULL) says whether
 * the call surely never left this client: gRPC found no connection for it
 * (UNAVAILABLE "failed to connect"). */
static enum kb_err
final_status(const struct kb_target *t, int timeout_ms, grpc_status_code code,
    grpc_slice details, struct kb_status *st, int *unsent)
{
	char det[sizeof(st->message)];
	size_t dlen;
	grpc_connectivity_state cs;
	enum kb_err r;

	if (unsent != NULL)
		*unsent = 0;
	if (code == GRPC_STATUS_OK) {
		status_set(st, GRPC_STATUS_OK, "%s", "");
		return KB_OK;
	}
	dlen = GRPC_SLICE_LENGTH(details);
	if (dlen >= sizeof(det))
		dlen = sizeof(det) - 1;
	memcpy(det, GRPC_SLICE_START_PTR(details), dlen);
	det[dlen] = '\0';
	cs = grpc_channel_check_connectivity_state(t->ch, 0);
	/* Our own status (the broker's refusals) comes over a ready
	 * connection; gRPC's connection failures do not. */
	st->code = code;
	if (code == GRPC_STATUS_UNAVAILABLE && unsent != NULL)
		*unsent = strstr(det, "failed to connect") != NULL;
	if (code == GRPC_STATUS_UNAVAILABLE
	    && (cs != GRPC_CHANNEL_READY
	        || strstr(det, "failed to connect") != NULL))
		connect_reason(t->addr, det, st->message, sizeof(st->message));
	else if (code == GRPC_STATUS_DEADLINE_EXCEEDED
	    && (det[0] == '\0' || strcmp(det, "Deadline Exceeded") == 0))
		/* gRPC's own deadline, not a broker message. */
		snprintf(st->message, sizeof(st->message), "%s %s within %g s",
		    cs != GRPC_CHANNEL_READY ? "cannot connect to"
		                             : "no answer from",
		    t->addr, timeout_ms / 1000.0);
	else
		snprintf(st->message, sizeof(st->message), "%s",
		    det[0] != '\0'
		        ? det
		        : kb_strerror(kb_client_err_from_grpc(code)));
	r = kb_errf(kb_client_err_from_grpc(code), "%s", st->message);
	kb_wipe(det, sizeof(det));
	return r;
}

/* One unary call on one target (kb_client_call's contract); *unsent as
 * final_status says. */
static enum kb_err
target_call(const struct kb_client *c, const struct kb_target *t,
    const char *method, const ProtobufCMessage *req,
    const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
    struct kb_status *st, int *unsent)
{
	grpc_completion_queue *cq = NULL;
	grpc_call *call = NULL;
	grpc_byte_buffer *send = NULL, *recv = NULL;
	grpc_metadata_array md_init, md_trail;
	grpc_status_code code = GRPC_STATUS_UNKNOWN;
	grpc_slice details = grpc_empty_slice();
	grpc_slice method_slice;
	const char *error_string = NULL;
	grpc_call_error ce;
	grpc_event ev;
	grpc_op ops[6], *op;
	int tag;
	enum kb_err r = KB_ERR_INTERNAL;

	*resp = NULL;
	*unsent = 0;
	status_set(st, GRPC_STATUS_INTERNAL, "%s", "");
	grpc_metadata_array_init(&md_init);
	grpc_metadata_array_init(&md_trail);
	method_slice = grpc_slice_from_copied_string(method);

	if ((send = kb_wire_pack(req)) == NULL) {
		status_set(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
		r = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	/* One pluck queue per call: calls from many threads never wait on
	 * each other's events. */
	if ((cq = grpc_completion_queue_create_for_pluck(NULL)) == NULL) {
		status_set(st, GRPC_STATUS_INTERNAL,
		    "cannot create a "
		    "completion queue");
		r = kb_errf(KB_ERR_INTERNAL, "%s", st->message);
		goto out;
	}
	call = grpc_channel_create_call(t->ch, NULL, GRPC_PROPAGATE_DEFAULTS,
	    cq, method_slice, NULL,
	    gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
	        gpr_time_from_millis(c->timeout_ms, GPR_TIMESPAN)),
	    NULL);
	if (call == NULL) {
		status_set(st, GRPC_STATUS_INTERNAL, "cannot create a call");
		r = kb_errf(KB_ERR_INTERNAL, "%s", st->message);
		goto out;
	}

	memset(ops, 0, sizeof(ops));
	op = ops;
	op->op = GRPC_OP_SEND_INITIAL_METADATA;
	op->data.send_initial_metadata.count = 0;
	op++;
	op->op = GRPC_OP_SEND_MESSAGE;
	op->data.send_message.send_message = send;
	op++;
	op->op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	op++;
	op->op = GRPC_OP_RECV_INITIAL_METADATA;
	op->data.recv_initial_metadata.recv_initial_metadata = &md_init;
	op++;
	op->op = GRPC_OP_RECV_MESSAGE;
	op->data.recv_message.recv_message = &recv;
	op++;
	op->op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	op->data.recv_status_on_client.trailing_metadata = &md_trail;
	op->data.recv_status_on_client.status = &code;
	op->data.recv_status_on_client.status_details = &details;
	op->data.recv_status_on_client.error_string = &error_string;
	op++;
	ce = grpc_call_start_batch(call, ops, (size_t)(op - ops), &tag, NULL);
	if (ce != GRPC_CALL_OK) {
		status_set(st, GRPC_STATUS_INTERNAL,
		    "cannot start the call "
		    "(grpc_call_error %d)",
		    (int)ce);
		r = kb_errf(KB_ERR_INTERNAL, "%s", st->message);
		goto out;
	}
	ev = grpc_completion_queue_pluck(
	    cq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
	if (ev.type != GRPC_OP_COMPLETE || !ev.success) {
		status_set(st, GRPC_STATUS_INTERNAL,
		    "the call did not "
		    "complete");
		r = kb_errf(KB_ERR_INTERNAL, "%s", st->message);
		goto out;
	}

	if (code != GRPC_STATUS_OK) {
		r = final_status(t, c->timeout_ms, code, details, st, unsent);
		if (code == GRPC_STATUS_ABORTED)
			trailer_request_id(&md_trail, st);
		goto out;
	}
	if (recv == NULL) {
		status_set(st, GRPC_STATUS_INTERNAL,
		    "the broker answered %s "
		    "with no message",
		    method);
		r = kb_errf(KB_ERR_INTERNAL, "%s", st->message);
		goto out;
	}
	if ((r = kb_wire_unpack(resp_desc, recv, KB_CLIENT_MAX_MESSAGE, resp))
	    != KB_OK) {
		r = kb_err_wrap(r, "bad response to %s", method);
		status_set(st, GRPC_STATUS_INTERNAL, "%s", kb_err_msg(r));
		goto out;
	}
	status_set(st, GRPC_STATUS_OK, "%s", "");
	kb_err_clear();
	r = KB_OK;
out:
	if (call != NULL)
		grpc_call_unref(call);
	if (cq != NULL) {
		grpc_completion_queue_shutdown(cq);
		grpc_completion_queue_destroy(cq);
	}
	kb_wire_destroy(send);
	kb_wire_destroy(recv);
	grpc_slice_unref(details);
	grpc_slice_unref(method_slice);
	gpr_free((void *)error_string);
	grpc_metadata_array_destroy(&md_init);
	grpc_metadata_array_destroy(&md_trail);
	return r;
}

/* How waiting for a target's connection ended. */
enum target_conn {
	CONN_READY, /* connected: a call goes out now */
	CONN_FAILED, /* the attempt failed (a call fails at once, saying why) */
	CONN_TIMEOUT /* no connection within the connect timeout */
};

/* Connect target t (if it is not) and wait until it is connected, its
 * attempt failed, or connect_timeout_ms passed. A channel resting after
 * failed attempts (gRPC's backoff, up to minutes) tries again now: this
 * broker is wanted because another failed. */
static enum target_conn
target_connect(const struct kb_client *c, const struct kb_target *t)
{
	grpc_completion_queue *cq;
	grpc_connectivity_state s;
	gpr_timespec deadline;
	grpc_event ev;
	enum target_conn r = CONN_TIMEOUT;
	int tag, attempted = 0;

	s = grpc_channel_check_connectivity_state(t->ch, 1);
	if (s == GRPC_CHANNEL_READY)
		return CONN_READY;
	if (s == GRPC_CHANNEL_TRANSIENT_FAILURE)
		grpc_channel_reset_connect_backoff(t->ch);
	if ((cq = grpc_completion_queue_create_for_pluck(NULL)) == NULL)
		return CONN_FAILED;
	deadline = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
	    gpr_time_from_millis(c->connect_timeout_ms, GPR_TIMESPAN));
	for (;;) {
		if (s == GRPC_CHANNEL_READY) {
			r = CONN_READY;
			break;
		}
		/* A failure counts once an attempt was seen to start: the
		 * state found first may be from before the reset. */
		if (s == GRPC_CHANNEL_SHUTDOWN
		    || (s == GRPC_CHANNEL_TRANSIENT_FAILURE && attempted)) {
			r = CONN_FAILED;
			break;
		}
		if (s == GRPC_CHANNEL_CONNECTING)
			attempted = 1;
		grpc_channel_watch_connectivity_state(
		    t->ch, s, deadline, cq, &tag);
		ev = grpc_completion_queue_pluck(
		    cq, &tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
		if (ev.type != GRPC_OP_COMPLETE || !ev.success) {
			r = CONN_TIMEOUT;
			break;
		}
		s = grpc_channel_check_connectivity_state(t->ch, 1);
	}
	grpc_completion_queue_shutdown(cq);
	grpc_completion_queue_destroy(cq);
	return r;
}

/* The failures of one call over several targets, for the final message. */
struct tried {
	char msg[sizeof(((struct kb_status *)0)->message)];
	size_t o;
	size_t n;
	int all_connect; /* every failure was a connection failure */
};

/* Add target t's failure (st) to the list. */
static void
tried_add(struct tried *tr, const struct kb_target *t,
    const struct kb_status *st, int connect_failure)
{
	const char *m = st->message;
	char prefix[300];
	int w;

	/* "cannot connect to A: why" becomes "A: why" in the list. */
	snprintf(prefix, sizeof(prefix), "cannot connect to %s", t->addr);
	if (strncmp(m, prefix, strlen(prefix)) == 0) {
		m += strlen(prefix);
		if (strncmp(m, ": ", 2) == 0)
			m += 2;
	}
	if (!connect_failure)
		tr->all_connect = 0;
	if (tr->o < sizeof(tr->msg)) {
		w = snprintf(tr->msg + tr->o, sizeof(tr->msg) - tr->o,
		    "%s%s: %s", tr->n > 0 ? "; " : "", t->addr, m);
		if (w > 0)
			tr->o += (size_t)w;
	}
	tr->n++;
}

/* Would repeating this failed call on another target be right? unsent:
 * the call never left; connect: no connection was made at all. */
static int
may_fail_over(
    const char *method, const struct kb_status *st, int unsent, int connect)
{
	if (connect || unsent)
		return 1;
	if (!kb_client_method_retry_safe(method))
		return 0;
	return st->code == GRPC_STATUS_UNAVAILABLE
	    || st->code == GRPC_STATUS_DEADLINE_EXCEEDED;
}

/* The status after every target failed: UNAVAILABLE when none could be
 * reached, else the last failure's code; the message names them all. */
static enum kb_err
tried_status(
    const struct tried *tr, grpc_status_code last, struct kb_status *st)
{
	grpc_status_code code =
	    tr->all_connect ? GRPC_STATUS_UNAVAILABLE : last;

	status_set(st, code, "%s %zu brokers: %s",
	    tr->all_connect ? "cannot connect to any of the"
	                    : "no answer from any of the",
	    tr->n, tr->msg);
	return kb_errf(kb_client_err_from_grpc(code), "%s", st->message);
}

enum kb_err
kb_client_call(struct kb_client *c, const char *method,
    const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
    ProtobufCMessage **resp, struct kb_status *st)
{
	struct kb_status local;
	struct tried tr;
	const struct kb_target *t;
	size_t start, k, i;
	grpc_status_code last = GRPC_STATUS_UNAVAILABLE;
	enum target_conn conn;
	enum kb_err r;
	int unsent;

	*resp = NULL;
	if (st == NULL)
		st = &local;
	if (c->n == 1)
		return target_call(
		    c, &c->t[0], method, req, resp_desc, resp, st, &unsent);
	memset(&tr, 0, sizeof(tr));
	tr.all_connect = 1;
	start = client_cur(c);
	for (k = 0; k < c->n; k++) {
		i = (start + k) % c->n;
		t = &c->t[i];
		if ((conn = target_connect(c, t)) == CONN_TIMEOUT) {
			status_set(st, GRPC_STATUS_UNAVAILABLE,
			    "cannot connect to %s: no connection within %g s",
			    t->addr, c->connect_timeout_ms / 1000.0);
			tried_add(&tr, t, st, 1);
			continue;
		}
		/* Not connected (CONN_FAILED): the call fails at once with
		 * gRPC's reason, unless the broker came back meanwhile. */
		r = target_call(
		    c, t, method, req, resp_desc, resp, st, &unsent);
		if (r == KB_OK) {
			__atomic_store_n(&c->cur, i, __ATOMIC_RELAXED);
			return KB_OK;
		}
		if (!may_fail_over(method, st, unsent, 0))
			return r;
		last = st->code;
		tried_add(&tr, t, st, unsent);
	}
	return tried_status(&tr, last, st);
}

/* ---- server-streaming calls ---- */

struct kb_client_stream {
	struct kb_client *c;
	const struct kb_target *t; /* the broker it is open on */
	const ProtobufCMessageDescriptor *desc;
	grpc_completion_queue *cq;
	grpc_call *call;
	grpc_byte_buffer *send, *recv;
	grpc_metadata_array md_init, md_trail;
	grpc_status_code code;
	grpc_slice details;
	const char *error_string;
	/* Three batches may be in flight at once; their addresses are the
	 * tags. Each must be plucked before the queue is destroyed. */
	char tag_send, tag_status, tag_recv;
	int send_pending, status_pending, recv_pending;
	int got_message; /* then a failure is no connection failure */
	int ended;
	struct kb_status final; /* once ended */
};

/* Wait for batch `tag` to complete (pending is cleared). Returns its
 * success flag. */
static int
stream_pluck(struct kb_client_stream *s, void *tag, int *pending)
{
	grpc_event ev;

	ev = grpc_completion_queue_pluck(
	    s->cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
	*pending = 0;
	return ev.type == GRPC_OP_COMPLETE && ev.success;
}

/* The call is over (or must be): collect its status into s->final. A
 * local reason (st_code != OK) wins over the broker's status. */
static void
stream_end(
    struct kb_client_stream *s, grpc_status_code st_code, const char *why)
{
	if (s->ended)
		return;
	if (st_code != GRPC_STATUS_OK && s->call != NULL)
		grpc_call_cancel(s->call, NULL);
	if (s->status_pending)
		(void)stream_pluck(s, &s->tag_status, &s->status_pending);
	if (s->send_pending)
		(void)stream_pluck(s, &s->tag_send, &s->send_pending);
	if (st_code != GRPC_STATUS_OK)
		status_set(&s->final, st_code, "%s", why);
	else if (s->code != GRPC_STATUS_OK && s->got_message
	    && GRPC_SLICE_LENGTH(s->details) > 0)
		/* The stream was up: this is no connection failure. */
		status_set(&s->final, s->code, "%.*s",
		    (int)(GRPC_SLICE_LENGTH(s->details) < 400
		            ? GRPC_SLICE_LENGTH(s->details)
		            : 400),
		    (const char *)GRPC_SLICE_START_PTR(s->details));
	else
		(void)final_status(s->t, s->c->timeout_ms, s->code, s->details,
		    &s->final, NULL);
	kb_err_clear();
	s->ended = 1;
}

/* For a stream's choice of broker: target t did not connect; a health
 * check says why into *st (0), or finds it answering after all (1). */
static int
stream_probe(
    const struct kb_client *c, const struct kb_target *t, struct kb_status *st)
{
	Grpc__Health__V1__HealthCheckRequest req =
	    GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	int unsent;

	req.service = (char *)"";
	if (target_call(c, t, KB_METHOD_HEALTH_CHECK, &req.base,
	        &grpc__health__v1__health_check_response__descriptor, &m, st,
	        &unsent)
	    == KB_OK) {
		kb_wire_free(m);
		return 1;
	}
	return 0;
}

enum kb_err
kb_client_stream_open(struct kb_client *c, const char *method,
    const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
    int timeout_ms, struct kb_client_stream **out, struct kb_status *st)
{
	struct kb_client_stream *s = NULL;
	struct kb_status local;
	struct tried tr;
	grpc_slice method_slice = grpc_slice_from_copied_string(method);
	enum target_conn conn;
	size_t start, k, i;
	gpr_timespec deadline;
	grpc_op ops[4], *op;
	enum kb_err r = KB_ERR_INTERNAL;

	*out = NULL;
	if (st == NULL)
		st = &local;
	status_set(st, GRPC_STATUS_OK, "%s", "");
	if ((s = calloc(1, sizeof(*s))) == NULL) {
		status_set(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
		r = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	s->c = c;
	s->t = &c->t[0];
	s->desc = resp_desc;
	s->details = grpc_empty_slice();
	grpc_metadata_array_init(&s->md_init);
	grpc_metadata_array_init(&s->md_trail);
	if (c->n > 1) {
		/* The first broker with a connection, from the one that last
		 * answered on; none: the stream ends at once, naming each. */
		memset(&tr, 0, sizeof(tr));
		tr.all_connect = 1;
		start = client_cur(c);
		for (k = 0; k < c->n; k++) {
			i = (start + k) % c->n;
			conn = target_connect(c, &c->t[i]);
			if (conn == CONN_READY
			    || (conn == CONN_FAILED
			        && stream_probe(c, &c->t[i], &s->final))) {
				__atomic_store_n(&c->cur, i, __ATOMIC_RELAXED);
				s->t = &c->t[i];
				break;
			}
			if (conn == CONN_TIMEOUT)
				status_set(&s->final, GRPC_STATUS_UNAVAILABLE,
				    "cannot connect to %s: no connection "
				    "within %g s",
				    c->t[i].addr,
				    c->connect_timeout_ms / 1000.0);
			tried_add(&tr, &c->t[i], &s->final, 1);
		}
		if (k == c->n) {
			(void)tried_status(
			    &tr, GRPC_STATUS_UNAVAILABLE, &s->final);
			kb_err_clear();
			s->ended = 1;
			*out = s;
			s = NULL;
			r = KB_OK;
			goto out;
		}
	}
	if ((s->send = kb_wire_pack(req)) == NULL) {
		status_set(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
		r = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((s->cq = grpc_completion_queue_create_for_pluck(NULL)) == NULL) {
		status_set(st, GRPC_STATUS_INTERNAL,
		    "cannot create a completion queue");
		r = kb_errf(KB_ERR_INTERNAL, "%s", st->message);
		goto out;
	}
	deadline = timeout_ms > 0 ? gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
	               gpr_time_from_millis(timeout_ms, GPR_TIMESPAN))
	                          : gpr_inf_future(GPR_CLOCK_MONOTONIC);
	s->call = grpc_channel_create_call(s->t->ch, NULL,
	    GRPC_PROPAGATE_DEFAULTS, s->cq, method_slice, NULL, deadline, NULL);
	if (s->call == NULL) {
		status_set(st, GRPC_STATUS_INTERNAL, "cannot create a call");
		r = kb_errf(KB_ERR_INTERNAL, "%s", st->message);
		goto out;
	}
	/* Batch 1: the request, all of it. */
	memset(ops, 0, sizeof(ops));
	op = ops;
	op->op = GRPC_OP_SEND_INITIAL_METADATA;
	op++;
	op->op = GRPC_OP_SEND_MESSAGE;
	op->data.send_message.send_message = s->send;
	op++;
	op->op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	op++;
	op->op = GRPC_OP_RECV_INITIAL_METADATA;
	op->data.recv_initial_metadata.recv_initial_metadata = &s->md_init;
	op++;
	if (grpc_call_start_batch(
	        s->call, ops, (size_t)(op - ops), &s->tag_send, NULL)
	    != GRPC_CALL_OK) {
		status_set(st, GRPC_STATUS_INTERNAL, "cannot start the call");
		r = kb_errf(KB_ERR_INTERNAL, "%s", st->message);
		goto out;
	}
	s->send_pending = 1;
	/* Batch 2: the final status, whenever it comes. */
	memset(ops, 0, sizeof(ops));
	ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	ops[0].data.recv_status_on_client.trailing_metadata = &s->md_trail;
	ops[0].data.recv_status_on_client.status = &s->code;
	ops[0].data.recv_status_on_client.status_details = &s->details;
	ops[0].data.recv_status_on_client.error_string = &s->error_string;
	if (grpc_call_start_batch(s->call, ops, 1, &s->tag_status, NULL)
	    != GRPC_CALL_OK) {
		status_set(st, GRPC_STATUS_INTERNAL, "cannot start the call");
		r = kb_errf(KB_ERR_INTERNAL, "%s", st->message);
		goto out;
	}
	s->status_pending = 1;
	*out = s;
	s = NULL;
	r = KB_OK;
out:
	grpc_slice_unref(method_slice);
	kb_client_stream_close(s);
	return r;
}

enum kb_stream_next
kb_client_stream_next(struct kb_client_stream *s, int wait_ms,
    ProtobufCMessage **msg, struct kb_status *st)
{
	grpc_op op;
	grpc_event ev;
	gpr_timespec until;
	enum kb_err r;

	*msg = NULL;
	if (!s->ended && !s->recv_pending) {
		memset(&op, 0, sizeof(op));
		op.op = GRPC_OP_RECV_MESSAGE;
		op.data.recv_message.recv_message = &s->recv;
		if (grpc_call_start_batch(s->call, &op, 1, &s->tag_recv, NULL)
		    != GRPC_CALL_OK)
			stream_end(s, GRPC_STATUS_INTERNAL,
			    "cannot ask for the next message");
		else
			s->recv_pending = 1;
	}
	if (!s->ended) {
		until = wait_ms < 0
		    ? gpr_inf_future(GPR_CLOCK_MONOTONIC)
		    : gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
		        gpr_time_from_millis(wait_ms, GPR_TIMESPAN));
		ev = grpc_completion_queue_pluck(
		    s->cq, &s->tag_recv, until, NULL);
		if (ev.type == GRPC_QUEUE_TIMEOUT)
			return KB_STREAM_WAITING;
		s->recv_pending = 0;
		if (ev.type == GRPC_OP_COMPLETE && ev.success
		    && s->recv != NULL) {
			r = kb_wire_unpack(
			    s->desc, s->recv, KB_CLIENT_MAX_MESSAGE, msg);
			kb_wire_destroy(s->recv);
			s->recv = NULL;
			if (r == KB_OK) {
				s->got_message = 1;
				return KB_STREAM_MESSAGE;
			}
			stream_end(s, GRPC_STATUS_INTERNAL, kb_err_msg(r));
		} else {
			/* No message: the broker has ended the call. */
			stream_end(s, GRPC_STATUS_OK, NULL);
		}
	}
	if (st != NULL)
		*st = s->final;
	return KB_STREAM_ENDED;
}

void
kb_client_stream_close(struct kb_client_stream *s)
{
	if (s == NULL)
		return;
	if (s->call != NULL && !s->ended)
		grpc_call_cancel(s->call, NULL);
	if (s->recv_pending)
		(void)stream_pluck(s, &s->tag_recv, &s->recv_pending);
	if (s->send_pending)
		(void)stream_pluck(s, &s->tag_send, &s->send_pending);
	if (s->status_pending)
		(void)stream_pluck(s, &s->tag_status, &s->status_pending);
	if (s->call != NULL)
		grpc_call_unref(s->call);
	if (s->cq != NULL) {
		grpc_completion_queue_shutdown(s->cq);
		grpc_completion_queue_destroy(s->cq);
	}
	kb_wire_destroy(s->send);
	kb_wire_destroy(s->recv);
	grpc_slice_unref(s->details);
	gpr_free((void *)s->error_string);
	grpc_metadata_array_destroy(&s->md_init);
	grpc_metadata_array_destroy(&s->md_trail);
	free(s);
}

enum kb_err
kb_client_get_data_key(struct kb_client *c, const char *tenant, const char *env,
    uint8_t *dek, size_t dek_cap, size_t *dek_len, uint32_t *version,
    struct kb_status *st)
{
	return kb_client_get_data_key_version(
	    c, tenant, env, 0, dek, dek_cap, dek_len, version, st);
}

enum kb_err
kb_client_get_data_key_version(struct kb_client *c, const char *tenant,
    const char *env, uint32_t want, uint8_t *dek, size_t dek_cap,
    size_t *dek_len, uint32_t *version, struct kb_status *st)
{
	Keybroker__V1__GetDataKeyRequest req =
	    KEYBROKER__V1__GET_DATA_KEY_REQUEST__INIT;
	Keybroker__V1__GetDataKeyResponse *resp = NULL;
	ProtobufCMessage *m = NULL;
	enum kb_err r;

	*dek_len = 0;
	req.tenant_id = (char *)tenant;
	req.environment = (char *)env;
	req.version = want;
	if ((r = kb_client_call(c, KB_METHOD_GET_DATA_KEY, &req.base,
	         &keybroker__v1__get_data_key_response__descriptor, &m, st))
	    != KB_OK)
		return r;
	resp = (Keybroker__V1__GetDataKeyResponse *)m;
	if (resp->dek.len == 0 || resp->dek.len > dek_cap) {
		r = kb_errf(resp->dek.len == 0 ? KB_ERR_INTERNAL
		                               : KB_ERR_INVALID_ARGUMENT,
		    "the data key of %s/%s is %zu "
		    "bytes; the buffer holds %zu",
		    tenant, env, resp->dek.len, dek_cap);
		if (st != NULL)
			status_set(
			    st, GRPC_STATUS_INTERNAL, "%s", kb_err_msg(r));
		goto out;
	}
	memcpy(dek, resp->dek.data, resp->dek.len);
	*dek_len = resp->dek.len;
	if (version != NULL)
		*version = resp->dek_version;
	r = KB_OK;
out:
	kb_wire_free(m); /* wipes the DEK */
	return r;
}

enum kb_err
kb_client_health(struct kb_client *c, int *serving_status, struct kb_status *st)
{
	Grpc__Health__V1__HealthCheckRequest req =
	    GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	enum kb_err r;

	*serving_status = 0;
	req.service = (char *)"";
	if ((r = kb_client_call(c, KB_METHOD_HEALTH_CHECK, &req.base,
	         &grpc__health__v1__health_check_response__descriptor, &m, st))
	    != KB_OK)
		return r;
	*serving_status =
	    (int)((Grpc__Health__V1__HealthCheckResponse *)m)->status;
	kb_wire_free(m);
	return KB_OK;
}
