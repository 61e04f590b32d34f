/* SPDX-License-Identifier: Apache-2.0 */
/* test-pfx.c: pfx.c and fingerprint.c against the .pfx fixtures of
 * tests/data (made by tests/data/make-fixtures.sh with openssl, keytool,
 * certtool; see tests/data/README.md), a real SoftHSMv2 token, and a
 * deterministic bit-flip and truncation loop (OpenSSH test_helper/fuzz.c). */
#include "harness.h"

#include <errno.h>
#include <pthread.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/x509.h>

#include "fingerprint.h"
#include "hsm.h"
#include "kb_secmem.h"
#include "pfx.h"

/* ---- fixtures ---- */

struct expected {
	char file[64];
	char pass[64];
	char fp[65];
};

/* A fresh RSA-2048 key pair in memory (the tests' own: production makes
 * keys only in the token). */
static enum kb_err
rsa_generate_2048(EVP_PKEY **out)
{
	if ((*out = EVP_RSA_gen(PFX_RSA_BITS)) == NULL)
		return kb_err_openssl(
		    KB_ERR_CRYPTO, "generating an RSA-2048 key");
	return KB_OK;
}

static struct expected accepted[16];
static size_t naccepted;

/* expected.txt: "file password spki-sha256" per accepted fixture. */
static void
load_expected(void)
{
	FILE *f;
	char line[512];
	struct expected *e;

	if (naccepted > 0)
		return;
	if ((f = fopen(kbt_data_path("expected.txt"), "r")) == NULL) {
		fprintf(
		    stderr, "cannot read %s\n", kbt_data_path("expected.txt"));
		exit(2);
	}
	while (fgets(line, sizeof(line), f) != NULL && naccepted < 16) {
		if (line[0] == '#' || line[0] == '\n')
			continue;
		e = &accepted[naccepted];
		if (sscanf(line, "%63s %63s %64s", e->file, e->pass, e->fp)
		    == 3)
			naccepted++;
	}
	fclose(f);
}

static const struct expected *
expected_for(const char *file)
{
	size_t i;

	load_expected();
	for (i = 0; i < naccepted; i++)
		if (strcmp(accepted[i].file, file) == 0)
			return &accepted[i];
	fprintf(stderr, "expected.txt has no line for %s\n", file);
	exit(2);
}

/* ---- accepted files ---- */

static int
accept_file(const char *file)
{
	const struct expected *e = expected_for(file);
	EVP_PKEY *key = (EVP_PKEY *)1;
	uint8_t *der;
	size_t len;
	char fp[65];
	enum kb_err r;
	int ok;

	der = kbt_data_load(file, &len);
	r = pfx_parse(der, len, e->pass, &key);
	free(der);
	if (r != KB_OK) {
		fprintf(stderr, "  %s: %s\n", file, kb_err_msg(r));
		return 0;
	}
	ok = EVP_PKEY_is_a(key, "RSA") && EVP_PKEY_get_bits(key) == 2048
	    && fingerprint_pkey(key, fp) == KB_OK && strcmp(fp, e->fp) == 0;
	if (!ok)
		fprintf(
		    stderr, "  %s: fingerprint %s, want %s\n", file, fp, e->fp);
	EVP_PKEY_free(key);
	return ok;
}

static void
test_openssl_modern(void)
{
	KBT_ASSERT(accept_file("openssl-modern.pfx"));
}
static void
test_openssl_legacy(void)
{
	KBT_ASSERT(accept_file("openssl-legacy.pfx"));
}
static void
test_windows_style(void)
{
	KBT_ASSERT(accept_file("windows-style.pfx"));
}
static void
test_keytool(void)
{
	KBT_ASSERT(accept_file("keytool.pfx"));
}
static void
test_keytool_legacy(void)
{
	KBT_ASSERT(accept_file("keytool-legacy.pfx"));
}
static void
test_certtool(void)
{
	KBT_ASSERT(accept_file("certtool.pfx"));
}
static void
test_with_chain(void)
{
	KBT_ASSERT(accept_file("with-chain.pfx"));
}

static void
test_expected_complete(void)
{
	static const char *const must[] = {"openssl-modern.pfx",
	    "openssl-legacy.pfx", "keytool.pfx", "certtool.pfx",
	    "windows-style.pfx"};
	size_t i;

	load_expected();
	KBT_ASSERT_INT(naccepted, >=, 5);
	for (i = 0; i < sizeof(must) / sizeof(must[0]); i++)
		KBT_ASSERT_INT(strlen(expected_for(must[i])->fp), ==, 64);
}

/* ---- refusals ---- */

/* pfx_parse on `buf` must fail with KB_ERR_INVALID_ARGUMENT and a message
 * containing `want`; returns 1 if so (prints why not otherwise). */
static int
refused_buf(const uint8_t *buf, size_t len, const char *pass, const char *want)
{
	EVP_PKEY *key = NULL;
	enum kb_err r;

	kb_err_clear();
	r = pfx_parse(buf, len, pass, &key);
	if (r == KB_ERR_INVALID_ARGUMENT && key == NULL
	    && strstr(kb_err_msg(r), want) != NULL)
		return 1;
	fprintf(stderr, "  want INVALID_ARGUMENT \"%s\", got %s: %s\n", want,
	    kb_strerror(r), kb_err_msg(r));
	EVP_PKEY_free(key);
	return 0;
}

static int
refused(const char *file, const char *pass, const char *want)
{
	size_t len;
	uint8_t *der = kbt_data_load(file, &len);
	int ok = refused_buf(der, len, pass, want);

	if (!ok)
		fprintf(stderr, "  (file %s)\n", file);
	free(der);
	return ok;
}

static void
test_refuse_ec(void)
{
	KBT_ASSERT(refused("ec.pfx", "refused-pass",
	    "the key in the .pfx is EC (prime256v1); keybroker needs "
	    "RSA-2048"));
}

static void
test_refuse_size(void)
{
	KBT_ASSERT(refused("rsa1024.pfx", "refused-pass",
	    "the key in the .pfx is RSA-1024; keybroker needs RSA-2048"));
	KBT_ASSERT(refused("rsa4096.pfx", "refused-pass",
	    "the key in the .pfx is RSA-4096; keybroker needs RSA-2048"));
}

static void
test_refuse_no_password(void)
{
	const char *want = "the .pfx has no password: tenant key files must be "
	                   "password protected";

	/* Whatever the caller types, an empty-password file is refused. */
	KBT_ASSERT(refused("nopass.pfx", "", want));
	KBT_ASSERT(refused("nopass.pfx", NULL, want));
	KBT_ASSERT(refused("nopass.pfx", "something", want));
	/* No MAC and nothing encrypted. */
	KBT_ASSERT(refused("unprotected.pfx", "", want));
	KBT_ASSERT(refused("unprotected.pfx", "something",
	    "the private key in the .pfx is not encrypted"));
	/* A MAC password, but the key bag itself in clear. */
	KBT_ASSERT(refused("cleartext-key.pfx", "refused-pass",
	    "the private key in the .pfx is not encrypted: tenant key files "
	    "must be password protected"));
}

static void
test_refuse_wrong_password(void)
{
	const char *want =
	    "wrong password for the .pfx (MAC verification failed)";

	KBT_ASSERT(refused("openssl-modern.pfx", "modern-pasS", want));
	KBT_ASSERT(refused("openssl-legacy.pfx", "x", want));
	KBT_ASSERT(refused("windows-style.pfx", "windows-3des", want));
	KBT_ASSERT(refused("keytool.pfx", "keytool-pass ", want));
	KBT_ASSERT(refused(
	    "openssl-modern.pfx", "", "no password was given for the .pfx"));
	KBT_ASSERT(refused(
	    "openssl-modern.pfx", NULL, "no password was given for the .pfx"));
}

static void
test_refuse_two_keys(void)
{
	KBT_ASSERT(refused("twokeys.pfx", "refused-pass",
	    "the .pfx holds 2 private keys; upload one key per file"));
}

static void
test_refuse_no_key(void)
{
	KBT_ASSERT(refused("nokey.pfx", "refused-pass",
	    "the .pfx holds no private key (1 certificate only)"));
}

static void
test_refuse_mismatch(void)
{
	KBT_ASSERT(refused("mismatch.pfx", "refused-pass",
	    "the certificate in the .pfx (CN=keybroker test tenant b) does not "
	    "belong to its private key"));
}

static void
test_refuse_damaged(void)
{
	const char *want = "the file is not a valid PKCS#12 (.pfx) file: ";
	size_t len, plen;
	uint8_t *der = kbt_data_load("openssl-modern.pfx", &len), *big, *pem;

	/* Truncated, at the start, in the middle and one byte short. */
	KBT_ASSERT(refused_buf(der, 1, "modern-pass", want));
	KBT_ASSERT(refused_buf(der, 100, "modern-pass", want));
	KBT_ASSERT(refused_buf(der, len / 2, "modern-pass", want));
	KBT_ASSERT(refused_buf(der, len - 1, "modern-pass", want));
	/* Not DER at all: a PEM public key. */
	pem = kbt_data_load("kek-pub.pem", &plen);
	KBT_ASSERT(refused_buf(pem, plen, "x", want));
	free(pem);
	/* Trailing bytes after a valid file. */
	big = malloc(len + 3);
	KBT_ASSERT(big != NULL);
	memcpy(big, der, len);
	memcpy(big + len, "\0\0\n", 3);
	KBT_ASSERT(
	    refused_buf(big, len + 3, "modern-pass", "3 bytes follow its end"));
	free(big);
	/* A flipped bit in the encrypted contents: the MAC catches it (and
	 * cannot tell damage from a wrong password). */
	der[len / 2] ^= 0x10;
	KBT_ASSERT(
	    refused_buf(der, len, "modern-pass", "MAC verification failed"));
	free(der);
}

static void
test_refuse_size_limits(void)
{
	uint8_t *big = calloc(1, PFX_MAX_BYTES + 1);
	EVP_PKEY *key = NULL;

	KBT_ASSERT(big != NULL);
	big[0] = 0x30;
	KBT_ASSERT(refused_buf(big, PFX_MAX_BYTES + 1, "x",
	    "the .pfx file is 65537 bytes; keybroker accepts at most 65536"));
	free(big);
	KBT_ASSERT(
	    refused_buf((const uint8_t *)"", 0, "x", "the .pfx file is empty"));
	KBT_ASSERT_ERR(pfx_parse(NULL, 10, "x", &key), KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT(key == NULL);
}

/* A file whose MAC or key asks for more password hashing than allowed is
 * refused before the work is done. */
static void
test_refuse_iterations(void)
{
	size_t len;
	uint8_t *der = kbt_data_load("openssl-modern.pfx", &len), *out = NULL;
	const unsigned char *p = der;
	PKCS12 *p12 = d2i_PKCS12(NULL, &p, (long)len);
	STACK_OF(PKCS7) *safes = NULL;
	STACK_OF(PKCS12_SAFEBAG) *bags = NULL;
	X509_ALGOR *alg;
	PKCS7 *p7;
	EVP_PKEY *key = NULL;
	int n, i;
	time_t t0 = time(NULL);

	free(der);
	KBT_ASSERT(p12 != NULL);
	/* The MAC: 5,000,000 iterations (never computed: refused first). */
	KBT_ASSERT(PKCS12_setup_mac(p12, 5000000, NULL, 8, EVP_sha256()) == 1);
	n = i2d_PKCS12(p12, &out);
	PKCS12_free(p12);
	KBT_ASSERT(n > 0);
	KBT_ASSERT(refused_buf(out, (size_t)n, "modern-pass",
	    "the .pfx's MAC asks for too many password-hashing iterations"));
	OPENSSL_free(out);
	out = NULL;

	/* Five encrypted safes claiming 900,000 iterations each (4.5 million
	 * in all): encrypted with 1 iteration, then the parameters swapped,
	 * so neither making nor refusing it runs the KDF at length. */
	KBT_ASSERT((safes = sk_PKCS7_new_null()) != NULL);
	for (i = 0; i < 5; i++) {
		KBT_ASSERT((bags = sk_PKCS12_SAFEBAG_new_null()) != NULL);
		p7 = PKCS12_pack_p7encdata(
		    NID_aes_256_cbc, "pw", -1, NULL, 0, 1, bags);
		sk_PKCS12_SAFEBAG_free(bags);
		KBT_ASSERT(p7 != NULL);
		alg = PKCS5_pbe2_set_iv(EVP_aes_256_cbc(), 900000, NULL, 0,
		    NULL, NID_hmacWithSHA256);
		KBT_ASSERT(alg != NULL);
		X509_ALGOR_free(p7->d.encrypted->enc_data->algorithm);
		p7->d.encrypted->enc_data->algorithm = alg;
		sk_PKCS7_push(safes, p7);
	}
	p12 = PKCS12_add_safes(safes, 0);
	sk_PKCS7_pop_free(safes, PKCS7_free);
	KBT_ASSERT(p12 != NULL);
	KBT_ASSERT(
	    PKCS12_set_mac(p12, "pw", -1, NULL, 0, 1, EVP_sha256()) == 1);
	n = i2d_PKCS12(p12, &out);
	PKCS12_free(p12);
	KBT_ASSERT(n > 0);
	KBT_ASSERT(refused_buf(
	    out, (size_t)n, "pw", "password-hashing iterations in all"));
	OPENSSL_free(out);
	KBT_ASSERT(key == NULL);
	KBT_ASSERT_INT(time(NULL) - t0, <, 3);
}

/* Passwords: not UTF-8 is refused by name; a file written by OpenSSL
 * before 1.1.0 with a non-ASCII password (each byte taken as one Latin-1
 * character) still opens with the password as typed. */
static void
test_password_encodings(void)
{
	const char *typed = "p\xc3\xa4ssword"; /* "pässword" in UTF-8 */
	const char *old_style =
	    "p\xc3\x83\xc2\xa4ssword"; /* its bytes as Latin-1 */
	EVP_PKEY *key = NULL, *back = NULL;
	X509 *cert = NULL;
	PKCS12 *p12 = NULL;
	unsigned char *der = NULL;
	char fp1[65], fp2[65];
	int n;

	KBT_ASSERT(refused("openssl-modern.pfx", "modern-\xff",
	    "the .pfx password is not valid UTF-8 text"));
	KBT_ASSERT(
	    refused("openssl-modern.pfx", "\xc0\xaf", "not valid UTF-8"));
	KBT_ASSERT(
	    refused("openssl-modern.pfx", "\xed\xa0\x80", "not valid UTF-8"));

	KBT_ASSERT_OK(rsa_generate_2048(&key));
	cert = X509_new();
	KBT_ASSERT(cert != NULL);
	X509_set_version(cert, X509_VERSION_3);
	X509_gmtime_adj(X509_getm_notBefore(cert), 0);
	X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
	X509_set_pubkey(cert, key);
	KBT_ASSERT(X509_sign(cert, key, EVP_sha256()) > 0);
	p12 = PKCS12_create(old_style, "old", key, cert, NULL,
	    NID_pbe_WithSHA1And3_Key_TripleDES_CBC,
	    NID_pbe_WithSHA1And3_Key_TripleDES_CBC, 2048, 2048, 0);
	X509_free(cert);
	KBT_ASSERT(p12 != NULL);
	n = i2d_PKCS12(p12, &der);
	PKCS12_free(p12);
	KBT_ASSERT(n > 0);
	KBT_ASSERT_OK(pfx_parse(der, (size_t)n, typed, &back));
	KBT_ASSERT_OK(fingerprint_pkey(key, fp1));
	KBT_ASSERT_OK(fingerprint_pkey(back, fp2));
	KBT_ASSERT_STR(fp1, fp2);
	EVP_PKEY_free(back);
	back = NULL;
	KBT_ASSERT(
	    refused_buf(der, (size_t)n, "p\xc3\xa4ssw0rd", "wrong password"));
	OPENSSL_free(der);
	EVP_PKEY_free(key);
}

/* ---- pfx_create ---- */

static double
now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int
write_file(const char *path, const void *buf, size_t len, mode_t mode)
{
	FILE *f = fopen(path, "wb");
	int ok;

	if (f == NULL)
		return 0;
	ok = fwrite(buf, 1, len, f) == len;
	ok = fclose(f) == 0 && ok;
	chmod(path, mode);
	return ok;
}

/* Run `cmd` and return its output (static buffer) or NULL on failure. */
static const char *
run(const char *cmd)
{
	static char out[8192];
	FILE *p = popen(cmd, "r");
	size_t n;

	if (p == NULL)
		return NULL;
	n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = '\0';
	return pclose(p) == 0 ? out : NULL;
}

static void
test_create_roundtrip(void)
{
	const char *name = "keybroker tenant key k-0123abcd";
	const char *pass = "generated pässword 1";
	const char *dir = kbt_tmpdir(), *info;
	EVP_PKEY *key = NULL, *back = NULL, *pk = NULL;
	uint8_t *der = NULL;
	size_t len = 0;
	char fp1[65], fp2[65], path[512], pwpath[512], cmd[2048], cn[128];
	double t0, t_create, t_parse;
	const unsigned char *p;
	PKCS12 *p12 = NULL;
	X509 *cert = NULL;
	int days = 0, secs = 0;

	KBT_ASSERT_OK(rsa_generate_2048(&key));
	KBT_ASSERT_INT(EVP_PKEY_get_bits(key), ==, 2048);
	t0 = now_s();
	KBT_ASSERT_OK(pfx_create(key, pass, name, &der, &len));
	t_create = now_s() - t0;
	t0 = now_s();
	KBT_ASSERT_OK(pfx_parse(der, len, pass, &back));
	t_parse = now_s() - t0;
	printf("     pfx_create %.3f s, pfx_parse %.3f s (%d iterations), %zu "
	       "bytes\n",
	    t_create, t_parse, PFX_CREATE_ITER, len);
	KBT_ASSERT_OK(fingerprint_pkey(key, fp1));
	KBT_ASSERT_OK(fingerprint_pkey(back, fp2));
	KBT_ASSERT_STR(fp1, fp2);
	EVP_PKEY_free(back);
	back = NULL;
	KBT_ASSERT(refused_buf(
	    der, len, "generated pässword 2", "wrong password for the .pfx"));

	/* The certificate: CN = name, SHA-256, 10 years. */
	p = der;
	KBT_ASSERT((p12 = d2i_PKCS12(NULL, &p, (long)len)) != NULL);
	KBT_ASSERT(PKCS12_parse(p12, pass, &pk, &cert, NULL) == 1);
	PKCS12_free(p12);
	EVP_PKEY_free(pk);
	KBT_ASSERT(X509_NAME_get_text_by_NID(X509_get_subject_name(cert),
	               NID_commonName, cn, sizeof(cn))
	    > 0);
	KBT_ASSERT_STR(cn, name);
	KBT_ASSERT_INT(
	    X509_get_signature_nid(cert), ==, NID_sha256WithRSAEncryption);
	KBT_ASSERT(X509_check_private_key(cert, key) == 1);
	KBT_ASSERT(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(cert),
	               X509_get0_notAfter(cert))
	    == 1);
	KBT_ASSERT_INT(days, ==, 3650);
	X509_free(cert);
	EVP_PKEY_free(key);

	/* The openssl command line opens it without -legacy, and sees
	 * AES-256-CBC under PBKDF2-HMAC-SHA256 and a SHA-256 MAC. */
	snprintf(path, sizeof(path), "%s/gen.pfx", dir);
	snprintf(pwpath, sizeof(pwpath), "%s/pw", dir);
	KBT_ASSERT(write_file(path, der, len, 0600));
	KBT_ASSERT(write_file(pwpath, pass, strlen(pass), 0600));
	kb_freezero(der, len);
	snprintf(cmd, sizeof(cmd),
	    "openssl pkcs12 -in '%s' -noout -passin 'file:%s' 2>&1", path,
	    pwpath);
	KBT_ASSERT(run(cmd) != NULL);
	snprintf(cmd, sizeof(cmd),
	    "openssl pkcs12 -in '%s' -info -noout -passin 'file:%s' 2>&1", path,
	    pwpath);
	KBT_ASSERT((info = run(cmd)) != NULL);
	KBT_ASSERT_CONTAINS(info, "MAC: sha256, Iteration 200000");
	KBT_ASSERT_CONTAINS(info,
	    "PKCS7 Encrypted data: PBES2, PBKDF2, "
	    "AES-256-CBC, Iteration 200000, PRF hmacWithSHA256");
	KBT_ASSERT_CONTAINS(info,
	    "Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC, "
	    "Iteration 200000, PRF hmacWithSHA256");
	KBT_ASSERT(strstr(info, "pbeWithSHA1") == NULL);
	KBT_ASSERT(strstr(info, "sha1") == NULL);
	kbt_rmtree(dir);
}

static void
test_create_refusals(void)
{
	EVP_PKEY *key = NULL,
	         *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	uint8_t *der = (uint8_t *)1;
	size_t len = 1;
	char longname[80];

	memset(longname, 'n', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	KBT_ASSERT(ec != NULL);
	KBT_ASSERT_OK(rsa_generate_2048(&key));
	KBT_ASSERT_ERR(
	    pfx_create(key, "", "n", &der, &len), KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT(der == NULL && len == 0);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_INVALID_ARGUMENT), "password");
	KBT_ASSERT_ERR(
	    pfx_create(key, NULL, "n", &der, &len), KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_ERR(
	    pfx_create(key, "pw", "", &der, &len), KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_ERR(pfx_create(key, "pw", longname, &der, &len),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_ERR(
	    pfx_create(ec, "pw", "n", &der, &len), KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_ERR(
	    pfx_create(NULL, "pw", "n", &der, &len), KB_ERR_INVALID_ARGUMENT);
	EVP_PKEY_free(key);
	EVP_PKEY_free(ec);
}

/* ---- the token's fingerprint equals the file's ---- */

static void
test_token_fingerprint(void)
{
	const struct expected *e = expected_for("openssl-legacy.pfx");
	const char *dir = kbt_softhsm_setup("kbtest-pfx");
	char pin[300], fp_file[65], fp_token[65];
	struct hsm_config cfg = {
	    KBT_SOFTHSM_MODULE, "pkcs11:token=kbtest-pfx", pin, 1, 2};
	struct hsm *h = NULL;
	EVP_PKEY *key = NULL;
	uint8_t *der, *spki = NULL;
	size_t len, spki_len = 0;
	enum kb_err r;

	snprintf(pin, sizeof(pin), "%s/pin", dir);
	der = kbt_data_load(e->file, &len);
	r = pfx_parse(der, len, e->pass, &key);
	free(der);
	KBT_ASSERT_OK(r);
	KBT_ASSERT_OK(fingerprint_pkey(key, fp_file));
	KBT_ASSERT_STR(fp_file, e->fp);
	KBT_ASSERT_OK(hsm_open(&cfg, &h));
	r = hsm_rsa_import(h, "k-pfx", key, HSM_USE_ENCRYPT);
	EVP_PKEY_free(key);
	if (r == KB_OK)
		r = hsm_public_key_der(h, "k-pfx", &spki, &spki_len);
	if (r == KB_OK)
		r = fingerprint_spki(spki, spki_len, fp_token);
	free(spki);
	hsm_close(h);
	kbt_rmtree(dir);
	KBT_ASSERT_OK(r);
	KBT_ASSERT_STR(fp_token, e->fp);
}

static void
test_fingerprint_basics(void)
{
	char fp[65] = "x";

	/* SHA-256 of the empty string is refused, of "abc" is well known. */
	KBT_ASSERT_ERR(fingerprint_spki((const uint8_t *)"", 0, fp),
	    KB_ERR_INVALID_ARGUMENT);
	KBT_ASSERT_STR(fp, "");
	KBT_ASSERT_OK(fingerprint_spki((const uint8_t *)"abc", 3, fp));
	KBT_ASSERT_STR(fp,
	    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	KBT_ASSERT_ERR(fingerprint_pkey(NULL, fp), KB_ERR_INVALID_ARGUMENT);
}

/* ---- threads and the library context ---- */

static void *
parse_thread(void *arg)
{
	const char *files[] = {
	    "openssl-legacy.pfx", "openssl-modern.pfx", "windows-style.pfx"};
	long bad = 0;
	int i;

	(void)arg;
	for (i = 0; i < 12; i++)
		if (!accept_file(files[i % 3]))
			bad++;
	return (void *)bad;
}

static void
test_threads_and_context(void)
{
	pthread_t t[4];
	void *ret;
	long bad = 0;
	int i;
	OSSL_LIB_CTX *before = OSSL_LIB_CTX_set0_default(NULL);
	EVP_CIPHER *rc2;

	load_expected();
	for (i = 0; i < 4; i++)
		KBT_ASSERT(
		    pthread_create(&t[i], NULL, parse_thread, NULL) == 0);
	for (i = 0; i < 4; i++) {
		pthread_join(t[i], &ret);
		bad += (long)ret;
	}
	KBT_ASSERT_INT(bad, ==, 0);
	KBT_ASSERT(accept_file("openssl-legacy.pfx"));
	/* The thread's default context is back, and the legacy algorithms
	 * stayed in pfx.c's own context. */
	KBT_ASSERT(OSSL_LIB_CTX_set0_default(NULL) == before);
	rc2 = EVP_CIPHER_fetch(NULL, "RC2-40-CBC", NULL);
	ERR_clear_error();
	KBT_ASSERT(rc2 == NULL);
	EVP_CIPHER_free(rc2);
}

/* ---- deterministic mutations ---- */

static double fuzz_budget = -1;

/* Seconds each fixture's loop may take: KB_TEST_FUZZ_SECONDS, 0 = no cap
 * (every mutation: a minute or more, mostly certtool's 600,000 rounds). */
static double
fuzz_seconds(void)
{
	const char *env;

	if (fuzz_budget < 0) {
		env = getenv("KB_TEST_FUZZ_SECONDS");
		fuzz_budget = env != NULL ? atof(env) : 0.5;
	}
	return fuzz_budget;
}

static size_t
gcd(size_t a, size_t b)
{
	while (b != 0) {
		size_t t = a % b;
		a = b;
		b = t;
	}
	return a;
}

/* Every single-bit flip in the first 512 bytes and every truncation at
 * a multiple of 7 must give an error or a valid RSA-2048 key, never a
 * crash or a leak (ASan). Cases run in a fixed order that strides across
 * the whole set, so a time-capped run still samples all of it. */
static int
mutate(const char *file, const char *pass)
{
	size_t len, flips, truncs, total, stride, k, idx, ran = 0, oks = 0;
	uint8_t *orig = kbt_data_load(file, &len), *m;
	size_t mlen;
	EVP_PKEY *key;
	double t0 = now_s(), cap = fuzz_seconds();
	int bad = 0;
	enum kb_err r;

	flips = (len < 512 ? len : 512) * 8;
	truncs = (len + 6) / 7;
	total = flips + truncs;
	for (stride = 7919; gcd(stride, total) != 1; stride += 2)
		;
	for (k = 0; k < total && !bad; k++) {
		if (cap > 0 && now_s() - t0 > cap)
			break;
		idx = (k * stride) % total;
		if (idx < flips) {
			mlen = len;
			m = malloc(mlen);
			memcpy(m, orig, mlen);
			m[idx / 8] ^= (uint8_t)(1u << (idx % 8));
		} else {
			mlen = (idx - flips) * 7;
			m = malloc(mlen > 0 ? mlen : 1);
			memcpy(m, orig, mlen);
		}
		key = NULL;
		r = pfx_parse(m, mlen, pass, &key);
		if (r == KB_OK) {
			oks++;
			if (key == NULL || !EVP_PKEY_is_a(key, "RSA")
			    || EVP_PKEY_get_bits(key) != 2048)
				bad = 1;
		} else if (key != NULL
		    || (r != KB_ERR_INVALID_ARGUMENT && r != KB_ERR_CRYPTO)) {
			fprintf(stderr, "  %s case %zu: %s: %s\n", file, idx,
			    kb_strerror(r), kb_err_msg(r));
			bad = 1;
		}
		EVP_PKEY_free(key);
		free(m);
		ran++;
	}
	printf("     %-20s %zu of %zu mutations in %.2f s (%zu still parse)\n",
	    file, ran, total, now_s() - t0, oks);
	free(orig);
	return !bad;
}

static void
test_mutations(void)
{
	size_t i;

	load_expected();
	for (i = 0; i < naccepted; i++)
		KBT_ASSERT(mutate(accepted[i].file, accepted[i].pass));
}

static const struct kbt_case cases[] = {
    {"/pfx/expected-complete", test_expected_complete},
    {"/pfx/openssl-modern", test_openssl_modern},
    {"/pfx/openssl-legacy", test_openssl_legacy},
    {"/pfx/windows-style", test_windows_style}, {"/pfx/keytool", test_keytool},
    {"/pfx/keytool-legacy", test_keytool_legacy},
    {"/pfx/certtool", test_certtool}, {"/pfx/with-chain", test_with_chain},
    {"/pfx/refuse-ec", test_refuse_ec}, {"/pfx/refuse-size", test_refuse_size},
    {"/pfx/refuse-no-password", test_refuse_no_password},
    {"/pfx/refuse-wrong-password", test_refuse_wrong_password},
    {"/pfx/refuse-two-keys", test_refuse_two_keys},
    {"/pfx/refuse-no-key", test_refuse_no_key},
    {"/pfx/refuse-mismatch", test_refuse_mismatch},
    {"/pfx/refuse-damaged", test_refuse_damaged},
    {"/pfx/refuse-size-limits", test_refuse_size_limits},
    {"/pfx/refuse-iterations", test_refuse_iterations},
    {"/pfx/password-encodings", test_password_encodings},
    {"/pfx/create-roundtrip", test_create_roundtrip},
    {"/pfx/create-refusals", test_create_refusals},
    {"/pfx/fingerprint-basics", test_fingerprint_basics},
    {"/pfx/token-fingerprint", test_token_fingerprint},
    {"/pfx/threads-and-context", test_threads_and_context},
    {"/pfx/mutations", test_mutations}, {NULL, NULL}};

int
main(int argc, char **argv)
{
	return kbt_run(cases, argc, argv);
}
