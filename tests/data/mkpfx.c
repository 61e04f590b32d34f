/* SPDX-License-Identifier: Apache-2.0 */
/* mkpfx.c: build the malformed-on-purpose .pfx fixtures that the openssl
 * command line refuses to write (make-fixtures.sh compiles and runs it; it
 * is not part of keybroker).
 *
 *   mkpfx twokeys  OUT PASSWORD KEY1.pem CERT1.pem KEY2.pem CERT2.pem
 *       two private keys, each with its certificate and localKeyID
 *   mismatch OUT PASSWORD KEY.pem CERT.pem
 *       one key and a certificate of another key, sharing a localKeyID
 *       (so the file claims the certificate belongs to the key)
 *
 * Bags are encrypted with AES-256-CBC (PBES2, PBKDF2-HMAC-SHA256, 2048
 * iterations) and the MAC is HMAC-SHA256, like openssl 3's defaults. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>

#define ITER 2048

static void
die(const char *what)
{
	fprintf(stderr, "mkpfx: %s\n", what);
	ERR_print_errors_fp(stderr);
	exit(1);
}

static EVP_PKEY *
load_key(const char *path)
{
	FILE *f = fopen(path, "r");
	EVP_PKEY *k;

	if (f == NULL)
		die(path);
	k = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	if (k == NULL)
		die(path);
	return k;
}

static X509 *
load_cert(const char *path)
{
	FILE *f = fopen(path, "r");
	X509 *x;

	if (f == NULL)
		die(path);
	x = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	if (x == NULL)
		die(path);
	return x;
}

/* Add one key (shrouded, in a plain data safe) and one certificate (in an
 * encrypted safe), tied together by localKeyID `id`. */
static void
add_pair(STACK_OF(PKCS7) * safes, const char *pass, EVP_PKEY *key, X509 *cert,
    unsigned char id)
{
	STACK_OF(PKCS12_SAFEBAG) *kbags = NULL, *cbags = NULL;
	PKCS12_SAFEBAG *bag;
	PKCS7 *p7;

	if ((bag = PKCS12_add_key(&kbags, key, 0, ITER, NID_aes_256_cbc, pass))
	        == NULL
	    || !PKCS12_add_localkeyid(bag, &id, 1))
		die("PKCS12_add_key");
	if ((bag = PKCS12_add_cert(&cbags, cert)) == NULL
	    || !PKCS12_add_localkeyid(bag, &id, 1))
		die("PKCS12_add_cert");
	if ((p7 = PKCS12_pack_p7encdata(
	         NID_aes_256_cbc, pass, -1, NULL, 0, ITER, cbags))
	        == NULL
	    || !sk_PKCS7_push(safes, p7))
		die("PKCS12_pack_p7encdata");
	if ((p7 = PKCS12_pack_p7data(kbags)) == NULL
	    || !sk_PKCS7_push(safes, p7))
		die("PKCS12_pack_p7data");
	sk_PKCS12_SAFEBAG_pop_free(kbags, PKCS12_SAFEBAG_free);
	sk_PKCS12_SAFEBAG_pop_free(cbags, PKCS12_SAFEBAG_free);
}

int
main(int argc, char **argv)
{
	STACK_OF(PKCS7) *safes = sk_PKCS7_new_null();
	PKCS12 *p12;
	EVP_PKEY *k1 = NULL, *k2 = NULL;
	X509 *c1 = NULL, *c2 = NULL;
	const char *pass;
	FILE *f;

	if (argc == 8 && strcmp(argv[1], "twokeys") == 0) {
		pass = argv[3];
		k1 = load_key(argv[4]);
		c1 = load_cert(argv[5]);
		k2 = load_key(argv[6]);
		c2 = load_cert(argv[7]);
		add_pair(safes, pass, k1, c1, 1);
		add_pair(safes, pass, k2, c2, 2);
	} else if (argc == 6 && strcmp(argv[1], "mismatch") == 0) {
		pass = argv[3];
		k1 = load_key(argv[4]);
		c1 = load_cert(argv[5]);
		add_pair(safes, pass, k1, c1, 1);
	} else {
		fprintf(stderr,
		    "usage: mkpfx twokeys OUT PASS K1 C1 K2 C2\n"
		    "       mkpfx mismatch OUT PASS KEY CERT\n");
		return 2;
	}
	if ((p12 = PKCS12_add_safes(safes, 0)) == NULL)
		die("PKCS12_add_safes");
	if (!PKCS12_set_mac(p12, pass, -1, NULL, 0, ITER, EVP_sha256()))
		die("PKCS12_set_mac");
	if ((f = fopen(argv[2], "wb")) == NULL || i2d_PKCS12_fp(f, p12) != 1)
		die(argv[2]);
	fclose(f);
	PKCS12_free(p12);
	sk_PKCS7_pop_free(safes, PKCS7_free);
	EVP_PKEY_free(k1);
	EVP_PKEY_free(k2);
	X509_free(c1);
	X509_free(c2);
	return 0;
}
