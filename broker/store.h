/* SPDX-License-Identifier: Apache-2.0 */
/* store.h: the broker's SQLite database (WAL, durable commits, versioned
 * migrations). Safe for concurrent use: a pool of connections serves the
 * worker threads. A failed call leaves the database unaltered (every write
 * is one transaction). */
#ifndef KB_STORE_H
#define KB_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "kb_err.h"

struct store;

#define STORE_ID_MAX 64       /* tenant ids and environment names, with NUL */
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
};

struct store_tenant {
	char id[STORE_ID_MAX];
	char display_name[STORE_DISPLAY_MAX];
	int64_t create_time_us;
	uint32_t env_count;       /* filled by get/list */
};

struct store_env {
	char tenant_id[STORE_ID_MAX];
	char name[STORE_ID_MAX];
	enum store_env_mode mode;
	enum store_env_state state;
	uint32_t dek_version;
	char key_id[STORE_KEY_ID_MAX];   /* wraps the current DEK version */
	char wrap_alg[STORE_ALG_MAX];
	int64_t create_time_us;
	int64_t update_time_us;
};

/* One wrapped DEK version. */
struct store_dek {
	uint32_t version;
	char key_id[STORE_KEY_ID_MAX];
	char wrap_alg[STORE_ALG_MAX];
	uint8_t wrapped[STORE_WRAPPED_MAX];
	size_t wrapped_len;
};

/* A key the broker knows of: its own (platform, kek, audit) or a tenant's. */
struct store_key {
	char id[STORE_KEY_ID_MAX];
	char tenant_id[STORE_ID_MAX];  /* "" for the broker's own keys */
	char purpose[16];              /* platform, kek, audit, tenant */
	char origin[16];               /* generated, pfx, byok */
	char state[16];                /* available, installing, active, locked, deleted */
	char fingerprint[65];          /* hex SHA-256 of the SubjectPublicKeyInfo */
	char wrap_alg[STORE_ALG_MAX];  /* OAEP variant for encrypt keys */
	int64_t create_time_us;
	int64_t update_time_us;
};

/* Open (creating if absent) and migrate the database at `path`, with a pool
 * of `conns` connections. A database from a newer keybroker is refused
 * (KB_ERR_CONFIG). */
enum kb_err store_open(const char *path, unsigned conns, struct store **out);
void store_close(struct store *s);

/* The schema version the database is at. */
int store_schema_version(struct store *s);

/* Bind the database to a token at first start; later, refuse a different
 * token with KB_ERR_TOKEN_MISMATCH naming both. */
enum kb_err store_token_bind(struct store *s, const char *label,
    const char *serial);

/* Small key/value settings. get: KB_ERR_NOT_FOUND if absent. */
enum kb_err store_meta_get(struct store *s, const char *key, char *buf,
    size_t len);
enum kb_err store_meta_set(struct store *s, const char *key,
    const char *value);

/* Tenants. create: KB_ERR_ALREADY_EXISTS if the id is taken. */
enum kb_err store_tenant_create(struct store *s, const struct store_tenant *t);
enum kb_err store_tenant_get(struct store *s, const char *id,
    struct store_tenant *out);
/* Up to `limit` tenants with id > `after` ("" = from the start), by id.
 * *out is malloc'd (free()); *more is set when further rows exist. */
enum kb_err store_tenant_list(struct store *s, const char *after,
    unsigned limit, struct store_tenant **out, size_t *n, int *more);

/* Environments. create inserts the environment and its DEK version 1 in one
 * transaction; KB_ERR_NOT_FOUND if the tenant does not exist,
 * KB_ERR_ALREADY_EXISTS if the name is taken within the tenant. */
enum kb_err store_env_create(struct store *s, struct store_env *env,
    const struct store_dek *dek);
enum kb_err store_env_get(struct store *s, const char *tenant,
    const char *name, struct store_env *out);
enum kb_err store_env_list(struct store *s, const char *tenant,
    const char *after, unsigned limit, struct store_env **out, size_t *n,
    int *more);
/* The environment and its current wrapped DEK, in one read. */
enum kb_err store_env_dek(struct store *s, const char *tenant,
    const char *name, struct store_env *env, struct store_dek *dek);

/* Keys. create: KB_ERR_ALREADY_EXISTS if the id is taken. */
enum kb_err store_key_create(struct store *s, const struct store_key *k);
enum kb_err store_key_get(struct store *s, const char *id,
    struct store_key *out);
/* The broker key of `purpose` in state "active" (platform, kek, audit). */
enum kb_err store_key_broker(struct store *s, const char *purpose,
    struct store_key *out);

const char *store_env_mode_name(enum store_env_mode m);
const char *store_env_state_name(enum store_env_state st);

#endif /* KB_STORE_H */
