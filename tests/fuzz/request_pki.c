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

#include "kbt_pki.h"

#define DAY (24L * 3600)

/* A certificate (kbt_pki.h): a CA when issuer is NULL. */
static X509 *
make_cert(EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key, const char *cn,
    const char *ou, const char *san, long from_s, long to_s)
{
	return kbt_cert_make(
	    key, issuer, issuer_key, ou, cn, san, from_s, to_s, issuer == NULL);
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
