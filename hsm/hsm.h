/* SPDX-License-Identifier: Apache-2.0 */
/* hsm.h: the only door into the PKCS#11 token.
 *
 * Keys are named by a printable string id (at most 64 bytes of [A-Za-z0-9._-]),
 * stored as both CKA_ID and CKA_LABEL on the private and public objects of a
 * pair. Every function is safe to call from many threads at once: a pool of
 * sessions serves them. Errors come back as kb_err with a message (via
 * kb_errf) that names the PKCS#11 function and the CK_RV ("C_Decrypt:
 * CKR_ENCRYPTED_DATA_INVALID"). Every object made here is CKA_TOKEN and
 * CKA_PRIVATE (public halves too); private and secret keys are also
 * CKA_SENSITIVE and not CKA_EXTRACTABLE, and every search asks for exactly
 * that, so an object planted by a session without the PIN is never used.
 * Secret keys also carry a label naming their purpose ("kb:platform",
 * "kb:kek:TENANT"), and are found only by id and label together. */
#ifndef KB_HSM_H
#define KB_HSM_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "kb_err.h"

struct hsm;

struct hsm_config {
	const char *module_path; /* PKCS#11 module; NULL = SoftHSMv2's */
	const char *token_uri; /* "pkcs11:token=keybroker" (RFC 7512) */
	const char *pin_file; /* user PIN, one line; must be mode 0600 */
	int check_pin_mode; /* refuse a PIN file readable by others */
	unsigned sessions; /* size of the session pool; 0 = 8 */
};

#define HSM_ALG_OAEP_SHA1 "RSA-OAEP-SHA1"
#define HSM_ALG_OAEP_SHA256 "RSA-OAEP-SHA256"

/* Key uses, chosen at creation. */
enum hsm_key_use {
	HSM_USE_ENCRYPT = 1, /* CKA_ENCRYPT/CKA_DECRYPT: wraps DEKs (OAEP) */
	HSM_USE_UNWRAP = 2, /* CKA_UNWRAP only: BYOK key-exchange key */
	HSM_USE_SIGN = 4, /* CKA_SIGN/CKA_VERIFY: audit checkpoints */
	HSM_USE_KEYWRAP = 8, /* CKA_WRAP/CKA_UNWRAP: wraps a tenant's KEK */
};

#define HSM_ALG_AES_GCM "AES-256-GCM"
#define HSM_GCM_IV_LEN 12
#define HSM_GCM_TAG_LEN 16

struct hsm_token_info {
	char label[33]; /* trailing blanks trimmed */
	char serial[17];
	char manufacturer[33];
	char model[17];
};

/* Load the module through p11-kit, find the one token matching the URI
 * (KB_ERR_CONFIG if none or several match, naming the tokens seen), log in
 * with the PIN (KB_ERR_HSM with CKR_PIN_INCORRECT etc.) and open the session
 * pool. The PIN is kept in locked memory for re-login after a token
 * failure, and wiped at hsm_close(). */
enum kb_err hsm_open(const struct hsm_config *cfg, struct hsm **out);
void hsm_close(struct hsm *h);

void hsm_token_info(const struct hsm *h, struct hsm_token_info *out);

/* Returns KB_OK when the token answers (C_GetSessionInfo on a pooled
 * session, logged in); KB_ERR_UNAVAILABLE otherwise, after trying once to
 * recover (reopen sessions and log in again). */
enum kb_err hsm_check(struct hsm *h);

/* Which OAEP variant the token accepts with key `id` (which must allow
 * HSM_USE_ENCRYPT): tries SHA-256 first, falls back to SHA-1 (SoftHSMv2 2.6.1).
 * Sets *alg to HSM_ALG_OAEP_SHA256 or HSM_ALG_OAEP_SHA1 (static strings). */
enum kb_err hsm_oaep_probe(struct hsm *h, const char *id, const char **alg);

/* Generate an RSA key pair of `bits` bits in the token with uses `use`.
 * KB_ERR_ALREADY_EXISTS if a key with this id exists. */
enum kb_err hsm_rsa_generate(
    struct hsm *h, const char *id, unsigned bits, unsigned use);

/* Import an RSA private key (secret) as a token key pair with uses `use`.
 * The caller wipes its copy; the components copied here are wiped before
 * returning. */
enum kb_err hsm_rsa_import(
    struct hsm *h, const char *id, EVP_PKEY *pkey, unsigned use);

/* Import a key pair from an Azure-style BYOK blob: `blob` is
 * RSA-OAEP(kek, AES-256 key) || AES-KWP(PKCS#8 private key). Both unwraps run
 * in the token (CKM_RSA_PKCS_OAEP with `oaep_alg`, then CKM_AES_KEY_WRAP_PAD)
 * so the private key never exists outside it. The new private key gets id
 * `id` and uses `use`; the public object is built from its modulus and
 * exponent. A key that is not RSA of `want_bits` is destroyed and refused
 * (KB_ERR_INVALID_ARGUMENT). */
enum kb_err hsm_byok_unwrap(struct hsm *h, const char *kek_id,
    const char *oaep_alg, const uint8_t *blob, size_t blob_len, const char *id,
    unsigned want_bits, unsigned use);

/* The public key of `id` as DER SubjectPublicKeyInfo (*der malloc'd). */
enum kb_err hsm_public_key_der(
    struct hsm *h, const char *id, uint8_t **der, size_t *der_len);

/* KB_OK if a private key with this id exists, KB_ERR_NOT_FOUND if not. */
enum kb_err hsm_key_exists(struct hsm *h, const char *id);

/* Destroy every key object with this id: both halves of a pair, or a
 * secret key (C_DestroyObject). KB_ERR_NOT_FOUND if there is none. */
enum kb_err hsm_key_destroy(struct hsm *h, const char *id);

/* Destroy only the private half of key pair `id` (a retired signing key:
 * it can sign no more; its public half stays to verify what it signed).
 * KB_ERR_NOT_FOUND when there is no private half. */
enum kb_err hsm_key_retire(struct hsm *h, const char *id);

/* Bring an RSA pair made by an older keybroker to today's rules: the
 * private half's CKA_UNWRAP is set as `use` says (HSM_USE_UNWRAP or
 * HSM_USE_KEYWRAP) and its CKA_DECRYPT likewise (HSM_USE_ENCRYPT), both
 * ways; every public object with this id that is not
 * CKA_PRIVATE is destroyed, and a CKA_PRIVATE one is made from the private
 * key's own modulus if none is left. *changed says whether anything was
 * done. KB_ERR_NOT_FOUND if there is no private key `id`. */
enum kb_err hsm_rsa_upgrade(
    struct hsm *h, const char *id, unsigned use, int *changed);

/* ---- AES keys (hsm_aes.c) ---- */

/* Generate an AES-256 secret key `id` with label `label` in the token:
 * CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, not CKA_EXTRACTABLE, encrypt and
 * decrypt only. KB_ERR_ALREADY_EXISTS if the id is taken. */
enum kb_err hsm_aes_generate(struct hsm *h, const char *id, const char *label);

/* Make a tenant KEK: an AES-256 key generated in the token as an
 * extractable session object, wrapped (C_WrapKey, RSA-OAEP `oaep_alg`)
 * under the public half of RSA pair `rsa_id`, destroyed, and made again
 * from the wrapped blob by C_UnwrapKey with the private half as token
 * object `kek_id` (label `label`, not extractable): so the blob is proven
 * to unwrap before it is stored. The plaintext never leaves the token.
 * *wrapped (malloc'd, not secret) is what the database keeps. */
enum kb_err hsm_kek_create(struct hsm *h, const char *rsa_id,
    const char *oaep_alg, const char *kek_id, const char *label,
    uint8_t **wrapped, size_t *wrapped_len);

/* Make token object `kek_id` again from a stored wrapped KEK with the
 * private half of `rsa_id` (unlock, or a broker whose token lost it).
 * KB_ERR_ALREADY_EXISTS if it exists; KB_ERR_CORRUPT if the blob does not
 * unwrap with that key. */
enum kb_err hsm_kek_unwrap(struct hsm *h, const char *rsa_id,
    const char *oaep_alg, const uint8_t *wrapped, size_t wrapped_len,
    const char *kek_id, const char *label);

/* KB_OK if secret key (id, label) exists, KB_ERR_NOT_FOUND if not. Asks
 * the token, not the handle cache. */
enum kb_err hsm_secret_exists(struct hsm *h, const char *id, const char *label);

/* AES-256-GCM in the token with secret key (id, label): seal `in` (secret)
 * with associated data `aad` into *out = IV (12, from the token's RNG) ||
 * ciphertext || tag (16) (malloc'd). open reverses it: *out (secret) is
 * malloc'd, the caller wipes it; a blob that was altered, moved (other
 * aad) or made under another key is KB_ERR_CORRUPT. */
enum kb_err hsm_gcm_seal(struct hsm *h, const char *id, const char *label,
    const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t in_len,
    uint8_t **out, size_t *out_len);
enum kb_err hsm_gcm_open(struct hsm *h, const char *id, const char *label,
    const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t in_len,
    uint8_t **out, size_t *out_len);

/* KB_OK if any secret key of ours carries `label`, else KB_ERR_NOT_FOUND. */
enum kb_err hsm_label_exists(struct hsm *h, const char *label);

/* Which OAEP variant the token accepts, probed with a temporary RSA pair
 * (session objects, destroyed): SHA-256, or SHA-1 (SoftHSMv2 2.6.1). */
enum kb_err hsm_oaep_probe_temp(struct hsm *h, const char **alg);

/* RSA-OAEP encrypt `in` (secret) under the public key `id`; *out malloc'd. */
enum kb_err hsm_encrypt(struct hsm *h, const char *id, const char *alg,
    const uint8_t *in, size_t in_len, uint8_t **out, size_t *out_len);

/* RSA-OAEP decrypt in the token. *out (secret) is malloc'd: the caller
 * wipes and frees it (kb_freezero). A blob that does not decrypt is
 * KB_ERR_CORRUPT ("CKR_ENCRYPTED_DATA_INVALID"). */
enum kb_err hsm_decrypt(struct hsm *h, const char *id, const char *alg,
    const uint8_t *in, size_t in_len, uint8_t **out, size_t *out_len);

/* RSASSA-PKCS1-v1_5 with SHA-256 (CKM_SHA256_RSA_PKCS) over `data`. */
enum kb_err hsm_sign(struct hsm *h, const char *id, const uint8_t *data,
    size_t len, uint8_t **sig, size_t *sig_len);

/* A private data object of ours (CKO_DATA, CKA_PRIVATE, application
 * "keybroker") by label: read its value into *out (malloc'd), or write it
 * (a new object, then the old one destroyed: a crash leaves the old or the
 * new, never neither; a read takes the newest). Absent is
 * KB_ERR_NOT_FOUND; one not in our format, KB_ERR_CORRUPT. */
enum kb_err hsm_data_read(
    struct hsm *h, const char *label, uint8_t **out, size_t *len);
enum kb_err hsm_data_write(
    struct hsm *h, const char *label, const uint8_t *data, size_t len);

/* Fill buf with n bytes from the token's C_GenerateRandom. */
enum kb_err hsm_random(struct hsm *h, uint8_t *buf, size_t n);

/* ---- diagnostics (hsm_diag.c) ---- */

#define HSM_DIAG_MECHS 8

/* One mechanism the broker uses and whether the token offers it with the
 * flags that use needs (C_GetMechanismInfo). */
struct hsm_diag_mech {
	const char *name; /* "CKM_AES_GCM" (static) */
	const char *use; /* what the broker does with it (static) */
	int ok;
	char why[160]; /* when not ok: missing, or which flag lacks */
};

/* What the doctor reads of the token; nothing is changed. */
struct hsm_diag {
	int logged_in; /* a pooled session is in the user state */
	char login_error[200]; /* when not */
	int rng; /* CKF_RNG: C_GenerateRandom (ids, DEKs, IVs) */
	int pin_count_low, pin_final_try, pin_locked; /* CKF_USER_PIN_* */
	struct hsm_diag_mech mechs[HSM_DIAG_MECHS];
	size_t nmechs;
};

/* Fill *out: the login state, the token's flags (C_GetTokenInfo) and
 * every mechanism hsm/ uses. KB_ERR_HSM when the token cannot be asked at
 * all (*out says how far it got). */
enum kb_err hsm_diagnose(struct hsm *h, struct hsm_diag *out);

/* Name of a CK_RV ("CKR_PIN_INCORRECT"), for messages. */
const char *hsm_rv_name(unsigned long rv);

/* Token operations on a key, timed for the metrics endpoint: encrypt (an
 * AES-GCM seal, RSA encrypt), decrypt (a GCM open, RSA decrypt), sign (audit
 * checkpoints), other (public-key reads, and an operation that failed
 * before the token ran it). */
enum hsm_op_kind { HSM_OP_ENCRYPT, HSM_OP_DECRYPT, HSM_OP_SIGN, HSM_OP_OTHER };
#define HSM_OP_KINDS 4
/* "encrypt", "decrypt", "sign", "other". */
const char *hsm_op_kind_name(enum hsm_op_kind k);
struct kb_hist;
/* The latency histogram of kind `k`, valid while `h` is open. */
const struct kb_hist *hsm_op_hist(const struct hsm *h, enum hsm_op_kind k);

/* How many times a token call (an object's creation, a login) failed in a
 * way that may pass (SoftHSMv2's CKR_GENERAL_ERROR while another process
 * wrote the token) and was tried again, or an object was found only on a
 * second search, since hsm_open. */
unsigned long hsm_retries(const struct hsm *h);

#endif /* KB_HSM_H */
