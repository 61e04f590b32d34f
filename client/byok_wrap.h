/* SPDX-License-Identifier: Apache-2.0 */
/* byok_wrap.h: make an Azure Key Vault .byok file offline, as an HSM
 * vendor's BYOK tool does: an RSA-2048 private key wrapped for the
 * broker's key-exchange key (KEK) with CKM_RSA_AES_KEY_WRAP. */
#ifndef KB_BYOK_WRAP_H
#define KB_BYOK_WRAP_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "kb_err.h"

/* Bytes of the ephemeral AES transfer key. */
#define BYOK_WRAP_AES_BYTES 32

/* The KEK from PEM text (`len` bytes, need not be NUL-terminated): a
 * SubjectPublicKeyInfo ("PUBLIC KEY"), a PKCS#1 "RSA PUBLIC KEY" or a
 * certificate. Anything but an RSA key of 2048 bits or more is refused
 * (KB_ERR_INVALID_ARGUMENT saying what it is). *kek: EVP_PKEY_free. */
enum kb_err byok_wrap_load_kek(const char *pem, size_t len, EVP_PKEY **kek);

/* The private key to wrap, from PEM (PKCS#8, encrypted PKCS#8 or
 * traditional "RSA PRIVATE KEY") or DER text of `len` bytes (secret).
 * `password` (secret, may be NULL) opens an encrypted PEM; an encrypted
 * key without one is KB_ERR_INVALID_ARGUMENT ("encrypted"). Only RSA-2048
 * is accepted: another type or size is refused naming it. */
enum kb_err byok_wrap_load_key(
    const uint8_t *data, size_t len, const char *password, EVP_PKEY **key);

/* Does `pem` look like an encrypted PEM private key? */
int byok_wrap_key_is_encrypted(const uint8_t *data, size_t len);

/* The .byok document for `key` under `kek`, with header kid `kid`:
 *   {"schema_version":"1.0.0","header":{"kid":KID,"alg":"dir",
 *    "enc":"CKM_RSA_AES_KEY_WRAP"},"ciphertext":B64URL,"generator":GEN}
 * and a newline, where ciphertext = RSA-OAEP(SHA-1, MGF1-SHA-1) of a
 * random AES-256 key under the KEK || AES key wrap with padding (RFC 5649)
 * of the key's PKCS#8 DER, in base64url without padding. The AES key and
 * the PKCS#8 bytes are wiped. *json is NUL-terminated, *json_len its
 * length: free with free(). */
enum kb_err byok_wrap_make(EVP_PKEY *kek, const char *kid, EVP_PKEY *key,
    const char *generator, char **json, size_t *json_len);

/* The key's fingerprint as the broker shows it: lower-case hex SHA-256 of
 * its DER SubjectPublicKeyInfo, into out[65]. */
enum kb_err byok_wrap_fingerprint(EVP_PKEY *key, char out[65]);

#endif /* KB_BYOK_WRAP_H */
