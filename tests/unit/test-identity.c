/* SPDX-License-Identifier: Apache-2.0 */
/* test-identity.c: client certificates to roles and scopes, with
 * certificates made here by OpenSSL (a CA, another CA, expired ones). */
#include "harness.h"
#include "kbt_pki.h"

#include <unistd.h>

#include <openssl/bn.h>
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

/* A certificate (kbt_pki.h); the test stops if OpenSSL cannot make it. */
static X509 *
make_cert(EVP_PKEY *key, X509 *issuer, EVP_PKEY *ikey, const char *ou,
    const char *cn, const char *san, long from, long to, int ca)
{
	X509 *c = kbt_cert_make(key, issuer, ikey, ou, cn, san, from, to, ca);

	if (c == NULL) {
		fprintf(stderr, "cannot make a certificate (san %s)\n",
		    san != NULL ? san : "none");
		exit(2);
	}
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
	ca_cert = make_cert(
	    ca_key, NULL, NULL, NULL, "test CA", NULL, -3600, 86400 * 365, 1);
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
	KBT_ASSERT_OK(
	    check("admin", "alice", "URI:kb://platform", -60, 3600, 0, &id));
	KBT_ASSERT_INT(id.role, ==, ROLE_ADMIN);
	KBT_ASSERT_STR(id.name, "alice");
	KBT_ASSERT_INT(id.nscopes, ==, 0);
	KBT_ASSERT(id.platform);
	KBT_ASSERT(identity_may_tenant(&id, "anything"));
	KBT_ASSERT(!identity_may_env(&id, "acme", "prod"));
	KBT_ASSERT(id.not_after_us > kb_time_now_us());
}

static void
test_tenant_limited_admin(void)
{
	struct identity id;

	setup();
	KBT_ASSERT_OK(check("admin", "ops",
	    "URI:kb://tenant/acme,URI:kb://tenant/beta", -60, 3600, 0, &id));
	KBT_ASSERT_INT(id.nscopes, ==, 2);
	KBT_ASSERT(!id.platform);
	KBT_ASSERT(identity_may_tenant(&id, "acme"));
	KBT_ASSERT(identity_may_tenant(&id, "beta"));
	KBT_ASSERT(!identity_may_tenant(&id, "gamma"));
}

static void
test_service(void)
{
	struct identity id;

	setup();
	KBT_ASSERT_OK(check("service", "api",
	    "URI:kb://env/acme/prod,"
	    "URI:kb://env/acme/stage,DNS:api.example",
	    -60, 3600, 0, &id));
	KBT_ASSERT_INT(id.role, ==, ROLE_SERVICE);
	KBT_ASSERT(identity_may_env(&id, "acme", "prod"));
	KBT_ASSERT(identity_may_env(&id, "acme", "stage"));
	KBT_ASSERT(!identity_may_env(&id, "acme", "dev"));
	KBT_ASSERT(!identity_may_env(&id, "beta", "prod"));
	/* Bound to acme's environments, not to tenant acme. */
	KBT_ASSERT(!identity_may_tenant(&id, "acme"));
	/* A service with no environment is refused outright. */
	KBT_ASSERT_ERR(check("service", "api", NULL, -60, 3600, 0, &id),
	    KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_PERMISSION_DENIED), "kb://env/TENANT/ENV");
	/* Malformed or misplaced URIs. */
	KBT_ASSERT_ERR(
	    check("service", "api", "URI:kb://env/acme", -60, 3600, 0, &id),
	    KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_ERR(
	    check("service", "api", "URI:kb://tenant/acme", -60, 3600, 0, &id),
	    KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_ERR(
	    check("admin", "x", "URI:kb://env/acme/prod", -60, 3600, 0, &id),
	    KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_ERR(
	    check("auditor", "x", "URI:kb://tenant/acme", -60, 3600, 0, &id),
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
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_UNAUTHENTICATED), "client certificate refused");
	KBT_ASSERT_ERR(check("admin", "old", NULL, -7200, -3600, 0, &id),
	    KB_ERR_UNAUTHENTICATED);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_UNAUTHENTICATED), "expired");
	KBT_ASSERT_ERR(check("admin", "early", NULL, 3600, 7200, 0, &id),
	    KB_ERR_UNAUTHENTICATED);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_UNAUTHENTICATED), "not yet valid");
	KBT_ASSERT_ERR(check("admin", NULL, NULL, -60, 3600, 0, &id),
	    KB_ERR_UNAUTHENTICATED);
	KBT_ASSERT_ERR(check(NULL, "norole", NULL, -60, 3600, 0, &id),
	    KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_PERMISSION_DENIED), "no keybroker role");
	KBT_ASSERT_ERR(check("root", "x", NULL, -60, 3600, 0, &id),
	    KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_PERMISSION_DENIED), "OU=\"root\"");
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
	c = make_cert(k, ca_cert, ca_key, "admin", "cached",
	    "URI:kb://platform", -60, 3600, 0);
	pem = pem_of(c);
	for (i = 0; i < 3; i++) {
		KBT_ASSERT_OK(identity_from_pem(
		    v, pem, strlen(pem), kb_time_now_us(), &id));
		KBT_ASSERT_STR(id.name, "cached");
	}
	/* The cache does not outlive the certificate. */
	KBT_ASSERT_ERR(identity_from_pem(v, pem, strlen(pem),
	                   kb_time_now_us() + 7200LL * 1000000, &id),
	    KB_ERR_UNAUTHENTICATED);
	free(pem);
	X509_free(c);
	EVP_PKEY_free(k);
	identity_verifier_free(v);
	KBT_ASSERT_ERR(
	    identity_verifier_new("/nonexistent/ca.crt", &v), KB_ERR_CONFIG);
}

/* An admin certificate with no scope is no longer platform-wide. */
static void
test_admin_needs_scope(void)
{
	struct identity id;

	setup();
	KBT_ASSERT_ERR(check("admin", "legacy", NULL, -60, 3600, 0, &id),
	    KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_PERMISSION_DENIED), "kb://platform");
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_PERMISSION_DENIED), "reissue");
	KBT_ASSERT(!identity_may_tenant(&id, "acme"));
	/* A DNS name is not a scope either. */
	KBT_ASSERT_ERR(
	    check("admin", "legacy", "DNS:admin.example", -60, 3600, 0, &id),
	    KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_ERR(
	    check("admin", "both", "URI:kb://platform,URI:kb://tenant/acme",
	        -60, 3600, 0, &id),
	    KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_ERR(
	    check("service", "svc", "URI:kb://platform,URI:kb://env/a/b", -60,
	        3600, 0, &id),
	    KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_ERR(
	    check("auditor", "aud", "URI:kb://platform", -60, 3600, 0, &id),
	    KB_ERR_PERMISSION_DENIED);
}

/* SAN URIs that are not exactly ours refuse the certificate; none makes
 * an unscoped admin. */
static void
test_strict_uris(void)
{
	static const char *const bad[] = {
	    "URI:KB://tenant/x",
	    "URI:kb:/tenant/x",
	    "URI:kb://tenant/x%00y",
	    "URI:kb://Tenant/x",
	    "URI:kb://tenant/X",
	    "URI:Kb://tenant/x",
	    "URI:kb://TENANT/x",
	    "URI:kb://tenant/",
	    "URI:kb://tenant/x/",
	    "URI:kb://tenant/x/y",
	    "URI:kb://tenant/-x",
	    "URI:kb://tenant//x",
	    "URI:kb://tenant/x?y",
	    "URI:kb://tenant/x#y",
	    "URI:kb://platform/",
	    "URI:kb://Platform",
	    "URI:kb://tenant/x y",
	    "URI:spiffe://acme/admin",
	    "URI:https://example.com/",
	    "URI:kb://tenant/acme,URI:KB://tenant/beta",
	};
	struct identity id;
	size_t i;

	setup();
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		enum kb_err e =
		    check("admin", "ops", bad[i], -60, 3600, 0, &id);
		if (e != KB_ERR_PERMISSION_DENIED)
			fprintf(stderr, "# %s: %s\n", bad[i], kb_err_msg(e));
		KBT_ASSERT_ERR(e, KB_ERR_PERMISSION_DENIED);
		KBT_ASSERT_CONTAINS(
		    kb_err_msg(KB_ERR_PERMISSION_DENIED), "SAN URI");
		KBT_ASSERT(!identity_may_tenant(&id, "x"));
		KBT_ASSERT(!identity_may_tenant(&id, "acme"));
	}
	KBT_ASSERT_ERR(check("service", "api", "URI:kb://env/acme/Prod", -60,
	                   3600, 0, &id),
	    KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_ERR(check("service", "api",
	                   "URI:kb://env/acme/prod,"
	                   "URI:kb:/env/acme/dev",
	                   -60, 3600, 0, &id),
	    KB_ERR_PERMISSION_DENIED);
}

static void
test_scope_parse(void)
{
	struct identity_scope s;
	int platform;

#define P(str)                                                                 \
	identity_scope_parse(                                                  \
	    (const unsigned char *)(str), sizeof(str) - 1, &s, &platform)
	KBT_ASSERT_OK(P("kb://platform"));
	KBT_ASSERT(platform);
	KBT_ASSERT_OK(P("kb://tenant/acme-1"));
	KBT_ASSERT(!platform);
	KBT_ASSERT_STR(s.tenant, "acme-1");
	KBT_ASSERT_STR(s.env, "");
	KBT_ASSERT_OK(P("kb://env/acme/prod"));
	KBT_ASSERT_STR(s.tenant, "acme");
	KBT_ASSERT_STR(s.env, "prod");
	KBT_ASSERT_ERR(P("kb://tenant/x\0y"), KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_PERMISSION_DENIED), "NUL");
	KBT_ASSERT_ERR(P("kb://tenant/x%00y"), KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_PERMISSION_DENIED), "'%'");
	KBT_ASSERT_ERR(P("KB://tenant/x"), KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_PERMISSION_DENIED), "kb://");
	KBT_ASSERT_ERR(P("kb:/tenant/x"), KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_ERR(P("kb://Tenant/x"), KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_ERR(P("kb://tenant/Acme"), KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_ERR(P("kb://env/acme"), KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_ERR(P("kb://env/acme/prod/x"), KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_ERR(P("kb://env//prod"), KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_ERR(P("kb://tenant/\xc3\xa9"), KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_ERR(P(""), KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_ERR(P("kb://tenant/a234567890123456789012345678901234567890"
	                 "123456789012345678901234"),
	    KB_ERR_PERMISSION_DENIED);
#undef P
}

/* A SAN URI or a CN with an embedded NUL, made by hand (OpenSSL's config
 * syntax cannot write one). */
static X509 *
cert_with_raw(
    EVP_PKEY *k, const char *cn, size_t cn_len, const char *uri, size_t uri_len)
{
	X509 *c =
	    make_cert(k, ca_cert, ca_key, "admin", NULL, NULL, -60, 3600, 0);
	X509_NAME *n = X509_get_subject_name(c);
	GENERAL_NAMES *gens = GENERAL_NAMES_new();
	GENERAL_NAME *gn = GENERAL_NAME_new();
	ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();

	X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC,
	    (const unsigned char *)cn, (int)cn_len, -1, 0);
	ASN1_STRING_set(ia5, uri, (int)uri_len);
	GENERAL_NAME_set0_value(gn, GEN_URI, ia5);
	sk_GENERAL_NAME_push(gens, gn);
	X509_add1_ext_i2d(c, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT);
	GENERAL_NAMES_free(gens);
	X509_sign(c, ca_key, EVP_sha256());
	return c;
}

static enum kb_err
check_x509(X509 *c, struct identity *id)
{
	struct identity_verifier *v = NULL;
	char *pem = pem_of(c);
	enum kb_err e;

	if (identity_verifier_new(ca_path, &v) != KB_OK)
		exit(2);
	e = identity_from_pem(v, pem, strlen(pem), kb_time_now_us(), id);
	identity_verifier_free(v);
	free(pem);
	return e;
}

static void
test_embedded_nul(void)
{
	struct identity id;
	EVP_PKEY *k;
	X509 *c;

	setup();
	k = new_key();
	c = cert_with_raw(k, "ops", 3, "kb://tenant/x\0y", 15);
	KBT_ASSERT_ERR(check_x509(c, &id), KB_ERR_PERMISSION_DENIED);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_PERMISSION_DENIED), "NUL");
	KBT_ASSERT(!identity_may_tenant(&id, "x"));
	X509_free(c);
	c = cert_with_raw(k, "ops", 3, "kb://platform\0", 14);
	KBT_ASSERT_ERR(check_x509(c, &id), KB_ERR_PERMISSION_DENIED);
	X509_free(c);
	c = cert_with_raw(k, "admin\0evil", 10, "kb://platform", 13);
	KBT_ASSERT_ERR(check_x509(c, &id), KB_ERR_UNAUTHENTICATED);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_UNAUTHENTICATED), "CN");
	X509_free(c);
	c = cert_with_raw(k, "ad\nmin", 6, "kb://platform", 13);
	KBT_ASSERT_ERR(check_x509(c, &id), KB_ERR_UNAUTHENTICATED);
	X509_free(c);
	/* The same path with clean values passes. */
	c = cert_with_raw(k, "admin", 5, "kb://platform", 13);
	KBT_ASSERT_OK(check_x509(c, &id));
	KBT_ASSERT(id.platform);
	X509_free(c);
	EVP_PKEY_free(k);
}

static void
write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0)
		exit(2);
}

/* A CRL of the test CA revoking `serials` (NULL-terminated), next update
 * `next_s` seconds from now, written to path; issuer/ikey sign it. */
static void
write_crl(const char *path, X509 *issuer, EVP_PKEY *ikey,
    const ASN1_INTEGER *const *serials, long next_s)
{
	X509_CRL *crl = X509_CRL_new();
	ASN1_TIME *t = ASN1_TIME_new();
	FILE *f;
	size_t i;

	X509_CRL_set_version(crl, 1);
	X509_CRL_set_issuer_name(crl, X509_get_subject_name(issuer));
	X509_gmtime_adj(t, -3600);
	X509_CRL_set1_lastUpdate(crl, t);
	X509_gmtime_adj(t, next_s);
	X509_CRL_set1_nextUpdate(crl, t);
	for (i = 0; serials != NULL && serials[i] != NULL; i++) {
		X509_REVOKED *r = X509_REVOKED_new();
		ASN1_TIME *rt = ASN1_TIME_new();

		X509_gmtime_adj(rt, -60);
		X509_REVOKED_set_serialNumber(r, (ASN1_INTEGER *)serials[i]);
		X509_REVOKED_set_revocationDate(r, rt);
		X509_CRL_add0_revoked(crl, r);
		ASN1_TIME_free(rt);
	}
	X509_CRL_sort(crl);
	X509_CRL_sign(crl, ikey, EVP_sha256());
	f = fopen(path, "w");
	PEM_write_X509_CRL(f, crl);
	fclose(f);
	ASN1_TIME_free(t);
	X509_CRL_free(crl);
}

static void
test_crl(void)
{
	struct identity_verifier *v = NULL;
	struct identity id;
	char crl_path[600], tmp[620], *pem_a, *pem_b, serial[64];
	const ASN1_INTEGER *revoke_a[2] = {NULL, NULL};
	EVP_PKEY *k;
	X509 *a, *b;
	BIGNUM *bn;
	char *hex;

	setup();
	snprintf(crl_path, sizeof(crl_path), "%s.crl", ca_path);
	snprintf(tmp, sizeof(tmp), "%s.tmp", crl_path);
	k = new_key();
	a = make_cert(k, ca_cert, ca_key, "service", "svc-a",
	    "URI:kb://env/acme/a", -60, 3600, 0);
	b = make_cert(k, ca_cert, ca_key, "service", "svc-b",
	    "URI:kb://env/acme/b", -60, 3600, 0);
	pem_a = pem_of(a);
	pem_b = pem_of(b);
	bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(a), NULL);
	hex = BN_bn2hex(bn);
	snprintf(serial, sizeof(serial), "serial %s", hex);
	OPENSSL_free(hex);
	BN_free(bn);
	revoke_a[0] = X509_get0_serialNumber(a);

	/* An empty CRL: both pass (and a is now cached). */
	write_crl(crl_path, ca_cert, ca_key, NULL, 86400);
	KBT_ASSERT_OK(identity_verifier_new(ca_path, &v));
	KBT_ASSERT_OK(identity_verifier_set_crl(v, crl_path, 0));
	KBT_ASSERT_OK(
	    identity_from_pem(v, pem_a, strlen(pem_a), kb_time_now_us(), &id));
	KBT_ASSERT_OK(
	    identity_from_pem(v, pem_b, strlen(pem_b), kb_time_now_us(), &id));

	/* a revoked; a reload (SIGHUP) voids the cached result. */
	write_crl(tmp, ca_cert, ca_key, revoke_a, 86400);
	KBT_ASSERT(rename(tmp, crl_path) == 0);
	KBT_ASSERT_OK(identity_verifier_reload(v));
	KBT_ASSERT_ERR(
	    identity_from_pem(v, pem_a, strlen(pem_a), kb_time_now_us(), &id),
	    KB_ERR_UNAUTHENTICATED);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_UNAUTHENTICATED), "revoked");
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_UNAUTHENTICATED), serial);
	KBT_ASSERT_STR(id.name, "");
	/* ... and from the cache, the same answer. */
	KBT_ASSERT_ERR(
	    identity_from_pem(v, pem_a, strlen(pem_a), kb_time_now_us(), &id),
	    KB_ERR_UNAUTHENTICATED);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_UNAUTHENTICATED), serial);
	KBT_ASSERT_OK(
	    identity_from_pem(v, pem_b, strlen(pem_b), kb_time_now_us(), &id));

	/* The file changing is noticed without a reload (within a second). */
	write_crl(tmp, ca_cert, ca_key, NULL, 86400);
	KBT_ASSERT(rename(tmp, crl_path) == 0);
	usleep(1100 * 1000);
	KBT_ASSERT_OK(
	    identity_from_pem(v, pem_a, strlen(pem_a), kb_time_now_us(), &id));
	write_crl(tmp, ca_cert, ca_key, revoke_a, 86400);
	KBT_ASSERT(rename(tmp, crl_path) == 0);
	usleep(1100 * 1000);
	KBT_ASSERT_ERR(
	    identity_from_pem(v, pem_a, strlen(pem_a), kb_time_now_us(), &id),
	    KB_ERR_UNAUTHENTICATED);

	/* A damaged CRL or one of another CA keeps the previous one. */
	write_crl(tmp, other_cert, other_key, NULL, 86400);
	KBT_ASSERT(rename(tmp, crl_path) == 0);
	KBT_ASSERT_ERR(identity_verifier_reload(v), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG), "not signed by a CA");
	KBT_ASSERT_ERR(
	    identity_from_pem(v, pem_a, strlen(pem_a), kb_time_now_us(), &id),
	    KB_ERR_UNAUTHENTICATED);
	write_text(crl_path, "junk\n");
	KBT_ASSERT_ERR(identity_verifier_reload(v), KB_ERR_CONFIG);
	KBT_ASSERT_ERR(
	    identity_from_pem(v, pem_a, strlen(pem_a), kb_time_now_us(), &id),
	    KB_ERR_UNAUTHENTICATED);
	KBT_ASSERT_OK(
	    identity_from_pem(v, pem_b, strlen(pem_b), kb_time_now_us(), &id));
	identity_verifier_free(v);

	/* A stale CRL: used and logged; with strict, every call refused. */
	write_crl(crl_path, ca_cert, ca_key, revoke_a, -60);
	KBT_ASSERT_OK(identity_verifier_new(ca_path, &v));
	KBT_ASSERT_OK(identity_verifier_set_crl(v, crl_path, 0));
	KBT_ASSERT_OK(
	    identity_from_pem(v, pem_b, strlen(pem_b), kb_time_now_us(), &id));
	KBT_ASSERT_ERR(
	    identity_from_pem(v, pem_a, strlen(pem_a), kb_time_now_us(), &id),
	    KB_ERR_UNAUTHENTICATED);
	KBT_ASSERT_OK(identity_verifier_set_crl(v, crl_path, 1));
	KBT_ASSERT_ERR(
	    identity_from_pem(v, pem_b, strlen(pem_b), kb_time_now_us(), &id),
	    KB_ERR_UNAVAILABLE);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_UNAVAILABLE), "nextUpdate");
	identity_verifier_free(v);

	/* Refused at start: no such file, no CRL in it. */
	KBT_ASSERT_OK(identity_verifier_new(ca_path, &v));
	KBT_ASSERT_ERR(identity_verifier_set_crl(v, "/nonexistent/crl.pem", 0),
	    KB_ERR_CONFIG);
	write_text(crl_path, "");
	KBT_ASSERT_ERR(
	    identity_verifier_set_crl(v, crl_path, 0), KB_ERR_CONFIG);
	identity_verifier_free(v);

	free(pem_a);
	free(pem_b);
	X509_free(a);
	X509_free(b);
	EVP_PKEY_free(k);
}

static const struct kbt_case cases[] = {{"/identity/admin", test_admin},
    {"/identity/tenant-limited-admin", test_tenant_limited_admin},
    {"/identity/service", test_service}, {"/identity/auditor", test_auditor},
    {"/identity/refused", test_refused},
    {"/identity/garbage-and-cache", test_garbage_and_cache},
    {"/identity/admin-needs-scope", test_admin_needs_scope},
    {"/identity/strict-uris", test_strict_uris},
    {"/identity/scope-parse", test_scope_parse},
    {"/identity/embedded-nul", test_embedded_nul}, {"/identity/crl", test_crl},
    {NULL, NULL}};

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
