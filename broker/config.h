/* SPDX-License-Identifier: Apache-2.0 */
/* config.h: keybrokerd's configuration file ("key = value" lines). */
#ifndef KB_CONFIG_H
#define KB_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "kb_err.h"

struct config {
	char *listen;
	char *tls_cert;
	char *tls_key;
	char *client_ca;
	char *client_crl; /* optional: PEM CRLs of the client CA */
	int client_crl_strict; /* refuse every call while the CRL is stale */
	char *pkcs11_module;
	char *token_uri;
	char *pin_file;
	char *softhsm2_conf; /* optional; sets SOFTHSM2_CONF */
	/* The store: a SQLite file path (resolved against the file's
	 * directory), or a libpq connection URI starting postgresql:// or
	 * postgres://, which may not hold a password (refused at load). */
	char *database;
	/* PostgreSQL only: a file (mode 0600, checked like pin_file) holding
	 * the database password; used for audit_database too when that is a
	 * PostgreSQL string. NULL: none, or libpq's own (~/.pgpass). */
	char *database_password_file;
	/* The store's connection pool: 0 (the default) is workers + 2. Each
	 * broker also holds a few for the audit log and one per lock it holds
	 * at once (README "Connections"). */
	unsigned database_connections;
	unsigned workers;
	unsigned hsm_sessions;
	size_t max_message_bytes;
	int log_level; /* LOG_ERROR .. LOG_DEBUG (log.h) */
	unsigned sweep_interval_s; /* how often the 28-day sweeper runs */
	unsigned
	    clock_jump_limit_s; /* a larger forward jump pauses the sweeper */
	unsigned approval_ttl_s; /* a quorum request expires after it */
	unsigned deletion_window_days; /* a deletion becomes final after it */
	unsigned rewrap_threads; /* parallel token work in activation jobs */
	unsigned platform_key_rotation_days; /* 0 = never by schedule */
	unsigned max_keys_per_tenant; /* tenant keys a tenant may hold */
	unsigned max_dek_versions; /* DEK versions an environment may hold */
	/* Token buckets (ratelimit.h): calls/s and burst; rate 0 = unlimited,
	 * burst 0 = one second's worth of the rate. */
	unsigned rate_per_identity, rate_per_identity_burst;
	unsigned rate_per_tenant, rate_per_tenant_burst;
	unsigned max_streams_per_identity; /* open streams; 0 = unlimited */
	char *test_clock_file; /* test builds only (clock.h) */
	/* The audit log's database: a SQLite path or a postgresql:// string
	 * (no password in it either). Default: for a SQLite database,
	 * keybroker-audit.db beside it; for a PostgreSQL one, the same
	 * database (its own tables in it). */
	char *audit_database;
	unsigned audit_checkpoint_events;
	unsigned audit_checkpoint_interval_s;
	unsigned health_timeout_ms; /* longest a health check waits */
	/* Metrics (metrics.h): HOST:PORT of the HTTP listener, "" = off;
	 * a non-loopback address only with metrics_allow_remote. */
	char *metrics_listen;
	int metrics_allow_remote;
	int log_format; /* LOG_FORMAT_TEXT or LOG_FORMAT_JSON (log.h) */
	/* The doctor: free disk below these (MiB) warns, fails. */
	unsigned doctor_disk_warn_mb, doctor_disk_fail_mb;
	int allow_new_database; /* --allow-new-database (not a file key) */
	int accept_audit_loss; /* --accept-audit-loss (not a file key) */
};

/* Parse configuration text. Relative paths are resolved against `dir`.
 * Errors name the line ("line 12: unknown key \"foo\""). Free with
 * config_free(). */
enum kb_err config_parse(
    const char *text, size_t len, const char *dir, struct config **out);

/* Read and parse the file at `path`; errors are prefixed with the path. */
enum kb_err config_load(const char *path, struct config **out);

void config_free(struct config *c);

/* Whether `target` (database, audit_database) is a PostgreSQL connection
 * string (postgresql:// or postgres://) rather than a SQLite file. */
int config_is_postgres(const char *target);

#endif /* KB_CONFIG_H */
