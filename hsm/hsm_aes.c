/* SPDX-License-Identifier: Apache-2.0 */
/* hsm_aes.c: AES-256 keys in the token: the platform key and tenant KEKs
 * (made, wrapped under a tenant's RSA key and unwrapped again inside the
 * token), and AES-256-GCM sealing of data keys with associated data. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "hsm_int.h"
#include "kb_secmem.h"

#define AES_KEY_LEN 32

static enum kb_err
label_check(const char *label)
{
	if (label == NULL || label[0] == '\0' || strlen(label) > HSM_LABEL_MAX)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "a secret key needs a label of 1 to %d bytes",
		    HSM_LABEL_MAX);
	return KB_OK;
}

/* The attributes of a secret key of ours that lives in the token: found
 * only by id and label, never extractable, encrypt and decrypt only. */
static void
tmpl_secret(struct tmpl *t, const char *id, const char *label, int token)
{
	hsm_tmpl_ulong(t, CKA_CLASS, CKO_SECRET_KEY);
	hsm_tmpl_ulong(t, CKA_KEY_TYPE, CKK_AES);
	hsm_tmpl_bool(t, CKA_TOKEN, token);
	hsm_tmpl_bool(t, CKA_PRIVATE, 1);
	hsm_tmpl_bool(t, CKA_SENSITIVE, 1);
	hsm_tmpl_bool(t, CKA_EXTRACTABLE, 0);
	hsm_tmpl_bool(t, CKA_ENCRYPT, 1);
	hsm_tmpl_bool(t, CKA_DECRYPT, 1);
	hsm_tmpl_bool(t, CKA_WRAP, 0);
	hsm_tmpl_bool(t, CKA_UNWRAP, 0);
	hsm_tmpl_bool(t, CKA_SIGN, 0);
	hsm_tmpl_bool(t, CKA_VERIFY, 0);
	hsm_tmpl_bool(t, CKA_DERIVE, 0);
	if (id != NULL) {
		hsm_tmpl_add(t, CKA_ID, (void *)id, strlen(id));
		hsm_tmpl_add(t, CKA_LABEL, (void *)label, strlen(label));
	}
}

enum kb_err
hsm_aes_generate(struct hsm *h, const char *id, const char *label)
{
	CK_MECHANISM mech = {CKM_AES_KEY_GEN, NULL, 0};
	struct tmpl t = {.n = 0};
	CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE;
	struct pooled p;
	CK_RV rv = CKR_OK;
	int have_session = 0, attempt = 0;
	enum kb_err r = KB_ERR_INTERNAL;

	if ((r = hsm_id_check(id)) != KB_OK
	    || (r = label_check(label)) != KB_OK)
		return r;
	tmpl_secret(&t, id, label, 1);
	hsm_tmpl_ulong(&t, CKA_VALUE_LEN, AES_KEY_LEN);
	if ((r = hsm_tmpl_check(&t, NULL)) != KB_OK)
		return r;
	pthread_mutex_lock(&h->create_mu);
	if ((r = hsm_pool_get(h, &p)) != KB_OK)
		goto out;
	have_session = 1;
	if ((r = hsm_id_free(h, p.sh, id, &rv)) != KB_OK)
		goto out;
	while (
	    (rv = h->m->C_GenerateKey(p.sh, &mech, t.a, t.n, &obj)) != CKR_OK) {
		if (!hsm_again(h, rv, &attempt)) {
			r = hsm_p11_err("C_GenerateKey", rv, id);
			goto out;
		}
	}
	hsm_cache_put(h, id, label, CKO_SECRET_KEY, obj);
	r = KB_OK;
out:
	if (have_session)
		hsm_pool_put(h, &p, rv);
	pthread_mutex_unlock(&h->create_mu);
	return r;
}

/* C_UnwrapKey a KEK blob with private key `rsa` into token object id. */
static CK_RV
kek_unwrap_obj(struct hsm *h, CK_SESSION_HANDLE sh, CK_OBJECT_HANDLE rsa,
    CK_MECHANISM *oaep, const uint8_t *wrapped, size_t len, const char *id,
    const char *label, CK_OBJECT_HANDLE *out)
{
	struct tmpl t = {.n = 0};

	tmpl_secret(&t, id, label, 1);
	if (t.overflow)
		return CKR_HOST_MEMORY;
	return h->m->C_UnwrapKey(
	    sh, oaep, rsa, (CK_BYTE_PTR)wrapped, (CK_ULONG)len, t.a, t.n, out);
}

enum kb_err
hsm_kek_create(struct hsm *h, const char *rsa_id, const char *oaep_alg,
    const char *kek_id, const char *label, uint8_t **wrapped,
    size_t *wrapped_len)
{
	CK_MECHANISM gen = {CKM_AES_KEY_GEN, NULL, 0}, oaep;
	CK_RSA_PKCS_OAEP_PARAMS op;
	struct tmpl st = {.n = 0};
	CK_OBJECT_HANDLE pub, priv, tmp = CK_INVALID_HANDLE;
	CK_OBJECT_HANDLE kek = CK_INVALID_HANDLE;
	CK_ULONG wlen = 0;
	uint8_t *buf = NULL;
	struct pooled p;
	const char *fn = "";
	CK_RV rv = CKR_OK;
	int have_session = 0, attempt = 0;
	enum kb_err r = KB_ERR_INTERNAL;

	*wrapped = NULL;
	*wrapped_len = 0;
	if ((r = hsm_id_check(rsa_id)) != KB_OK
	    || (r = hsm_id_check(kek_id)) != KB_OK
	    || (r = label_check(label)) != KB_OK
	    || (r = hsm_oaep_mech(oaep_alg, &op, &oaep)) != KB_OK)
		return r;
	/* The one moment a KEK is extractable: a session object with no use
	 * but being wrapped, destroyed before this function returns. */
	hsm_tmpl_session_aes(&st, 1, 0);
	hsm_tmpl_ulong(&st, CKA_VALUE_LEN, AES_KEY_LEN);
	if ((r = hsm_tmpl_check(&st, NULL)) != KB_OK)
		return r;

	pthread_mutex_lock(&h->create_mu);
	if ((r = hsm_pool_get(h, &p)) != KB_OK)
		goto out;
	have_session = 1;
	pthread_rwlock_rdlock(&h->objects_rw);
	if ((r = hsm_id_free(h, p.sh, kek_id, &rv)) != KB_OK
	    || (r = hsm_obj_lookup(
	            h, p.sh, rsa_id, NULL, CKO_PUBLIC_KEY, &pub, &rv))
	        != KB_OK
	    || (r = hsm_obj_lookup(
	            h, p.sh, rsa_id, NULL, CKO_PRIVATE_KEY, &priv, &rv))
	        != KB_OK)
		goto unlock;
	fn = "C_GenerateKey";
	while (
	    (rv = h->m->C_GenerateKey(p.sh, &gen, st.a, st.n, &tmp)) != CKR_OK)
		if (!hsm_again(h, rv, &attempt))
			goto p11fail;
	fn = "C_WrapKey";
	if ((rv = h->m->C_WrapKey(p.sh, &oaep, pub, tmp, NULL, &wlen))
	    != CKR_OK)
		goto p11fail;
	if ((buf = malloc(wlen > 0 ? wlen : 1)) == NULL) {
		rv = CKR_HOST_MEMORY;
		goto p11fail;
	}
	if ((rv = h->m->C_WrapKey(p.sh, &oaep, pub, tmp, buf, &wlen)) != CKR_OK)
		goto p11fail;
	fn = "C_DestroyObject";
	rv = h->m->C_DestroyObject(p.sh, tmp);
	tmp = CK_INVALID_HANDLE;
	if (rv != CKR_OK)
		goto p11fail;
	fn = "C_UnwrapKey";
	attempt = 0;
	while ((rv = kek_unwrap_obj(
	            h, p.sh, priv, &oaep, buf, wlen, kek_id, label, &kek))
	    != CKR_OK)
		if (!hsm_again(h, rv, &attempt))
			goto p11fail;
	hsm_cache_put(h, kek_id, label, CKO_SECRET_KEY, kek);
	*wrapped = buf;
	*wrapped_len = wlen;
	buf = NULL;
	r = KB_OK;
	goto unlock;
p11fail:
	r = hsm_p11_err(fn, rv, kek_id);
	if (rv == CKR_KEY_FUNCTION_NOT_PERMITTED)
		r = kb_errf(r,
		    "%s: %s: RSA key %s may not wrap keys (made before "
		    "keybroker used key wrapping?)",
		    fn, hsm_rv_name(rv), rsa_id);
unlock:
	pthread_rwlock_unlock(&h->objects_rw);
out:
	if (have_session) {
		if (tmp != CK_INVALID_HANDLE)
			(void)h->m->C_DestroyObject(p.sh, tmp);
		hsm_pool_put(h, &p, rv);
	}
	pthread_mutex_unlock(&h->create_mu);
	free(buf);
	return r;
}

enum kb_err
hsm_kek_unwrap(struct hsm *h, const char *rsa_id, const char *oaep_alg,
    const uint8_t *wrapped, size_t wrapped_len, const char *kek_id,
    const char *label)
{
	CK_MECHANISM oaep;
	CK_RSA_PKCS_OAEP_PARAMS op;
	CK_OBJECT_HANDLE priv, kek = CK_INVALID_HANDLE;
	struct pooled p;
	CK_RV rv = CKR_OK;
	int have_session = 0, attempt = 0;
	enum kb_err r = KB_ERR_INTERNAL;

	if ((r = hsm_id_check(rsa_id)) != KB_OK
	    || (r = hsm_id_check(kek_id)) != KB_OK
	    || (r = label_check(label)) != KB_OK
	    || (r = hsm_oaep_mech(oaep_alg, &op, &oaep)) != KB_OK)
		return r;
	if (wrapped == NULL || wrapped_len == 0)
		return kb_errf(
		    KB_ERR_CORRUPT, "KEK %s: no wrapped key stored", kek_id);
	pthread_mutex_lock(&h->create_mu);
	if ((r = hsm_pool_get(h, &p)) != KB_OK)
		goto out;
	have_session = 1;
	pthread_rwlock_rdlock(&h->objects_rw);
	if ((r = hsm_id_free(h, p.sh, kek_id, &rv)) != KB_OK
	    || (r = hsm_obj_lookup(
	            h, p.sh, rsa_id, NULL, CKO_PRIVATE_KEY, &priv, &rv))
	        != KB_OK)
		goto unlock;
	/* CKR_GENERAL_ERROR is also SoftHSMv2's answer to a blob that does
	 * not unwrap (below): such a blob costs the retries' 350 ms. */
	while ((rv = kek_unwrap_obj(h, p.sh, priv, &oaep, wrapped, wrapped_len,
	            kek_id, label, &kek))
	        != CKR_OK
	    && hsm_again(h, rv, &attempt))
		;
	if (rv != CKR_OK) {
		r = hsm_p11_err("C_UnwrapKey", rv, kek_id);
		/* SoftHSMv2 answers bad OAEP padding with
		 * CKR_GENERAL_ERROR. */
		if (rv == CKR_WRAPPED_KEY_INVALID || rv == CKR_GENERAL_ERROR
		    || rv == CKR_ENCRYPTED_DATA_INVALID
		    || rv == CKR_WRAPPED_KEY_LEN_RANGE)
			r = kb_errf(KB_ERR_CORRUPT,
			    "C_UnwrapKey: %s: the stored KEK %s does not "
			    "unwrap with key %s (damaged, or wrapped under "
			    "another key)",
			    hsm_rv_name(rv), kek_id, rsa_id);
		goto unlock;
	}
	hsm_cache_put(h, kek_id, label, CKO_SECRET_KEY, kek);
	r = KB_OK;
unlock:
	pthread_rwlock_unlock(&h->objects_rw);
out:
	if (have_session)
		hsm_pool_put(h, &p, rv);
	pthread_mutex_unlock(&h->create_mu);
	return r;
}

enum kb_err
hsm_secret_exists(struct hsm *h, const char *id, const char *label)
{
	struct pooled p;
	CK_OBJECT_HANDLE obj;
	CK_ULONG n = 0;
	const char *fn = "";
	CK_RV rv = CKR_OK;
	enum kb_err r;
	int attempt;

	if ((r = hsm_id_check(id)) != KB_OK
	    || (r = label_check(label)) != KB_OK)
		return r;
	for (attempt = 0; attempt < 2; attempt++) {
		if ((r = hsm_pool_get(h, &p)) != KB_OK)
			return r;
		pthread_rwlock_rdlock(&h->objects_rw);
		rv = hsm_obj_find(
		    h, p.sh, id, label, CKO_SECRET_KEY, &obj, 1, &n, &fn);
		pthread_rwlock_unlock(&h->objects_rw);
		hsm_pool_put(h, &p, rv);
		if (!hsm_rv_session_lost(rv))
			break;
	}
	if (rv != CKR_OK)
		return hsm_p11_err(fn, rv, id);
	if (n == 0) {
		hsm_cache_drop(h, id, CKO_SECRET_KEY);
		return kb_errf(KB_ERR_NOT_FOUND,
		    "no secret key with id %s for %s in the token", id, label);
	}
	return KB_OK;
}

/* GCM seal on a session: the IV comes from the token's RNG on the same
 * session, then a single-part encrypt. */
struct gcm_arg {
	struct crypt_arg c;
	CK_GCM_PARAMS gp;
	CK_MECHANISM mech;
	uint8_t iv[HSM_GCM_IV_LEN];
};

static CK_RV
op_gcm_seal(struct hsm *h, CK_SESSION_HANDLE sh, CK_OBJECT_HANDLE key,
    void *argp, const char **fn)
{
	struct gcm_arg *g = argp;
	CK_RV rv;

	*fn = "C_GenerateRandom";
	if ((rv = h->m->C_GenerateRandom(sh, g->iv, sizeof(g->iv))) != CKR_OK)
		return rv;
	return hsm_op_crypt(h, sh, key, &g->c, fn);
}

static void
gcm_init(struct gcm_arg *g, const uint8_t *aad, size_t aad_len)
{
	memset(&g->gp, 0, sizeof(g->gp));
	g->gp.pIv = g->iv;
	g->gp.ulIvLen = sizeof(g->iv);
	g->gp.ulIvBits = sizeof(g->iv) * 8;
	g->gp.pAAD = (CK_BYTE_PTR)aad;
	g->gp.ulAADLen = (CK_ULONG)aad_len;
	g->gp.ulTagBits = HSM_GCM_TAG_LEN * 8;
	g->mech.mechanism = CKM_AES_GCM;
	g->mech.pParameter = &g->gp;
	g->mech.ulParameterLen = sizeof(g->gp);
	g->c.mech = &g->mech;
}

enum kb_err
hsm_gcm_seal(struct hsm *h, const char *id, const char *label,
    const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t in_len,
    uint8_t **out, size_t *out_len)
{
	struct gcm_arg g;
	uint8_t *blob;
	enum kb_err r;

	*out = NULL;
	*out_len = 0;
	if ((r = hsm_id_check(id)) != KB_OK
	    || (r = label_check(label)) != KB_OK)
		return r;
	memset(&g, 0, sizeof(g));
	g.c = (struct crypt_arg){h->m->C_EncryptInit, h->m->C_Encrypt,
	    "C_EncryptInit", "C_Encrypt", NULL, in, in_len, NULL, 0, CKR_OK};
	gcm_init(&g, aad, aad_len);
	if ((r = hsm_op_run(h, id, label, CKO_SECRET_KEY, op_gcm_seal, &g))
	    != KB_OK)
		return r;
	if (g.c.out_len != in_len + HSM_GCM_TAG_LEN) {
		free(g.c.out);
		return kb_errf(KB_ERR_HSM,
		    "C_Encrypt (AES-GCM, key %s) returned %zu bytes for %zu",
		    id, g.c.out_len, in_len);
	}
	if ((blob = malloc(HSM_GCM_IV_LEN + g.c.out_len)) == NULL) {
		free(g.c.out);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	memcpy(blob, g.iv, HSM_GCM_IV_LEN);
	memcpy(blob + HSM_GCM_IV_LEN, g.c.out, g.c.out_len);
	*out = blob;
	*out_len = HSM_GCM_IV_LEN + g.c.out_len;
	free(g.c.out);
	return KB_OK;
}

enum kb_err
hsm_gcm_open(struct hsm *h, const char *id, const char *label,
    const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t in_len,
    uint8_t **out, size_t *out_len)
{
	struct gcm_arg g;
	enum kb_err r;

	*out = NULL;
	*out_len = 0;
	if ((r = hsm_id_check(id)) != KB_OK
	    || (r = label_check(label)) != KB_OK)
		return r;
	if (in_len < HSM_GCM_IV_LEN + HSM_GCM_TAG_LEN)
		return kb_errf(KB_ERR_CORRUPT,
		    "sealed blob of %zu bytes is shorter than an AES-GCM IV "
		    "and tag",
		    in_len);
	memset(&g, 0, sizeof(g));
	memcpy(g.iv, in, HSM_GCM_IV_LEN);
	g.c = (struct crypt_arg){h->m->C_DecryptInit, h->m->C_Decrypt,
	    "C_DecryptInit", "C_Decrypt", NULL, in + HSM_GCM_IV_LEN,
	    in_len - HSM_GCM_IV_LEN, NULL, 0, CKR_OK};
	gcm_init(&g, aad, aad_len);
	r = hsm_op_run(h, id, label, CKO_SECRET_KEY, hsm_op_crypt, &g.c);
	/* The tag did not verify: the blob, its associated data (the row it
	 * claims to be) or the key is not the one it was sealed with. */
	if (r != KB_OK
	    && (g.c.data_rv == CKR_ENCRYPTED_DATA_INVALID
	        || g.c.data_rv == CKR_GENERAL_ERROR
	        || g.c.data_rv == CKR_ENCRYPTED_DATA_LEN_RANGE))
		r = kb_errf(KB_ERR_CORRUPT,
		    "C_Decrypt: %s (key %s): the AES-GCM tag does not verify: "
		    "the blob was altered, moved from another row, or made "
		    "outside the token",
		    hsm_rv_name(g.c.data_rv), id);
	if (r == KB_OK) {
		*out = g.c.out;
		*out_len = g.c.out_len;
	}
	return r;
}

enum kb_err
hsm_oaep_probe_temp(struct hsm *h, const char **alg)
{
	char id[32];
	uint8_t r8[4];
	enum kb_err r, r2;

	*alg = NULL;
	if ((r = hsm_random(h, r8, sizeof(r8))) != KB_OK)
		return r;
	snprintf(id, sizeof(id), "kb-probe-%02x%02x%02x%02x", r8[0], r8[1],
	    r8[2], r8[3]);
	if ((r = hsm_rsa_generate(h, id, 2048, HSM_USE_ENCRYPT)) != KB_OK)
		return kb_err_wrap(r, "making a key to probe RSA-OAEP");
	r = hsm_oaep_probe(h, id, alg);
	if ((r2 = hsm_key_destroy(h, id)) != KB_OK && r == KB_OK)
		r = r2;
	return r;
}

enum kb_err
hsm_label_exists(struct hsm *h, const char *label)
{
	CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
	CK_BBOOL yes = CK_TRUE;
	CK_ATTRIBUTE t[3] = {
	    {CKA_CLASS, &cls, sizeof(cls)},
	    {CKA_PRIVATE, &yes, sizeof(yes)},
	    {CKA_LABEL, (void *)label, 0},
	};
	CK_OBJECT_HANDLE obj;
	CK_ULONG n = 0;
	struct pooled p;
	CK_RV rv, rv2;
	enum kb_err r;

	if ((r = label_check(label)) != KB_OK)
		return r;
	t[2].ulValueLen = strlen(label);
	if ((r = hsm_pool_get(h, &p)) != KB_OK)
		return r;
	if ((rv = h->m->C_FindObjectsInit(p.sh, t, 3)) == CKR_OK) {
		rv = h->m->C_FindObjects(p.sh, &obj, 1, &n);
		rv2 = h->m->C_FindObjectsFinal(p.sh);
		if (rv == CKR_OK)
			rv = rv2;
	}
	hsm_pool_put(h, &p, rv);
	if (rv != CKR_OK)
		return hsm_p11_err("C_FindObjects", rv, NULL);
	return n > 0 ? KB_OK
	             : kb_errf(KB_ERR_NOT_FOUND,
	                 "no secret key labelled %s in the token", label);
}
