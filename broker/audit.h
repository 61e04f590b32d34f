/* SPDX-License-Identifier: Apache-2.0 */
/* audit.h: the tamper-evident event log. Events are hash-chained
 * (common/kb_audit.h), committed in groups by one writer thread, and
 * covered by checkpoints signed with a key that never leaves the token.
 * Nothing here edits or deletes an event. Several brokers may share one
 * log (PostgreSQL): their events form one chain, ordered by the database
 * (audit.c says how). */
#ifndef KB_AUDIT_LOG_H
#define KB_AUDIT_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "kb_audit.h"
#include "kb_err.h"

struct audit;
struct hsm;

/* What a caller records; strings are borrowed for the duration of
 * audit_append (NULL = empty). Never put a secret in any field. */
struct audit_record {
	const char *actor, *role, *peer, *method, *tenant, *env, *key_id;
	const char *result, *reason, *request_id;
};

/* An event as read back. */
struct audit_event {
	uint64_t seq;
	int64_t time_us;
	char actor[128], role[16], peer[64], method[64], tenant[64], env[64];
	char key_id[72], result[16], reason[512], request_id[40];
	uint8_t hash[KB_AUDIT_HASH_LEN];
};

struct audit_checkpoint {
	uint64_t seq;
	uint8_t head_hash[KB_AUDIT_HASH_LEN];
	int64_t time_us;
	uint8_t prev_sig[512];
	size_t prev_sig_len;
	uint8_t sig[512];
	size_t sig_len;
	char key_id[72];
};

struct audit_filter {
	int64_t since_us, until_us; /* 0 = open */
	const char *tenant, *env, *method, *actor, *result; /* NULL/"" = any */
	const char *request_id; /* NULL/"" = any */
	const char *const *tenants; /* if set: tenant must be one of these */
	size_t ntenants;
};

struct audit_config {
	/* The audit database: a SQLite file path, or a postgresql:// libpq
	 * connection string (the broker's own database when it is
	 * PostgreSQL: the log's tables sit beside the store's). */
	const char *path;
	/* PostgreSQL only: a file holding the password (mode 0600), or NULL
	 * for libpq's own ways (PGPASSFILE, ~/.pgpass). */
	const char *password_file;
	struct hsm *hsm;
	/* The audit signing key the database says is in force. When the
	 * log's newest checkpoint was signed by another key, the log takes
	 * over from it to this one the way audit_rotate_key does. */
	const char *sign_key_id;
	unsigned checkpoint_events; /* checkpoint after this many events */
	unsigned checkpoint_interval_s; /* ... or this many seconds */
	int64_t (*now_us)(void); /* the broker's clock */
	/* The anchor: after each checkpoint, its seq, head hash and a hash of
	 * its signature go into this private data object in the token, which
	 * no database edit can forge. At open the log is verified from it to
	 * the end; a log that lost events or was rewritten is refused
	 * (KB_ERR_CORRUPT, the first bad seq named) unless `accept_loss`,
	 * which records the loss as an event and moves the anchor. NULL: no
	 * anchor (tests of the log alone). */
	const char *anchor_label;
	int accept_loss;
	/* This broker's instance (8 hex digits, see struct broker): its own
	 * events (audit.recovered) carry request id "sys-" instance "-" time,
	 * so a verifier knows whose calls an outage cut short. NULL: "sys-"
	 * and a time. */
	const char *instance;
	/* The fingerprint of a key in the token (for rotation events). */
	enum kb_err (*key_fingerprint)(
	    struct hsm *h, const char *id, char fp[65]);
};

#define AUDIT_ANCHOR_LABEL "kb:audit-anchor"

/* Open (creating, and migrating to this build's schema) the audit
 * database and start the writer. KB_ERR_UNAVAILABLE when a PostgreSQL
 * server cannot be reached, KB_ERR_CORRUPT for a log the anchor refuses. */
enum kb_err audit_open(const struct audit_config *cfg, struct audit **out);

/* Append one event and wait until it is committed (durably). *seq gets its
 * sequence number (may be NULL). On failure nothing was recorded and the
 * caller must not act as if it had been (a data key is not sent). */
enum kb_err audit_append(
    struct audit *a, const struct audit_record *r, uint64_t *seq);

/* The highest committed sequence number this broker knows of (with
 * other brokers on the log, theirs show in audit_list at once and here
 * after this broker's next write). */
uint64_t audit_last_seq(struct audit *a);

/* Wait until an event after `after_seq` is committed, or `timeout_ms`
 * passes, or the log closes. Returns the highest committed seq. */
uint64_t audit_wait(struct audit *a, uint64_t after_seq, int timeout_ms);

/* KB_OK while the log can record; KB_ERR_UNAVAILABLE with the reason after
 * a failed write, until a write succeeds again. */
enum kb_err audit_check(struct audit *a);

struct kb_hist;
/* How long each group commit (one transaction and its fsync) took; valid
 * while `a` is open. */
const struct kb_hist *audit_commit_hist(const struct audit *a);

/* The database engine and its version ("SQLite 3.40.1", "PostgreSQL
 * 15.18"); valid while `a` is open. */
const char *audit_engine_version(const struct audit *a);

/* Whether audit_close has begun (streams should end). */
int audit_closing(struct audit *a);

/* Events matching `f` with seq > after, in order; *out malloc'd. */
enum kb_err audit_list(struct audit *a, const struct audit_filter *f,
    uint64_t after, unsigned limit, struct audit_event **out, size_t *n,
    int *more);

enum kb_err audit_list_checkpoints(struct audit *a, uint64_t after,
    unsigned limit, struct audit_checkpoint **out, size_t *n, int *more);

/* Hand signing over to `new_id` (a new key in the token): record the
 * rotation (kb_audit.h's format), let the current key sign a checkpoint
 * covering it, then sign with the new key and destroy the old one's
 * private half. Returns when the new key is in force. */
enum kb_err audit_rotate_key(struct audit *a, const char *new_id);

/* Sign a checkpoint of what is committed now (within a second), rather
 * than after the next checkpoint_events or checkpoint_interval_s. */
void audit_checkpoint_soon(struct audit *a);

/* The id of the key that signs now. */
void audit_signing_key(struct audit *a, char out[KB_AUDIT_KEY_ID_MAX]);

/* The head of a copy of the log: its last event and hash, and its last
 * checkpoint (0 when none). */
struct audit_head {
	uint64_t seq;
	uint8_t hash[KB_AUDIT_HASH_LEN];
	uint64_t checkpoint_seq;
};

/* Copy the log as it is now into the new file `dest` (SQLite's online
 * backup, while appends go on) and fill *head from the copy.
 * KB_ERR_FAILED_PRECONDITION for a log in PostgreSQL (pg_dump backs it
 * up with the broker's database). */
enum kb_err audit_snapshot(
    struct audit *a, const char *dest, struct audit_head *head);

/* The sequence number the token's anchor (`label`) vouches for: the log
 * the broker starts on must reach it. KB_ERR_NOT_FOUND when no anchor. */
enum kb_err audit_anchor_seq(struct hsm *h, const char *label, uint64_t *seq);

/* Drain, write a final checkpoint, stop the writer, close. Accepts NULL. */
void audit_close(struct audit *a);

#endif /* KB_AUDIT_LOG_H */
