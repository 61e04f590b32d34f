/* SPDX-License-Identifier: Apache-2.0 */
/* audit.c: group-committed, hash-chained, checkpoint-signed event log, on
 * the database layer (db/db.h): a SQLite file of its own, or tables in the
 * broker's PostgreSQL database.
 *
 * One chain, the database its serialization point. Several brokers may
 * append to one PostgreSQL log. None owns the head: each keeps a copy, and
 * every write transaction (a batch of events, a checkpoint, the anchor's
 * move) first takes the chain's lock, then reads the head from the
 * database (the newest event's seq and hash, the newest checkpoint, the
 * signing key the log has in force), builds on it and commits; the copy in
 * memory changes only after the commit. So the events of every broker form
 * one sequence, with no gap and no fork; whether a checkpoint is due, what
 * it chains to and which key signs it are decided from the database inside
 * that transaction (two brokers never sign two checkpoints for one seq);
 * and verify, which walks the one chain and its checkpoints, proves none
 * was lost or reordered. A chain per broker would avoid the lock but need
 * an anchor and a verify per broker and could not order events across
 * them; the lock costs one serialized transaction per group commit, not
 * per event.
 *
 * The lock. SQLite: BEGIN IMMEDIATE (the file's write lock). PostgreSQL:
 * LOCK TABLE events IN EXCLUSIVE MODE, the first statement of a READ
 * COMMITTED transaction (db_txn_locked); it stops other writers of the
 * log, not its readers, and every statement after it takes a fresh
 * snapshot, so the head read after it is the newest committed one, and no
 * other writer can move it before this one commits. (SERIALIZABLE's
 * predicate locks would add nothing to the lock but cost.)
 * pg_advisory_xact_lock would not do: a SELECT takes the snapshot as it
 * starts, before it waits for the lock. A transaction that still fails
 * with a conflict (db_failed_retry: a deadlock) is run again from the
 * lock on.
 *
 * Durability: an appender returns only after its event's commit (SQLite
 * synchronous=FULL; PostgreSQL synchronous_commit on, its default). */
#include "audit.h"

#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "db.h"
#include "hsm.h"
#include "kb_hist.h"
#include "log.h"
#include "store.h"

#define BATCH_MAX 1024
/* Events read per query when the log is walked from the anchor. */
#define PAGE 4096
#define SIG_MAX 512

/* The anchor's value: "kban1" || seq (8 bytes BE) || head hash ||
 * SHA-256 of the checkpoint's signature. */
#define ANCHOR_MAGIC "kban1"
#define ANCHOR_LEN (5 + 8 + 2 * KB_AUDIT_HASH_LEN)

/* Version 1: the tables exactly as every release before the database
 * layer created them, IF NOT EXISTS included, so that a log of theirs
 * (PRAGMA user_version 0) becomes version 1 with nothing changed. */
static const char schema_v1[] =
    "CREATE TABLE IF NOT EXISTS events ("
    "  seq INTEGER PRIMARY KEY,"
    "  time_us INTEGER NOT NULL,"
    "  actor TEXT NOT NULL, role TEXT NOT NULL, peer TEXT NOT NULL,"
    "  method TEXT NOT NULL, tenant_id TEXT NOT NULL,"
    "  environment TEXT NOT NULL, key_id TEXT NOT NULL,"
    "  result TEXT NOT NULL, reason TEXT NOT NULL,"
    "  request_id TEXT NOT NULL, hash BLOB NOT NULL);"
    "CREATE INDEX IF NOT EXISTS events_tenant ON events(tenant_id, seq);"
    "CREATE INDEX IF NOT EXISTS events_time ON events(time_us);"
    "CREATE TABLE IF NOT EXISTS checkpoints ("
    "  seq INTEGER PRIMARY KEY,"
    "  head_hash BLOB NOT NULL, time_us INTEGER NOT NULL,"
    "  prev_signature BLOB NOT NULL, signature BLOB NOT NULL,"
    "  key_id TEXT NOT NULL);";

/* The same schema in PostgreSQL's dialect, where a log is always new
 * (no release before kept one there): plain CREATE, so tables of the same
 * name from something else are found, not adopted. */
static const char schema_v1_pg[] =
    "CREATE TABLE events ("
    "  seq BIGINT PRIMARY KEY,"
    "  time_us BIGINT NOT NULL,"
    "  actor TEXT NOT NULL, role TEXT NOT NULL, peer TEXT NOT NULL,"
    "  method TEXT NOT NULL, tenant_id TEXT NOT NULL,"
    "  environment TEXT NOT NULL, key_id TEXT NOT NULL,"
    "  result TEXT NOT NULL, reason TEXT NOT NULL,"
    "  request_id TEXT NOT NULL, hash BYTEA NOT NULL);"
    "CREATE INDEX events_tenant ON events(tenant_id, seq);"
    "CREATE INDEX events_time ON events(time_us);"
    "CREATE TABLE checkpoints ("
    "  seq BIGINT PRIMARY KEY,"
    "  head_hash BYTEA NOT NULL, time_us BIGINT NOT NULL,"
    "  prev_signature BYTEA NOT NULL, signature BYTEA NOT NULL,"
    "  key_id TEXT NOT NULL);";

/* PostgreSQL starts at version 1 (pg_base), so migration 1 has nothing
 * to do there. */
static const struct db_migration migrations[] = {
    {schema_v1, ""},
};

static const struct db_schema audit_schema = {"audit", migrations,
    sizeof(migrations) / sizeof(migrations[0]), schema_v1_pg, 1};

#define ROTATION_WHERE                                                         \
	"method = '" KB_AUDIT_ROTATE_METHOD "' AND role = 'system'"

struct pending {
	const struct audit_record *r;
	/* A rotation to this key: written alone, its reason made in the
	 * transaction from the key the log has in force. */
	const char *rotate_to;
	char rot_reason[512];
	int skipped; /* the log had the rotation already (seq: its event) */
	int64_t time_us;
	uint64_t seq;
	enum kb_err err;
	char msg[256];
	int done;
	pthread_cond_t cv; /* its appender waits on it alone */
	struct pending *next;
};

/* The head of the log as the database has it. */
struct head {
	uint64_t ev_seq; /* the newest event (0: none) */
	uint8_t ev_hash[KB_AUDIT_HASH_LEN];
	int64_t ev_time_us;
	uint64_t cp_seq; /* the newest checkpoint (0: none) */
	int64_t cp_time_us;
	uint8_t cp_head[KB_AUDIT_HASH_LEN];
	uint8_t cp_sig[SIG_MAX];
	size_t cp_sig_len;
	char cp_key[KB_AUDIT_KEY_ID_MAX];
};

/* Which key signs, as the log says: the newest checkpoint's key, or,
 * while a rotation is not covered yet, the key it replaces, and after a
 * checkpoint covers it, the key it names. */
struct keystate {
	char sign[KB_AUDIT_KEY_ID_MAX];
	char next[KB_AUDIT_KEY_ID_MAX]; /* a rotation waiting for its cover */
	uint64_t next_after; /* ... recorded as this event */
	/* The newest checkpoint covered a rotation away from this key: its
	 * private half is to be destroyed. */
	char handed_from[KB_AUDIT_KEY_ID_MAX];
};

struct audit {
	struct audit_config cfg;
	struct kb_hist commit_hist; /* write_batch: one commit, one fsync */
	struct db *db;
	pthread_mutex_t mu;
	pthread_cond_t work_cv, done_cv;
	struct pending *head, *tail;
	int stopping, started;
	pthread_t writer;
	/* This broker's copy of the head, as its last transaction found it
	 * (under mu); the database's is the one that counts. */
	uint64_t last_seq;
	uint64_t cp_seq; /* the newest checkpoint's seq */
	int64_t cp_time_us;
	int64_t open_us; /* no checkpoint yet: the interval counts from here */
	/* An accepted loss: no event is numbered at or below this (set at
	 * open, before the writer starts). */
	uint64_t seq_floor;
	/* Checkpoints asked for (audit_checkpoint_soon, a rotation, a loss)
	 * and the request the last checkpoint transaction answered. */
	unsigned force_req, force_done;
	/* The last write failed; cleared by the next that succeeds. While
	 * set, the writer probes every second with an audit.recovered event. */
	int degraded;
	char degraded_msg[256];
	/* Set by an accepted loss: its description, recorded as the first
	 * event, and a checkpoint (moving the anchor) right after it. */
	char loss[640];
	/* Signing keys (under mu), as the last transaction found them: the
	 * one in force, and a rotation in progress: after a checkpoint
	 * covering event `next_after`, `next_key` signs. */
	char sign_key[KB_AUDIT_KEY_ID_MAX];
	char next_key[KB_AUDIT_KEY_ID_MAX];
	uint64_t next_after;
	char retired[KB_AUDIT_KEY_ID_MAX]; /* the key this broker retired */
	/* The store names a key the log has not rotated to (a crash in
	 * between): the rotation is recorded at open. */
	int rot_pending;
};

static void
text(char *dst, size_t len, struct db_stmt *st, int col)
{
	const char *t = db_column_text(st, col);

	snprintf(dst, len, "%s", t != NULL ? t : "");
}

static size_t
blob(uint8_t *dst, size_t cap, struct db_stmt *st, int col)
{
	size_t n = db_column_bytes(st, col);
	const void *p = db_column_blob(st, col);

	if (n == 0 || n > cap || p == NULL)
		return 0;
	memcpy(dst, p, n);
	return n;
}

static const char *
col(struct db_stmt *st, int i)
{
	const char *t = db_column_text(st, i);

	return t != NULL ? t : "";
}

/* Inside a write transaction, before anything is read: the chain's lock
 * (see the top of the file). SQLite's BEGIN IMMEDIATE holds it already. */
static enum kb_err
chain_lock(struct db_conn *c)
{
	if (db_conn_engine(c) != DB_POSTGRES)
		return KB_OK;
	return db_exec(c, "LOCK TABLE events IN EXCLUSIVE MODE",
	    "audit log: locking its head");
}

/* Read the head: the newest event and the newest checkpoint. */
static enum kb_err
head_read(struct db_conn *c, struct head *h)
{
	struct db_stmt *st = NULL;
	enum db_step r;
	enum kb_err e = KB_OK;

	memset(h, 0, sizeof(*h));
	if ((e = db_prepare(c,
	         "SELECT seq, hash, time_us FROM events ORDER BY seq DESC "
	         "LIMIT 1",
	         &st))
	    != KB_OK)
		return e;
	if ((r = db_step(st)) == DB_FAIL)
		return db_err(c, "audit log: reading its head");
	if (r == DB_ROW) {
		h->ev_seq = (uint64_t)db_column_int64(st, 0);
		h->ev_time_us = db_column_int64(st, 2);
		if (blob(h->ev_hash, sizeof(h->ev_hash), st, 1)
		    != KB_AUDIT_HASH_LEN)
			e = kb_errf(KB_ERR_CORRUPT,
			    "audit log: event %llu has a "
			    "malformed hash",
			    (unsigned long long)h->ev_seq);
	}
	db_reset(st);
	if (e != KB_OK)
		return e;
	if ((e = db_prepare(c,
	         "SELECT seq, time_us, signature, head_hash, key_id FROM "
	         "checkpoints ORDER BY seq DESC LIMIT 1",
	         &st))
	    != KB_OK)
		return e;
	if ((r = db_step(st)) == DB_FAIL)
		return db_err(c, "audit log: reading its last checkpoint");
	if (r == DB_ROW) {
		h->cp_seq = (uint64_t)db_column_int64(st, 0);
		h->cp_time_us = db_column_int64(st, 1);
		h->cp_sig_len = blob(h->cp_sig, sizeof(h->cp_sig), st, 2);
		(void)blob(h->cp_head, sizeof(h->cp_head), st, 3);
		text(h->cp_key, sizeof(h->cp_key), st, 4);
	}
	db_reset(st);
	return KB_OK;
}

/* The highest number taken: the next event is this + 1. Numbers a signed
 * checkpoint covers are never reused, even when their events are gone,
 * nor those an accepted loss gave up: the gap stays visible to every
 * verifier. */
static uint64_t
head_top(const struct audit *a, const struct head *h)
{
	uint64_t s = h->ev_seq;

	if (h->cp_seq > s)
		s = h->cp_seq;
	if (a->seq_floor > s)
		s = a->seq_floor;
	return s;
}

/* The newest rotation event in (after, upto]; *found 0 when none. */
static enum kb_err
rotation_find(struct db_conn *c, uint64_t after, uint64_t upto, uint64_t *seq,
    char nid[KB_AUDIT_KEY_ID_MAX], char oid[KB_AUDIT_KEY_ID_MAX], int *found)
{
	struct db_stmt *st = NULL;
	char nfp[65], ofp[65];
	enum db_step r;
	enum kb_err e;

	*found = 0;
	if ((e = db_prepare(c,
	         "SELECT seq, reason FROM events WHERE seq > ? AND seq <= ? "
	         "AND " ROTATION_WHERE " ORDER BY seq DESC LIMIT 1",
	         &st))
	    != KB_OK)
		return e;
	db_bind_int64(st, 1, (int64_t)after);
	db_bind_int64(st, 2, upto > INT64_MAX ? INT64_MAX : (int64_t)upto);
	if ((r = db_step(st)) == DB_FAIL)
		return db_err(c, "audit log: reading its key rotations");
	if (r == DB_ROW
	    && kb_audit_rotation_parse(col(st, 1), nid, nfp, oid, ofp) == 0) {
		*seq = (uint64_t)db_column_int64(st, 0);
		*found = 1;
	}
	db_reset(st);
	return KB_OK;
}

/* Which key signs now, from the log `h` heads (see struct keystate). Only
 * the events since the checkpoint before the newest are read. */
static enum kb_err
key_state(struct audit *a, struct db_conn *c, const struct head *h,
    struct keystate *ks)
{
	char nid[KB_AUDIT_KEY_ID_MAX], oid[KB_AUDIT_KEY_ID_MAX];
	struct db_stmt *st = NULL;
	uint64_t rseq = 0, prev = 0;
	enum db_step r;
	enum kb_err e;
	int found;

	memset(ks, 0, sizeof(*ks));
	/* A rotation no checkpoint covers yet: the key it replaces signs the
	 * checkpoint that covers it. */
	if ((e = rotation_find(
	         c, h->cp_seq, UINT64_MAX, &rseq, nid, oid, &found))
	    != KB_OK)
		return e;
	if (found) {
		snprintf(ks->sign, sizeof(ks->sign), "%s", oid);
		snprintf(ks->next, sizeof(ks->next), "%s", nid);
		ks->next_after = rseq;
		return KB_OK;
	}
	if (h->cp_seq > 0) {
		/* The newest checkpoint covered a rotation away from the key
		 * that signed it: the new key signs from now on. */
		if ((e = db_prepare(c,
		         "SELECT COALESCE(max(seq), 0) FROM checkpoints WHERE "
		         "seq < ?",
		         &st))
		    != KB_OK)
			return e;
		db_bind_int64(st, 1, (int64_t)h->cp_seq);
		if ((r = db_step(st)) == DB_FAIL)
			return db_err(c, "audit log: reading its checkpoints");
		if (r == DB_ROW)
			prev = (uint64_t)db_column_int64(st, 0);
		db_reset(st);
		if ((e = rotation_find(
		         c, prev, h->cp_seq, &rseq, nid, oid, &found))
		    != KB_OK)
			return e;
		if (found && strcmp(oid, h->cp_key) == 0) {
			snprintf(ks->sign, sizeof(ks->sign), "%s", nid);
			snprintf(ks->handed_from, sizeof(ks->handed_from), "%s",
			    oid);
			return KB_OK;
		}
	}
	snprintf(ks->sign, sizeof(ks->sign), "%s",
	    h->cp_key[0] != '\0' ? h->cp_key : a->cfg.sign_key_id);
	return KB_OK;
}

/* Take the key state a transaction found as this broker's: the rotation
 * waiting, and the key in force; a key handed over from has its private
 * half destroyed (by whichever broker sees it first; again is harmless). */
static void
keys_apply(struct audit *a, const struct keystate *ks)
{
	char old[KB_AUDIT_KEY_ID_MAX], retire[KB_AUDIT_KEY_ID_MAX];
	int changed;
	enum kb_err e;

	retire[0] = '\0';
	pthread_mutex_lock(&a->mu);
	snprintf(old, sizeof(old), "%s", a->sign_key);
	changed = old[0] != '\0' && strcmp(old, ks->sign) != 0;
	snprintf(a->sign_key, sizeof(a->sign_key), "%s", ks->sign);
	snprintf(a->next_key, sizeof(a->next_key), "%s", ks->next);
	a->next_after = ks->next_after;
	if (ks->handed_from[0] != '\0'
	    && strcmp(ks->handed_from, a->retired) != 0) {
		snprintf(retire, sizeof(retire), "%s", ks->handed_from);
		snprintf(a->retired, sizeof(a->retired), "%s", retire);
	}
	pthread_cond_broadcast(&a->done_cv);
	pthread_mutex_unlock(&a->mu);
	if (changed)
		log_info("audit log: signing key %s in force; %s retired",
		    ks->sign, old);
	if (retire[0] == '\0')
		return;
	if ((e = hsm_key_retire(a->cfg.hsm, retire)) == KB_OK) {
		if (!changed)
			log_info("audit log: signing key %s in force; the "
			         "retired key %s destroyed",
			    ks->sign, retire);
	} else if (e != KB_ERR_NOT_FOUND)
		log_error("audit log: destroying the retired key %s's private "
		          "half: %s",
		    retire, kb_err_msg(e));
	kb_err_clear();
}

static enum kb_err
rotation_reason(struct audit *a, const char *new_id, const char *old_id,
    char *out, size_t len)
{
	char nfp[65], ofp[65];
	enum kb_err e;

	if ((e = a->cfg.key_fingerprint(a->cfg.hsm, new_id, nfp)) != KB_OK
	    || (e = a->cfg.key_fingerprint(a->cfg.hsm, old_id, ofp)) != KB_OK)
		return kb_err_wrap(e, "the audit keys' fingerprints");
	if (kb_audit_rotation_format(out, len, new_id, nfp, old_id, ofp) != 0)
		return kb_errf(KB_ERR_INTERNAL, "audit key ids too long");
	return KB_OK;
}

static enum kb_err rotation_record(struct audit *a, const char *new_id);
static enum kb_err anchor_advance(struct audit *a);

/* ---- the anchor in the token ---- */

static enum kb_err
anchor_store(struct audit *a, uint64_t seq, const uint8_t *head,
    const uint8_t *sig, size_t sig_len)
{
	uint8_t v[ANCHOR_LEN];
	int i;

	memcpy(v, ANCHOR_MAGIC, 5);
	for (i = 0; i < 8; i++)
		v[5 + i] = (uint8_t)(seq >> (56 - 8 * i));
	memcpy(v + 13, head, KB_AUDIT_HASH_LEN);
	SHA256(sig, sig_len, v + 13 + KB_AUDIT_HASH_LEN);
	return hsm_data_write(a->cfg.hsm, a->cfg.anchor_label, v, sizeof(v));
}

struct anchor {
	uint64_t seq;
	uint8_t head[KB_AUDIT_HASH_LEN];
	uint8_t sig_hash[KB_AUDIT_HASH_LEN];
};

/* KB_ERR_NOT_FOUND when the token holds no anchor yet. */
static enum kb_err
anchor_load(struct audit *a, struct anchor *an)
{
	uint8_t *v = NULL;
	size_t len = 0;
	enum kb_err e;
	int i;

	if ((e = hsm_data_read(a->cfg.hsm, a->cfg.anchor_label, &v, &len))
	    != KB_OK)
		return e;
	if (len != ANCHOR_LEN || memcmp(v, ANCHOR_MAGIC, 5) != 0) {
		free(v);
		return kb_errf(KB_ERR_CORRUPT,
		    "the audit anchor in the token "
		    "(%s) is not in the broker's format",
		    a->cfg.anchor_label);
	}
	an->seq = 0;
	for (i = 0; i < 8; i++)
		an->seq = an->seq << 8 | v[5 + i];
	memcpy(an->head, v + 13, KB_AUDIT_HASH_LEN);
	memcpy(an->sig_hash, v + 13 + KB_AUDIT_HASH_LEN, KB_AUDIT_HASH_LEN);
	free(v);
	return KB_OK;
}

/* Under the chain's lock, the anchor takes the newest checkpoint (durable:
 * committed before). Every broker moves it this way, so it only moves
 * forward, whichever broker signed which checkpoint. When it cannot move
 * it stays at an earlier checkpoint. */
static enum kb_err
anchor_txn(struct db_conn *c, void *arg)
{
	struct audit *a = arg;
	struct head h;
	enum kb_err e;

	if ((e = chain_lock(c)) != KB_OK || (e = head_read(c, &h)) != KB_OK)
		return e;
	if (h.cp_seq == 0)
		return KB_OK;
	if ((e = anchor_store(a, h.cp_seq, h.cp_head, h.cp_sig, h.cp_sig_len))
	    != KB_OK) {
		log_error("audit anchor: %s; it stays at an earlier checkpoint",
		    kb_err_msg(e));
		kb_err_clear();
	}
	return KB_OK;
}

static enum kb_err
anchor_advance(struct audit *a)
{
	if (a->cfg.anchor_label == NULL)
		return KB_OK;
	return db_txn_locked(
	    a->db, anchor_txn, a, "audit log: moving its anchor");
}

/* What an anchor check found wrong: the first bad seq and why. */
struct anchor_fault {
	uint64_t seq;
	char why[512];
};

static int fault(struct anchor_fault *f, uint64_t seq, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int
fault(struct anchor_fault *f, uint64_t seq, const char *fmt, ...)
{
	va_list ap;

	f->seq = seq;
	va_start(ap, fmt);
	vsnprintf(f->why, sizeof(f->why), fmt, ap);
	va_end(ap);
	return -1;
}

/* The signed checkpoint the anchor names must be in the database as it
 * was signed. *bad (with *f filled) when it is not. */
static enum kb_err
anchor_check_checkpoint(struct db_conn *c, const struct anchor *an,
    struct anchor_fault *f, int *bad)
{
	struct db_stmt *st = NULL;
	uint8_t head[KB_AUDIT_HASH_LEN], sig[SIG_MAX], sh[KB_AUDIT_HASH_LEN];
	size_t sig_len;
	enum db_step r;
	enum kb_err e;

	*bad = 0;
	if ((e = db_prepare(c,
	         "SELECT head_hash, signature FROM checkpoints WHERE seq = ?",
	         &st))
	    != KB_OK)
		return e;
	db_bind_int64(st, 1, (int64_t)an->seq);
	if ((r = db_step(st)) == DB_ROW) {
		if (blob(head, sizeof(head), st, 0) != KB_AUDIT_HASH_LEN
		    || CRYPTO_memcmp(head, an->head, sizeof(head)) != 0)
			*bad = fault(f, an->seq,
			    "the signed checkpoint at %llu "
			    "was altered (its head hash is not the one the "
			    "token's anchor holds)",
			    (unsigned long long)an->seq);
		sig_len = blob(sig, sizeof(sig), st, 1);
		SHA256(sig, sig_len, sh);
		if (!*bad && CRYPTO_memcmp(sh, an->sig_hash, sizeof(sh)) != 0)
			*bad = fault(f, an->seq,
			    "the signed checkpoint at %llu "
			    "was replaced (its signature is not the one the "
			    "token's anchor holds)",
			    (unsigned long long)an->seq);
	} else if (r == DB_DONE) {
		*bad = fault(f, an->seq,
		    "the signed checkpoint at %llu is "
		    "missing (checkpoints were deleted)",
		    (unsigned long long)an->seq);
	} else {
		return db_err(c, "audit log: reading its checkpoints");
	}
	db_reset(st);
	return KB_OK;
}

/* The checkpoints from `from` on, in order (few: the anchor follows the
 * newest); *out malloc'd. */
struct cp_row {
	uint64_t seq;
	uint8_t head[KB_AUDIT_HASH_LEN];
	size_t head_len;
	uint8_t psig[SIG_MAX], sig[SIG_MAX];
	size_t psig_len, sig_len;
};

static enum kb_err
cps_load(struct db_conn *c, uint64_t from, struct cp_row **out, size_t *n)
{
	struct db_stmt *st = NULL;
	struct cp_row *v = NULL, *t;
	size_t cap = 0, cnt = 0;
	enum db_step r;
	enum kb_err e;

	*out = NULL;
	*n = 0;
	if ((e = db_prepare(c,
	         "SELECT seq, head_hash, prev_signature, signature FROM "
	         "checkpoints WHERE seq >= ? ORDER BY seq",
	         &st))
	    != KB_OK)
		return e;
	db_bind_int64(st, 1, (int64_t)from);
	while ((r = db_step(st)) == DB_ROW) {
		if (cnt == cap) {
			cap = cap ? 2 * cap : 16;
			if ((t = realloc(v, cap * sizeof(*v))) == NULL) {
				db_reset(st);
				free(v);
				return kb_errf(KB_ERR_NOMEM, "out of memory");
			}
			v = t;
		}
		t = &v[cnt++];
		t->seq = (uint64_t)db_column_int64(st, 0);
		t->head_len = blob(t->head, sizeof(t->head), st, 1);
		t->psig_len = blob(t->psig, sizeof(t->psig), st, 2);
		t->sig_len = blob(t->sig, sizeof(t->sig), st, 3);
	}
	if (r == DB_FAIL) {
		free(v);
		return db_err(c, "audit log: reading its checkpoints");
	}
	*out = v;
	*n = cnt;
	return KB_OK;
}

/* The events from `from` on, PAGE at a time (a walk of a long log does
 * not hold it all in memory). Row pointers live until the next step. */
struct pager {
	struct db_conn *c;
	struct db_stmt *st;
	uint64_t from;
	unsigned got;
	int open;
	enum kb_err e;
};

static const char page_sql[] =
    "SELECT seq, time_us, actor, role, peer, method, tenant_id, "
    "environment, key_id, result, reason, request_id, hash FROM events "
    "WHERE seq >= ? ORDER BY seq LIMIT ?";

/* 1: a row; 0: the end; -1: failed (p->e). */
static int
pager_step(struct pager *p)
{
	enum db_step r;

	for (;;) {
		if (!p->open) {
			if ((p->e = db_prepare(p->c, page_sql, &p->st))
			    != KB_OK)
				return -1;
			db_bind_int64(p->st, 1, (int64_t)p->from);
			db_bind_int64(p->st, 2, PAGE);
			p->got = 0;
			p->open = 1;
		}
		if ((r = db_step(p->st)) == DB_ROW) {
			p->got++;
			p->from = (uint64_t)db_column_int64(p->st, 0) + 1;
			return 1;
		}
		if (r == DB_FAIL) {
			p->e = db_err(p->c, "audit log: reading its events");
			return -1;
		}
		db_reset(p->st);
		p->open = 0;
		if (p->got < PAGE)
			return 0;
	}
}

/* Walk the events from the anchor's to the end, recomputing the chain,
 * and the checkpoints after the anchor's alongside. *bad when the log
 * lost events or was rewritten, *f says where. */
static enum kb_err
anchor_check_events(struct db_conn *c, const struct anchor *an,
    struct anchor_fault *f, int *bad)
{
	struct pager pg;
	struct cp_row *cps = NULL;
	uint8_t hash[KB_AUDIT_HASH_LEN], stored[KB_AUDIT_HASH_LEN];
	const uint8_t *prev_sig = NULL;
	size_t ncps = 0, ci = 0, prev_len = 0;
	uint64_t want = an->seq, seq;
	int r, link_known = 1;
	enum kb_err e;

	*bad = 0;
	if ((e = cps_load(c, an->seq, &cps, &ncps)) != KB_OK)
		return e;
	memset(&pg, 0, sizeof(pg));
	pg.c = c;
	pg.from = an->seq;
	/* The anchor's own checkpoint (checked after this walk) starts the
	 * chain of signatures; when it is gone, the next one's link is not
	 * compared. */
	if (ncps > 0 && cps[0].seq == an->seq) {
		prev_sig = cps[0].sig;
		prev_len = cps[0].sig_len;
		ci = 1;
	} else {
		link_known = 0;
	}
	while ((r = pager_step(&pg)) == 1) {
		struct db_stmt *ev = pg.st;
		struct kb_audit_event x;

		seq = (uint64_t)db_column_int64(ev, 0);
		if (seq != want) {
			*bad = fault(f, want,
			    "event %llu is missing (the next "
			    "event present is %llu)",
			    (unsigned long long)want, (unsigned long long)seq);
			goto out;
		}
		if (blob(stored, sizeof(stored), ev, 12) != KB_AUDIT_HASH_LEN) {
			*bad = fault(f, seq, "event %llu has a malformed hash",
			    (unsigned long long)seq);
			goto out;
		}
		if (seq == an->seq) {
			/* Its hash is the anchor's: the rest chains from it. */
			if (CRYPTO_memcmp(stored, an->head, sizeof(stored))
			    != 0) {
				*bad = fault(f, seq,
				    "event %llu is not the one the "
				    "token's anchor signed: the log was "
				    "rewritten",
				    (unsigned long long)seq);
				goto out;
			}
			memcpy(hash, stored, sizeof(hash));
			want++;
			continue;
		}
		x = (struct kb_audit_event){seq, db_column_int64(ev, 1),
		    col(ev, 2), col(ev, 3), col(ev, 4), col(ev, 5), col(ev, 6),
		    col(ev, 7), col(ev, 8), col(ev, 9), col(ev, 10),
		    col(ev, 11)};
		if ((e = kb_audit_event_hash(hash, &x, hash)) != KB_OK)
			goto out;
		if (CRYPTO_memcmp(hash, stored, sizeof(hash)) != 0) {
			*bad = fault(f, seq,
			    "event %llu does not match its hash: "
			    "it, or an event before it, was altered",
			    (unsigned long long)seq);
			goto out;
		}
		if (ci < ncps && cps[ci].seq == seq) {
			const struct cp_row *cp = &cps[ci];

			if (cp->head_len != KB_AUDIT_HASH_LEN
			    || CRYPTO_memcmp(cp->head, hash, sizeof(hash)) != 0
			    || (link_known
			        && (cp->psig_len != prev_len
			            || CRYPTO_memcmp(
			                   cp->psig, prev_sig, prev_len)
			                != 0))) {
				*bad = fault(f, seq,
				    "the checkpoint at %llu does not "
				    "match the log before it: the log was "
				    "rewritten",
				    (unsigned long long)seq);
				goto out;
			}
			prev_sig = cp->sig;
			prev_len = cp->sig_len;
			link_known = 1;
			ci++;
		}
		want++;
	}
	if (r < 0) {
		e = pg.e;
		goto out;
	}
	if (want <= an->seq) {
		/* Not even the anchor's event: the tail is gone. */
		struct db_stmt *st = NULL;

		seq = 0;
		if (db_prepare(c, "SELECT max(seq) FROM events", &st)
		    == KB_OK) {
			if (db_step(st) == DB_ROW)
				seq = (uint64_t)db_column_int64(st, 0);
			db_reset(st);
		}
		kb_err_clear();
		*bad = fault(f, seq + 1,
		    "events %llu to %llu are missing: the "
		    "token's anchor says the log reached %llu",
		    (unsigned long long)seq + 1, (unsigned long long)an->seq,
		    (unsigned long long)an->seq);
		goto out;
	}
	if (ci < ncps)
		*bad = fault(f, want,
		    "events %llu to %llu are missing: the "
		    "signed checkpoint at %llu covers them",
		    (unsigned long long)want, (unsigned long long)cps[ci].seq,
		    (unsigned long long)cps[ci].seq);
out:
	if (pg.open)
		db_reset(pg.st);
	free(cps);
	return e;
}

/* At open: verify the log from the token's anchor to its end. */
static enum kb_err
anchor_verify(struct audit *a, struct db_conn *c)
{
	struct anchor an;
	struct anchor_fault f;
	enum kb_err e;
	int bad = 0;

	if (a->cfg.anchor_label == NULL)
		return KB_OK;
	memset(&f, 0, sizeof(f));
	e = anchor_load(a, &an);
	if (e == KB_ERR_NOT_FOUND) {
		kb_err_clear();
		if (a->cp_seq == 0) {
			if (a->last_seq > 0)
				log_warn(
				    "audit log %s: %llu events, no checkpoint "
				    "and no anchor in the token yet: the first "
				    "checkpoint anchors it",
				    db_target(a->db),
				    (unsigned long long)a->last_seq);
			return KB_OK;
		}
		/* A log from before anchors: anchor it where it stands. */
		if ((e = anchor_advance(a)) != KB_OK)
			return kb_err_wrap(e, "anchoring the audit log");
		log_warn(
		    "audit log %s: no anchor in the token; anchored at its "
		    "last checkpoint (%llu): from now on a database edit that "
		    "removes or rewrites events is refused at start-up",
		    db_target(a->db), (unsigned long long)a->cp_seq);
		return KB_OK;
	}
	if (e != KB_OK)
		return kb_err_wrap(e, "reading the audit anchor");
	/* Lost events first: the first bad seq is the earliest one. */
	if ((e = anchor_check_events(c, &an, &f, &bad)) != KB_OK
	    || (!bad
	        && (e = anchor_check_checkpoint(c, &an, &f, &bad)) != KB_OK))
		return e;
	if (!bad)
		return KB_OK;
	if (!a->cfg.accept_loss)
		return kb_errf(KB_ERR_CORRUPT,
		    "audit log %s: %s; the broker "
		    "does not start on an audit log that lost events or was "
		    "rewritten since its anchor (event %llu): put back the "
		    "audit database from a backup, or, to accept the loss, "
		    "start once with --accept-audit-loss (recorded in the log)",
		    db_target(a->db), f.why, (unsigned long long)an.seq);
	/* Never reuse a number the anchor vouched for. */
	a->seq_floor = an.seq;
	if (a->last_seq < an.seq)
		a->last_seq = an.seq;
	snprintf(a->loss, sizeof(a->loss),
	    "started with --accept-audit-loss: "
	    "first bad event %llu: %s; the anchor said the log reached %llu",
	    (unsigned long long)f.seq, f.why, (unsigned long long)an.seq);
	log_error("audit log %s: %s (ACCEPTED with --accept-audit-loss: the "
	          "loss is recorded and the anchor moves)",
	    db_target(a->db), f.why);
	return KB_OK;
}

/* At open: the head, and the missing events a checkpoint covers. */
static enum kb_err
load_state(struct audit *a, struct db_conn *c, struct head *h)
{
	enum kb_err e;

	if ((e = head_read(c, h)) != KB_OK)
		return e;
	a->last_seq = h->ev_seq;
	a->cp_seq = h->cp_seq;
	a->cp_time_us = h->cp_seq ? h->cp_time_us : a->open_us;
	if (h->cp_seq > h->ev_seq) {
		/* Events a signed checkpoint covers are gone. Never reuse their
		 * numbers: the gap stays visible to every verifier. */
		log_error(
		    "audit log %s: events %llu to %llu, covered by the signed "
		    "checkpoint at %llu, are MISSING; numbering continues "
		    "after it so the gap stays visible (kbctl audit verify)",
		    db_target(a->db), (unsigned long long)h->ev_seq + 1,
		    (unsigned long long)h->cp_seq,
		    (unsigned long long)h->cp_seq);
		a->last_seq = h->cp_seq;
	}
	return KB_OK;
}

/* At open: which key signs, as the log says (key_state). The store names
 * the key in force: when the log has not rotated to it (a crash between
 * the two), the rotation is recorded now, and the log's key signs until a
 * checkpoint covers it. */
static enum kb_err
signing_key_init(struct audit *a, struct db_conn *c, const struct head *h)
{
	struct keystate ks;
	enum kb_err e;

	if ((e = key_state(a, c, h, &ks)) != KB_OK)
		return e;
	if (ks.next[0] != '\0') {
		/* A hand-over cut short: finish it at once. */
		a->force_req++;
		if (strcmp(ks.next, a->cfg.sign_key_id) != 0)
			log_warn("audit log: it is handing over from key %s to "
			         "%s, but the database names %s as the key in "
			         "force; the log's hand-over is finished first",
			    ks.sign, ks.next, a->cfg.sign_key_id);
	} else if (strcmp(ks.sign, a->cfg.sign_key_id) != 0) {
		a->rot_pending = 1;
	}
	keys_apply(a, &ks);
	return KB_OK;
}

/* ---- writing ---- */

/* One group commit: events [list] chained onto the head the database has
 * (read under the chain's lock). Run again from the start on a conflict,
 * so it sets every output afresh. */
struct batch {
	struct audit *a;
	struct pending *list;
	struct head h; /* the head found */
	uint64_t seq; /* the last number taken */
};

/* A rotation entry: whether to record it, and its reason. *skip when the
 * log has it already. */
static enum kb_err
rotation_decide(struct audit *a, struct db_conn *c, const struct head *h,
    struct pending *p, int *skip)
{
	struct keystate ks;
	enum kb_err e;

	*skip = 0;
	if ((e = key_state(a, c, h, &ks)) != KB_OK)
		return e;
	if (strcmp(ks.next, p->rotate_to) == 0) {
		/* Recorded already (by another broker, or before a crash). */
		p->seq = ks.next_after;
		*skip = 1;
		return KB_OK;
	}
	if (ks.next[0] != '\0')
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "a rotation of the audit key to %s is in progress (event "
		    "%llu); try again once a checkpoint covers it",
		    ks.next, (unsigned long long)ks.next_after);
	if (strcmp(ks.sign, p->rotate_to) == 0) {
		*skip = 1; /* in force already */
		return KB_OK;
	}
	return rotation_reason(
	    a, p->rotate_to, ks.sign, p->rot_reason, sizeof(p->rot_reason));
}

static enum kb_err
batch_txn(struct db_conn *c, void *arg)
{
	static const char sql[] =
	    "INSERT INTO events(seq, time_us, actor, role, "
	    "peer, method, tenant_id, environment, key_id, result, reason, "
	    "request_id, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)";
	struct batch *b = arg;
	struct audit *a = b->a;
	struct db_stmt *st = NULL;
	uint8_t hash[KB_AUDIT_HASH_LEN];
	struct pending *p;
	uint64_t seq;
	int64_t now;
	enum kb_err e;
	int skip;

	if ((e = chain_lock(c)) != KB_OK || (e = head_read(c, &b->h)) != KB_OK)
		return e;
	seq = head_top(a, &b->h);
	memcpy(hash, b->h.ev_hash, sizeof(hash));
	/* Events take their batch's commit time, read under the lock and
	 * never before the newest event's: time order follows sequence
	 * order across brokers too (unless a clock is behind, when its
	 * events take the time of the one before). */
	now = a->cfg.now_us();
	if (now < b->h.ev_time_us)
		now = b->h.ev_time_us;
	if ((e = db_prepare(c, sql, &st)) != KB_OK)
		return e;
	for (p = b->list; p != NULL; p = p->next) {
		struct audit_record r = *p->r;
		const char *f[10];
		struct kb_audit_event ev;
		int i;

		p->seq = 0;
		p->skipped = 0;
		if (p->rotate_to != NULL) {
			if ((e = rotation_decide(a, c, &b->h, p, &skip))
			    != KB_OK)
				return e;
			if (skip) {
				p->skipped = 1;
				continue;
			}
			r.reason = p->rot_reason;
		}
		f[0] = r.actor;
		f[1] = r.role;
		f[2] = r.peer;
		f[3] = r.method;
		f[4] = r.tenant;
		f[5] = r.env;
		f[6] = r.key_id;
		f[7] = r.result;
		f[8] = r.reason;
		f[9] = r.request_id;
		p->time_us = now;
		ev = (struct kb_audit_event){++seq, now, r.actor, r.role,
		    r.peer, r.method, r.tenant, r.env, r.key_id, r.result,
		    r.reason, r.request_id};
		if ((e = kb_audit_event_hash(hash, &ev, hash)) != KB_OK)
			return e;
		db_reset(st);
		db_bind_int64(st, 1, (int64_t)seq);
		db_bind_int64(st, 2, now);
		for (i = 0; i < 10; i++)
			db_bind_text(st, 3 + i, f[i] != NULL ? f[i] : "");
		db_bind_blob(st, 13, hash, sizeof(hash));
		if (db_step(st) != DB_DONE)
			return db_err(c, "audit log: writing an event");
		p->seq = seq;
	}
	db_reset(st);
	b->seq = seq;
	return KB_OK;
}

/* Write events [list] in one transaction. On failure nothing was written,
 * this broker's copy of the head is as before, and the caller gives every
 * pending entry the error. */
static enum kb_err
write_batch(struct audit *a, struct pending *list)
{
	struct batch b;
	enum kb_err e;

	memset(&b, 0, sizeof(b));
	b.a = a;
	b.list = list;
	if ((e = db_txn_locked(
	         a->db, batch_txn, &b, "audit log: writing events"))
	    != KB_OK)
		return e;
	pthread_mutex_lock(&a->mu);
	if (b.seq > a->last_seq)
		a->last_seq = b.seq;
	a->cp_seq = b.h.cp_seq;
	a->cp_time_us = b.h.cp_seq ? b.h.cp_time_us : a->open_us;
	pthread_mutex_unlock(&a->mu);
	return KB_OK;
}

/* One checkpoint transaction: under the chain's lock, whether one is due
 * (from the database's newest event and checkpoint, so brokers never sign
 * two for one seq), which key signs (the log's), and the checkpoint. */
struct cpjob {
	struct audit *a;
	int force;
	struct head h; /* the head found */
	struct keystate ks;
	int wrote;
	uint64_t seq;
	int64_t time_us;
};

static enum kb_err
checkpoint_txn(struct db_conn *c, void *arg)
{
	struct cpjob *j = arg;
	struct audit *a = j->a;
	struct kb_audit_checkpoint cp;
	struct db_stmt *st = NULL;
	uint8_t *data = NULL, *sig = NULL;
	size_t len = 0, sig_len = 0;
	int64_t now, since;
	enum kb_err e;

	j->wrote = 0;
	if ((e = chain_lock(c)) != KB_OK || (e = head_read(c, &j->h)) != KB_OK
	    || (e = key_state(a, c, &j->h, &j->ks)) != KB_OK)
		return e;
	if (j->h.ev_seq <= j->h.cp_seq)
		return KB_OK; /* covered already */
	now = a->cfg.now_us();
	since = j->h.cp_seq ? j->h.cp_time_us : a->open_us;
	if (!j->force && j->h.ev_seq - j->h.cp_seq < a->cfg.checkpoint_events
	    && now - since < (int64_t)a->cfg.checkpoint_interval_s * 1000000)
		return KB_OK;
	memset(&cp, 0, sizeof(cp));
	cp.seq = j->h.ev_seq;
	memcpy(cp.head_hash, j->h.ev_hash, KB_AUDIT_HASH_LEN);
	cp.time_us = now;
	cp.prev_sig = j->h.cp_sig;
	cp.prev_sig_len = j->h.cp_sig_len;
	if ((e = kb_audit_checkpoint_data(&cp, &data, &len)) != KB_OK)
		return e;
	if ((e = hsm_sign(a->cfg.hsm, j->ks.sign, data, len, &sig, &sig_len))
	    != KB_OK)
		goto out;
	if (sig_len > SIG_MAX) {
		e = kb_errf(KB_ERR_INTERNAL, "audit signature too long");
		goto out;
	}
	if ((e = db_prepare(c,
	         "INSERT INTO checkpoints(seq, head_hash, time_us, "
	         "prev_signature, signature, key_id) VALUES (?,?,?,?,?,?)",
	         &st))
	    != KB_OK)
		goto out;
	db_bind_int64(st, 1, (int64_t)cp.seq);
	db_bind_blob(st, 2, cp.head_hash, KB_AUDIT_HASH_LEN);
	db_bind_int64(st, 3, cp.time_us);
	db_bind_blob(st, 4, j->h.cp_sig, j->h.cp_sig_len);
	db_bind_blob(st, 5, sig, sig_len);
	db_bind_text(st, 6, j->ks.sign);
	if (db_step(st) != DB_DONE) {
		e = db_err(c, "audit log: writing a checkpoint");
		goto out;
	}
	db_reset(st);
	j->wrote = 1;
	j->seq = cp.seq;
	j->time_us = cp.time_us;
	e = KB_OK;
out:
	free(data);
	free(sig);
	return e;
}

/* Sign a checkpoint if one is due (or `force`d, or asked for), then take
 * what the transaction found as this broker's view: the head, the newest
 * checkpoint, the key in force. */
static enum kb_err
write_checkpoint(struct audit *a, int force)
{
	struct cpjob j;
	struct keystate ks;
	unsigned req;
	enum kb_err e;

	memset(&j, 0, sizeof(j));
	j.a = a;
	pthread_mutex_lock(&a->mu);
	req = a->force_req;
	j.force = force || req != a->force_done;
	pthread_mutex_unlock(&a->mu);
	if ((e = db_txn_locked(
	         a->db, checkpoint_txn, &j, "audit log: writing a checkpoint"))
	    != KB_OK)
		return e;
	ks = j.ks;
	if (j.wrote && ks.next[0] != '\0' && j.seq >= ks.next_after) {
		/* The old key has signed a checkpoint covering the rotation:
		 * the new key signs from now on, and the old can sign no
		 * more. */
		snprintf(ks.handed_from, sizeof(ks.handed_from), "%s", ks.sign);
		snprintf(ks.sign, sizeof(ks.sign), "%s", ks.next);
		ks.next[0] = '\0';
		ks.next_after = 0;
	}
	pthread_mutex_lock(&a->mu);
	if (j.h.ev_seq > a->last_seq)
		a->last_seq = j.h.ev_seq;
	a->cp_seq = j.wrote ? j.seq : j.h.cp_seq;
	a->cp_time_us = j.wrote ? j.time_us
	    : j.h.cp_seq        ? j.h.cp_time_us
	                        : a->open_us;
	a->force_done = req;
	pthread_mutex_unlock(&a->mu);
	/* Only after the checkpoint is durable: the anchor never runs ahead
	 * of the log. */
	if (j.wrote && (e = anchor_advance(a)) != KB_OK) {
		log_error("audit anchor: %s; it stays at an earlier checkpoint",
		    kb_err_msg(e));
		kb_err_clear();
	}
	keys_apply(a, &ks);
	return KB_OK;
}

/* Whether a checkpoint may be due, from this broker's copy of the head:
 * the checkpoint transaction decides from the database's. */
static int
checkpoint_due(struct audit *a)
{
	int due;

	pthread_mutex_lock(&a->mu);
	if (a->force_req != a->force_done)
		due = 1;
	else if (a->last_seq <= a->cp_seq)
		due = 0;
	else
		due = a->last_seq - a->cp_seq >= a->cfg.checkpoint_events
		    || a->cfg.now_us() - a->cp_time_us
		        >= (int64_t)a->cfg.checkpoint_interval_s * 1000000;
	pthread_mutex_unlock(&a->mu);
	return due;
}

static void
set_degraded(struct audit *a, enum kb_err e)
{
	pthread_mutex_lock(&a->mu);
	a->degraded = e != KB_OK;
	if (e != KB_OK)
		snprintf(a->degraded_msg, sizeof(a->degraded_msg), "%s",
		    kb_err_msg(e));
	pthread_mutex_unlock(&a->mu);
}

/* After a failed write, try one event a second, and before the next batch:
 * when the disk is back the log says so (audit.recovered, first), and the
 * health check turns SERVING again even if no call arrives to prove it.
 * KB_OK when the log is not degraded or the event went in; else the
 * write's error (the batch waiting need not try again). */
static enum kb_err
probe_recovery(struct audit *a)
{
	struct audit_record r;
	struct pending p;
	char rid[48];
	int degraded;
	enum kb_err e;

	pthread_mutex_lock(&a->mu);
	degraded = a->degraded;
	pthread_mutex_unlock(&a->mu);
	if (!degraded)
		return KB_OK;
	memset(&r, 0, sizeof(r));
	kb_audit_system_rid(
	    rid, sizeof(rid), a->cfg.instance, (uint64_t)a->cfg.now_us());
	r.request_id = rid;
	r.actor = "keybroker";
	r.role = "system";
	r.method = "audit.recovered";
	r.result = "ok";
	r.reason = "the audit log can record events again: this broker's "
	           "calls started before it and still without an outcome lost "
	           "it while the log could not write";
	memset(&p, 0, sizeof(p));
	p.r = &r;
	if ((e = write_batch(a, &p)) != KB_OK)
		return e;
	set_degraded(a, KB_OK);
	log_info("audit log: writable again (event %llu)",
	    (unsigned long long)p.seq);
	return KB_OK;
}

static void *
writer_main(void *arg)
{
	struct audit *a = arg;
	struct pending *list, *p;
	struct timespec ts;
	uint64_t t0;
	enum kb_err e;
	int n, rotation;

	pthread_mutex_lock(&a->mu);
	for (;;) {
		while (a->head == NULL && !a->stopping) {
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += 1;
			pthread_cond_timedwait(&a->work_cv, &a->mu, &ts);
			if (a->head == NULL && !a->stopping) {
				pthread_mutex_unlock(&a->mu);
				(void)probe_recovery(a);
				if (checkpoint_due(a)
				    && (e = write_checkpoint(a, 0)) != KB_OK)
					log_error("%s", kb_err_msg(e));
				pthread_mutex_lock(&a->mu);
			}
		}
		if (a->head == NULL && a->stopping)
			break;
		/* Take up to BATCH_MAX waiting events: one commit, one fsync.
		 * A rotation goes alone: its failure is its own. */
		list = a->head;
		rotation = list->rotate_to != NULL;
		for (p = list, n = 1; !rotation && p->next != NULL
		     && p->next->rotate_to == NULL && n < BATCH_MAX;
		     p = p->next)
			n++;
		a->head = p->next;
		if (a->head == NULL)
			a->tail = NULL;
		p->next = NULL;
		pthread_mutex_unlock(&a->mu);

		/* After a failed write the log says it recovered before any
		 * other event: a verifier then knows which calls lost their
		 * outcome. If it still cannot write, the batch fails with
		 * that error, not tried a second time. */
		t0 = kb_hist_now_ns();
		if ((e = rotation ? KB_OK : probe_recovery(a)) == KB_OK)
			e = write_batch(a, list);
		kb_hist_since(&a->commit_hist, t0);
		if (!rotation || e == KB_OK)
			set_degraded(a, e);
		pthread_mutex_lock(&a->mu);
		for (p = list; p != NULL; p = p->next) {
			p->err = e;
			if (e != KB_OK)
				snprintf(p->msg, sizeof(p->msg), "%s",
				    kb_err_msg(e));
			p->done = 1;
			/* Wake its appender, not every waiting one. */
			pthread_cond_signal(&p->cv);
		}
		/* Streams following the log, and a rotation's wait. */
		pthread_cond_broadcast(&a->done_cv);
		pthread_mutex_unlock(&a->mu);
		if (e != KB_OK)
			log_error("%s", kb_err_msg(e));
		if (checkpoint_due(a) && (e = write_checkpoint(a, 0)) != KB_OK)
			log_error("%s", kb_err_msg(e));
		pthread_mutex_lock(&a->mu);
	}
	pthread_mutex_unlock(&a->mu);
	if ((e = write_checkpoint(a, 1)) != KB_OK)
		log_error("final audit checkpoint: %s", kb_err_msg(e));
	return NULL;
}

/* At open, on one connection: the head, the anchor's check, the key. */
static enum kb_err
open_state(struct audit *a)
{
	struct db_conn *c = db_conn_get(a->db);
	struct head h;
	enum kb_err e;

	if ((e = load_state(a, c, &h)) == KB_OK
	    && (e = anchor_verify(a, c)) == KB_OK)
		e = signing_key_init(a, c, &h);
	db_conn_put(a->db, c);
	return e;
}

enum kb_err
audit_open(const struct audit_config *cfg, struct audit **out)
{
	struct db_config dc;
	struct audit *a;
	enum kb_err e;

	*out = NULL;
	if ((a = calloc(1, sizeof(*a))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	a->cfg = *cfg;
	if (a->cfg.checkpoint_events == 0)
		a->cfg.checkpoint_events = 1000;
	if (a->cfg.checkpoint_interval_s == 0)
		a->cfg.checkpoint_interval_s = 60;
	pthread_mutex_init(&a->mu, NULL);
	pthread_cond_init(&a->work_cv, NULL);
	pthread_cond_init(&a->done_cv, NULL);
	memset(&dc, 0, sizeof(dc));
	dc.target = cfg->path;
	dc.password_file = cfg->password_file;
	dc.schema = &audit_schema;
	if ((e = db_open(&dc, &a->db)) != KB_OK) {
		e = kb_err_wrap(e, "the audit log");
		goto fail;
	}
	a->open_us = a->cfg.now_us();
	if ((e = open_state(a)) != KB_OK)
		goto fail;
	if (pthread_create(&a->writer, NULL, writer_main, a) != 0) {
		e = kb_errf(KB_ERR_RESOURCE_EXHAUSTED,
		    "cannot start the audit "
		    "writer");
		goto fail;
	}
	a->started = 1;
	if (a->loss[0] != '\0') {
		struct audit_record r;

		memset(&r, 0, sizeof(r));
		r.actor = "keybroker";
		r.role = "system";
		r.method = "audit.loss_accepted";
		r.result = "ok";
		r.reason = a->loss;
		if ((e = audit_append(a, &r, NULL)) != KB_OK)
			goto fail;
		/* After the event: the checkpoint covers it, the anchor moves.
		 */
		audit_checkpoint_soon(a);
	}
	if (a->rot_pending
	    && (e = rotation_record(a, a->cfg.sign_key_id)) != KB_OK) {
		e = kb_err_wrap(e,
		    "finishing the rotation of the audit key "
		    "to %s",
		    a->cfg.sign_key_id);
		goto fail;
	}
	*out = a;
	return KB_OK;
fail:
	audit_close(a);
	return e;
}

/* Queue `p` for the writer and wait until it is committed or failed. */
static enum kb_err
append_wait(struct audit *a, struct pending *p)
{
	pthread_mutex_lock(&a->mu);
	if (a->stopping) {
		pthread_mutex_unlock(&a->mu);
		return kb_errf(KB_ERR_UNAVAILABLE, "the audit log is closed");
	}
	pthread_cond_init(&p->cv, NULL);
	if (a->tail != NULL)
		a->tail->next = p;
	else
		a->head = p;
	a->tail = p;
	pthread_cond_signal(&a->work_cv);
	/* The writer drains the queue even when closing: p is always done. */
	while (!p->done)
		pthread_cond_wait(&p->cv, &a->mu);
	pthread_mutex_unlock(&a->mu);
	pthread_cond_destroy(&p->cv);
	if (p->err != KB_OK)
		return kb_errf(p->err, "%s", p->msg);
	return KB_OK;
}

enum kb_err
audit_append(struct audit *a, const struct audit_record *r, uint64_t *seq)
{
	struct pending p;
	enum kb_err e;

	memset(&p, 0, sizeof(p));
	p.r = r;
	if ((e = append_wait(a, &p)) != KB_OK)
		return e;
	if (seq != NULL)
		*seq = p.seq;
	return KB_OK;
}

/* Record the rotation to `new_id` (unless the log has it already) and ask
 * for the checkpoint that covers it, after which the new key signs. */
static enum kb_err
rotation_record(struct audit *a, const char *new_id)
{
	struct audit_record r;
	struct pending p;
	enum kb_err e;

	memset(&r, 0, sizeof(r));
	r.actor = "keybroker";
	r.role = "system";
	r.method = KB_AUDIT_ROTATE_METHOD;
	r.key_id = new_id;
	r.result = "ok";
	memset(&p, 0, sizeof(p));
	p.r = &r;
	p.rotate_to = new_id;
	if ((e = append_wait(a, &p)) != KB_OK)
		return e;
	pthread_mutex_lock(&a->mu);
	if (p.seq != 0 && strcmp(a->sign_key, new_id) != 0) {
		snprintf(a->next_key, sizeof(a->next_key), "%s", new_id);
		a->next_after = p.seq;
	}
	a->force_req++;
	pthread_cond_signal(&a->work_cv);
	pthread_mutex_unlock(&a->mu);
	if (!p.skipped)
		log_info("audit log: rotation to key %s recorded (event %llu); "
		         "the current key signs a checkpoint covering it, then "
		         "hands over",
		    new_id, (unsigned long long)p.seq);
	else
		log_info("audit log: the rotation to key %s is in the log "
		         "already%s",
		    new_id,
		    p.seq ? "; a checkpoint covering it hands over" : "");
	return KB_OK;
}

enum kb_err
audit_rotate_key(struct audit *a, const char *new_id)
{
	char cur[KB_AUDIT_KEY_ID_MAX];
	struct timespec ts;
	enum kb_err e;
	int busy, rc = 0;

	pthread_mutex_lock(&a->mu);
	busy = a->next_key[0] != '\0';
	snprintf(cur, sizeof(cur), "%s", a->sign_key);
	pthread_mutex_unlock(&a->mu);
	if (busy)
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "a rotation of the "
		    "audit key is already in progress");
	if (strcmp(cur, new_id) == 0)
		return KB_OK;
	if ((e = rotation_record(a, new_id)) != KB_OK)
		return e;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 30;
	pthread_mutex_lock(&a->mu);
	while (
	    strcmp(a->sign_key, new_id) != 0 && !a->stopping && rc != ETIMEDOUT)
		rc = pthread_cond_timedwait(&a->done_cv, &a->mu, &ts);
	e = strcmp(a->sign_key, new_id) == 0
	    ? KB_OK
	    : kb_errf(KB_ERR_UNAVAILABLE,
	        "the audit log recorded the rotation "
	        "to %s but has not signed the checkpoint that hands over to it "
	        "yet (%s)",
	        new_id,
	        a->degraded ? a->degraded_msg
	                    : "it will at its next checkpoint");
	pthread_mutex_unlock(&a->mu);
	return e;
}

void
audit_checkpoint_soon(struct audit *a)
{
	pthread_mutex_lock(&a->mu);
	a->force_req++;
	pthread_cond_signal(&a->work_cv);
	pthread_mutex_unlock(&a->mu);
}

void
audit_signing_key(struct audit *a, char out[KB_AUDIT_KEY_ID_MAX])
{
	pthread_mutex_lock(&a->mu);
	snprintf(out, KB_AUDIT_KEY_ID_MAX, "%s", a->sign_key);
	pthread_mutex_unlock(&a->mu);
}

uint64_t
audit_last_seq(struct audit *a)
{
	uint64_t s;

	pthread_mutex_lock(&a->mu);
	s = a->last_seq;
	pthread_mutex_unlock(&a->mu);
	return s;
}

uint64_t
audit_wait(struct audit *a, uint64_t after_seq, int timeout_ms)
{
	struct timespec ts;
	uint64_t s;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += timeout_ms / 1000;
	ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&a->mu);
	while (a->last_seq <= after_seq && !a->stopping)
		if (pthread_cond_timedwait(&a->done_cv, &a->mu, &ts)
		    == ETIMEDOUT)
			break;
	s = a->last_seq;
	pthread_mutex_unlock(&a->mu);
	return s;
}

const struct kb_hist *
audit_commit_hist(const struct audit *a)
{
	return &a->commit_hist;
}

const char *
audit_engine_version(const struct audit *a)
{
	return db_engine_version(a->db);
}

enum kb_err
audit_check(struct audit *a)
{
	enum kb_err e = KB_OK;

	pthread_mutex_lock(&a->mu);
	if (a->degraded)
		e = kb_errf(KB_ERR_UNAVAILABLE, "%s", a->degraded_msg);
	pthread_mutex_unlock(&a->mu);
	return e;
}

int
audit_closing(struct audit *a)
{
	int s;

	pthread_mutex_lock(&a->mu);
	s = a->stopping;
	pthread_mutex_unlock(&a->mu);
	return s;
}

/* ---- reading ---- */

static void
event_row(struct db_stmt *st, struct audit_event *ev)
{
	ev->seq = (uint64_t)db_column_int64(st, 0);
	ev->time_us = db_column_int64(st, 1);
	text(ev->actor, sizeof(ev->actor), st, 2);
	text(ev->role, sizeof(ev->role), st, 3);
	text(ev->peer, sizeof(ev->peer), st, 4);
	text(ev->method, sizeof(ev->method), st, 5);
	text(ev->tenant, sizeof(ev->tenant), st, 6);
	text(ev->env, sizeof(ev->env), st, 7);
	text(ev->key_id, sizeof(ev->key_id), st, 8);
	text(ev->result, sizeof(ev->result), st, 9);
	text(ev->reason, sizeof(ev->reason), st, 10);
	text(ev->request_id, sizeof(ev->request_id), st, 11);
	memset(ev->hash, 0, sizeof(ev->hash));
	(void)blob(ev->hash, sizeof(ev->hash), st, 12);
}

enum kb_err
audit_list(struct audit *a, const struct audit_filter *f, uint64_t after,
    unsigned limit, struct audit_event **out, size_t *n, int *more)
{
	char sql[2048];
	struct db_conn *c = NULL;
	struct db_stmt *st = NULL;
	struct audit_event *v = NULL;
	size_t cnt = 0, i;
	enum db_step r;
	int idx = 1;
	enum kb_err e = KB_OK;

	*out = NULL;
	*n = 0;
	*more = 0;
	/* Every value is bound, never spliced into the SQL. */
	snprintf(sql, sizeof(sql),
	    "SELECT seq, time_us, actor, role, peer, "
	    "method, tenant_id, environment, key_id, result, reason, "
	    "request_id, "
	    "hash FROM events WHERE seq > ?%s%s%s%s%s%s%s%s",
	    f->since_us ? " AND time_us >= ?" : "",
	    f->until_us ? " AND time_us < ?" : "",
	    f->tenant && *f->tenant ? " AND tenant_id = ?" : "",
	    f->env && *f->env ? " AND environment = ?" : "",
	    f->method && *f->method ? " AND method = ?" : "",
	    f->actor && *f->actor ? " AND actor = ?" : "",
	    f->result && *f->result ? " AND result = ?" : "",
	    f->request_id && *f->request_id ? " AND request_id = ?" : "");
	if (f->tenants != NULL) {
		strncat(
		    sql, " AND tenant_id IN (", sizeof(sql) - strlen(sql) - 1);
		for (i = 0; i < f->ntenants; i++)
			strncat(
			    sql, i ? ",?" : "?", sizeof(sql) - strlen(sql) - 1);
		strncat(sql, ")", sizeof(sql) - strlen(sql) - 1);
	}
	strncat(sql, " ORDER BY seq LIMIT ?", sizeof(sql) - strlen(sql) - 1);
	if ((v = calloc(limit + 1, sizeof(*v))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	c = db_conn_get(a->db);
	if ((e = db_prepare_dynamic(c, sql, &st)) != KB_OK)
		goto out;
	db_bind_int64(st, idx++, (int64_t)after);
	if (f->since_us)
		db_bind_int64(st, idx++, f->since_us);
	if (f->until_us)
		db_bind_int64(st, idx++, f->until_us);
	if (f->tenant && *f->tenant)
		db_bind_text(st, idx++, f->tenant);
	if (f->env && *f->env)
		db_bind_text(st, idx++, f->env);
	if (f->method && *f->method)
		db_bind_text(st, idx++, f->method);
	if (f->actor && *f->actor)
		db_bind_text(st, idx++, f->actor);
	if (f->result && *f->result)
		db_bind_text(st, idx++, f->result);
	if (f->request_id && *f->request_id)
		db_bind_text(st, idx++, f->request_id);
	for (i = 0; f->tenants != NULL && i < f->ntenants; i++)
		db_bind_text(st, idx++, f->tenants[i]);
	db_bind_int64(st, idx++, (int64_t)limit + 1);
	/* LIMIT bounds the rows to limit + 1, what v holds. */
	while ((r = db_step(st)) == DB_ROW)
		event_row(st, &v[cnt++]);
	if (r == DB_FAIL) {
		e = db_err(c, "audit log: reading its events");
		goto out;
	}
	if (cnt > limit) {
		cnt = limit;
		*more = 1;
	}
	*out = v;
	*n = cnt;
	v = NULL;
out:
	db_finalize(st);
	db_conn_put(a->db, c);
	free(v);
	return e;
}

enum kb_err
audit_list_checkpoints(struct audit *a, uint64_t after, unsigned limit,
    struct audit_checkpoint **out, size_t *n, int *more)
{
	struct db_conn *c = NULL;
	struct db_stmt *st = NULL;
	struct audit_checkpoint *v = NULL;
	size_t cnt = 0;
	enum db_step r;
	enum kb_err e = KB_OK;

	*out = NULL;
	*n = 0;
	*more = 0;
	if ((v = calloc(limit + 1, sizeof(*v))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	c = db_conn_get(a->db);
	if ((e = db_prepare(c,
	         "SELECT seq, head_hash, time_us, prev_signature, signature, "
	         "key_id FROM checkpoints WHERE seq > ? ORDER BY seq LIMIT ?",
	         &st))
	    != KB_OK)
		goto out;
	db_bind_int64(st, 1, (int64_t)after);
	db_bind_int64(st, 2, (int64_t)limit + 1);
	while ((r = db_step(st)) == DB_ROW) {
		struct audit_checkpoint *cp = &v[cnt++];

		cp->seq = (uint64_t)db_column_int64(st, 0);
		(void)blob(cp->head_hash, sizeof(cp->head_hash), st, 1);
		cp->time_us = db_column_int64(st, 2);
		cp->prev_sig_len =
		    blob(cp->prev_sig, sizeof(cp->prev_sig), st, 3);
		cp->sig_len = blob(cp->sig, sizeof(cp->sig), st, 4);
		text(cp->key_id, sizeof(cp->key_id), st, 5);
	}
	if (r == DB_FAIL) {
		e = db_err(c, "audit log: reading its checkpoints");
		goto out;
	}
	db_reset(st);
	if (cnt > limit) {
		cnt = limit;
		*more = 1;
	}
	*out = v;
	*n = cnt;
	v = NULL;
out:
	db_conn_put(a->db, c);
	free(v);
	return e;
}

void
audit_close(struct audit *a)
{
	if (a == NULL)
		return;
	pthread_mutex_lock(&a->mu);
	a->stopping = 1;
	pthread_cond_broadcast(&a->work_cv);
	pthread_cond_broadcast(&a->done_cv);
	pthread_mutex_unlock(&a->mu);
	if (a->started)
		pthread_join(a->writer, NULL);
	a->started = 0;
	db_close(a->db);
	pthread_mutex_destroy(&a->mu);
	pthread_cond_destroy(&a->work_cv);
	pthread_cond_destroy(&a->done_cv);
	free(a);
}

/* ---- disaster recovery (backup.c) ---- */

enum kb_err
audit_snapshot(struct audit *a, const char *dest, struct audit_head *head)
{
	struct db_config dc;
	struct db *d = NULL;
	struct db_conn *c;
	struct db_stmt *st = NULL;
	struct sqlite3 *src;
	enum kb_err e;

	memset(head, 0, sizeof(*head));
	c = db_conn_get(a->db);
	if ((src = db_conn_sqlite(c)) == NULL) {
		db_conn_put(a->db, c);
		return kb_errf(KB_ERR_FAILED_PRECONDITION,
		    "the audit log is in PostgreSQL (%s): back it up with "
		    "PostgreSQL's own tools (pg_dump of the database, with "
		    "the broker's tables), not a broker backup",
		    db_target(a->db));
	}
	e = store_sqlite_copy(src, dest, "snapshotting the audit log");
	db_conn_put(a->db, c);
	if (e != KB_OK)
		return e;
	/* The head as the copy has it (the live log has moved on). */
	memset(&dc, 0, sizeof(dc));
	dc.target = dest;
	dc.conns = 1;
	dc.readonly = 1;
	dc.schema = &audit_schema;
	if ((e = db_open(&dc, &d)) != KB_OK)
		return kb_err_wrap(e, "reading the audit snapshot's head");
	c = db_conn_get(d);
	if ((e = db_prepare(c,
	         "SELECT (SELECT seq FROM events ORDER BY seq DESC LIMIT 1), "
	         "(SELECT hash FROM events ORDER BY seq DESC LIMIT 1), "
	         "(SELECT max(seq) FROM checkpoints)",
	         &st))
	    != KB_OK)
		goto out;
	if (db_step(st) != DB_ROW) {
		e = db_err(c, "audit log: reading the snapshot's head");
		goto out;
	}
	head->seq = (uint64_t)db_column_int64(st, 0);
	(void)blob(head->hash, sizeof(head->hash), st, 1);
	head->checkpoint_seq = (uint64_t)db_column_int64(st, 2);
	db_reset(st);
	e = KB_OK;
out:
	db_conn_put(d, c);
	db_close(d);
	return e;
}

enum kb_err
audit_anchor_seq(struct hsm *h, const char *label, uint64_t *seq)
{
	struct audit a;
	struct anchor an;
	enum kb_err e;

	memset(&a, 0, sizeof(a));
	a.cfg.hsm = h;
	a.cfg.anchor_label = label;
	if ((e = anchor_load(&a, &an)) == KB_OK)
		*seq = an.seq;
	return e;
}
