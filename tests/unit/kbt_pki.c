/* SPDX-License-Identifier: Apache-2.0 */
/* kbt_pki.c: certificates for tests, made in memory. */
#include "kbt_pki.h"

#include <openssl/bn.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

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

static int
add_name(X509_NAME *n, const char *field, const char *value)
{
	return value == NULL
	    || X509_NAME_add_entry_by_txt(n, field, MBSTRING_UTF8,
	           (const unsigned char *)value, -1, -1, 0)
	    == 1;
}

X509 *
kbt_cert_make(EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key, const char *ou,
    const char *cn, const char *san, long from_s, long to_s, int ca)
{
	X509 *x = X509_new(), *signer;
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
	if (!add_name(name, "OU", ou) || !add_name(name, "CN", cn)
	    || X509_set_issuer_name(
	           x, issuer != NULL ? X509_get_subject_name(issuer) : name)
	        != 1)
		goto out;
	signer = issuer != NULL ? issuer : x;
	if (ca) {
		if (!add_ext(
		        x, signer, NID_basic_constraints, "critical,CA:TRUE")
		    || !add_ext(x, signer, NID_key_usage,
		        "critical,keyCertSign,cRLSign")
		    || !add_ext(x, x, NID_subject_key_identifier, "hash"))
			goto out;
	} else {
		if (!add_ext(x, signer, NID_basic_constraints, "CA:FALSE")
		    || !add_ext(
		        x, signer, NID_key_usage, "critical,digitalSignature")
		    || !add_ext(x, signer, NID_ext_key_usage, "clientAuth")
		    || (issuer != NULL
		        && !add_ext(x, issuer, NID_authority_key_identifier,
		            "keyid:always")))
			goto out;
	}
	if (san != NULL && !add_ext(x, signer, NID_subject_alt_name, san))
		goto out;
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
