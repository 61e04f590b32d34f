/* SPDX-License-Identifier: Apache-2.0 */
/* store.h: the broker's database, SQLite (WAL, durable commits) or
 * PostgreSQL, on the database layer (db/db.h: versioned migrations, the
 * engine's errors mapped). Safe for concurrent use: a pool of connections
 * serves the worker threads. A failed call leaves the database unaltered
 * (every write is one transaction). */
#ifndef KB_STORE_H
#define KB_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "kb_err.h"

struct store;

#define STORE_ID_MAX 64 /* tenant ids and environment names, with NUL */
#define STORE_KEY_ID_MAX 72
#define STORE_DISPLAY_MAX 256
#define STORE_ALG_MAX 32
#define STORE_WRAPPED_MAX 1024

enum store_env_mode {
	STORE_MODE_PLATFORM = 1,
	STORE_MODE_CUSTOMER = 2,
};

enum store_env_state {
	STORE_ENV_ENABLED = 1,
	STORE_ENV_LOCKED = 2,
	STORE_ENV_DELETED = 3,
	/* Not stored as a state: an environment whose deletion was asked for
	 * and is not final yet reads as this (state_before_deletion keeps the
	 * stored one). */
	STORE_ENV_PENDING_DELETION = 4,
};

struct store_tenant {
	char id[STORE_ID_MAX];
	char display_name[STORE_DISPLAY_MAX];
	int64_t create_time_us;
	int locked; /* tenant state */
	int64_t last_activation_us; /* 0 = never */
	int64_t last_key_change_us;
	int64_t lock_time_us;
	char lock_key_id[STORE_KEY_ID_MAX];
	/* Derived, filled by get/list: */
	uint32_t env_count; /* not deleted */
	uint32_t locked_env_count;
	int64_t last_env_lock_us; /* newest lock of a locked env */
	char active_key_id[STORE_KEY_ID_MAX];
	char installing_key_id[STORE_KEY_ID_MAX];
};

#define STORE_UID_LEN 32 /* hex digits of an environment's uid */

struct store_env {
	char tenant_id[STORE_ID_MAX];
	char name[STORE_ID_MAX];
	char uid[STORE_UID_LEN + 1]; /* never reused; in the DEKs' AAD */
	enum store_env_mode mode;
	enum store_env_state state;
	uint32_t dek_version;
	/* The environment's encryption key: the tenant key (customer) or the
	 * platform key; and the key that seals the current DEK version (the
	 * tenant's KEK, or the platform key). */
	char key_id[STORE_KEY_ID_MAX];
	char seal_key_id[STORE_KEY_ID_MAX];
	char wrap_alg[STORE_ALG_MAX];
	int64_t create_time_us;
	int64_t update_time_us;
	int64_t lock_time_us; /* when locked; 0 otherwise */
	int64_t delete_request_us; /* DeleteEnvironment; 0 = never */
	int64_t delete_final_us; /* when that deletion is (was) final */
	enum store_env_state state_before_deletion; /* the stored state */
	/* Versions below it were retired (RetireDataKeys); filled by
	 * store_env_with_dek only. */
	uint32_t min_dek_version;
};

/* One wrapped DEK version. */
struct store_dek {
	uint32_t version;
	char key_id[STORE_KEY_ID_MAX];
	char wrap_alg[STORE_ALG_MAX];
	uint8_t wrapped[STORE_WRAPPED_MAX];
	size_t wrapped_len;
	char damaged[160]; /* why repair gave up on it; "" = not */
};

/* A key the broker knows of: its own (platform, audit), a tenant's RSA key
 * (tenant), its BYOK key-exchange key (exchange) or its AES KEK (kek). */
struct store_key {
	char id[STORE_KEY_ID_MAX];
	char tenant_id[STORE_ID_MAX]; /* "" for the broker's own keys */
	char purpose[16]; /* platform, audit, tenant, exchange, kek */
	char origin[16]; /* generated, pfx, byok */
	char state[24]; /* available, installing, active, locked, deleted,
	                  pending_deletion, retiring, retired,
	                  pending_approval */
	char fingerprint[65]; /* hex SHA-256 of the SubjectPublicKeyInfo */
	char wrap_alg[STORE_ALG_MAX]; /* OAEP variant for encrypt keys */
	unsigned bits;
	int64_t create_time_us;
	int64_t update_time_us;
	int64_t activate_time_us;
	int64_t lock_time_us;
	int64_t delete_time_us;
	/* A KEK: the tenant key wrapping it, and the wrapped key. */
	char parent_id[STORE_KEY_ID_MAX];
	uint8_t wrapped[512];
	size_t wrapped_len;
	int64_t delete_request_us; /* DeleteKey; 0 = never */
	int64_t delete_final_us; /* when that deletion is (was) final */
	int64_t retire_time_us; /* RetireKey's job done; 0 = never retired */
};

/* Background jobs: a tenant's activation (re-seal its customer-managed DEKs
 * under the new key's KEK), a platform-key rotation, and the one-time
 * upgrade of pre-v2 (RSA-OAEP) rows. */
#define STORE_JOB_ACTIVATE "activate"
#define STORE_JOB_ROTATE "rotate-platform"
#define STORE_JOB_UPGRADE "upgrade-v2"
/* A key's retirement (issue 14): every row it seals (a tenant key: through
 * its KEKs) re-sealed under target_key_id; key_id is the key retired. */
#define STORE_JOB_RETIRE "retire"
/* Not a job: the verify scan reads every row (of job->tenant_id, or all). */
#define STORE_SCAN_VERIFY "verify"

struct store_job {
	char id[STORE_KEY_ID_MAX];
	char tenant_id[STORE_ID_MAX]; /* "" for platform-wide jobs */
	char kind[24];
	char key_id[STORE_KEY_ID_MAX]; /* the key being activated */
	char previous_key_id[STORE_KEY_ID_MAX];
	char target_key_id[STORE_KEY_ID_MAX]; /* re-seal under this key */
	char state[16]; /* running, done, failed */
	uint64_t total, done;
	char error[256];
	int64_t create_time_us;
	int64_t update_time_us;
};

/* A backup: an environment's DEK version and encryption state then. */
struct store_backup {
	char id[STORE_KEY_ID_MAX];
	char tenant_id[STORE_ID_MAX];
	char env[STORE_ID_MAX];
	uint32_t dek_version;
	enum store_env_mode mode;
	char key_id[STORE_KEY_ID_MAX];
	int64_t create_time_us;
};

/* One DEK row to re-seal: identifies the row (what its AAD names) and
 * carries its blob. */
struct store_rewrap {
	int64_t env_id;
	uint32_t version;
	char tenant_id[STORE_ID_MAX];
	char name[STORE_ID_MAX];
	char uid[STORE_UID_LEN + 1];
	enum store_env_mode mode;
	int locked; /* its environment is locked */
	int skip; /* set by the job: leave this row alone */
	struct store_dek dek; /* key_id/wrap_alg/wrapped: before, then after */
};

/* Open (creating if absent) and migrate the database `target` (a SQLite
 * file path, or a postgresql:// libpq connection string whose password, if
 * any, comes from `password_file` or libpq's PGPASSFILE), with a pool of
 * `conns` connections. A database from a newer keybroker is refused
 * (KB_ERR_CONFIG); an unreachable server is KB_ERR_UNAVAILABLE. */
struct store_open_opts {
	const char *target;
	const char *password_file; /* NULL: none (or libpq's own) */
	unsigned conns;
};
enum kb_err store_open_with(
    const struct store_open_opts *o, struct store **out);
/* store_open_with without a password file. */
enum kb_err store_open(const char *target, unsigned conns, struct store **out);
void store_close(struct store *s);

/* The engine behind the store, for messages that differ ("backup create
 * works on SQLite") and for the README's two procedures. */
int store_is_postgres(const struct store *s);
/* One round trip to the database (health): KB_ERR_UNAVAILABLE when the
 * server cannot be reached. */
enum kb_err store_ping(struct store *s);

/* The schema version the database is at. */
int store_schema_version(struct store *s);

/* Bind the database to a token at first start; later, refuse a different
 * token with KB_ERR_TOKEN_MISMATCH naming both. */
enum kb_err store_token_bind(
    struct store *s, const char *label, const char *serial);

/* Small key/value settings. get: KB_ERR_NOT_FOUND if absent. */
enum kb_err store_meta_get(
    struct store *s, const char *key, char *buf, size_t len);
enum kb_err store_meta_set(struct store *s, const char *key, const char *value);

/* Policy time's durable state (timemark.c): one row. */
struct store_clock {
	int64_t mark_us; /* the highest policy time made durable */
	int kept; /* 0: seeded by the schema 4 migration from
	             the newest time recorded, not yet kept by
	             a running broker (no jump can be judged) */
	int64_t jump_from_us; /* a forward jump waiting for an admin: the */
	int64_t jump_to_us; /* mark before it, the wall clock after (0: none) */
	int64_t confirm_time_us; /* the last confirmation (0: never) */
	char confirm_by[128]; /* and who gave it */
};

/* Read the row. KB_ERR_CORRUPT if it is missing. */
enum kb_err store_clock_get(struct store *s, struct store_clock *out);
/* Write it (kept becomes 1); the stored mark never decreases, whatever
 * c->mark_us says. Durable when it returns KB_OK. */
enum kb_err store_clock_put(struct store *s, const struct store_clock *c);

/* Tenants. create: KB_ERR_ALREADY_EXISTS if the id is taken. */
enum kb_err store_tenant_create(struct store *s, const struct store_tenant *t);
enum kb_err store_tenant_get(
    struct store *s, const char *id, struct store_tenant *out);
/* Up to `limit` tenants with id > `after` ("" = from the start), by id.
 * *out is malloc'd (free()); *more is set when further rows exist. */
enum kb_err store_tenant_list(struct store *s, const char *after,
    unsigned limit, struct store_tenant **out, size_t *n, int *more);

/* Environments. create inserts the environment and its DEK version 1 in one
 * transaction; KB_ERR_NOT_FOUND if the tenant does not exist,
 * KB_ERR_ALREADY_EXISTS if the name is taken within the tenant. */
enum kb_err store_env_create(
    struct store *s, struct store_env *env, const struct store_dek *dek);
enum kb_err store_env_get(struct store *s, const char *tenant, const char *name,
    struct store_env *out);
enum kb_err store_env_list(struct store *s, const char *tenant,
    const char *after, unsigned limit, struct store_env **out, size_t *n,
    int *more);
/* The environment and its wrapped DEK `version` (0 = current), in one
 * read. */
enum kb_err store_env_with_dek(struct store *s, const char *tenant,
    const char *name, uint32_t version, struct store_env *env,
    struct store_dek *dek);

/* Keys. create: one key row alone, in its own transaction (the broker's
 * keys, KEKs); a tenant's new key goes through store_tenant_key_add, which
 * also records the tenant's key change. KB_ERR_ALREADY_EXISTS if the id is
 * taken. */
enum kb_err store_key_create(struct store *s, const struct store_key *k);
enum kb_err store_key_get(
    struct store *s, const char *id, struct store_key *out);
/* The broker key of `purpose` in state "active" (platform, kek, audit). */
enum kb_err store_key_broker(
    struct store *s, const char *purpose, struct store_key *out);

/* ---- tenant keys (store_keys.c) ---- */

/* Every key of a tenant (tenant keys and its KEK), oldest first; *out
 * malloc'd. */
enum kb_err store_key_list(struct store *s, const char *tenant,
    const char *purpose, struct store_key **out, size_t *n);
/* The tenant's newest key (purpose tenant) with this fingerprint, in any
 * state; KB_ERR_NOT_FOUND if none. */
enum kb_err store_key_by_fingerprint(struct store *s, const char *tenant,
    const char *fingerprint, struct store_key *out);
/* Record a new tenant key (state available) and the tenant's key change. */
enum kb_err store_tenant_key_add(
    struct store *s, const struct store_key *k, int64_t now);

/* Start activating `key_id`: the key becomes installing, its new KEK `kek`
 * (state installing) is recorded, a job is recorded with the number of DEK
 * rows to re-seal, and the tenant's last activation and key change become
 * `now`. */
enum kb_err store_activation_begin(struct store *s, const char *tenant,
    const char *key_id, const char *previous_key_id,
    const struct store_key *kek, const char *job_id, int64_t now,
    struct store_job *job);
/* Start a platform-wide job of `kind` (STORE_JOB_ROTATE with `new_key`, the
 * new platform key, recorded installing; STORE_JOB_UPGRADE with NULL).
 * KB_ERR_ALREADY_EXISTS (and *job the running one) if one is running. */
enum kb_err store_job_begin(struct store *s, const char *job_id,
    const char *kind, const struct store_key *new_key,
    const char *previous_key_id, int64_t now, struct store_job *job);
/* Up to `max` rows the job still has to re-seal, in (env_id, version)
 * order after (after_env_id, after_version) ((0, 0): from the start).
 * Each call costs what it returns, not what lies before the position. */
enum kb_err store_rewrap_fetch_after(struct store *s,
    const struct store_job *job, int64_t after_env_id, uint32_t after_version,
    struct store_rewrap *rows, size_t max, size_t *n);
/* Store re-sealed rows (each row's dek now holds the new key_id, alg and
 * blob; `old_key_ids` the keys they had, so a row changed meanwhile is left
 * alone; rows with `skip` set are left alone) and add their count to the
 * job's progress, in one transaction. */
enum kb_err store_rewrap_commit(struct store *s, const char *job_id,
    const struct store_rewrap *rows, char (*old_key_ids)[STORE_KEY_ID_MAX],
    size_t n, int64_t now);
/* Finish a job once nothing is left to re-seal (KB_ERR_UNAVAILABLE if rows
 * appeared meanwhile: run another pass). Activation: the new key active,
 * the previous active key available, the new KEK active and the previous
 * one deleted (the caller destroys its token object). Rotation: the new
 * platform key active, the previous one deleted (likewise). */
enum kb_err store_job_finish(
    struct store *s, const struct store_job *j, int64_t now);
enum kb_err store_job_fail(
    struct store *s, const char *job_id, const char *error, int64_t now);
enum kb_err store_job_get(
    struct store *s, const char *id, struct store_job *out);
/* Jobs in state running (to resume at start-up); *out malloc'd. */
enum kb_err store_jobs_running(
    struct store *s, struct store_job **out, size_t *n);

/* Jobs running, and failed jobs no later job of the same kind and tenant
 * finished after (what still needs an admin); *out malloc'd. */
enum kb_err store_jobs_pending(
    struct store *s, struct store_job **out, size_t *n);

/* The KEK new data keys of `tenant` are sealed under: the installing one
 * during an activation, else the active one. KB_ERR_NOT_FOUND if none. */
enum kb_err store_kek_current(
    struct store *s, const char *tenant, struct store_key *out);
/* The platform key new data keys are sealed under (AES-256-GCM; the
 * installing one during a rotation). KB_ERR_NOT_FOUND if none yet. */
enum kb_err store_platform_current(struct store *s, struct store_key *out);
/* Every key of `purpose`, of every tenant; *out malloc'd. */
enum kb_err store_keys_by_purpose(
    struct store *s, const char *purpose, struct store_key **out, size_t *n);
/* Move key `id` from state `from` to `to` (KB_ERR_FAILED_PRECONDITION if
 * it is not in `from`). */
enum kb_err store_key_set_state(struct store *s, const char *id,
    const char *from, const char *to, int64_t now);
/* How many DEK rows key `id` seals (-1 on a database error); how many rows
 * of tenants not locked are still in the pre-v2 envelope. */
int64_t store_deks_sealed_by(struct store *s, const char *key_id);
/* How many DEK rows the verify scan of `tenant` ("" = all) reads. */
int64_t store_deks_count(struct store *s, const char *tenant);
/* Repair: replace one DEK row's sealing (key_id, alg, blob), or mark it
 * unrecoverable with `why`. KB_ERR_NOT_FOUND if there is no such row. */
enum kb_err store_dek_replace(struct store *s, const char *tenant,
    const char *name, const struct store_dek *dek);
enum kb_err store_dek_mark_damaged(struct store *s, const char *tenant,
    const char *name, uint32_t version, const char *why);
int64_t store_deks_legacy(struct store *s);

/* ---- environment encryption, backups, lock (store_lifecycle.c) ---- */

/* Every DEK version of an environment, newest first; *out malloc'd. */
enum kb_err store_env_dek_list(struct store *s, const char *tenant,
    const char *name, struct store_dek **out, size_t *n);
/* Replace every DEK version's wrapping (same versions, same order as from
 * store_env_dek_list) and set the mode, in one transaction. */
enum kb_err store_env_rewrap(struct store *s, const char *tenant,
    const char *name, enum store_env_mode mode, const struct store_dek *deks,
    size_t n, int64_t now);
/* The version a new DEK of the environment gets: highest ever + 1. */
enum kb_err store_env_next_version(
    struct store *s, const char *tenant, const char *name, uint32_t *version);
/* Add a new current DEK version (dek->version must be what
 * store_env_next_version said, else KB_ERR_UNAVAILABLE). */
enum kb_err store_env_add_version(struct store *s, const char *tenant,
    const char *name, struct store_dek *dek, int64_t now);
/* Reset: every DEK version and backup destroyed; back to platform mode with
 * `dek` as the new current version (as for store_env_add_version). */
enum kb_err store_env_reset(struct store *s, const char *tenant,
    const char *name, struct store_dek *dek, int64_t now);
enum kb_err store_env_set_state(struct store *s, const char *tenant,
    const char *name, enum store_env_state from, enum store_env_state to,
    int64_t now);

enum kb_err store_backup_create(struct store *s, const char *tenant,
    const char *name, const char *id, int64_t now, struct store_backup *out);
enum kb_err store_backup_get(struct store *s, const char *tenant,
    const char *id, struct store_backup *out);
enum kb_err store_backup_list(struct store *s, const char *tenant,
    const char *name, struct store_backup **out, size_t *n);

/* Lock: customer-managed enabled environments become locked, the active key
 * locked, available keys deleted; the tenant locked with `lock_key_id`.
 * *destroy gets the ids whose token objects must now be destroyed
 * (malloc'd). */
enum kb_err store_tenant_lock(struct store *s, const char *tenant,
    const char *lock_key_id, int64_t now, char (**destroy)[STORE_KEY_ID_MAX],
    size_t *ndestroy);
/* Unlock: the lock key active again, the tenant active, a key change now. */
enum kb_err store_tenant_unlock(
    struct store *s, const char *tenant, int64_t now);
/* Locked environments whose lock time is at or before `cutoff`. */
enum kb_err store_envs_locked_before(struct store *s, int64_t cutoff,
    struct store_env **out, size_t *n, size_t max);
/* Delete an environment's data for good: every DEK version destroyed (its
 * backups' with them; their records stay, unlisted), state deleted (only
 * if still locked). */
enum kb_err store_env_purge(
    struct store *s, const char *tenant, const char *name, int64_t now);
/* Keys in state locked or deleted (their token objects must be gone). */
enum kb_err store_keys_destroyed(
    struct store *s, struct store_key **out, size_t *n);

/* ---- quorum (store_quorum.c; the rules are quorum.c's) ---- */

#define STORE_APPROVERS_MAX 1024
#define STORE_CALL_MAX 2048
#define STORE_SEAL_MAX 128
#define STORE_CN_MAX 128
#define STORE_OPS_MAX 512

/* A quorum policy: tenant "" is the platform default. */
struct store_quorum {
	char tenant[STORE_ID_MAX];
	uint32_t approvals; /* 0 = off */
	char approvers[STORE_APPROVERS_MAX]; /* "cn,cn"; "" = every admin */
	int64_t update_time_us;
	char updated_by[STORE_CN_MAX];
	char operations[STORE_OPS_MAX]; /* "LockTenant,..."; "" = every one */
	uint8_t seal[STORE_SEAL_MAX];
	size_t seal_len;
};

/* KB_ERR_NOT_FOUND when `tenant` ("" platform) has none. */
enum kb_err store_quorum_get(
    struct store *s, const char *tenant, struct store_quorum *out);
/* Insert or replace the policy of q->tenant. */
enum kb_err store_quorum_put(struct store *s, const struct store_quorum *q);

/* An approval request: a covered call kept until its quorum is met. */
struct store_approval_req {
	char id[40];
	char method[64];
	char tenant[STORE_ID_MAX];
	char env[STORE_ID_MAX];
	char args[512]; /* for people; never a secret */
	uint8_t call[STORE_CALL_MAX]; /* the packed request, secrets out */
	size_t call_len;
	char proof_fp[72];
	char target[256]; /* the target's state when made */
	char requester[STORE_CN_MAX];
	int64_t create_time_us, expire_time_us, update_time_us;
	uint32_t needed;
	char approvers[STORE_APPROVERS_MAX];
	char state[16];
	char result[512];
	char key_id[STORE_KEY_ID_MAX]; /* a staged key (GenerateKey...) */
	uint8_t seal[STORE_SEAL_MAX]; /* over what never changes */
	size_t seal_len;
	uint8_t state_seal[STORE_SEAL_MAX]; /* over the state, each move */
	size_t state_seal_len;
};

struct store_approval {
	char request_id[40];
	char approver[STORE_CN_MAX];
	char decision[8]; /* approve, deny */
	int64_t time_us;
	uint8_t seal[STORE_SEAL_MAX];
	size_t seal_len;
};

enum kb_err store_approval_req_insert(
    struct store *s, const struct store_approval_req *r);
/* KB_ERR_NOT_FOUND naming the id when there is none. */
enum kb_err store_approval_req_get(
    struct store *s, const char *id, struct store_approval_req *out);
/* Requests of `tenant` (NULL: every one), newest first; only pending ones
 * unless `all`. *out is malloc'd (NULL when none). */
enum kb_err store_approval_req_list(struct store *s, const char *tenant,
    int all, struct store_approval_req **out, size_t *n);
/* Move request `id` from state `from` to `to` with `result` and the new
 * state seal; KB_ERR_FAILED_PRECONDITION when it was no longer in `from`
 * (another call moved it first), the database unaltered. */
enum kb_err store_approval_req_move(struct store *s, const char *id,
    const char *from, const char *to, const char *result, int64_t now,
    const uint8_t *state_seal, size_t state_seal_len);
/* *held = whether a pending or executing request holds key `key_id`. */
enum kb_err store_approval_req_holds(
    struct store *s, const char *key_id, int *held);
/* Record one decision; KB_ERR_ALREADY_EXISTS when this approver (CN) has
 * one on the request already. */
enum kb_err store_approval_insert(
    struct store *s, const struct store_approval *a);
/* The decisions on request `id`, oldest first (*out malloc'd or NULL). */
enum kb_err store_approval_list(
    struct store *s, const char *id, struct store_approval **out, size_t *n);

/* ---- deletion with a way back (store_delete.c) ---- */

/* What a key protects now, counted from the database: DEK rows it seals
 * (directly, or through a KEK whose parent it is), KEKs it wraps that are
 * not deleted, and backups recorded under it; environments deleted for
 * good count nothing. */
struct store_key_use {
	uint64_t deks, keks, backups;
};

/* Count what key `key_id` protects (see struct store_key_use). The one
 * count DeleteKey (and a census) relies on. */
enum kb_err store_key_protects(
    struct store *s, const char *key_id, struct store_key_use *out);

/* An environment not deleted and not pending deletion becomes pending
 * deletion, final at `final_us`; *out is the environment afterwards.
 * KB_ERR_FAILED_PRECONDITION if it is deleted or already pending. */
enum kb_err store_env_delete_begin(struct store *s, const char *tenant,
    const char *name, int64_t now, int64_t final_us, struct store_env *out);
/* Cancel the pending deletion while `now` is before its final time (or at
 * any time before the final step when `late_ok`); the environment is as it
 * was (its stored state). KB_ERR_FAILED_PRECONDITION if none is pending or
 * it became final. */
enum kb_err store_env_delete_cancel(struct store *s, const char *tenant,
    const char *name, int64_t now, int late_ok, struct store_env *out);
/* Environments whose pending deletion is final at or before `now`, oldest
 * first, at most `max`; *out malloc'd. */
enum kb_err store_envs_delete_due(struct store *s, int64_t now,
    struct store_env **out, size_t *n, size_t max);
/* Make a due deletion final: every DEK version destroyed (its backups'
 * with them; their records stay, unlisted), state deleted, in one
 * transaction. KB_ERR_FAILED_PRECONDITION if it is no longer pending or not
 * due (an undelete came first). */
enum kb_err store_env_delete_finish(
    struct store *s, const char *tenant, const char *name, int64_t now);

/* A tenant key of `tenant` in state available or retired that protects
 * nothing becomes pending_deletion, final at `final_us` (checked and changed
 * in one transaction). KB_ERR_FAILED_PRECONDITION naming its state, or the
 * counts of what it protects; KB_ERR_NOT_FOUND if the tenant has no such key.
 */
enum kb_err store_key_delete_begin(struct store *s, const char *tenant,
    const char *key_id, int64_t now, int64_t final_us, struct store_key *out);
/* pending_deletion -> available (retired for a key that was retired) while
 * `now` is before its final time (or until the final step when `late_ok`). */
enum kb_err store_key_delete_cancel(struct store *s, const char *tenant,
    const char *key_id, int64_t now, int late_ok, struct store_key *out);
/* Keys whose pending deletion is final at or before `now`; *out malloc'd. */
enum kb_err store_keys_delete_due(struct store *s, int64_t now,
    struct store_key **out, size_t *n, size_t max);
/* pending_deletion -> deleted (delete_time_us = now) if due; the caller
 * then destroys the token object (start-up destroys it after a crash). */
enum kb_err store_key_delete_finish(
    struct store *s, const char *key_id, int64_t now);

const char *store_env_mode_name(enum store_env_mode m);
const char *store_env_state_name(enum store_env_state st);

/* ---- key census, retirement, DEK versions (store_census.c) ---- */

/* What one sealing key seals (a KEK of a tenant key). */
struct store_census_via {
	char key_id[STORE_KEY_ID_MAX];
	char state[16];
	uint64_t dek_versions, backups, envs;
};

/* One environment with rows sealed by `via`. */
struct store_census_env {
	char tenant_id[STORE_ID_MAX];
	char name[STORE_ID_MAX];
	enum store_env_state state;
	enum store_env_mode mode;
	uint32_t dek_versions, backups;
	char via[STORE_KEY_ID_MAX];
};

/* A key's census: exact counts of the DEK rows it seals (directly, and for
 * a tenant key through its KEKs), the backups whose version is one of
 * them, and their environments, from one read transaction. */
struct store_census {
	uint64_t dek_versions, backups, envs, envs_enabled, envs_locked;
	uint64_t dek_versions_locked, tenants;
	char first_locked[2 * STORE_ID_MAX]; /* "tenant/env", "" if none */
	struct store_census_via *via; /* malloc'd */
	size_t nvia;
	struct store_census_env *dependents; /* malloc'd, by tenant, name */
	size_t ndependents;
	int truncated; /* more than max_envs environments */
};

/* Fill *out for key `key_id` (listing at most max_envs environments);
 * release it with store_census_free. */
enum kb_err store_key_census(struct store *s, const char *key_id,
    size_t max_envs, struct store_census *out);
void store_census_free(struct store_census *c);

/* Start retiring key `key_id` (state `from` -> retiring) with a job of
 * kind STORE_JOB_RETIRE re-sealing its rows under `target` ("" when it
 * seals none); KB_ERR_FAILED_PRECONDITION if it is no longer `from`. */
enum kb_err store_retire_begin(struct store *s, const char *key_id,
    const char *from, const char *tenant, const char *target,
    const char *job_id, int64_t now, struct store_job *job);

#define STORE_VERSIONS_MAX 64

/* An environment's DEK versions: the current one, the retirement bound,
 * and the versions kept (newest first; `more` beyond STORE_VERSIONS_MAX). */
struct store_env_versions {
	uint32_t current, min;
	uint32_t versions[STORE_VERSIONS_MAX];
	size_t n, more;
};

enum kb_err store_env_versions(struct store *s, const char *tenant,
    const char *name, struct store_env_versions *out);
/* Destroy every DEK version below `below` (never the current one) and
 * raise the environment's min_dek_version to it, in one transaction.
 * Backups of those versions: refused (KB_ERR_FAILED_PRECONDITION naming
 * how many) unless `with_backups`, which destroys them too. */
enum kb_err store_env_dek_retire(struct store *s, const char *tenant,
    const char *name, uint32_t below, int with_backups, int64_t now,
    uint32_t *destroyed, uint32_t *backups);

/* ---- disaster recovery (store_backup.c) ---- */

struct sqlite3;

/* Copy the open SQLite database `src` into the new file `dest` with the
 * online backup API in one step (one read transaction: a consistent copy
 * while writers go on). `what` names it in errors. On failure `dest` may
 * be left for the caller to remove. */
enum kb_err store_sqlite_copy(
    struct sqlite3 *src, const char *dest, const char *what);
/* The database as it is now, copied into the new file `dest` (SQLite;
 * KB_ERR_FAILED_PRECONDITION naming pg_basebackup/pg_dump on PostgreSQL). */
enum kb_err store_snapshot(struct store *s, const char *dest);
/* Every key, by purpose, tenant and id; *out malloc'd. */
enum kb_err store_keys_all(struct store *s, struct store_key **out, size_t *n);
/* What depends on key `key_id` (its DEK rows, and for a tenant key those
 * of its KEKs): environments not deleted, their tenants, and the first 20
 * tenant ids ("a, b") in `names`. */
enum kb_err store_key_dependents(struct store *s, const char *key_id,
    uint64_t *envs, uint64_t *tenants, char *names, size_t names_len);
/* Before the database file `path` is replaced: KB_ERR_UNAVAILABLE if a
 * process has it open (a running broker), else its WAL is folded into it
 * and removed, so the file alone is the whole old database. */
enum kb_err store_file_settle(const char *path);

/* Row counts for the metrics endpoint (store_stats.c): `a` and `b` the
 * grouping columns, `n` the rows. *out malloc'd. */
struct store_count {
	char a[32], b[32];
	int64_t n;
};
/* Environments by state (a) and mode (b). */
enum kb_err store_env_counts(
    struct store *s, struct store_count **out, size_t *n);
/* Keys by purpose (a) and state (b). */
enum kb_err store_key_counts(
    struct store *s, struct store_count **out, size_t *n);
/* ---- the doctor (store_doctor.c): reads only ---- */

/* Open the database `target` read-only for the doctor (PostgreSQL: in
 * read-only transactions): no migration, no
 * file created or changed (a database whose write-ahead log is absent, as
 * after a clean stop, is opened immutable; with one, read-only beside the
 * broker's). *schema gets its schema version (store_schema_version is
 * this keybroker's). KB_ERR_NOT_FOUND if there is no file. */
enum kb_err store_open_readonly(const char *target, const char *password_file,
    struct store **out, int *schema);

/* How many rows of a kind ("environment", "key") are in each state that
 * is on the way out or gone (environments not enabled; keys not available,
 * installing, active or retired), and the oldest time of each group (an
 * environment's lock time, a key's last update). New states show up here
 * with no change. *out malloc'd. */
struct store_state_count {
	char kind[16];
	char state[24];
	uint64_t count;
	int64_t oldest_us;
};
enum kb_err store_state_counts(
    struct store *s, struct store_state_count **out, size_t *n);

/* The environments (not deleted) whose current data keys key `key_id`
 * seals, or (a tenant key) its KEKs seal: "tenant/env, ..." into `names`,
 * the first 20 by name. */
enum kb_err store_key_dependent_envs(
    struct store *s, const char *key_id, char *names, size_t len);

#endif /* KB_STORE_H */
