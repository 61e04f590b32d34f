/* SPDX-License-Identifier: Apache-2.0 */
/* keycheck.c: the keys the database refers to, checked in the token. */
#include "keycheck.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dek.h"
#include "fingerprint.h"

int
keycheck_needed(const struct store_key *k)
{
	return strcmp(k->state, "active") == 0
	    || strcmp(k->state, "available") == 0
	    || strcmp(k->state, "pending_deletion") == 0
	    || strcmp(k->state, "installing") == 0
	    || strcmp(k->state, "retiring") == 0
	    || strcmp(k->state, "pending_approval") == 0;
}

/* AES keys are found by id and label; RSA pairs by id. */
static int
key_is_secret(const struct store_key *k)
{
	return strcmp(k->purpose, "kek") == 0
	    || (strcmp(k->purpose, "platform") == 0
	        && strcmp(k->wrap_alg, HSM_ALG_AES_GCM) == 0);
}

void
keycheck_label(const struct store_key *k, char *buf, size_t len)
{
	if (strcmp(k->purpose, "kek") == 0)
		dek_label(STORE_MODE_CUSTOMER, k->tenant_id, buf, len);
	else if (key_is_secret(k))
		snprintf(buf, len, "%s", DEK_LABEL_PLATFORM);
	else
		snprintf(buf, len, "%s", k->id);
}

int
keycheck_present(struct hsm *h, const char *id, const char *label,
    const char *purpose, const char *state, const char *parent,
    const char *fingerprint, char *why, size_t len)
{
	uint8_t *der = NULL;
	size_t der_len = 0;
	char fp[FINGERPRINT_HEX_LEN + 1];
	enum kb_err e;

	why[0] = '\0';
	if (strcmp(label, id) != 0) {
		/* An AES key: by id and label. */
		if (hsm_secret_exists(h, id, label) == KB_OK)
			return 1;
		kb_err_clear();
		/* A KEK is made again from its wrapped copy in the database
		 * at start, when its tenant key is there. */
		if (strcmp(purpose, "kek") == 0 && strcmp(state, "active") == 0
		    && hsm_key_exists(h, parent) == KB_OK)
			return 1;
		kb_err_clear();
		snprintf(
		    why, len, "no AES key with id %s and label %s", id, label);
		return 0;
	}
	if (hsm_key_exists(h, id) != KB_OK) {
		kb_err_clear();
		snprintf(why, len, "no private key with id %s", id);
		return 0;
	}
	if (strlen(fingerprint) != 64)
		return 1;
	if ((e = hsm_public_key_der(h, id, &der, &der_len)) != KB_OK
	    || (e = fingerprint_spki(der, der_len, fp)) != KB_OK) {
		free(der);
		snprintf(why, len, "its public key cannot be read: %s",
		    kb_err_msg(e));
		kb_err_clear();
		return 0;
	}
	free(der);
	if (strcmp(fp, fingerprint) != 0) {
		snprintf(why, len,
		    "key %s in the token is another key "
		    "(fingerprint %.16s..., the database's is %.16s...)",
		    id, fp, fingerprint);
		return 0;
	}
	return 1;
}
