/* SPDX-License-Identifier: Apache-2.0 */
/* hsm_key.c: RSA key pairs in the token: generate, import, BYOK unwrap,
 * destroy, and the OAEP, signing and public-key operations on them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/param_build.h>
#include <openssl/x509.h>

#include "hsm_int.h"
#include "kb_secmem.h"

#ifndef CKM_AES_KEY_WRAP_PAD
#define CKM_AES_KEY_WRAP_PAD 0x210AUL
#endif

#define HSM_BYOK_AES_LEN 32
#define HSM_USE_ALL                                                            \
	(HSM_USE_ENCRYPT | HSM_USE_UNWRAP | HSM_USE_SIGN | HSM_USE_KEYWRAP)

/* The module only reads templates; these are never written. */
static CK_BBOOL p11_true = CK_TRUE;
static CK_BBOOL p11_false = CK_FALSE;
static CK_BYTE rsa_f4[] = {0x01, 0x00, 0x01};

enum kb_err
hsm_id_check(const char *id)
{
	size_t i, n;

	if (id == NULL || (n = strlen(id)) == 0)
		return kb_errf(KB_ERR_INVALID_ARGUMENT, "empty key id");
	if (n > HSM_ID_MAX)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "key id is %zu bytes long, at most %d allowed", n,
		    HSM_ID_MAX);
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)id[i];

		if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
		    || (c >= '0' && c <= '9') || c == '.' || c == '_'
		    || c == '-')
			continue;
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "key id has a character outside [A-Za-z0-9._-] (at %zu)",
		    i);
	}
	return KB_OK;
}

static enum kb_err
use_check(unsigned use)
{
	if (use == 0 || (use & ~(unsigned)HSM_USE_ALL) != 0)
		return kb_errf(
		    KB_ERR_INVALID_ARGUMENT, "invalid key use 0x%x", use);
	return KB_OK;
}

/* Fill an OAEP mechanism for `alg`; `p` must outlive `mech`. */
enum kb_err
hsm_oaep_mech(const char *alg, CK_RSA_PKCS_OAEP_PARAMS *p, CK_MECHANISM *mech)
{
	memset(p, 0, sizeof(*p));
	if (alg != NULL && strcmp(alg, HSM_ALG_OAEP_SHA1) == 0) {
		p->hashAlg = CKM_SHA_1;
		p->mgf = CKG_MGF1_SHA1;
	} else if (alg != NULL && strcmp(alg, HSM_ALG_OAEP_SHA256) == 0) {
		p->hashAlg = CKM_SHA256;
		p->mgf = CKG_MGF1_SHA256;
	} else {
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "unknown key wrapping algorithm \"%s\"",
		    alg != NULL ? alg : "(null)");
	}
	p->source = CKZ_DATA_SPECIFIED;
	p->pSourceData = NULL;
	p->ulSourceDataLen = 0;
	mech->mechanism = CKM_RSA_PKCS_OAEP;
	mech->pParameter = p;
	mech->ulParameterLen = sizeof(*p);
	return KB_OK;
}

/* ---- attribute templates ---- */

enum kb_err
hsm_tmpl_check(const struct tmpl *a, const struct tmpl *b)
{
	if (a->overflow || (b != NULL && b->overflow))
		return kb_errf(
		    KB_ERR_INTERNAL, "hsm: attribute template too small");
	return KB_OK;
}

void
hsm_tmpl_add(struct tmpl *t, CK_ATTRIBUTE_TYPE type, void *p, CK_ULONG len)
{
	if (t->n >= HSM_TMPL_MAX) {
		t->overflow = 1;
		return;
	}
	t->a[t->n].type = type;
	t->a[t->n].pValue = p;
	t->a[t->n].ulValueLen = len;
	t->n++;
}

void
hsm_tmpl_bool(struct tmpl *t, CK_ATTRIBUTE_TYPE type, int v)
{
	hsm_tmpl_add(t, type, v ? &p11_true : &p11_false, sizeof(CK_BBOOL));
}

void
hsm_tmpl_session_aes(struct tmpl *t, int extractable, int unwrap)
{
	hsm_tmpl_ulong(t, CKA_CLASS, CKO_SECRET_KEY);
	hsm_tmpl_ulong(t, CKA_KEY_TYPE, CKK_AES);
	hsm_tmpl_bool(t, CKA_TOKEN, 0);
	hsm_tmpl_bool(t, CKA_PRIVATE, 1);
	hsm_tmpl_bool(t, CKA_SENSITIVE, 1);
	hsm_tmpl_bool(t, CKA_EXTRACTABLE, extractable);
	hsm_tmpl_bool(t, CKA_UNWRAP, unwrap);
	hsm_tmpl_bool(t, CKA_WRAP, 0);
	hsm_tmpl_bool(t, CKA_ENCRYPT, 0);
	hsm_tmpl_bool(t, CKA_DECRYPT, 0);
	hsm_tmpl_bool(t, CKA_SIGN, 0);
	hsm_tmpl_bool(t, CKA_VERIFY, 0);
}

void
hsm_tmpl_ulong(struct tmpl *t, CK_ATTRIBUTE_TYPE type, CK_ULONG v)
{
	if (t->nul >= sizeof(t->ul) / sizeof(t->ul[0])) {
		t->overflow = 1;
		return;
	}
	t->ul[t->nul] = v;
	hsm_tmpl_add(t, type, &t->ul[t->nul], sizeof(CK_ULONG));
	t->nul++;
}

/* The attributes every key object of ours carries: token object, id and
 * label, and exactly the uses asked for (every other use set to false,
 * since a module's defaults may allow them). */
/* Both halves are CKA_PRIVATE: only a logged-in session can make or
 * see them, so an object planted without the PIN is never ours. Unwrap
 * (BYOK imports) and key wrap (KEKs) both need CKA_UNWRAP on the private
 * half; only key wrap gives the public half CKA_WRAP. */
static void
tmpl_key(struct tmpl *t, const char *id, int priv, unsigned use)
{
	hsm_tmpl_bool(t, CKA_TOKEN, 1);
	hsm_tmpl_bool(t, CKA_PRIVATE, 1);
	hsm_tmpl_add(t, CKA_ID, (void *)id, strlen(id));
	hsm_tmpl_add(t, CKA_LABEL, (void *)id, strlen(id));
	hsm_tmpl_bool(t, CKA_DERIVE, 0);
	if (priv) {
		hsm_tmpl_bool(t, CKA_SENSITIVE, 1);
		hsm_tmpl_bool(t, CKA_EXTRACTABLE, 0);
		hsm_tmpl_bool(t, CKA_DECRYPT, (use & HSM_USE_ENCRYPT) != 0);
		hsm_tmpl_bool(t, CKA_UNWRAP,
		    (use & (HSM_USE_UNWRAP | HSM_USE_KEYWRAP)) != 0);
		hsm_tmpl_bool(t, CKA_SIGN, (use & HSM_USE_SIGN) != 0);
		hsm_tmpl_bool(t, CKA_SIGN_RECOVER, 0);
	} else {
		hsm_tmpl_bool(t, CKA_ENCRYPT, (use & HSM_USE_ENCRYPT) != 0);
		hsm_tmpl_bool(t, CKA_WRAP, (use & HSM_USE_KEYWRAP) != 0);
		hsm_tmpl_bool(t, CKA_VERIFY, (use & HSM_USE_SIGN) != 0);
		hsm_tmpl_bool(t, CKA_VERIFY_RECOVER, 0);
	}
}

CK_RV
hsm_op_crypt(struct hsm *h, CK_SESSION_HANDLE sh, CK_OBJECT_HANDLE key,
    void *argp, const char **fn)
{
	struct crypt_arg *a = argp;
	uint8_t *buf = NULL;
	CK_ULONG n = 0, cap = 0;
	CK_RV rv;

	(void)h;
	a->data_rv = CKR_OK;
	*fn = a->init_name;
	if ((rv = a->init(sh, a->mech, key)) != CKR_OK)
		goto out;
	*fn = a->run_name;
	rv = a->run(sh, (CK_BYTE_PTR)a->in, (CK_ULONG)a->in_len, NULL, &n);
	if (rv != CKR_OK)
		goto out;
	/* On failure the operation stays active: CKR_HOST_MEMORY makes
	 * hsm_pool_put close the session rather than pool it. */
	cap = n;
	if ((buf = malloc(cap > 0 ? cap : 1)) == NULL) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	rv = a->run(sh, (CK_BYTE_PTR)a->in, (CK_ULONG)a->in_len, buf, &n);
	if (rv != CKR_OK) {
		a->data_rv = rv;
		goto out;
	}
	if ((a->out = malloc(n > 0 ? n : 1)) == NULL) {
		rv = CKR_HOST_MEMORY;
		goto out;
	}
	memcpy(a->out, buf, n);
	a->out_len = n;
out:
	kb_freezero(buf, cap);
	return rv;
}

/* Modulus and public exponent of an RSA key object. */
struct pub_arg {
	uint8_t *n, *e;
	size_t n_len, e_len;
};

static void
pub_arg_clear(struct pub_arg *pa)
{
	free(pa->n);
	free(pa->e);
	memset(pa, 0, sizeof(*pa));
}

static CK_RV
op_pub(struct hsm *h, CK_SESSION_HANDLE sh, CK_OBJECT_HANDLE key, void *argp,
    const char **fn)
{
	struct pub_arg *pa = argp;
	CK_RV rv;

	pub_arg_clear(pa);
	*fn = "C_GetAttributeValue";
	if ((rv = hsm_attr_get(h, sh, key, CKA_MODULUS, &pa->n, &pa->n_len))
	        != CKR_OK
	    || (rv = hsm_attr_get(
	            h, sh, key, CKA_PUBLIC_EXPONENT, &pa->e, &pa->e_len))
	        != CKR_OK)
		pub_arg_clear(pa);
	return rv;
}

static enum kb_err
rsa_pub_build(const struct pub_arg *pa, EVP_PKEY **out)
{
	BIGNUM *n = NULL, *e = NULL;
	OSSL_PARAM_BLD *bld = NULL;
	OSSL_PARAM *params = NULL;
	EVP_PKEY_CTX *ctx = NULL;
	enum kb_err r = KB_ERR_INTERNAL;

	*out = NULL;
	if ((n = BN_bin2bn(pa->n, (int)pa->n_len, NULL)) == NULL
	    || (e = BN_bin2bn(pa->e, (int)pa->e_len, NULL)) == NULL
	    || (bld = OSSL_PARAM_BLD_new()) == NULL
	    || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n)
	    || !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e)
	    || (params = OSSL_PARAM_BLD_to_param(bld)) == NULL
	    || (ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL)) == NULL
	    || EVP_PKEY_fromdata_init(ctx) <= 0
	    || EVP_PKEY_fromdata(ctx, out, EVP_PKEY_PUBLIC_KEY, params) <= 0) {
		r = kb_err_openssl(KB_ERR_CRYPTO,
		    "building an RSA public key from the token's modulus");
		goto out;
	}
	r = KB_OK;
out:
	EVP_PKEY_CTX_free(ctx);
	OSSL_PARAM_free(params);
	OSSL_PARAM_BLD_free(bld);
	BN_free(n);
	BN_free(e);
	return r;
}

/* Bits of a big-endian modulus. */
static unsigned
modulus_bits(const uint8_t *n, size_t len)
{
	unsigned bits;
	uint8_t top;

	while (len > 0 && *n == 0) {
		n++;
		len--;
	}
	if (len == 0)
		return 0;
	bits = (unsigned)(len - 1) * 8;
	for (top = n[0]; top != 0; top >>= 1)
		bits++;
	return bits;
}

/* ---- public functions: key operations ---- */

enum kb_err
hsm_encrypt(struct hsm *h, const char *id, const char *alg, const uint8_t *in,
    size_t in_len, uint8_t **out, size_t *out_len)
{
	CK_RSA_PKCS_OAEP_PARAMS op;
	CK_MECHANISM mech;
	struct crypt_arg a = {h->m->C_EncryptInit, h->m->C_Encrypt,
	    "C_EncryptInit", "C_Encrypt", &mech, in, in_len, NULL, 0};
	enum kb_err r;

	*out = NULL;
	*out_len = 0;
	if ((r = hsm_id_check(id)) != KB_OK
	    || (r = hsm_oaep_mech(alg, &op, &mech)) != KB_OK)
		return r;
	if ((r = hsm_op_run(h, id, NULL, CKO_PUBLIC_KEY, hsm_op_crypt, &a))
	    == KB_OK) {
		*out = a.out;
		*out_len = a.out_len;
	}
	return r;
}

enum kb_err
hsm_decrypt(struct hsm *h, const char *id, const char *alg, const uint8_t *in,
    size_t in_len, uint8_t **out, size_t *out_len)
{
	CK_RSA_PKCS_OAEP_PARAMS op;
	CK_MECHANISM mech;
	struct crypt_arg a = {h->m->C_DecryptInit, h->m->C_Decrypt,
	    "C_DecryptInit", "C_Decrypt", &mech, in, in_len, NULL, 0};
	enum kb_err r;

	*out = NULL;
	*out_len = 0;
	if ((r = hsm_id_check(id)) != KB_OK
	    || (r = hsm_oaep_mech(alg, &op, &mech)) != KB_OK)
		return r;
	r = hsm_op_run(h, id, NULL, CKO_PRIVATE_KEY, hsm_op_crypt, &a);
	/* SoftHSMv2 answers bad OAEP padding with CKR_GENERAL_ERROR (where
	 * the standard says CKR_ENCRYPTED_DATA_INVALID): the key was usable,
	 * so that failure is about the blob. */
	if (r == KB_ERR_HSM && a.data_rv == CKR_GENERAL_ERROR)
		r = kb_errf(KB_ERR_CORRUPT,
		    "C_Decrypt: %s (key %s): the blob does not decrypt with "
		    "this key and %s (damaged, or wrapped by another key)",
		    hsm_rv_name(a.data_rv), id, alg);
	if (r == KB_OK) {
		*out = a.out;
		*out_len = a.out_len;
	}
	return r;
}

enum kb_err
hsm_sign(struct hsm *h, const char *id, const uint8_t *data, size_t len,
    uint8_t **sig, size_t *sig_len)
{
	CK_MECHANISM mech = {CKM_SHA256_RSA_PKCS, NULL, 0};
	struct crypt_arg a = {h->m->C_SignInit, h->m->C_Sign, "C_SignInit",
	    "C_Sign", &mech, data, len, NULL, 0};
	enum kb_err r;

	*sig = NULL;
	*sig_len = 0;
	if ((r = hsm_id_check(id)) != KB_OK)
		return r;
	if ((r = hsm_op_run(h, id, NULL, CKO_PRIVATE_KEY, hsm_op_crypt, &a))
	    == KB_OK) {
		*sig = a.out;
		*sig_len = a.out_len;
	}
	return r;
}

/* One round trip through the token with `alg`: KB_OK if the decrypted
 * value is the one encrypted. */
static enum kb_err
oaep_try(struct hsm *h, const char *id, const char *alg)
{
	uint8_t val[32], *ct = NULL, *pt = NULL;
	size_t ct_len = 0, pt_len = 0;
	enum kb_err r = KB_ERR_INTERNAL;

	if ((r = hsm_random(h, val, sizeof(val))) != KB_OK
	    || (r = hsm_encrypt(h, id, alg, val, sizeof(val), &ct, &ct_len))
	        != KB_OK
	    || (r = hsm_decrypt(h, id, alg, ct, ct_len, &pt, &pt_len)) != KB_OK)
		goto out;
	if (pt_len != sizeof(val) || CRYPTO_memcmp(pt, val, pt_len) != 0) {
		r = kb_errf(KB_ERR_HSM,
		    "%s round trip with key %s returned other data", alg, id);
		goto out;
	}
	r = KB_OK;
out:
	kb_wipe(val, sizeof(val));
	kb_freezero(pt, pt_len);
	free(ct);
	return r;
}

enum kb_err
hsm_oaep_probe(struct hsm *h, const char *id, const char **alg)
{
	char first[256];
	enum kb_err r;

	*alg = NULL;
	if ((r = oaep_try(h, id, HSM_ALG_OAEP_SHA256)) == KB_OK) {
		*alg = HSM_ALG_OAEP_SHA256;
		return KB_OK;
	}
	/* A missing key or token is not an answer about SHA-256. */
	if (r == KB_ERR_NOT_FOUND || r == KB_ERR_UNAVAILABLE
	    || r == KB_ERR_INVALID_ARGUMENT)
		return r;
	snprintf(first, sizeof(first), "%s", kb_err_msg(r));
	if ((r = oaep_try(h, id, HSM_ALG_OAEP_SHA1)) != KB_OK)
		return kb_err_wrap(r, "token accepts neither %s (%s) nor %s",
		    HSM_ALG_OAEP_SHA256, first, HSM_ALG_OAEP_SHA1);
	*alg = HSM_ALG_OAEP_SHA1;
	return KB_OK;
}

enum kb_err
hsm_public_key_der(
    struct hsm *h, const char *id, uint8_t **der, size_t *der_len)
{
	struct pub_arg pa = {NULL, NULL, 0, 0};
	EVP_PKEY *pkey = NULL;
	uint8_t *buf = NULL, *p;
	int len;
	enum kb_err r = KB_ERR_INTERNAL;

	*der = NULL;
	*der_len = 0;
	if ((r = hsm_id_check(id)) != KB_OK)
		goto out;
	/* From the private key's own modulus: the public object of a pair
	 * could only disagree with it if someone replaced it. */
	r = hsm_op_run(h, id, NULL, CKO_PRIVATE_KEY, op_pub, &pa);
	if (r == KB_ERR_NOT_FOUND)
		r = hsm_op_run(h, id, NULL, CKO_PUBLIC_KEY, op_pub, &pa);
	if (r == KB_ERR_NOT_FOUND)
		r = kb_errf(r, "no key with id %s in the token", id);
	if (r != KB_OK || (r = rsa_pub_build(&pa, &pkey)) != KB_OK)
		goto out;
	if ((len = i2d_PUBKEY(pkey, NULL)) <= 0) {
		r = kb_err_openssl(KB_ERR_CRYPTO, "encoding the public key");
		goto out;
	}
	if ((buf = malloc((size_t)len)) == NULL) {
		r = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	p = buf;
	if (i2d_PUBKEY(pkey, &p) != len) {
		r = kb_err_openssl(KB_ERR_CRYPTO, "encoding the public key");
		goto out;
	}
	*der = buf;
	*der_len = (size_t)len;
	buf = NULL;
	r = KB_OK;
out:
	free(buf);
	EVP_PKEY_free(pkey);
	pub_arg_clear(&pa);
	return r;
}

enum kb_err
hsm_key_exists(struct hsm *h, const char *id)
{
	struct pooled p;
	CK_OBJECT_HANDLE obj;
	CK_ULONG n = 0;
	const char *fn = "";
	CK_RV rv = CKR_OK;
	enum kb_err r;
	int attempt;

	if ((r = hsm_id_check(id)) != KB_OK)
		return r;
	/* Ask the token, not the cache: another process may share it. */
	for (attempt = 0; attempt < 2; attempt++) {
		if ((r = hsm_pool_get(h, &p)) != KB_OK)
			return r;
		pthread_rwlock_rdlock(&h->objects_rw);
		rv = hsm_obj_find(
		    h, p.sh, id, NULL, CKO_PRIVATE_KEY, &obj, 1, &n, &fn);
		pthread_rwlock_unlock(&h->objects_rw);
		hsm_pool_put(h, &p, rv);
		if (!hsm_rv_session_lost(rv))
			break;
	}
	if (rv != CKR_OK)
		return hsm_p11_err(fn, rv, id);
	if (n == 0) {
		hsm_cache_drop(h, id, CKO_PRIVATE_KEY);
		return kb_errf(
		    KB_ERR_NOT_FOUND, "no key with id %s in the token", id);
	}
	return KB_OK;
}

/* Every object of class `cls` with CKA_ID `id`, whatever its other
 * attributes: destroying goes wider than finding, so a planted object with
 * our id goes too. */
static CK_RV
obj_find_any(struct hsm *h, CK_SESSION_HANDLE sh, const char *id,
    CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *objs, CK_ULONG max, CK_ULONG *n,
    const char **fn)
{
	CK_ATTRIBUTE t[2] = {
	    {CKA_CLASS, &cls, sizeof(cls)},
	    {CKA_ID, (void *)id, strlen(id)},
	};
	CK_RV rv, rv2;

	*n = 0;
	*fn = "C_FindObjectsInit";
	if ((rv = h->m->C_FindObjectsInit(sh, t, 2)) != CKR_OK)
		return rv;
	*fn = "C_FindObjects";
	rv = h->m->C_FindObjects(sh, objs, max, n);
	rv2 = h->m->C_FindObjectsFinal(sh);
	if (rv == CKR_OK && rv2 != CKR_OK) {
		*fn = "C_FindObjectsFinal";
		rv = rv2;
	}
	return rv;
}

/* Destroy every object of ours with CKA_ID `id` among `classes`. */
static enum kb_err
key_destroy_classes(struct hsm *h, const char *id,
    const CK_OBJECT_CLASS *classes, size_t nclasses)
{
	struct pooled p;
	CK_OBJECT_HANDLE objs[HSM_FIND_MAX];
	CK_ULONG n, i, total = 0;
	const char *fn = "";
	CK_RV rv = CKR_OK;
	size_t c;
	int have_session = 0;
	enum kb_err r = KB_ERR_INTERNAL;

	if ((r = hsm_id_check(id)) != KB_OK)
		return r;
	pthread_mutex_lock(&h->create_mu);
	if ((r = hsm_pool_get(h, &p)) != KB_OK)
		goto out;
	have_session = 1;
	/* Alone: no operation may be using the key as it goes. */
	pthread_rwlock_wrlock(&h->objects_rw);
	for (c = 0; c < nclasses; c++) {
		/* Forget the handle first: a decrypt racing with us then
		 * finds nothing instead of a dead handle. */
		hsm_cache_drop(h, id, classes[c]);
		rv = obj_find_any(
		    h, p.sh, id, classes[c], objs, HSM_FIND_MAX, &n, &fn);
		if (rv != CKR_OK) {
			r = hsm_p11_err(fn, rv, id);
			goto unlock;
		}
		for (i = 0; i < n; i++) {
			rv = h->m->C_DestroyObject(p.sh, objs[i]);
			if (rv != CKR_OK) {
				r = hsm_p11_err("C_DestroyObject", rv, id);
				goto unlock;
			}
		}
		total += n;
	}
	r = KB_OK;
unlock:
	pthread_rwlock_unlock(&h->objects_rw);
	if (r != KB_OK)
		goto out;
	if (total == 0) {
		r = kb_errf(
		    KB_ERR_NOT_FOUND, "no key with id %s in the token", id);
		goto out;
	}
	r = KB_OK;
out:
	if (have_session)
		hsm_pool_put(h, &p, rv);
	pthread_mutex_unlock(&h->create_mu);
	return r;
}

enum kb_err
hsm_key_destroy(struct hsm *h, const char *id)
{
	static const CK_OBJECT_CLASS classes[] = {
	    CKO_PRIVATE_KEY, CKO_PUBLIC_KEY, CKO_SECRET_KEY};

	return key_destroy_classes(h, id, classes, 3);
}

enum kb_err
hsm_key_retire(struct hsm *h, const char *id)
{
	static const CK_OBJECT_CLASS classes[] = {CKO_PRIVATE_KEY};

	return key_destroy_classes(h, id, classes, 1);
}

enum kb_err
hsm_rsa_upgrade(struct hsm *h, const char *id, unsigned use, int *changed)
{
	static CK_OBJECT_CLASS pub_cls = CKO_PUBLIC_KEY;
	struct pooled p;
	CK_OBJECT_HANDLE priv, objs[HSM_FIND_MAX], hpub = CK_INVALID_HANDLE;
	CK_ULONG n = 0, i, nmine = 0;
	CK_BBOOL is_private = CK_FALSE, can_unwrap = CK_FALSE;
	CK_BBOOL can_decrypt = CK_FALSE, yes = CK_TRUE, no = CK_FALSE;
	CK_ATTRIBUTE qa[2];
	CK_ATTRIBUTE set_unwrap = {CKA_UNWRAP, &yes, sizeof(yes)};
	CK_ATTRIBUTE set_decrypt = {CKA_DECRYPT, &yes, sizeof(yes)};
	int want_unwrap, want_decrypt;
	struct tmpl pub = {.n = 0};
	struct pub_arg pa = {NULL, NULL, 0, 0};
	const char *fn = "";
	CK_RV rv = CKR_OK;
	int have_session = 0;
	enum kb_err r = KB_ERR_INTERNAL;

	*changed = 0;
	if ((r = hsm_id_check(id)) != KB_OK || (r = use_check(use)) != KB_OK)
		return r;
	pthread_mutex_lock(&h->create_mu);
	if ((r = hsm_pool_get(h, &p)) != KB_OK)
		goto out;
	have_session = 1;
	pthread_rwlock_wrlock(&h->objects_rw);
	if ((r = hsm_obj_lookup(h, p.sh, id, NULL, CKO_PRIVATE_KEY, &priv, &rv))
	    != KB_OK)
		goto unlock;
	/* Key wrap needs CKA_UNWRAP, which keys made before it lack; and
	 * CKA_DECRYPT follows `use` both ways, so a key whose pre-v2 rows were
	 * upgraded can never decrypt a (forged) pre-v2 blob again. Both are
	 * modifiable attributes. */
	qa[0] = (CK_ATTRIBUTE){CKA_UNWRAP, &can_unwrap, sizeof(can_unwrap)};
	qa[1] = (CK_ATTRIBUTE){CKA_DECRYPT, &can_decrypt, sizeof(can_decrypt)};
	fn = "C_GetAttributeValue";
	if ((rv = h->m->C_GetAttributeValue(p.sh, priv, qa, 2)) != CKR_OK)
		goto p11fail;
	want_unwrap = (use & (HSM_USE_UNWRAP | HSM_USE_KEYWRAP)) != 0;
	want_decrypt = (use & HSM_USE_ENCRYPT) != 0;
	if ((can_unwrap != 0) != want_unwrap) {
		set_unwrap.pValue = want_unwrap ? &yes : &no;
		fn = "C_SetAttributeValue";
		if ((rv = h->m->C_SetAttributeValue(p.sh, priv, &set_unwrap, 1))
		    != CKR_OK)
			goto p11fail;
		*changed = 1;
	}
	if ((can_decrypt != 0) != want_decrypt) {
		set_decrypt.pValue = want_decrypt ? &yes : &no;
		fn = "C_SetAttributeValue";
		if ((rv = h->m->C_SetAttributeValue(
		         p.sh, priv, &set_decrypt, 1))
		    != CKR_OK)
			goto p11fail;
		*changed = 1;
	}
	/* Public halves: the only ones kept are CKA_PRIVATE ones made from
	 * the private key's own modulus and exponent. A public object anyone
	 * could have made (CKA_PRIVATE false: every key of an older
	 * keybroker, or one planted without the PIN) is destroyed. */
	if ((rv = obj_find_any(
	         h, p.sh, id, CKO_PUBLIC_KEY, objs, HSM_FIND_MAX, &n, &fn))
	    != CKR_OK)
		goto p11fail;
	for (i = 0; i < n; i++) {
		is_private = CK_FALSE;
		qa[0] = (CK_ATTRIBUTE){
		    CKA_PRIVATE, &is_private, sizeof(is_private)};
		fn = "C_GetAttributeValue";
		if ((rv = h->m->C_GetAttributeValue(p.sh, objs[i], qa, 1))
		    != CKR_OK)
			goto p11fail;
		if (is_private) {
			nmine++;
			continue;
		}
		fn = "C_DestroyObject";
		if ((rv = h->m->C_DestroyObject(p.sh, objs[i])) != CKR_OK)
			goto p11fail;
		*changed = 1;
	}
	hsm_cache_drop(h, id, CKO_PUBLIC_KEY);
	if (nmine == 0) {
		if ((rv = op_pub(h, p.sh, priv, &pa, &fn)) != CKR_OK)
			goto p11fail;
		hsm_tmpl_ulong(&pub, CKA_CLASS, pub_cls);
		hsm_tmpl_ulong(&pub, CKA_KEY_TYPE, CKK_RSA);
		tmpl_key(&pub, id, 0, use);
		hsm_tmpl_add(&pub, CKA_MODULUS, pa.n, pa.n_len);
		hsm_tmpl_add(&pub, CKA_PUBLIC_EXPONENT, pa.e, pa.e_len);
		if ((r = hsm_tmpl_check(&pub, NULL)) != KB_OK)
			goto unlock;
		fn = "C_CreateObject";
		if ((rv = hsm_create_object(h, p.sh, pub.a, pub.n, &hpub))
		    != CKR_OK)
			goto p11fail;
		*changed = 1;
	}
	r = KB_OK;
	goto unlock;
p11fail:
	r = hsm_p11_err(fn, rv, id);
unlock:
	pthread_rwlock_unlock(&h->objects_rw);
out:
	if (have_session)
		hsm_pool_put(h, &p, rv);
	pthread_mutex_unlock(&h->create_mu);
	pub_arg_clear(&pa);
	return r;
}

/* ---- public functions: key creation ---- */

enum kb_err
hsm_rsa_generate(struct hsm *h, const char *id, unsigned bits, unsigned use)
{
	CK_MECHANISM mech = {CKM_RSA_PKCS_KEY_PAIR_GEN, NULL, 0};
	struct tmpl pub = {.n = 0}, priv = {.n = 0};
	CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE;
	struct pooled p;
	CK_RV rv = CKR_OK;
	int have_session = 0, attempt = 0;
	enum kb_err r = KB_ERR_INTERNAL;

	if ((r = hsm_id_check(id)) != KB_OK || (r = use_check(use)) != KB_OK)
		return r;
	if (bits < 1024 || bits > 16384 || bits % 8 != 0)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "RSA key size %u is not supported", bits);
	tmpl_key(&pub, id, 0, use);
	hsm_tmpl_ulong(&pub, CKA_MODULUS_BITS, bits);
	hsm_tmpl_add(&pub, CKA_PUBLIC_EXPONENT, rsa_f4, sizeof(rsa_f4));
	tmpl_key(&priv, id, 1, use);
	if ((r = hsm_tmpl_check(&pub, &priv)) != KB_OK)
		return r;

	pthread_mutex_lock(&h->create_mu);
	if ((r = hsm_pool_get(h, &p)) != KB_OK)
		goto out;
	have_session = 1;
	if ((r = hsm_id_free(h, p.sh, id, &rv)) != KB_OK)
		goto out;
	while ((rv = h->m->C_GenerateKeyPair(
	            p.sh, &mech, pub.a, pub.n, priv.a, priv.n, &hpub, &hpriv))
	        != CKR_OK
	    && hsm_again(h, rv, &attempt))
		;
	if (rv != CKR_OK) {
		r = hsm_p11_err("C_GenerateKeyPair", rv, id);
		goto out;
	}
	hsm_cache_put(h, id, NULL, CKO_PUBLIC_KEY, hpub);
	hsm_cache_put(h, id, NULL, CKO_PRIVATE_KEY, hpriv);
	r = KB_OK;
out:
	if (have_session)
		hsm_pool_put(h, &p, rv);
	pthread_mutex_unlock(&h->create_mu);
	return r;
}

/* The RSA components as PKCS#11 wants them, big-endian. */
static const struct {
	const char *param;
	CK_ATTRIBUTE_TYPE type;
} rsa_parts[] = {
    {OSSL_PKEY_PARAM_RSA_N, CKA_MODULUS},
    {OSSL_PKEY_PARAM_RSA_E, CKA_PUBLIC_EXPONENT},
    {OSSL_PKEY_PARAM_RSA_D, CKA_PRIVATE_EXPONENT},
    {OSSL_PKEY_PARAM_RSA_FACTOR1, CKA_PRIME_1},
    {OSSL_PKEY_PARAM_RSA_FACTOR2, CKA_PRIME_2},
    {OSSL_PKEY_PARAM_RSA_EXPONENT1, CKA_EXPONENT_1},
    {OSSL_PKEY_PARAM_RSA_EXPONENT2, CKA_EXPONENT_2},
    {OSSL_PKEY_PARAM_RSA_COEFFICIENT1, CKA_COEFFICIENT},
};
#define RSA_NPARTS (sizeof(rsa_parts) / sizeof(rsa_parts[0]))

enum kb_err
hsm_rsa_import(struct hsm *h, const char *id, EVP_PKEY *pkey, unsigned use)
{
	uint8_t *part[RSA_NPARTS] = {NULL};
	size_t part_len[RSA_NPARTS] = {0};
	struct tmpl pub = {.n = 0}, priv = {.n = 0};
	CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE, hpriv = CK_INVALID_HANDLE;
	BIGNUM *bn = NULL;
	struct pooled p;
	CK_RV rv = CKR_OK;
	size_t i;
	int have_session = 0, locked = 0, len;
	enum kb_err r = KB_ERR_INTERNAL;

	if ((r = hsm_id_check(id)) != KB_OK || (r = use_check(use)) != KB_OK)
		goto out;
	if (pkey == NULL || !EVP_PKEY_is_a(pkey, "RSA")) {
		r = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the key to import is not an RSA key");
		goto out;
	}
	if (EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_FACTOR3, &bn)
	    == 1) {
		BN_clear_free(bn);
		bn = NULL;
		r = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "multi-prime RSA keys cannot be imported");
		goto out;
	}
	ERR_clear_error();
	for (i = 0; i < RSA_NPARTS; i++) {
		if (EVP_PKEY_get_bn_param(pkey, rsa_parts[i].param, &bn) != 1) {
			ERR_clear_error();
			r = kb_errf(KB_ERR_INVALID_ARGUMENT,
			    "the RSA key lacks its %s component",
			    rsa_parts[i].param);
			goto out;
		}
		if ((len = BN_num_bytes(bn)) <= 0) {
			r = kb_errf(KB_ERR_INVALID_ARGUMENT,
			    "the RSA key's %s component is zero",
			    rsa_parts[i].param);
			goto out;
		}
		if ((part[i] = malloc((size_t)len)) == NULL) {
			r = kb_errf(KB_ERR_NOMEM, "out of memory");
			goto out;
		}
		part_len[i] = (size_t)BN_bn2bin(bn, part[i]);
		BN_clear_free(bn);
		bn = NULL;
	}

	hsm_tmpl_ulong(&priv, CKA_CLASS, CKO_PRIVATE_KEY);
	hsm_tmpl_ulong(&priv, CKA_KEY_TYPE, CKK_RSA);
	tmpl_key(&priv, id, 1, use);
	for (i = 0; i < RSA_NPARTS; i++)
		hsm_tmpl_add(&priv, rsa_parts[i].type, part[i], part_len[i]);
	hsm_tmpl_ulong(&pub, CKA_CLASS, CKO_PUBLIC_KEY);
	hsm_tmpl_ulong(&pub, CKA_KEY_TYPE, CKK_RSA);
	tmpl_key(&pub, id, 0, use);
	hsm_tmpl_add(&pub, CKA_MODULUS, part[0], part_len[0]);
	hsm_tmpl_add(&pub, CKA_PUBLIC_EXPONENT, part[1], part_len[1]);
	if ((r = hsm_tmpl_check(&pub, &priv)) != KB_OK)
		goto out;

	pthread_mutex_lock(&h->create_mu);
	locked = 1;
	if ((r = hsm_pool_get(h, &p)) != KB_OK)
		goto out;
	have_session = 1;
	if ((r = hsm_id_free(h, p.sh, id, &rv)) != KB_OK)
		goto out;
	if ((rv = hsm_create_object(h, p.sh, priv.a, priv.n, &hpriv))
	    != CKR_OK) {
		r = hsm_p11_err("C_CreateObject", rv, id);
		goto out;
	}
	if ((rv = hsm_create_object(h, p.sh, pub.a, pub.n, &hpub)) != CKR_OK) {
		r = hsm_p11_err("C_CreateObject", rv, id);
		(void)h->m->C_DestroyObject(p.sh, hpriv);
		goto out;
	}
	hsm_cache_put(h, id, NULL, CKO_PUBLIC_KEY, hpub);
	hsm_cache_put(h, id, NULL, CKO_PRIVATE_KEY, hpriv);
	r = KB_OK;
out:
	if (have_session)
		hsm_pool_put(h, &p, rv);
	if (locked)
		pthread_mutex_unlock(&h->create_mu);
	BN_clear_free(bn);
	for (i = 0; i < RSA_NPARTS; i++)
		kb_freezero(part[i], part_len[i]);
	return r;
}

/* Errors of C_UnwrapKey that mean "this blob is not right", as opposed to
 * "the token is not right". */
static int
rv_blob_bad(CK_RV rv)
{
	return rv == CKR_WRAPPED_KEY_INVALID || rv == CKR_WRAPPED_KEY_LEN_RANGE
	    || rv == CKR_ENCRYPTED_DATA_INVALID
	    || rv == CKR_ENCRYPTED_DATA_LEN_RANGE || rv == CKR_DATA_INVALID
	    || rv == CKR_DATA_LEN_RANGE || rv == CKR_GENERAL_ERROR
	    || rv == CKR_FUNCTION_FAILED || rv == CKR_TEMPLATE_INCONSISTENT
	    || rv == CKR_KEY_TYPE_INCONSISTENT;
}

enum kb_err
hsm_byok_unwrap(struct hsm *h, const char *kek_id, const char *oaep_alg,
    const uint8_t *blob, size_t blob_len, const char *id, unsigned want_bits,
    unsigned use)
{
	CK_RSA_PKCS_OAEP_PARAMS op;
	CK_MECHANISM oaep, kwp = {CKM_AES_KEY_WRAP_PAD, NULL, 0};
	CK_OBJECT_HANDLE kek, aes = CK_INVALID_HANDLE,
	                      hpriv = CK_INVALID_HANDLE;
	CK_OBJECT_HANDLE hpub = CK_INVALID_HANDLE;
	CK_ULONG aes_len = 0;
	CK_ATTRIBUTE len_attr = {CKA_VALUE_LEN, &aes_len, sizeof(aes_len)};
	struct tmpl at = {.n = 0}, priv = {.n = 0}, pub = {.n = 0};
	struct pub_arg pa = {NULL, NULL, 0, 0};
	uint8_t *kek_n = NULL;
	size_t kek_n_len = 0, oaep_len;
	unsigned bits;
	struct pooled p;
	const char *fn = "";
	const char *why_rsa = "damaged, or wrapped for another exchange key";
	const char *why_kwp = "damaged, or not an RSA private key";
	CK_RV rv = CKR_OK;
	int have_session = 0;
	enum kb_err r = KB_ERR_INTERNAL;

	if ((r = hsm_id_check(kek_id)) != KB_OK
	    || (r = hsm_id_check(id)) != KB_OK || (r = use_check(use)) != KB_OK
	    || (r = hsm_oaep_mech(oaep_alg, &op, &oaep)) != KB_OK)
		return r;

	/* The ephemeral AES key: a session object that can only unwrap. */
	hsm_tmpl_session_aes(&at, 0, 1);
	hsm_tmpl_ulong(&priv, CKA_CLASS, CKO_PRIVATE_KEY);
	hsm_tmpl_ulong(&priv, CKA_KEY_TYPE, CKK_RSA);
	tmpl_key(&priv, id, 1, use);
	if ((r = hsm_tmpl_check(&at, &priv)) != KB_OK)
		return r;

	pthread_mutex_lock(&h->create_mu);
	if ((r = hsm_pool_get(h, &p)) != KB_OK)
		goto out;
	have_session = 1;
	/* Rare and not worth a stale handle: ask the token afresh. */
	hsm_cache_drop(h, kek_id, CKO_PRIVATE_KEY);
	if ((r = hsm_obj_lookup(
	         h, p.sh, kek_id, NULL, CKO_PRIVATE_KEY, &kek, &rv))
	    != KB_OK) {
		if (r == KB_ERR_NOT_FOUND)
			r = kb_errf(r,
			    "key-exchange key %s is not in the token", kek_id);
		goto out;
	}
	/* The RSA part is as long as the KEK's modulus. */
	if ((rv = hsm_attr_get(h, p.sh, kek, CKA_MODULUS, &kek_n, &kek_n_len))
	    != CKR_OK) {
		r = hsm_p11_err("C_GetAttributeValue", rv, kek_id);
		goto out;
	}
	oaep_len = (modulus_bits(kek_n, kek_n_len) + 7) / 8;
	if (blob_len <= oaep_len + 8) {
		r = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .byok ciphertext is %zu bytes: too short for a key "
		    "wrapped with the %zu-byte key-exchange key %s",
		    blob_len, oaep_len, kek_id);
		goto out;
	}
	if ((r = hsm_id_free(h, p.sh, id, &rv)) != KB_OK)
		goto out;

	fn = "C_UnwrapKey (RSA-OAEP)";
	rv = h->m->C_UnwrapKey(p.sh, &oaep, kek, (CK_BYTE_PTR)blob,
	    (CK_ULONG)oaep_len, at.a, at.n, &aes);
	if (rv == CKR_OK) {
		fn = "C_GetAttributeValue";
		rv = h->m->C_GetAttributeValue(p.sh, aes, &len_attr, 1);
	}
	/* SoftHSMv2 leaves CKA_VALUE_LEN at 0 on unwrapped keys: only a
	 * length the token does report can be checked. */
	if (rv == CKR_OK && aes_len != 0 && aes_len != HSM_BYOK_AES_LEN) {
		r = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .byok transfer key is %lu bytes, need an AES-256 key",
		    aes_len);
		goto out;
	}
	if (rv == CKR_OK) {
		fn = "C_UnwrapKey (AES-KWP)";
		rv = h->m->C_UnwrapKey(p.sh, &kwp, aes,
		    (CK_BYTE_PTR)blob + oaep_len,
		    (CK_ULONG)(blob_len - oaep_len), priv.a, priv.n, &hpriv);
	}
	if (rv != CKR_OK) {
		r = hsm_p11_err(fn, rv, id);
		if (rv_blob_bad(rv))
			r = kb_errf(KB_ERR_INVALID_ARGUMENT,
			    "the .byok blob does not unwrap with key-exchange "
			    "key %s (%s): %s: %s",
			    kek_id,
			    aes == CK_INVALID_HANDLE ? why_rsa : why_kwp, fn,
			    hsm_rv_name(rv));
		goto out;
	}

	/* The public half comes from the new private key's own numbers. */
	if ((rv = op_pub(h, p.sh, hpriv, &pa, &fn)) != CKR_OK) {
		r = hsm_p11_err(fn, rv, id);
		goto out;
	}
	if ((bits = modulus_bits(pa.n, pa.n_len)) != want_bits) {
		r = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the key in the .byok is RSA-%u, need RSA-%u", bits,
		    want_bits);
		goto out;
	}
	hsm_tmpl_ulong(&pub, CKA_CLASS, CKO_PUBLIC_KEY);
	hsm_tmpl_ulong(&pub, CKA_KEY_TYPE, CKK_RSA);
	tmpl_key(&pub, id, 0, use);
	hsm_tmpl_add(&pub, CKA_MODULUS, pa.n, pa.n_len);
	hsm_tmpl_add(&pub, CKA_PUBLIC_EXPONENT, pa.e, pa.e_len);
	if ((r = hsm_tmpl_check(&pub, NULL)) != KB_OK)
		goto out;
	if ((rv = hsm_create_object(h, p.sh, pub.a, pub.n, &hpub)) != CKR_OK) {
		r = hsm_p11_err("C_CreateObject", rv, id);
		goto out;
	}
	hsm_cache_put(h, id, NULL, CKO_PUBLIC_KEY, hpub);
	hsm_cache_put(h, id, NULL, CKO_PRIVATE_KEY, hpriv);
	hpriv = CK_INVALID_HANDLE;
	r = KB_OK;
out:
	if (have_session) {
		/* Best effort: a lost session already took its session
		 * objects with it. */
		if (aes != CK_INVALID_HANDLE)
			(void)h->m->C_DestroyObject(p.sh, aes);
		if (hpriv != CK_INVALID_HANDLE)
			(void)h->m->C_DestroyObject(p.sh, hpriv);
		hsm_pool_put(h, &p, rv);
	}
	pthread_mutex_unlock(&h->create_mu);
	free(kek_n);
	pub_arg_clear(&pa);
	return r;
}
