/* SPDX-License-Identifier: Apache-2.0 */
/* request_pki.c: a throw-away client PKI in memory for the request fuzzer:
 * a CA, and one certificate per caller of enum fuzz_caller. */
#include "request_pki.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define DAY (24L * 3600)

static int
add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX v3;
	X509_EXTENSION *ext;
	int ok;

	X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
	if ((ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value)) == NULL)
		return 0;
	ok = X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	return ok;
}

/* A certificate for `key`, signed by issuer/issuer_key (self-signed when
 * issuer is NULL), valid from now+from_s to now+to_s. ou and san may be
 * NULL. */
static X509 *
make_cert(EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key, const char *cn,
    const char *ou, const char *san, long from_s, long to_s)
{
	X509 *x = X509_new();
	X509_NAME *name;
	unsigned char serial[8];
	ASN1_INTEGER *sn = NULL;
	BIGNUM *bn = NULL;
	int ok = 0;

	if (x == NULL || RAND_bytes(serial, sizeof(serial)) != 1)
		goto out;
	serial[0] &= 0x7f;
	if ((bn = BN_bin2bn(serial, sizeof(serial), NULL)) == NULL
	    || (sn = BN_to_ASN1_INTEGER(bn, NULL)) == NULL
	    || X509_set_version(x, 2) != 1 || X509_set_serialNumber(x, sn) != 1
	    || X509_gmtime_adj(X509_getm_notBefore(x), from_s) == NULL
	    || X509_gmtime_adj(X509_getm_notAfter(x), to_s) == NULL
	    || X509_set_pubkey(x, key) != 1)
		goto out;
	name = X509_get_subject_name(x);
	if ((ou != NULL
	        && X509_NAME_add_entry_by_txt(name, "OU", MBSTRING_UTF8,
	               (const unsigned char *)ou, -1, -1, 0)
	            != 1)
	    || X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
	           (const unsigned char *)cn, -1, -1, 0)
	        != 1
	    || X509_set_issuer_name(
	           x, issuer != NULL ? X509_get_subject_name(issuer) : name)
	        != 1)
		goto out;
	if (issuer == NULL) {
		if (!add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE")
		    || !add_ext(
		        x, x, NID_key_usage, "critical,keyCertSign,cRLSign")
		    || !add_ext(x, x, NID_subject_key_identifier, "hash"))
			goto out;
	} else {
		if (!add_ext(x, issuer, NID_basic_constraints, "CA:FALSE")
		    || !add_ext(
		        x, issuer, NID_key_usage, "critical,digitalSignature")
		    || !add_ext(x, issuer, NID_ext_key_usage, "clientAuth")
		    || !add_ext(
		        x, issuer, NID_authority_key_identifier, "keyid:always")
		    || (san != NULL
		        && !add_ext(x, issuer, NID_subject_alt_name, san)))
			goto out;
	}
	if (X509_sign(x, issuer_key != NULL ? issuer_key : key, EVP_sha256())
	    <= 0)
		goto out;
	ok = 1;
out:
	ASN1_INTEGER_free(sn);
	BN_free(bn);
	if (!ok) {
		X509_free(x);
		x = NULL;
	}
	return x;
}

static char *
to_pem(X509 *x)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *data, *s = NULL;
	long n;

	if (bio != NULL && PEM_write_bio_X509(bio, x) == 1
	    && (n = BIO_get_mem_data(bio, &data)) > 0
	    && (s = malloc((size_t)n + 1)) != NULL) {
		memcpy(s, data, (size_t)n);
		s[n] = '\0';
	}
	BIO_free(bio);
	return s;
}

int
fuzz_pki_make(struct fuzz_pki *p)
{
	static const struct {
		enum fuzz_caller who;
		const char *cn, *ou, *san;
		int other_ca;
		long from_s, to_s;
	} certs[] = {
	    {FUZZ_ADMIN, "fuzz-admin", "admin", "URI:kb://platform", 0, -DAY,
	        365 * DAY},
	    {FUZZ_SERVICE, "fuzz-service", "service", "URI:kb://env/acme/prod",
	        0, -DAY, 365 * DAY},
	    {FUZZ_AUDITOR, "fuzz-auditor", "auditor", NULL, 0, -DAY, 365 * DAY},
	    {FUZZ_TENANT_ADMIN, "fuzz-globex-admin", "admin",
	        "URI:kb://tenant/globex", 0, -DAY, 365 * DAY},
	    {FUZZ_OTHER_CA, "fuzz-admin", "admin", "URI:kb://platform", 1, -DAY,
	        365 * DAY},
	    {FUZZ_EXPIRED, "fuzz-admin", "admin", "URI:kb://platform", 0,
	        -30 * DAY, -DAY},
	    {FUZZ_NO_ROLE, "fuzz-operator", "operator", NULL, 0, -DAY,
	        365 * DAY},
	};
	EVP_PKEY *ca_key = NULL, *other_key = NULL, *key = NULL;
	X509 *ca = NULL, *other = NULL, *x;
	size_t i;
	int r = -1;

	memset(p, 0, sizeof(*p));
	if ((ca_key = EVP_EC_gen("P-256")) == NULL
	    || (other_key = EVP_EC_gen("P-256")) == NULL
	    || (key = EVP_EC_gen("P-256")) == NULL
	    || (ca = make_cert(ca_key, NULL, NULL, "fuzz client CA", NULL, NULL,
	            -DAY, 3650 * DAY))
	        == NULL
	    || (other = make_cert(other_key, NULL, NULL, "fuzz client CA", NULL,
	            NULL, -DAY, 3650 * DAY))
	        == NULL
	    || (p->ca_pem = to_pem(ca)) == NULL)
		goto out;
	for (i = 0; i < sizeof(certs) / sizeof(certs[0]); i++) {
		x = make_cert(key, certs[i].other_ca ? other : ca,
		    certs[i].other_ca ? other_key : ca_key, certs[i].cn,
		    certs[i].ou, certs[i].san, certs[i].from_s, certs[i].to_s);
		if (x == NULL)
			goto out;
		p->pem[certs[i].who] = to_pem(x);
		X509_free(x);
		if (p->pem[certs[i].who] == NULL)
			goto out;
	}
	if ((p->pem[FUZZ_GARBAGE] = strdup("-----BEGIN CERTIFICATE-----\n"
	                                   "MIIBfjCCASOgAwIBAgIUZnV6egAAAAAAAAA"
	                                   "AAAAAAAAAAAAwCgYIKoZIzj0EAwIw\n"
	                                   "-----END CERTIFICATE-----\n"))
	    == NULL)
		goto out;
	r = 0;
out:
	if (r != 0) {
		fprintf(stderr, "fuzz_pki_make: cannot make the test PKI\n");
		ERR_print_errors_fp(stderr);
		fuzz_pki_free(p);
	}
	X509_free(ca);
	X509_free(other);
	EVP_PKEY_free(ca_key);
	EVP_PKEY_free(other_key);
	EVP_PKEY_free(key);
	return r;
}

void
fuzz_pki_free(struct fuzz_pki *p)
{
	size_t i;

	free(p->ca_pem);
	p->ca_pem = NULL;
	for (i = 0; i < FUZZ_CALLERS; i++) {
		free(p->pem[i]);
		p->pem[i] = NULL;
	}
}
