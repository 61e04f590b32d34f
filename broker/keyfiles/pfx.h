/* SPDX-License-Identifier: Apache-2.0 */
/* pfx.h: tenant keys as PKCS#12 (.pfx) files: parse and validate uploads,
 * write the one-time .pfx of a generated key.
 *
 * Every refusal is KB_ERR_INVALID_ARGUMENT with a message a person can act
 * on (kb_err_msg): "wrong password for the .pfx (MAC verification failed)",
 * "the key in the .pfx is RSA-1024; keybroker needs RSA-2048", ... Messages
 * never contain the password or key material. All functions are safe to
 * call from many threads at once. */
#ifndef KB_PFX_H
#define KB_PFX_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "kb_err.h"

/* Largest .pfx accepted, in bytes. */
#define PFX_MAX_BYTES (64 * 1024)

/* Tenant keys are RSA of exactly this size. */
#define PFX_RSA_BITS 2048

/* Password-hashing cost refused above these: one KDF (the MAC's or one
 * encrypted item's) and all of a file's contents together. GnuTLS certtool
 * 3.7 writes 600,000 iterations (0.5 s to read here); openssl 3 2048,
 * JDK 17 10,000. The caps bound the CPU one hostile file can take to about
 * 1.5 s on the 2-core development machine. */
#define PFX_MAX_ITER 1000000L
#define PFX_MAX_ITER_TOTAL 4000000L

/* Iterations pfx_create uses for PBKDF2 and for the MAC. Measured on the
 * development machine: 0.12 to 0.17 s to write, 0.2 s to read back (key,
 * certificate and MAC each run the KDF); 600,000 would triple both. */
#define PFX_CREATE_ITER 200000

/* Parse the PKCS#12 file `der` (`len` bytes, at most PFX_MAX_BYTES) with
 * `password` (secret, the caller's; NULL is the same as "") and return its
 * one RSA-2048 private key in *key (secret: the caller imports it into the
 * token and frees it with EVP_PKEY_free). Accepts the files openssl (modern
 * AES/PBKDF2 and -legacy 3DES/RC2), Java keytool, GnuTLS certtool and
 * Windows write. Refuses (KB_ERR_INVALID_ARGUMENT): a damaged file, no or an
 * empty password, a wrong password, no private key or more than one, a key
 * stored unencrypted, a key that is not RSA-2048 (or is inconsistent), a
 * certificate that does not belong to the key. Intermediate copies of key
 * material are wiped. On failure *key is NULL. */
enum kb_err pfx_parse(
    const uint8_t *der, size_t len, const char *password, EVP_PKEY **key);

/* Write the one-time .pfx of `key` (an RSA private key, secret): a
 * self-signed certificate "CN=<name>" (SHA-256, valid 10 years, friendlyName
 * `name`) and the key, both encrypted with AES-256-CBC (PBES2,
 * PBKDF2-HMAC-SHA256, PFX_CREATE_ITER iterations), MAC HMAC-SHA256.
 * `password` (secret) must not be empty; `name` is 1 to 64 bytes of UTF-8.
 * On success *der (malloc'd, holds the encrypted key: the caller wipes and
 * frees it with kb_freezero(*der, *len)) and *len are set; on failure
 * *der is NULL. */
enum kb_err pfx_create(EVP_PKEY *key, const char *password, const char *name,
    uint8_t **der, size_t *len);

#endif /* KB_PFX_H */
