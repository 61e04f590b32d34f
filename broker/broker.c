/* SPDX-License-Identifier: Apache-2.0 */
/* broker.c: bring up token, database and the broker's own keys. */
#include "broker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "clock.h"
#include "log.h"

/* Hex SHA-256 of DER SubjectPublicKeyInfo. */
static enum kb_err
key_fingerprint(struct hsm *h, const char *id, char out[65])
{
	uint8_t *der = NULL, md[32];
	size_t len = 0;
	enum kb_err e;
	int i;

	if ((e = hsm_public_key_der(h, id, &der, &len)) != KB_OK)
		return e;
	if (EVP_Digest(der, len, md, NULL, EVP_sha256(), NULL) != 1) {
		free(der);
		return kb_err_openssl(KB_ERR_CRYPTO, "hashing a public key");
	}
	free(der);
	for (i = 0; i < 32; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
	return KB_OK;
}

/* The platform key wraps every platform-mode DEK. It is made once, at first
 * start; afterwards it must be in the token. */
static enum kb_err
ensure_platform_key(struct broker *b)
{
	struct store_key k;
	const char *alg = NULL;
	enum kb_err e;

	e = store_key_broker(b->store, "platform", &k);
	if (e == KB_OK) {
		if ((e = hsm_key_exists(b->hsm, k.id)) != KB_OK)
			return kb_errf(KB_ERR_TOKEN_MISMATCH, "the platform key "
			    "\"%s\" recorded in the database is not in token "
			    "'%s': every platform-encrypted data key depends on "
			    "it; restore the token from backup", k.id,
			    b->token.label);
		snprintf(b->platform_key_id, sizeof(b->platform_key_id), "%s",
		    k.id);
		snprintf(b->wrap_alg, sizeof(b->wrap_alg), "%s", k.wrap_alg);
		return KB_OK;
	}
	if (e != KB_ERR_NOT_FOUND)
		return e;
	kb_err_clear();
	memset(&k, 0, sizeof(k));
	snprintf(k.id, sizeof(k.id), "%s", BROKER_PLATFORM_KEY_ID);
	/* A crash between generating and recording leaves the key in the
	 * token: reuse it rather than failing. */
	if ((e = hsm_key_exists(b->hsm, k.id)) == KB_ERR_NOT_FOUND) {
		kb_err_clear();
		log_info("creating the platform key %s (RSA-2048) in token '%s'",
		    k.id, b->token.label);
		if ((e = hsm_rsa_generate(b->hsm, k.id, 2048, HSM_USE_ENCRYPT))
		    != KB_OK)
			return kb_err_wrap(e, "creating the platform key");
	} else if (e != KB_OK) {
		return e;
	}
	if ((e = hsm_oaep_probe(b->hsm, k.id, &alg)) != KB_OK)
		return kb_err_wrap(e, "probing the token's RSA-OAEP support");
	if ((e = key_fingerprint(b->hsm, k.id, k.fingerprint)) != KB_OK)
		return e;
	snprintf(k.purpose, sizeof(k.purpose), "platform");
	snprintf(k.origin, sizeof(k.origin), "generated");
	snprintf(k.state, sizeof(k.state), "active");
	snprintf(k.wrap_alg, sizeof(k.wrap_alg), "%s", alg);
	k.create_time_us = k.update_time_us = clock_now_us();
	if ((e = store_key_create(b->store, &k)) != KB_OK)
		return e;
	snprintf(b->platform_key_id, sizeof(b->platform_key_id), "%s", k.id);
	snprintf(b->wrap_alg, sizeof(b->wrap_alg), "%s", alg);
	log_info("platform key %s ready (%s, fingerprint %.16s...)", k.id, alg,
	    k.fingerprint);
	return KB_OK;
}

enum kb_err
broker_open(struct config *cfg, struct broker **out)
{
	struct broker *b;
	struct hsm_config hc;
	enum kb_err e;

	*out = NULL;
	if ((b = calloc(1, sizeof(*b))) == NULL) {
		config_free(cfg);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	b->cfg = cfg;
	b->start_time_us = clock_now_us();
	if (cfg->softhsm2_conf != NULL)
		setenv("SOFTHSM2_CONF", cfg->softhsm2_conf, 1);
	if ((e = identity_verifier_new(cfg->client_ca, &b->verifier)) != KB_OK) {
		kb_err_wrap(e, "client_ca %s", cfg->client_ca);
		goto fail;
	}
	memset(&hc, 0, sizeof(hc));
	hc.module_path = cfg->pkcs11_module;
	hc.token_uri = cfg->token_uri;
	hc.pin_file = cfg->pin_file;
	hc.check_pin_mode = 1;
	hc.sessions = cfg->hsm_sessions;
	if ((e = hsm_open(&hc, &b->hsm)) != KB_OK)
		goto fail;
	hsm_token_info(b->hsm, &b->token);
	log_info("token '%s' (serial %s, %s %s) opened", b->token.label,
	    b->token.serial, b->token.manufacturer, b->token.model);
	if ((e = store_open(cfg->database, cfg->workers + 2, &b->store)) != KB_OK)
		goto fail;
	if ((e = store_token_bind(b->store, b->token.label, b->token.serial))
	    != KB_OK)
		goto fail;
	if ((e = ensure_platform_key(b)) != KB_OK)
		goto fail;
	*out = b;
	return KB_OK;
fail:
	broker_close(b);
	return e;
}

void
broker_close(struct broker *b)
{
	if (b == NULL)
		return;
	store_close(b->store);
	hsm_close(b->hsm);
	identity_verifier_free(b->verifier);
	config_free(b->cfg);
	free(b);
}
