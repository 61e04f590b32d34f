/* SPDX-License-Identifier: Apache-2.0 */
/* startup.c: start-up and shutdown of the whole broker, the one module that
 * knows every part: token, database (bound to the token), the broker's own
 * keys, audit log, policy time, jobs and fair shares, opened in order and
 * closed in reverse. */
#include "startup.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#include "audit.h"
#include "clock.h"
#include "dek.h"
#include "jobs.h"
#include "kb_secmem.h"
#include "keys.h"
#include "log.h"
#include "ratelimit.h"
#include "store_lease.h"
#include "timemark.h"

/* One of the broker's own keys (purpose "platform" or "audit"): made once,
 * at first start, with id `id` and uses `use`; afterwards it must be in the
 * token. Fills *out with its record. */
static enum kb_err
ensure_broker_key(struct broker *b, const char *purpose, const char *id,
    unsigned use, const char *why, struct store_key *out)
{
	struct store_key k;
	const char *alg = "";
	enum kb_err e;

	e = store_key_broker(b->store, purpose, &k);
	if (e == KB_OK) {
		if ((e = hsm_key_exists(b->hsm, k.id)) != KB_OK)
			return kb_errf(KB_ERR_TOKEN_MISMATCH,
			    "the %s key \"%s\" "
			    "recorded in the database is not in token '%s': "
			    "%s; "
			    "restore the token from backup",
			    purpose, k.id, b->token.label, why);
		*out = k;
		return KB_OK;
	}
	if (e != KB_ERR_NOT_FOUND)
		return e;
	kb_err_clear();
	memset(&k, 0, sizeof(k));
	snprintf(k.id, sizeof(k.id), "%s", id);
	/* A crash between generating and recording leaves the key in the
	 * token: reuse it rather than failing. */
	if ((e = hsm_key_exists(b->hsm, k.id)) == KB_ERR_NOT_FOUND) {
		kb_err_clear();
		log_info("creating the %s key %s (RSA-2048) in token '%s'",
		    purpose, k.id, b->token.label);
		if ((e = hsm_rsa_generate(b->hsm, k.id, 2048, use)) != KB_OK)
			return kb_err_wrap(e, "creating the %s key", purpose);
	} else if (e != KB_OK) {
		return e;
	}
	if ((use & HSM_USE_ENCRYPT)
	    && (e = hsm_oaep_probe(b->hsm, k.id, &alg)) != KB_OK)
		return kb_err_wrap(e, "probing the token's RSA-OAEP support");
	if ((e = keys_token_fingerprint(b->hsm, k.id, k.fingerprint)) != KB_OK)
		return e;
	snprintf(k.purpose, sizeof(k.purpose), "%s", purpose);
	snprintf(k.origin, sizeof(k.origin), "generated");
	snprintf(k.state, sizeof(k.state), "active");
	snprintf(k.wrap_alg, sizeof(k.wrap_alg), "%s", alg);
	k.bits = 2048;
	k.create_time_us = k.update_time_us = clock_now_us();
	if ((e = store_key_create(b->store, &k)) != KB_OK)
		return e;
	log_info("%s key %s ready (fingerprint %.16s...)", purpose, k.id,
	    k.fingerprint);
	*out = k;
	return KB_OK;
}

/* The RSA-OAEP variant the token takes, for wrapping KEKs and BYOK: what
 * the database recorded, else what a pre-v2 platform key was probed with,
 * else probed now with a temporary key. */
static enum kb_err
wrap_alg_init(struct broker *b)
{
	struct store_key k;
	const char *alg = NULL;
	enum kb_err e;

	e = store_meta_get(
	    b->store, "wrap_alg", b->wrap_alg, sizeof(b->wrap_alg));
	if (e == KB_OK && b->wrap_alg[0] != '\0')
		return KB_OK;
	kb_err_clear();
	if (store_key_broker(b->store, "platform", &k) == KB_OK
	    && strncmp(k.wrap_alg, "RSA-OAEP", 8) == 0) {
		snprintf(b->wrap_alg, sizeof(b->wrap_alg), "%s", k.wrap_alg);
	} else {
		kb_err_clear();
		if ((e = hsm_oaep_probe_temp(b->hsm, &alg)) != KB_OK)
			return kb_err_wrap(e,
			    "probing the token's RSA-OAEP "
			    "support");
		snprintf(b->wrap_alg, sizeof(b->wrap_alg), "%s", alg);
	}
	log_info("token wraps keys with %s", b->wrap_alg);
	return store_meta_set(b->store, "wrap_alg", b->wrap_alg);
}

/* Keys made by keybroker before envelope v2 have public halves any
 * session can replace (CKA_PRIVATE false), and tenant keys that cannot wrap
 * a KEK. Once per database: every such pair is brought to today's rules
 * (hsm_rsa_upgrade); from then on searches never see a non-private
 * object. */
static enum kb_err
upgrade_token_objects(struct broker *b)
{
	static const struct {
		const char *purpose;
		unsigned use;
	} kinds[] = {
	    {"platform", HSM_USE_ENCRYPT},
	    {"audit", HSM_USE_SIGN},
	    {"exchange", HSM_USE_UNWRAP},
	    /* Decrypt stays until the upgrade job has moved their rows. */
	    {"tenant", HSM_USE_KEYWRAP | HSM_USE_ENCRYPT},
	};
	struct store_key *v = NULL;
	char flag[16];
	size_t n = 0, i, k, done = 0;
	int changed;
	enum kb_err e;

	if (store_meta_get(b->store, "token_objects", flag, sizeof(flag))
	        == KB_OK
	    && strcmp(flag, "v2") == 0)
		return KB_OK;
	kb_err_clear();
	for (k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
		if ((e = store_keys_by_purpose(
		         b->store, kinds[k].purpose, &v, &n))
		    != KB_OK)
			return e;
		for (i = 0; i < n; i++) {
			if (strcmp(v[i].purpose, "platform") == 0
			    && strncmp(v[i].wrap_alg, "RSA-OAEP", 8) != 0)
				continue;
			if (strcmp(v[i].state, "locked") == 0
			    || strcmp(v[i].state, "deleted") == 0)
				continue;
			e = hsm_rsa_upgrade(
			    b->hsm, v[i].id, kinds[k].use, &changed);
			if (e == KB_ERR_NOT_FOUND) {
				kb_err_clear();
				continue;
			}
			if (e != KB_OK) {
				e = kb_err_wrap(e, "upgrading key %s", v[i].id);
				free(v);
				return e;
			}
			done += changed != 0;
		}
		free(v);
		v = NULL;
	}
	if (done > 0)
		log_info("%zu key pair(s) in the token brought to envelope v2 "
		         "rules (private public halves, key wrap)",
		    done);
	return store_meta_set(b->store, "token_objects", "v2");
}

/* The platform key (AES-256, sealing platform-managed DEKs): made at first
 * start; afterwards it must be in the token. */
static enum kb_err
ensure_platform_key(struct broker *b)
{
	struct store_key k;
	enum kb_err e;

	e = store_platform_current(b->store, &k);
	if (e == KB_OK) {
		if ((e = hsm_secret_exists(b->hsm, k.id, DEK_LABEL_PLATFORM))
		    != KB_OK)
			return kb_errf(KB_ERR_TOKEN_MISMATCH,
			    "the platform key "
			    "\"%s\" recorded in the database is not in token "
			    "'%s' "
			    "(%s): every platform-encrypted data key depends "
			    "on "
			    "it; restore the token from backup",
			    k.id, b->token.label, kb_err_msg(e));
		return KB_OK;
	}
	if (e != KB_ERR_NOT_FOUND)
		return e;
	kb_err_clear();
	log_info("creating the platform key (AES-256) in token '%s'",
	    b->token.label);
	if ((e = keys_platform_new(b, "active", &k)) != KB_OK)
		return e;
	if ((e = store_key_create(b->store, &k)) != KB_OK) {
		(void)hsm_key_destroy(b->hsm, k.id);
		return e;
	}
	return KB_OK;
}

/* Every tenant with an active tenant key has a KEK in the token: a
 * database from before envelope v2 gets one now (under its active key),
 * and a KEK whose token object is gone (a token restored from an older
 * backup) is unwrapped again from the database. */
static enum kb_err
ensure_keks(struct broker *b)
{
	struct store_key *tk = NULL, kek;
	char label[DEK_LABEL_MAX];
	size_t n = 0, i;
	enum kb_err e;

	if ((e = store_keys_by_purpose(b->store, "tenant", &tk, &n)) != KB_OK)
		return e;
	for (i = 0; i < n && e == KB_OK; i++) {
		if (strcmp(tk[i].state, "active") != 0)
			continue;
		if (hsm_key_exists(b->hsm, tk[i].id) != KB_OK) {
			log_warn(
			    "tenant %s's active key %s is not in the token",
			    tk[i].tenant_id, tk[i].id);
			kb_err_clear();
			continue;
		}
		dek_label(
		    STORE_MODE_CUSTOMER, tk[i].tenant_id, label, sizeof(label));
		e = store_kek_current(b->store, tk[i].tenant_id, &kek);
		if (e == KB_ERR_NOT_FOUND) {
			kb_err_clear();
			e = keys_kek_create(
			    b, tk[i].tenant_id, tk[i].id, "active", &kek);
			if (e == KB_OK)
				log_info(
				    "tenant %s: KEK %s made under its active "
				    "key %s",
				    tk[i].tenant_id, kek.id, tk[i].id);
			continue;
		}
		if (e != KB_OK)
			break;
		if (hsm_secret_exists(b->hsm, kek.id, label) == KB_OK)
			continue;
		kb_err_clear();
		e = hsm_kek_unwrap(b->hsm, kek.parent_id, kek.wrap_alg,
		    kek.wrapped, kek.wrapped_len, kek.id, label);
		if (e == KB_OK)
			log_info(
			    "tenant %s: KEK %s unwrapped again into the token",
			    tk[i].tenant_id, kek.id);
		else
			log_error("tenant %s: KEK %s cannot be unwrapped: %s",
			    tk[i].tenant_id, kek.id, kb_err_msg(e));
		e = KB_OK;
	}
	free(tk);
	return e;
}

static enum kb_err
open_audit(struct broker *b)
{
	struct audit_config ac;
	struct store_key k;
	enum kb_err e;

	if ((e = ensure_broker_key(b, "audit", BROKER_AUDIT_KEY_ID,
	         HSM_USE_SIGN, "it signs the audit log's checkpoints", &k))
	    != KB_OK)
		return e;
	b->audit_key = k;
	memset(&ac, 0, sizeof(ac));
	ac.path = b->cfg->audit_database;
	/* One password file for both: the audit log's database is the
	 * store's unless audit_database names another. */
	ac.password_file = config_is_postgres(b->cfg->audit_database)
	    ? b->cfg->database_password_file
	    : NULL;
	ac.hsm = b->hsm;
	ac.sign_key_id = b->audit_key.id;
	ac.checkpoint_events = b->cfg->audit_checkpoint_events;
	ac.checkpoint_interval_s = b->cfg->audit_checkpoint_interval_s;
	ac.now_us = clock_now_us;
	ac.anchor_label = AUDIT_ANCHOR_LABEL;
	ac.accept_loss = b->cfg->accept_audit_loss;
	ac.key_fingerprint = keys_token_fingerprint;
	ac.instance = b->instance;
	if ((e = audit_open(&ac, &b->audit)) != KB_OK)
		return e;
	log_event(LOG_INFO, "audit.opened",
	    LOG_KV("engine", audit_engine_version(b->audit), "target",
	        b->cfg->audit_database),
	    "audit log: %s database %s%s", audit_engine_version(b->audit),
	    b->cfg->audit_database,
	    strcmp(b->cfg->audit_database, b->cfg->database) == 0
	        ? " (the store's database)"
	        : "");
	return KB_OK;
}

/* What the clock did, in the audit log. */
static void
timemark_record(
    void *arg, const char *what, const char *result, const char *why)
{
	(void)broker_audit_system(arg, what, NULL, NULL, NULL, result, why);
}

/* Refusals over a rate limit are not audited one by one: each interval
 * with any gets one log line and one audit event. */
#define RATE_REPORT_INTERVAL_S 10

static void
rate_report(void *arg, const char *summary)
{
	struct broker *b = arg;

	log_warn("%s", summary);
	(void)broker_audit_system(
	    b, "ratelimit.refused", NULL, NULL, NULL, "denied", summary);
}

static enum kb_err
rate_start(struct broker *b)
{
	struct ratelimit_limits l;
	enum kb_err e;

	l.identity_rate = b->cfg->rate_per_identity;
	l.identity_burst = b->cfg->rate_per_identity_burst;
	l.tenant_rate = b->cfg->rate_per_tenant;
	l.tenant_burst = b->cfg->rate_per_tenant_burst;
	l.max_streams = b->cfg->max_streams_per_identity;
	if ((e = ratelimit_new(&l, &b->rate)) != KB_OK)
		return e;
	return ratelimit_report_every(
	    b->rate, RATE_REPORT_INTERVAL_S, rate_report, b);
}

/* The database password file is checked before anything is opened, the
 * way the PIN file is (kb_secret_file_read: a regular file, not readable
 * or writable by group or others, not empty); the database layer reads it
 * again when it connects. */
static enum kb_err
password_file_check(const struct config *cfg)
{
	char *pw = NULL;
	size_t n = 0;
	enum kb_err e;

	if (cfg->database_password_file == NULL)
		return KB_OK;
	e = kb_secret_file_read(cfg->database_password_file, 1, &pw, &n);
	kb_secure_free(pw);
	if (e != KB_OK)
		return kb_err_wrap(e, "database_password_file");
	return KB_OK;
}

/* Whether token `b->hsm` already holds a keybroker platform key (of any
 * generation): then a database with no keybroker data in it is almost
 * always the wrong one. */
static int
token_has_platform_key(struct broker *b)
{
	int r = hsm_key_exists(b->hsm, BROKER_PLATFORM_KEY_ID) == KB_OK
	    || hsm_label_exists(b->hsm, DEK_LABEL_PLATFORM) == KB_OK;

	kb_err_clear();
	return r;
}

/* A SQLite database that does not exist, or a PostgreSQL database whose
 * store has never been bound to a token, beside a token that already
 * holds this broker's keys: an unmounted volume, a wrong path or database
 * name. Starting would hide every environment (and bind the empty
 * database to the token, so the next start would not notice): refuse
 * unless --allow-new-database. SQLite is checked before the file is
 * created (`s` NULL); PostgreSQL after the store is opened (its tables are
 * made, but stay unbound: every later start refuses again). */
static enum kb_err
new_database_check(struct broker *b, struct store *s)
{
	const struct config *cfg = b->cfg;
	char label[64];
	enum kb_err e;

	if (cfg->allow_new_database)
		return KB_OK;
	if (s == NULL) {
		if (access(cfg->database, F_OK) == 0
		    || !token_has_platform_key(b))
			return KB_OK;
		return kb_errf(KB_ERR_CONFIG,
		    "database %s does not exist, but token '%s' already "
		    "holds a keybroker platform key: the data keys it wraps "
		    "are in a database this broker cannot see (is the "
		    "database's volume mounted? is the path right?). To start "
		    "over with an empty database on this token anyway, run "
		    "with --allow-new-database",
		    cfg->database, b->token.label);
	}
	/* The token first: a broker sharing the token and the database that
	 * binds the store and makes its platform key meanwhile is then seen
	 * bound (it binds before it makes the key). */
	if (!token_has_platform_key(b))
		return KB_OK;
	e = store_meta_get(s, "token_label", label, sizeof(label));
	if (e != KB_ERR_NOT_FOUND)
		return e;
	kb_err_clear();
	return kb_errf(KB_ERR_CONFIG,
	    "PostgreSQL database %s holds no keybroker data (its store was "
	    "never bound to a token), but token '%s' already holds a "
	    "keybroker platform key: the data keys it wraps are in a "
	    "database this broker cannot see (is the connection string's "
	    "host and database name right? was the database dropped or "
	    "restored empty?). To start over with an empty database on "
	    "this token anyway, run with --allow-new-database",
	    cfg->database, b->token.label);
}

/* Which engine the store runs on, logged once at start (the server's
 * version follows with the audit log's line: by default it is the same
 * database). The target is logged as configured: config_parse refuses a
 * password in it. */
static void
log_store_engine(struct broker *b)
{
	char schema[16];
	const char *engine =
	    store_is_postgres(b->store) ? "PostgreSQL" : "SQLite";

	snprintf(schema, sizeof(schema), "%d", store_schema_version(b->store));
	log_event(LOG_INFO, "store.opened",
	    LOG_KV(
	        "engine", engine, "target", b->cfg->database, "schema", schema),
	    "store: %s database %s (schema %s)", engine, b->cfg->database,
	    schema);
}

/* This broker among the brokers on one database, the same across its
 * restarts: the first 4 bytes of SHA-256(host name, listen address). Its
 * request counter starts at a random 64-bit value, so ids stay unique
 * across restarts too. */
static enum kb_err
instance_init(struct broker *b)
{
	char host[256] = "", in[600];
	uint8_t md[32], r[8];
	unsigned int mdlen = 0;
	uint64_t seq;

	(void)gethostname(host, sizeof(host) - 1);
	snprintf(in, sizeof(in), "%s\n%s", host,
	    b->cfg->listen != NULL ? b->cfg->listen : "");
	if (EVP_Digest(in, strlen(in), md, &mdlen, EVP_sha256(), NULL) != 1
	    || RAND_bytes(r, sizeof(r)) != 1)
		return kb_err_openssl(
		    KB_ERR_CRYPTO, "making the broker's instance id");
	snprintf(b->instance, sizeof(b->instance), "%02x%02x%02x%02x", md[0],
	    md[1], md[2], md[3]);
	memcpy(&seq, r, sizeof(seq));
	atomic_init(&b->request_seq, seq);
	return KB_OK;
}

enum kb_err
startup_open(struct config *cfg, struct broker **out)
{
	struct broker *b;
	struct hsm_config hc;
	struct store_lease *startup = NULL;
	int64_t n_legacy;
	enum kb_err e;
	int i;

	*out = NULL;
	if ((b = calloc(1, sizeof(*b))) == NULL) {
		config_free(cfg);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	b->cfg = cfg;
	for (i = 0; i < BROKER_TENANT_LOCKS; i++)
		pthread_mutex_init(&b->tenant_locks[i], NULL);
	if ((e = clock_init(cfg->test_clock_file)) != KB_OK)
		goto fail;
	if (clock_is_test())
		log_warn("this is a TEST build: its clock can be moved (%s)",
		    cfg->test_clock_file != NULL ? cfg->test_clock_file
		                                 : "no test_clock_file set");
	b->start_time_us = clock_now_us();
	if ((e = instance_init(b)) != KB_OK)
		goto fail;
	if (cfg->softhsm2_conf != NULL)
		setenv("SOFTHSM2_CONF", cfg->softhsm2_conf, 1);
	if ((e = identity_verifier_new(cfg->client_ca, &b->verifier))
	    != KB_OK) {
		kb_err_wrap(e, "client_ca %s", cfg->client_ca);
		goto fail;
	}
	if ((e = password_file_check(cfg)) != KB_OK)
		goto fail;
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
	if (!config_is_postgres(cfg->database)
	    && (e = new_database_check(b, NULL)) != KB_OK)
		goto fail;
	{
		struct store_open_opts so = {cfg->database,
		    config_is_postgres(cfg->database)
		        ? cfg->database_password_file
		        : NULL,
		    cfg->database_connections != 0 ? cfg->database_connections
		                                   : cfg->workers + 2};

		if ((e = store_open_with(&so, &b->store)) != KB_OK)
			goto fail;
	}
	log_store_engine(b);
	/* Brokers starting together on one database set it up one at a
	 * time: the first makes the platform key and binds the token, the
	 * next finds them. */
	if ((e = store_lease_wait(b->store, "startup", &startup)) != KB_OK)
		goto fail;
	if (store_is_postgres(b->store)
	    && (e = new_database_check(b, b->store)) != KB_OK)
		goto fail;
	if ((e = store_token_bind(b->store, b->token.label, b->token.serial))
	    != KB_OK)
		goto fail;
	/* Policy time starts from the stored mark before anything is
	 * recorded. */
	if ((e = timemark_open(b->store, cfg->clock_jump_limit_s,
	         timemark_record, b, &b->timemark))
	    != KB_OK)
		goto fail;
	if ((e = wrap_alg_init(b)) != KB_OK
	    || (e = upgrade_token_objects(b)) != KB_OK
	    || (e = ensure_platform_key(b)) != KB_OK)
		goto fail;
	if ((e = open_audit(b)) != KB_OK)
		goto fail;
	if ((e = keys_reconcile(b, 0)) != KB_OK
	    || (e = ensure_keks(b)) != KB_OK)
		goto fail;
	/* A database from before envelope v2: its rows are upgraded by a job,
	 * and until it is done (only then) reads accept the old envelope. */
	if ((n_legacy = store_deks_legacy(b->store)) != 0) {
		struct store_job job;
		char id[STORE_KEY_ID_MAX];

		atomic_store(&b->legacy_open, 1);
		if ((e = broker_new_id(b, "j-", id, sizeof(id))) != KB_OK)
			goto fail;
		e = store_job_begin(b->store, id, STORE_JOB_UPGRADE, NULL, "",
		    clock_now_us(), &job);
		if (e == KB_ERR_ALREADY_EXISTS)
			e = KB_OK;
		if (e != KB_OK)
			goto fail;
		kb_err_clear();
		log_warn(
		    "%lld data key rows are in the pre-v2 envelope: job %s "
		    "upgrades them (reads are served meanwhile)",
		    (long long)n_legacy, job.id);
	}
	{
		char why[160];

		snprintf(why, sizeof(why),
		    "keybrokerd %s; token '%s' serial %s", KB_VERSION,
		    b->token.label, b->token.serial);
		if ((e = broker_audit_system(
		         b, "broker.start", NULL, NULL, NULL, "ok", why))
		    != KB_OK)
			goto fail;
		/* Signed and anchored at once: the log is never long unsigned,
		 * and `audit verify` passes right after a first start. */
		audit_checkpoint_soon(b->audit);
	}
	store_lease_drop(startup);
	startup = NULL;
	if ((e = timemark_start(b->timemark)) != KB_OK
	    || (e = jobs_start(b, &b->jobs)) != KB_OK
	    || (e = rate_start(b)) != KB_OK)
		goto fail;
	*out = b;
	return KB_OK;
fail:
	store_lease_drop(startup);
	startup_close(b);
	return e;
}

void
startup_close(struct broker *b)
{
	if (b == NULL)
		return;
	/* Its last summary goes into the log before broker.stop. */
	ratelimit_free(b->rate);
	jobs_stop(b->jobs);
	timemark_close(b->timemark);
	if (b->audit != NULL && b->jobs != NULL)
		(void)broker_audit_system(
		    b, "broker.stop", NULL, NULL, NULL, "ok", "");
	audit_close(b->audit);
	store_close(b->store);
	hsm_close(b->hsm);
	identity_verifier_free(b->verifier);
	config_free(b->cfg);
	free(b);
}
