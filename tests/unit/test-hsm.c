/* SPDX-License-Identifier: Apache-2.0 */
/* test-hsm.c: hsm/ against a fresh SoftHSMv2 token. */
#include "harness.h"

#include <pthread.h>
#include <sys/stat.h>

#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "hsm.h"
#include "kb_secmem.h"

#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>

#define FX_LABEL "kbtest-fx"
#define ONE_LABEL "kbtest"

/* The shared fixture: one token, opened once, with key "enc". Cases that
 * need their own token or no open handle run first (see main). */
static struct hsm *fx;
static char fx_dir[256];
static char fx_pin[300];
static const char *fx_alg = HSM_ALG_OAEP_SHA1;

static struct hsm *
fixture(void)
{
	struct hsm_config cfg = {
	    KBT_SOFTHSM_MODULE, "pkcs11:token=" FX_LABEL, fx_pin, 1, 3};

	if (fx != NULL)
		return fx;
	snprintf(fx_dir, sizeof(fx_dir), "%s", kbt_softhsm_setup(FX_LABEL));
	snprintf(fx_pin, sizeof(fx_pin), "%s/pin", fx_dir);
	if (hsm_open(&cfg, &fx) != KB_OK
	    || hsm_rsa_generate(fx, "enc", 2048, HSM_USE_ENCRYPT) != KB_OK) {
		fprintf(stderr, "fixture: %s\n", kb_err_msg(KB_ERR_INTERNAL));
		exit(2);
	}
	return fx;
}

/* Generate `id` in the fixture unless an earlier case did. */
static int
ensure_key(struct hsm *h, const char *id, unsigned use)
{
	if (hsm_key_exists(h, id) == KB_OK)
		return 1;
	return hsm_rsa_generate(h, id, 2048, use) == KB_OK;
}

static void
write_pin(const char *path, const char *pin, mode_t mode)
{
	FILE *f = fopen(path, "w");

	if (f == NULL) {
		perror(path);
		exit(2);
	}
	fprintf(f, "%s\n", pin);
	fclose(f);
	chmod(path, mode);
}

/* ---- a raw PKCS#11 session on the fixture token, to look behind hsm/ ---- */

struct raw {
	CK_FUNCTION_LIST *m;
	CK_SESSION_HANDLE s;
};

static int
raw_open(struct raw *r)
{
	CK_SLOT_ID slots[16];
	CK_ULONG n = 16, i;
	CK_TOKEN_INFO ti;
	CK_RV rv;

	memset(r, 0, sizeof(*r));
	if ((r->m = p11_kit_module_load(KBT_SOFTHSM_MODULE, 0)) == NULL
	    || p11_kit_module_initialize(r->m) != CKR_OK
	    || r->m->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
		return 0;
	for (i = 0; i < n; i++) {
		if (r->m->C_GetTokenInfo(slots[i], &ti) == CKR_OK
		    && memcmp(ti.label, FX_LABEL " ", strlen(FX_LABEL) + 1)
		        == 0)
			break;
	}
	if (i == n
	    || r->m->C_OpenSession(slots[i],
	           CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &r->s)
	        != CKR_OK)
		return 0;
	rv = r->m->C_Login(r->s, CKU_USER, (CK_UTF8CHAR_PTR)KBT_USER_PIN,
	    strlen(KBT_USER_PIN));
	return rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN;
}

static void
raw_close(struct raw *r)
{
	if (r->m == NULL)
		return;
	r->m->C_CloseSession(r->s);
	p11_kit_module_finalize(r->m);
	p11_kit_module_release(r->m);
}

static CK_OBJECT_HANDLE
raw_find(struct raw *r, const char *id, CK_OBJECT_CLASS cls)
{
	CK_ATTRIBUTE t[2] = {
	    {CKA_CLASS, &cls, sizeof(cls)}, {CKA_ID, (void *)id, strlen(id)}};
	CK_OBJECT_HANDLE o = CK_INVALID_HANDLE;
	CK_ULONG n = 0;

	if (r->m->C_FindObjectsInit(r->s, t, 2) == CKR_OK) {
		r->m->C_FindObjects(r->s, &o, 1, &n);
		r->m->C_FindObjectsFinal(r->s);
	}
	return n == 1 ? o : CK_INVALID_HANDLE;
}

/* 1 true, 0 false, -1 unreadable. */
static int
raw_bool(struct raw *r, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_TYPE type)
{
	CK_BBOOL b = CK_FALSE;
	CK_ATTRIBUTE a = {type, &b, sizeof(b)};

	if (r->m->C_GetAttributeValue(r->s, o, &a, 1) != CKR_OK)
		return -1;
	return b == CK_TRUE;
}

/* ---- OpenSSL helpers ---- */

static EVP_PKEY *
pub_from_hsm(struct hsm *h, const char *id)
{
	uint8_t *der = NULL;
	size_t len = 0;
	const unsigned char *p;
	EVP_PKEY *pk = NULL;

	if (hsm_public_key_der(h, id, &der, &len) == KB_OK) {
		p = der;
		pk = d2i_PUBKEY(NULL, &p, (long)len);
	}
	free(der);
	return pk;
}

static int
same_public(EVP_PKEY *a, EVP_PKEY *b)
{
	unsigned char *da = NULL, *db = NULL;
	int la = i2d_PUBKEY(a, &da), lb = i2d_PUBKEY(b, &db);
	int same = la > 0 && la == lb && memcmp(da, db, (size_t)la) == 0;

	OPENSSL_free(da);
	OPENSSL_free(db);
	return same;
}

static int
ossl_oaep_sha1(EVP_PKEY *pub, const uint8_t *in, size_t in_len, uint8_t *out,
    size_t *out_len)
{
	EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(pub, NULL);
	int ok = c != NULL && EVP_PKEY_encrypt_init(c) > 0
	    && EVP_PKEY_CTX_set_rsa_padding(c, RSA_PKCS1_OAEP_PADDING) > 0
	    && EVP_PKEY_CTX_set_rsa_oaep_md(c, EVP_sha1()) > 0
	    && EVP_PKEY_CTX_set_rsa_mgf1_md(c, EVP_sha1()) > 0
	    && EVP_PKEY_encrypt(c, out, out_len, in, in_len) > 0;

	EVP_PKEY_CTX_free(c);
	return ok;
}

/* An Azure-style .byok ciphertext: RSA-OAEP-SHA1(kek, aes) ||
 * AES-KWP(aes, PKCS#8 DER of key). */
static int
byok_build(EVP_PKEY *kek, EVP_PKEY *key, uint8_t **blob, size_t *blob_len)
{
	PKCS8_PRIV_KEY_INFO *p8 = EVP_PKEY2PKCS8(key);
	unsigned char *der = NULL;
	uint8_t aes[32], *out = NULL;
	size_t rsa_len = 512;
	int der_len = p8 != NULL ? i2d_PKCS8_PRIV_KEY_INFO(p8, &der) : -1;
	int l1 = 0, l2 = 0, ok = 0;
	EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();

	if (der_len <= 0 || c == NULL || RAND_bytes(aes, sizeof(aes)) != 1
	    || (out = malloc(512 + (size_t)der_len + 16)) == NULL
	    || !ossl_oaep_sha1(kek, aes, sizeof(aes), out, &rsa_len))
		goto out;
	EVP_CIPHER_CTX_set_flags(c, EVP_CIPHER_CTX_FLAG_WRAP_ALLOW);
	if (EVP_EncryptInit_ex(c, EVP_aes_256_wrap_pad(), NULL, aes, NULL) != 1
	    || EVP_EncryptUpdate(c, out + rsa_len, &l1, der, der_len) != 1
	    || EVP_EncryptFinal_ex(c, out + rsa_len + l1, &l2) != 1)
		goto out;
	*blob = out;
	*blob_len = rsa_len + (size_t)l1 + (size_t)l2;
	out = NULL;
	ok = 1;
out:
	EVP_CIPHER_CTX_free(c);
	kb_wipe(aes, sizeof(aes));
	if (der != NULL)
		OPENSSL_clear_free(der, (size_t)der_len);
	PKCS8_PRIV_KEY_INFO_free(p8);
	free(out);
	return ok;
}

/* ---- cases that need their own token (no handle open) ---- */

static void
test_open_close(void)
{
	const char *dir = kbt_softhsm_setup(ONE_LABEL);
	char pin[300];
	struct hsm_config cfg = {NULL, "pkcs11:token=" ONE_LABEL, pin, 1, 0};
	struct hsm_token_info ti;
	struct hsm *h = NULL;
	uint8_t r[16];

	snprintf(pin, sizeof(pin), "%s/pin", dir);
	KBT_ASSERT_OK(hsm_open(&cfg, &h));
	hsm_token_info(h, &ti);
	KBT_ASSERT_STR(ti.label, ONE_LABEL);
	KBT_ASSERT_STR(ti.manufacturer, "SoftHSM project");
	KBT_ASSERT(ti.serial[0] != '\0');
	KBT_ASSERT_OK(hsm_check(h));
	KBT_ASSERT_OK(hsm_random(h, r, sizeof(r)));
	KBT_ASSERT_ERR(hsm_key_exists(h, "nothing"), KB_ERR_NOT_FOUND);
	hsm_close(h);
	hsm_close(NULL);

	/* Closed and opened again in the same process. */
	KBT_ASSERT_OK(hsm_open(&cfg, &h));
	KBT_ASSERT_OK(hsm_check(h));
	hsm_close(h);
	kbt_rmtree(dir);
}

static void
test_wrong_pin(void)
{
	const char *dir = kbt_softhsm_setup(ONE_LABEL);
	char pin[300];
	struct hsm_config cfg = {NULL, "pkcs11:token=" ONE_LABEL, pin, 1, 0};
	struct hsm *h = NULL;
	enum kb_err e;

	snprintf(pin, sizeof(pin), "%s/badpin", dir);
	write_pin(pin, "9999", 0600);
	e = hsm_open(&cfg, &h);
	KBT_ASSERT(h == NULL);
	KBT_ASSERT_ERR(e, KB_ERR_HSM);
	KBT_ASSERT_CONTAINS(kb_err_msg(e), "C_Login: CKR_PIN_INCORRECT");
	kbt_rmtree(dir);
}

static void
test_pin_mode(void)
{
	const char *dir = kbt_softhsm_setup(ONE_LABEL);
	char pin[300];
	struct hsm_config cfg = {NULL, "pkcs11:token=" ONE_LABEL, pin, 1, 0};
	struct hsm *h = NULL;
	enum kb_err e;

	snprintf(pin, sizeof(pin), "%s/pin", dir);
	chmod(pin, 0644);
	e = hsm_open(&cfg, &h);
	KBT_ASSERT(h == NULL);
	KBT_ASSERT_ERR(e, KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(e), "0644");
	cfg.check_pin_mode = 0;
	KBT_ASSERT_OK(hsm_open(&cfg, &h));
	hsm_close(h);
	kbt_rmtree(dir);
}

static void
test_uri(void)
{
	const char *dir = kbt_softhsm_setup(ONE_LABEL);
	char pin[300];
	struct hsm_config cfg = {NULL, "pkcs11:token=nope", pin, 1, 0};
	struct hsm *h = NULL;
	enum kb_err e;

	snprintf(pin, sizeof(pin), "%s/pin", dir);
	e = hsm_open(&cfg, &h);
	KBT_ASSERT(h == NULL);
	KBT_ASSERT_ERR(e, KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(e), "pkcs11:token=nope");
	KBT_ASSERT_CONTAINS(kb_err_msg(e), "\"" ONE_LABEL "\"");

	cfg.token_uri = "https://example.com/";
	KBT_ASSERT_ERR(hsm_open(&cfg, &h), KB_ERR_CONFIG);

	/* Matching by model and manufacturer works too. */
	cfg.token_uri =
	    "pkcs11:manufacturer=SoftHSM%20project;model=SoftHSM%20v2";
	KBT_ASSERT_OK(hsm_open(&cfg, &h));
	hsm_close(h);
	h = NULL;

	/* ... until a second token makes it ambiguous. */
	KBT_ASSERT(system("softhsm2-util --init-token --free --label other "
	                  "--so-pin 5678 --pin " KBT_USER_PIN " >/dev/null")
	    == 0);
	e = hsm_open(&cfg, &h);
	KBT_ASSERT(h == NULL);
	KBT_ASSERT_ERR(e, KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(e), "matches 2 tokens");
	KBT_ASSERT_CONTAINS(kb_err_msg(e), "\"other\"");
	cfg.token_uri = "pkcs11:token=other";
	KBT_ASSERT_OK(hsm_open(&cfg, &h));
	hsm_close(h);
	kbt_rmtree(dir);
}

static void
test_module_missing(void)
{
	const char *dir = kbt_softhsm_setup(ONE_LABEL);
	char pin[300];
	struct hsm_config cfg = {
	    "/nonexistent/libnothing.so", "pkcs11:token=" ONE_LABEL, pin, 1, 0};
	struct hsm *h = NULL;
	enum kb_err e;

	snprintf(pin, sizeof(pin), "%s/pin", dir);
	e = hsm_open(&cfg, &h);
	KBT_ASSERT(h == NULL);
	KBT_ASSERT_ERR(e, KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(e), "/nonexistent/libnothing.so");
	kbt_rmtree(dir);
}

/* ---- cases on the shared fixture ---- */

static void
test_bad_args(void)
{
	struct hsm *h = fixture();
	uint8_t in[4] = {1, 2, 3, 4}, *out = NULL;
	size_t out_len = 0;
	char longid[70];

	memset(longid, 'a', 65);
	longid[65] = '\0';
	KBT_ASSERT_ERR(hsm_rsa_generate(h, "", 2048, HSM_USE_ENCRYPT),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_ERR(hsm_rsa_generate(h, longid, 2048, HSM_USE_ENCRYPT),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_ERR(hsm_rsa_generate(h, "a b", 2048, HSM_USE_ENCRYPT),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_ERR(hsm_key_exists(h, "../x"), KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_ERR(
	    hsm_rsa_generate(h, "x", 2048, 0), KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_ERR(hsm_encrypt(h, "enc", "RSA-OAEP-MD5", in, sizeof(in),
	                   &out, &out_len),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_ERR(
	    hsm_decrypt(h, "enc", NULL, in, sizeof(in), &out, &out_len),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT(out == NULL);
	/* 64 bytes of the allowed characters is fine (not found). */
	longid[64] = '\0';
	longid[10] = '.';
	longid[11] = '_';
	longid[12] = '-';
	KBT_ASSERT_ERR(hsm_key_exists(h, longid), KB_ERR_NOT_FOUND);
}

static void
test_generate(void)
{
	struct hsm *h = fixture();
	enum kb_err e;

	KBT_ASSERT_OK(hsm_key_exists(h, "enc"));
	e = hsm_rsa_generate(h, "enc", 2048, HSM_USE_ENCRYPT);
	KBT_ASSERT_ERR(e, KB_ERR_ALREADY_EXISTS);
	KBT_ASSERT_CONTAINS(kb_err_msg(e), "enc");

	KBT_ASSERT_OK(hsm_rsa_generate(h, "tmp", 2048, HSM_USE_ENCRYPT));
	KBT_ASSERT_OK(hsm_key_exists(h, "tmp"));
	KBT_ASSERT_OK(hsm_key_destroy(h, "tmp"));
	KBT_ASSERT_ERR(hsm_key_exists(h, "tmp"), KB_ERR_NOT_FOUND);
	KBT_ASSERT_ERR(hsm_key_destroy(h, "tmp"), KB_ERR_NOT_FOUND);
	KBT_ASSERT_OK(hsm_key_exists(h, "enc"));
}

static void
test_attributes(void)
{
	struct hsm *h = fixture();
	struct raw r;
	CK_OBJECT_HANDLE o;
	uint8_t buf[512];
	CK_ATTRIBUTE a = {CKA_PRIVATE_EXPONENT, buf, sizeof(buf)};
	char label[80];
	CK_ATTRIBUTE la = {CKA_LABEL, label, sizeof(label)};
	int ok;

	KBT_ASSERT(ensure_key(h, "kek", HSM_USE_UNWRAP));
	ok = raw_open(&r);
	if (!ok) {
		raw_close(&r);
		KBT_FAIL("raw session on the fixture token failed");
	}
	o = raw_find(&r, "enc", CKO_PRIVATE_KEY);
	ok = o != CK_INVALID_HANDLE && raw_bool(&r, o, CKA_TOKEN) == 1
	    && raw_bool(&r, o, CKA_PRIVATE) == 1
	    && raw_bool(&r, o, CKA_SENSITIVE) == 1
	    && raw_bool(&r, o, CKA_EXTRACTABLE) == 0
	    && raw_bool(&r, o, CKA_DECRYPT) == 1
	    && raw_bool(&r, o, CKA_UNWRAP) == 0
	    && raw_bool(&r, o, CKA_SIGN) == 0
	    && r.m->C_GetAttributeValue(r.s, o, &a, 1)
	        == CKR_ATTRIBUTE_SENSITIVE
	    && r.m->C_GetAttributeValue(r.s, o, &la, 1) == CKR_OK
	    && la.ulValueLen == 3 && memcmp(label, "enc", 3) == 0;
	if (ok) {
		o = raw_find(&r, "enc", CKO_PUBLIC_KEY);
		ok = o != CK_INVALID_HANDLE && raw_bool(&r, o, CKA_ENCRYPT) == 1
		    && raw_bool(&r, o, CKA_WRAP) == 0
		    && raw_bool(&r, o, CKA_VERIFY) == 0;
	}
	if (ok) {
		o = raw_find(&r, "kek", CKO_PRIVATE_KEY);
		ok = o != CK_INVALID_HANDLE
		    && raw_bool(&r, o, CKA_SENSITIVE) == 1
		    && raw_bool(&r, o, CKA_EXTRACTABLE) == 0
		    && raw_bool(&r, o, CKA_UNWRAP) == 1
		    && raw_bool(&r, o, CKA_DECRYPT) == 0
		    && raw_bool(&r, o, CKA_SIGN) == 0
		    && raw_bool(&r, o, CKA_SIGN_RECOVER) == 0
		    && raw_bool(&r, o, CKA_DERIVE) == 0;
	}
	if (ok) {
		/* Public halves are private objects too; only key wrap
		 * (HSM_USE_KEYWRAP) gives them CKA_WRAP. */
		o = raw_find(&r, "kek", CKO_PUBLIC_KEY);
		ok = o != CK_INVALID_HANDLE && raw_bool(&r, o, CKA_WRAP) == 0
		    && raw_bool(&r, o, CKA_PRIVATE) == 1
		    && raw_bool(&r, o, CKA_ENCRYPT) == 0
		    && raw_bool(&r, o, CKA_VERIFY) == 0
		    && raw_bool(&r, o, CKA_VERIFY_RECOVER) == 0;
	}
	raw_close(&r);
	KBT_ASSERT(ok);
}

static void
test_probe(void)
{
	struct hsm *h = fixture();
	const char *alg = NULL;
	uint8_t in[32] = {0}, *out = NULL;
	size_t out_len = 0;
	enum kb_err e;

	KBT_ASSERT(ensure_key(h, "kek", HSM_USE_UNWRAP));
	KBT_ASSERT_OK(hsm_oaep_probe(h, "enc", &alg));
	/* SoftHSMv2 2.6.1 accepts only SHA-1 with MGF1-SHA-1. */
	KBT_ASSERT_STR(alg, HSM_ALG_OAEP_SHA1);
	printf("  probe: %s\n", alg);
	e = hsm_encrypt(
	    h, "enc", HSM_ALG_OAEP_SHA256, in, sizeof(in), &out, &out_len);
	if (e != KB_OK)
		printf("  SHA-256: %s\n", kb_err_msg(e));
	free(out);
	KBT_ASSERT_ERR(hsm_oaep_probe(h, "nothing", &alg), KB_ERR_NOT_FOUND);
	/* An unwrap-only key cannot encrypt with either. */
	e = hsm_oaep_probe(h, "kek", &alg);
	KBT_ASSERT_ERR(e, KB_ERR_HSM);
	KBT_ASSERT_CONTAINS(kb_err_msg(e), "CKR_KEY_FUNCTION_NOT_PERMITTED");
}

static void
test_roundtrip(void)
{
	struct hsm *h = fixture();
	uint8_t dek[32], *ct = NULL, *pt = NULL;
	size_t ct_len = 0, pt_len = 0;

	KBT_ASSERT_OK(hsm_random(h, dek, sizeof(dek)));
	KBT_ASSERT_OK(
	    hsm_encrypt(h, "enc", fx_alg, dek, sizeof(dek), &ct, &ct_len));
	KBT_ASSERT_INT(ct_len, ==, 256);
	KBT_ASSERT_OK(hsm_decrypt(h, "enc", fx_alg, ct, ct_len, &pt, &pt_len));
	KBT_ASSERT_INT(pt_len, ==, sizeof(dek));
	KBT_ASSERT(memcmp(pt, dek, sizeof(dek)) == 0);
	kb_freezero(pt, pt_len);
	free(ct);
}

static void
test_corrupt(void)
{
	struct hsm *h = fixture();
	uint8_t dek[32] = {7}, *ct = NULL, *pt = NULL;
	size_t ct_len = 0, pt_len = 0;
	enum kb_err e;

	KBT_ASSERT_OK(
	    hsm_encrypt(h, "enc", fx_alg, dek, sizeof(dek), &ct, &ct_len));
	ct[100] ^= 0x01;
	e = hsm_decrypt(h, "enc", fx_alg, ct, ct_len, &pt, &pt_len);
	KBT_ASSERT(pt == NULL);
	KBT_ASSERT_ERR(e, KB_ERR_CORRUPT);
	/* SoftHSMv2 2.6.1 says CKR_GENERAL_ERROR, others
	 * CKR_ENCRYPTED_DATA_INVALID. */
	KBT_ASSERT_CONTAINS(kb_err_msg(e), "C_Decrypt: CKR_");
	printf("  flipped bit: %s\n", kb_err_msg(e));
	ct[100] ^= 0x01;
	e = hsm_decrypt(h, "enc", fx_alg, ct, ct_len - 1, &pt, &pt_len);
	printf("  one byte short: %s\n", kb_err_msg(e));
	KBT_ASSERT_ERR(e, KB_ERR_CORRUPT);
	/* The session pool is still healthy afterwards. */
	KBT_ASSERT_OK(hsm_decrypt(h, "enc", fx_alg, ct, ct_len, &pt, &pt_len));
	KBT_ASSERT(pt_len == sizeof(dek) && memcmp(pt, dek, pt_len) == 0);
	kb_freezero(pt, pt_len);
	free(ct);
}

static void
test_random(void)
{
	struct hsm *h = fixture();
	uint8_t a[32], b[32], zero[32] = {0};

	KBT_ASSERT_OK(hsm_random(h, a, sizeof(a)));
	KBT_ASSERT_OK(hsm_random(h, b, sizeof(b)));
	KBT_ASSERT(memcmp(a, b, sizeof(a)) != 0);
	KBT_ASSERT(memcmp(a, zero, sizeof(a)) != 0);
	KBT_ASSERT_OK(hsm_random(h, a, 0));
}

static void
test_public_der(void)
{
	struct hsm *h = fixture();
	EVP_PKEY *pk = pub_from_hsm(h, "enc");
	uint8_t *der = NULL;
	size_t len = 0;
	int bits = pk != NULL ? EVP_PKEY_get_bits(pk) : 0;
	int rsa = pk != NULL && EVP_PKEY_is_a(pk, "RSA");

	EVP_PKEY_free(pk);
	KBT_ASSERT(rsa);
	KBT_ASSERT_INT(bits, ==, 2048);
	KBT_ASSERT_ERR(
	    hsm_public_key_der(h, "nothing", &der, &len), KB_ERR_NOT_FOUND);
	KBT_ASSERT(der == NULL);
}

static void
test_import(void)
{
	struct hsm *h = fixture();
	EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	EVP_PKEY *pub = NULL;
	uint8_t dek[32], ct[256], *pt = NULL;
	size_t ct_len = sizeof(ct), pt_len = 0;
	int same, enc;
	enum kb_err e;

	KBT_ASSERT(key != NULL);
	e = hsm_rsa_import(h, "imp", key, HSM_USE_ENCRYPT);
	if (e != KB_OK) {
		EVP_PKEY_free(key);
		KBT_FAIL("import: %s", kb_err_msg(e));
	}
	e = hsm_rsa_import(h, "imp", key, HSM_USE_ENCRYPT);
	pub = pub_from_hsm(h, "imp");
	same = pub != NULL && same_public(pub, key);
	RAND_bytes(dek, sizeof(dek));
	enc = pub != NULL && ossl_oaep_sha1(pub, dek, sizeof(dek), ct, &ct_len);
	EVP_PKEY_free(key);
	EVP_PKEY_free(pub);
	KBT_ASSERT_ERR(e, KB_ERR_ALREADY_EXISTS);
	KBT_ASSERT(same);
	KBT_ASSERT(enc);
	KBT_ASSERT_OK(
	    hsm_decrypt(h, "imp", HSM_ALG_OAEP_SHA1, ct, ct_len, &pt, &pt_len));
	KBT_ASSERT(pt_len == sizeof(dek) && memcmp(pt, dek, pt_len) == 0);
	kb_freezero(pt, pt_len);
}

static void
test_destroy(void)
{
	struct hsm *h = fixture();
	uint8_t dek[32] = {1}, *ct = NULL, *pt = NULL;
	size_t ct_len = 0, pt_len = 0;
	struct raw r;
	int ok;

	/* Through hsm/: the cache entry goes with the key. */
	KBT_ASSERT(ensure_key(h, "imp", HSM_USE_ENCRYPT));
	KBT_ASSERT_OK(
	    hsm_encrypt(h, "imp", fx_alg, dek, sizeof(dek), &ct, &ct_len));
	KBT_ASSERT_OK(hsm_decrypt(h, "imp", fx_alg, ct, ct_len, &pt, &pt_len));
	kb_freezero(pt, pt_len);
	pt = NULL;
	KBT_ASSERT_OK(hsm_key_destroy(h, "imp"));
	KBT_ASSERT_ERR(hsm_key_exists(h, "imp"), KB_ERR_NOT_FOUND);
	KBT_ASSERT_ERR(hsm_decrypt(h, "imp", fx_alg, ct, ct_len, &pt, &pt_len),
	    KB_ERR_NOT_FOUND);
	free(ct);
	ct = NULL;

	/* Behind hsm/'s back: the cached handle goes stale. */
	KBT_ASSERT_OK(hsm_rsa_generate(h, "gone", 2048, HSM_USE_ENCRYPT));
	KBT_ASSERT_OK(
	    hsm_encrypt(h, "gone", fx_alg, dek, sizeof(dek), &ct, &ct_len));
	KBT_ASSERT_OK(hsm_decrypt(h, "gone", fx_alg, ct, ct_len, &pt, &pt_len));
	kb_freezero(pt, pt_len);
	pt = NULL;
	ok = raw_open(&r)
	    && r.m->C_DestroyObject(r.s, raw_find(&r, "gone", CKO_PRIVATE_KEY))
	        == CKR_OK
	    && r.m->C_DestroyObject(r.s, raw_find(&r, "gone", CKO_PUBLIC_KEY))
	        == CKR_OK;
	raw_close(&r);
	KBT_ASSERT(ok);
	KBT_ASSERT_ERR(hsm_decrypt(h, "gone", fx_alg, ct, ct_len, &pt, &pt_len),
	    KB_ERR_NOT_FOUND);
	KBT_ASSERT_ERR(
	    hsm_encrypt(h, "gone", fx_alg, dek, sizeof(dek), &pt, &pt_len),
	    KB_ERR_NOT_FOUND);
	free(ct);
}

static void
test_sign(void)
{
	struct hsm *h = fixture();
	static const uint8_t msg[] = "audit checkpoint 42";
	uint8_t *sig = NULL;
	size_t sig_len = 0;
	EVP_PKEY *pub = NULL;
	EVP_MD_CTX *md = NULL;
	int good = 0, bad = 1;
	enum kb_err e;

	KBT_ASSERT_OK(hsm_rsa_generate(h, "sig", 2048, HSM_USE_SIGN));
	KBT_ASSERT_OK(hsm_sign(h, "sig", msg, sizeof(msg), &sig, &sig_len));
	KBT_ASSERT_INT(sig_len, ==, 256);
	pub = pub_from_hsm(h, "sig");
	if (pub != NULL && (md = EVP_MD_CTX_new()) != NULL
	    && EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pub) == 1) {
		good = EVP_DigestVerify(md, sig, sig_len, msg, sizeof(msg));
		EVP_MD_CTX_free(md);
		md = EVP_MD_CTX_new();
		EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pub);
		bad = EVP_DigestVerify(md, sig, sig_len, msg, sizeof(msg) - 1);
	}
	ERR_clear_error();
	EVP_MD_CTX_free(md);
	EVP_PKEY_free(pub);
	free(sig);
	KBT_ASSERT_INT(good, ==, 1);
	KBT_ASSERT(bad != 1);
	e = hsm_sign(h, "enc", msg, sizeof(msg), &sig, &sig_len);
	KBT_ASSERT_ERR(e, KB_ERR_HSM);
	KBT_ASSERT_CONTAINS(kb_err_msg(e), "C_SignInit");
}

/* The unwrapped key is as locked down as a generated one. */
static int
byok_attrs_ok(void)
{
	struct raw r;
	CK_OBJECT_HANDLE o;
	int ok = raw_open(&r);

	if (ok) {
		o = raw_find(&r, "byok1", CKO_PRIVATE_KEY);
		ok = o != CK_INVALID_HANDLE && raw_bool(&r, o, CKA_TOKEN) == 1
		    && raw_bool(&r, o, CKA_PRIVATE) == 1
		    && raw_bool(&r, o, CKA_SENSITIVE) == 1
		    && raw_bool(&r, o, CKA_EXTRACTABLE) == 0
		    && raw_bool(&r, o, CKA_DECRYPT) == 1
		    && raw_bool(&r, o, CKA_UNWRAP) == 0
		    && raw_bool(&r, o, CKA_SIGN) == 0;
	}
	if (ok) {
		o = raw_find(&r, "byok1", CKO_PUBLIC_KEY);
		ok = o != CK_INVALID_HANDLE && raw_bool(&r, o, CKA_TOKEN) == 1
		    && raw_bool(&r, o, CKA_ENCRYPT) == 1
		    && raw_bool(&r, o, CKA_WRAP) == 0;
	}
	raw_close(&r);
	return ok;
}

static void
test_byok(void)
{
	struct hsm *h = fixture();
	int have_kek = ensure_key(h, "kek", HSM_USE_UNWRAP);
	EVP_PKEY *kek = have_kek ? pub_from_hsm(h, "kek") : NULL;
	EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	EVP_PKEY *pub = NULL;
	uint8_t *blob = NULL, dek[32], ct[256], *pt = NULL;
	size_t blob_len = 0, ct_len = sizeof(ct), pt_len = 0;
	int built, same = 0, enc = 0;
	enum kb_err e = KB_ERR_INTERNAL;

	built = kek != NULL && key != NULL
	    && byok_build(kek, key, &blob, &blob_len);
	if (built) {
		e = hsm_byok_unwrap(h, "kek", HSM_ALG_OAEP_SHA1, blob, blob_len,
		    "byok1", 2048, HSM_USE_ENCRYPT);
		if (e != KB_OK)
			fprintf(
			    stderr, "  hsm_byok_unwrap: %s\n", kb_err_msg(e));
		pub = pub_from_hsm(h, "byok1");
		same = pub != NULL && same_public(pub, key);
		RAND_bytes(dek, sizeof(dek));
		enc = pub != NULL
		    && ossl_oaep_sha1(pub, dek, sizeof(dek), ct, &ct_len);
	}
	EVP_PKEY_free(kek);
	EVP_PKEY_free(key);
	EVP_PKEY_free(pub);
	KBT_ASSERT(built);
	if (e != KB_OK) {
		free(blob);
		KBT_FAIL("hsm_byok_unwrap: %s", kb_err_msg(e));
	}
	/* The same blob again: the id is taken. */
	e = hsm_byok_unwrap(h, "kek", HSM_ALG_OAEP_SHA1, blob, blob_len,
	    "byok1", 2048, HSM_USE_ENCRYPT);
	free(blob);
	KBT_ASSERT_ERR(e, KB_ERR_ALREADY_EXISTS);
	KBT_ASSERT(same);
	KBT_ASSERT(enc);
	KBT_ASSERT_OK(hsm_decrypt(
	    h, "byok1", HSM_ALG_OAEP_SHA1, ct, ct_len, &pt, &pt_len));
	KBT_ASSERT(pt_len == sizeof(dek) && memcmp(pt, dek, pt_len) == 0);
	kb_freezero(pt, pt_len);
	pt = NULL;
	/* And in the token both ways. */
	KBT_ASSERT_OK(hsm_oaep_probe(h, "byok1", &fx_alg));
	KBT_ASSERT_STR(fx_alg, HSM_ALG_OAEP_SHA1);
	KBT_ASSERT_OK(hsm_key_exists(h, "byok1"));
	KBT_ASSERT(byok_attrs_ok());
}

static void
test_byok_refused(void)
{
	struct hsm *h = fixture();
	int have_kek = ensure_key(h, "kek", HSM_USE_UNWRAP);
	EVP_PKEY *kek = have_kek ? pub_from_hsm(h, "kek") : NULL;
	EVP_PKEY *key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	EVP_PKEY *small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
	uint8_t *blob = NULL, *blob2 = NULL;
	size_t blob_len = 0, blob2_len = 0;
	int built;
	enum kb_err e1, e2, e3, e4, e5;

	built = kek != NULL && key != NULL && small != NULL
	    && byok_build(kek, key, &blob, &blob_len)
	    && byok_build(kek, small, &blob2, &blob2_len);
	EVP_PKEY_free(kek);
	EVP_PKEY_free(key);
	EVP_PKEY_free(small);
	if (!built) {
		free(blob);
		free(blob2);
		KBT_FAIL("building the .byok blobs failed");
	}

	/* A damaged RSA part, a damaged AES-KWP part, a truncated blob. */
	blob[10] ^= 0x40;
	e1 = hsm_byok_unwrap(h, "kek", HSM_ALG_OAEP_SHA1, blob, blob_len, "bad",
	    2048, HSM_USE_ENCRYPT);
	printf("  damaged RSA part: %s\n", kb_err_msg(e1));
	blob[10] ^= 0x40;
	blob[300] ^= 0x01;
	e2 = hsm_byok_unwrap(h, "kek", HSM_ALG_OAEP_SHA1, blob, blob_len, "bad",
	    2048, HSM_USE_ENCRYPT);
	printf("  damaged AES-KWP part: %s\n", kb_err_msg(e2));
	blob[300] ^= 0x01;
	e3 = hsm_byok_unwrap(h, "kek", HSM_ALG_OAEP_SHA1, blob, 200, "bad",
	    2048, HSM_USE_ENCRYPT);
	/* The wrong key-exchange key (it cannot unwrap at all). */
	e4 = hsm_byok_unwrap(h, "enc", HSM_ALG_OAEP_SHA1, blob, blob_len, "bad",
	    2048, HSM_USE_ENCRYPT);
	e5 = hsm_byok_unwrap(h, "kek", HSM_ALG_OAEP_SHA1, blob2, blob2_len,
	    "small", 2048, HSM_USE_ENCRYPT);
	printf("  RSA-1024: %s\n", kb_err_msg(e5));
	free(blob);
	free(blob2);
	KBT_ASSERT_ERR(e1, KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_ERR(e2, KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_ERR(e3, KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT(e4 != KB_OK);
	KBT_ASSERT_ERR(e5, KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_CONTAINS(kb_err_msg(e5), "RSA-1024, need RSA-2048");
	/* Nothing was left behind. */
	KBT_ASSERT_ERR(hsm_key_exists(h, "bad"), KB_ERR_NOT_FOUND);
	KBT_ASSERT_ERR(hsm_key_exists(h, "small"), KB_ERR_NOT_FOUND);
	KBT_ASSERT_ERR(
	    hsm_public_key_der(h, "small", &blob, &blob_len), KB_ERR_NOT_FOUND);
}

/* ---- recovery and concurrency ---- */

static void
test_recover(void)
{
	struct hsm *h = fixture();
	uint8_t dek[32] = {9}, *ct = NULL, *pt = NULL;
	size_t ct_len = 0, pt_len = 0;
	struct raw r;
	CK_SESSION_INFO si;
	int shared;
	enum kb_err e;

	KBT_ASSERT_OK(
	    hsm_encrypt(h, "enc", fx_alg, dek, sizeof(dek), &ct, &ct_len));
	KBT_ASSERT_OK(hsm_decrypt(h, "enc", fx_alg, ct, ct_len, &pt, &pt_len));
	kb_freezero(pt, pt_len);
	pt = NULL;
	/* Log the application out under hsm/'s feet: every pooled session
	 * loses its login and the private handles go. */
	shared = raw_open(&r) && r.m->C_Logout(r.s) == CKR_OK
	    && r.m->C_GetSessionInfo(r.s, &si) == CKR_OK
	    && si.state == CKS_RW_PUBLIC_SESSION;
	raw_close(&r);
	KBT_ASSERT(shared);
	e = hsm_decrypt(h, "enc", fx_alg, ct, ct_len, &pt, &pt_len);
	KBT_ASSERT_OK(e);
	KBT_ASSERT(pt_len == sizeof(dek) && memcmp(pt, dek, pt_len) == 0);
	kb_freezero(pt, pt_len);
	free(ct);
	KBT_ASSERT_OK(hsm_check(h));
}

struct worker {
	struct hsm *h;
	const uint8_t *ct;
	size_t ct_len;
	const uint8_t *dek;
	int ok;
};

static void *
worker_run(void *arg)
{
	struct worker *w = arg;
	uint8_t *pt;
	size_t pt_len;
	int i;

	for (i = 0; i < 200; i++) {
		pt = NULL;
		if (hsm_decrypt(
		        w->h, "enc", fx_alg, w->ct, w->ct_len, &pt, &pt_len)
		        == KB_OK
		    && pt_len == 32 && memcmp(pt, w->dek, 32) == 0)
			w->ok++;
		else
			fprintf(stderr, "  worker: %s\n",
			    kb_err_msg(KB_ERR_INTERNAL));
		kb_freezero(pt, pt_len);
	}
	return NULL;
}

static void
test_concurrency(void)
{
	struct hsm *h = fixture();
	uint8_t dek[32], *ct = NULL;
	size_t ct_len = 0;
	struct worker w[4];
	pthread_t t[4];
	int i, total = 0;

	KBT_ASSERT_OK(hsm_random(h, dek, sizeof(dek)));
	KBT_ASSERT_OK(
	    hsm_encrypt(h, "enc", fx_alg, dek, sizeof(dek), &ct, &ct_len));
	for (i = 0; i < 4; i++) {
		w[i] = (struct worker){h, ct, ct_len, dek, 0};
		pthread_create(&t[i], NULL, worker_run, &w[i]);
	}
	for (i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		total += w[i].ok;
	}
	free(ct);
	KBT_ASSERT_INT(total, ==, 800);
	KBT_ASSERT_OK(hsm_check(h));
}

/* ---- AES keys: platform key, KEKs, GCM ---- */

static void
test_aes_gcm(void)
{
	struct hsm *h = fixture();
	static const uint8_t aad[] = "row: tenant a, env 1, version 1";
	static const uint8_t aad2[] = "row: tenant a, env 2, version 1";
	uint8_t pt[32], *ct = NULL, *out = NULL;
	size_t ct_len = 0, out_len = 0;
	struct raw r;
	CK_OBJECT_HANDLE o;

	memset(pt, 0x5a, sizeof(pt));
	KBT_ASSERT_OK(hsm_aes_generate(h, "aes1", "kb:test"));
	KBT_ASSERT_ERR(
	    hsm_aes_generate(h, "aes1", "kb:test"), KB_ERR_ALREADY_EXISTS);
	KBT_ASSERT_OK(hsm_secret_exists(h, "aes1", "kb:test"));
	/* Found only with its label: another purpose's lookup misses it. */
	KBT_ASSERT_ERR(
	    hsm_secret_exists(h, "aes1", "kb:other"), KB_ERR_NOT_FOUND);
	KBT_ASSERT_OK(hsm_gcm_seal(h, "aes1", "kb:test", aad, sizeof(aad), pt,
	    sizeof(pt), &ct, &ct_len));
	KBT_ASSERT(ct_len == HSM_GCM_IV_LEN + sizeof(pt) + HSM_GCM_TAG_LEN);
	KBT_ASSERT_OK(hsm_gcm_open(h, "aes1", "kb:test", aad, sizeof(aad), ct,
	    ct_len, &out, &out_len));
	KBT_ASSERT(out_len == sizeof(pt) && memcmp(out, pt, sizeof(pt)) == 0);
	kb_freezero(out, out_len);
	out = NULL;
	/* Moved to another row (other AAD), edited, or under another key. */
	KBT_ASSERT_ERR(hsm_gcm_open(h, "aes1", "kb:test", aad2, sizeof(aad2),
	                   ct, ct_len, &out, &out_len),
	    KB_ERR_CORRUPT);
	ct[HSM_GCM_IV_LEN + 3] ^= 1;
	KBT_ASSERT_ERR(hsm_gcm_open(h, "aes1", "kb:test", aad, sizeof(aad), ct,
	                   ct_len, &out, &out_len),
	    KB_ERR_CORRUPT);
	ct[HSM_GCM_IV_LEN + 3] ^= 1;
	KBT_ASSERT_ERR(hsm_gcm_open(h, "aes1", "kb:test", aad, sizeof(aad), ct,
	                   10, &out, &out_len),
	    KB_ERR_CORRUPT);
	KBT_ASSERT_OK(hsm_aes_generate(h, "aes2", "kb:test"));
	KBT_ASSERT_ERR(hsm_gcm_open(h, "aes2", "kb:test", aad, sizeof(aad), ct,
	                   ct_len, &out, &out_len),
	    KB_ERR_CORRUPT);
	/* The token object: private, sensitive, never extractable. */
	KBT_ASSERT(raw_open(&r));
	o = raw_find(&r, "aes1", CKO_SECRET_KEY);
	KBT_ASSERT(o != CK_INVALID_HANDLE);
	KBT_ASSERT(raw_bool(&r, o, CKA_PRIVATE) == 1);
	KBT_ASSERT(raw_bool(&r, o, CKA_SENSITIVE) == 1);
	KBT_ASSERT(raw_bool(&r, o, CKA_EXTRACTABLE) == 0);
	raw_close(&r);
	KBT_ASSERT_OK(hsm_key_destroy(h, "aes1"));
	KBT_ASSERT_ERR(
	    hsm_secret_exists(h, "aes1", "kb:test"), KB_ERR_NOT_FOUND);
	KBT_ASSERT_ERR(hsm_gcm_open(h, "aes1", "kb:test", aad, sizeof(aad), ct,
	                   ct_len, &out, &out_len),
	    KB_ERR_NOT_FOUND);
	KBT_ASSERT_ERR(hsm_key_destroy(h, "aes1"), KB_ERR_NOT_FOUND);
	free(ct);
}

static void
test_kek(void)
{
	struct hsm *h = fixture();
	static const uint8_t aad[] = "aad";
	uint8_t *w = NULL, *ct = NULL, *out = NULL, pt[32];
	size_t wl = 0, ct_len = 0, out_len = 0;
	struct raw r;
	CK_OBJECT_HANDLE o;

	memset(pt, 7, sizeof(pt));
	KBT_ASSERT(ensure_key(h, "tk1", HSM_USE_KEYWRAP));
	KBT_ASSERT(ensure_key(h, "tk2", HSM_USE_KEYWRAP));
	KBT_ASSERT_OK(
	    hsm_kek_create(h, "tk1", fx_alg, "kek1", "kb:kek:t", &w, &wl));
	KBT_ASSERT(wl == 256);
	KBT_ASSERT_OK(hsm_gcm_seal(h, "kek1", "kb:kek:t", aad, sizeof(aad), pt,
	    sizeof(pt), &ct, &ct_len));
	KBT_ASSERT(raw_open(&r));
	o = raw_find(&r, "kek1", CKO_SECRET_KEY);
	KBT_ASSERT(o != CK_INVALID_HANDLE
	    && raw_bool(&r, o, CKA_EXTRACTABLE) == 0
	    && raw_bool(&r, o, CKA_TOKEN) == 1);
	raw_close(&r);
	/* Lock: the object goes; unlock: the same key brings it back. */
	KBT_ASSERT_OK(hsm_key_destroy(h, "kek1"));
	KBT_ASSERT_ERR(
	    hsm_secret_exists(h, "kek1", "kb:kek:t"), KB_ERR_NOT_FOUND);
	KBT_ASSERT_ERR(
	    hsm_kek_unwrap(h, "tk2", fx_alg, w, wl, "kek1", "kb:kek:t"),
	    KB_ERR_CORRUPT);
	KBT_ASSERT_OK(
	    hsm_kek_unwrap(h, "tk1", fx_alg, w, wl, "kek1", "kb:kek:t"));
	KBT_ASSERT_ERR(
	    hsm_kek_unwrap(h, "tk1", fx_alg, w, wl, "kek1", "kb:kek:t"),
	    KB_ERR_ALREADY_EXISTS);
	KBT_ASSERT_OK(hsm_gcm_open(h, "kek1", "kb:kek:t", aad, sizeof(aad), ct,
	    ct_len, &out, &out_len));
	KBT_ASSERT(out_len == 32 && memcmp(out, pt, 32) == 0);
	kb_freezero(out, out_len);
	/* A key without the key-wrap use cannot wrap one. */
	KBT_ASSERT(
	    hsm_kek_create(h, "enc", fx_alg, "kek2", "kb:kek:t", &out, &out_len)
	    != KB_OK);
	KBT_ASSERT_ERR(
	    hsm_secret_exists(h, "kek2", "kb:kek:t"), KB_ERR_NOT_FOUND);
	free(w);
	free(ct);
}

/* A public object made by a session without the PIN (CKA_PRIVATE false)
 * with the id of one of ours is never used, and the upgrade destroys it
 * and makes a private public half from the private key's own numbers. */
static void
test_planted_public(void)
{
	struct hsm *h = fixture();
	EVP_PKEY *before, *after;
	struct raw r;
	CK_OBJECT_HANDLE o;
	CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
	CK_KEY_TYPE kt = CKK_RSA;
	CK_BBOOL t = CK_TRUE, f = CK_FALSE;
	uint8_t n[256], e3[3] = {1, 0, 1};
	CK_ATTRIBUTE tmpl[] = {
	    {CKA_CLASS, &cls, sizeof(cls)},
	    {CKA_KEY_TYPE, &kt, sizeof(kt)},
	    {CKA_TOKEN, &t, sizeof(t)},
	    {CKA_PRIVATE, &f, sizeof(f)},
	    {CKA_ID, (void *)"up1", 3},
	    {CKA_ENCRYPT, &t, sizeof(t)},
	    {CKA_WRAP, &t, sizeof(t)},
	    {CKA_MODULUS, n, sizeof(n)},
	    {CKA_PUBLIC_EXPONENT, e3, sizeof(e3)},
	};
	int changed = 0;

	memset(n, 0xc3, sizeof(n));
	KBT_ASSERT(ensure_key(h, "up1", HSM_USE_ENCRYPT));
	KBT_ASSERT((before = pub_from_hsm(h, "up1")) != NULL);
	KBT_ASSERT(raw_open(&r));
	/* Replace our public half with the attacker's, as a session without
	 * the PIN can (the object is not private). */
	while ((o = raw_find(&r, "up1", CKO_PUBLIC_KEY)) != CK_INVALID_HANDLE)
		KBT_ASSERT(r.m->C_DestroyObject(r.s, o) == CKR_OK);
	KBT_ASSERT(r.m->C_CreateObject(r.s, tmpl, 9, &o) == CKR_OK);
	/* Not found, not used: the public key read comes from the private. */
	KBT_ASSERT((after = pub_from_hsm(h, "up1")) != NULL);
	KBT_ASSERT(same_public(before, after));
	EVP_PKEY_free(after);
	KBT_ASSERT_OK(hsm_rsa_upgrade(h, "up1", HSM_USE_KEYWRAP, &changed));
	KBT_ASSERT(changed);
	o = raw_find(&r, "up1", CKO_PUBLIC_KEY);
	KBT_ASSERT(o != CK_INVALID_HANDLE && raw_bool(&r, o, CKA_PRIVATE) == 1);
	o = raw_find(&r, "up1", CKO_PRIVATE_KEY);
	KBT_ASSERT(raw_bool(&r, o, CKA_UNWRAP) == 1);
	KBT_ASSERT(raw_bool(&r, o, CKA_DECRYPT) == 0);
	raw_close(&r);
	KBT_ASSERT((after = pub_from_hsm(h, "up1")) != NULL);
	KBT_ASSERT(same_public(before, after));
	KBT_ASSERT_OK(hsm_rsa_upgrade(h, "up1", HSM_USE_KEYWRAP, &changed));
	KBT_ASSERT(!changed);
	EVP_PKEY_free(before);
	EVP_PKEY_free(after);
}

/* The audit anchor's kind of object: a private data object, rewritten in
 * place; a public one with the same label (as a session without the PIN
 * could plant) is never read. */
static void
test_data(void)
{
	struct hsm *h = fixture();
	struct raw r;
	CK_OBJECT_CLASS cls = CKO_DATA;
	CK_BBOOL t = CK_TRUE, f = CK_FALSE;
	CK_ATTRIBUTE tmpl[] = {
	    {CKA_CLASS, &cls, sizeof(cls)},
	    {CKA_TOKEN, &t, sizeof(t)},
	    {CKA_PRIVATE, &f, sizeof(f)},
	    {CKA_APPLICATION, (void *)"keybroker", 9},
	    {CKA_LABEL, (void *)"kb:test-data", 12},
	    {CKA_VALUE,
	        (void *)"kbd1\xff\xff\xff\xff\xff\xff\xff\xff"
	                "forged",
	        18},
	};
	CK_OBJECT_HANDLE o;
	uint8_t *v = NULL;
	size_t n = 0;

	KBT_ASSERT(
	    hsm_data_read(h, "kb:test-data", &v, &n) == KB_ERR_NOT_FOUND);
	kb_err_clear();
	KBT_ASSERT_OK(
	    hsm_data_write(h, "kb:test-data", (const uint8_t *)"one", 3));
	KBT_ASSERT_OK(hsm_data_read(h, "kb:test-data", &v, &n));
	KBT_ASSERT(n == 3 && memcmp(v, "one", 3) == 0);
	free(v);
	KBT_ASSERT_OK(
	    hsm_data_write(h, "kb:test-data", (const uint8_t *)"second", 6));
	KBT_ASSERT_OK(hsm_data_read(h, "kb:test-data", &v, &n));
	KBT_ASSERT(n == 6 && memcmp(v, "second", 6) == 0);
	free(v);
	KBT_ASSERT(raw_open(&r));
	KBT_ASSERT(r.m->C_CreateObject(r.s, tmpl, 6, &o) == CKR_OK);
	raw_close(&r);
	KBT_ASSERT_OK(hsm_data_read(h, "kb:test-data", &v, &n));
	KBT_ASSERT(n == 6 && memcmp(v, "second", 6) == 0);
	free(v);
	KBT_ASSERT(hsm_data_write(h, "", (const uint8_t *)"x", 1)
	    == KB_ERR_INVALID_ARGUMENT);
	kb_err_clear();
}

static const struct kbt_case cases[] = {
    /* These need no other handle open on the module: keep them first. */
    {"/hsm/open-close", test_open_close},
    {"/hsm/wrong-pin", test_wrong_pin},
    {"/hsm/pin-mode", test_pin_mode},
    {"/hsm/uri-no-match", test_uri},
    {"/hsm/module-missing", test_module_missing},
    {"/hsm/bad-args", test_bad_args},
    {"/hsm/generate", test_generate},
    {"/hsm/attributes", test_attributes},
    {"/hsm/probe", test_probe},
    {"/hsm/roundtrip", test_roundtrip},
    {"/hsm/corrupt", test_corrupt},
    {"/hsm/random", test_random},
    {"/hsm/public-der", test_public_der},
    {"/hsm/import", test_import},
    {"/hsm/destroy", test_destroy},
    {"/hsm/sign", test_sign},
    {"/hsm/byok", test_byok},
    {"/hsm/byok-refused", test_byok_refused},
    {"/hsm/recover", test_recover},
    {"/hsm/concurrency", test_concurrency},
    {"/hsm/aes-gcm", test_aes_gcm},
    {"/hsm/kek", test_kek},
    {"/hsm/planted-public", test_planted_public},
    {"/hsm/data", test_data},
    {NULL, NULL},
};

int
main(int argc, char **argv)
{
	int rc = kbt_run(cases, argc, argv);

	if (fx != NULL) {
		hsm_close(fx);
		kbt_rmtree(fx_dir);
	}
	return rc;
}
