/* SPDX-License-Identifier: Apache-2.0 */
/* byok_wrap.c: wrap an RSA-2048 private key into an Azure .byok file
 * (RSA-OAEP-SHA1 of an AES-256 key, then AES key wrap with padding). */
#include "byok_wrap.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/decoder.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "kb_codec.h"
#include "kb_secmem.h"

/* What kind of key it is, for refusals: "an EC key", "RSA-4096". */
static const char *
key_kind(EVP_PKEY *pk, char *buf, size_t len)
{
	int id = EVP_PKEY_get_base_id(pk);

	if (id == EVP_PKEY_RSA)
		snprintf(buf, len, "an RSA-%d key", EVP_PKEY_get_bits(pk));
	else if (id == EVP_PKEY_RSA_PSS)
		snprintf(buf, len, "an RSA-PSS key");
	else if (id == EVP_PKEY_EC)
		snprintf(buf, len, "an EC key");
	else if (id == EVP_PKEY_ED25519 || id == EVP_PKEY_ED448)
		snprintf(buf, len, "an EdDSA key");
	else
		snprintf(buf, len, "a %s key", OBJ_nid2sn(id));
	return buf;
}

/* OpenSSL must not prompt: a missing password is our error to report. */
static int
key_password_cb(char *buf, int size, int rwflag, void *u)
{
	const char *pw = u;
	size_t n;

	(void)rwflag;
	if (pw == NULL || size <= 0)
		return -1;
	n = strlen(pw);
	if (n > (size_t)size)
		return -1;
	memcpy(buf, pw, n);
	return (int)n;
}

enum kb_err
byok_wrap_load_kek(const char *pem, size_t len, EVP_PKEY **out)
{
	BIO *b = NULL;
	X509 *x = NULL;
	OSSL_DECODER_CTX *dc = NULL;
	EVP_PKEY *pk = NULL;
	char kind[64];
	enum kb_err r = KB_ERR_INTERNAL;

	*out = NULL;
	if (len > INT_MAX || (b = BIO_new_mem_buf(pem, (int)len)) == NULL) {
		r = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((pk = PEM_read_bio_PUBKEY(b, NULL, key_password_cb, NULL))
	    == NULL) {
		(void)BIO_reset(b);
		ERR_clear_error();
		if ((x = PEM_read_bio_X509(b, NULL, key_password_cb, NULL))
		    != NULL)
			pk = X509_get_pubkey(x);
	}
	if (pk == NULL) {
		(void)BIO_reset(b);
		ERR_clear_error();
		/* PKCS#1 "RSA PUBLIC KEY" through the generic decoder. */
		if ((dc = OSSL_DECODER_CTX_new_for_pkey(&pk, "PEM", NULL, "RSA",
		         EVP_PKEY_PUBLIC_KEY, NULL, NULL))
		        != NULL
		    && OSSL_DECODER_from_bio(dc, b) != 1) {
			EVP_PKEY_free(pk);
			pk = NULL;
		}
	}
	if (pk == NULL) {
		ERR_clear_error();
		r = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the KEK holds no PEM public key (\"-----BEGIN PUBLIC "
		    "KEY-----\" or a certificate), as 'kbctl byok kek' writes "
		    "it");
		goto out;
	}
	if (EVP_PKEY_get_base_id(pk) != EVP_PKEY_RSA) {
		r = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the KEK is %s: a key-exchange key must be RSA",
		    key_kind(pk, kind, sizeof(kind)));
		goto out;
	}
	if (EVP_PKEY_get_bits(pk) < 2048) {
		r = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the KEK is RSA-%d: at least 2048 bits are needed",
		    EVP_PKEY_get_bits(pk));
		goto out;
	}
	*out = pk;
	pk = NULL;
	r = KB_OK;
out:
	EVP_PKEY_free(pk);
	OSSL_DECODER_CTX_free(dc);
	X509_free(x);
	BIO_free(b);
	return r;
}

int
byok_wrap_key_is_encrypted(const uint8_t *data, size_t len)
{
	static const char *const marks[] = {
	    "-----BEGIN ENCRYPTED PRIVATE KEY-----", "Proc-Type: 4,ENCRYPTED"};
	size_t i, m;

	for (m = 0; m < sizeof(marks) / sizeof(marks[0]); m++) {
		size_t ml = strlen(marks[m]);

		for (i = 0; i + ml <= len; i++)
			if (memcmp(data + i, marks[m], ml) == 0)
				return 1;
	}
	return 0;
}

enum kb_err
byok_wrap_load_key(
    const uint8_t *data, size_t len, const char *password, EVP_PKEY **out)
{
	BIO *b = NULL;
	EVP_PKEY *pk = NULL;
	const unsigned char *p = data;
	char kind[64];
	enum kb_err r = KB_ERR_INTERNAL;

	*out = NULL;
	if (len == 0 || len > INT_MAX)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the private key file is empty or too large");
	if (byok_wrap_key_is_encrypted(data, len) && password == NULL)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the private key is encrypted: its password is needed "
		    "(--password-file)");
	if (data[0] == 0x30) {
		/* DER: PKCS#8 or PKCS#1. */
		pk = d2i_AutoPrivateKey(NULL, &p, (long)len);
	} else {
		if ((b = BIO_new_mem_buf(data, (int)len)) == NULL) {
			r = kb_errf(KB_ERR_NOMEM, "out of memory");
			goto out;
		}
		pk = PEM_read_bio_PrivateKey(
		    b, NULL, key_password_cb, (void *)password);
	}
	if (pk == NULL) {
		r = kb_err_openssl(KB_ERR_INVALID_ARGUMENT,
		    byok_wrap_key_is_encrypted(data, len)
		        ? "cannot decrypt the private key (wrong password?)"
		        : "the file holds no PEM private key "
		          "(\"-----BEGIN PRIVATE KEY-----\" or \"-----BEGIN "
		          "RSA PRIVATE KEY-----\")");
		goto out;
	}
	if (EVP_PKEY_get_base_id(pk) != EVP_PKEY_RSA
	    || EVP_PKEY_get_bits(pk) != 2048) {
		r = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the private key is %s: tenant keys are RSA-2048 only",
		    key_kind(pk, kind, sizeof(kind)));
		goto out;
	}
	*out = pk;
	pk = NULL;
	r = KB_OK;
out:
	EVP_PKEY_free(pk); /* wipes */
	BIO_free(b);
	ERR_clear_error();
	return r;
}

/* RSA-OAEP with SHA-1 and MGF1-SHA-1 of in[0..n) under `kek` into a new
 * buffer of *out_len (the modulus size) bytes. */
static enum kb_err
oaep_sha1_encrypt(
    EVP_PKEY *kek, const uint8_t *in, size_t n, uint8_t **out, size_t *out_len)
{
	EVP_PKEY_CTX *ctx = NULL;
	uint8_t *buf = NULL;
	size_t len = 0;
	enum kb_err r = KB_ERR_INTERNAL;

	*out = NULL;
	*out_len = 0;
	if ((ctx = EVP_PKEY_CTX_new(kek, NULL)) == NULL
	    || EVP_PKEY_encrypt_init(ctx) <= 0
	    || EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0
	    || EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha1()) <= 0
	    || EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha1()) <= 0
	    || EVP_PKEY_encrypt(ctx, NULL, &len, in, n) <= 0
	    || (buf = malloc(len)) == NULL
	    || EVP_PKEY_encrypt(ctx, buf, &len, in, n) <= 0) {
		r = kb_err_openssl(KB_ERR_CRYPTO,
		    "RSA-OAEP-SHA1 encryption of the transfer key");
		goto out;
	}
	*out = buf;
	*out_len = len;
	buf = NULL;
	r = KB_OK;
out:
	free(buf);
	EVP_PKEY_CTX_free(ctx);
	return r;
}

/* AES-256 key wrap with padding (RFC 5649) of in[0..n) under aes[32]
 * into out (at least n + 15 bytes); *out_len gets the length. */
static enum kb_err
aes_kwp_wrap(const uint8_t *aes, const uint8_t *in, size_t n, uint8_t *out,
    size_t *out_len)
{
	EVP_CIPHER_CTX *ctx = NULL;
	int l1 = 0, l2 = 0;
	enum kb_err r = KB_ERR_INTERNAL;

	*out_len = 0;
	if (n > INT_MAX - 16 || (ctx = EVP_CIPHER_CTX_new()) == NULL) {
		r = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	EVP_CIPHER_CTX_set_flags(ctx, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
	if (EVP_EncryptInit_ex(ctx, EVP_aes_256_wrap_pad(), NULL, aes, NULL)
	        != 1
	    || EVP_EncryptUpdate(ctx, out, &l1, in, (int)n) != 1
	    || EVP_EncryptFinal_ex(ctx, out + l1, &l2) != 1) {
		r = kb_err_openssl(
		    KB_ERR_CRYPTO, "AES key wrap with padding of the key");
		goto out;
	}
	*out_len = (size_t)l1 + (size_t)l2;
	r = KB_OK;
out:
	EVP_CIPHER_CTX_free(ctx); /* cleanses the key schedule */
	return r;
}

/* Append s to the JSON text as a string literal (escaped). Returns the
 * new length, or (size_t)-1 when it does not fit. */
static size_t
json_str(char *buf, size_t cap, size_t o, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;

	if (o + 1 >= cap)
		return (size_t)-1;
	buf[o++] = '"';
	for (; *p != '\0'; p++) {
		if (o + 7 >= cap)
			return (size_t)-1;
		if (*p == '"' || *p == '\\') {
			buf[o++] = '\\';
			buf[o++] = (char)*p;
		} else if (*p < 0x20 || *p == 0x7f) {
			o += (size_t)snprintf(buf + o, cap - o, "\\u%04x", *p);
		} else {
			buf[o++] = (char)*p;
		}
	}
	if (o + 1 >= cap)
		return (size_t)-1;
	buf[o++] = '"';
	buf[o] = '\0';
	return o;
}

static size_t
json_raw(char *buf, size_t cap, size_t o, const char *s)
{
	size_t n = strlen(s);

	if (o == (size_t)-1 || o + n + 1 > cap)
		return (size_t)-1;
	memcpy(buf + o, s, n + 1);
	return o + n;
}

enum kb_err
byok_wrap_make(EVP_PKEY *kek, const char *kid, EVP_PKEY *key,
    const char *generator, char **json, size_t *json_len)
{
	PKCS8_PRIV_KEY_INFO *p8 = NULL;
	uint8_t aes[BYOK_WRAP_AES_BYTES]; /* secret */
	unsigned char *der = NULL; /* secret: the private key */
	uint8_t *rsa_ct = NULL, *ct = NULL;
	size_t rsa_len = 0, kwp_len = 0, ct_len, b64_cap, cap, o;
	int der_len = 0;
	char *b64 = NULL, *doc = NULL;
	char kind[64];
	enum kb_err r = KB_ERR_INTERNAL;

	*json = NULL;
	*json_len = 0;
	if (kid == NULL || *kid == '\0')
		return kb_errf(
		    KB_ERR_INVALID_ARGUMENT, "the KEK id (kid) is empty");
	if (EVP_PKEY_get_base_id(kek) != EVP_PKEY_RSA)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the KEK is %s: a key-exchange key must be RSA",
		    key_kind(kek, kind, sizeof(kind)));
	if (EVP_PKEY_get_base_id(key) != EVP_PKEY_RSA
	    || EVP_PKEY_get_bits(key) != 2048)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the private key is %s: tenant keys are RSA-2048 only",
		    key_kind(key, kind, sizeof(kind)));
	if ((p8 = EVP_PKEY2PKCS8(key)) == NULL
	    || (der_len = i2d_PKCS8_PRIV_KEY_INFO(p8, &der)) <= 0) {
		r = kb_err_openssl(
		    KB_ERR_CRYPTO, "encoding the private key as PKCS#8");
		goto out;
	}
	if (RAND_priv_bytes(aes, sizeof(aes)) != 1) {
		r = kb_err_openssl(KB_ERR_CRYPTO, "random transfer key");
		goto out;
	}
	if ((r = oaep_sha1_encrypt(kek, aes, sizeof(aes), &rsa_ct, &rsa_len))
	    != KB_OK)
		goto out;
	r = KB_ERR_INTERNAL;
	ct_len = rsa_len + (size_t)der_len + 16;
	if ((ct = malloc(ct_len)) == NULL) {
		r = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	memcpy(ct, rsa_ct, rsa_len);
	if ((r = aes_kwp_wrap(
	         aes, der, (size_t)der_len, ct + rsa_len, &kwp_len))
	    != KB_OK)
		goto out;
	r = KB_ERR_INTERNAL;
	ct_len = rsa_len + kwp_len;
	b64_cap = (4 * ct_len + 2) / 3 + 1;
	if ((b64 = malloc(b64_cap)) == NULL
	    || kb_base64_encode(ct, ct_len, b64, b64_cap, KB_B64_URL) == 0) {
		r = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	/* Fixed text, the two strings escaped (up to 6 bytes a byte). */
	cap = 200 + 6 * strlen(kid) + 6 * strlen(generator) + b64_cap;
	if ((doc = malloc(cap)) == NULL) {
		r = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	doc[0] = '\0';
	o = json_raw(
	    doc, cap, 0, "{\"schema_version\":\"1.0.0\",\"header\":{\"kid\":");
	o = o == (size_t)-1 ? o : json_str(doc, cap, o, kid);
	o = json_raw(doc, cap, o,
	    ",\"alg\":\"dir\",\"enc\":\"CKM_RSA_AES_KEY_WRAP\"},"
	    "\"ciphertext\":\"");
	o = json_raw(doc, cap, o, b64);
	o = json_raw(doc, cap, o, "\",\"generator\":");
	o = o == (size_t)-1 ? o : json_str(doc, cap, o, generator);
	o = json_raw(doc, cap, o, "}\n");
	if (o == (size_t)-1) {
		r = kb_errf(KB_ERR_INTERNAL, "the .byok text does not fit");
		goto out;
	}
	*json = doc;
	*json_len = o;
	doc = NULL;
	r = KB_OK;
out:
	kb_wipe(aes, sizeof(aes));
	if (der != NULL)
		OPENSSL_clear_free(der, (size_t)der_len);
	PKCS8_PRIV_KEY_INFO_free(p8); /* cleanses the key octets */
	free(rsa_ct);
	free(ct);
	free(b64);
	free(doc);
	return r;
}

enum kb_err
byok_wrap_fingerprint(EVP_PKEY *key, char out[65])
{
	unsigned char *der = NULL, md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;
	int len;
	enum kb_err r = KB_OK;

	out[0] = '\0';
	if ((len = i2d_PUBKEY(key, &der)) <= 0
	    || EVP_Digest(der, (size_t)len, md, &md_len, EVP_sha256(), NULL)
	        != 1
	    || md_len != 32) {
		r = kb_err_openssl(KB_ERR_CRYPTO, "fingerprint of the key");
		goto out;
	}
	kb_hex_encode(md, md_len, out);
out:
	OPENSSL_free(der);
	return r;
}
