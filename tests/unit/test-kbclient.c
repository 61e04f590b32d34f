/* SPDX-License-Identifier: Apache-2.0 */
/* test-kbclient.c: the client library's status mapping and file checks,
 * its server-streaming calls (refused, waiting), several addresses (the
 * list's parsing, which failures go on to the next broker, all of them
 * down), kbctl's text formatting (tables, enum words, base64, sanitizing,
 * progress bar), its secret input (password files and prompts, key file
 * formats, once-written output files, confirmations), offline .byok wrapping,
 * and the audit export format: its verification (untouched, altered, removed,
 * truncated, malformed, another key), fingerprints and tail's state file. */
#include "kb_err_grpc.h"
#include "harness.h"
#include "kbt_pki.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* The test links what tests/CMakeLists.txt gives every unit test
 * (kb_common, kb_proto); the client sources are compiled in here so the
 * static helpers can be tested too. */
#include "../../client/audit_export.c"
#include "../../client/byok_wrap.c"
#include "../../client/kbclient.c"
#include "../../client/kbctl_fmt.c"
#include "../../client/kbctl_secret.c"

#include "kb_codec.h"
#include "keybroker.pb-c.h"

/* ---- fixtures: a throwaway certificate and key ---- */

static EVP_PKEY *
make_key(void)
{
	return EVP_EC_gen("P-256");
}

/* Self-signed admin certificate (kb://platform) valid from now+from_s to
 * now+to_s seconds. */
static int
write_cert(const char *path, EVP_PKEY *pk, long from_s, long to_s)
{
	X509 *x = kbt_cert_make(pk, NULL, NULL, "admin", "test",
	    "URI:kb://platform", from_s, to_s, 0);
	FILE *f;
	int ok = 0;

	if (x != NULL && (f = fopen(path, "w")) != NULL) {
		ok = PEM_write_X509(f, x) == 1;
		fclose(f);
	}
	X509_free(x);
	return ok;
}

static int
write_key(const char *path, EVP_PKEY *pk)
{
	FILE *f = fopen(path, "w");
	int ok;

	if (f == NULL)
		return 0;
	ok = PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL) == 1;
	fclose(f);
	return ok;
}

static void
write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	if (f != NULL) {
		fputs(text, f);
		fclose(f);
	}
}

struct pki {
	char dir[256];
	char cert[300], key[300], other_key[300], expired[300], junk[300];
};

static int
pki_make(struct pki *p)
{
	EVP_PKEY *k = make_key(), *k2 = make_key();
	int ok;

	snprintf(p->dir, sizeof(p->dir), "%s", kbt_tmpdir());
	snprintf(p->cert, sizeof(p->cert), "%s/c.crt", p->dir);
	snprintf(p->key, sizeof(p->key), "%s/c.key", p->dir);
	snprintf(p->other_key, sizeof(p->other_key), "%s/o.key", p->dir);
	snprintf(p->expired, sizeof(p->expired), "%s/e.crt", p->dir);
	snprintf(p->junk, sizeof(p->junk), "%s/junk.txt", p->dir);
	ok = k != NULL && k2 != NULL && write_cert(p->cert, k, -60, 3600)
	    && write_key(p->key, k) && write_key(p->other_key, k2)
	    && write_cert(p->expired, k, -7200, -3600);
	write_text(p->junk, "not a certificate\n");
	EVP_PKEY_free(k);
	EVP_PKEY_free(k2);
	return ok;
}

/* A local TCP port nobody listens on (almost surely, for a moment). */
static int
closed_port(void)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);
	int s = socket(AF_INET, SOCK_STREAM, 0), port = 1;

	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (s >= 0 && bind(s, (struct sockaddr *)&a, sizeof(a)) == 0
	    && getsockname(s, (struct sockaddr *)&a, &len) == 0)
		port = ntohs(a.sin_port);
	if (s >= 0)
		close(s);
	return port;
}

/* ---- client library ---- */

static void
test_status_mapping(void)
{
	int s, e;

	KBT_ASSERT_INT(kb_client_err_from_grpc(GRPC_STATUS_OK), ==, KB_OK);
	for (s = 1; s <= GRPC_STATUS_UNAUTHENTICATED; s++)
		if (kb_client_err_from_grpc((grpc_status_code)s) == KB_OK)
			KBT_FAIL("status %d maps to KB_OK", s);
	/* Broker error -> status -> client error -> the same status. */
	for (e = 0; e < KB_ERR_COUNT_; e++) {
		grpc_status_code g = kb_err_to_grpc((enum kb_err)e);

		if (kb_err_to_grpc(kb_client_err_from_grpc(g)) != g)
			KBT_FAIL("%s -> %s does not come back",
			    kb_strerror((enum kb_err)e),
			    kb_grpc_status_name(g));
	}
	KBT_ASSERT_INT(kb_client_err_from_grpc(GRPC_STATUS_NOT_FOUND), ==,
	    KB_ERR_NOT_FOUND);
	KBT_ASSERT_INT(kb_client_err_from_grpc(GRPC_STATUS_UNAVAILABLE), ==,
	    KB_ERR_UNAVAILABLE);
}

static void
test_connect_reason(void)
{
	const char *addr = "127.0.0.1:7443";
	char buf[512];

	connect_reason(addr,
	    "failed to connect to all addresses; last error: "
	    "UNKNOWN: ipv4:127.0.0.1:7443: Failed to connect to remote host: "
	    "Connection refused",
	    buf, sizeof(buf));
	KBT_ASSERT_STR(buf,
	    "cannot connect to 127.0.0.1:7443: Failed to "
	    "connect to remote host: Connection refused");
	connect_reason(addr, "UNAVAILABLE: ipv4:127.0.0.1:7443: Socket closed",
	    buf, sizeof(buf));
	KBT_ASSERT_CONTAINS(buf,
	    "cannot connect to 127.0.0.1:7443: Socket "
	    "closed (");
	KBT_ASSERT_CONTAINS(buf, "client certificate");
	connect_reason(addr,
	    "Ssl handshake failed: SSL_ERROR_SSL: error:0A000086:"
	    "SSL routines::certificate verify failed",
	    buf, sizeof(buf));
	KBT_ASSERT_CONTAINS(buf, "not signed by the CA");
}

static void
test_open_file_errors(void)
{
	struct pki p;
	struct kb_client *c = NULL;
	struct kb_client_opts o;

	KBT_ASSERT(pki_make(&p));
	memset(&o, 0, sizeof(o));
	o.cert_file = p.cert;
	o.key_file = p.key;
	o.ca_file = "/nonexistent/ca.crt";
	KBT_ASSERT_ERR(kb_client_open(&o, &c), KB_ERR_IO);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_IO), "/nonexistent/ca.crt");
	KBT_ASSERT(c == NULL);

	o.ca_file = p.junk;
	KBT_ASSERT_ERR(kb_client_open(&o, &c), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG), "is not a PEM file");

	o.ca_file = p.cert;
	o.key_file = p.other_key;
	KBT_ASSERT_ERR(kb_client_open(&o, &c), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG), "does not match");

	o.key_file = p.key;
	o.cert_file = p.expired;
	KBT_ASSERT_ERR(kb_client_open(&o, &c), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG), "has expired");

	o.cert_file = NULL;
	KBT_ASSERT_ERR(kb_client_open(&o, &c), KB_ERR_CONFIG);
	kbt_rmtree(p.dir);
}

static void
test_connect_refused(void)
{
	struct pki p;
	struct kb_client *c = NULL;
	struct kb_client_opts o;
	struct kb_status st;
	char addr[64], want[96];
	int serving = -1;

	KBT_ASSERT(pki_make(&p));
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", closed_port());
	memset(&o, 0, sizeof(o));
	o.addr = addr;
	o.cert_file = p.cert;
	o.key_file = p.key;
	o.ca_file = p.cert;
	o.timeout_ms = 5000;
	KBT_ASSERT_OK(kb_client_open(&o, &c));
	KBT_ASSERT_STR(kb_client_addr(c), addr);
	KBT_ASSERT_ERR(kb_client_health(c, &serving, &st), KB_ERR_UNAVAILABLE);
	KBT_ASSERT_INT(st.code, ==, GRPC_STATUS_UNAVAILABLE);
	snprintf(want, sizeof(want), "cannot connect to %s: ", addr);
	KBT_ASSERT(strncmp(st.message, want, strlen(want)) == 0);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_UNAVAILABLE), want);
	kb_client_close(c);
	kbt_rmtree(p.dir);
}

static void
test_stream_refused(void)
{
	Keybroker__V1__TailEventsRequest req =
	    KEYBROKER__V1__TAIL_EVENTS_REQUEST__INIT;
	struct pki p;
	struct kb_client *c = NULL;
	struct kb_client_stream *s = NULL;
	struct kb_client_opts o;
	struct kb_status st;
	ProtobufCMessage *m = (ProtobufCMessage *)&req;
	char addr[64], want[96];

	KBT_ASSERT(pki_make(&p));
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", closed_port());
	memset(&o, 0, sizeof(o));
	o.addr = addr;
	o.cert_file = p.cert;
	o.key_file = p.key;
	o.ca_file = p.cert;
	KBT_ASSERT_OK(kb_client_open(&o, &c));
	KBT_ASSERT_OK(kb_client_stream_open(c, KB_METHOD_TAIL_EVENTS, &req.base,
	    &keybroker__v1__event__descriptor, 0, &s, &st));
	KBT_ASSERT_INT(
	    kb_client_stream_next(s, 10000, &m, &st), ==, KB_STREAM_ENDED);
	KBT_ASSERT(m == NULL);
	KBT_ASSERT_INT(st.code, ==, GRPC_STATUS_UNAVAILABLE);
	snprintf(want, sizeof(want), "cannot connect to %s: ", addr);
	KBT_ASSERT(strncmp(st.message, want, strlen(want)) == 0);
	/* Once ended, it stays ended and says the same. */
	memset(&st, 0, sizeof(st));
	KBT_ASSERT_INT(
	    kb_client_stream_next(s, 0, &m, &st), ==, KB_STREAM_ENDED);
	KBT_ASSERT_INT(st.code, ==, GRPC_STATUS_UNAVAILABLE);
	kb_client_stream_close(s);
	kb_client_stream_close(NULL);
	kb_client_close(c);
	kbt_rmtree(p.dir);
}

/* A listener that never answers (the TLS handshake hangs): the stream
 * waits, says so, and closes cleanly while a read is pending. */
static void
test_stream_waiting(void)
{
	Keybroker__V1__TailEventsRequest req =
	    KEYBROKER__V1__TAIL_EVENTS_REQUEST__INIT;
	struct pki p;
	struct kb_client *c = NULL;
	struct kb_client_stream *s = NULL;
	struct kb_client_opts o;
	struct kb_status st;
	struct sockaddr_in a;
	socklen_t len = sizeof(a);
	ProtobufCMessage *m = NULL;
	char addr[64];
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	KBT_ASSERT(fd >= 0);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	KBT_ASSERT(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
	KBT_ASSERT(listen(fd, 4) == 0);
	KBT_ASSERT(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
	KBT_ASSERT(pki_make(&p));
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", ntohs(a.sin_port));
	memset(&o, 0, sizeof(o));
	o.addr = addr;
	o.cert_file = p.cert;
	o.key_file = p.key;
	o.ca_file = p.cert;
	KBT_ASSERT_OK(kb_client_open(&o, &c));
	KBT_ASSERT_OK(kb_client_stream_open(c, KB_METHOD_TAIL_EVENTS, &req.base,
	    &keybroker__v1__event__descriptor, 0, &s, &st));
	KBT_ASSERT_INT(
	    kb_client_stream_next(s, 100, &m, &st), ==, KB_STREAM_WAITING);
	KBT_ASSERT(m == NULL);
	KBT_ASSERT_INT(
	    kb_client_stream_next(s, 100, &m, &st), ==, KB_STREAM_WAITING);
	kb_client_stream_close(s);
	kb_client_close(c);
	close(fd);
	kbt_rmtree(p.dir);
}

/* ---- several broker addresses ---- */

static void
test_addrs_parse(void)
{
	static const struct {
		const char *list, *err; /* err: NULL = parses */
	} bad[] = {
	    {"", "no broker address given"},
	    {"  ", "no broker address given"},
	    {"a:1,,b:2", "entry 2 is empty"},
	    {"a:1,", "entry 2 is empty"},
	    {",a:1", "entry 1 is empty"},
	    {"a:1, ,b:2", "entry 2 is empty"},
	    {"a:1,b", "\"b\": no port"},
	    {"a:1,:7443", "\":7443\": no host"},
	    {"a:1,b:", "not a number from 1 to 65535"},
	    {"a:1,b:0", "not a number from 1 to 65535"},
	    {"a:1,b:65536", "not a number from 1 to 65535"},
	    {"a:1,b:12x", "not a number from 1 to 65535"},
	    {"a:1,b:-1", "not a number from 1 to 65535"},
	    {"a:1,::1:7443", "[ADDRESS]:PORT"},
	    {"a:1,[::1]", "no port"},
	    {"a:1,[]:1", "[ADDRESS]:PORT"},
	    {"a:1,a b:2", "a blank inside it"},
	    {"a:1,a:1", "\"a:1\" is listed twice"},
	    {"a:1,unix:", "nothing after the scheme"},
	};
	char **v = NULL, list[512];
	size_t n = 99, i, o;

	KBT_ASSERT_OK(kb_client_addrs_parse("127.0.0.1:7443", &v, &n));
	KBT_ASSERT_INT(n, ==, 1);
	KBT_ASSERT_STR(v[0], "127.0.0.1:7443");
	kb_client_addrs_free(v, n);
	KBT_ASSERT_OK(kb_client_addrs_parse(
	    " a.example:7443 ,\t[::1]:7444,unix:/run/kb.sock,"
	    "dns:///b.example:7445",
	    &v, &n));
	KBT_ASSERT_INT(n, ==, 4);
	KBT_ASSERT_STR(v[0], "a.example:7443");
	KBT_ASSERT_STR(v[1], "[::1]:7444");
	KBT_ASSERT_STR(v[2], "unix:/run/kb.sock");
	KBT_ASSERT_STR(v[3], "dns:///b.example:7445");
	kb_client_addrs_free(v, n);
	kb_client_addrs_free(NULL, 0);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		v = (char **)&list; /* must come back NULL */
		if (kb_client_addrs_parse(bad[i].list, &v, &n) != KB_ERR_CONFIG)
			KBT_FAIL("\"%s\" parsed", bad[i].list);
		KBT_ASSERT(v == NULL && n == 0);
		KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG), bad[i].err);
	}
	/* KB_CLIENT_MAX_ADDRS, and one more. */
	for (i = 0, o = 0; i <= KB_CLIENT_MAX_ADDRS; i++)
		o += (size_t)snprintf(list + o, sizeof(list) - o, "%sh%zu:1",
		    i > 0 ? "," : "", i);
	KBT_ASSERT_ERR(kb_client_addrs_parse(list, &v, &n), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG), "more than 16");
	*strrchr(list, ',') = '\0';
	KBT_ASSERT_OK(kb_client_addrs_parse(list, &v, &n));
	KBT_ASSERT_INT(n, ==, KB_CLIENT_MAX_ADDRS);
	kb_client_addrs_free(v, n);
}

/* Which failures go on to the next broker. */
static void
test_fail_over_rule(void)
{
	struct kb_status st;

	memset(&st, 0, sizeof(st));
	KBT_ASSERT(kb_client_method_retry_safe(KB_METHOD_GET_DATA_KEY));
	KBT_ASSERT(kb_client_method_retry_safe(KB_METHOD_LIST_EVENTS));
	KBT_ASSERT(kb_client_method_retry_safe(KB_METHOD_HEALTH_CHECK));
	KBT_ASSERT(!kb_client_method_retry_safe(KB_METHOD_CREATE_TENANT));
	KBT_ASSERT(!kb_client_method_retry_safe(KB_METHOD_LOCK_TENANT));
	KBT_ASSERT(!kb_client_method_retry_safe(KB_METHOD_ROTATE_AUDIT_KEY));
	KBT_ASSERT(!kb_client_method_retry_safe("/keybroker.v1.KeyBroker/New"));
	/* Never sent (no connection): any call moves on. */
	st.code = GRPC_STATUS_UNAVAILABLE;
	KBT_ASSERT(may_fail_over(KB_METHOD_CREATE_TENANT, &st, 1, 0));
	KBT_ASSERT(may_fail_over(KB_METHOD_CREATE_TENANT, &st, 0, 1));
	/* Maybe received (the connection broke, the broker said so): only a
	 * call that is safe to repeat. */
	KBT_ASSERT(!may_fail_over(KB_METHOD_CREATE_TENANT, &st, 0, 0));
	KBT_ASSERT(may_fail_over(KB_METHOD_GET_DATA_KEY, &st, 0, 0));
	st.code = GRPC_STATUS_DEADLINE_EXCEEDED;
	KBT_ASSERT(!may_fail_over(KB_METHOD_ACTIVATE_KEY, &st, 0, 0));
	KBT_ASSERT(may_fail_over(KB_METHOD_GET_DATA_KEY, &st, 0, 0));
	/* The broker's answer: the same everywhere. */
	st.code = GRPC_STATUS_PERMISSION_DENIED;
	KBT_ASSERT(!may_fail_over(KB_METHOD_GET_DATA_KEY, &st, 0, 0));
	st.code = GRPC_STATUS_FAILED_PRECONDITION;
	KBT_ASSERT(!may_fail_over(KB_METHOD_GET_DATA_KEY, &st, 0, 0));
}

/* Two addresses, neither reachable (one refuses, one never answers TLS):
 * calls and streams say so, naming both, within the connect timeout. */
static void
test_failover_all_down(void)
{
	Keybroker__V1__TailEventsRequest req =
	    KEYBROKER__V1__TAIL_EVENTS_REQUEST__INIT;
	struct pki p;
	struct kb_client *c = NULL;
	struct kb_client_stream *s = NULL;
	struct kb_client_opts o;
	struct kb_status st;
	struct sockaddr_in a;
	socklen_t len = sizeof(a);
	ProtobufCMessage *m = NULL;
	char refused[64], hung[64], list[160], want[200];
	int serving = -1, fd = socket(AF_INET, SOCK_STREAM, 0);

	KBT_ASSERT(fd >= 0);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	KBT_ASSERT(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
	KBT_ASSERT(listen(fd, 4) == 0);
	KBT_ASSERT(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
	KBT_ASSERT(pki_make(&p));
	snprintf(refused, sizeof(refused), "127.0.0.1:%d", closed_port());
	snprintf(hung, sizeof(hung), "127.0.0.1:%d", ntohs(a.sin_port));
	snprintf(list, sizeof(list), "%s, %s", refused, hung);
	memset(&o, 0, sizeof(o));
	o.addr = list;
	o.cert_file = p.cert;
	o.key_file = p.key;
	o.ca_file = p.cert;
	o.connect_timeout_ms = 300;
	KBT_ASSERT_OK(kb_client_open(&o, &c));
	KBT_ASSERT_STR(kb_client_addr(c), refused);
	KBT_ASSERT_ERR(kb_client_health(c, &serving, &st), KB_ERR_UNAVAILABLE);
	KBT_ASSERT_INT(st.code, ==, GRPC_STATUS_UNAVAILABLE);
	snprintf(want, sizeof(want),
	    "cannot connect to any of the 2 brokers: %s: ", refused);
	KBT_ASSERT(strncmp(st.message, want, strlen(want)) == 0);
	snprintf(want, sizeof(want), "; %s: no connection within 0.3 s", hung);
	KBT_ASSERT_CONTAINS(st.message, want);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_UNAVAILABLE), want);
	/* A stream: opened, ended at once with the same kind of status. */
	KBT_ASSERT_OK(kb_client_stream_open(c, KB_METHOD_TAIL_EVENTS, &req.base,
	    &keybroker__v1__event__descriptor, 0, &s, &st));
	KBT_ASSERT_INT(
	    kb_client_stream_next(s, 0, &m, &st), ==, KB_STREAM_ENDED);
	KBT_ASSERT(m == NULL);
	KBT_ASSERT_INT(st.code, ==, GRPC_STATUS_UNAVAILABLE);
	KBT_ASSERT_CONTAINS(
	    st.message, "cannot connect to any of the 2 brokers");
	KBT_ASSERT_CONTAINS(st.message, refused);
	KBT_ASSERT_CONTAINS(st.message, hung);
	kb_client_stream_close(s);
	kb_client_close(c);
	/* A bad list fails at open, naming the entry. */
	o.addr = "127.0.0.1:1,127.0.0.1";
	KBT_ASSERT_ERR(kb_client_open(&o, &c), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_CONFIG), "\"127.0.0.1\": no port");
	KBT_ASSERT(c == NULL);
	close(fd);
	kbt_rmtree(p.dir);
}

/* ---- kbctl text ---- */

static void
test_table(void)
{
	static const char *const h[] = {"ID", "DISPLAY NAME", "CREATED"};
	const char *r1[] = {"acme", "Acme Corp", "2026-11-22T04:39:11Z"};
	const char *r2[] = {"a", NULL, "x"};
	const char *r3[] = {"wide", "\xe5\x90\x8d\xe5\x89\x8d", ""};
	struct kbctl_table *t = kbctl_table_new(3, h);
	char *s;

	KBT_ASSERT(t != NULL);
	KBT_ASSERT_INT(kbctl_table_add(t, r1), ==, 0);
	KBT_ASSERT_INT(kbctl_table_add(t, r2), ==, 0);
	KBT_ASSERT_INT(kbctl_table_add(t, r3), ==, 0);
	KBT_ASSERT_INT(kbctl_table_rows(t), ==, 3);
	s = kbctl_table_format(t);
	kbctl_table_free(t);
	/* Two wide characters take 4 columns; the empty last cell leaves no
	 * trailing spaces; NULL prints "-". */
	KBT_ASSERT_STR(s,
	    "ID    DISPLAY NAME  CREATED\n"
	    "acme  Acme Corp     2026-11-22T04:39:11Z\n"
	    "a     -             x\n"
	    "wide  \xe5\x90\x8d\xe5\x89\x8d\n");
	free(s);
}

static void
test_sanitize(void)
{
	char out[64];

	kbctl_sanitize("a\x1b[31mb\x07\x7f", out, sizeof(out));
	KBT_ASSERT_STR(out, "a?[31mb??");
	kbctl_sanitize("x\xc2\x9b"
	               "31m",
	    out, sizeof(out)); /* C1 CSI */
	KBT_ASSERT_STR(out, "x?31m");
	kbctl_sanitize("caf\xc3\xa9", out, sizeof(out));
	KBT_ASSERT_STR(out, "caf\xc3\xa9");
	kbctl_sanitize("abcdef", out, 4);
	KBT_ASSERT_STR(out, "abc");
	KBT_ASSERT_INT(kbctl_text_width("caf\xc3\xa9"), ==, 4);
	KBT_ASSERT_INT(kbctl_text_width("\xe5\x90\x8d"), ==, 2);
	KBT_ASSERT_INT(kbctl_text_width("\xff\xfe"), ==, 2);
}

static void
test_enum_words(void)
{
	char b[32];

	KBT_ASSERT_STR(
	    kbctl_enum_word(&keybroker__v1__encryption_mode__descriptor,
	        KEYBROKER__V1__ENCRYPTION_MODE__ENCRYPTION_MODE_PLATFORM, b,
	        sizeof(b)),
	    "platform");
	KBT_ASSERT_STR(
	    kbctl_enum_word(&keybroker__v1__environment_state__descriptor,
	        KEYBROKER__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_LOCKED, b,
	        sizeof(b)),
	    "locked");
	KBT_ASSERT_STR(kbctl_enum_word(&keybroker__v1__role__descriptor,
	                   KEYBROKER__V1__ROLE__ROLE_ADMIN, b, sizeof(b)),
	    "admin");
	KBT_ASSERT_STR(
	    kbctl_enum_word(
	        &grpc__health__v1__health_check_response__serving_status__descriptor,
	        2, b, sizeof(b)),
	    "not_serving");
	KBT_ASSERT_STR(
	    kbctl_enum_word(&keybroker__v1__role__descriptor, 42, b, sizeof(b)),
	    "unknown(42)");
}

static void
test_base64(void)
{
	static const struct {
		const char *in, *out;
	} v[] = {
	    {"", ""},
	    {"f", "Zg=="},
	    {"fo", "Zm8="},
	    {"foo", "Zm9v"},
	    {"foob", "Zm9vYg=="},
	    {"fooba", "Zm9vYmE="},
	    {"foobar", "Zm9vYmFy"},
	};
	uint8_t dek[32], back[64];
	char out[64];
	size_t i, n = 0, at = 9;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		KBT_ASSERT_INT(
		    kb_base64_encode((const uint8_t *)v[i].in, strlen(v[i].in),
		        out, sizeof(out), KB_B64_STD),
		    ==, strlen(v[i].out));
		KBT_ASSERT_STR(out, v[i].out);
		/* And back, strictly (padded, standard alphabet). */
		KBT_ASSERT_INT(kb_base64_decode(out, strlen(out), back,
		                   sizeof(back), &n, NULL, KB_B64_STRICT),
		    ==, 0);
		KBT_ASSERT(
		    n == strlen(v[i].in) && memcmp(back, v[i].in, n) == 0);
	}
	for (i = 0; i < sizeof(dek); i++)
		dek[i] = (uint8_t)i;
	KBT_ASSERT_INT(
	    kb_base64_encode(dek, 32, out, sizeof(out), KB_B64_STD), ==, 44);
	KBT_ASSERT_STR(out, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
	KBT_ASSERT_INT(kb_base64_encode(dek, 32, out, 44, KB_B64_STD), ==, 0);
	/* Strict refuses what the lenient decoder (for .byok files) takes. */
	KBT_ASSERT_INT(kb_base64_decode("Zg", 2, back, sizeof(back), &n, NULL,
	                   KB_B64_STRICT),
	    ==, KB_B64_BAD_LENGTH);
	KBT_ASSERT_INT(
	    kb_base64_decode("Zg", 2, back, sizeof(back), &n, NULL, 0), ==, 0);
	KBT_ASSERT_INT(kb_base64_decode("-_8=", 4, back, sizeof(back), &n, &at,
	                   KB_B64_STRICT),
	    ==, KB_B64_BAD_CHAR);
	KBT_ASSERT_INT(at, ==, 0);
	KBT_ASSERT_INT(
	    kb_base64_decode("-_8", 3, back, sizeof(back), &n, NULL, 0), ==, 0);
	KBT_ASSERT(n == 2 && back[0] == 0xfb && back[1] == 0xff);
	KBT_ASSERT_INT(kb_base64_decode("Zm9v", 4, back, 2, &n, NULL, 0), ==,
	    KB_B64_TOO_LONG);
	KBT_ASSERT_INT(
	    kb_base64_decode("Zm9vY", 5, back, sizeof(back), &n, NULL, 0), ==,
	    KB_B64_BAD_LENGTH);
}

static void
test_time_sec(void)
{
	char b[40];

	KBT_ASSERT_STR(kbctl_time_sec(0, b, sizeof(b)), "-");
	KBT_ASSERT_STR(kbctl_time_sec(1795322351123456LL, b, sizeof(b)),
	    "2026-11-22T04:39:11Z");
}

static void
test_progress_bar(void)
{
	char b[128];

	KBT_ASSERT_STR(kbctl_progress_bar(412, 1000, b, sizeof(b)),
	    "[########------------]  412/1000 environments re-wrapped");
	KBT_ASSERT_STR(kbctl_progress_bar(0, 1000, b, sizeof(b)),
	    "[--------------------]  0/1000 environments re-wrapped");
	/* Full only when everything is done. */
	KBT_ASSERT_STR(kbctl_progress_bar(999, 1000, b, sizeof(b)),
	    "[###################-]  999/1000 environments re-wrapped");
	KBT_ASSERT_STR(kbctl_progress_bar(1000, 1000, b, sizeof(b)),
	    "[####################]  1000/1000 environments re-wrapped");
	KBT_ASSERT_STR(kbctl_progress_bar(0, 0, b, sizeof(b)),
	    "[####################]  0/0 environments re-wrapped");
	KBT_ASSERT_STR(kbctl_progress_bar(7, 3, b, sizeof(b)),
	    "[####################]  3/3 environments re-wrapped");
	KBT_ASSERT_STR(kbctl_progress_bar(1, 3, b, sizeof(b)),
	    "[######--------------]  1/3 environments re-wrapped");
	KBT_ASSERT_STR(
	    kbctl_progress_bar(UINT64_MAX - 1, UINT64_MAX, b, sizeof(b)),
	    "[###################-]  18446744073709551614/"
	    "18446744073709551615 environments re-wrapped");
}

static void
test_fingerprint_short(void)
{
	char b[32];

	KBT_ASSERT_STR(
	    kbctl_fingerprint_short("0123456789abcdef0123456789abcdef"
	                            "0123456789abcdef0123456789abcdef",
	        b, sizeof(b)),
	    "0123456789abcdef\xe2\x80\xa6");
	KBT_ASSERT_INT(kbctl_text_width(b), ==, 17);
	KBT_ASSERT_STR(kbctl_fingerprint_short("abc", b, sizeof(b)), "abc");
	KBT_ASSERT_STR(kbctl_fingerprint_short("", b, sizeof(b)), "-");
}

/* ---- kbctl secret input ---- */

static void
write_mode(const char *path, const char *text, size_t n, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

	if (fd >= 0) {
		if (write(fd, text, n) != (ssize_t)n)
			perror(path);
		fchmod(fd, mode);
		close(fd);
	}
}

static void
test_password_file(void)
{
	char dir[256], path[300];
	char *pw = NULL;
	size_t n = 0;
	int p[2];

	snprintf(dir, sizeof(dir), "%s", kbt_tmpdir());
	snprintf(path, sizeof(path), "%s/pw", dir);

	/* The first line, without its newline; the rest is ignored. */
	write_mode(path, "s3cret pw\nsecond\n", 17, 0600);
	KBT_ASSERT_OK(kbctl_password_file_read(path, &pw, &n));
	KBT_ASSERT_STR(pw, "s3cret pw");
	KBT_ASSERT_INT(n, ==, 9);
	kbctl_password_free(pw);
	write_mode(path, "crlf\r\n", 6, 0400);
	KBT_ASSERT_OK(kbctl_password_file_read(path, &pw, &n));
	KBT_ASSERT_STR(pw, "crlf");
	kbctl_password_free(pw);
	write_mode(path, "no newline", 10, 0600);
	KBT_ASSERT_OK(kbctl_password_file_read(path, &pw, &n));
	KBT_ASSERT_STR(pw, "no newline");
	kbctl_password_free(pw);

	/* Refused: readable or writable by others, empty, no such file. */
	write_mode(path, "pw\n", 3, 0644);
	KBT_ASSERT_ERR(kbctl_password_file_read(path, &pw, &n), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG), "chmod 600");
	KBT_ASSERT(pw == NULL);
	write_mode(path, "pw\n", 3, 0620);
	KBT_ASSERT_ERR(kbctl_password_file_read(path, &pw, &n), KB_ERR_CONFIG);
	write_mode(path, "\nsecond line\n", 13, 0600);
	KBT_ASSERT_ERR(kbctl_password_file_read(path, &pw, &n), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG), "first line");
	write_mode(path, "", 0, 0600);
	KBT_ASSERT_ERR(kbctl_password_file_read(path, &pw, &n), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG), "empty");
	snprintf(path, sizeof(path), "%s/none", dir);
	KBT_ASSERT_ERR(kbctl_password_file_read(path, &pw, &n), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG), path);
	KBT_ASSERT_ERR(kbctl_password_file_read(dir, &pw, &n), KB_ERR_CONFIG);

	/* A pipe ("--password-file <(...)", /dev/stdin): mode 0600. */
	KBT_ASSERT(pipe(p) == 0);
	KBT_ASSERT(write(p[1], "piped\nrest", 10) == 10);
	close(p[1]);
	snprintf(path, sizeof(path), "/dev/fd/%d", p[0]);
	KBT_ASSERT_OK(kbctl_password_file_read(path, &pw, &n));
	KBT_ASSERT_STR(pw, "piped");
	kbctl_password_free(pw);
	close(p[0]);
	kbt_rmtree(dir);
}

/* Feed `input` to password_ask through a pipe (no terminal: no echo to
 * turn off); the prompts go to /dev/null. */
static enum kb_err
ask_with(const char *input, int twice, char **pw, size_t *n)
{
	int p[2], out = open("/dev/null", O_WRONLY);
	enum kb_err e;

	if (out < 0 || pipe(p) != 0)
		return KB_ERR_IO;
	if (write(p[1], input, strlen(input)) != (ssize_t)strlen(input))
		return KB_ERR_IO;
	close(p[1]);
	e = password_ask(
	    p[0], out, "Password:", twice ? "Repeat:" : NULL, pw, n);
	close(p[0]);
	close(out);
	return e;
}

static void
test_password_prompt(void)
{
	char *pw = NULL, *big;
	size_t n = 0;

	KBT_ASSERT_OK(ask_with("correct horse\ncorrect horse\n", 1, &pw, &n));
	KBT_ASSERT_STR(pw, "correct horse");
	KBT_ASSERT_INT(n, ==, 13);
	kbctl_password_free(pw);
	KBT_ASSERT_OK(ask_with("once\r\n", 0, &pw, &n));
	KBT_ASSERT_STR(pw, "once");
	kbctl_password_free(pw);
	KBT_ASSERT_ERR(
	    ask_with("aaa\nbbb\n", 1, &pw, &n), KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_INVALID_ARGUMENT), "do not match");
	KBT_ASSERT(pw == NULL);
	KBT_ASSERT_ERR(
	    ask_with("aaa\naaaa\n", 1, &pw, &n), KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_ERR(ask_with("\n", 0, &pw, &n), KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_INVALID_ARGUMENT), "empty");
	KBT_ASSERT_ERR(ask_with("", 0, &pw, &n), KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_INVALID_ARGUMENT), "no answer");
	/* Longer than KBCTL_PASSWORD_MAX. */
	big = malloc(KBCTL_PASSWORD_MAX + 3);
	KBT_ASSERT(big != NULL);
	memset(big, 'x', KBCTL_PASSWORD_MAX + 1);
	big[KBCTL_PASSWORD_MAX + 1] = '\n';
	big[KBCTL_PASSWORD_MAX + 2] = '\0';
	KBT_ASSERT_ERR(ask_with(big, 0, &pw, &n), KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_INVALID_ARGUMENT), "longer");
	big[KBCTL_PASSWORD_MAX] = '\n';
	big[KBCTL_PASSWORD_MAX + 1] = '\0';
	KBT_ASSERT_OK(ask_with(big, 0, &pw, &n));
	KBT_ASSERT_INT(n, ==, KBCTL_PASSWORD_MAX);
	kbctl_password_free(pw);
	free(big);
}

static int
confirm_with(const char *input, const char *word)
{
	int p[2], out = open("/dev/null", O_WRONLY), r;

	if (out < 0 || pipe(p) != 0)
		return -9;
	if (write(p[1], input, strlen(input)) != (ssize_t)strlen(input))
		return -9;
	close(p[1]);
	r = confirm_ask(
	    p[0], out, "Locking tenant acme:\n", "the tenant id", word);
	close(p[0]);
	close(out);
	return r;
}

static void
test_confirm(void)
{
	KBT_ASSERT_INT(confirm_with("acme\n", "acme"), ==, 1);
	KBT_ASSERT_INT(confirm_with("acme", "acme"), ==, 1);
	KBT_ASSERT_INT(confirm_with("acm\n", "acme"), ==, 0);
	KBT_ASSERT_INT(confirm_with("acme \n", "acme"), ==, 0);
	KBT_ASSERT_INT(confirm_with("yes\n", "acme"), ==, 0);
	KBT_ASSERT_INT(confirm_with("", "acme"), ==, 0);
}

static void
test_key_file_detect(void)
{
	static const uint8_t der[] = {0x30, 0x82, 0x09, 0x8f, 0x02, 0x01};
	static const char bom[] =
	    "\xef\xbb\xbf \n\t{\"schema_version\":\"1.0.0\"}";
	static const char pem[] = "-----BEGIN PRIVATE KEY-----\nMIIE\n";
	int f = -1;

	KBT_ASSERT_OK(kbctl_key_file_detect(der, sizeof(der), "k.pfx", &f));
	KBT_ASSERT_INT(
	    f, ==, KEYBROKER__V1__KEY_FILE_FORMAT__KEY_FILE_FORMAT_PFX);
	KBT_ASSERT_OK(kbctl_key_file_detect(
	    (const uint8_t *)"{\"a\":1}", 7, "k.byok", &f));
	KBT_ASSERT_INT(
	    f, ==, KEYBROKER__V1__KEY_FILE_FORMAT__KEY_FILE_FORMAT_BYOK);
	KBT_ASSERT_OK(kbctl_key_file_detect(
	    (const uint8_t *)bom, strlen(bom), "k.byok", &f));
	KBT_ASSERT_INT(
	    f, ==, KEYBROKER__V1__KEY_FILE_FORMAT__KEY_FILE_FORMAT_BYOK);
	KBT_ASSERT_ERR(kbctl_key_file_detect(
	                   (const uint8_t *)pem, strlen(pem), "k.pem", &f),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_INVALID_ARGUMENT), "PEM");
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_INVALID_ARGUMENT), "byok wrap");
	KBT_ASSERT_INT(
	    f, ==, KEYBROKER__V1__KEY_FILE_FORMAT__KEY_FILE_FORMAT_UNSPECIFIED);
	KBT_ASSERT_ERR(
	    kbctl_key_file_detect((const uint8_t *)"hello", 5, "junk.bin", &f),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_INVALID_ARGUMENT), "junk.bin");
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_INVALID_ARGUMENT), "--format");
	KBT_ASSERT_ERR(
	    kbctl_key_file_detect(der, 0, "e", &f), KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_INT(kbctl_key_file_format_parse("pfx"), ==,
	    KEYBROKER__V1__KEY_FILE_FORMAT__KEY_FILE_FORMAT_PFX);
	KBT_ASSERT_INT(kbctl_key_file_format_parse("byok"), ==,
	    KEYBROKER__V1__KEY_FILE_FORMAT__KEY_FILE_FORMAT_BYOK);
	KBT_ASSERT_INT(kbctl_key_file_format_parse("PFX"), ==, -1);
	KBT_ASSERT_INT(kbctl_key_file_format_parse(""), ==, -1);
}

static void
test_key_file_read(void)
{
	char dir[256], path[300];
	uint8_t *buf = NULL, *big;
	size_t n = 0;

	snprintf(dir, sizeof(dir), "%s", kbt_tmpdir());
	snprintf(path, sizeof(path), "%s/k.pfx", dir);
	big = calloc(1, KBCTL_KEY_FILE_MAX + 1);
	KBT_ASSERT(big != NULL);
	big[0] = 0x30;
	write_mode(path, (const char *)big, KBCTL_KEY_FILE_MAX, 0600);
	KBT_ASSERT_OK(kbctl_key_file_read(path, &buf, &n));
	KBT_ASSERT_INT(n, ==, KBCTL_KEY_FILE_MAX);
	KBT_ASSERT_INT(buf[0], ==, 0x30);
	kbctl_key_file_free(buf, n);
	write_mode(path, (const char *)big, KBCTL_KEY_FILE_MAX + 1, 0600);
	KBT_ASSERT_ERR(
	    kbctl_key_file_read(path, &buf, &n), KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_INVALID_ARGUMENT), "64 KiB");
	KBT_ASSERT(buf == NULL);
	write_mode(path, "", 0, 0600);
	KBT_ASSERT_ERR(
	    kbctl_key_file_read(path, &buf, &n), KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_INVALID_ARGUMENT), "empty");
	KBT_ASSERT_ERR(kbctl_key_file_read(dir, &buf, &n), KB_ERR_IO);
	free(big);
	kbt_rmtree(dir);
}

static int
file_is(const char *path, const char *text, mode_t mode)
{
	struct stat sb;
	char buf[64];
	FILE *f;
	size_t n;

	if (stat(path, &sb) != 0 || (sb.st_mode & 07777) != mode
	    || (f = fopen(path, "r")) == NULL)
		return 0;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	return strcmp(buf, text) == 0;
}

/* Files named "*.tmp-*" in dir. */
static int
count_tmp(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	if (d == NULL)
		return -1;
	while ((e = readdir(d)) != NULL)
		if (strstr(e->d_name, ".tmp-") != NULL)
			n++;
	closedir(d);
	return n;
}

static void
test_out_file(void)
{
	char dir[256], path[300];
	struct kbctl_out_file *f = NULL;
	mode_t old = umask(022);

	snprintf(dir, sizeof(dir), "%s", kbt_tmpdir());
	snprintf(path, sizeof(path), "%s/k.pfx", dir);
	/* New file: mode 0600 whatever the umask. */
	KBT_ASSERT_OK(kbctl_out_file_open(path, 0, 0600, &f));
	KBT_ASSERT_OK(kbctl_out_file_commit(f, "first", 5));
	KBT_ASSERT(file_is(path, "first", 0600));
	/* Exists: refused, left alone. */
	KBT_ASSERT_ERR(
	    kbctl_out_file_open(path, 0, 0600, &f), KB_ERR_ALREADY_EXISTS);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_ALREADY_EXISTS), "--force");
	KBT_ASSERT(f == NULL);
	KBT_ASSERT(file_is(path, "first", 0600));
	/* --force, then the call fails: the old file is intact. */
	KBT_ASSERT_OK(kbctl_out_file_open(path, 1, 0600, &f));
	kbctl_out_file_abort(f);
	KBT_ASSERT(file_is(path, "first", 0600));
	/* --force: replaced. */
	chmod(path, 0644);
	KBT_ASSERT_OK(kbctl_out_file_open(path, 1, 0600, &f));
	KBT_ASSERT_OK(kbctl_out_file_commit(f, "second", 6));
	KBT_ASSERT(file_is(path, "second", 0600));
	/* Reserved, then abandoned: nothing left. */
	snprintf(path, sizeof(path), "%s/new.pfx", dir);
	KBT_ASSERT_OK(kbctl_out_file_open(path, 0, 0600, &f));
	kbctl_out_file_abort(f);
	KBT_ASSERT(access(path, F_OK) != 0);
	/* A public key may be 0644. */
	KBT_ASSERT_OK(kbctl_out_file_open(path, 0, 0644, &f));
	KBT_ASSERT_OK(kbctl_out_file_commit(f, "pem", 3));
	KBT_ASSERT(file_is(path, "pem", 0644));
	/* No leftover temporary files. */
	KBT_ASSERT_INT(count_tmp(dir), ==, 0);
	KBT_ASSERT_ERR(
	    kbctl_out_file_open(dir, 1, 0600, &f), KB_ERR_INVALID_ARGUMENT);
	snprintf(path, sizeof(path), "%s/no/such/dir.pfx", dir);
	KBT_ASSERT_ERR(kbctl_out_file_open(path, 0, 0600, &f), KB_ERR_IO);
	umask(old);
	kbt_rmtree(dir);
}

/* ---- byok wrap ---- */

static char *
pem_of(EVP_PKEY *pk, int private)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *data, *s = NULL;
	long n;

	if (b == NULL)
		return NULL;
	if ((private
	            ? PEM_write_bio_PrivateKey(b, pk, NULL, NULL, 0, NULL, NULL)
	            : PEM_write_bio_PUBKEY(b, pk))
	        == 1
	    && (n = BIO_get_mem_data(b, &data)) > 0
	    && (s = malloc((size_t)n + 1)) != NULL) {
		memcpy(s, data, (size_t)n);
		s[n] = '\0';
	}
	BIO_free(b);
	return s;
}

/* base64url without padding -> bytes; returns the length, or -1. */
static long
b64url_decode(const char *in, size_t n, uint8_t *out, size_t cap)
{
	static const char tab[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	uint32_t acc = 0;
	size_t i, o = 0;
	int bits = 0;

	for (i = 0; i < n; i++) {
		const char *p = in[i] != '\0' ? strchr(tab, in[i]) : NULL;

		if (p == NULL)
			return -1;
		acc = acc << 6 | (uint32_t)(p - tab);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (o >= cap)
				return -1;
			out[o++] = (uint8_t)(acc >> bits);
		}
	}
	return (long)o;
}

static void
test_b64url(void)
{
	static const struct {
		const char *in, *out;
	} v[] = {{"", ""}, {"f", "Zg"}, {"fo", "Zm8"}, {"foo", "Zm9v"},
	    {"foob", "Zm9vYg"}, {"\xfb\xff", "-_8"}};
	char out[32];
	size_t i;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		KBT_ASSERT_INT(
		    kb_base64_encode((const uint8_t *)v[i].in, strlen(v[i].in),
		        out, sizeof(out), KB_B64_URL),
		    ==, strlen(v[i].out));
		KBT_ASSERT_STR(out, v[i].out);
	}
	KBT_ASSERT_INT(
	    kb_base64_encode((const uint8_t *)"foo", 3, out, 4, KB_B64_URL), ==,
	    0);
}

#define BYOK_HEAD                                                              \
	"{\"schema_version\":\"1.0.0\",\"header\":{\"kid\":\"kek-1\","         \
	"\"alg\":\"dir\",\"enc\":\"CKM_RSA_AES_KEY_WRAP\"},\"ciphertext\":\""
#define BYOK_TAIL "\",\"generator\":\"kbctl byok wrap 0.1.0\"}\n"

/* Undo a .byok with the KEK's private key, as the token does: RSA-OAEP
 * (SHA-1, MGF1-SHA-1) gives the AES key, AES key unwrap with padding the
 * PKCS#8. Returns the PKCS#8 length in out, or -1. */
static long
byok_unwrap(EVP_PKEY *kek, const char *doc, uint8_t *out, size_t cap)
{
	uint8_t blob[4096], aes[512];
	size_t aes_len = sizeof(aes);
	const char *ct = doc + strlen(BYOK_HEAD), *end = strchr(ct, '"');
	EVP_PKEY_CTX *pc = NULL;
	EVP_CIPHER_CTX *cc = NULL;
	long n, r = -1;
	int l1 = 0, l2 = 0;

	if (end == NULL
	    || (n = b64url_decode(ct, (size_t)(end - ct), blob, sizeof(blob)))
	        < 256 + 16
	    || (n - 256) % 8 != 0)
		return -1;
	if ((pc = EVP_PKEY_CTX_new(kek, NULL)) == NULL
	    || EVP_PKEY_decrypt_init(pc) <= 0
	    || EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_OAEP_PADDING) <= 0
	    || EVP_PKEY_CTX_set_rsa_oaep_md(pc, EVP_sha1()) <= 0
	    || EVP_PKEY_CTX_set_rsa_mgf1_md(pc, EVP_sha1()) <= 0
	    || EVP_PKEY_decrypt(pc, aes, &aes_len, blob, 256) <= 0
	    || aes_len != 32)
		goto out;
	if ((cc = EVP_CIPHER_CTX_new()) == NULL)
		goto out;
	EVP_CIPHER_CTX_set_flags(cc, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
	if ((size_t)n - 256 > cap
	    || EVP_DecryptInit_ex(cc, EVP_aes_256_wrap_pad(), NULL, aes, NULL)
	        != 1
	    || EVP_DecryptUpdate(cc, out, &l1, blob + 256, (int)(n - 256)) != 1
	    || EVP_DecryptFinal_ex(cc, out + l1, &l2) != 1)
		goto out;
	r = l1 + l2;
out:
	EVP_PKEY_CTX_free(pc);
	EVP_CIPHER_CTX_free(cc);
	return r;
}

static void
test_byok_wrap(void)
{
	EVP_PKEY *kek = EVP_RSA_gen(2048), *key = EVP_RSA_gen(2048);
	EVP_PKEY *kek_pub = NULL, *loaded = NULL;
	PKCS8_PRIV_KEY_INFO *p8 = NULL;
	unsigned char *want = NULL;
	char *kek_pem = NULL, *key_pem = NULL, *doc = NULL, *doc2 = NULL;
	char fp[65];
	uint8_t got[4096];
	size_t len = 0, len2 = 0, i;
	long n;
	int want_len = 0;

	KBT_ASSERT(kek != NULL && key != NULL);
	KBT_ASSERT((kek_pem = pem_of(kek, 0)) != NULL);
	KBT_ASSERT((key_pem = pem_of(key, 1)) != NULL);
	KBT_ASSERT_OK(byok_wrap_load_kek(kek_pem, strlen(kek_pem), &kek_pub));
	KBT_ASSERT_OK(byok_wrap_load_key(
	    (const uint8_t *)key_pem, strlen(key_pem), NULL, &loaded));
	KBT_ASSERT_OK(byok_wrap_make(
	    kek_pub, "kek-1", loaded, "kbctl byok wrap 0.1.0", &doc, &len));
	KBT_ASSERT_INT(len, ==, strlen(doc));

	/* The exact Azure shape around base64url without padding. */
	KBT_ASSERT(strncmp(doc, BYOK_HEAD, strlen(BYOK_HEAD)) == 0);
	KBT_ASSERT(len > strlen(BYOK_TAIL)
	    && strcmp(doc + len - strlen(BYOK_TAIL), BYOK_TAIL) == 0);
	for (i = strlen(BYOK_HEAD); i < len - strlen(BYOK_TAIL); i++)
		if (strchr(
		        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
		        "0123456789-_",
		        doc[i])
		    == NULL)
			KBT_FAIL("ciphertext has '%c' at %zu", doc[i], i);

	/* Unwrapped with the KEK's private key: the key's PKCS#8. */
	KBT_ASSERT((p8 = EVP_PKEY2PKCS8(key)) != NULL);
	KBT_ASSERT((want_len = i2d_PKCS8_PRIV_KEY_INFO(p8, &want)) > 0);
	n = byok_unwrap(kek, doc, got, sizeof(got));
	KBT_ASSERT_INT(n, ==, want_len);
	KBT_ASSERT(memcmp(got, want, (size_t)want_len) == 0);

	/* A fresh transfer key every time. */
	KBT_ASSERT_OK(byok_wrap_make(
	    kek_pub, "kek-1", loaded, "kbctl byok wrap 0.1.0", &doc2, &len2));
	KBT_ASSERT(strcmp(doc, doc2) != 0);
	KBT_ASSERT_INT(byok_unwrap(kek, doc2, got, sizeof(got)), ==, want_len);

	/* The fingerprint is the broker's: SHA-256 of the SPKI, hex. */
	KBT_ASSERT_OK(byok_wrap_fingerprint(loaded, fp));
	KBT_ASSERT_INT(strlen(fp), ==, 64);
	KBT_ASSERT(strspn(fp, "0123456789abcdef") == 64);

	OPENSSL_clear_free(want, (size_t)want_len);
	PKCS8_PRIV_KEY_INFO_free(p8);
	free(kek_pem);
	OPENSSL_clear_free(key_pem, strlen(key_pem));
	free(doc);
	free(doc2);
	EVP_PKEY_free(kek);
	EVP_PKEY_free(key);
	EVP_PKEY_free(kek_pub);
	EVP_PKEY_free(loaded);
}

static void
test_byok_wrap_refusals(void)
{
	EVP_PKEY *rsa = EVP_RSA_gen(2048), *ec = EVP_EC_gen("P-256");
	EVP_PKEY *rsa3k = EVP_RSA_gen(3072), *out = NULL;
	char *ec_pub = pem_of(ec, 0), *ec_priv = pem_of(ec, 1);
	char *big_priv = pem_of(rsa3k, 1), *rsa_priv = pem_of(rsa, 1);
	char *doc = NULL;
	size_t len = 0;
	BIO *b = BIO_new(BIO_s_mem());
	char *enc = NULL, *data;
	long n;

	KBT_ASSERT(ec_pub && ec_priv && big_priv && rsa_priv && b);
	/* A KEK that is not RSA, or not PEM. */
	KBT_ASSERT_ERR(byok_wrap_load_kek(ec_pub, strlen(ec_pub), &out),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_INVALID_ARGUMENT), "must be RSA");
	KBT_ASSERT_ERR(
	    byok_wrap_load_kek("junk", 4, &out), KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT(out == NULL);
	/* A key that is not RSA-2048. */
	KBT_ASSERT_ERR(byok_wrap_load_key((const uint8_t *)ec_priv,
	                   strlen(ec_priv), NULL, &out),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_INVALID_ARGUMENT), "an EC key");
	KBT_ASSERT_ERR(byok_wrap_load_key((const uint8_t *)big_priv,
	                   strlen(big_priv), NULL, &out),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_INVALID_ARGUMENT), "RSA-3072");
	KBT_ASSERT_ERR(byok_wrap_make(rsa, "k", rsa3k, "g", &doc, &len),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_ERR(byok_wrap_make(ec, "k", rsa, "g", &doc, &len),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_ERR(byok_wrap_make(rsa, "", rsa, "g", &doc, &len),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT(doc == NULL);
	/* An encrypted PEM: needs its password, refuses a wrong one. */
	KBT_ASSERT(PEM_write_bio_PKCS8PrivateKey(
	               b, rsa, EVP_aes_256_cbc(), NULL, 0, NULL, (void *)"pw")
	    == 1);
	n = BIO_get_mem_data(b, &data);
	KBT_ASSERT(n > 0 && (enc = strndup(data, (size_t)n)) != NULL);
	KBT_ASSERT(byok_wrap_key_is_encrypted((uint8_t *)enc, strlen(enc)));
	KBT_ASSERT(
	    !byok_wrap_key_is_encrypted((uint8_t *)rsa_priv, strlen(rsa_priv)));
	KBT_ASSERT_ERR(
	    byok_wrap_load_key((uint8_t *)enc, strlen(enc), NULL, &out),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_INVALID_ARGUMENT), "encrypted");
	KBT_ASSERT_ERR(
	    byok_wrap_load_key((uint8_t *)enc, strlen(enc), "wrong", &out),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_OK(
	    byok_wrap_load_key((uint8_t *)enc, strlen(enc), "pw", &out));
	/* Quotes and backslashes in the kid stay valid JSON. */
	KBT_ASSERT_OK(byok_wrap_make(rsa, "a\"b\\c\n", out, "g", &doc, &len));
	KBT_ASSERT_CONTAINS(doc, "\"kid\":\"a\\\"b\\\\c\\u000a\"");
	free(doc);
	EVP_PKEY_free(out);
	BIO_free(b);
	free(enc);
	free(ec_pub);
	free(ec_priv);
	free(big_priv);
	free(rsa_priv);
	EVP_PKEY_free(rsa);
	EVP_PKEY_free(rsa3k);
	EVP_PKEY_free(ec);
}

/* ---- the audit export ---- */

/* An export made here: a header, events 1..n (hash-chained as the broker
 * does) and checkpoints after the events listed, signed with `key`. */
struct ax_fx {
	EVP_PKEY *key;
	char fp[65];
	char *line[128];
	size_t n;
};

static char *
ax_dump(json_t *j)
{
	char *s = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;

	json_decref(j);
	return s;
}

static int
ax_sign(EVP_PKEY *key, const struct kb_audit_checkpoint *cp, uint8_t *sig,
    size_t *sig_len)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_PKEY_CTX *pc = NULL;
	uint8_t *data = NULL;
	size_t len = 0;
	int ok;

	ok = md != NULL && kb_audit_checkpoint_data(cp, &data, &len) == KB_OK
	    && EVP_DigestSignInit(md, &pc, EVP_sha256(), NULL, key) == 1
	    && EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PADDING) == 1
	    && EVP_DigestSign(md, sig, sig_len, data, len) == 1;
	EVP_MD_CTX_free(md);
	free(data);
	return ok;
}

static char *
ax_pem(EVP_PKEY *key)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *p = NULL, *out = NULL;
	long n;

	if (b != NULL && PEM_write_bio_PUBKEY(b, key) == 1
	    && (n = BIO_get_mem_data(b, &p)) > 0
	    && (out = calloc(1, (size_t)n + 1)) != NULL)
		memcpy(out, p, (size_t)n);
	BIO_free(b);
	return out;
}

static void
ax_fx_free(struct ax_fx *x)
{
	size_t i;

	for (i = 0; i < x->n; i++)
		free(x->line[i]);
	x->n = 0;
}

/* Events 1..nev; a checkpoint after each seq in cps (ascending). */
static int
ax_fx_make(struct ax_fx *x, EVP_PKEY *key, uint64_t nev, const uint64_t *cps,
    size_t ncps)
{
	Keybroker__V1__AuditKey ak = KEYBROKER__V1__AUDIT_KEY__INIT;
	uint8_t hash[KB_AUDIT_HASH_LEN], sig[512], prev[512];
	size_t sig_len, prev_len = 0, ci = 0;
	char rid[32], *pem = ax_pem(key);
	EVP_PKEY *tmp = NULL;
	uint64_t i;

	memset(x, 0, sizeof(*x));
	memset(hash, 0, sizeof(hash));
	x->key = key;
	if (pem == NULL || audit_export_key_load(pem, &tmp, x->fp) != KB_OK) {
		free(pem);
		return 0;
	}
	EVP_PKEY_free(tmp);
	ak.key_id = (char *)"kb-audit-1";
	ak.algorithm = (char *)KB_AUDIT_SIG_ALG;
	ak.fingerprint = x->fp;
	ak.public_key_pem = pem;
	x->line[x->n++] = ax_dump(
	    audit_export_header_json(&ak, NULL, 1700000000000000LL, nev));
	free(pem);
	for (i = 1; i <= nev; i++) {
		Keybroker__V1__Event ev = KEYBROKER__V1__EVENT__INIT;
		struct kb_audit_event ae;

		snprintf(rid, sizeof(rid), "r-%04llu", (unsigned long long)i);
		ev.seq = i;
		ev.time_us = 1700000000000000LL + (int64_t)i * 1000;
		ev.actor = (char *)(i == 1 ? "keybroker" : "admin");
		ev.role = (char *)(i == 1 ? "system" : "admin");
		ev.peer = (char *)"ipv4:127.0.0.1:5555";
		ev.method = (char *)(i == 1 ? "broker.start" : "CreateTenant");
		ev.tenant_id = (char *)(i == 1 ? "" : "acme");
		ev.result = (char *)(i % 3 == 0 ? "denied" : "ok");
		ev.reason = (char *)(i % 3 == 0
		        ? "PERMISSION_DENIED: \"caf\xc3\xa9\" no"
		        : "");
		ev.request_id = rid;
		memset(&ae, 0, sizeof(ae));
		ae.seq = ev.seq;
		ae.time_us = ev.time_us;
		ae.actor = ev.actor;
		ae.role = ev.role;
		ae.peer = ev.peer;
		ae.method = ev.method;
		ae.tenant = ev.tenant_id;
		ae.env = ev.environment;
		ae.key_id = ev.key_id;
		ae.result = ev.result;
		ae.reason = ev.reason;
		ae.request_id = ev.request_id;
		if (kb_audit_event_hash(hash, &ae, hash) != KB_OK)
			return 0;
		ev.hash.data = hash;
		ev.hash.len = sizeof(hash);
		x->line[x->n++] = ax_dump(audit_export_event_json(&ev, 1));
		if (ci < ncps && cps[ci] == i) {
			Keybroker__V1__Checkpoint c =
			    KEYBROKER__V1__CHECKPOINT__INIT;
			struct kb_audit_checkpoint kc;

			memset(&kc, 0, sizeof(kc));
			kc.seq = i;
			memcpy(kc.head_hash, hash, sizeof(hash));
			kc.time_us = ev.time_us + 500;
			kc.prev_sig = prev;
			kc.prev_sig_len = prev_len;
			sig_len = sizeof(sig);
			if (!ax_sign(key, &kc, sig, &sig_len))
				return 0;
			c.seq = i;
			c.head_hash.data = hash;
			c.head_hash.len = sizeof(hash);
			c.time_us = kc.time_us;
			c.prev_signature.data = prev;
			c.prev_signature.len = prev_len;
			c.signature.data = sig;
			c.signature.len = sig_len;
			c.key_id = (char *)"kb-audit-1";
			x->line[x->n++] =
			    ax_dump(audit_export_checkpoint_json(&c));
			memcpy(prev, sig, sig_len);
			prev_len = sig_len;
			ci++;
		}
	}
	for (i = 0; i < x->n; i++)
		if (x->line[i] == NULL)
			return 0;
	return 1;
}

/* Verify lines [0, n) of x. */
static void
ax_verify(
    const struct ax_fx *x, const char *pin, struct audit_export_report *rep)
{
	struct audit_export_verifier *v = NULL;
	size_t i;

	memset(rep, 0, sizeof(*rep));
	if (audit_export_verifier_new(pin, &v) != KB_OK)
		return;
	for (i = 0; i < x->n; i++)
		if (audit_export_verifier_line(
		        v, x->line[i], strlen(x->line[i]), i + 1)
		    != 0)
			break;
	audit_export_verifier_finish(v, x->n + 1, rep);
	audit_export_verifier_free(v);
}

/* The index of the line holding `type` with `seq`, or -1. */
static long
ax_find(const struct ax_fx *x, const char *type, uint64_t seq)
{
	size_t i;
	char want[64];

	snprintf(want, sizeof(want), "{\"type\":\"%s\",\"seq\":%llu,", type,
	    (unsigned long long)seq);
	for (i = 0; i < x->n; i++)
		if (strncmp(x->line[i], want, strlen(want)) == 0)
			return (long)i;
	return -1;
}

static void
ax_remove(struct ax_fx *x, long i)
{
	free(x->line[i]);
	memmove(&x->line[i], &x->line[i + 1],
	    (x->n - (size_t)i - 1) * sizeof(char *));
	x->n--;
}

/* Set a field of line i to a JSON value (from text). */
static void
ax_set(struct ax_fx *x, long i, const char *key, const char *value)
{
	json_t *o = json_loads(x->line[i], 0, NULL);

	json_object_set_new(o, key, json_loads(value, JSON_DECODE_ANY, NULL));
	free(x->line[i]);
	x->line[i] = ax_dump(o);
}

static const uint64_t ax_cps[] = {10, 20};

static void
test_export_verified(void)
{
	EVP_PKEY *key = EVP_RSA_gen(2048);
	struct audit_export_report rep;
	struct ax_fx x;
	char pin[65];
	json_t *j;

	KBT_ASSERT(key != NULL);
	KBT_ASSERT(ax_fx_make(&x, key, 25, ax_cps, 2));
	ax_verify(&x, NULL, &rep);
	KBT_ASSERT(rep.ok);
	KBT_ASSERT_INT(rep.events, ==, 25);
	KBT_ASSERT_INT(rep.first_seq, ==, 1);
	KBT_ASSERT_INT(rep.last_seq, ==, 25);
	KBT_ASSERT_INT(rep.checkpoints, ==, 2);
	KBT_ASSERT_INT(rep.covered_seq, ==, 20);
	KBT_ASSERT_STR(rep.fingerprint, x.fp);
	KBT_ASSERT_STR(rep.key_id, "kb-audit-1");
	/* Pinned: the right fingerprint, as a person may type it. */
	KBT_ASSERT_INT(audit_export_fp_normalize(x.fp, pin), ==, 0);
	ax_verify(&x, pin, &rep);
	KBT_ASSERT(rep.ok);
	/* An event line has exactly the documented fields. */
	j = json_loads(x.line[ax_find(&x, "event", 3)], 0, NULL);
	KBT_ASSERT(j != NULL);
	KBT_ASSERT_INT(json_object_size(j), ==, 15);
	KBT_ASSERT_STR(json_string_value(json_object_get(j, "reason")),
	    "PERMISSION_DENIED: \"caf\xc3\xa9\" no");
	KBT_ASSERT_INT(
	    strlen(json_string_value(json_object_get(j, "hash"))), ==, 64);
	KBT_ASSERT_STR(json_string_value(json_object_get(j, "time")),
	    "2023-11-14T22:13:20.003000Z");
	json_decref(j);
	ax_fx_free(&x);
	EVP_PKEY_free(key);
}

static void
test_export_tampered(void)
{
	EVP_PKEY *key = EVP_RSA_gen(2048);
	struct audit_export_report rep;
	struct ax_fx x;
	long i;

	KBT_ASSERT(key != NULL);
	/* An event altered: that event fails. */
	KBT_ASSERT(ax_fx_make(&x, key, 25, ax_cps, 2));
	ax_set(&x, ax_find(&x, "event", 7), "actor", "\"mallory\"");
	ax_verify(&x, NULL, &rep);
	KBT_ASSERT(!rep.ok);
	KBT_ASSERT_INT(rep.seq, ==, 7);
	KBT_ASSERT_INT(rep.line, ==, 0);
	KBT_ASSERT_CONTAINS(rep.reason, "does not match its hash");
	ax_fx_free(&x);
	/* One removed from the middle: named as missing. */
	KBT_ASSERT(ax_fx_make(&x, key, 25, ax_cps, 2));
	ax_remove(&x, ax_find(&x, "event", 12));
	ax_verify(&x, NULL, &rep);
	KBT_ASSERT(!rep.ok);
	KBT_ASSERT_INT(rep.seq, ==, 12);
	KBT_ASSERT_CONTAINS(rep.reason, "event 12 is missing");
	ax_fx_free(&x);
	/* The newest events after a checkpoint removed: the signed
	 * checkpoint says they existed. */
	KBT_ASSERT(ax_fx_make(&x, key, 20, ax_cps, 2));
	for (i = 16; i <= 20; i++)
		ax_remove(&x, ax_find(&x, "event", (uint64_t)i));
	ax_verify(&x, NULL, &rep);
	KBT_ASSERT(!rep.ok);
	KBT_ASSERT_INT(rep.seq, ==, 16);
	KBT_ASSERT_CONTAINS(rep.reason, "signed checkpoint at 20");
	ax_fx_free(&x);
	/* ... and numbering went on after the checkpoint (as the broker
	 * does): the gap is named, and the checkpoint that covers it. */
	KBT_ASSERT(ax_fx_make(&x, key, 22, ax_cps, 2));
	for (i = 16; i <= 20; i++)
		ax_remove(&x, ax_find(&x, "event", (uint64_t)i));
	ax_verify(&x, NULL, &rep);
	KBT_ASSERT(!rep.ok);
	KBT_ASSERT_INT(rep.seq, ==, 16);
	KBT_ASSERT_CONTAINS(rep.reason, "event 16 is missing");
	KBT_ASSERT_CONTAINS(
	    rep.reason, "the signed checkpoint at 20 covers it");
	ax_fx_free(&x);
	/* A checkpoint's signature altered. */
	KBT_ASSERT(ax_fx_make(&x, key, 25, ax_cps, 2));
	i = ax_find(&x, "checkpoint", 20);
	ax_set(&x, i, "time_us", "1700000000020501");
	ax_set(&x, i, "time", "\"2023-11-14T22:13:20.020501Z\"");
	ax_verify(&x, NULL, &rep);
	KBT_ASSERT(!rep.ok);
	KBT_ASSERT_INT(rep.seq, ==, 20);
	KBT_ASSERT_CONTAINS(rep.reason, "bad signature");
	ax_fx_free(&x);
	/* A checkpoint removed: the next one does not chain. */
	KBT_ASSERT(ax_fx_make(&x, key, 25, ax_cps, 2));
	ax_remove(&x, ax_find(&x, "checkpoint", 10));
	ax_verify(&x, NULL, &rep);
	KBT_ASSERT(!rep.ok);
	KBT_ASSERT_INT(rep.seq, ==, 20);
	KBT_ASSERT_CONTAINS(rep.reason, "does not chain");
	ax_fx_free(&x);
	/* Two events swapped. */
	KBT_ASSERT(ax_fx_make(&x, key, 25, ax_cps, 2));
	i = ax_find(&x, "event", 4);
	{
		char *t = x.line[i];

		x.line[i] = x.line[i + 1];
		x.line[i + 1] = t;
	}
	ax_verify(&x, NULL, &rep);
	KBT_ASSERT(!rep.ok);
	KBT_ASSERT_INT(rep.seq, ==, 4);
	ax_fx_free(&x);
	EVP_PKEY_free(key);
}

static void
test_export_malformed(void)
{
	EVP_PKEY *key = EVP_RSA_gen(2048), *other = EVP_RSA_gen(2048);
	struct audit_export_report rep;
	struct ax_fx x, y;
	char pin[65];
	long i;

	KBT_ASSERT(key != NULL && other != NULL);
	/* A line that is not JSON: named by its number. */
	KBT_ASSERT(ax_fx_make(&x, key, 12, ax_cps, 1));
	free(x.line[4]);
	x.line[4] = strdup("{\"type\":\"event\",");
	ax_verify(&x, NULL, &rep);
	KBT_ASSERT(!rep.ok);
	KBT_ASSERT_INT(rep.line, ==, 5);
	KBT_ASSERT_CONTAINS(rep.reason, "not JSON");
	/* An empty line, a missing field, a duplicated key, a bad type. */
	free(x.line[4]);
	x.line[4] = strdup("");
	ax_verify(&x, NULL, &rep);
	KBT_ASSERT(!rep.ok && rep.line == 5);
	ax_fx_free(&x);
	KBT_ASSERT(ax_fx_make(&x, key, 12, ax_cps, 1));
	i = ax_find(&x, "event", 6);
	ax_set(&x, i, "peer", "null");
	ax_verify(&x, NULL, &rep);
	KBT_ASSERT(!rep.ok);
	KBT_ASSERT_INT(rep.line, ==, (unsigned long)i + 1);
	KBT_ASSERT_INT(rep.seq, ==, 6);
	KBT_ASSERT_CONTAINS(rep.reason, "\"peer\"");
	ax_fx_free(&x);
	KBT_ASSERT(ax_fx_make(&x, key, 12, ax_cps, 1));
	i = ax_find(&x, "event", 6);
	free(x.line[i]);
	x.line[i] = strdup("{\"type\":\"event\",\"seq\":6,\"seq\":7}");
	ax_verify(&x, NULL, &rep);
	KBT_ASSERT(!rep.ok && rep.line == (unsigned long)i + 1);
	KBT_ASSERT_CONTAINS(rep.reason, "duplicate");
	free(x.line[i]);
	x.line[i] = strdup("{\"type\":\"note\"}");
	ax_verify(&x, NULL, &rep);
	KBT_ASSERT(!rep.ok && rep.line == (unsigned long)i + 1);
	ax_fx_free(&x);
	/* "time" edited (only time_us is hashed): refused all the same. */
	KBT_ASSERT(ax_fx_make(&x, key, 12, ax_cps, 1));
	i = ax_find(&x, "event", 2);
	ax_set(&x, i, "time", "\"2020-01-01T00:00:00Z\"");
	ax_verify(&x, NULL, &rep);
	KBT_ASSERT(!rep.ok && rep.seq == 2 && rep.line == (unsigned long)i + 1);
	KBT_ASSERT_CONTAINS(rep.reason, "\"time\"");
	ax_fx_free(&x);
	/* A malformed line after a failure of the log: the first one wins. */
	KBT_ASSERT(ax_fx_make(&x, key, 12, ax_cps, 1));
	ax_set(&x, ax_find(&x, "event", 3), "method", "\"X\"");
	free(x.line[x.n - 1]);
	x.line[x.n - 1] = strdup("junk");
	ax_verify(&x, NULL, &rep);
	KBT_ASSERT(!rep.ok && rep.seq == 3 && rep.line == 0);
	ax_fx_free(&x);
	/* The header: another key (pinned), a fingerprint that is not its
	 * key's, no header, no events. */
	KBT_ASSERT(ax_fx_make(&x, key, 12, ax_cps, 1));
	KBT_ASSERT(ax_fx_make(&y, other, 1, NULL, 0));
	KBT_ASSERT_INT(audit_export_fp_normalize(y.fp, pin), ==, 0);
	ax_verify(&x, pin, &rep);
	KBT_ASSERT(!rep.ok && rep.line == 1 && rep.seq == 0);
	KBT_ASSERT_CONTAINS(rep.reason, "not the pinned");
	/* The other key in the header: its checkpoints do not verify. */
	free(x.line[0]);
	x.line[0] = strdup(y.line[0]);
	ax_verify(&x, NULL, &rep);
	KBT_ASSERT(!rep.ok && rep.seq == 10);
	KBT_ASSERT_CONTAINS(rep.reason, "bad signature");
	ax_set(&x, 0, "version", "2");
	ax_verify(&x, NULL, &rep);
	KBT_ASSERT(!rep.ok && rep.line == 1);
	KBT_ASSERT_CONTAINS(rep.reason, "version 2");
	ax_fx_free(&x);
	KBT_ASSERT(ax_fx_make(&x, key, 12, ax_cps, 1));
	{
		json_t *h = json_loads(x.line[0], 0, NULL);

		json_object_set_new(json_object_get(h, "audit_key"),
		    "fingerprint", json_string(y.fp));
		free(x.line[0]);
		x.line[0] = ax_dump(h);
	}
	ax_verify(&x, NULL, &rep);
	KBT_ASSERT(!rep.ok && rep.line == 1);
	KBT_ASSERT_CONTAINS(rep.reason, "but its public key's is");
	ax_fx_free(&x);
	ax_fx_free(&y);
	KBT_ASSERT(ax_fx_make(&x, key, 3, NULL, 0));
	ax_remove(&x, 0);
	ax_verify(&x, NULL, &rep);
	KBT_ASSERT(!rep.ok && rep.line == 1);
	KBT_ASSERT_CONTAINS(rep.reason, "header");
	ax_fx_free(&x);
	KBT_ASSERT(ax_fx_make(&x, key, 0, NULL, 0));
	ax_verify(&x, NULL, &rep);
	KBT_ASSERT(!rep.ok);
	KBT_ASSERT_CONTAINS(rep.reason, "no events");
	{
		size_t n = x.n;

		x.n = 0;
		ax_verify(&x, NULL, &rep);
		x.n = n;
	}
	ax_fx_free(&x);
	KBT_ASSERT(!rep.ok && rep.line == 1);
	KBT_ASSERT_CONTAINS(rep.reason, "empty");
	EVP_PKEY_free(key);
	EVP_PKEY_free(other);
}

static void
test_export_fp_normalize(void)
{
	char out[65];
	const char *hex =
	    "7ec9a0ee0b5841e1020e0018f8e95f7986cf0ba2b143b5c17d07fb28d825bdac";

	KBT_ASSERT_INT(audit_export_fp_normalize(hex, out), ==, 0);
	KBT_ASSERT_STR(out, hex);
	KBT_ASSERT_INT(
	    audit_export_fp_normalize("7E:C9:A0:EE:0B:58:41:E1:02:0E:00:"
	                              "18:F8:E9:5F:79:86:CF:0B:A2:B1:43:"
	                              "B5:C1:7D:07:FB:28:D8:25:BD:AC",
	        out),
	    ==, 0);
	KBT_ASSERT_STR(out, hex);
	KBT_ASSERT_INT(audit_export_fp_normalize("7ec9", out), ==, -1);
	KBT_ASSERT_INT(audit_export_fp_normalize("", out), ==, -1);
	KBT_ASSERT_INT(
	    audit_export_fp_normalize("7ec9a0ee0b5841e1020e0018f8e95f7986cf0ba2"
	                              "b143b5c17d07fb28d825bdaz",
	        out),
	    ==, -1);
	KBT_ASSERT_INT(
	    audit_export_fp_normalize("7ec9a0ee0b5841e1020e0018f8e95f7986cf0ba2"
	                              "b143b5c17d07fb28d825bdac00",
	        out),
	    ==, -1);
}

static void
test_state_file(void)
{
	const char *dir = kbt_tmpdir();
	char path[512], tmp[520];
	uint64_t seq = 7;
	int found = 1;
	struct stat sb;

	snprintf(path, sizeof(path), "%s/tail.state", dir);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	KBT_ASSERT_OK(audit_state_read(path, &seq, &found));
	KBT_ASSERT(found == 0 && seq == 0);
	KBT_ASSERT_OK(audit_state_write(path, 42));
	KBT_ASSERT_OK(audit_state_read(path, &seq, &found));
	KBT_ASSERT(found == 1 && seq == 42);
	KBT_ASSERT_OK(audit_state_write(path, 18446744073709551615ULL));
	KBT_ASSERT_OK(audit_state_read(path, &seq, &found));
	KBT_ASSERT(seq == 18446744073709551615ULL);
	KBT_ASSERT(stat(path, &sb) == 0 && (sb.st_mode & 0777) == 0600);
	KBT_ASSERT(stat(tmp, &sb) != 0);
	write_text(path, "12x\n");
	KBT_ASSERT_ERR(
	    audit_state_read(path, &seq, &found), KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_INVALID_ARGUMENT), path);
	write_text(path, "");
	KBT_ASSERT_ERR(
	    audit_state_read(path, &seq, &found), KB_ERR_INVALID_ARGUMENT);
	write_text(path, "-3\n");
	KBT_ASSERT_ERR(
	    audit_state_read(path, &seq, &found), KB_ERR_INVALID_ARGUMENT);
	snprintf(tmp, sizeof(tmp), "%s/none/tail.state", dir);
	KBT_ASSERT_ERR(audit_state_write(tmp, 1), KB_ERR_IO);
	kbt_rmtree(dir);
}

static const struct kbt_case cases[] = {
    {"/kbclient/status-mapping", test_status_mapping},
    {"/kbclient/connect-reason", test_connect_reason},
    {"/kbclient/open-file-errors", test_open_file_errors},
    {"/kbclient/connect-refused", test_connect_refused},
    {"/kbctl/table", test_table}, {"/kbctl/sanitize", test_sanitize},
    {"/kbctl/enum-words", test_enum_words}, {"/kbctl/base64", test_base64},
    {"/kbctl/time-sec", test_time_sec},
    {"/kbctl/progress-bar", test_progress_bar},
    {"/kbctl/fingerprint-short", test_fingerprint_short},
    {"/kbctl/password-file", test_password_file},
    {"/kbctl/password-prompt", test_password_prompt},
    {"/kbctl/confirm", test_confirm},
    {"/kbctl/key-file-detect", test_key_file_detect},
    {"/kbctl/key-file-read", test_key_file_read},
    {"/kbctl/out-file", test_out_file}, {"/byok/b64url", test_b64url},
    {"/byok/wrap", test_byok_wrap},
    {"/byok/wrap-refusals", test_byok_wrap_refusals},
    {"/kbclient/stream-refused", test_stream_refused},
    {"/kbclient/stream-waiting", test_stream_waiting},
    {"/kbclient/addrs-parse", test_addrs_parse},
    {"/kbclient/fail-over-rule", test_fail_over_rule},
    {"/kbclient/failover-all-down", test_failover_all_down},
    {"/audit-export/verified", test_export_verified},
    {"/audit-export/tampered", test_export_tampered},
    {"/audit-export/malformed", test_export_malformed},
    {"/audit-export/fp-normalize", test_export_fp_normalize},
    {"/audit-export/state-file", test_state_file}, {NULL, NULL}};

int
main(int argc, char **argv)
{
	int r = kbt_run(cases, argc, argv);

	kb_client_global_cleanup();
	return r;
}
