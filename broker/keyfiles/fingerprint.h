/* SPDX-License-Identifier: Apache-2.0 */
/* fingerprint.h: the SHA-256 fingerprint that names a tenant key.
 *
 * A fingerprint is the lower-case hex SHA-256 of the key's DER
 * SubjectPublicKeyInfo: the same value whether the public key comes from
 * the token (hsm_public_key_der), from a .pfx or from a .byok. */
#ifndef KB_FINGERPRINT_H
#define KB_FINGERPRINT_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "kb_err.h"

#define FINGERPRINT_HEX_LEN 64

/* Hash `len` bytes of DER SubjectPublicKeyInfo into `out` (64 hex digits
 * and a NUL). The DER is not parsed: the caller passes what the token or
 * i2d_PUBKEY produced. KB_ERR_INVALID_ARGUMENT for empty input; on any
 * error `out` is the empty string. */
enum kb_err fingerprint_spki(
    const uint8_t *der, size_t len, char out[FINGERPRINT_HEX_LEN + 1]);

/* The fingerprint of `pkey`'s public half (i2d_PUBKEY, then as above).
 * `pkey` may be a private key; only public data is hashed. */
enum kb_err fingerprint_pkey(EVP_PKEY *pkey, char out[FINGERPRINT_HEX_LEN + 1]);

#endif /* KB_FINGERPRINT_H */
