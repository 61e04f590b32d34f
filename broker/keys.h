/* SPDX-License-Identifier: Apache-2.0 */
/* keys.h: tenant key files (.pfx, .byok) into the token, fingerprints, and
 * the per-tenant key-exchange key for BYOK. */
#ifndef KB_KEYS_H
#define KB_KEYS_H

#include <stddef.h>
#include <stdint.h>

#include "broker.h"
#include "byok.h"
#include "fingerprint.h"

/* An uploaded key file. `data` and `password` are secret. */
struct key_file {
	enum keyfile_format format;
	const uint8_t *data;
	size_t len;
	const char *password;
};

#define KEYS_FILE_MAX (64 * 1024)

/* Check size and format of an uploaded file. `requested` is the
 * KeyFileFormat from the request (0 = detect). KB_ERR_INVALID_ARGUMENT with
 * a reason when it is empty, too large, or neither a .pfx nor a .byok. */
enum kb_err keys_file_check(
    const uint8_t *data, size_t len, int requested, enum keyfile_format *out);

/* Put the key of `f` into the token as key pair `id` (RSA-2048, for
 * wrapping the tenant's KEK) and give its fingerprint. A .pfx is parsed here
 * and its material wiped; a .byok is unwrapped inside the token with the
 * tenant's KEK (its kid must name that KEK). On failure nothing is left in the
 * token. */
enum kb_err keys_import(struct broker *b, const char *tenant,
    const struct key_file *f, const char *id, char fp[FINGERPRINT_HEX_LEN + 1]);

/* The fingerprint of the key in `f`, leaving nothing in the token. */
enum kb_err keys_file_fingerprint(struct broker *b, const char *tenant,
    const struct key_file *f, char fp[FINGERPRINT_HEX_LEN + 1]);

/* The fingerprint of token key `id`: hex SHA-256 of the DER
 * SubjectPublicKeyInfo of its public half. */
enum kb_err keys_token_fingerprint(
    struct hsm *h, const char *id, char fp[FINGERPRINT_HEX_LEN + 1]);

/* The public key of token key `id` as PEM SubjectPublicKeyInfo (*pem
 * malloc'd, NUL-terminated). */
enum kb_err keys_public_pem(struct broker *b, const char *id, char **pem);

/* The tenant's BYOK key-exchange key (Azure's "KEK"; purpose "exchange"
 * here), made in the token at first use (the caller holds the tenant
 * lock). */
enum kb_err keys_exchange(
    struct broker *b, const char *tenant, struct store_key *out);

/* A new key-exchange key for the tenant (active); the previous one is
 * recorded deleted and destroyed in the token. */
enum kb_err keys_exchange_rotate(
    struct broker *b, const char *tenant, struct store_key *out);

/* The tenant's key-exchange key if it has one (KB_ERR_NOT_FOUND
 * otherwise). */
enum kb_err keys_exchange_find(
    struct broker *b, const char *tenant, struct store_key *out);

/* Make a new AES-256 KEK for `tenant` in the token, wrapped under tenant
 * key `parent_id` (hsm_kek_create), and record it in state `state`
 * ("active"), except "installing", which the caller records with its
 * activation (store_activation_begin). *out is the record. On failure
 * nothing is left in the token. */
enum kb_err keys_kek_create(struct broker *b, const char *tenant,
    const char *parent_id, const char *state, struct store_key *out);

/* A retirement job finished (jobs.c): key `key_id` of `tenant` ("" for a
 * platform key) seals nothing now and is retired (a KEK or platform key:
 * deleted). Records it (audit event key.retired, a log line). This is the
 * one place where the key's deletion gets scheduled once DeleteKey and its
 * pending-deletion window exist: call it from here. */
void keys_retire_done(struct broker *b, const char *tenant, const char *key_id,
    const char *job_id);

/* A new platform key made in the token (AES-256, label kb:platform) and
 * its record in state `state` in *out; the caller stores it (and destroys
 * the token object if it cannot). */
enum kb_err keys_platform_new(
    struct broker *b, const char *state, struct store_key *out);

/* A new audit signing key in the token and the database, then the audit
 * log hands signing over to it (audit_rotate_key). */
enum kb_err keys_audit_rotate(struct broker *b, struct store_key *out);

/* Destroy the token objects of every key the database calls locked or
 * deleted (after a crash between a commit and its token work); `running`
 * (after a finished job, while serving): only deleted KEKs and platform
 * keys. Each tenant's keys are decided under its tenant lock. */
enum kb_err keys_reconcile(struct broker *b, int running);

#endif /* KB_KEYS_H */
