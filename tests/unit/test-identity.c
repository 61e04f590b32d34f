/* SPDX-License-Identifier: Apache-2.0 */
/* test-identity.c: client certificates to roles and scopes, with
 * certificates made here by OpenSSL (a CA, another CA, expired ones). */
#include "harness.h"

#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "identity.h"
#include "kb_time.h"

static EVP_PKEY *ca_key, *other_key;
static X509 *ca_cert, *other_cert;
static char ca_path[512];

static EVP_PKEY *
new_key(void)
{
	return EVP_EC_gen("P-256");
}

static void
add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *ex;

	X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
	ex = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	if (ex == NULL) {
		fprintf(stderr, "bad extension %s\n", value);
		exit(2);
	}
	X509_add_ext(cert, ex, -1);
	X509_EXTENSION_free(ex);
}

/* A certificate for `key` signed by (issuer, ikey); ou/cn may be NULL;
 * `san` is an OpenSSL subjectAltName value or NULL; validity in seconds
 * relative to now. */
static X509 *
make_cert(EVP_PKEY *key, X509 *issuer, EVP_PKEY *ikey, const char *ou,
    const char *cn, const char *san, long from, long to, int ca)
{
	X509 *c = X509_new();
	X509_NAME *n = X509_NAME_new();
	static long serial = 1;

	X509_set_version(c, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(c), serial++);
	X509_gmtime_adj(X509_getm_notBefore(c), from);
	X509_gmtime_adj(X509_getm_notAfter(c), to);
	if (ou != NULL)
		X509_NAME_add_entry_by_txt(n, "OU", MBSTRING_ASC,
		    (const unsigned char *)ou, -1, -1, 0);
	if (cn != NULL)
		X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC,
		    (const unsigned char *)cn, -1, -1, 0);
	X509_set_subject_name(c, n);
	X509_set_issuer_name(c, issuer != NULL ? X509_get_subject_name(issuer) : n);
	X509_set_pubkey(c, key);
	if (ca) {
		add_ext(c, issuer ? issuer : c, NID_basic_constraints, "critical,CA:TRUE");
		add_ext(c, issuer ? issuer : c, NID_key_usage, "critical,keyCertSign,cRLSign");
	} else {
		add_ext(c, issuer, NID_ext_key_usage, "clientAuth");
	}
	if (san != NULL)
		add_ext(c, issuer ? issuer : c, NID_subject_alt_name, san);
	X509_sign(c, ikey != NULL ? ikey : key, EVP_sha256());
	X509_NAME_free(n);
	return c;
}

static char *
pem_of(X509 *c)
{
	BIO *b = BIO_new(BIO_s_mem());
	char *data, *out;
	long n;

	PEM_write_bio_X509(b, c);
	n = BIO_get_mem_data(b, &data);
	out = strndup(data, (size_t)n);
	BIO_free(b);
	return out;
}

static void
setup(void)
{
	FILE *f;
	const char *dir;

	if (ca_key != NULL)
		return;
	ca_key = new_key();
	ca_cert = make_cert(ca_key, NULL, NULL, NULL, "test CA", NULL, -3600,
	    86400 * 365, 1);
	other_key = new_key();
	other_cert = make_cert(other_key, NULL, NULL, NULL, "test CA", NULL,
	    -3600, 86400 * 365, 1);
	dir = kbt_tmpdir();
	snprintf(ca_path, sizeof(ca_path), "%s/ca.crt", dir);
	f = fopen(ca_path, "w");
	PEM_write_X509(f, ca_cert);
	fclose(f);
}

static enum kb_err
check(const char *ou, const char *cn, const char *san, long from, long to,
    int other_ca, struct identity *id)
{
	struct identity_verifier *v = NULL;
	EVP_PKEY *k = new_key();
	X509 *c = make_cert(k, other_ca ? other_cert : ca_cert,
	    other_ca ? other_key : ca_key, ou, cn, san, from, to, 0);
	char *pem = pem_of(c);
	enum kb_err e;

	if (identity_verifier_new(ca_path, &v) != KB_OK)
		exit(2);
	e = identity_from_pem(v, pem, strlen(pem), kb_time_now_us(), id);
	identity_verifier_free(v);
	free(pem);
	X509_free(c);
	EVP_PKEY_free(k);
	return e;
}

static void
test_admin(void)
{
	struct identity id;

	setup();
	KBT_ASSERT_OK(check("admin", "alice", NULL, -60, 3600, 0, &id));
	KBT_ASSERT_INT(id.role, ==, ROLE_ADMIN);
	KBT_ASSERT_STR(id.name, "alice");
	KBT_ASSERT_INT(id.nscopes, ==, 0);
	KBT_ASSERT(identity_may_tenant(&id, "anything"));
	KBT_ASSERT(!identity_may_env(&id, "acme", "prod"));
	KBT_ASSERT(id.not_after_us > kb_time_now_us());
}

static void
test_tenant_limited_admin(void)
{
	struct identity id;

	setup();
	KBT_ASSERT_OK(check("admin", "ops", "URI:kb://tenant/acme,URI:kb://tenant/beta",
	    -60, 3600, 0, &id));
	KBT_ASSERT_INT(id.nscopes, ==, 2);
	KBT_ASSERT(identity_may_tenant(&id, "acme"));
	KBT_ASSERT(identity_may_tenant(&id, "beta"));
	KBT_ASSERT(!identity_may_tenant(&id, "gamma"));
}

static void
test_service(void)
{
	struct identity id;

	setup();
	KBT_ASSERT_OK(check("service", "api", "URI:kb://env/acme/prod,"
	    "URI:kb://env/acme/stage,DNS:api.example", -60, 3600, 0, &id));
	KBT_ASSERT_INT(id.role, ==, ROLE_SERVICE);
	KBT_ASSERT(identity_may_env(&id, "acme", "prod"));
	KBT_ASSERT(identity_may_env(&id, "acme", "stage"));
	KBT_ASSERT(!identity_may_env(&id, "acme", "dev"));
	KBT_ASSERT(!identity_may_env(&id, "beta", "prod"));
	/* A service with no environment is refused outright. */
	KBT_ASSERT_ERR(check("service", "api", NULL, -60, 3600, 0, &id),
	    KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_PERMISSION_DENIED), "kb://env/TENANT/ENV");
	/* Malformed or misplaced URIs. */
	KBT_ASSERT_ERR(check("service", "api", "URI:kb://env/acme", -60, 3600, 0, &id),
	    KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_ERR(check("service", "api", "URI:kb://tenant/acme", -60, 3600, 0, &id),
	    KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_ERR(check("admin", "x", "URI:kb://env/acme/prod", -60, 3600, 0, &id),
	    KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_ERR(check("auditor", "x", "URI:kb://tenant/acme", -60, 3600, 0, &id),
	    KB_ERR_PERMISSION_DENIED);
}

static void
test_auditor(void)
{
	struct identity id;

	setup();
	KBT_ASSERT_OK(check("auditor", "carol", NULL, -60, 3600, 0, &id));
	KBT_ASSERT_INT(id.role, ==, ROLE_AUDITOR);
	KBT_ASSERT(!identity_may_env(&id, "acme", "prod"));
}

static void
test_refused(void)
{
	struct identity id;

	setup();
	KBT_ASSERT_ERR(check("admin", "mallory", NULL, -60, 3600, 1, &id),
	    KB_ERR_UNAUTHENTICATED);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_UNAUTHENTICATED), "client certificate refused");
	KBT_ASSERT_ERR(check("admin", "old", NULL, -7200, -3600, 0, &id),
	    KB_ERR_UNAUTHENTICATED);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_UNAUTHENTICATED), "expired");
	KBT_ASSERT_ERR(check("admin", "early", NULL, 3600, 7200, 0, &id),
	    KB_ERR_UNAUTHENTICATED);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_UNAUTHENTICATED), "not yet valid");
	KBT_ASSERT_ERR(check("admin", NULL, NULL, -60, 3600, 0, &id),
	    KB_ERR_UNAUTHENTICATED);
	KBT_ASSERT_ERR(check(NULL, "norole", NULL, -60, 3600, 0, &id),
	    KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_PERMISSION_DENIED), "no keybroker role");
	KBT_ASSERT_ERR(check("root", "x", NULL, -60, 3600, 0, &id),
	    KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_PERMISSION_DENIED), "OU=\"root\"");
}

static void
test_garbage_and_cache(void)
{
	struct identity_verifier *v = NULL;
	struct identity id;
	EVP_PKEY *k;
	X509 *c;
	char *pem;
	int i;

	setup();
	KBT_ASSERT_OK(identity_verifier_new(ca_path, &v));
	KBT_ASSERT_ERR(identity_from_pem(v, NULL, 0, kb_time_now_us(), &id),
	    KB_ERR_UNAUTHENTICATED);
	KBT_ASSERT_ERR(identity_from_pem(v, "junk", 4, kb_time_now_us(), &id),
	    KB_ERR_UNAUTHENTICATED);
	k = new_key();
	c = make_cert(k, ca_cert, ca_key, "admin", "cached", NULL, -60, 3600, 0);
	pem = pem_of(c);
	for (i = 0; i < 3; i++) {
		KBT_ASSERT_OK(identity_from_pem(v, pem, strlen(pem), kb_time_now_us(), &id));
		KBT_ASSERT_STR(id.name, "cached");
	}
	/* The cache does not outlive the certificate. */
	KBT_ASSERT_ERR(identity_from_pem(v, pem, strlen(pem),
	    kb_time_now_us() + 7200LL * 1000000, &id), KB_ERR_UNAUTHENTICATED);
	free(pem);
	X509_free(c);
	EVP_PKEY_free(k);
	identity_verifier_free(v);
	KBT_ASSERT_ERR(identity_verifier_new("/nonexistent/ca.crt", &v), KB_ERR_CONFIG);
}

static const struct kbt_case cases[] = {
	{ "/identity/admin", test_admin },
	{ "/identity/tenant-limited-admin", test_tenant_limited_admin },
	{ "/identity/service", test_service },
	{ "/identity/auditor", test_auditor },
	{ "/identity/refused", test_refused },
	{ "/identity/garbage-and-cache", test_garbage_and_cache },
	{ NULL, NULL }
};

int
main(int argc, char **argv)
{
	int r = kbt_run(cases, argc, argv);
	char dir[512], *slash;

	snprintf(dir, sizeof(dir), "%s", ca_path);
	if ((slash = strrchr(dir, '/')) != NULL) {
		*slash = '\0';
		kbt_rmtree(dir);
	}
	return r;
}
