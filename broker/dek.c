/* SPDX-License-Identifier: Apache-2.0 */
/* dek.c: seal and open data keys in the token (envelope v2), and open the
 * pre-v2 RSA-OAEP envelope for the upgrade. */
#include "dek.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "kb_secmem.h"

#define AAD_MAX 512
#define AAD_TAG "keybroker/dek/v2"

void
dek_label(enum store_env_mode mode, const char *tenant, char *buf, size_t len)
{
	if (mode == STORE_MODE_CUSTOMER)
		snprintf(buf, len, "kb:kek:%s", tenant);
	else
		snprintf(buf, len, "%s", DEK_LABEL_PLATFORM);
}

int
dek_is_legacy(const struct store_dek *dek)
{
	return strcmp(dek->wrap_alg, HSM_ALG_AES_GCM) != 0;
}

/* One field of the associated data: a 2-byte length, then the bytes, so
 * no two rows give the same associated data. */
static int
aad_put(uint8_t *buf, size_t *off, const char *v)
{
	size_t n = strlen(v);

	if (n > 0xffff || *off + 2 + n > AAD_MAX)
		return -1;
	buf[(*off)++] = (uint8_t)(n >> 8);
	buf[(*off)++] = (uint8_t)n;
	memcpy(buf + *off, v, n);
	*off += n;
	return 0;
}

/* tenant, environment uid and name, DEK version, mode, sealing key id. */
static enum kb_err
aad_build(
    const struct dek_row *row, const char *key_id, uint8_t *buf, size_t *len)
{
	char version[16];

	*len = 0;
	snprintf(version, sizeof(version), "%u", row->version);
	if (row->uid == NULL || row->uid[0] == '\0')
		return kb_errf(KB_ERR_CORRUPT,
		    "environment %s/%s has no uid: its "
		    "data key cannot be bound to it",
		    row->tenant, row->env);
	if (aad_put(buf, len, AAD_TAG) != 0
	    || aad_put(buf, len, row->tenant) != 0
	    || aad_put(buf, len, row->uid) != 0
	    || aad_put(buf, len, row->env) != 0
	    || aad_put(buf, len, version) != 0
	    || aad_put(buf, len, store_env_mode_name(row->mode)) != 0
	    || aad_put(buf, len, key_id) != 0)
		return kb_errf(KB_ERR_CORRUPT,
		    "data key %u of %s/%s: its row's "
		    "fields are too long",
		    row->version, row->tenant, row->env);
	return KB_OK;
}

static enum kb_err
open_v2(struct hsm *h, const struct dek_row *row, const struct store_dek *dek,
    uint8_t out[DEK_LEN])
{
	uint8_t aad[AAD_MAX], *plain = NULL;
	char label[DEK_LABEL_MAX];
	size_t aad_len, plen = 0;
	enum kb_err e;

	if ((e = aad_build(row, dek->key_id, aad, &aad_len)) != KB_OK)
		return e;
	dek_label(row->mode, row->tenant, label, sizeof(label));
	if ((e = hsm_gcm_open(h, dek->key_id, label, aad, aad_len, dek->wrapped,
	         dek->wrapped_len, &plain, &plen))
	    != KB_OK)
		return e;
	if (plen != DEK_LEN) {
		kb_freezero(plain, plen);
		return kb_errf(KB_ERR_CORRUPT,
		    "sealed data key opened to %zu "
		    "bytes, not %d",
		    plen, DEK_LEN);
	}
	memcpy(out, plain, DEK_LEN);
	kb_freezero(plain, plen);
	return KB_OK;
}

static enum kb_err
open_legacy(struct hsm *h, const struct store_dek *dek, uint8_t out[DEK_LEN])
{
	uint8_t *plain = NULL;
	size_t plen = 0;
	enum kb_err e;

	if ((e = hsm_decrypt(h, dek->key_id, dek->wrap_alg, dek->wrapped,
	         dek->wrapped_len, &plain, &plen))
	    != KB_OK) {
		/* A key that may not decrypt never wrapped a data key this
		 * way: the blob was made outside the broker. */
		if (e == KB_ERR_HSM
		    && strstr(kb_err_msg(e), "CKR_KEY_FUNCTION_NOT_PERMITTED")
		        != NULL)
			return kb_errf(KB_ERR_CORRUPT,
			    "key %s may not decrypt: "
			    "this pre-v2 blob was not made by the broker",
			    dek->key_id);
		return e;
	}
	if (plen != DEK_LEN) {
		kb_freezero(plain, plen);
		return kb_errf(KB_ERR_CORRUPT,
		    "pre-v2 data key unwrapped to %zu "
		    "bytes, not %d",
		    plen, DEK_LEN);
	}
	memcpy(out, plain, DEK_LEN);
	kb_freezero(plain, plen);
	return KB_OK;
}

enum kb_err
dek_open(struct hsm *h, const struct dek_row *row, const struct store_dek *dek,
    int legacy, uint8_t out[DEK_LEN])
{
	enum kb_err e;

	if (dek_is_legacy(dek)) {
		if (!legacy)
			return kb_errf(KB_ERR_CORRUPT,
			    "data key %u of %s/%s is in "
			    "the pre-v2 envelope (%s), which is no longer "
			    "accepted",
			    row->version, row->tenant, row->env, dek->wrap_alg);
		e = open_legacy(h, dek, out);
	} else {
		e = open_v2(h, row, dek, out);
	}
	if (e == KB_ERR_CORRUPT)
		return kb_err_wrap(e,
		    "integrity check failed for data key %u "
		    "of %s/%s",
		    row->version, row->tenant, row->env);
	return e;
}

enum kb_err
dek_seal(struct hsm *h, const struct dek_row *row, const char *key_id,
    const uint8_t plain[DEK_LEN], struct store_dek *out)
{
	uint8_t aad[AAD_MAX], *blob = NULL, check[DEK_LEN];
	char label[DEK_LABEL_MAX];
	struct store_dek d;
	size_t aad_len, blen = 0;
	enum kb_err e;

	memset(&d, 0, sizeof(d));
	if ((e = aad_build(row, key_id, aad, &aad_len)) != KB_OK)
		return e;
	dek_label(row->mode, row->tenant, label, sizeof(label));
	if ((e = hsm_gcm_seal(
	         h, key_id, label, aad, aad_len, plain, DEK_LEN, &blob, &blen))
	    != KB_OK)
		return e;
	if (blen > sizeof(d.wrapped)) {
		free(blob);
		return kb_errf(KB_ERR_INTERNAL,
		    "sealed key of %zu bytes is too "
		    "large",
		    blen);
	}
	d.version = row->version;
	snprintf(d.key_id, sizeof(d.key_id), "%s", key_id);
	snprintf(d.wrap_alg, sizeof(d.wrap_alg), "%s", HSM_ALG_AES_GCM);
	memcpy(d.wrapped, blob, blen);
	d.wrapped_len = blen;
	free(blob);
	/* What is stored must open: check it once, in the token. */
	e = open_v2(h, row, &d, check);
	if (e == KB_OK && CRYPTO_memcmp(check, plain, DEK_LEN) != 0)
		e = kb_errf(KB_ERR_HSM,
		    "the token opened a freshly sealed data "
		    "key to another value (key %s)",
		    key_id);
	kb_wipe(check, sizeof(check));
	if (e != KB_OK)
		return kb_err_wrap(e, "checking a freshly sealed data key");
	*out = d;
	return KB_OK;
}

enum kb_err
dek_new(struct hsm *h, const struct dek_row *row, const char *key_id,
    struct store_dek *out)
{
	uint8_t plain[DEK_LEN];
	enum kb_err e;

	memset(out, 0, sizeof(*out));
	if ((e = hsm_random(h, plain, sizeof(plain))) == KB_OK)
		e = dek_seal(h, row, key_id, plain, out);
	kb_wipe(plain, sizeof(plain));
	return e;
}

enum kb_err
dek_reseal(struct hsm *h, const struct dek_row *from,
    const struct store_dek *in, int legacy, const struct dek_row *to,
    const char *key_id, struct store_dek *out)
{
	uint8_t plain[DEK_LEN];
	enum kb_err e;

	if ((e = dek_open(h, from, in, legacy, plain)) != KB_OK)
		return e;
	e = dek_seal(h, to, key_id, plain, out);
	kb_wipe(plain, sizeof(plain));
	return e;
}

void
dek_row_env(struct dek_row *r, const struct store_env *env, uint32_t version,
    enum store_env_mode mode)
{
	r->tenant = env->tenant_id;
	r->env = env->name;
	r->uid = env->uid;
	r->version = version;
	r->mode = mode;
}
