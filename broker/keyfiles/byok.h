/* SPDX-License-Identifier: Apache-2.0 */
/* byok.h: the Azure Key Vault .byok key-transfer format, and telling a
 * .byok from a .pfx.
 *
 * A .byok is JSON:
 *   {"schema_version":"1.0.0",
 *    "header":{"kid":KEK-ID,"alg":"dir","enc":"CKM_RSA_AES_KEY_WRAP"},
 *    "ciphertext":BASE64URL, "generator":TEXT}
 * where ciphertext = RSA-OAEP-SHA1(KEK, ephemeral AES-256 key) (as long as
 * the KEK's modulus: 256 bytes for RSA-2048) || AES-KWP (RFC 5649) of the
 * PKCS#8 DER private key. This module only parses and checks the shape; the
 * token unwraps (hsm_byok_unwrap), so the private key never exists here. */
#ifndef KB_BYOK_H
#define KB_BYOK_H

#include <stddef.h>
#include <stdint.h>

#include "kb_err.h"

/* Largest .byok accepted, in bytes. */
#define BYOK_MAX_BYTES (64 * 1024)

/* Length of the RSA-OAEP part of the ciphertext for an RSA-2048 KEK. */
#define BYOK_KEK_BYTES 256

struct byok_file {
	char kid[128]; /* header.kid: which KEK the key is wrapped for */
	char generator[128]; /* "generator", cut to fit; "" if absent */
	uint8_t *blob; /* the decoded ciphertext (malloc'd) */
	size_t blob_len; /* > 256, (blob_len - 256) % 8 == 0, >= 272 */
};

/* Parse and check a .byok file (`len` bytes of UTF-8 JSON, at most
 * BYOK_MAX_BYTES; a leading UTF-8 byte-order mark is allowed). Checks:
 * a JSON object; schema_version "1.0.0"; header.alg "dir"; header.enc
 * "CKM_RSA_AES_KEY_WRAP"; header.kid a non-empty string of at most 127
 * bytes; ciphertext base64url (with or without '=' padding; '+' and '/'
 * accepted too) whose decoded length is 256 + a multiple of 8, at least
 * 16 past the 256. Extra fields are ignored. Each refusal is
 * KB_ERR_INVALID_ARGUMENT naming the field and the value found. On
 * success `out` owns blob: release it with byok_file_clear. On failure
 * `out` holds nothing to free. */
enum kb_err byok_parse(const uint8_t *json, size_t len, struct byok_file *out);

/* Wipe and free the blob and zero the struct. Accepts NULL and an already
 * cleared struct. */
void byok_file_clear(struct byok_file *f);

enum keyfile_format {
	KEYFILE_UNKNOWN = 0,
	KEYFILE_PFX, /* starts with a DER SEQUENCE (0x30) */
	KEYFILE_BYOK, /* first non-blank character is '{' (after a BOM) */
};

/* Guess a key file's format from its first bytes; no parsing. */
enum keyfile_format keyfile_detect(const uint8_t *data, size_t len);

/* "pfx", "byok" or "unknown", for messages. */
const char *keyfile_format_name(enum keyfile_format f);

#endif /* KB_BYOK_H */
