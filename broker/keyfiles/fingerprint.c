/* SPDX-License-Identifier: Apache-2.0 */
/* fingerprint.c: SHA-256 fingerprints of public keys (SubjectPublicKeyInfo). */
#include "fingerprint.h"

#include <stdlib.h>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include "kb_codec.h"

enum kb_err
fingerprint_spki(
    const uint8_t *der, size_t len, char out[FINGERPRINT_HEX_LEN + 1])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;

	out[0] = '\0';
	if (der == NULL || len == 0)
		return kb_errf(
		    KB_ERR_INVALID_ARGUMENT, "no public key to fingerprint");
	if (EVP_Digest(der, len, md, &md_len, EVP_sha256(), NULL) != 1
	    || md_len != 32)
		return kb_err_openssl(KB_ERR_CRYPTO, "SHA-256 of a public key");
	kb_hex_encode(md, md_len, out);
	return KB_OK;
}

enum kb_err
fingerprint_pkey(EVP_PKEY *pkey, char out[FINGERPRINT_HEX_LEN + 1])
{
	unsigned char *der = NULL;
	int len;
	enum kb_err r;

	out[0] = '\0';
	if (pkey == NULL)
		return kb_errf(
		    KB_ERR_INVALID_ARGUMENT, "no public key to fingerprint");
	if ((len = i2d_PUBKEY(pkey, &der)) <= 0)
		return kb_err_openssl(
		    KB_ERR_CRYPTO, "encoding a public key (i2d_PUBKEY)");
	r = fingerprint_spki(der, (size_t)len, out);
	OPENSSL_free(der);
	return r;
}
