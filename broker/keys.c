/* SPDX-License-Identifier: Apache-2.0 */
/* keys.c: tenant key files into the token and their fingerprints. */
#include "keys.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "audit.h"
#include "clock.h"
#include "dek.h"
#include "fingerprint.h"
#include "kb_time.h"
#include "log.h"
#include "pfx.h"

/* Values of keybroker.v1.KeyFileFormat. */
#define FORMAT_PFX 1
#define FORMAT_BYOK 2

enum kb_err
keys_file_check(
    const uint8_t *data, size_t len, int requested, enum keyfile_format *out)
{
	enum keyfile_format seen;

	if (len == 0)
		return kb_errf(
		    KB_ERR_INVALID_ARGUMENT, "the key file is empty");
	if (len > KEYS_FILE_MAX)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the key file is %zu bytes; "
		    "a .pfx or .byok of an RSA-2048 key is at most %d bytes",
		    len, KEYS_FILE_MAX);
	if (requested != 0 && requested != FORMAT_PFX
	    && requested != FORMAT_BYOK)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "unknown key file format "
		    "%d (use 1 for .pfx, 2 for .byok, 0 to detect)",
		    requested);
	seen = keyfile_detect(data, len);
	if (requested == FORMAT_PFX)
		*out = KEYFILE_PFX;
	else if (requested == FORMAT_BYOK)
		*out = KEYFILE_BYOK;
	else if (seen == KEYFILE_UNKNOWN)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the key file is neither "
		    "a .pfx (PKCS#12, DER) nor a .byok (JSON)");
	else
		*out = seen;
	return KB_OK;
}

enum kb_err
keys_token_fingerprint(
    struct hsm *h, const char *id, char fp[FINGERPRINT_HEX_LEN + 1])
{
	uint8_t *der = NULL;
	size_t len = 0;
	enum kb_err e;

	if ((e = hsm_public_key_der(h, id, &der, &len)) != KB_OK)
		return e;
	e = fingerprint_spki(der, len, fp);
	free(der);
	return e;
}

enum kb_err
keys_public_pem(struct broker *b, const char *id, char **pem)
{
	uint8_t *der = NULL;
	const uint8_t *p;
	size_t len = 0;
	EVP_PKEY *pub = NULL;
	BIO *bio = NULL;
	char *data;
	long n;
	enum kb_err e;

	*pem = NULL;
	if ((e = hsm_public_key_der(b->hsm, id, &der, &len)) != KB_OK)
		return e;
	p = der;
	if ((pub = d2i_PUBKEY(NULL, &p, (long)len)) == NULL
	    || (bio = BIO_new(BIO_s_mem())) == NULL
	    || PEM_write_bio_PUBKEY(bio, pub) != 1) {
		e = kb_err_openssl(KB_ERR_CRYPTO, "encoding a public key");
		goto out;
	}
	n = BIO_get_mem_data(bio, &data);
	if ((*pem = strndup(data, (size_t)n)) == NULL) {
		e = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	e = KB_OK;
out:
	BIO_free(bio);
	EVP_PKEY_free(pub);
	free(der);
	return e;
}

enum kb_err
keys_exchange_find(struct broker *b, const char *tenant, struct store_key *out)
{
	struct store_key *v = NULL;
	size_t n = 0, i;
	enum kb_err e;

	if ((e = store_key_list(b->store, tenant, "exchange", &v, &n)) != KB_OK)
		return e;
	e = kb_errf(KB_ERR_NOT_FOUND,
	    "tenant \"%s\" has no key-exchange key "
	    "yet: get one with kbctl byok kek %s",
	    tenant, tenant);
	for (i = n; i > 0; i--) {
		if (strcmp(v[i - 1].state, "active") == 0) {
			*out = v[i - 1];
			e = KB_OK;
			break;
		}
	}
	free(v);
	return e;
}

/* A new key-exchange key for `tenant`, made and recorded active. */
static enum kb_err
exchange_create(struct broker *b, const char *tenant, struct store_key *out)
{
	struct store_key k;
	enum kb_err e;

	memset(&k, 0, sizeof(k));
	if ((e = broker_new_id(b, "x-", k.id, sizeof(k.id))) != KB_OK)
		return e;
	/* Usable only to unwrap imports: no decrypt, no sign. */
	if ((e = hsm_rsa_generate(b->hsm, k.id, 2048, HSM_USE_UNWRAP)) != KB_OK)
		return kb_err_wrap(e, "creating the key-exchange key");
	if ((e = keys_token_fingerprint(b->hsm, k.id, k.fingerprint)) != KB_OK)
		goto fail;
	snprintf(k.tenant_id, sizeof(k.tenant_id), "%s", tenant);
	snprintf(k.purpose, sizeof(k.purpose), "exchange");
	snprintf(k.origin, sizeof(k.origin), "generated");
	snprintf(k.state, sizeof(k.state), "active");
	snprintf(k.wrap_alg, sizeof(k.wrap_alg), "%s", b->wrap_alg);
	k.bits = 2048;
	k.create_time_us = k.update_time_us = clock_now_us();
	if ((e = store_key_create(b->store, &k)) != KB_OK)
		goto fail;
	log_info("key-exchange key %s created for tenant %s", k.id, tenant);
	*out = k;
	return KB_OK;
fail:
	(void)hsm_key_destroy(b->hsm, k.id);
	return e;
}

enum kb_err
keys_exchange(struct broker *b, const char *tenant, struct store_key *out)
{
	enum kb_err e;

	e = keys_exchange_find(b, tenant, out);
	if (e != KB_ERR_NOT_FOUND)
		return e;
	kb_err_clear();
	return exchange_create(b, tenant, out);
}

/* Unwrap a .byok into the token as `id`. */
static enum kb_err
byok_import(struct broker *b, const char *tenant, const struct key_file *f,
    const char *id)
{
	struct byok_file bf;
	struct store_key kek;
	enum kb_err e;

	memset(&bf, 0, sizeof(bf));
	if ((e = byok_parse(f->data, f->len, &bf)) != KB_OK)
		return e;
	if ((e = keys_exchange_find(b, tenant, &kek)) != KB_OK)
		goto out;
	if (strcmp(bf.kid, kek.id) != 0) {
		e = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the .byok was made for "
		    "key-exchange key \"%.64s\", but tenant \"%s\"'s is "
		    "\"%s\": "
		    "wrap the key again with the KEK from kbctl byok kek %s",
		    bf.kid, tenant, kek.id, tenant);
		goto out;
	}
	e = hsm_byok_unwrap(b->hsm, kek.id,
	    kek.wrap_alg[0] ? kek.wrap_alg : b->wrap_alg, bf.blob, bf.blob_len,
	    id, 2048, HSM_USE_KEYWRAP);
out:
	byok_file_clear(&bf);
	return e;
}

enum kb_err
keys_import(struct broker *b, const char *tenant, const struct key_file *f,
    const char *id, char fp[FINGERPRINT_HEX_LEN + 1])
{
	EVP_PKEY *pkey = NULL;
	enum kb_err e;

	if (f->format == KEYFILE_BYOK) {
		if ((e = byok_import(b, tenant, f, id)) != KB_OK)
			return e;
		if ((e = keys_token_fingerprint(b->hsm, id, fp)) != KB_OK) {
			(void)hsm_key_destroy(b->hsm, id);
			return e;
		}
		return KB_OK;
	}
	if (f->password == NULL || f->password[0] == '\0')
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "a .pfx needs its "
		    "password: tenant key files must be password protected");
	if ((e = pfx_parse(f->data, f->len, f->password, &pkey)) != KB_OK)
		return e;
	if ((e = fingerprint_pkey(pkey, fp)) == KB_OK)
		e = hsm_rsa_import(b->hsm, id, pkey, HSM_USE_KEYWRAP);
	EVP_PKEY_free(pkey);
	return e;
}

enum kb_err
keys_file_fingerprint(struct broker *b, const char *tenant,
    const struct key_file *f, char fp[FINGERPRINT_HEX_LEN + 1])
{
	EVP_PKEY *pkey = NULL;
	char tmp[STORE_KEY_ID_MAX];
	enum kb_err e, e2;

	if (f->format == KEYFILE_PFX) {
		if (f->password == NULL || f->password[0] == '\0')
			return kb_errf(KB_ERR_INVALID_ARGUMENT,
			    "a .pfx needs its "
			    "password");
		if ((e = pfx_parse(f->data, f->len, f->password, &pkey))
		    != KB_OK)
			return e;
		e = fingerprint_pkey(pkey, fp);
		EVP_PKEY_free(pkey);
		return e;
	}
	/* A .byok can only be opened inside the token: unwrap it under a
	 * temporary id, read the public key, destroy it. */
	if ((e = broker_new_id(b, "tmp-", tmp, sizeof(tmp))) != KB_OK)
		return e;
	if ((e = keys_import(b, tenant, f, tmp, fp)) != KB_OK)
		return e;
	if ((e2 = hsm_key_destroy(b->hsm, tmp)) != KB_OK)
		log_error(
		    "cannot destroy temporary key %s: %s", tmp, kb_err_msg(e2));
	return KB_OK;
}

enum kb_err
keys_kek_create(struct broker *b, const char *tenant, const char *parent_id,
    const char *state, struct store_key *out)
{
	struct store_key k;
	char label[DEK_LABEL_MAX];
	uint8_t *wrapped = NULL;
	size_t wlen = 0;
	enum kb_err e;

	memset(&k, 0, sizeof(k));
	if ((e = broker_new_id(b, "kek-", k.id, sizeof(k.id))) != KB_OK)
		return e;
	dek_label(STORE_MODE_CUSTOMER, tenant, label, sizeof(label));
	if ((e = hsm_kek_create(
	         b->hsm, parent_id, b->wrap_alg, k.id, label, &wrapped, &wlen))
	    != KB_OK)
		return kb_err_wrap(e, "making tenant %s's KEK under key %s",
		    tenant, parent_id);
	if (wlen > sizeof(k.wrapped)) {
		free(wrapped);
		(void)hsm_key_destroy(b->hsm, k.id);
		return kb_errf(
		    KB_ERR_INTERNAL, "wrapped KEK of %zu bytes", wlen);
	}
	memcpy(k.wrapped, wrapped, wlen);
	k.wrapped_len = wlen;
	free(wrapped);
	snprintf(k.tenant_id, sizeof(k.tenant_id), "%s", tenant);
	snprintf(k.purpose, sizeof(k.purpose), "kek");
	snprintf(k.origin, sizeof(k.origin), "generated");
	snprintf(k.state, sizeof(k.state), "%s", state);
	snprintf(k.wrap_alg, sizeof(k.wrap_alg), "%s", b->wrap_alg);
	snprintf(k.parent_id, sizeof(k.parent_id), "%s", parent_id);
	snprintf(k.fingerprint, sizeof(k.fingerprint), "-");
	k.bits = 256;
	k.create_time_us = k.update_time_us = clock_now_us();
	if (strcmp(state, "installing") != 0) {
		/* An installing KEK is recorded with its activation job. */
		if ((e = store_key_create(b->store, &k)) != KB_OK) {
			(void)hsm_key_destroy(b->hsm, k.id);
			return e;
		}
	}
	*out = k;
	return KB_OK;
}

enum kb_err
keys_exchange_rotate(
    struct broker *b, const char *tenant, struct store_key *out)
{
	struct store_key old, k;
	enum kb_err e;
	int had;

	e = keys_exchange_find(b, tenant, &old);
	if (e != KB_OK && e != KB_ERR_NOT_FOUND)
		return e;
	had = e == KB_OK;
	kb_err_clear();
	/* The new one first, so the tenant is never without one. */
	memset(&k, 0, sizeof(k));
	if ((e = exchange_create(b, tenant, &k)) != KB_OK)
		return e;
	if (had) {
		if ((e = store_key_set_state(
		         b->store, old.id, "active", "deleted", clock_now_us()))
		    != KB_OK)
			return e;
		if ((e = hsm_key_destroy(b->hsm, old.id)) != KB_OK
		    && e != KB_ERR_NOT_FOUND)
			log_error(
			    "key-exchange key %s: cannot destroy it in the "
			    "token (at the next start): %s",
			    old.id, kb_err_msg(e));
		kb_err_clear();
		log_info("key-exchange key of tenant %s rotated: %s -> %s",
		    tenant, old.id, k.id);
	}
	*out = k;
	return KB_OK;
}

/* A retired tenant key's deletion is scheduled at once, with the window
 * DeleteKey gives (undelete gives it back retired). A KEK or platform key
 * was deleted by the job itself. On failure the key stays retired and
 * 'kbctl keys delete' schedules it. */
static void
retired_delete(struct broker *b, const char *tenant, const char *key_id)
{
	int64_t now = clock_now_us();
	int64_t final_us =
	    now + (int64_t)b->cfg->deletion_window_days * 86400 * 1000000;
	struct store_key k;
	char when[40], reason[256];
	enum kb_err e;

	broker_tenant_lock(b, tenant);
	e = store_key_delete_begin(b->store, tenant, key_id, now, final_us, &k);
	broker_tenant_unlock(b, tenant);
	if (e != KB_OK) {
		log_error("retired key %s of tenant %s: its deletion could not "
		          "be scheduled (kbctl keys delete %s %s does it): %s",
		    key_id, tenant, tenant, key_id, kb_err_msg(e));
		kb_err_clear();
		return;
	}
	kb_time_format(k.delete_final_us, when, sizeof(when));
	snprintf(reason, sizeof(reason),
	    "retired: pending deletion, final at %s (deletion_window_days = "
	    "%u), when its token object is destroyed; 'kbctl keys undelete' "
	    "cancels it until then",
	    when, b->cfg->deletion_window_days);
	log_warn("key %s of tenant %s is PENDING DELETION (retired): final at "
	         "%s",
	    key_id, tenant, when);
	(void)broker_audit_system(
	    b, "key.delete.requested", tenant, NULL, key_id, "ok", reason);
}

void
keys_retire_done(struct broker *b, const char *tenant, const char *key_id,
    const char *job_id)
{
	char why[128];

	snprintf(why, sizeof(why), "job %s: it seals nothing now", job_id);
	log_info("key %s%s%s retired: %s", key_id,
	    tenant[0] ? " of tenant " : "", tenant, why);
	(void)broker_audit_system(b, "key.retired", tenant[0] ? tenant : NULL,
	    NULL, key_id, "ok", why);
	if (tenant[0] != '\0')
		retired_delete(b, tenant, key_id);
}

enum kb_err
keys_platform_new(struct broker *b, const char *state, struct store_key *out)
{
	struct store_key k;
	enum kb_err e;

	memset(&k, 0, sizeof(k));
	if ((e = broker_new_id(b, "kb-pk-", k.id, sizeof(k.id))) != KB_OK)
		return e;
	if ((e = hsm_aes_generate(b->hsm, k.id, DEK_LABEL_PLATFORM)) != KB_OK)
		return kb_err_wrap(e, "making a platform key");
	snprintf(k.purpose, sizeof(k.purpose), "platform");
	snprintf(k.origin, sizeof(k.origin), "generated");
	snprintf(k.state, sizeof(k.state), "%s", state);
	snprintf(k.wrap_alg, sizeof(k.wrap_alg), "%s", HSM_ALG_AES_GCM);
	snprintf(k.fingerprint, sizeof(k.fingerprint), "-");
	k.bits = 256;
	k.create_time_us = k.update_time_us = clock_now_us();
	if (strcmp(state, "active") == 0)
		k.activate_time_us = k.create_time_us;
	*out = k;
	return KB_OK;
}

enum kb_err
keys_audit_rotate(struct broker *b, struct store_key *out)
{
	struct store_key k, old;
	char cur[KB_AUDIT_KEY_ID_MAX];
	enum kb_err e;

	audit_signing_key(b->audit, cur);
	if ((e = store_key_get(b->store, cur, &old)) != KB_OK)
		return e;
	memset(&k, 0, sizeof(k));
	if ((e = broker_new_id(b, "kb-audit-", k.id, sizeof(k.id))) != KB_OK)
		return e;
	log_info("creating the audit key %s (RSA-2048) in token '%s'", k.id,
	    b->token.label);
	if ((e = hsm_rsa_generate(b->hsm, k.id, 2048, HSM_USE_SIGN)) != KB_OK)
		return kb_err_wrap(e, "creating the new audit key");
	if ((e = keys_token_fingerprint(b->hsm, k.id, k.fingerprint)) != KB_OK)
		goto undo;
	snprintf(k.purpose, sizeof(k.purpose), "audit");
	snprintf(k.origin, sizeof(k.origin), "generated");
	snprintf(k.state, sizeof(k.state), "active");
	k.bits = 2048;
	k.create_time_us = k.update_time_us = clock_now_us();
	if ((e = store_key_create(b->store, &k)) != KB_OK)
		goto undo;
	/* From here the database names the new key: a crash before the
	 * hand-over is finished by the next start (audit.c). */
	if ((e = store_key_set_state(
	         b->store, old.id, "active", "retired", clock_now_us()))
	    != KB_OK)
		log_error("audit key %s stays 'active' in the database: %s",
		    old.id, kb_err_msg(e));
	clock_crash_point("audit-rotate-stored");
	if ((e = audit_rotate_key(b->audit, k.id)) != KB_OK)
		return e;
	*out = k;
	return KB_OK;
undo:
	(void)hsm_key_destroy(b->hsm, k.id);
	kb_err_clear();
	return e;
}

/* A crash between a lock's (or a job's) commit and the token work leaves
 * keys the database calls locked or deleted in the token: destroy them. */
enum kb_err
keys_reconcile(struct broker *b, int running)
{
	struct store_key *v = NULL;
	size_t n = 0, i;
	enum kb_err e;

	if ((e = store_keys_destroyed(b->store, &v, &n)) != KB_OK)
		return e;
	for (i = 0; i < n; i++) {
		char label[DEK_LABEL_MAX];
		int tenant_locked = 0;
		struct store_key now;

		/* While serving, a locked key may be coming back (unlock runs
		 * under its tenant's lock, not ours): only deleted keys, which
		 * never return, and never a tenant's RSA key (its lock destroys
		 * those itself). */
		if (running
		    && (strcmp(v[i].state, "deleted") != 0
		        || strcmp(v[i].purpose, "tenant") == 0))
			continue;
		/* Another broker on the same database may be unlocking this
		 * tenant right now (its key back in the token, the database
		 * not yet saying so): decide under the tenant's lock, on the
		 * key's state read again. */
		if (v[i].tenant_id[0] != '\0') {
			broker_tenant_lock(b, v[i].tenant_id);
			tenant_locked = 1;
			if (store_key_get(b->store, v[i].id, &now) != KB_OK
			    || strcmp(now.state, v[i].state) != 0) {
				broker_tenant_unlock(b, v[i].tenant_id);
				kb_err_clear();
				continue;
			}
		}

		if (strcmp(v[i].purpose, "tenant") == 0
		    || (strcmp(v[i].purpose, "platform") == 0
		        && strncmp(v[i].wrap_alg, "RSA-OAEP", 8) == 0)) {
			/* Any object with its id, not only the private half:
			 * a crash inside a destroy can leave the public one,
			 * which would make the key's unlock fail. */
			e = hsm_key_destroy(b->hsm, v[i].id);
			if (tenant_locked)
				broker_tenant_unlock(b, v[i].tenant_id);
			if (e == KB_ERR_NOT_FOUND) {
				e = KB_OK;
				kb_err_clear();
				continue;
			}
			if (e != KB_OK)
				break;
			log_warn("key %s (%s%s%s) was %s but still in the "
			         "token: destroyed it",
			    v[i].id, v[i].purpose,
			    v[i].tenant_id[0] ? ", tenant " : "",
			    v[i].tenant_id, v[i].state);
			continue;
		} else {
			dek_label(strcmp(v[i].purpose, "kek") == 0
			        ? STORE_MODE_CUSTOMER
			        : STORE_MODE_PLATFORM,
			    v[i].tenant_id, label, sizeof(label));
			e = hsm_secret_exists(b->hsm, v[i].id, label);
		}
		if (e != KB_OK) {
			e = KB_OK;
			kb_err_clear();
			if (tenant_locked)
				broker_tenant_unlock(b, v[i].tenant_id);
			continue;
		}
		log_warn("key %s (%s%s%s) is %s but still in the token: "
		         "destroying it now",
		    v[i].id, v[i].purpose, v[i].tenant_id[0] ? ", tenant " : "",
		    v[i].tenant_id, v[i].state);
		e = hsm_key_destroy(b->hsm, v[i].id);
		if (tenant_locked)
			broker_tenant_unlock(b, v[i].tenant_id);
		if (e != KB_OK)
			break;
	}
	free(v);
	return e;
}
