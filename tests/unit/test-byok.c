/* SPDX-License-Identifier: Apache-2.0 */
/* test-byok.c: byok.c against the .byok made with the openssl command line
 * (tests/data/make-fixtures.sh), its malformed variants, the token's unwrap
 * of it, keyfile_detect, and a deterministic bit-flip and truncation loop. */
#include "harness.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "byok.h"
#include "fingerprint.h"
#include "hsm.h"
#include "kb_secmem.h"

/* ---- fixtures ---- */

/* expected-byok.txt: "file kid ciphertext-bytes spki-sha256". */
static struct {
	char file[64];
	char kid[128];
	size_t blob_len;
	char fp[65];
} want;

static void
load_expected(void)
{
	FILE *f;
	char line[512];

	if (want.file[0] != '\0')
		return;
	if ((f = fopen(kbt_data_path("expected-byok.txt"), "r")) == NULL) {
		fprintf(stderr, "cannot read %s\n",
		    kbt_data_path("expected-byok.txt"));
		exit(2);
	}
	while (fgets(line, sizeof(line), f) != NULL) {
		if (line[0] == '#')
			continue;
		if (sscanf(line, "%63s %127s %zu %64s", want.file, want.kid,
		        &want.blob_len, want.fp)
		    == 4)
			break;
	}
	fclose(f);
	if (want.file[0] == '\0') {
		fprintf(stderr, "expected-byok.txt has no fixture line\n");
		exit(2);
	}
}

/* The fixture as a jansson object, to make variants from. */
static json_t *
fixture_json(void)
{
	size_t len;
	uint8_t *buf;
	json_t *j;

	load_expected();
	buf = kbt_data_load(want.file, &len);
	j = json_loadb((const char *)buf, len, 0, NULL);
	free(buf);
	if (j == NULL) {
		fprintf(stderr, "%s is not JSON\n", want.file);
		exit(2);
	}
	return j;
}

/* byok_parse of `text` must be KB_ERR_INVALID_ARGUMENT with a message
 * containing `fragment`. */
static int
refused_len(const char *text, size_t len, const char *fragment)
{
	struct byok_file f;
	enum kb_err r;

	kb_err_clear();
	r = byok_parse((const uint8_t *)text, len, &f);
	if (r == KB_ERR_INVALID_ARGUMENT && f.blob == NULL
	    && strstr(kb_err_msg(r), fragment) != NULL)
		return 1;
	fprintf(stderr, "  want INVALID_ARGUMENT \"%s\", got %s: %s\n",
	    fragment, kb_strerror(r), kb_err_msg(r));
	byok_file_clear(&f);
	return 0;
}

static int
refused(const char *text, const char *fragment)
{
	return refused_len(text, strlen(text), fragment);
}

/* Serialise `j` (consumed) and expect a refusal. */
static int
refused_json(json_t *j, const char *fragment)
{
	char *s = json_dumps(j, JSON_COMPACT);
	int ok = s != NULL && refused(s, fragment);

	free(s);
	json_decref(j);
	return ok;
}

static json_t *
header_of(json_t *j)
{
	return json_object_get(j, "header");
}

/* ---- cases ---- */

static void
test_openssl_cli(void)
{
	size_t len;
	uint8_t *buf;
	struct byok_file f;

	load_expected();
	buf = kbt_data_load(want.file, &len);
	KBT_ASSERT_OK(byok_parse(buf, len, &f));
	free(buf);
	KBT_ASSERT_STR(f.kid, want.kid);
	KBT_ASSERT_INT(f.blob_len, ==, want.blob_len);
	KBT_ASSERT_INT((f.blob_len - BYOK_KEK_BYTES) % 8, ==, 0);
	KBT_ASSERT_CONTAINS(f.generator, "openssl command line");
	byok_file_clear(&f);
	KBT_ASSERT(f.blob == NULL && f.blob_len == 0 && f.kid[0] == '\0');
	byok_file_clear(&f);
	byok_file_clear(NULL);
}

/* The shapes a .byok may take that are still fine. */
static void
test_accepted_variants(void)
{
	json_t *j = fixture_json();
	const char *ct = json_string_value(json_object_get(j, "ciphertext"));
	size_t n = strlen(ct), i;
	char *std = malloc(n + 4), *s, *with_bom;
	struct byok_file f;

	KBT_ASSERT(std != NULL);
	/* Standard base64 alphabet, padded to a multiple of 4. */
	for (i = 0; i < n; i++)
		std[i] = ct[i] == '-' ? '+' : ct[i] == '_' ? '/' : ct[i];
	while (i % 4 != 0)
		std[i++] = '=';
	std[i] = '\0';
	json_object_set_new(j, "ciphertext", json_string(std));
	free(std);
	/* Unknown fields anywhere, no generator, pretty-printed. */
	json_object_del(j, "generator");
	json_object_set_new(j, "x-extra", json_pack("{s:i}", "n", 1));
	json_object_set_new(header_of(j), "x-vendor", json_string("acme"));
	s = json_dumps(j, JSON_INDENT(2));
	json_decref(j);
	KBT_ASSERT(s != NULL);
	KBT_ASSERT_OK(byok_parse((const uint8_t *)s, strlen(s), &f));
	KBT_ASSERT_STR(f.generator, "");
	KBT_ASSERT_INT(f.blob_len, ==, want.blob_len);
	byok_file_clear(&f);
	/* A UTF-8 byte-order mark in front (Windows tools write one). */
	with_bom = malloc(strlen(s) + 4);
	KBT_ASSERT(with_bom != NULL);
	memcpy(with_bom, "\xef\xbb\xbf", 3);
	memcpy(with_bom + 3, s, strlen(s) + 1);
	free(s);
	KBT_ASSERT_OK(
	    byok_parse((const uint8_t *)with_bom, strlen(with_bom), &f));
	KBT_ASSERT_STR(f.kid, want.kid);
	byok_file_clear(&f);
	free(with_bom);
}

static void
test_refuse_header(void)
{
	json_t *j;

	j = fixture_json();
	json_object_set_new(header_of(j), "enc", json_string("RSA-OAEP-256"));
	KBT_ASSERT(refused_json(j,
	    "the .byok header.enc is \"RSA-OAEP-256\"; "
	    "keybroker accepts CKM_RSA_AES_KEY_WRAP"));
	j = fixture_json();
	json_object_del(header_of(j), "enc");
	KBT_ASSERT(refused_json(j, "the .byok has no header.enc"));
	j = fixture_json();
	json_object_set_new(header_of(j), "enc", json_integer(7));
	KBT_ASSERT(refused_json(
	    j, "the .byok header.enc is an integer, not a string"));
	j = fixture_json();
	json_object_set_new(header_of(j), "alg", json_string("RSA-OAEP"));
	KBT_ASSERT(refused_json(j,
	    "the .byok header.alg is \"RSA-OAEP\"; "
	    "keybroker accepts \"dir\""));
	j = fixture_json();
	json_object_del(header_of(j), "kid");
	KBT_ASSERT(refused_json(j, "the .byok has no header.kid"));
	j = fixture_json();
	json_object_set_new(header_of(j), "kid", json_string(""));
	KBT_ASSERT(refused_json(j, "the .byok header.kid is empty"));
	j = fixture_json();
	json_object_set_new(header_of(j), "kid", json_null());
	KBT_ASSERT(
	    refused_json(j, "the .byok header.kid is null, not a string"));
	j = fixture_json();
	json_object_set_new(header_of(j), "kid",
	    json_string("kid-kid-kid-kid-kid-kid-kid-kid-kid-kid-kid-kid-kid-"
	                "kid-kid-kid-"
	                "kid-kid-kid-kid-kid-kid-kid-kid-kid-kid-kid-kid-kid-"
	                "kid-kid-kid-"));
	KBT_ASSERT(refused_json(j, "the .byok header.kid is 128 bytes"));
	j = fixture_json();
	json_object_set_new(j, "schema_version", json_string("2.0.0"));
	KBT_ASSERT(refused_json(j,
	    "the .byok schema_version is \"2.0.0\"; "
	    "keybroker accepts \"1.0.0\""));
	j = fixture_json();
	json_object_del(j, "schema_version");
	KBT_ASSERT(refused_json(j, "the .byok has no schema_version"));
	j = fixture_json();
	json_object_del(j, "header");
	KBT_ASSERT(refused_json(j, "the .byok has no header"));
	j = fixture_json();
	json_object_set_new(j, "header", json_array());
	KBT_ASSERT(
	    refused_json(j, "the .byok header is an array, not an object"));
	/* A value with control characters is shown escaped. */
	j = fixture_json();
	json_object_set_new(header_of(j), "enc", json_string("a\nb\"c"));
	KBT_ASSERT(refused_json(j, "header.enc is \"a\\x0ab\\x22c\""));
}

static void
test_refuse_ciphertext(void)
{
	json_t *j;
	char buf[2048];
	size_t n;

	j = fixture_json();
	json_object_del(j, "ciphertext");
	KBT_ASSERT(refused_json(j, "the .byok has no ciphertext"));
	j = fixture_json();
	json_object_set_new(j, "ciphertext", json_string("AAAA$AAA"));
	KBT_ASSERT(refused_json(j,
	    "the .byok ciphertext is not base64url: '$' "
	    "at position 5"));
	j = fixture_json();
	json_object_set_new(j, "ciphertext", json_string("AAAA AAA"));
	KBT_ASSERT(refused_json(j, "not base64url: ' ' at position 5"));
	j = fixture_json();
	json_object_set_new(j, "ciphertext", json_string("AAAAA"));
	KBT_ASSERT(
	    refused_json(j, "5 characters cannot be a whole number of bytes"));
	j = fixture_json();
	json_object_set_new(j, "ciphertext", json_string("AA=A"));
	KBT_ASSERT(refused_json(j, "not base64url: '=' at position 3"));
	j = fixture_json();
	json_object_set_new(j, "ciphertext", json_string("AAAAAA="));
	KBT_ASSERT(refused_json(j, "not base64url: 7 characters"));

	/* Lengths: 256 + 8 (too short), 256 + 20 (not blocks), 256, 0. */
	for (n = 0; n < 4; n++) {
		static const size_t lens[] = {264, 276, 256, 0};
		char text[64];
		size_t chars = (lens[n] * 4 + 2) / 3;

		memset(buf, 'A', chars);
		buf[chars] = '\0';
		j = fixture_json();
		json_object_set_new(j, "ciphertext", json_string(buf));
		snprintf(text, sizeof(text),
		    "the .byok ciphertext is %zu bytes; ", lens[n]);
		KBT_ASSERT(refused_json(j, text));
	}
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_INVALID_ARGUMENT), "256-byte RSA-OAEP block");
}

static void
test_refuse_not_byok(void)
{
	char *big;
	size_t i;

	KBT_ASSERT(refused("{", "the .byok file is not valid JSON: "));
	KBT_ASSERT(refused("not json", "the .byok file is not valid JSON"));
	KBT_ASSERT(refused(
	    "[1,2]", "the .byok file is an array; a .byok is a JSON object"));
	/* jansson wants an object or array at the top. */
	KBT_ASSERT(refused("\"x\"", "the .byok file is not valid JSON"));
	KBT_ASSERT(refused("{} {}", "not valid JSON"));
	KBT_ASSERT(refused(
	    "{\"schema_version\":\"1.0.0\",\"schema_version\":\"1.0.0\"}",
	    "not valid JSON: duplicate object key"));
	KBT_ASSERT(refused_len("{\"a\":1}\0", 8, "not valid JSON"));
	KBT_ASSERT(refused("{\"a\":\"\\u0000\"}", "not valid JSON"));
	KBT_ASSERT(refused("{\"a\":\"\xff\"}", "not valid JSON"));
	KBT_ASSERT(refused_len("", 0, "the .byok file is empty"));
	/* Huge: 64 KiB + 1 of valid JSON. */
	big = malloc(BYOK_MAX_BYTES + 2);
	KBT_ASSERT(big != NULL);
	big[0] = '[';
	for (i = 1; i < BYOK_MAX_BYTES; i++)
		big[i] = ' ';
	big[BYOK_MAX_BYTES] = ']';
	big[BYOK_MAX_BYTES + 1] = '\0';
	KBT_ASSERT(refused_len(big, BYOK_MAX_BYTES + 1,
	    "the .byok file is 65537 bytes; keybroker accepts at most 65536"));
	/* Deep nesting is refused by jansson's depth limit, not the stack. */
	for (i = 0; i < BYOK_MAX_BYTES / 2; i++) {
		big[i] = '[';
		big[BYOK_MAX_BYTES / 2 + i] = ']';
	}
	KBT_ASSERT(refused_len(big, BYOK_MAX_BYTES, "not valid JSON"));
	free(big);
}

static void
test_detect(void)
{
	size_t len;
	uint8_t *pfx = kbt_data_load("openssl-modern.pfx", &len), *byok;

	KBT_ASSERT_INT(keyfile_detect(pfx, len), ==, KEYFILE_PFX);
	free(pfx);
	load_expected();
	byok = kbt_data_load(want.file, &len);
	KBT_ASSERT_INT(keyfile_detect(byok, len), ==, KEYFILE_BYOK);
	free(byok);
	KBT_ASSERT_INT(
	    keyfile_detect((const uint8_t *)" \r\n\t{", 5), ==, KEYFILE_BYOK);
	KBT_ASSERT_INT(keyfile_detect((const uint8_t *)"\xef\xbb\xbf{", 4), ==,
	    KEYFILE_BYOK);
	KBT_ASSERT_INT(keyfile_detect((const uint8_t *)"-----BEGIN", 10), ==,
	    KEYFILE_UNKNOWN);
	KBT_ASSERT_INT(
	    keyfile_detect((const uint8_t *)"   ", 3), ==, KEYFILE_UNKNOWN);
	KBT_ASSERT_INT(
	    keyfile_detect((const uint8_t *)"[", 1), ==, KEYFILE_UNKNOWN);
	KBT_ASSERT_INT(
	    keyfile_detect((const uint8_t *)"", 0), ==, KEYFILE_UNKNOWN);
	KBT_ASSERT_INT(keyfile_detect(NULL, 4), ==, KEYFILE_UNKNOWN);
	KBT_ASSERT_STR(keyfile_format_name(KEYFILE_PFX), "pfx");
	KBT_ASSERT_STR(keyfile_format_name(KEYFILE_BYOK), "byok");
	KBT_ASSERT_STR(keyfile_format_name(KEYFILE_UNKNOWN), "unknown");
}

/* The openssl-made .byok really unwraps in SoftHSMv2 through
 * hsm_byok_unwrap, to the key whose fingerprint make-fixtures.sh recorded;
 * tampered ciphertexts do not. */
static void
test_token_unwrap(void)
{
	const char *dir = kbt_softhsm_setup("kbtest-byok");
	char pin[300], fp[65] = "";
	struct hsm_config cfg = {
	    KBT_SOFTHSM_MODULE, "pkcs11:token=kbtest-byok", pin, 1, 2};
	struct hsm *h = NULL;
	struct byok_file f;
	EVP_PKEY *kek = NULL;
	FILE *pem;
	uint8_t *buf, *spki = NULL;
	size_t len, spki_len = 0;
	enum kb_err r, r_oaep = KB_OK, r_kwp = KB_OK;

	snprintf(pin, sizeof(pin), "%s/pin", dir);
	load_expected();
	buf = kbt_data_load(want.file, &len);
	r = byok_parse(buf, len, &f);
	free(buf);
	KBT_ASSERT_OK(r);
	if ((pem = fopen(kbt_data_path("keys/kek.pem"), "r")) != NULL) {
		kek = PEM_read_PrivateKey(pem, NULL, NULL, NULL);
		fclose(pem);
	}
	KBT_ASSERT(kek != NULL);
	r = hsm_open(&cfg, &h);
	if (r == KB_OK)
		r = hsm_rsa_import(h, "kek", kek, HSM_USE_UNWRAP);
	EVP_PKEY_free(kek);
	if (r == KB_OK)
		r = hsm_byok_unwrap(h, "kek", HSM_ALG_OAEP_SHA1, f.blob,
		    f.blob_len, "k-byok", 2048, HSM_USE_ENCRYPT);
	if (r == KB_OK)
		r = hsm_public_key_der(h, "k-byok", &spki, &spki_len);
	if (r == KB_OK)
		r = fingerprint_spki(spki, spki_len, fp);
	free(spki);
	if (r == KB_OK) {
		/* Damage the RSA-OAEP block, then (restored) the key wrap. */
		f.blob[10] ^= 1;
		r_oaep = hsm_byok_unwrap(h, "kek", HSM_ALG_OAEP_SHA1, f.blob,
		    f.blob_len, "k-bad1", 2048, HSM_USE_ENCRYPT);
		f.blob[10] ^= 1;
		f.blob[f.blob_len - 3] ^= 1;
		r_kwp = hsm_byok_unwrap(h, "kek", HSM_ALG_OAEP_SHA1, f.blob,
		    f.blob_len, "k-bad2", 2048, HSM_USE_ENCRYPT);
	}
	byok_file_clear(&f);
	hsm_close(h);
	kbt_rmtree(dir);
	KBT_ASSERT_OK(r);
	KBT_ASSERT_STR(fp, want.fp);
	KBT_ASSERT(r_oaep != KB_OK);
	KBT_ASSERT(r_kwp != KB_OK);
}

/* Every single-bit flip and every truncation of the fixture: an error, or
 * a parse whose result keeps the promised shape; never a crash or leak. */
static void
test_mutations(void)
{
	size_t len, i, mlen, oks = 0, cases = 0;
	uint8_t *orig, *m;
	struct byok_file f;
	enum kb_err r;
	int bad = 0;

	load_expected();
	orig = kbt_data_load(want.file, &len);
	for (i = 0; i < len * 8 + len && !bad; i++) {
		if (i < len * 8) {
			mlen = len;
			m = malloc(mlen);
			memcpy(m, orig, mlen);
			m[i / 8] ^= (uint8_t)(1u << (i % 8));
		} else {
			mlen = i - len * 8;
			m = malloc(mlen > 0 ? mlen : 1);
			memcpy(m, orig, mlen);
		}
		r = byok_parse(m, mlen, &f);
		if (r == KB_OK) {
			oks++;
			bad = f.kid[0] == '\0' || f.blob == NULL
			    || f.blob_len < BYOK_KEK_BYTES + 16
			    || (f.blob_len - BYOK_KEK_BYTES) % 8 != 0;
		} else {
			bad = r != KB_ERR_INVALID_ARGUMENT || f.blob != NULL;
		}
		if (bad)
			fprintf(stderr, "  case %zu: %s: %s\n", i,
			    kb_strerror(r), kb_err_msg(r));
		byok_file_clear(&f);
		free(m);
		cases++;
	}
	printf("     %zu mutations (%zu still parse)\n", cases, oks);
	free(orig);
	KBT_ASSERT(!bad);
}

static const struct kbt_case cases[] = {{"/byok/openssl-cli", test_openssl_cli},
    {"/byok/accepted-variants", test_accepted_variants},
    {"/byok/refuse-header", test_refuse_header},
    {"/byok/refuse-ciphertext", test_refuse_ciphertext},
    {"/byok/refuse-not-byok", test_refuse_not_byok},
    {"/byok/detect", test_detect}, {"/byok/token-unwrap", test_token_unwrap},
    {"/byok/mutations", test_mutations}, {NULL, NULL}};

int
main(int argc, char **argv)
{
	return kbt_run(cases, argc, argv);
}
