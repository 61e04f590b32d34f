/* SPDX-License-Identifier: Apache-2.0 */
/* dek.c: generate, wrap and unwrap data keys in the token. */
#include "dek.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kb_secmem.h"

enum kb_err
dek_new(struct broker *b, const char *key_id, const char *alg,
    uint32_t version, struct store_dek *dek)
{
	uint8_t plain[DEK_LEN], *wrapped = NULL;
	size_t wlen = 0;
	enum kb_err e;

	memset(dek, 0, sizeof(*dek));
	if ((e = hsm_random(b->hsm, plain, sizeof(plain))) != KB_OK)
		goto out;
	if ((e = hsm_encrypt(b->hsm, key_id, alg, plain, sizeof(plain),
	    &wrapped, &wlen)) != KB_OK)
		goto out;
	if (wlen > sizeof(dek->wrapped)) {
		e = kb_errf(KB_ERR_INTERNAL, "wrapped key of %zu bytes is too "
		    "large", wlen);
		goto out;
	}
	dek->version = version;
	snprintf(dek->key_id, sizeof(dek->key_id), "%s", key_id);
	snprintf(dek->wrap_alg, sizeof(dek->wrap_alg), "%s", alg);
	memcpy(dek->wrapped, wrapped, wlen);
	dek->wrapped_len = wlen;
	e = KB_OK;
out:
	kb_wipe(plain, sizeof(plain));
	free(wrapped);
	return e;
}

enum kb_err
dek_unwrap(struct broker *b, const struct store_dek *dek, uint8_t out[DEK_LEN])
{
	uint8_t *plain = NULL;
	size_t plen = 0;
	enum kb_err e;

	if ((e = hsm_decrypt(b->hsm, dek->key_id, dek->wrap_alg, dek->wrapped,
	    dek->wrapped_len, &plain, &plen)) != KB_OK) {
		/* The database names this key, so it must be in the token: its
		 * absence is the token's problem (not logged in, out of file
		 * descriptors, restored from an old backup), not the caller's. */
		if (e == KB_ERR_NOT_FOUND)
			return kb_errf(KB_ERR_UNAVAILABLE, "the key %s wrapping this "
			    "data key is not available in the token (%s)",
			    dek->key_id, kb_err_msg(e));
		return e;
	}
	if (plen != DEK_LEN) {
		kb_freezero(plain, plen);
		return kb_errf(KB_ERR_CORRUPT, "wrapped data key version %u "
		    "unwrapped to %zu bytes, not %d", dek->version, plen, DEK_LEN);
	}
	memcpy(out, plain, DEK_LEN);
	kb_freezero(plain, plen);
	return KB_OK;
}

enum kb_err
dek_rewrap(struct broker *b, const struct store_dek *in, const char *key_id,
    const char *alg, struct store_dek *out)
{
	uint8_t plain[DEK_LEN], *wrapped = NULL;
	uint32_t version = in->version;
	size_t wlen = 0;
	enum kb_err e;

	if ((e = dek_unwrap(b, in, plain)) != KB_OK)
		return e;
	e = hsm_encrypt(b->hsm, key_id, alg, plain, sizeof(plain), &wrapped,
	    &wlen);
	kb_wipe(plain, sizeof(plain));
	if (e != KB_OK)
		return e;
	if (wlen > sizeof(out->wrapped)) {
		free(wrapped);
		return kb_errf(KB_ERR_INTERNAL, "wrapped key of %zu bytes is too "
		    "large", wlen);
	}
	out->version = version;
	snprintf(out->key_id, sizeof(out->key_id), "%s", key_id);
	snprintf(out->wrap_alg, sizeof(out->wrap_alg), "%s", alg);
	memcpy(out->wrapped, wrapped, wlen);
	out->wrapped_len = wlen;
	free(wrapped);
	return KB_OK;
}
