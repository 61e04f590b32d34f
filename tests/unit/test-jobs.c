/* SPDX-License-Identifier: Apache-2.0 */
/* test-jobs.c: the broker's background jobs (jobs.c) on a whole broker
 * without its gRPC server (startup_open: a fresh SoftHSMv2 token, SQLite,
 * the audit log, the job and sweeper threads), driven the way the handlers
 * drive them, through the same internal functions: an activation re-seals
 * every customer-managed DEK under the new key's KEK; a job left part done
 * (its progress stored, or the broker stopped between its batches) resumes
 * at the next start from its stored progress; a platform-key rotation
 * re-seals the platform-managed DEKs and destroys the old key; the sweeper
 * deletes environments locked for more than 28 days (the test clock moved,
 * as integration tests move it); a row that fails its integrity check is
 * marked unrecoverable and the job goes on; a row whose key is not in the
 * token fails the job, naming the row, and leaves every row as it was; an
 * activation retried after such a failure leaves new data keys under its
 * own KEK. */
#include "harness.h"

#include <sqlite3.h>
#include <stdatomic.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "audit.h"
#include "clock.h"
#include "config.h"
#include "dek.h"
#include "fingerprint.h"
#include "jobs.h"
#include "kb_secmem.h"
#include "kbt_pki.h"
#include "keys.h"
#include "log.h"
#include "policy.h"
#include "rpc.h"
#include "startup.h"
#include "timemark.h"

#define HOUR_S 3600LL
#define DAY_S (24 * HOUR_S)
/* Longest wait for a job or an audit event: far above what any takes. */
#define WAIT_MS 30000

/* ---- the test clock (clock_test.c): an offset in seconds in a file ---- */

static char clock_dir[256], clock_path[512];
static long long clock_offset_s;

/* Move the broker's wall clock forward (never back: policy time would not
 * follow, and every case's broker shares this process's clock). */
static void
clock_advance(long long seconds)
{
	FILE *f;

	clock_offset_s += seconds;
	if ((f = fopen(clock_path, "w")) == NULL
	    || fprintf(f, "%lld\n", clock_offset_s) < 0 || fclose(f) != 0) {
		perror(clock_path);
		exit(2);
	}
}

/* ---- the broker ---- */

static struct world {
	char dir[256];
	char extra[256]; /* more configuration lines */
	struct broker *b;
} w;

static void
world_close(void)
{
	startup_close(w.b);
	w.b = NULL;
	if (w.dir[0] != '\0')
		kbt_rmtree(w.dir);
	w.dir[0] = '\0';
}

/* A client CA for identity_verifier_new (no call is ever verified). */
static void
write_ca(const char *dir)
{
	char path[512];
	EVP_PKEY *key = EVP_EC_gen("P-256");
	X509 *ca = key != NULL ? kbt_cert_make(key, NULL, NULL, NULL,
	               "test-jobs CA", NULL, -3600, 3650L * 86400, 1)
	                       : NULL;
	FILE *f;

	snprintf(path, sizeof(path), "%s/ca.crt", dir);
	if (ca == NULL || (f = fopen(path, "w")) == NULL
	    || PEM_write_X509(f, ca) != 1 || fclose(f) != 0) {
		fprintf(stderr, "cannot write %s\n", path);
		exit(2);
	}
	X509_free(ca);
	EVP_PKEY_free(key);
}

/* Start the broker on the world's token and database (made at the first
 * start). The sweeper thread sweeps once at its start, then not again
 * while a case runs; no rotation is ever due by schedule; the clock may
 * jump a year without pausing the sweeper. */
static enum kb_err
world_start(void)
{
	struct config *cfg = NULL;
	char conf[2048];
	enum kb_err e;

	snprintf(conf, sizeof(conf),
	    "tls_cert = server.crt\ntls_key = server.key\nclient_ca = ca.crt\n"
	    "pin_file = pin\nsofthsm2_conf = softhsm2.conf\n"
	    "token_uri = pkcs11:token=jobs\ndatabase = keybroker.db\n"
	    "workers = 2\nhsm_sessions = 4\nlog_level = error\n"
	    "sweep_interval_s = 86400\nclock_jump_limit_s = 31536000\n"
	    "platform_key_rotation_days = 0\ntest_clock_file = %s\n%s",
	    clock_path, w.extra);
	if ((e = config_parse(conf, strlen(conf), w.dir, &cfg)) != KB_OK)
		return e;
	return startup_open(cfg, &w.b);
}

/* A new token and database; `extra` adds configuration lines. A broker a
 * failed case left running is closed first. */
static enum kb_err
world_open(const char *extra)
{
	world_close();
	snprintf(w.dir, sizeof(w.dir), "%s", kbt_softhsm_setup("jobs"));
	snprintf(w.extra, sizeof(w.extra), "%s", extra);
	write_ca(w.dir);
	return world_start();
}

/* A restart: startup_close, then startup_open on the same token and
 * database. */
static enum kb_err
world_restart(void)
{
	startup_close(w.b);
	w.b = NULL;
	return world_start();
}

/* Stop the broker's background threads (jobs_stop), as if it had died
 * with the job recorded: it runs on without them (jobs_kick(NULL) does
 * nothing) until world_jobs_start or the next start. */
static void
world_jobs_stop(void)
{
	jobs_stop(w.b->jobs);
	w.b->jobs = NULL;
}

static enum kb_err
world_jobs_start(void)
{
	return jobs_start(w.b, &w.b->jobs);
}

/* ---- what the handlers do (rpc_admin.c, rpc_keys.c, rpc_envkeys.c,
 * rpc_lock.c), minus the wire ---- */

static enum kb_err
tenant_create(const char *id)
{
	struct store_tenant t;

	memset(&t, 0, sizeof(t));
	snprintf(t.id, sizeof(t.id), "%s", id);
	snprintf(t.display_name, sizeof(t.display_name), "%s", id);
	t.create_time_us = clock_now_us();
	return store_tenant_create(w.b->store, &t);
}

/* CreateEnvironment: platform-managed, DEK version 1. */
static enum kb_err
env_create(const char *tenant, const char *name)
{
	struct store_env env;
	struct store_dek dek;
	struct store_key pk;
	struct dek_row row;
	enum kb_err e;

	memset(&env, 0, sizeof(env));
	snprintf(env.tenant_id, sizeof(env.tenant_id), "%s", tenant);
	snprintf(env.name, sizeof(env.name), "%s", name);
	env.mode = STORE_MODE_PLATFORM;
	env.state = STORE_ENV_ENABLED;
	env.create_time_us = env.update_time_us = clock_now_us();
	if ((e = broker_new_uid(w.b, env.uid)) != KB_OK
	    || (e = store_platform_current(w.b->store, &pk)) != KB_OK)
		return e;
	dek_row_env(&row, &env, 1, STORE_MODE_PLATFORM);
	if ((e = dek_new(w.b->hsm, &row, pk.id, &dek)) != KB_OK)
		return e;
	e = store_env_create(w.b->store, &env, &dek);
	kb_wipe(&dek, sizeof(dek));
	return e;
}

/* The rules every encryption change shares (rpc_envkeys.c begin()), under
 * the tenant lock the caller holds. */
static enum kb_err
env_begin(const char *tenant, const char *name, const char *what,
    struct store_env *env)
{
	struct policy_tenant p;
	struct store_tenant t;
	enum kb_err e;

	if ((e = store_tenant_get(w.b->store, tenant, &t)) != KB_OK
	    || (e = store_env_get(w.b->store, tenant, name, env)) != KB_OK)
		return e;
	rpc_policy_tenant(&t, &p);
	if ((e = policy_may_change_env(&p, what)) != KB_OK)
		return e;
	if (env->state != STORE_ENV_ENABLED)
		return kb_errf(KB_ERR_FAILED_PRECONDITION, "%s/%s is %s",
		    tenant, name, store_env_state_name(env->state));
	return KB_OK;
}

/* ApplyKey: every DEK version re-sealed under the tenant's current KEK,
 * the environment customer-managed. */
static enum kb_err
env_apply_key(const char *tenant, const char *name)
{
	struct store_env env;
	struct store_dek *v = NULL;
	struct store_key kek;
	struct dek_row from, to;
	size_t n = 0, i;
	enum kb_err e;

	broker_tenant_lock(w.b, tenant);
	if ((e = env_begin(tenant, name, "applying the tenant key", &env))
	        != KB_OK
	    || (e = store_kek_current(w.b->store, tenant, &kek)) != KB_OK
	    || (e = store_env_dek_list(w.b->store, tenant, name, &v, &n))
	        != KB_OK)
		goto out;
	for (i = 0; i < n; i++) {
		dek_row_env(&from, &env, v[i].version, env.mode);
		dek_row_env(&to, &env, v[i].version, STORE_MODE_CUSTOMER);
		if ((e = dek_reseal(w.b->hsm, &from, &v[i],
		         atomic_load(&w.b->legacy_open), &to, kek.id, &v[i]))
		    != KB_OK)
			goto out;
	}
	e = store_env_rewrap(w.b->store, tenant, name, STORE_MODE_CUSTOMER, v,
	    n, clock_now_us());
out:
	if (v != NULL)
		kb_wipe(v, n * sizeof(*v));
	free(v);
	broker_tenant_unlock(w.b, tenant);
	return e;
}

/* RotateDataKey: a new current DEK version under the environment's
 * current sealing key. */
static enum kb_err
env_rotate_dek(const char *tenant, const char *name)
{
	struct store_env env;
	struct store_dek dek;
	struct store_key k;
	struct dek_row row;
	uint32_t version;
	enum kb_err e;

	broker_tenant_lock(w.b, tenant);
	if ((e = env_begin(tenant, name, "rotating the data key", &env))
	    != KB_OK)
		goto out;
	e = env.mode == STORE_MODE_CUSTOMER
	    ? store_kek_current(w.b->store, tenant, &k)
	    : store_platform_current(w.b->store, &k);
	if (e != KB_OK
	    || (e = store_env_next_version(w.b->store, tenant, name, &version))
	        != KB_OK)
		goto out;
	dek_row_env(&row, &env, version, env.mode);
	if ((e = dek_new(w.b->hsm, &row, k.id, &dek)) != KB_OK)
		goto out;
	e = store_env_add_version(
	    w.b->store, tenant, name, &dek, clock_now_us());
	kb_wipe(&dek, sizeof(dek));
out:
	broker_tenant_unlock(w.b, tenant);
	return e;
}

/* GenerateKey (without the .pfx it hands back): an RSA-2048 tenant key in
 * the token, recorded available. */
static enum kb_err
key_generate(const char *tenant, char id[STORE_KEY_ID_MAX])
{
	struct policy_tenant p;
	struct store_tenant t;
	struct store_key k;
	char fp[FINGERPRINT_HEX_LEN + 1];
	EVP_PKEY *pkey = NULL;
	int64_t now = clock_now_us();
	int imported = 0;
	enum kb_err e;

	broker_tenant_lock(w.b, tenant);
	if ((e = store_tenant_get(w.b->store, tenant, &t)) != KB_OK)
		goto out;
	rpc_policy_tenant(&t, &p);
	if ((e = policy_may_add_key(&p, now)) != KB_OK)
		goto out;
	if ((pkey = EVP_RSA_gen(2048)) == NULL) {
		e = kb_errf(KB_ERR_CRYPTO, "EVP_RSA_gen failed");
		goto out;
	}
	if ((e = broker_new_id(w.b, "k-", id, STORE_KEY_ID_MAX)) != KB_OK
	    || (e = fingerprint_pkey(pkey, fp)) != KB_OK
	    || (e = hsm_rsa_import(w.b->hsm, id, pkey, HSM_USE_KEYWRAP))
	        != KB_OK)
		goto out;
	imported = 1;
	memset(&k, 0, sizeof(k));
	snprintf(k.id, sizeof(k.id), "%s", id);
	snprintf(k.tenant_id, sizeof(k.tenant_id), "%s", tenant);
	snprintf(k.purpose, sizeof(k.purpose), "tenant");
	snprintf(k.origin, sizeof(k.origin), "generated");
	snprintf(k.state, sizeof(k.state), "available");
	snprintf(k.fingerprint, sizeof(k.fingerprint), "%s", fp);
	snprintf(k.wrap_alg, sizeof(k.wrap_alg), "%s", w.b->wrap_alg);
	k.bits = 2048;
	k.create_time_us = k.update_time_us = now;
	if ((e = store_tenant_key_add(w.b->store, &k, now)) == KB_OK)
		imported = 0;
out:
	if (imported)
		(void)hsm_key_destroy(w.b->hsm, id);
	broker_tenant_unlock(w.b, tenant);
	EVP_PKEY_free(pkey);
	return e;
}

/* ActivateKey: the rules, the new key's KEK (installing), the job
 * recorded; then the job thread is kicked, as after the handler's audit
 * record. */
static enum kb_err
key_activate(const char *tenant, const char *key_id, struct store_job *job)
{
	struct policy_tenant p;
	struct store_tenant t;
	struct store_key k, kek;
	char job_id[STORE_KEY_ID_MAX];
	enum kb_err e;

	broker_tenant_lock(w.b, tenant);
	if ((e = store_tenant_get(w.b->store, tenant, &t)) != KB_OK
	    || (e = store_key_get(w.b->store, key_id, &k)) != KB_OK)
		goto out;
	rpc_policy_tenant(&t, &p);
	if ((e = policy_may_activate(&p, clock_now_us())) != KB_OK)
		goto out;
	if (strcmp(k.state, "available") != 0) {
		e = kb_errf(
		    KB_ERR_FAILED_PRECONDITION, "key %s is %s", k.id, k.state);
		goto out;
	}
	if ((e = hsm_key_exists(w.b->hsm, k.id)) != KB_OK
	    || (e = broker_new_id(w.b, "j-", job_id, sizeof(job_id))) != KB_OK
	    || (e = keys_kek_create(w.b, tenant, k.id, "installing", &kek))
	        != KB_OK)
		goto out;
	if ((e = store_activation_begin(w.b->store, tenant, k.id,
	         t.active_key_id, &kek, job_id, clock_now_us(), job))
	    != KB_OK)
		(void)hsm_key_destroy(w.b->hsm, kek.id);
out:
	broker_tenant_unlock(w.b, tenant);
	if (e == KB_OK)
		jobs_kick(w.b->jobs);
	return e;
}

/* LockTenant, less the proof of the key (the handler's check of the
 * caller): the rules, policy time made durable, the lock recorded, the
 * token objects destroyed. */
static enum kb_err
tenant_lock(const char *tenant)
{
	char(*destroy)[STORE_KEY_ID_MAX] = NULL;
	struct policy_tenant p;
	struct store_tenant t;
	size_t ndestroy = 0, i;
	enum kb_err e;

	broker_tenant_lock(w.b, tenant);
	if ((e = store_tenant_get(w.b->store, tenant, &t)) != KB_OK)
		goto out;
	rpc_policy_tenant(&t, &p);
	if ((e = policy_may_lock(&p, clock_now_us())) != KB_OK
	    || (e = timemark_advance(w.b->timemark, NULL)) != KB_OK
	    || (e = store_tenant_lock(w.b->store, tenant, t.active_key_id,
	            clock_now_us(), &destroy, &ndestroy))
	        != KB_OK)
		goto out;
	for (i = 0; i < ndestroy; i++)
		(void)hsm_key_destroy(w.b->hsm, destroy[i]);
	kb_err_clear();
out:
	broker_tenant_unlock(w.b, tenant);
	free(destroy);
	return e;
}

/* Open DEK `version` (0: current) of tenant/name as GetDataKey does;
 * *env and *dek (may be NULL) get the row read. */
static enum kb_err
dek_read(const char *tenant, const char *name, uint32_t version,
    uint8_t plain[DEK_LEN], struct store_env *envp, struct store_dek *dekp)
{
	struct store_env env;
	struct store_dek dek;
	struct dek_row row;
	enum kb_err e;

	if ((e = store_env_with_dek(
	         w.b->store, tenant, name, version, &env, &dek))
	    != KB_OK)
		return e;
	dek_row_env(&row, &env, dek.version, env.mode);
	e = dek_open(
	    w.b->hsm, &row, &dek, atomic_load(&w.b->legacy_open), plain);
	if (envp != NULL)
		*envp = env;
	if (dekp != NULL)
		*dekp = dek;
	return e;
}

/* Wait (bounded) until job `id` is no longer running; 0 when it ended. */
static int
job_wait(const char *id, struct store_job *job)
{
	int ms;

	for (ms = 0; ms < WAIT_MS; ms += 10) {
		if (store_job_get(w.b->store, id, job) == KB_OK
		    && strcmp(job->state, "running") != 0)
			return 0;
		usleep(10 * 1000);
	}
	return -1;
}

/* How many audit events of `method` (and `tenant`, NULL: any) name
 * `needle` in their reason (NULL: any) or env, waiting (bounded) until there
 * are at least `want`: a job's last event follows its final commit. */
static size_t
audit_count(
    const char *method, const char *tenant, const char *needle, size_t want)
{
	struct audit_filter f;
	struct audit_event *v = NULL;
	size_t n = 0, i, hits = 0;
	int ms, more = 0;

	memset(&f, 0, sizeof(f));
	f.method = method;
	f.tenant = tenant;
	for (ms = 0; ms < WAIT_MS; ms += 20) {
		hits = 0;
		if (audit_list(w.b->audit, &f, 0, 10000, &v, &n, &more)
		    == KB_OK) {
			for (i = 0; i < n; i++)
				hits += needle == NULL
				    || strstr(v[i].reason, needle) != NULL
				    || strcmp(v[i].env, needle) == 0;
			free(v);
			v = NULL;
		}
		kb_err_clear();
		if (hits >= want)
			break;
		usleep(20 * 1000);
	}
	return hits;
}

/* ---- what the DEKs were: every version of the environments made ---- */

#define SNAP_MAX 1700

struct snap {
	char tenant[STORE_ID_MAX], env[STORE_ID_MAX];
	uint32_t version;
	uint8_t plain[DEK_LEN];
	struct store_dek dek; /* as stored when taken */
};

static struct snap snaps[SNAP_MAX];
static size_t nsnaps;

/* Record every DEK version of tenant/name: its plaintext and its row. */
static void
snap_env(const char *tenant, const char *name)
{
	struct store_dek *v = NULL;
	size_t n = 0, i;
	struct snap *s;

	KBT_ASSERT_OK(store_env_dek_list(w.b->store, tenant, name, &v, &n));
	KBT_ASSERT(n > 0);
	for (i = 0; i < n; i++) {
		KBT_ASSERT(nsnaps < SNAP_MAX);
		s = &snaps[nsnaps++];
		snprintf(s->tenant, sizeof(s->tenant), "%s", tenant);
		snprintf(s->env, sizeof(s->env), "%s", name);
		s->version = v[i].version;
		KBT_ASSERT_OK(dek_read(
		    tenant, name, s->version, s->plain, NULL, &s->dek));
		KBT_ASSERT_INT(s->dek.version, ==, s->version);
	}
	kb_wipe(v, n * sizeof(*v));
	free(v);
}

/* Snapshot `s` still opens to the same bytes; its row is now sealed by
 * `key_id` (NULL: any); `same_blob` 1: byte for byte the blob taken, 0: a
 * new one (re-sealed), -1: either. */
static void
snap_check(const struct snap *s, const char *key_id, int same_blob)
{
	uint8_t plain[DEK_LEN];
	struct store_dek dek;
	enum kb_err e;
	int same;

	e = dek_read(s->tenant, s->env, s->version, plain, NULL, &dek);
	if (e != KB_OK)
		KBT_FAIL("%s/%s v%u does not open: %s", s->tenant, s->env,
		    s->version, kb_err_msg(e));
	if (CRYPTO_memcmp(plain, s->plain, DEK_LEN) != 0)
		KBT_FAIL("%s/%s v%u opens to other bytes than before",
		    s->tenant, s->env, s->version);
	kb_wipe(plain, sizeof(plain));
	if (key_id != NULL && strcmp(dek.key_id, key_id) != 0)
		KBT_FAIL("%s/%s v%u is sealed by %s, not %s", s->tenant, s->env,
		    s->version, dek.key_id, key_id);
	KBT_ASSERT_STR(dek.damaged, "");
	same = dek.wrapped_len == s->dek.wrapped_len
	    && memcmp(dek.wrapped, s->dek.wrapped, dek.wrapped_len) == 0;
	if (same_blob >= 0 && same != same_blob)
		KBT_FAIL("%s/%s v%u: the blob %s", s->tenant, s->env,
		    s->version,
		    same ? "was not re-sealed" : "changed unexpectedly");
}

static void
snaps_check(const char *tenant, const char *key_id, int same_blob)
{
	size_t i;

	for (i = 0; i < nsnaps; i++) {
		if (strcmp(snaps[i].tenant, tenant) != 0)
			continue;
		snap_check(&snaps[i], key_id, same_blob);
		if (kbt_failed_current)
			return;
	}
}

static size_t
snaps_of(const char *tenant)
{
	size_t i, n = 0;

	for (i = 0; i < nsnaps; i++)
		n += strcmp(snaps[i].tenant, tenant) == 0;
	return n;
}

/* The snapshot of tenant/env version 1; NULL if none was taken. */
static struct snap *
snap_find(const char *tenant, const char *env)
{
	size_t i;

	for (i = 0; i < nsnaps; i++)
		if (strcmp(snaps[i].tenant, tenant) == 0
		    && strcmp(snaps[i].env, env) == 0 && snaps[i].version == 1)
			return &snaps[i];
	return NULL;
}

/* ---- building blocks of the cases ---- */

/* Tenant `tenant` with tenant key A active (its activation job run to its
 * end, with nothing to re-seal yet); A's id into key_a and its KEK's into
 * kek_a. */
static void
tenant_with_key(const char *tenant, char key_a[STORE_KEY_ID_MAX],
    char kek_a[STORE_KEY_ID_MAX])
{
	struct store_job job;
	struct store_key kek;

	KBT_ASSERT_OK(tenant_create(tenant));
	KBT_ASSERT_OK(key_generate(tenant, key_a));
	KBT_ASSERT_OK(key_activate(tenant, key_a, &job));
	KBT_ASSERT_INT(job.total, ==, 0);
	KBT_ASSERT_INT(job_wait(job.id, &job), ==, 0);
	KBT_ASSERT_STR(job.state, "done");
	KBT_ASSERT_OK(store_kek_current(w.b->store, tenant, &kek));
	KBT_ASSERT_STR(kek.parent_id, key_a);
	KBT_ASSERT_STR(kek.state, "active");
	snprintf(kek_a, STORE_KEY_ID_MAX, "%s", kek.id);
}

/* `n` environments "<prefix>-NN" of `tenant`, customer-managed when
 * `customer`; every `every`-th one (0: none) gets `extra` more DEK
 * versions. Snapshots them. Returns the DEK rows made. */
static size_t
envs_make(const char *tenant, const char *prefix, unsigned n, int customer,
    unsigned every, unsigned extra)
{
	char name[STORE_ID_MAX];
	unsigned i, j;
	size_t rows = 0;
	enum kb_err e;

	for (i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "%s-%02u", prefix, i);
		if ((e = env_create(tenant, name)) != KB_OK
		    || (customer && (e = env_apply_key(tenant, name)) != KB_OK))
			goto fail;
		rows++;
		for (j = 0; every != 0 && i % every == 0 && j < extra; j++) {
			if ((e = env_rotate_dek(tenant, name)) != KB_OK)
				goto fail;
			rows++;
		}
		snap_env(tenant, name);
		if (kbt_failed_current)
			return 0;
	}
	return rows;
fail:
	fprintf(stderr, "  making %s/%s: %s\n", tenant, name, kb_err_msg(e));
	kbt_failed_current = 1;
	return 0;
}

static void
key_state_is(const char *id, const char *state)
{
	struct store_key k;

	KBT_ASSERT_OK(store_key_get(w.b->store, id, &k));
	if (strcmp(k.state, state) != 0)
		KBT_FAIL(
		    "key %s (%s) is %s, not %s", id, k.purpose, k.state, state);
}

/* The tenant's KEK object `id` in the token: want KB_OK or
 * KB_ERR_NOT_FOUND. */
static enum kb_err
kek_in_token(const char *tenant, const char *id)
{
	char label[DEK_LABEL_MAX];
	enum kb_err e;

	dek_label(STORE_MODE_CUSTOMER, tenant, label, sizeof(label));
	e = hsm_secret_exists(w.b->hsm, id, label);
	kb_err_clear();
	return e;
}

/* Change one column of DEK row (tenant/name, version) in the SQLite file
 * behind the store's back: `sql` binds ?1 (the value: a blob when blob is
 * set, else text), ?2 version, ?3 tenant, ?4 name. Returns rows changed. */
static int
db_poke(const char *sql, const void *value, size_t len, int blob,
    const char *tenant, const char *name, uint32_t version)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	int changed = -1;

	if (sqlite3_open_v2(
	        w.b->cfg->database, &db, SQLITE_OPEN_READWRITE, NULL)
	        != SQLITE_OK
	    || sqlite3_busy_timeout(db, 10000) != SQLITE_OK
	    || sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
		fprintf(stderr, "  sqlite: %s\n", sqlite3_errmsg(db));
		goto out;
	}
	if (blob)
		sqlite3_bind_blob(st, 1, value, (int)len, SQLITE_TRANSIENT);
	else
		sqlite3_bind_text(st, 1, value, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(st, 2, version);
	sqlite3_bind_text(st, 3, tenant, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 4, name, -1, SQLITE_TRANSIENT);
	if (sqlite3_step(st) != SQLITE_DONE)
		fprintf(stderr, "  sqlite: %s\n", sqlite3_errmsg(db));
	else
		changed = sqlite3_changes(db);
out:
	sqlite3_finalize(st);
	sqlite3_close(db);
	return changed;
}

#define POKE_WHERE                                                             \
	" WHERE version = ?2 AND env_id = (SELECT id FROM environments "       \
	"WHERE tenant_id = ?3 AND name = ?4)"

/* ---- the cases ---- */

/* An activation re-seals every customer-managed DEK (every version) of
 * the tenant under the new key's KEK; the old KEK goes from the database
 * and the token; platform-managed rows are not touched; the job's start
 * and end are audited. */
static void
test_activation(void)
{
	char key_a[STORE_KEY_ID_MAX], kek_a[STORE_KEY_ID_MAX];
	char key_b[STORE_KEY_ID_MAX];
	struct store_job job;
	struct store_key kek_b;
	struct store_env env;
	size_t rows, i;
	char name[STORE_ID_MAX];
	uint8_t plain[DEK_LEN];

	nsnaps = 0;
	KBT_ASSERT_OK(world_open(""));
	tenant_with_key("acme", key_a, kek_a);
	/* 24 environments, every third with two more versions: 40 rows. */
	rows = envs_make("acme", "env", 24, 1, 3, 2);
	KBT_ASSERT_INT(rows, ==, 40);
	/* One platform-managed environment: not the activation's. */
	KBT_ASSERT_OK(env_create("acme", "plain"));
	snap_env("acme", "plain");
	snaps_check("acme", NULL, 1);
	for (i = 0; i < nsnaps; i++)
		if (strcmp(snaps[i].env, "plain") != 0)
			KBT_ASSERT_STR(snaps[i].dek.key_id, kek_a);
	/* A second activation within 24 hours is refused (policy); a day
	 * later it starts. */
	KBT_ASSERT_OK(key_generate("acme", key_b));
	KBT_ASSERT_ERR(
	    key_activate("acme", key_b, &job), KB_ERR_FAILED_PRECONDITION);
	kb_err_clear();
	clock_advance(25 * HOUR_S);
	KBT_ASSERT_OK(key_activate("acme", key_b, &job));
	KBT_ASSERT_STR(job.kind, STORE_JOB_ACTIVATE);
	KBT_ASSERT_STR(job.key_id, key_b);
	KBT_ASSERT_STR(job.previous_key_id, key_a);
	KBT_ASSERT_INT(job.total, ==, rows);
	KBT_ASSERT_INT(job_wait(job.id, &job), ==, 0);
	KBT_ASSERT_STR(job.state, "done");
	KBT_ASSERT_STR(job.error, "");
	KBT_ASSERT_INT(job.done, ==, job.total);
	KBT_ASSERT_INT(job.total, ==, rows);
	/* Its end is audited after its last commit: wait for it, then the
	 * token work that comes before it (keys_reconcile) is done too. */
	KBT_ASSERT_INT(
	    audit_count("job.activate.start", "acme", job.id, 1), ==, 1);
	KBT_ASSERT_INT(
	    audit_count("job.activate.done", "acme", job.id, 1), ==, 1);
	KBT_ASSERT_OK(store_key_get(w.b->store, job.target_key_id, &kek_b));
	KBT_ASSERT_STR(kek_b.state, "active");
	KBT_ASSERT_STR(kek_b.parent_id, key_b);
	key_state_is(key_b, "active");
	key_state_is(key_a, "available");
	key_state_is(kek_a, "deleted");
	KBT_ASSERT_ERR(kek_in_token("acme", kek_a), KB_ERR_NOT_FOUND);
	KBT_ASSERT_OK(kek_in_token("acme", kek_b.id));
	KBT_ASSERT_INT(store_deks_sealed_by(w.b->store, kek_a), ==, 0);
	KBT_ASSERT_INT(
	    store_deks_sealed_by(w.b->store, kek_b.id), ==, (long long)rows);
	/* Every customer-managed version: same bytes, new blob, under B's
	 * KEK; the platform-managed one: untouched. */
	for (i = 0; i < nsnaps; i++) {
		if (strcmp(snaps[i].env, "plain") == 0)
			snap_check(&snaps[i], NULL, 1);
		else
			snap_check(&snaps[i], kek_b.id, 0);
		if (kbt_failed_current)
			return;
	}
	for (i = 0; i < 24; i++) {
		snprintf(name, sizeof(name), "env-%02zu", i);
		KBT_ASSERT_OK(store_env_get(w.b->store, "acme", name, &env));
		KBT_ASSERT_INT(env.mode, ==, STORE_MODE_CUSTOMER);
		KBT_ASSERT_STR(env.key_id, key_b);
		KBT_ASSERT_STR(env.seal_key_id, kek_b.id);
	}
	/* New data keys go under B's KEK. */
	KBT_ASSERT_OK(env_create("acme", "after"));
	KBT_ASSERT_OK(env_apply_key("acme", "after"));
	KBT_ASSERT_OK(dek_read("acme", "after", 0, plain, &env, NULL));
	KBT_ASSERT_STR(env.seal_key_id, kek_b.id);
	world_close();
}

/* The first k rows of activation `job` re-sealed under its target KEK
 * and committed with the job's progress, as run_job commits a batch (the
 * job threads stopped); *out (k rows, caller wipes and frees) what they
 * hold now. */
static void
reseal_first(const struct store_job *job, size_t k, struct store_rewrap **out)
{
	char(*old)[STORE_KEY_ID_MAX] = calloc(k, sizeof(*old));
	struct store_rewrap *rw = calloc(k, sizeof(*rw));
	struct dek_row row;
	size_t n = 0, i;

	*out = rw;
	KBT_ASSERT(rw != NULL && old != NULL);
	KBT_ASSERT_OK(
	    store_rewrap_fetch_after(w.b->store, job, 0, 0, rw, k, &n));
	KBT_ASSERT_INT(n, ==, k);
	for (i = 0; i < n; i++) {
		snprintf(old[i], STORE_KEY_ID_MAX, "%s", rw[i].dek.key_id);
		row = (struct dek_row){rw[i].tenant_id, rw[i].name, rw[i].uid,
		    rw[i].version, rw[i].mode};
		KBT_ASSERT_OK(dek_reseal(w.b->hsm, &row, &rw[i].dek, 0, &row,
		    job->target_key_id, &rw[i].dek));
	}
	KBT_ASSERT_OK(store_rewrap_commit(
	    w.b->store, job->id, rw, old, n, clock_now_us()));
	free(old);
}

/* A job recorded with part of its rows re-sealed (progress stored through
 * the store, the way run_job stores a batch) and no job thread to run it,
 * as a broker that died mid-job leaves it: the next start resumes it from
 * the stored progress (the rows done are not re-sealed again) and
 * finishes it; every DEK opens as before, every row is under the new KEK. */
static void
test_resume(void)
{
	char key_a[STORE_KEY_ID_MAX], kek_a[STORE_KEY_ID_MAX];
	char key_b[STORE_KEY_ID_MAX], why[64];
	struct store_rewrap *rw = NULL;
	struct store_job job;
	struct store_env env;
	size_t rows, n = 0, i, j, k = 12;
	size_t started;

	nsnaps = 0;
	KBT_ASSERT_OK(world_open(""));
	tenant_with_key("acme", key_a, kek_a);
	rows = envs_make("acme", "env", 30, 1, 5, 1); /* 36 rows */
	KBT_ASSERT_INT(rows, ==, 36);
	KBT_ASSERT_OK(key_generate("acme", key_b));
	clock_advance(25 * HOUR_S);
	world_jobs_stop();
	KBT_ASSERT_OK(key_activate("acme", key_b, &job));
	KBT_ASSERT_INT(job.total, ==, rows);
	/* The first k rows (all under A's KEK) re-sealed and committed with
	 * the job's progress. */
	KBT_ASSERT_INT(
	    store_deks_sealed_by(w.b->store, kek_a), ==, (long long)rows);
	reseal_first(&job, k, &rw);
	n = k;
	KBT_ASSERT_OK(store_job_get(w.b->store, job.id, &job));
	KBT_ASSERT_STR(job.state, "running");
	KBT_ASSERT_INT(job.done, ==, k);
	/* What those rows hold now: the resumed job must leave them be. */
	for (i = 0; i < n; i++) {
		for (j = 0; j < nsnaps; j++) {
			if (strcmp(snaps[j].env, rw[i].name) == 0
			    && snaps[j].version == rw[i].version) {
				snaps[j].dek = rw[i].dek;
				break;
			}
		}
		KBT_ASSERT(j < nsnaps);
	}
	kb_wipe(rw, k * sizeof(*rw));
	free(rw);
	rw = NULL;
	/* While the key is installing, no encryption change (policy). */
	KBT_ASSERT_OK(env_create("acme", "meanwhile"));
	KBT_ASSERT_ERR(
	    env_apply_key("acme", "meanwhile"), KB_ERR_FAILED_PRECONDITION);
	kb_err_clear();

	KBT_ASSERT_OK(world_restart());
	KBT_ASSERT_INT(job_wait(job.id, &job), ==, 0);
	KBT_ASSERT_STR(job.state, "done");
	KBT_ASSERT_INT(job.done, ==, job.total);
	/* It started from the progress stored, and was started once. */
	snprintf(why, sizeof(why), "%zu of %zu data keys", k, rows);
	started = audit_count("job.activate.start", "acme", why, 1);
	KBT_ASSERT_INT(started, ==, 1);
	KBT_ASSERT_INT(
	    audit_count("job.activate.start", "acme", job.id, 1), ==, 1);
	KBT_ASSERT_INT(
	    audit_count("job.activate.done", "acme", job.id, 1), ==, 1);
	/* The k rows committed before: byte for byte as they were; the
	 * others: re-sealed now; all of them open as before. */
	for (i = 0; i < nsnaps; i++) {
		int committed = strcmp(snaps[i].dek.key_id, kek_a) != 0;

		snap_check(&snaps[i], job.target_key_id, committed ? 1 : 0);
		if (kbt_failed_current)
			return;
	}
	/* No environment left behind. */
	KBT_ASSERT_INT(store_deks_sealed_by(w.b->store, kek_a), ==, 0);
	KBT_ASSERT_INT(store_deks_sealed_by(w.b->store, job.target_key_id), ==,
	    (long long)rows);
	for (i = 0; i < 30; i++) {
		char name[STORE_ID_MAX];

		snprintf(name, sizeof(name), "env-%02zu", i);
		KBT_ASSERT_OK(store_env_get(w.b->store, "acme", name, &env));
		KBT_ASSERT_STR(env.seal_key_id, job.target_key_id);
	}
	key_state_is(key_b, "active");
	key_state_is(kek_a, "deleted");
	KBT_ASSERT_ERR(kek_in_token("acme", kek_a), KB_ERR_NOT_FOUND);
	world_close();
}

/* An activation that failed part way leaves the rows it moved under the
 * new key's KEK, readable while that key is in the token. Locking the
 * tenant would destroy the key (only the active one comes back with an
 * unlock), so the lock is refused, naming the rule, with nothing changed;
 * once the key is activated again and every row is under it, the lock
 * goes through. */
static void
test_lock_after_partial_failure(void)
{
	char key_a[STORE_KEY_ID_MAX], kek_a[STORE_KEY_ID_MAX];
	char key_b[STORE_KEY_ID_MAX];
	struct store_rewrap *rw = NULL;
	struct store_job job, job2;
	struct store_tenant t;
	uint8_t plain[DEK_LEN];
	size_t rows, i, k = 5;

	nsnaps = 0;
	KBT_ASSERT_OK(world_open(""));
	tenant_with_key("acme", key_a, kek_a);
	rows = envs_make("acme", "env", 12, 1, 0, 0);
	KBT_ASSERT_OK(key_generate("acme", key_b));
	clock_advance(25 * HOUR_S);
	world_jobs_stop();
	KBT_ASSERT_OK(key_activate("acme", key_b, &job));
	reseal_first(&job, k, &rw);
	kb_wipe(rw, k * sizeof(*rw));
	free(rw);
	KBT_ASSERT_OK(store_job_fail(
	    w.b->store, job.id, "stopped by the test", clock_now_us()));
	key_state_is(key_b, "available");
	KBT_ASSERT_INT(store_deks_sealed_by(w.b->store, job.target_key_id), ==,
	    (long long)k);
	/* 72 h after the first activation: the lock's own rule is met. */
	clock_advance(73 * HOUR_S);
	KBT_ASSERT_ERR(tenant_lock("acme"), KB_ERR_FAILED_PRECONDITION);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_FAILED_PRECONDITION),
	    "an activation that failed");
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_FAILED_PRECONDITION), key_b);
	kb_err_clear();
	KBT_ASSERT_OK(store_tenant_get(w.b->store, "acme", &t));
	KBT_ASSERT_INT(t.locked, ==, 0);
	key_state_is(key_a, "active");
	key_state_is(key_b, "available");
	KBT_ASSERT_OK(kek_in_token("acme", job.target_key_id));
	for (i = 0; i < nsnaps; i++)
		KBT_ASSERT_OK(dek_read(
		    "acme", snaps[i].env, snaps[i].version, plain, NULL, NULL));
	/* Key B activated again: every row moves, the failed job's KEK goes,
	 * and then the tenant locks. */
	world_jobs_start();
	clock_advance(25 * HOUR_S);
	KBT_ASSERT_OK(key_activate("acme", key_b, &job2));
	KBT_ASSERT_INT(job_wait(job2.id, &job2), ==, 0);
	KBT_ASSERT_STR(job2.state, "done");
	KBT_ASSERT_INT(store_deks_sealed_by(w.b->store, job2.target_key_id), ==,
	    (long long)rows);
	key_state_is(job.target_key_id, "deleted");
	clock_advance(73 * HOUR_S);
	KBT_ASSERT_OK(tenant_lock("acme"));
	KBT_ASSERT_OK(store_tenant_get(w.b->store, "acme", &t));
	KBT_ASSERT_INT(t.locked, ==, 1);
	world_close();
}

/* A job stopped by startup_close while it runs (more rows than one batch
 * of 256, so it stops between batches): the job is still running in the
 * database with the batches done counted; the next start finishes it and
 * leaves the rows done before untouched. */
static void
test_stop_resume(void)
{
	char key_a[STORE_KEY_ID_MAX], kek_a[STORE_KEY_ID_MAX];
	char key_b[STORE_KEY_ID_MAX], why[64];
	struct store_job job;
	struct store_dek dek;
	struct store_env env;
	struct store *s = NULL;
	char dbpath[1024];
	size_t rows, i, moved = 0;
	int polls;

	nsnaps = 0;
	/* One thread: the batches take long enough to be stopped between. */
	KBT_ASSERT_OK(world_open("rewrap_threads = 1\n"));
	tenant_with_key("acme", key_a, kek_a);
	/* 1536 rows: six batches of the job's 256. */
	rows = envs_make("acme", "env", 48, 1, 1, 31);
	KBT_ASSERT_INT(rows, ==, 1536);
	KBT_ASSERT_OK(key_generate("acme", key_b));
	clock_advance(25 * HOUR_S);
	KBT_ASSERT_OK(key_activate("acme", key_b, &job));
	KBT_ASSERT_INT(job.total, ==, rows);
	/* Stop as soon as the first batch is committed (polled every 0.1
	 * ms; a batch takes some 25 ms here). */
	for (polls = 0; polls < WAIT_MS * 10; polls++) {
		KBT_ASSERT_OK(store_job_get(w.b->store, job.id, &job));
		if (job.done > 0 || strcmp(job.state, "running") != 0)
			break;
		usleep(100);
	}
	snprintf(dbpath, sizeof(dbpath), "%s", w.b->cfg->database);
	startup_close(w.b);
	w.b = NULL;
	/* The database as the stop left it. */
	KBT_ASSERT_OK(store_open(dbpath, 2, &s));
	KBT_ASSERT_OK(store_job_get(s, job.id, &job));
	if (strcmp(job.state, "running") != 0) {
		store_close(s);
		KBT_FAIL("the job was %s before the stop (%llu of %llu)",
		    job.state, (unsigned long long)job.done,
		    (unsigned long long)job.total);
	}
	for (i = 0; i < nsnaps; i++) {
		if (store_env_with_dek(
		        s, "acme", snaps[i].env, snaps[i].version, &env, &dek)
		    != KB_OK)
			break;
		if (strcmp(dek.key_id, job.target_key_id) == 0) {
			snaps[i].dek = dek;
			moved++;
		}
	}
	store_close(s);
	KBT_ASSERT_INT(i, ==, nsnaps);
	/* The progress stored is the rows committed: some, not all. */
	KBT_ASSERT_INT(moved, ==, job.done);
	KBT_ASSERT(job.done > 0 && job.done < job.total);

	KBT_ASSERT_OK(world_start());
	KBT_ASSERT_INT(job_wait(job.id, &job), ==, 0);
	KBT_ASSERT_STR(job.state, "done");
	KBT_ASSERT_INT(job.done, ==, job.total);
	snprintf(why, sizeof(why), "%zu of %zu data keys", moved, rows);
	KBT_ASSERT_INT(
	    audit_count("job.activate.start", "acme", why, 1), ==, 1);
	KBT_ASSERT_INT(
	    audit_count("job.activate.done", "acme", job.id, 1), ==, 1);
	for (i = 0; i < nsnaps; i++) {
		int before = strcmp(snaps[i].dek.key_id, kek_a) != 0;

		snap_check(&snaps[i], job.target_key_id, before ? 1 : 0);
		if (kbt_failed_current)
			return;
	}
	KBT_ASSERT_INT(store_deks_sealed_by(w.b->store, kek_a), ==, 0);
	key_state_is(key_b, "active");
	world_close();
}

/* A platform-key rotation re-seals every platform-managed DEK under a new
 * platform key; a second one while it runs is refused naming the running
 * one; when done the old key is deleted and gone from the token, and
 * customer-managed rows were not touched. */
static void
test_platform_rotation(void)
{
	char key_a[STORE_KEY_ID_MAX], kek_a[STORE_KEY_ID_MAX];
	struct store_key old, cur, k;
	struct store_job job, job2;
	size_t rows, i;

	nsnaps = 0;
	KBT_ASSERT_OK(world_open(""));
	KBT_ASSERT_OK(tenant_create("plat"));
	rows = envs_make("plat", "env", 20, 0, 4, 1); /* 25 rows */
	KBT_ASSERT_INT(rows, ==, 25);
	tenant_with_key("cust", key_a, kek_a);
	KBT_ASSERT_INT(envs_make("cust", "env", 4, 1, 0, 0), ==, 4);
	KBT_ASSERT_OK(store_platform_current(w.b->store, &old));
	KBT_ASSERT_STR(old.state, "active");
	KBT_ASSERT_OK(hsm_secret_exists(w.b->hsm, old.id, DEK_LABEL_PLATFORM));
	for (i = 0; i < nsnaps; i++)
		if (strcmp(snaps[i].tenant, "plat") == 0)
			KBT_ASSERT_STR(snaps[i].dek.key_id, old.id);

	/* The job thread stopped: the rotation stays running while the
	 * second call is made. */
	world_jobs_stop();
	KBT_ASSERT_OK(jobs_rotate_platform(w.b, "test-jobs", &job));
	KBT_ASSERT_STR(job.kind, STORE_JOB_ROTATE);
	KBT_ASSERT_STR(job.state, "running");
	KBT_ASSERT_INT(job.total, ==, rows);
	KBT_ASSERT(strcmp(job.target_key_id, old.id) != 0);
	KBT_ASSERT_STR(job.previous_key_id, old.id);
	key_state_is(job.target_key_id, "installing");
	KBT_ASSERT_OK(
	    hsm_secret_exists(w.b->hsm, job.target_key_id, DEK_LABEL_PLATFORM));
	/* New DEKs go under the installing key at once. */
	KBT_ASSERT_OK(store_platform_current(w.b->store, &cur));
	KBT_ASSERT_STR(cur.id, job.target_key_id);
	KBT_ASSERT_ERR(
	    jobs_rotate_platform(w.b, "again", &job2), KB_ERR_ALREADY_EXISTS);
	kb_err_clear();
	KBT_ASSERT_STR(job2.id, job.id);
	KBT_ASSERT_STR(job2.target_key_id, job.target_key_id);
	KBT_ASSERT_OK(env_create("plat", "meanwhile"));
	snap_env("plat", "meanwhile");
	KBT_ASSERT_STR(snaps[nsnaps - 1].dek.key_id, job.target_key_id);
	/* The refused call left no key behind in the database. */
	{
		struct store_key *v = NULL;
		size_t n = 0;

		KBT_ASSERT_OK(
		    store_keys_by_purpose(w.b->store, "platform", &v, &n));
		free(v);
		KBT_ASSERT_INT(n, ==, 2);
	}

	KBT_ASSERT_OK(world_jobs_start());
	KBT_ASSERT_INT(job_wait(job.id, &job), ==, 0);
	KBT_ASSERT_STR(job.state, "done");
	KBT_ASSERT_INT(job.done, ==, job.total);
	KBT_ASSERT_INT(audit_count("job.rotate.start", NULL, job.id, 1), ==, 1);
	KBT_ASSERT_INT(audit_count("job.rotate.done", NULL, job.id, 1), ==, 1);
	key_state_is(old.id, "deleted");
	KBT_ASSERT_OK(store_key_get(w.b->store, job.target_key_id, &k));
	KBT_ASSERT_STR(k.state, "active");
	KBT_ASSERT_OK(store_platform_current(w.b->store, &cur));
	KBT_ASSERT_STR(cur.id, job.target_key_id);
	KBT_ASSERT_ERR(hsm_secret_exists(w.b->hsm, old.id, DEK_LABEL_PLATFORM),
	    KB_ERR_NOT_FOUND);
	kb_err_clear();
	KBT_ASSERT_INT(store_deks_sealed_by(w.b->store, old.id), ==, 0);
	for (i = 0; i < nsnaps; i++) {
		if (strcmp(snaps[i].tenant, "cust") == 0)
			snap_check(&snaps[i], kek_a, 1);
		else if (strcmp(snaps[i].env, "meanwhile") == 0)
			snap_check(&snaps[i], job.target_key_id, 1);
		else
			snap_check(&snaps[i], job.target_key_id, 0);
		if (kbt_failed_current)
			return;
	}
	/* Once done, another rotation may start. */
	KBT_ASSERT_OK(jobs_rotate_platform(w.b, "third", &job2));
	KBT_ASSERT_INT(job_wait(job2.id, &job2), ==, 0);
	KBT_ASSERT_STR(job2.state, "done");
	KBT_ASSERT_INT(job2.total, ==, rows + 1);
	snaps_check("plat", job2.target_key_id, 0);
	world_close();
}

static void
envs_state_is(const char *tenant, unsigned n, enum store_env_state st)
{
	struct store_env env;
	struct store_dek *v = NULL;
	char name[STORE_ID_MAX];
	size_t nv = 0;
	unsigned i;

	for (i = 0; i < n; i++) {
		snprintf(name, sizeof(name), "env-%02u", i);
		KBT_ASSERT_OK(store_env_get(w.b->store, tenant, name, &env));
		if (env.state != st)
			KBT_FAIL("%s/%s is %s, not %s", tenant, name,
			    store_env_state_name(env.state),
			    store_env_state_name(st));
		KBT_ASSERT_OK(
		    store_env_dek_list(w.b->store, tenant, name, &v, &nv));
		free(v);
		v = NULL;
		/* Deleted: its data keys destroyed; locked: kept. */
		if (st == STORE_ENV_DELETED)
			KBT_ASSERT_INT(nv, ==, 0);
		else
			KBT_ASSERT(nv > 0);
	}
}

/* The sweeper deletes the environments locked more than 28 days ago, and
 * only those, as the test clock moves; the count it returns is theirs. */
static void
test_sweeper(void)
{
	char key[STORE_KEY_ID_MAX], kek[STORE_KEY_ID_MAX];
	uint8_t plain[DEK_LEN];

	nsnaps = 0;
	KBT_ASSERT_OK(world_open(""));
	tenant_with_key("old", key, kek);
	KBT_ASSERT_INT(envs_make("old", "env", 3, 1, 0, 0), ==, 3);
	KBT_ASSERT_OK(env_create("old", "plain"));
	snap_env("old", "plain");
	tenant_with_key("new", key, kek);
	KBT_ASSERT_INT(envs_make("new", "env", 3, 1, 0, 0), ==, 3);
	KBT_ASSERT_INT(jobs_sweep(w.b), ==, 0);
	/* A lock needs 72 hours since the last key change. */
	KBT_ASSERT_ERR(tenant_lock("old"), KB_ERR_FAILED_PRECONDITION);
	kb_err_clear();
	clock_advance(73 * HOUR_S);
	KBT_ASSERT_OK(tenant_lock("old"));
	envs_state_is("old", 3, STORE_ENV_LOCKED);
	clock_advance(2 * DAY_S);
	KBT_ASSERT_OK(tenant_lock("new"));
	envs_state_is("new", 3, STORE_ENV_LOCKED);
	/* "old" locked 27 days ago: nothing yet. */
	clock_advance(25 * DAY_S);
	KBT_ASSERT_INT(jobs_sweep(w.b), ==, 0);
	envs_state_is("old", 3, STORE_ENV_LOCKED);
	/* "old" locked 28 days and 2 hours ago, "new" 26 days and 2 hours
	 * ago: only old's go. */
	clock_advance(DAY_S + 2 * HOUR_S);
	KBT_ASSERT_INT(jobs_sweep(w.b), ==, 3);
	envs_state_is("old", 3, STORE_ENV_DELETED);
	envs_state_is("new", 3, STORE_ENV_LOCKED);
	KBT_ASSERT_INT(audit_count("sweeper.delete", "old", NULL, 3), ==, 3);
	KBT_ASSERT_INT(audit_count("sweeper.delete", "new", NULL, 0), ==, 0);
	/* old's platform-managed environment was never locked: kept. */
	KBT_ASSERT(snap_find("old", "plain") != NULL);
	snap_check(snap_find("old", "plain"), NULL, 1);
	KBT_ASSERT_OK(dek_read("old", "plain", 0, plain, NULL, NULL));
	KBT_ASSERT_INT(jobs_sweep(w.b), ==, 0);
	/* Two days on, new's retention has run out too. */
	clock_advance(2 * DAY_S);
	KBT_ASSERT_INT(jobs_sweep(w.b), ==, 3);
	envs_state_is("new", 3, STORE_ENV_DELETED);
	KBT_ASSERT_INT(audit_count("sweeper.delete", "new", NULL, 3), ==, 3);
	KBT_ASSERT_INT(jobs_sweep(w.b), ==, 0);
	world_close();
}

/* A DEK row edited in the database file fails its integrity check: the
 * job marks it unrecoverable (audited, logged), re-seals every other row
 * and finishes; the broker goes on serving. */
static void
test_damaged_row(void)
{
	char key_a[STORE_KEY_ID_MAX], kek_a[STORE_KEY_ID_MAX];
	char key_b[STORE_KEY_ID_MAX];
	struct store_job job;
	struct store_dek dek;
	struct store_env env;
	uint8_t plain[DEK_LEN], blob[STORE_WRAPPED_MAX];
	size_t rows, i, bad = SIZE_MAX;

	nsnaps = 0;
	KBT_ASSERT_OK(world_open(""));
	tenant_with_key("acme", key_a, kek_a);
	rows = envs_make("acme", "env", 20, 1, 0, 0);
	KBT_ASSERT_INT(rows, ==, 20);
	KBT_ASSERT_OK(key_generate("acme", key_b));
	for (i = 0; i < nsnaps; i++)
		if (strcmp(snaps[i].env, "env-07") == 0)
			bad = i;
	KBT_ASSERT(bad != SIZE_MAX);
	/* One bit of env-07's sealed DEK flipped (in its ciphertext). */
	memcpy(blob, snaps[bad].dek.wrapped, snaps[bad].dek.wrapped_len);
	blob[snaps[bad].dek.wrapped_len / 2] ^= 0x01;
	KBT_ASSERT_INT(db_poke("UPDATE deks SET wrapped = ?1" POKE_WHERE, blob,
	                   snaps[bad].dek.wrapped_len, 1, "acme", "env-07", 1),
	    ==, 1);
	KBT_ASSERT_ERR(
	    dek_read("acme", "env-07", 0, plain, NULL, NULL), KB_ERR_CORRUPT);
	kb_err_clear();

	clock_advance(25 * HOUR_S);
	KBT_ASSERT_OK(key_activate("acme", key_b, &job));
	KBT_ASSERT_INT(job.total, ==, rows);
	KBT_ASSERT_INT(job_wait(job.id, &job), ==, 0);
	KBT_ASSERT_STR(job.state, "done");
	KBT_ASSERT_STR(job.error, "");
	KBT_ASSERT_INT(
	    audit_count("job.activate.done", "acme", job.id, 1), ==, 1);
	/* The row: marked unrecoverable, naming why; audited as such. */
	KBT_ASSERT_OK(
	    store_env_with_dek(w.b->store, "acme", "env-07", 0, &env, &dek));
	KBT_ASSERT_CONTAINS(dek.damaged, "integrity check failed");
	KBT_ASSERT_CONTAINS(dek.damaged, "acme/env-07");
	KBT_ASSERT_INT(
	    audit_count("datakey.integrity", "acme", "env-07", 1), ==, 1);
	KBT_ASSERT_INT(
	    audit_count("datakey.integrity", "acme", NULL, 1), ==, 1);
	KBT_ASSERT(dek_read("acme", "env-07", 0, plain, NULL, NULL) != KB_OK);
	kb_err_clear();
	/* Every other row: under B's KEK, same bytes. */
	for (i = 0; i < nsnaps; i++) {
		if (i == bad)
			continue;
		snap_check(&snaps[i], job.target_key_id, 0);
		if (kbt_failed_current)
			return;
	}
	KBT_ASSERT_INT(store_deks_sealed_by(w.b->store, job.target_key_id), ==,
	    (long long)rows - 1);
	key_state_is(key_b, "active");
	/* The broker works on: a new environment, a new version. */
	KBT_ASSERT_OK(env_create("acme", "after"));
	KBT_ASSERT_OK(env_apply_key("acme", "after"));
	KBT_ASSERT_OK(env_rotate_dek("acme", "env-03"));
	KBT_ASSERT_OK(dek_read("acme", "after", 0, plain, &env, NULL));
	KBT_ASSERT_STR(env.seal_key_id, job.target_key_id);
	KBT_ASSERT_OK(dek_read("acme", "env-03", 0, plain, NULL, &dek));
	KBT_ASSERT_INT(dek.version, ==, 2);
	world_close();
}

/* What failed_activation leaves. */
struct failed {
	char key_a[STORE_KEY_ID_MAX], kek_a[STORE_KEY_ID_MAX];
	char key_b[STORE_KEY_ID_MAX];
	struct store_job job; /* the failed activation of key_b */
	size_t rows;
};

/* Tenant acme with key A active and 20 customer-managed environments, one
 * of whose rows (env-05's) names a key the token does not have; then key B
 * activated: the job fails. */
static void
failed_activation(struct failed *f)
{
	nsnaps = 0;
	KBT_ASSERT_OK(world_open(""));
	tenant_with_key("acme", f->key_a, f->kek_a);
	f->rows = envs_make("acme", "env", 20, 1, 0, 0);
	KBT_ASSERT_INT(f->rows, ==, 20);
	KBT_ASSERT_OK(key_generate("acme", f->key_b));
	KBT_ASSERT_INT(db_poke("UPDATE deks SET key_id = ?1" POKE_WHERE,
	                   "kek-0000000000000000", 0, 0, "acme", "env-05", 1),
	    ==, 1);
	clock_advance(25 * HOUR_S);
	KBT_ASSERT_OK(key_activate("acme", f->key_b, &f->job));
	KBT_ASSERT_INT(f->job.total, ==, f->rows);
	KBT_ASSERT_INT(job_wait(f->job.id, &f->job), ==, 0);
	KBT_ASSERT_STR(f->job.state, "failed");
}

/* With env-05's row put right, a day on, key B activated again: the job
 * finishes; every row, env-05's and one made since included, is under the
 * new KEK. */
static void
retry_activation(struct failed *f, struct store_job *job2)
{
	uint8_t plain[DEK_LEN];

	KBT_ASSERT_INT(db_poke("UPDATE deks SET key_id = ?1" POKE_WHERE,
	                   f->kek_a, 0, 0, "acme", "env-05", 1),
	    ==, 1);
	KBT_ASSERT_OK(dek_read("acme", "env-05", 0, plain, NULL, NULL));
	clock_advance(25 * HOUR_S);
	KBT_ASSERT_OK(key_activate("acme", f->key_b, job2));
	KBT_ASSERT(strcmp(job2->target_key_id, f->job.target_key_id) != 0);
	KBT_ASSERT_INT(job2->total, ==, snaps_of("acme"));
	KBT_ASSERT_INT(job_wait(job2->id, job2), ==, 0);
	KBT_ASSERT_STR(job2->state, "done");
	KBT_ASSERT_INT(
	    audit_count("job.activate.done", "acme", job2->id, 1), ==, 1);
	snaps_check("acme", job2->target_key_id, 0);
	key_state_is(f->key_b, "active");
	key_state_is(f->kek_a, "deleted");
}

/* A DEK row naming a key the token does not have: the job fails with a
 * reason naming the row; nothing of its batch is committed, so every row
 * is as it was and opens under the old KEK; the key being activated goes
 * back to available and the broker goes on under the old key; with the
 * row put right, the activation runs again and finishes. */
static void
test_missing_key_row(void)
{
	struct failed f;
	struct store_job job2;
	struct store_key kek;
	struct store_env env;
	uint8_t plain[DEK_LEN];
	size_t i;

	failed_activation(&f);
	KBT_ASSERT_CONTAINS(f.job.error, "acme/env-05");
	KBT_ASSERT_INT(f.job.done, ==, 0);
	KBT_ASSERT_INT(
	    audit_count("job.activate.failed", "acme", "acme/env-05", 1), ==,
	    1);
	KBT_ASSERT_INT(
	    audit_count("job.activate.done", "acme", f.job.id, 0), ==, 0);
	key_state_is(f.key_b, "available");
	key_state_is(f.key_a, "active");
	key_state_is(f.kek_a, "active");
	KBT_ASSERT_OK(kek_in_token("acme", f.kek_a));
	/* New data keys go under the active key's KEK, not the failed
	 * activation's. */
	KBT_ASSERT_OK(store_kek_current(w.b->store, "acme", &kek));
	KBT_ASSERT_STR(kek.id, f.kek_a);
	for (i = 0; i < nsnaps; i++) {
		if (strcmp(snaps[i].env, "env-05") == 0)
			continue;
		snap_check(&snaps[i], f.kek_a, 1);
		if (kbt_failed_current)
			return;
	}
	KBT_ASSERT_OK(env_create("acme", "after"));
	KBT_ASSERT_OK(env_apply_key("acme", "after"));
	KBT_ASSERT_OK(dek_read("acme", "after", 0, plain, &env, NULL));
	KBT_ASSERT_STR(env.seal_key_id, f.kek_a);
	snap_env("acme", "after");
	retry_activation(&f, &job2);
	world_close();
}

/* After a failed activation of key B and a successful one of B again, new
 * data keys go under the KEK the successful one made active, not under the
 * failed one's KEK (left installing: no job will ever finish it, and a
 * lock destroys its token object without an unlock bringing it back). */
static void
test_retry_kek(void)
{
	struct failed f;
	struct store_job job2;
	struct store_key kek;
	struct store_env env;
	uint8_t plain[DEK_LEN];

	failed_activation(&f);
	retry_activation(&f, &job2);
	KBT_ASSERT_OK(store_kek_current(w.b->store, "acme", &kek));
	if (strcmp(kek.id, job2.target_key_id) != 0)
		KBT_FAIL("new data keys of acme go under KEK %s (%s; the "
		         "failed job %s made %s), not %s (active, of job %s)",
		    kek.id, kek.state, f.job.id, f.job.target_key_id,
		    job2.target_key_id, job2.id);
	KBT_ASSERT_OK(env_create("acme", "later"));
	KBT_ASSERT_OK(env_apply_key("acme", "later"));
	KBT_ASSERT_OK(dek_read("acme", "later", 0, plain, &env, NULL));
	KBT_ASSERT_STR(env.seal_key_id, job2.target_key_id);
	world_close();
}

static const struct kbt_case cases[] = {
    {"/jobs/activation", test_activation},
    {"/jobs/resume", test_resume},
    {"/jobs/stop-resume", test_stop_resume},
    {"/jobs/platform-rotation", test_platform_rotation},
    {"/jobs/sweeper", test_sweeper},
    {"/jobs/damaged-row", test_damaged_row},
    {"/jobs/missing-key-row", test_missing_key_row},
    {"/jobs/lock-after-partial-failure", test_lock_after_partial_failure},
    {"/jobs/retry-kek", test_retry_kek},
    {NULL, NULL},
};

int
main(int argc, char **argv)
{
	int r;

	log_set_level(LOG_ERROR);
	snprintf(clock_dir, sizeof(clock_dir), "%s", kbt_tmpdir());
	snprintf(clock_path, sizeof(clock_path), "%s/clock", clock_dir);
	clock_advance(0);
	r = kbt_run(cases, argc, argv);
	world_close();
	kbt_rmtree(clock_dir);
	return r;
}
