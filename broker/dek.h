/* SPDX-License-Identifier: Apache-2.0 */
/* dek.h: data encryption keys: made by the token, stored only wrapped. */
#ifndef KB_DEK_H
#define KB_DEK_H

#include <stddef.h>
#include <stdint.h>

#include "broker.h"

#define DEK_LEN 32

/* Make a new DEK from the token's random generator and wrap it under
 * `key_id` with `alg`; fills dek->key_id, wrap_alg, wrapped. The plaintext
 * is wiped before returning. */
enum kb_err dek_new(struct broker *b, const char *key_id, const char *alg,
    uint32_t version, struct store_dek *dek);

/* Unwrap a stored DEK in the token into out[DEK_LEN] (secret: the caller
 * wipes it). KB_ERR_CORRUPT if it does not unwrap to DEK_LEN bytes. */
enum kb_err dek_unwrap(struct broker *b, const struct store_dek *dek,
    uint8_t out[DEK_LEN]);

/* Re-wrap one stored DEK under `key_id` with `alg`: unwrap in the token,
 * wrap again. `out` gets the same version with the new key, algorithm and
 * blob (it may be `in`). The plaintext is wiped. */
enum kb_err dek_rewrap(struct broker *b, const struct store_dek *in,
    const char *key_id, const char *alg, struct store_dek *out);

#endif /* KB_DEK_H */
