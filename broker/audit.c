/* SPDX-License-Identifier: Apache-2.0 */
/* audit.c: group-committed, hash-chained, checkpoint-signed event log. */
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
#include <sqlite3.h>

#include "hsm.h"
#include "kb_hist.h"
#include "log.h"
#include "store.h"

#define BATCH_MAX 1024

/* The anchor's value: "kban1" || seq (8 bytes BE) || head hash ||
 * SHA-256 of the checkpoint's signature. */
#define ANCHOR_MAGIC "kban1"
#define ANCHOR_LEN (5 + 8 + 2 * KB_AUDIT_HASH_LEN)

static const char schema[] =
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

struct pending {
	const struct audit_record *r;
	int64_t time_us;
	uint64_t seq;
	enum kb_err err;
	char msg[256];
	int done;
	pthread_cond_t cv; /* its appender waits on it alone */
	struct pending *next;
};

struct audit {
	struct audit_config cfg;
	struct kb_hist commit_hist; /* write_batch: one commit, one fsync */
	char *path;
	sqlite3 *wdb; /* the writer thread's connection */
	sqlite3 *rdb; /* readers', under rmu */
	pthread_mutex_t rmu;
	pthread_mutex_t mu;
	pthread_cond_t work_cv, done_cv;
	struct pending *head, *tail;
	int stopping, started;
	pthread_t writer;
	/* Chain state, owned by the writer (read under mu). */
	uint64_t last_seq;
	uint8_t last_hash[KB_AUDIT_HASH_LEN];
	uint64_t cp_seq; /* last checkpointed seq */
	uint8_t cp_head[KB_AUDIT_HASH_LEN];
	int64_t cp_time_us;
	uint8_t cp_sig[512];
	size_t cp_sig_len;
	/* The last write failed; cleared by the next that succeeds. While
	 * set, the writer probes every second with an audit.recovered event. */
	int degraded;
	char degraded_msg[256];
	/* Set by an accepted loss: its description, recorded as the first
	 * event, and a checkpoint (moving the anchor) right after it. */
	char loss[640];
	int force_cp;
	/* Signing keys (under mu): the one in force, the last checkpoint's,
	 * and a rotation in progress: after a checkpoint covering event
	 * `next_after`, `next_key` signs and `sign_key` is retired. */
	char sign_key[KB_AUDIT_KEY_ID_MAX];
	char cp_key[KB_AUDIT_KEY_ID_MAX];
	char next_key[KB_AUDIT_KEY_ID_MAX];
	uint64_t next_after;
	/* A rotation the database made that the log has not recorded yet
	 * (a crash in between): recorded at open. */
	char rot_reason[512];
};

static enum kb_err
db_err(sqlite3 *db, int rc, const char *what)
{
	int sys = sqlite3_system_errno(db);

	if (sys == ENOSPC || sys == EDQUOT || (rc & 0xff) == SQLITE_FULL)
		return kb_errf(KB_ERR_STORAGE_FULL,
		    "audit log: %s: its disk is "
		    "full (%s)",
		    what, sqlite3_errmsg(db));
	if (sys == EROFS || (rc & 0xff) == SQLITE_READONLY
	    || (rc & 0xff) == SQLITE_CANTOPEN)
		return kb_errf(KB_ERR_READ_ONLY,
		    "audit log: %s: it cannot be "
		    "written (%s%s%s)",
		    what, sqlite3_errmsg(db), sys ? ": " : "",
		    sys ? strerror(sys) : "");
	return kb_errf(KB_ERR_UNAVAILABLE, "audit log: %s: %s%s%s", what,
	    sqlite3_errmsg(db), sys ? ": " : "", sys ? strerror(sys) : "");
}

static enum kb_err
open_db(const char *path, sqlite3 **out)
{
	sqlite3 *db = NULL;
	int rc;

	rc = sqlite3_open_v2(path, &db,
	    SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
	    NULL);
	if (rc != SQLITE_OK) {
		enum kb_err e = db_err(db, rc, "opening");
		sqlite3_close(db);
		return kb_err_wrap(e, "%s", path);
	}
	sqlite3_busy_timeout(db, 10000);
	sqlite3_extended_result_codes(db, 1);
	rc = sqlite3_exec(db,
	    "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", NULL, NULL,
	    NULL);
	if (rc != SQLITE_OK) {
		enum kb_err e = db_err(db, rc, "configuring");
		sqlite3_close(db);
		return e;
	}
	*out = db;
	return KB_OK;
}

static void
text(char *dst, size_t len, sqlite3_stmt *st, int col)
{
	const unsigned char *t = sqlite3_column_text(st, col);

	snprintf(dst, len, "%s", t != NULL ? (const char *)t : "");
}

static size_t
blob(uint8_t *dst, size_t cap, sqlite3_stmt *st, int col)
{
	int n = sqlite3_column_bytes(st, col);

	if (n <= 0 || (size_t)n > cap)
		return 0;
	memcpy(dst, sqlite3_column_blob(st, col), (size_t)n);
	return (size_t)n;
}

/* Load the chain's head and the last checkpoint. */
static enum kb_err
load_state(struct audit *a)
{
	sqlite3_stmt *st = NULL;
	enum kb_err e = KB_OK;

	if (sqlite3_prepare_v2(a->wdb,
	        "SELECT seq, hash FROM events ORDER BY "
	        "seq DESC LIMIT 1",
	        -1, &st, NULL)
	    != SQLITE_OK)
		return db_err(a->wdb, sqlite3_errcode(a->wdb), "reading");
	if (sqlite3_step(st) == SQLITE_ROW) {
		a->last_seq = (uint64_t)sqlite3_column_int64(st, 0);
		if (blob(a->last_hash, sizeof(a->last_hash), st, 1)
		    != KB_AUDIT_HASH_LEN)
			e = kb_errf(KB_ERR_CORRUPT,
			    "audit log: event %llu has a "
			    "malformed hash",
			    (unsigned long long)a->last_seq);
	}
	sqlite3_finalize(st);
	if (e != KB_OK)
		return e;
	if (sqlite3_prepare_v2(a->wdb,
	        "SELECT seq, time_us, signature, "
	        "head_hash, key_id FROM checkpoints ORDER BY seq DESC LIMIT 1",
	        -1, &st, NULL)
	    != SQLITE_OK)
		return db_err(a->wdb, sqlite3_errcode(a->wdb), "reading");
	if (sqlite3_step(st) == SQLITE_ROW) {
		a->cp_seq = (uint64_t)sqlite3_column_int64(st, 0);
		a->cp_time_us = sqlite3_column_int64(st, 1);
		a->cp_sig_len = blob(a->cp_sig, sizeof(a->cp_sig), st, 2);
		(void)blob(a->cp_head, sizeof(a->cp_head), st, 3);
		text(a->cp_key, sizeof(a->cp_key), st, 4);
	}
	sqlite3_finalize(st);
	if (a->cp_seq > a->last_seq) {
		/* Events a signed checkpoint covers are gone. Never reuse their
		 * numbers: the gap stays visible to every verifier. */
		log_error(
		    "audit log %s: events %llu to %llu, covered by the signed "
		    "checkpoint at %llu, are MISSING; numbering continues "
		    "after "
		    "it so the gap stays visible (kbctl audit verify)",
		    a->path, (unsigned long long)a->last_seq + 1,
		    (unsigned long long)a->cp_seq,
		    (unsigned long long)a->cp_seq);
		a->last_seq = a->cp_seq;
	}
	return KB_OK;
}

static enum kb_err rotation_record(
    struct audit *a, const char *new_id, const char *reason);

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

static const char *
col(sqlite3_stmt *st, int i)
{
	const unsigned char *t = sqlite3_column_text(st, i);

	return t != NULL ? (const char *)t : "";
}

/* The signed checkpoint the anchor names must be in the database as it
 * was signed. Returns -1 with *f filled when it is not. */
static enum kb_err
anchor_check_checkpoint(
    struct audit *a, const struct anchor *an, struct anchor_fault *f, int *bad)
{
	sqlite3_stmt *st = NULL;
	uint8_t head[KB_AUDIT_HASH_LEN], sig[512], sh[KB_AUDIT_HASH_LEN];
	size_t sig_len;
	int rc;

	*bad = 0;
	if ((rc = sqlite3_prepare_v2(a->wdb,
	         "SELECT head_hash, signature FROM "
	         "checkpoints WHERE seq = ?",
	         -1, &st, NULL))
	    != SQLITE_OK)
		return db_err(a->wdb, rc, "reading checkpoints");
	sqlite3_bind_int64(st, 1, (sqlite3_int64)an->seq);
	if ((rc = sqlite3_step(st)) == SQLITE_ROW) {
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
	} else if (rc == SQLITE_DONE) {
		*bad = fault(f, an->seq,
		    "the signed checkpoint at %llu is "
		    "missing (checkpoints were deleted)",
		    (unsigned long long)an->seq);
	} else {
		sqlite3_finalize(st);
		return db_err(a->wdb, rc, "reading checkpoints");
	}
	sqlite3_finalize(st);
	return KB_OK;
}

/* Walk the events from the anchor's to the end, recomputing the chain,
 * and the checkpoints after the anchor's alongside. *bad when the log
 * lost events or was rewritten, *f says where. */
static enum kb_err
anchor_check_events(
    struct audit *a, const struct anchor *an, struct anchor_fault *f, int *bad)
{
	sqlite3_stmt *ev = NULL, *cp = NULL;
	uint8_t hash[KB_AUDIT_HASH_LEN], stored[KB_AUDIT_HASH_LEN];
	uint8_t psig[512], prev_sig[512];
	size_t psig_len, prev_len = 0;
	uint64_t want = an->seq, cp_seq = 0, seq;
	int rc, have_cp = 0, link_known = 1;
	enum kb_err e = KB_OK;

	*bad = 0;
	if ((rc = sqlite3_prepare_v2(a->wdb,
	         "SELECT seq, time_us, actor, role, "
	         "peer, method, tenant_id, environment, key_id, result, "
	         "reason, "
	         "request_id, hash FROM events WHERE seq >= ? ORDER BY seq",
	         -1, &ev, NULL))
	        != SQLITE_OK
	    || (rc = sqlite3_prepare_v2(a->wdb,
	            "SELECT seq, head_hash, "
	            "prev_signature, signature FROM checkpoints WHERE seq >= ? "
	            "ORDER BY "
	            "seq",
	            -1, &cp, NULL))
	        != SQLITE_OK) {
		e = db_err(a->wdb, rc, "reading the log");
		goto out;
	}
	sqlite3_bind_int64(ev, 1, (sqlite3_int64)an->seq);
	sqlite3_bind_int64(cp, 1, (sqlite3_int64)an->seq);
	/* The anchor's own checkpoint (checked after this walk) starts the
	 * chain of signatures; when it is gone, the next one's link is not
	 * compared. */
	if ((rc = sqlite3_step(cp)) == SQLITE_ROW
	    && (uint64_t)sqlite3_column_int64(cp, 0) == an->seq) {
		prev_len = blob(prev_sig, sizeof(prev_sig), cp, 3);
		rc = sqlite3_step(cp);
	} else {
		link_known = 0;
	}
	if (rc == SQLITE_ROW) {
		have_cp = 1;
		cp_seq = (uint64_t)sqlite3_column_int64(cp, 0);
	}
	while ((rc = sqlite3_step(ev)) == SQLITE_ROW) {
		struct kb_audit_event x;

		seq = (uint64_t)sqlite3_column_int64(ev, 0);
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
		x = (struct kb_audit_event){seq, sqlite3_column_int64(ev, 1),
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
		if (have_cp && cp_seq == seq) {
			uint8_t head[KB_AUDIT_HASH_LEN];

			psig_len = blob(psig, sizeof(psig), cp, 2);
			if (blob(head, sizeof(head), cp, 1) != KB_AUDIT_HASH_LEN
			    || CRYPTO_memcmp(head, hash, sizeof(head)) != 0
			    || (link_known
			        && (psig_len != prev_len
			            || CRYPTO_memcmp(psig, prev_sig, prev_len)
			                != 0))) {
				*bad = fault(f, seq,
				    "the checkpoint at %llu does not "
				    "match the log before it: the log was "
				    "rewritten",
				    (unsigned long long)seq);
				goto out;
			}
			prev_len = blob(prev_sig, sizeof(prev_sig), cp, 3);
			link_known = 1;
			have_cp = sqlite3_step(cp) == SQLITE_ROW;
			if (have_cp)
				cp_seq = (uint64_t)sqlite3_column_int64(cp, 0);
		}
		want++;
	}
	if (rc != SQLITE_DONE) {
		e = db_err(a->wdb, rc, "reading the log");
		goto out;
	}
	if (want <= an->seq) {
		/* Not even the anchor's event: the tail is gone. */
		sqlite3_finalize(ev);
		ev = NULL;
		seq = 0;
		if (sqlite3_prepare_v2(
		        a->wdb, "SELECT max(seq) FROM events", -1, &ev, NULL)
		        == SQLITE_OK
		    && sqlite3_step(ev) == SQLITE_ROW)
			seq = (uint64_t)sqlite3_column_int64(ev, 0);
		*bad = fault(f, seq + 1,
		    "events %llu to %llu are missing: the "
		    "token's anchor says the log reached %llu",
		    (unsigned long long)seq + 1, (unsigned long long)an->seq,
		    (unsigned long long)an->seq);
		goto out;
	}
	if (have_cp)
		*bad = fault(f, want,
		    "events %llu to %llu are missing: the "
		    "signed checkpoint at %llu covers them",
		    (unsigned long long)want, (unsigned long long)cp_seq,
		    (unsigned long long)cp_seq);
out:
	sqlite3_finalize(ev);
	sqlite3_finalize(cp);
	return e;
}

/* At open: verify the log from the token's anchor to its end. */
static enum kb_err
anchor_verify(struct audit *a)
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
				    a->path, (unsigned long long)a->last_seq);
			return KB_OK;
		}
		/* A log from before anchors: anchor it where it stands. */
		if ((e = anchor_store(
		         a, a->cp_seq, a->cp_head, a->cp_sig, a->cp_sig_len))
		    != KB_OK)
			return kb_err_wrap(e, "anchoring the audit log");
		log_warn(
		    "audit log %s: no anchor in the token; anchored at its "
		    "last checkpoint (%llu): from now on a database edit that "
		    "removes or rewrites events is refused at start-up",
		    a->path, (unsigned long long)a->cp_seq);
		return KB_OK;
	}
	if (e != KB_OK)
		return kb_err_wrap(e, "reading the audit anchor");
	/* Lost events first: the first bad seq is the earliest one. */
	if ((e = anchor_check_events(a, &an, &f, &bad)) != KB_OK
	    || (!bad
	        && (e = anchor_check_checkpoint(a, &an, &f, &bad)) != KB_OK))
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
		    a->path, f.why, (unsigned long long)an.seq);
	/* Never reuse a number the anchor vouched for. */
	if (a->last_seq < an.seq)
		a->last_seq = an.seq;
	snprintf(a->loss, sizeof(a->loss),
	    "started with --accept-audit-loss: "
	    "first bad event %llu: %s; the anchor said the log reached %llu",
	    (unsigned long long)f.seq, f.why, (unsigned long long)an.seq);
	log_error("audit log %s: %s (ACCEPTED with --accept-audit-loss: the "
	          "loss is recorded and the anchor moves)",
	    a->path, f.why);
	return KB_OK;
}

/* Write events [list] in one transaction. On failure the chain state is
 * left as before and every pending entry carries the error. */
static enum kb_err
write_batch(struct audit *a, struct pending *list)
{
	static const char sql[] =
	    "INSERT INTO events(seq, time_us, actor, role, "
	    "peer, method, tenant_id, environment, key_id, result, reason, "
	    "request_id, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)";
	sqlite3_stmt *st = NULL;
	uint64_t seq = a->last_seq;
	uint8_t hash[KB_AUDIT_HASH_LEN];
	struct pending *p;
	enum kb_err e = KB_OK;
	int64_t now = a->cfg.now_us();
	int rc;

	memcpy(hash, a->last_hash, sizeof(hash));
	if ((rc = sqlite3_exec(a->wdb, "BEGIN IMMEDIATE", NULL, NULL, NULL))
	    != SQLITE_OK)
		return db_err(a->wdb, rc, "beginning a write");
	if ((rc = sqlite3_prepare_v2(a->wdb, sql, -1, &st, NULL))
	    != SQLITE_OK) {
		e = db_err(a->wdb, rc, "preparing");
		goto rollback;
	}
	for (p = list; p != NULL; p = p->next) {
		const struct audit_record *r = p->r;
		const char *f[10] = {r->actor, r->role, r->peer, r->method,
		    r->tenant, r->env, r->key_id, r->result, r->reason,
		    r->request_id};
		struct kb_audit_event ev;
		int i;

		/* Events take their batch's commit time, so time order follows
		 * sequence order (unless the wall clock steps back). */
		p->time_us = now;
		ev = (struct kb_audit_event){++seq, p->time_us, r->actor,
		    r->role, r->peer, r->method, r->tenant, r->env, r->key_id,
		    r->result, r->reason, r->request_id};

		if ((e = kb_audit_event_hash(hash, &ev, hash)) != KB_OK)
			goto rollback;
		sqlite3_reset(st);
		sqlite3_bind_int64(st, 1, (sqlite3_int64)seq);
		sqlite3_bind_int64(st, 2, p->time_us);
		for (i = 0; i < 10; i++)
			sqlite3_bind_text(st, 3 + i, f[i] != NULL ? f[i] : "",
			    -1, SQLITE_STATIC);
		sqlite3_bind_blob(st, 13, hash, sizeof(hash), SQLITE_STATIC);
		if ((rc = sqlite3_step(st)) != SQLITE_DONE) {
			e = db_err(a->wdb, rc, "writing an event");
			goto rollback;
		}
		p->seq = seq;
	}
	sqlite3_finalize(st);
	st = NULL;
	if ((rc = sqlite3_exec(a->wdb, "COMMIT", NULL, NULL, NULL))
	    != SQLITE_OK) {
		e = db_err(a->wdb, rc, "committing");
		goto rollback;
	}
	pthread_mutex_lock(&a->mu);
	a->last_seq = seq;
	memcpy(a->last_hash, hash, sizeof(hash));
	pthread_mutex_unlock(&a->mu);
	return KB_OK;
rollback:
	sqlite3_finalize(st);
	(void)sqlite3_exec(a->wdb, "ROLLBACK", NULL, NULL, NULL);
	return e;
}

/* The old key has signed a checkpoint covering the rotation: the new key
 * signs from now on, and the old one can sign no more. */
static void
hand_over(struct audit *a)
{
	char old[KB_AUDIT_KEY_ID_MAX];
	enum kb_err e;

	pthread_mutex_lock(&a->mu);
	snprintf(old, sizeof(old), "%s", a->sign_key);
	snprintf(a->sign_key, sizeof(a->sign_key), "%s", a->next_key);
	a->next_key[0] = '\0';
	a->next_after = 0;
	pthread_cond_broadcast(&a->done_cv);
	pthread_mutex_unlock(&a->mu);
	log_info(
	    "audit log: signing key %s in force; %s retired", a->sign_key, old);
	if ((e = hsm_key_retire(a->cfg.hsm, old)) != KB_OK
	    && e != KB_ERR_NOT_FOUND)
		log_error("audit log: destroying the retired key %s's private "
		          "half: %s",
		    old, kb_err_msg(e));
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

/* At open: which key signs. The database names the key in force; when
 * the log's newest checkpoint was signed by another, a rotation was cut
 * short: the checkpoint's key signs until it has covered the rotation's
 * event (recorded now if the log lacks it). */
static enum kb_err
signing_key_init(struct audit *a)
{
	char nid[KB_AUDIT_KEY_ID_MAX], nfp[65], oid[KB_AUDIT_KEY_ID_MAX];
	char ofp[65];
	sqlite3_stmt *st = NULL;
	uint64_t rseq = 0;
	int found = 0;
	enum kb_err e;

	snprintf(a->sign_key, sizeof(a->sign_key), "%s", a->cfg.sign_key_id);
	if (a->cp_key[0] == '\0' || strcmp(a->cp_key, a->sign_key) == 0)
		return KB_OK;
	if (sqlite3_prepare_v2(a->wdb,
	        "SELECT seq, reason FROM events WHERE "
	        "method = '" KB_AUDIT_ROTATE_METHOD
	        "' AND role = 'system' ORDER BY "
	        "seq DESC LIMIT 1",
	        -1, &st, NULL)
	    != SQLITE_OK)
		return db_err(a->wdb, sqlite3_errcode(a->wdb), "reading");
	if (sqlite3_step(st) == SQLITE_ROW
	    && kb_audit_rotation_parse(col(st, 1), nid, nfp, oid, ofp) == 0
	    && strcmp(nid, a->cfg.sign_key_id) == 0
	    && strcmp(oid, a->cp_key) == 0) {
		rseq = (uint64_t)sqlite3_column_int64(st, 0);
		found = 1;
	}
	sqlite3_finalize(st);
	if (found && a->cp_seq >= rseq) {
		/* Covered already: only the hand-over was cut short. */
		if (hsm_key_retire(a->cfg.hsm, a->cp_key) == KB_OK)
			log_info(
			    "audit log: retired key %s destroyed", a->cp_key);
		kb_err_clear();
		return KB_OK;
	}
	snprintf(a->next_key, sizeof(a->next_key), "%s", a->cfg.sign_key_id);
	snprintf(a->sign_key, sizeof(a->sign_key), "%s", a->cp_key);
	if (found) {
		a->next_after = rseq;
		a->force_cp = 1;
		return KB_OK;
	}
	if ((e = rotation_reason(a, a->next_key, a->sign_key, a->rot_reason,
	         sizeof(a->rot_reason)))
	    != KB_OK)
		return kb_err_wrap(e,
		    "finishing the rotation of the audit key "
		    "from %s to %s",
		    a->sign_key, a->next_key);
	a->next_after = UINT64_MAX; /* set when the event is recorded */
	return KB_OK;
}

static enum kb_err
write_checkpoint(struct audit *a)
{
	struct kb_audit_checkpoint cp;
	sqlite3_stmt *st = NULL;
	uint8_t *data = NULL, *sig = NULL;
	size_t len = 0, sig_len = 0;
	enum kb_err e;
	int rc;

	if (a->last_seq == a->cp_seq)
		return KB_OK;
	memset(&cp, 0, sizeof(cp));
	cp.seq = a->last_seq;
	memcpy(cp.head_hash, a->last_hash, KB_AUDIT_HASH_LEN);
	cp.time_us = a->cfg.now_us();
	cp.prev_sig = a->cp_sig;
	cp.prev_sig_len = a->cp_sig_len;
	if ((e = kb_audit_checkpoint_data(&cp, &data, &len)) != KB_OK)
		return e;
	/* Only this thread changes sign_key: read without the lock. */
	if ((e = hsm_sign(a->cfg.hsm, a->sign_key, data, len, &sig, &sig_len))
	    != KB_OK)
		goto out;
	if (sig_len > sizeof(a->cp_sig)) {
		e = kb_errf(KB_ERR_INTERNAL, "audit signature too long");
		goto out;
	}
	if ((rc = sqlite3_prepare_v2(a->wdb,
	         "INSERT INTO checkpoints(seq, "
	         "head_hash, time_us, prev_signature, signature, key_id) "
	         "VALUES "
	         "(?,?,?,?,?,?)",
	         -1, &st, NULL))
	    != SQLITE_OK) {
		e = db_err(a->wdb, rc, "preparing");
		goto out;
	}
	sqlite3_bind_int64(st, 1, (sqlite3_int64)cp.seq);
	sqlite3_bind_blob(
	    st, 2, cp.head_hash, KB_AUDIT_HASH_LEN, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, cp.time_us);
	sqlite3_bind_blob(st, 4, a->cp_sig, (int)a->cp_sig_len, SQLITE_STATIC);
	sqlite3_bind_blob(st, 5, sig, (int)sig_len, SQLITE_STATIC);
	sqlite3_bind_text(st, 6, a->sign_key, -1, SQLITE_STATIC);
	if ((rc = sqlite3_step(st)) != SQLITE_DONE) {
		e = db_err(a->wdb, rc, "writing a checkpoint");
		goto out;
	}
	a->cp_seq = cp.seq;
	memcpy(a->cp_head, cp.head_hash, KB_AUDIT_HASH_LEN);
	a->cp_time_us = cp.time_us;
	memcpy(a->cp_sig, sig, sig_len);
	a->cp_sig_len = sig_len;
	a->force_cp = 0;
	snprintf(a->cp_key, sizeof(a->cp_key), "%s", a->sign_key);
	e = KB_OK;
	/* Only after the checkpoint is durable: the anchor never runs ahead
	 * of the log. When it cannot move it stays at the previous one. */
	if (a->cfg.anchor_label != NULL
	    && (e = anchor_store(a, cp.seq, cp.head_hash, sig, sig_len))
	        != KB_OK) {
		log_error("audit anchor: %s; it stays at an earlier checkpoint",
		    kb_err_msg(e));
		e = KB_OK;
	}
	if (a->next_key[0] != '\0' && cp.seq >= a->next_after)
		hand_over(a);
out:
	sqlite3_finalize(st);
	free(data);
	free(sig);
	return e;
}

static int
checkpoint_due(struct audit *a)
{
	if (a->last_seq == a->cp_seq)
		return 0;
	if (a->force_cp || a->last_seq - a->cp_seq >= a->cfg.checkpoint_events)
		return 1;
	return a->cfg.now_us() - a->cp_time_us
	    >= (int64_t)a->cfg.checkpoint_interval_s * 1000000;
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

/* After a failed write, try one event a second: when the disk is back the
 * log says so, and the health check turns SERVING again even if no call
 * arrives to prove it. */
static void
probe_recovery(struct audit *a)
{
	struct audit_record r;
	struct pending p;
	int degraded;

	pthread_mutex_lock(&a->mu);
	degraded = a->degraded;
	pthread_mutex_unlock(&a->mu);
	if (!degraded)
		return;
	memset(&r, 0, sizeof(r));
	r.actor = "keybroker";
	r.role = "system";
	r.method = "audit.recovered";
	r.result = "ok";
	r.reason = "the audit log can record events again";
	memset(&p, 0, sizeof(p));
	p.r = &r;
	if (write_batch(a, &p) == KB_OK) {
		set_degraded(a, KB_OK);
		log_info("audit log: writable again (event %llu)",
		    (unsigned long long)p.seq);
	}
}

static void *
writer_main(void *arg)
{
	struct audit *a = arg;
	struct pending *list, *p;
	struct timespec ts;
	uint64_t t0;
	enum kb_err e;
	int n;

	pthread_mutex_lock(&a->mu);
	for (;;) {
		while (a->head == NULL && !a->stopping) {
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += 1;
			pthread_cond_timedwait(&a->work_cv, &a->mu, &ts);
			if (a->head == NULL && !a->stopping) {
				pthread_mutex_unlock(&a->mu);
				probe_recovery(a);
				if (checkpoint_due(a)
				    && (e = write_checkpoint(a)) != KB_OK)
					log_error("%s", kb_err_msg(e));
				pthread_mutex_lock(&a->mu);
			}
		}
		if (a->head == NULL && a->stopping)
			break;
		/* Take up to BATCH_MAX waiting events: one commit, one fsync.
		 */
		list = a->head;
		for (p = list, n = 1; p->next != NULL && n < BATCH_MAX;
		     p = p->next)
			n++;
		a->head = p->next;
		if (a->head == NULL)
			a->tail = NULL;
		p->next = NULL;
		pthread_mutex_unlock(&a->mu);

		t0 = kb_hist_now_ns();
		e = write_batch(a, list);
		kb_hist_since(&a->commit_hist, t0);
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
		if (checkpoint_due(a) && (e = write_checkpoint(a)) != KB_OK)
			log_error("%s", kb_err_msg(e));
		pthread_mutex_lock(&a->mu);
	}
	pthread_mutex_unlock(&a->mu);
	if ((e = write_checkpoint(a)) != KB_OK)
		log_error("final audit checkpoint: %s", kb_err_msg(e));
	return NULL;
}

enum kb_err
audit_open(const struct audit_config *cfg, struct audit **out)
{
	struct audit *a;
	enum kb_err e;
	int rc;

	*out = NULL;
	if ((a = calloc(1, sizeof(*a))) == NULL
	    || (a->path = strdup(cfg->path)) == NULL) {
		free(a);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	a->cfg = *cfg;
	if (a->cfg.checkpoint_events == 0)
		a->cfg.checkpoint_events = 1000;
	if (a->cfg.checkpoint_interval_s == 0)
		a->cfg.checkpoint_interval_s = 60;
	pthread_mutex_init(&a->mu, NULL);
	pthread_mutex_init(&a->rmu, NULL);
	pthread_cond_init(&a->work_cv, NULL);
	pthread_cond_init(&a->done_cv, NULL);
	if ((e = open_db(a->path, &a->wdb)) != KB_OK)
		goto fail;
	if ((rc = sqlite3_exec(a->wdb, schema, NULL, NULL, NULL))
	    != SQLITE_OK) {
		e = db_err(a->wdb, rc, "creating tables");
		goto fail;
	}
	if ((e = open_db(a->path, &a->rdb)) != KB_OK
	    || (e = load_state(a)) != KB_OK || (e = anchor_verify(a)) != KB_OK
	    || (e = signing_key_init(a)) != KB_OK)
		goto fail;
	if (a->cp_time_us == 0)
		a->cp_time_us = a->cfg.now_us();
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
		a->force_cp = 1;
		if ((e = audit_append(a, &r, NULL)) != KB_OK)
			goto fail;
	}
	if (a->rot_reason[0] != '\0') {
		char next[KB_AUDIT_KEY_ID_MAX];

		snprintf(next, sizeof(next), "%s", a->next_key);
		if ((e = rotation_record(a, next, a->rot_reason)) != KB_OK)
			goto fail;
	}
	*out = a;
	return KB_OK;
fail:
	audit_close(a);
	return e;
}

enum kb_err
audit_append(struct audit *a, const struct audit_record *r, uint64_t *seq)
{
	struct pending p;

	memset(&p, 0, sizeof(p));
	p.r = r;
	pthread_mutex_lock(&a->mu);
	if (a->stopping) {
		pthread_mutex_unlock(&a->mu);
		return kb_errf(KB_ERR_UNAVAILABLE, "the audit log is closed");
	}
	pthread_cond_init(&p.cv, NULL);
	if (a->tail != NULL)
		a->tail->next = &p;
	else
		a->head = &p;
	a->tail = &p;
	pthread_cond_signal(&a->work_cv);
	/* The writer drains the queue even when closing: p is always done. */
	while (!p.done)
		pthread_cond_wait(&p.cv, &a->mu);
	pthread_mutex_unlock(&a->mu);
	pthread_cond_destroy(&p.cv);
	if (p.err != KB_OK)
		return kb_errf(p.err, "%s", p.msg);
	if (seq != NULL)
		*seq = p.seq;
	return KB_OK;
}

/* Record the rotation to `new_id` and arm the hand-over after it. */
static enum kb_err
rotation_record(struct audit *a, const char *new_id, const char *reason)
{
	struct audit_record r;
	uint64_t seq = 0;
	enum kb_err e;

	memset(&r, 0, sizeof(r));
	r.actor = "keybroker";
	r.role = "system";
	r.method = KB_AUDIT_ROTATE_METHOD;
	r.key_id = new_id;
	r.result = "ok";
	r.reason = reason;
	if ((e = audit_append(a, &r, &seq)) != KB_OK)
		return e;
	pthread_mutex_lock(&a->mu);
	snprintf(a->next_key, sizeof(a->next_key), "%s", new_id);
	a->next_after = seq;
	a->force_cp = 1;
	pthread_cond_signal(&a->work_cv);
	pthread_mutex_unlock(&a->mu);
	log_info("audit log: rotation to key %s recorded (event %llu); the "
	         "current key signs a checkpoint covering it, then hands over",
	    new_id, (unsigned long long)seq);
	return KB_OK;
}

enum kb_err
audit_rotate_key(struct audit *a, const char *new_id)
{
	char reason[512], cur[KB_AUDIT_KEY_ID_MAX];
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
	if ((e = rotation_reason(a, new_id, cur, reason, sizeof(reason)))
	        != KB_OK
	    || (e = rotation_record(a, new_id, reason)) != KB_OK)
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
	a->force_cp = 1;
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

static void
event_row(sqlite3_stmt *st, struct audit_event *ev)
{
	ev->seq = (uint64_t)sqlite3_column_int64(st, 0);
	ev->time_us = sqlite3_column_int64(st, 1);
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
	sqlite3_stmt *st = NULL;
	struct audit_event *v = NULL;
	size_t cnt = 0, i;
	int rc, idx = 1;
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
	pthread_mutex_lock(&a->rmu);
	if ((rc = sqlite3_prepare_v2(a->rdb, sql, -1, &st, NULL))
	    != SQLITE_OK) {
		e = db_err(a->rdb, rc, "querying");
		goto out;
	}
	sqlite3_bind_int64(st, idx++, (sqlite3_int64)after);
	if (f->since_us)
		sqlite3_bind_int64(st, idx++, f->since_us);
	if (f->until_us)
		sqlite3_bind_int64(st, idx++, f->until_us);
	if (f->tenant && *f->tenant)
		sqlite3_bind_text(st, idx++, f->tenant, -1, SQLITE_STATIC);
	if (f->env && *f->env)
		sqlite3_bind_text(st, idx++, f->env, -1, SQLITE_STATIC);
	if (f->method && *f->method)
		sqlite3_bind_text(st, idx++, f->method, -1, SQLITE_STATIC);
	if (f->actor && *f->actor)
		sqlite3_bind_text(st, idx++, f->actor, -1, SQLITE_STATIC);
	if (f->result && *f->result)
		sqlite3_bind_text(st, idx++, f->result, -1, SQLITE_STATIC);
	if (f->request_id && *f->request_id)
		sqlite3_bind_text(st, idx++, f->request_id, -1, SQLITE_STATIC);
	for (i = 0; f->tenants != NULL && i < f->ntenants; i++)
		sqlite3_bind_text(st, idx++, f->tenants[i], -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, idx++, (sqlite3_int64)limit + 1);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		event_row(st, &v[cnt++]);
	if (rc != SQLITE_DONE) {
		e = db_err(a->rdb, rc, "reading events");
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
	sqlite3_finalize(st);
	pthread_mutex_unlock(&a->rmu);
	free(v);
	return e;
}

enum kb_err
audit_list_checkpoints(struct audit *a, uint64_t after, unsigned limit,
    struct audit_checkpoint **out, size_t *n, int *more)
{
	sqlite3_stmt *st = NULL;
	struct audit_checkpoint *v = NULL;
	size_t cnt = 0;
	enum kb_err e = KB_OK;
	int rc;

	*out = NULL;
	*n = 0;
	*more = 0;
	if ((v = calloc(limit + 1, sizeof(*v))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	pthread_mutex_lock(&a->rmu);
	if ((rc = sqlite3_prepare_v2(a->rdb,
	         "SELECT seq, head_hash, time_us, "
	         "prev_signature, signature, key_id FROM checkpoints WHERE seq "
	         "> ? "
	         "ORDER BY seq LIMIT ?",
	         -1, &st, NULL))
	    != SQLITE_OK) {
		e = db_err(a->rdb, rc, "querying");
		goto out;
	}
	sqlite3_bind_int64(st, 1, (sqlite3_int64)after);
	sqlite3_bind_int64(st, 2, (sqlite3_int64)limit + 1);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct audit_checkpoint *c = &v[cnt++];

		c->seq = (uint64_t)sqlite3_column_int64(st, 0);
		(void)blob(c->head_hash, sizeof(c->head_hash), st, 1);
		c->time_us = sqlite3_column_int64(st, 2);
		c->prev_sig_len = blob(c->prev_sig, sizeof(c->prev_sig), st, 3);
		c->sig_len = blob(c->sig, sizeof(c->sig), st, 4);
		text(c->key_id, sizeof(c->key_id), st, 5);
	}
	if (rc != SQLITE_DONE) {
		e = db_err(a->rdb, rc, "reading checkpoints");
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
	sqlite3_finalize(st);
	pthread_mutex_unlock(&a->rmu);
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
	sqlite3_close(a->rdb);
	sqlite3_close(a->wdb);
	pthread_mutex_destroy(&a->mu);
	pthread_mutex_destroy(&a->rmu);
	pthread_cond_destroy(&a->work_cv);
	pthread_cond_destroy(&a->done_cv);
	free(a->path);
	free(a);
}

/* ---- disaster recovery (backup.c) ---- */

enum kb_err
audit_snapshot(struct audit *a, const char *dest, struct audit_head *head)
{
	sqlite3 *d = NULL;
	sqlite3_stmt *st = NULL;
	enum kb_err e;

	memset(head, 0, sizeof(*head));
	pthread_mutex_lock(&a->rmu);
	e = store_sqlite_copy(a->rdb, dest, "snapshotting the audit log");
	pthread_mutex_unlock(&a->rmu);
	if (e != KB_OK)
		return e;
	/* The head as the copy has it (the live log has moved on). */
	if (sqlite3_open_v2(dest, &d, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK
	    || sqlite3_prepare_v2(d,
	           "SELECT (SELECT seq FROM events ORDER BY seq "
	           "DESC LIMIT 1), (SELECT hash FROM events ORDER BY seq DESC "
	           "LIMIT 1), "
	           "(SELECT max(seq) FROM checkpoints)",
	           -1, &st, NULL)
	        != SQLITE_OK
	    || sqlite3_step(st) != SQLITE_ROW) {
		e = db_err(
		    d, sqlite3_errcode(d), "reading the snapshot's head");
		goto out;
	}
	head->seq = (uint64_t)sqlite3_column_int64(st, 0);
	(void)blob(head->hash, sizeof(head->hash), st, 1);
	head->checkpoint_seq = (uint64_t)sqlite3_column_int64(st, 2);
	e = KB_OK;
out:
	sqlite3_finalize(st);
	sqlite3_close(d);
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
