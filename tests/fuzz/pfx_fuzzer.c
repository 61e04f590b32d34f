/* SPDX-License-Identifier: Apache-2.0 */
/* pfx_fuzzer.c: libFuzzer target for pfx_parse (tenant keys as PKCS#12).
 *
 * Input: byte 0 chooses the password (low 4 bits: an index into
 * passwords[], the passwords of tests/data's files plus "" and NULL) and
 * whether to re-MAC (bit 7); the rest is the .pfx. Most mutations of a
 * real file break its MAC, so pfx_parse stops at the password check; with
 * re-MAC on, the fuzzer first replaces the MAC of a file OpenSSL can decode
 * by a fresh one (same digest, chosen password, 1 iteration), so that the
 * mutated bags behind it are walked too. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>

#include "kb_err.h"
#include "pfx.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REMAC 0x80

/* tests/data/README.md: the fixtures' passwords. */
static const char *const passwords[] = {
    "modern-pass", "legacy-pass", "w\xc3\xafndows-3d\xc3\xabs", /* UTF-8 */
    "keytool-pass", "keytool-legacy-pass", "certtool-pass", "chain-pass",
    "refused-pass", "", NULL,
    "w\xefndows-3d\xebs", /* Latin-1: not UTF-8, refused */
};
#define NPASSWORDS (sizeof(passwords) / sizeof(passwords[0]))

/* A copy of `der` whose MAC is recomputed with `pass` (1 iteration, the
 * file's digest); NULL if OpenSSL cannot decode it or it has no MAC. */
static uint8_t *
remac(const uint8_t *der, size_t len, const char *pass, size_t *outlen)
{
	const unsigned char *p = der;
	const X509_ALGOR *macalg = NULL;
	const ASN1_OBJECT *obj = NULL;
	const EVP_MD *md;
	unsigned char *out = NULL;
	uint8_t *copy = NULL;
	PKCS12 *p12;
	int n;

	if ((p12 = d2i_PKCS12(NULL, &p, (long)len)) == NULL)
		goto out;
	if (!PKCS12_mac_present(p12))
		goto out;
	PKCS12_get0_mac(NULL, &macalg, NULL, NULL, p12);
	X509_ALGOR_get0(&obj, NULL, NULL, macalg);
	if ((md = EVP_get_digestbyobj(obj)) == NULL
	    || PKCS12_set_mac(p12, pass, -1, NULL, 0, 1, md) != 1)
		goto out;
	if ((n = i2d_PKCS12(p12, &out)) <= 0)
		goto out;
	if ((copy = malloc((size_t)n)) != NULL) {
		memcpy(copy, out, (size_t)n);
		*outlen = (size_t)n;
	}
out:
	OPENSSL_free(out);
	PKCS12_free(p12);
	ERR_clear_error();
	return copy;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *pass;
	EVP_PKEY *key = NULL;
	uint8_t *fixed = NULL;
	size_t len;
	enum kb_err e;

	if (size < 1)
		return 0;
	pass = passwords[(data[0] & 0x0f) % NPASSWORDS];
	data++;
	size--;
	if ((data[-1] & REMAC) && size <= PFX_MAX_BYTES
	    && (fixed = remac(data, size, pass != NULL ? pass : "", &len))
	        != NULL) {
		data = fixed;
		size = len;
	}
	e = pfx_parse(data, size, pass, &key);
	/* The contract: a key exactly when KB_OK, and every refusal says why.
	 */
	if ((e == KB_OK) != (key != NULL))
		abort();
	if (e != KB_OK && kb_err_msg(e)[0] == '\0')
		abort();
	EVP_PKEY_free(key);
	free(fixed);
	kb_err_clear();
	return 0;
}
