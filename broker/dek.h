/* SPDX-License-Identifier: Apache-2.0 */
/* dek.h: data encryption keys, made by the token and stored only sealed
 * (envelope v2): AES-256-GCM inside the token under the tenant's KEK
 * (customer-managed) or the platform key, with associated data naming the
 * row the blob belongs to, so a blob moved to another row, edited, or made
 * outside the token does not open. */
#ifndef KB_DEK_H
#define KB_DEK_H

#include <stddef.h>
#include <stdint.h>

#include "hsm.h"
#include "store.h"

#define DEK_LEN 32
#define DEK_LABEL_MAX 96
#define DEK_LABEL_PLATFORM "kb:platform"

/* The row a sealed DEK belongs to: what its associated data names. */
struct dek_row {
	const char *tenant;
	const char *env; /* the environment's name */
	const char *uid; /* its id, never reused */
	uint32_t version;
	enum store_env_mode mode;
};

/* The token label of the key that seals a row of `mode` for `tenant`:
 * "kb:platform" or "kb:kek:TENANT". A row can only name a key made for
 * it: the label is part of every lookup. */
void dek_label(
    enum store_env_mode mode, const char *tenant, char *buf, size_t len);

/* Seal `plain` (secret) for `row` under `key_id` into `out` (version,
 * key_id, wrap_alg, wrapped), then open it once in the token and compare,
 * so what is stored is known to open. */
enum kb_err dek_seal(struct hsm *h, const struct dek_row *row,
    const char *key_id, const uint8_t plain[DEK_LEN], struct store_dek *out);

/* A new DEK from the token's random generator, sealed as dek_seal does.
 * The plaintext is wiped before returning. */
enum kb_err dek_new(struct hsm *h, const struct dek_row *row,
    const char *key_id, struct store_dek *out);

/* Open a stored DEK of `row` into out[DEK_LEN] (secret: the caller wipes
 * it). KB_ERR_CORRUPT when it fails its integrity check (moved, edited,
 * made outside the token) or is in the pre-v2 envelope while `legacy` is 0;
 * KB_ERR_NOT_FOUND when its key is not in the token (for this row's
 * purpose). With `legacy` set, a pre-v2 (RSA-OAEP) blob is opened too: only
 * the upgrade job does that. */
enum kb_err dek_open(struct hsm *h, const struct dek_row *row,
    const struct store_dek *dek, int legacy, uint8_t out[DEK_LEN]);

/* Open `in` as a DEK of `from` and seal it as one of `to` under `key_id`
 * into `out` (which may be `in`). The plaintext is wiped. */
enum kb_err dek_reseal(struct hsm *h, const struct dek_row *from,
    const struct store_dek *in, int legacy, const struct dek_row *to,
    const char *key_id, struct store_dek *out);

/* The row of `env`'s DEK `version` under encryption `mode`. */
void dek_row_env(struct dek_row *r, const struct store_env *env,
    uint32_t version, enum store_env_mode mode);

/* Whether a stored DEK is in the pre-v2 (RSA-OAEP) envelope. */
int dek_is_legacy(const struct store_dek *dek);

#endif /* KB_DEK_H */
