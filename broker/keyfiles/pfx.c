/* SPDX-License-Identifier: Apache-2.0 */
/* pfx.c: parse and validate PKCS#12 tenant keys; write generated ones.
 *
 * Parsing runs in a library context of its own, with OpenSSL's "default"
 * and "legacy" providers (3DES and RC2-40 files from openssl -legacy, older
 * Java and Windows need the legacy one), so the rest of the process never
 * sees the legacy algorithms. PKCS#12's functions have no library-context
 * argument for reading, so pfx_parse makes that context the calling
 * thread's default (OSSL_LIB_CTX_set0_default is per thread) and puts the
 * previous one back before returning.
 *
 * We walk the safe bags ourselves instead of calling PKCS12_parse, which
 * keeps the first key and silently drops any other: a file with two keys
 * must be refused, not half-read. */
#include "pfx.h"

#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pkcs12.h>
#include <openssl/provider.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "kb_secmem.h"

#define NOT_PFX "the file is not a valid PKCS#12 (.pfx) file"
#define NEED_RSA "keybroker needs RSA-2048"
#define MAX_NESTING 4

/* ---- the library context ---- */

static pthread_once_t ctx_once = PTHREAD_ONCE_INIT;
static OSSL_LIB_CTX *pfx_ctx; /* lives as long as the process */
static int pfx_ctx_legacy; /* the legacy provider loaded */

static void
ctx_init(void)
{
	OSSL_LIB_CTX *ctx = OSSL_LIB_CTX_new();

	if (ctx == NULL)
		return;
	if (OSSL_PROVIDER_load(ctx, "default") == NULL) {
		OSSL_LIB_CTX_free(ctx);
		ERR_clear_error();
		return;
	}
	/* Without the legacy provider modern files still open; legacy ones
	 * then fail with a message naming it (see decrypt_failed). */
	pfx_ctx_legacy = OSSL_PROVIDER_load(ctx, "legacy") != NULL;
	ERR_clear_error();
	pfx_ctx = ctx;
}

/* ---- small helpers ---- */

/* What a refused key is, for "the key in the .pfx is EC (prime256v1)". */
static void
key_describe(EVP_PKEY *pkey, char *buf, size_t n)
{
	char group[64];
	size_t glen = 0;
	const char *type = EVP_PKEY_get0_type_name(pkey);

	if (EVP_PKEY_is_a(pkey, "EC")
	    && EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME,
	           group, sizeof(group), &glen)
	        == 1)
		snprintf(buf, n, "EC (%s)", group);
	else if (EVP_PKEY_is_a(pkey, "RSA"))
		snprintf(buf, n, "RSA-%d", EVP_PKEY_get_bits(pkey));
	else if (EVP_PKEY_is_a(pkey, "RSA-PSS"))
		snprintf(buf, n, "RSA-PSS-%d (restricted to PSS signatures)",
		    EVP_PKEY_get_bits(pkey));
	else
		snprintf(
		    buf, n, "%s", type != NULL ? type : "of an unknown type");
	ERR_clear_error();
}

/* The certificate's subject as "CN=...,O=..." (RFC 2253, non-ASCII escaped),
 * cut to fit `buf`. */
static void
cert_subject(X509 *x, char *buf, size_t n)
{
	BIO *b = BIO_new(BIO_s_mem());
	int len = 0;

	buf[0] = '\0';
	if (b != NULL
	    && X509_NAME_print_ex(
	           b, X509_get_subject_name(x), 0, XN_FLAG_RFC2253)
	        >= 0)
		len = BIO_read(b, buf, (int)n - 1);
	BIO_free(b);
	buf[len > 0 ? len : 0] = '\0';
	if (buf[0] == '\0')
		snprintf(buf, n, "with an empty subject");
	else if ((size_t)len == n - 1 && n > 4)
		memcpy(buf + n - 4, "...", 4);
	ERR_clear_error();
}

/* The iteration count of a password-based encryption algorithm (PKCS#12
 * PBE or PBES1: PBEPARAM; PBES2: PBKDF2 only). */
static enum kb_err
pbe_iterations(const X509_ALGOR *alg, long *iter)
{
	const ASN1_OBJECT *obj = NULL;
	const void *pval = NULL;
	const ASN1_STRING *seq;
	PBEPARAM *pbe = NULL;
	PBE2PARAM *pbe2 = NULL;
	PBKDF2PARAM *kdf = NULL;
	const ASN1_INTEGER *it = NULL;
	int ptype = V_ASN1_UNDEF;
	enum kb_err r = KB_ERR_INTERNAL;

	*iter = 0;
	if (alg == NULL)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    NOT_PFX ": an encryption algorithm is missing");
	X509_ALGOR_get0(&obj, &ptype, &pval, alg);
	if (ptype != V_ASN1_SEQUENCE || pval == NULL) {
		r = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    NOT_PFX ": an encryption algorithm has no parameters");
		goto out;
	}
	seq = pval;
	if (OBJ_obj2nid(obj) == NID_pbes2) {
		pbe2 = ASN1_item_unpack(seq, ASN1_ITEM_rptr(PBE2PARAM));
		if (pbe2 == NULL || pbe2->keyfunc == NULL) {
			r = kb_err_openssl(KB_ERR_INVALID_ARGUMENT,
			    NOT_PFX ": bad PBES2 parameters");
			goto out;
		}
		X509_ALGOR_get0(&obj, &ptype, &pval, pbe2->keyfunc);
		if (OBJ_obj2nid(obj) != NID_id_pbkdf2) {
			r = kb_errf(KB_ERR_INVALID_ARGUMENT,
			    "the .pfx derives its keys with %s; keybroker "
			    "accepts PBKDF2 (re-export it with AES and PBKDF2)",
			    OBJ_nid2sn(OBJ_obj2nid(obj)));
			goto out;
		}
		if (ptype != V_ASN1_SEQUENCE || pval == NULL
		    || (kdf = ASN1_item_unpack(
		            pval, ASN1_ITEM_rptr(PBKDF2PARAM)))
		        == NULL) {
			r = kb_err_openssl(KB_ERR_INVALID_ARGUMENT,
			    NOT_PFX ": bad PBKDF2 parameters");
			goto out;
		}
		it = kdf->iter;
	} else {
		if ((pbe = ASN1_item_unpack(seq, ASN1_ITEM_rptr(PBEPARAM)))
		    == NULL) {
			r = kb_err_openssl(KB_ERR_INVALID_ARGUMENT,
			    NOT_PFX
			    ": bad password-based encryption parameters");
			goto out;
		}
		it = pbe->iter;
	}
	/* ASN1_INTEGER_get gives -1 for values that do not fit a long. */
	*iter = it == NULL ? 1 : ASN1_INTEGER_get(it);
	if (*iter < 1 || *iter > PFX_MAX_ITER) {
		r = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .pfx asks for %s password-hashing iterations; "
		    "keybroker "
		    "accepts 1 to %ld",
		    *iter < 1 ? "an invalid number of" : "too many",
		    PFX_MAX_ITER);
		goto out;
	}
	r = KB_OK;
out:
	PBEPARAM_free(pbe);
	PBE2PARAM_free(pbe2);
	PBKDF2PARAM_free(kdf);
	ERR_clear_error();
	return r;
}

/* ---- walking the safe bags ---- */

struct pfx_walk {
	const char *pass; /* the password that opens the file */
	int passlen; /* as PKCS12_* want it: -1 = strlen(pass) */
	int mac_ok; /* the MAC verified, so the password is right */
	long budget; /* KDF iterations left for the contents */
	STACK_OF(PKCS12_SAFEBAG) * keys; /* key bags found (not owned) */
	STACK_OF(PKCS12_SAFEBAG)
	*certs; /* X.509 certificate bags (not owned) */
	int key_in_clear; /* a keyBag outside any encrypted safe */
	char *pass_alloc; /* secret: a re-encoded password, wiped at the end */
};

static enum kb_err
budget_take(struct pfx_walk *w, const X509_ALGOR *alg)
{
	long iter = 0;
	enum kb_err r;

	if ((r = pbe_iterations(alg, &iter)) != KB_OK)
		return r;
	if (iter > w->budget)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .pfx asks for more than %ld password-hashing "
		    "iterations in all; re-export it with fewer",
		    PFX_MAX_ITER_TOTAL);
	w->budget -= iter;
	return KB_OK;
}

/* A decryption failed: with a verified MAC the password is right, so the
 * file uses something we cannot decrypt or is broken; without a MAC we
 * cannot tell a wrong password from damage. */
static enum kb_err
decrypt_failed(const struct pfx_walk *w, const char *what)
{
	char msg[160];

	if (w->mac_ok) {
		snprintf(msg, sizeof(msg), NOT_PFX ": cannot decrypt %s%s",
		    what,
		    pfx_ctx_legacy
		        ? ""
		        : " (OpenSSL's legacy provider could not be loaded)");
		return kb_err_openssl(KB_ERR_INVALID_ARGUMENT, msg);
	}
	snprintf(msg, sizeof(msg),
	    "wrong password for the .pfx, or a damaged "
	    "file (it has no MAC to tell which): cannot decrypt %s",
	    what);
	return kb_err_openssl(KB_ERR_INVALID_ARGUMENT, msg);
}

static enum kb_err
walk_bags(struct pfx_walk *w, const STACK_OF(PKCS12_SAFEBAG) * bags,
    int encrypted, int depth)
{
	const PKCS12_SAFEBAG *bag;
	enum kb_err r;
	int i;

	if (depth > MAX_NESTING)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    NOT_PFX ": safe contents nested too deeply");
	for (i = 0; i < sk_PKCS12_SAFEBAG_num(bags); i++) {
		bag = sk_PKCS12_SAFEBAG_value(bags, i);
		switch (PKCS12_SAFEBAG_get_nid(bag)) {
		case NID_keyBag:
		case NID_pkcs8ShroudedKeyBag:
			/* A plain keyBag is only protected inside an
			 * encrypted safe. */
			if (PKCS12_SAFEBAG_get_nid(bag) == NID_keyBag
			    && !encrypted)
				w->key_in_clear = 1;
			if (!sk_PKCS12_SAFEBAG_push(
			        w->keys, (PKCS12_SAFEBAG *)bag))
				return kb_errf(KB_ERR_NOMEM, "out of memory");
			break;
		case NID_certBag:
			if (PKCS12_SAFEBAG_get_bag_nid(bag)
			        == NID_x509Certificate
			    && !sk_PKCS12_SAFEBAG_push(
			        w->certs, (PKCS12_SAFEBAG *)bag))
				return kb_errf(KB_ERR_NOMEM, "out of memory");
			break;
		case NID_safeContentsBag:
			r = walk_bags(w, PKCS12_SAFEBAG_get0_safes(bag),
			    encrypted, depth + 1);
			if (r != KB_OK)
				return r;
			break;
		default:
			/* CRLs, secrets, unknown bags: not ours to judge. */
			break;
		}
	}
	return KB_OK;
}

/* Unpack every authenticated safe into bags[i] (owned by the caller) and
 * collect key and certificate bags. */
static enum kb_err
walk_safes(struct pfx_walk *w, STACK_OF(PKCS7) * asafes,
    STACK_OF(PKCS12_SAFEBAG) * *bags)
{
	PKCS7 *p7;
	long iter, total = 0;
	enum kb_err r;
	int i, encrypted;

	/* Add up the encrypted safes' costs before decrypting any, so a file
	 * of many expensive safes is refused without spending the CPU. */
	for (i = 0; i < sk_PKCS7_num(asafes); i++) {
		p7 = sk_PKCS7_value(asafes, i);
		if (OBJ_obj2nid(p7->type) != NID_pkcs7_encrypted)
			continue;
		if (p7->d.encrypted == NULL
		    || p7->d.encrypted->enc_data == NULL)
			return kb_errf(KB_ERR_INVALID_ARGUMENT,
			    NOT_PFX ": an encrypted safe is empty");
		r = pbe_iterations(p7->d.encrypted->enc_data->algorithm, &iter);
		if (r != KB_OK)
			return r;
		if ((total += iter) > w->budget)
			return kb_errf(KB_ERR_INVALID_ARGUMENT,
			    "the .pfx asks for more than %ld password-hashing "
			    "iterations in all; re-export it with fewer",
			    PFX_MAX_ITER_TOTAL);
	}
	for (i = 0; i < sk_PKCS7_num(asafes); i++) {
		p7 = sk_PKCS7_value(asafes, i);
		switch (OBJ_obj2nid(p7->type)) {
		case NID_pkcs7_data:
			encrypted = 0;
			if ((bags[i] = PKCS12_unpack_p7data(p7)) == NULL)
				return kb_err_openssl(
				    KB_ERR_INVALID_ARGUMENT, NOT_PFX);
			break;
		case NID_pkcs7_encrypted:
			encrypted = 1;
			if (p7->d.encrypted == NULL
			    || p7->d.encrypted->enc_data == NULL)
				return kb_errf(KB_ERR_INVALID_ARGUMENT,
				    NOT_PFX ": an encrypted safe is empty");
			r = budget_take(
			    w, p7->d.encrypted->enc_data->algorithm);
			if (r != KB_OK)
				return r;
			bags[i] =
			    PKCS12_unpack_p7encdata(p7, w->pass, w->passlen);
			if (bags[i] == NULL)
				return decrypt_failed(w, "its certificates");
			break;
		case NID_pkcs7_enveloped:
			return kb_errf(KB_ERR_INVALID_ARGUMENT,
			    "the .pfx is protected with a public key "
			    "(enveloped data); keybroker accepts "
			    "password-protected files");
		default:
			return kb_errf(KB_ERR_INVALID_ARGUMENT,
			    NOT_PFX ": unexpected content type %s",
			    OBJ_nid2sn(OBJ_obj2nid(p7->type)));
		}
		if ((r = walk_bags(w, bags[i], encrypted, 0)) != KB_OK)
			return r;
	}
	return KB_OK;
}

/* ---- the password ---- */

/* Strict UTF-8 (no overlong forms, no surrogates, at most U+10FFFF):
 * PKCS#12 turns the password into UTF-16, which needs valid text. */
static int
utf8_valid(const unsigned char *s)
{
	unsigned c, n, i, cp;

	while ((c = *s++) != 0) {
		if (c < 0x80)
			continue;
		if (c >= 0xc2 && c <= 0xdf)
			n = 1, cp = c & 0x1f;
		else if (c >= 0xe0 && c <= 0xef)
			n = 2, cp = c & 0x0f;
		else if (c >= 0xf0 && c <= 0xf4)
			n = 3, cp = c & 0x07;
		else
			return 0;
		for (i = 0; i < n; i++, s++) {
			if ((*s & 0xc0) != 0x80)
				return 0;
			cp = (cp << 6) | (*s & 0x3fu);
		}
		if ((n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff)))
		    || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
			return 0;
	}
	return 1;
}

/* OpenSSL before 1.1.0 made each password byte one UTF-16 character
 * (Latin-1) instead of decoding UTF-8. Such a file opens with every byte
 * of the password re-encoded as a UTF-8 code point (what the openssl
 * pkcs12 command retries too). NULL if out of memory; free with
 * kb_freezero(p, strlen(p) + 1): it is as secret as the password. */
static char *
latin1_as_utf8(const char *pass)
{
	const unsigned char *s = (const unsigned char *)pass;
	size_t n = strlen(pass), o = 0, i;
	char *out = malloc(2 * n + 1);

	if (out == NULL)
		return NULL;
	for (i = 0; i < n; i++) {
		if (s[i] < 0x80) {
			out[o++] = (char)s[i];
		} else {
			out[o++] = (char)(0xc0 | (s[i] >> 6));
			out[o++] = (char)(0x80 | (s[i] & 0x3f));
		}
	}
	out[o] = '\0';
	return out;
}

static int
has_8bit(const char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s >= 0x80)
			return 1;
	return 0;
}

/* MAC check with (pass, passlen): 1 verified, 0 mismatch, -1 the MAC cannot
 * be computed (error queued). */
static int
mac_try(PKCS12 *p12, const char *pass, int passlen)
{
	ERR_clear_error();
	if (PKCS12_verify_mac(p12, pass, passlen) == 1)
		return 1;
	/* A plain mismatch queues no error; a MAC that cannot be computed
	 * (unknown digest, bad parameters) does. */
	return ERR_peek_error() == 0 ? 0 : -1;
}

/* Decide which password opens the file: the caller's, verified by the MAC.
 * An empty password (either PKCS#12 spelling: "" as two zero bytes, or no
 * bytes at all) is refused, as is a wrong one. */
static enum kb_err
password_check(PKCS12 *p12, const char *password, struct pfx_walk *w)
{
	const ASN1_INTEGER *iter_asn = NULL;
	long iter;
	int given = password != NULL && password[0] != '\0', v;

	if (given && !utf8_valid((const unsigned char *)password))
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .pfx password is not valid UTF-8 text");
	w->pass = given ? password : "";
	w->passlen = -1;
	if (!PKCS12_mac_present(p12)) {
		/* No MAC: decryption will tell; see decrypt_failed. */
		if (!given)
			return kb_errf(KB_ERR_INVALID_ARGUMENT,
			    "the .pfx has no password: tenant key files must "
			    "be password protected");
		return KB_OK;
	}
	PKCS12_get0_mac(NULL, NULL, NULL, &iter_asn, p12);
	iter = iter_asn == NULL ? 1 : ASN1_INTEGER_get(iter_asn);
	if (iter < 1 || iter > PFX_MAX_ITER)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .pfx's MAC asks for %s password-hashing iterations; "
		    "keybroker accepts 1 to %ld",
		    iter < 1 ? "an invalid number of" : "too many",
		    PFX_MAX_ITER);
	if (given) {
		if ((v = mac_try(p12, password, -1)) == 1) {
			w->mac_ok = 1;
			return KB_OK;
		}
		if (v < 0)
			return kb_err_openssl(KB_ERR_INVALID_ARGUMENT,
			    NOT_PFX ": its MAC cannot be computed");
		if (has_8bit(password)) {
			if ((w->pass_alloc = latin1_as_utf8(password)) == NULL)
				return kb_errf(KB_ERR_NOMEM, "out of memory");
			if (mac_try(p12, w->pass_alloc, -1) == 1) {
				w->pass = w->pass_alloc;
				w->mac_ok = 1;
				return KB_OK;
			}
		}
	}
	if ((v = mac_try(p12, "", 0)) == 1 || mac_try(p12, NULL, 0) == 1)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .pfx has no password: tenant key files must be "
		    "password protected");
	if (v < 0)
		return kb_err_openssl(KB_ERR_INVALID_ARGUMENT,
		    NOT_PFX ": its MAC cannot be computed");
	if (!given)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "no password was given for the .pfx: give the password it "
		    "was exported with");
	return kb_errf(KB_ERR_INVALID_ARGUMENT,
	    "wrong password for the .pfx (MAC verification failed)");
}

/* ---- the key ---- */

/* Decrypt (if shrouded) and decode the one key bag. */
static enum kb_err
key_extract(struct pfx_walk *w, const PKCS12_SAFEBAG *bag, EVP_PKEY **pkey)
{
	PKCS8_PRIV_KEY_INFO *p8 = NULL;
	const PKCS8_PRIV_KEY_INFO *p8c;
	const X509_ALGOR *alg = NULL;
	enum kb_err r = KB_ERR_INTERNAL;

	if (PKCS12_SAFEBAG_get_nid(bag) == NID_keyBag) {
		p8c = PKCS12_SAFEBAG_get0_p8inf(bag);
	} else {
		X509_SIG_get0(PKCS12_SAFEBAG_get0_pkcs8(bag), &alg, NULL);
		if ((r = budget_take(w, alg)) != KB_OK)
			goto out;
		/* OpenSSL wipes its decryption buffer (zbuf); p8 is wiped
		 * when freed (PKCS8_PRIV_KEY_INFO's free callback). */
		if ((p8 = PKCS12_decrypt_skey(bag, w->pass, w->passlen))
		    == NULL) {
			r = decrypt_failed(w, "its private key");
			goto out;
		}
		p8c = p8;
	}
	if (p8c == NULL || (*pkey = EVP_PKCS82PKEY(p8c)) == NULL) {
		r = kb_err_openssl(KB_ERR_INVALID_ARGUMENT,
		    "the private key in the .pfx cannot be read");
		goto out;
	}
	r = KB_OK;
out:
	PKCS8_PRIV_KEY_INFO_free(p8);
	return r;
}

/* RSA, 2048 bits, two primes with every CRT component (hsm_rsa_import
 * needs them), and consistent (OpenSSL's key check: primes, n = p*q, d). */
static enum kb_err
key_validate(EVP_PKEY *pkey)
{
	static const char *const crt[] = {OSSL_PKEY_PARAM_RSA_FACTOR1,
	    OSSL_PKEY_PARAM_RSA_FACTOR2, OSSL_PKEY_PARAM_RSA_EXPONENT1,
	    OSSL_PKEY_PARAM_RSA_EXPONENT2, OSSL_PKEY_PARAM_RSA_COEFFICIENT1};
	EVP_PKEY_CTX *c = NULL;
	BIGNUM *bn = NULL;
	char what[96];
	size_t i;
	enum kb_err r = KB_ERR_INTERNAL;

	if (!EVP_PKEY_is_a(pkey, "RSA")
	    || EVP_PKEY_get_bits(pkey) != PFX_RSA_BITS) {
		key_describe(pkey, what, sizeof(what));
		r = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the key in the .pfx is %s; " NEED_RSA, what);
		goto out;
	}
	if (EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_FACTOR3, &bn)
	    == 1) {
		r = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the key in the .pfx is a multi-prime RSA key; " NEED_RSA
		    " with two primes");
		goto out;
	}
	for (i = 0; i < sizeof(crt) / sizeof(crt[0]); i++) {
		if (EVP_PKEY_get_bn_param(pkey, crt[i], &bn) != 1) {
			r = kb_errf(KB_ERR_INVALID_ARGUMENT,
			    "the RSA key in the .pfx lacks its %s component",
			    crt[i]);
			goto out;
		}
		BN_clear_free(bn);
		bn = NULL;
	}
	if ((c = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL)) == NULL) {
		r = kb_err_openssl(KB_ERR_CRYPTO, "checking the .pfx key");
		goto out;
	}
	if (EVP_PKEY_check(c) != 1) {
		r = kb_err_openssl(KB_ERR_INVALID_ARGUMENT,
		    "the RSA key in the .pfx is inconsistent");
		goto out;
	}
	r = KB_OK;
out:
	BN_clear_free(bn);
	EVP_PKEY_CTX_free(c);
	ERR_clear_error();
	return r;
}

static int
same_key_id(const ASN1_TYPE *a, const ASN1_TYPE *b)
{
	return a != NULL && b != NULL && ASN1_TYPE_get(a) == V_ASN1_OCTET_STRING
	    && ASN1_TYPE_get(b) == V_ASN1_OCTET_STRING
	    && ASN1_STRING_cmp(a->value.octet_string, b->value.octet_string)
	    == 0;
}

/* The certificate tied to the key (same localKeyID) must hold its public
 * key; without such a tie, at least one certificate must (the others are
 * the chain). A file without certificates is fine: the key is what counts. */
static enum kb_err
certs_check(
    const struct pfx_walk *w, const PKCS12_SAFEBAG *keybag, EVP_PKEY *pkey)
{
	const ASN1_TYPE *kid = PKCS12_SAFEBAG_get0_attr(keybag, NID_localKeyID);
	const PKCS12_SAFEBAG *bag;
	X509 *x = NULL;
	char subject[160];
	int i, n = sk_PKCS12_SAFEBAG_num(w->certs), any = 0, match, tied;
	enum kb_err r = KB_ERR_INTERNAL;

	for (i = 0; i < n; i++) {
		bag = sk_PKCS12_SAFEBAG_value(w->certs, i);
		if ((x = PKCS12_SAFEBAG_get1_cert(bag)) == NULL) {
			r = kb_err_openssl(KB_ERR_INVALID_ARGUMENT,
			    NOT_PFX ": a certificate in it cannot be read");
			goto out;
		}
		match = X509_check_private_key(x, pkey) == 1;
		ERR_clear_error();
		tied = same_key_id(
		    kid, PKCS12_SAFEBAG_get0_attr(bag, NID_localKeyID));
		if (tied && !match)
			goto mismatch;
		any |= match;
		X509_free(x);
		x = NULL;
	}
	if (n > 0 && !any) {
		/* Name the first certificate: tools put the key's own first. */
		bag = sk_PKCS12_SAFEBAG_value(w->certs, 0);
		if ((x = PKCS12_SAFEBAG_get1_cert(bag)) == NULL) {
			r = kb_err_openssl(KB_ERR_INVALID_ARGUMENT, NOT_PFX);
			goto out;
		}
		goto mismatch;
	}
	r = KB_OK;
	goto out;
mismatch:
	cert_subject(x, subject, sizeof(subject));
	r = kb_errf(KB_ERR_INVALID_ARGUMENT,
	    "the certificate in the .pfx (%s) does not belong to its private "
	    "key",
	    subject);
out:
	X509_free(x);
	return r;
}

static enum kb_err
parse_in_ctx(
    const uint8_t *der, size_t len, const char *password, EVP_PKEY **key)
{
	struct pfx_walk w = {
	    NULL, -1, 0, PFX_MAX_ITER_TOTAL, NULL, NULL, 0, NULL};
	const unsigned char *p = der;
	STACK_OF(PKCS7) *asafes = NULL;
	STACK_OF(PKCS12_SAFEBAG) **bags = NULL;
	PKCS12 *p12 = NULL;
	EVP_PKEY *pkey = NULL;
	int i, nsafes = 0, nkeys;
	enum kb_err r = KB_ERR_INTERNAL;

	if ((p12 = d2i_PKCS12(NULL, &p, (long)len)) == NULL) {
		r = kb_err_openssl(KB_ERR_INVALID_ARGUMENT, NOT_PFX);
		goto out;
	}
	if (p != der + len) {
		r = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    NOT_PFX ": %zu bytes follow its end",
		    (size_t)(der + len - p));
		goto out;
	}
	if ((r = password_check(p12, password, &w)) != KB_OK)
		goto out;
	if ((asafes = PKCS12_unpack_authsafes(p12)) == NULL) {
		r = kb_err_openssl(KB_ERR_INVALID_ARGUMENT, NOT_PFX);
		goto out;
	}
	nsafes = sk_PKCS7_num(asafes);
	if (nsafes <= 0) {
		r = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .pfx holds no private key (it is empty)");
		goto out;
	}
	w.keys = sk_PKCS12_SAFEBAG_new_null();
	w.certs = sk_PKCS12_SAFEBAG_new_null();
	bags = calloc((size_t)nsafes, sizeof(*bags));
	if (w.keys == NULL || w.certs == NULL || bags == NULL) {
		r = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((r = walk_safes(&w, asafes, bags)) != KB_OK)
		goto out;

	nkeys = sk_PKCS12_SAFEBAG_num(w.keys);
	if (nkeys == 0) {
		r = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .pfx holds no private key (%d certificate%s only): "
		    "export the key with its certificate",
		    sk_PKCS12_SAFEBAG_num(w.certs),
		    sk_PKCS12_SAFEBAG_num(w.certs) == 1 ? "" : "s");
		goto out;
	}
	if (nkeys > 1) {
		r = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .pfx holds %d private keys; upload one key per file",
		    nkeys);
		goto out;
	}
	if (w.key_in_clear) {
		r = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the private key in the .pfx is not encrypted: tenant key "
		    "files must be password protected");
		goto out;
	}
	if ((r = key_extract(&w, sk_PKCS12_SAFEBAG_value(w.keys, 0), &pkey))
	        != KB_OK
	    || (r = key_validate(pkey)) != KB_OK
	    || (r = certs_check(&w, sk_PKCS12_SAFEBAG_value(w.keys, 0), pkey))
	        != KB_OK)
		goto out;
	*key = pkey;
	pkey = NULL;
	r = KB_OK;
out:
	EVP_PKEY_free(pkey);
	sk_PKCS12_SAFEBAG_free(w.keys);
	sk_PKCS12_SAFEBAG_free(w.certs);
	/* Freeing bags wipes decrypted keys (PKCS8_PRIV_KEY_INFO's free
	 * callback cleanses the key octets). */
	for (i = 0; bags != NULL && i < nsafes; i++)
		sk_PKCS12_SAFEBAG_pop_free(bags[i], PKCS12_SAFEBAG_free);
	free(bags);
	sk_PKCS7_pop_free(asafes, PKCS7_free);
	PKCS12_free(p12);
	if (w.pass_alloc != NULL)
		kb_freezero(w.pass_alloc, strlen(w.pass_alloc) + 1);
	return r;
}

enum kb_err
pfx_parse(const uint8_t *der, size_t len, const char *password, EVP_PKEY **key)
{
	OSSL_LIB_CTX *prev;
	enum kb_err r;

	if (key == NULL)
		return kb_errf(KB_ERR_INTERNAL, "pfx_parse: no output");
	*key = NULL;
	if (der == NULL || len == 0)
		return kb_errf(
		    KB_ERR_INVALID_ARGUMENT, "the .pfx file is empty");
	if (len > PFX_MAX_BYTES)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .pfx file is %zu bytes; keybroker accepts at most %d "
		    "(a .pfx with one key is usually under 5,000)",
		    len, PFX_MAX_BYTES);
	pthread_once(&ctx_once, ctx_init);
	if (pfx_ctx == NULL)
		return kb_errf(KB_ERR_CRYPTO,
		    "cannot load OpenSSL's default provider to read .pfx "
		    "files");
	ERR_clear_error();
	/* Per-thread: other threads keep their default context. */
	prev = OSSL_LIB_CTX_set0_default(pfx_ctx);
	r = parse_in_ctx(der, len, password, key);
	OSSL_LIB_CTX_set0_default(prev);
	ERR_clear_error();
	return r;
}

/* ---- writing ---- */

static int
add_ext(X509 *x, int nid, const char *value)
{
	X509V3_CTX v3;
	X509_EXTENSION *ext;
	int ok;

	X509V3_set_ctx_nodb(&v3);
	X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
	if ((ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value)) == NULL)
		return 0;
	ok = X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	return ok;
}

/* A self-signed certificate for `key`, CN = name, 10 years, SHA-256. */
static enum kb_err
cert_self_signed(EVP_PKEY *key, const char *name, X509 **out)
{
	X509 *x = X509_new();
	X509_NAME *dn = NULL;
	BIGNUM *serial = NULL;
	enum kb_err r = KB_ERR_INTERNAL;

	if (x == NULL || (dn = X509_NAME_new()) == NULL
	    || (serial = BN_new()) == NULL) {
		r = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	/* A random positive 127-bit serial (RFC 5280: unique, <= 20 bytes). */
	if (X509_set_version(x, X509_VERSION_3) != 1
	    || BN_rand(serial, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1
	    || BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(x)) == NULL
	    || X509_NAME_add_entry_by_txt(dn, "CN", MBSTRING_UTF8,
	           (const unsigned char *)name, -1, -1, 0)
	        != 1
	    || X509_set_subject_name(x, dn) != 1
	    || X509_set_issuer_name(x, dn) != 1
	    || X509_gmtime_adj(X509_getm_notBefore(x), 0) == NULL
	    || X509_time_adj_ex(X509_getm_notAfter(x), 3650, 0, NULL) == NULL
	    || X509_set_pubkey(x, key) != 1
	    || !add_ext(x, NID_basic_constraints, "critical,CA:FALSE")
	    || !add_ext(
	        x, NID_key_usage, "critical,digitalSignature,keyEncipherment")
	    || !add_ext(x, NID_subject_key_identifier, "hash")
	    || X509_sign(x, key, EVP_sha256()) <= 0) {
		r = kb_err_openssl(
		    KB_ERR_CRYPTO, "making the .pfx's certificate");
		goto out;
	}
	*out = x;
	x = NULL;
	r = KB_OK;
out:
	X509_free(x);
	X509_NAME_free(dn);
	BN_free(serial);
	return r;
}

enum kb_err
pfx_create(EVP_PKEY *key, const char *password, const char *name, uint8_t **der,
    size_t *len)
{
	X509 *cert = NULL;
	PKCS12 *p12 = NULL;
	uint8_t *buf = NULL, *p;
	int n = 0;
	enum kb_err r = KB_ERR_INTERNAL;

	if (der == NULL || len == NULL)
		return kb_errf(KB_ERR_INTERNAL, "pfx_create: no output");
	*der = NULL;
	*len = 0;
	if (key == NULL || !EVP_PKEY_is_a(key, "RSA"))
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "only RSA keys can be written to a .pfx");
	if (password == NULL || password[0] == '\0')
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "a password is needed to protect the .pfx");
	if (name == NULL || name[0] == '\0' || strlen(name) > 64)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .pfx's certificate name must be 1 to 64 bytes");
	ERR_clear_error();
	if ((r = cert_self_signed(key, name, &cert)) != KB_OK)
		goto out;
	/* Key and certificates: AES-256-CBC under PBES2 with
	 * PBKDF2-HMAC-SHA256 (OpenSSL 3's PRF default); mac_iter -1: no MAC
	 * yet, PKCS12_create's would be SHA-1. */
	p12 = PKCS12_create_ex(password, name, key, cert, NULL, NID_aes_256_cbc,
	    NID_aes_256_cbc, PFX_CREATE_ITER, -1, 0, NULL, NULL);
	if (p12 == NULL
	    || PKCS12_set_mac(
	           p12, password, -1, NULL, 0, PFX_CREATE_ITER, EVP_sha256())
	        != 1) {
		r = kb_err_openssl(KB_ERR_CRYPTO, "writing the .pfx");
		goto out;
	}
	if ((n = i2d_PKCS12(p12, NULL)) <= 0) {
		r = kb_err_openssl(KB_ERR_CRYPTO, "encoding the .pfx");
		goto out;
	}
	if ((buf = malloc((size_t)n)) == NULL) {
		r = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	p = buf;
	if (i2d_PKCS12(p12, &p) != n) {
		r = kb_err_openssl(KB_ERR_CRYPTO, "encoding the .pfx");
		goto out;
	}
	*der = buf;
	*len = (size_t)n;
	buf = NULL;
	r = KB_OK;
out:
	kb_freezero(buf, (size_t)(n > 0 ? n : 0));
	PKCS12_free(p12);
	X509_free(cert);
	ERR_clear_error();
	return r;
}
