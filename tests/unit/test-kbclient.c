/* SPDX-License-Identifier: Apache-2.0 */
/* test-kbclient.c: the client library's status mapping and file checks,
 * and kbctl's text formatting (tables, enum words, base64, sanitizing). */
#include "harness.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

/* The test links what tests/CMakeLists.txt gives every unit test
 * (kb_common, kb_proto); the client sources are compiled in here so the
 * static helpers can be tested too. */
#include "../../client/kbclient.c"
#include "../../client/kbctl_fmt.c"

#include "keybroker.pb-c.h"

/* ---- fixtures: a throwaway certificate and key ---- */

static EVP_PKEY *
make_key(void)
{
	return EVP_EC_gen("P-256");
}

/* Self-signed certificate valid from now+from_s to now+to_s seconds. */
static int
write_cert(const char *path, EVP_PKEY *pk, long from_s, long to_s)
{
	X509 *x = X509_new();
	X509_NAME *n;
	FILE *f;
	int ok = 0;

	if (x == NULL)
		return 0;
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), from_s);
	X509_gmtime_adj(X509_getm_notAfter(x), to_s);
	X509_set_pubkey(x, pk);
	n = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(
	    n, "OU", MBSTRING_ASC, (const unsigned char *)"admin", -1, -1, 0);
	X509_NAME_add_entry_by_txt(
	    n, "CN", MBSTRING_ASC, (const unsigned char *)"test", -1, -1, 0);
	X509_set_issuer_name(x, n);
	if (X509_sign(x, pk, EVP_sha256()) > 0
	    && (f = fopen(path, "w")) != NULL) {
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
	struct kb_client c = {NULL, (char *)"127.0.0.1:7443", 1000};
	char buf[512];

	connect_reason(&c,
	    "failed to connect to all addresses; last error: "
	    "UNKNOWN: ipv4:127.0.0.1:7443: Failed to connect to remote host: "
	    "Connection refused",
	    buf, sizeof(buf));
	KBT_ASSERT_STR(buf,
	    "cannot connect to 127.0.0.1:7443: Failed to "
	    "connect to remote host: Connection refused");
	connect_reason(&c, "UNAVAILABLE: ipv4:127.0.0.1:7443: Socket closed",
	    buf, sizeof(buf));
	KBT_ASSERT_CONTAINS(buf,
	    "cannot connect to 127.0.0.1:7443: Socket "
	    "closed (");
	KBT_ASSERT_CONTAINS(buf, "client certificate");
	connect_reason(&c,
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
	uint8_t dek[32];
	char out[64];
	size_t i;

	for (i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		KBT_ASSERT_INT(kbctl_base64((const uint8_t *)v[i].in,
		                   strlen(v[i].in), out, sizeof(out)),
		    ==, strlen(v[i].out));
		KBT_ASSERT_STR(out, v[i].out);
	}
	for (i = 0; i < sizeof(dek); i++)
		dek[i] = (uint8_t)i;
	KBT_ASSERT_INT(kbctl_base64(dek, 32, out, sizeof(out)), ==, 44);
	KBT_ASSERT_STR(out, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=");
	KBT_ASSERT_INT(kbctl_base64(dek, 32, out, 44), ==, 0); /* no room */
}

static void
test_time_sec(void)
{
	char b[40];

	KBT_ASSERT_STR(kbctl_time_sec(0, b, sizeof(b)), "-");
	KBT_ASSERT_STR(kbctl_time_sec(1795322351123456LL, b, sizeof(b)),
	    "2026-11-22T04:39:11Z");
}

static const struct kbt_case cases[] = {
    {"/kbclient/status-mapping", test_status_mapping},
    {"/kbclient/connect-reason", test_connect_reason},
    {"/kbclient/open-file-errors", test_open_file_errors},
    {"/kbclient/connect-refused", test_connect_refused},
    {"/kbctl/table", test_table}, {"/kbctl/sanitize", test_sanitize},
    {"/kbctl/enum-words", test_enum_words}, {"/kbctl/base64", test_base64},
    {"/kbctl/time-sec", test_time_sec}, {NULL, NULL}};

int
main(int argc, char **argv)
{
	int r = kbt_run(cases, argc, argv);

	kb_client_global_cleanup();
	return r;
}
