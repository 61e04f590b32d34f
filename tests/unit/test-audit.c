/* SPDX-License-Identifier: Apache-2.0 */
/* test-audit.c: the audit log against a real SoftHSMv2 token and a SQLite
 * file, or, with KBT_PG_URL set (unit/test-audit-pg), a PostgreSQL
 * database: group commit, the hash chain, signed checkpoints, the verifier
 * catching an altered event, a deleted event and a truncated tail, and
 * noting state changes started without a recorded outcome; two brokers'
 * handles appending to one log at once (one chain, every event exactly
 * once), across a key rotation too; a log from before the database layer
 * (user_version 0) opening with every event intact. */
#include "harness.h"

#include <pthread.h>

#include <openssl/x509.h>

#include "audit.h"
#include "db.h"
#include "fingerprint.h"
#include "hsm.h"
#include "kb_time.h"

static struct hsm *h;
static EVP_PKEY *pub;
static char dir[256], dbpath[1024];
/* KBT_PG_URL: every log is in this database (emptied by each case). */
static const char *pg_url;

static int64_t
now(void)
{
	return kb_time_now_us();
}

static void
setup(void)
{
	struct hsm_config hc;
	char pin[512];
	uint8_t *der = NULL;
	const uint8_t *p;
	size_t len = 0;

	if (h != NULL)
		return;
	snprintf(dir, sizeof(dir), "%s", kbt_softhsm_setup("audit-test"));
	snprintf(pin, sizeof(pin), "%s/pin", dir);
	memset(&hc, 0, sizeof(hc));
	hc.token_uri = "pkcs11:token=audit-test";
	hc.pin_file = pin;
	hc.check_pin_mode = 1;
	hc.sessions = 4;
	if (hsm_open(&hc, &h) != KB_OK
	    || hsm_rsa_generate(h, "audit", 2048, HSM_USE_SIGN) != KB_OK
	    || hsm_public_key_der(h, "audit", &der, &len) != KB_OK) {
		fprintf(stderr, "token setup: %s\n", kb_err_msg(KB_ERR_HSM));
		exit(2);
	}
	p = der;
	pub = d2i_PUBKEY(NULL, &p, (long)len);
	free(der);
}

/* A database handle on the log under test (for the verifier and for
 * tampering), without the audit log's own code. */
static struct db *
db_raw(void)
{
	struct db_config dc;
	struct db *d = NULL;

	memset(&dc, 0, sizeof(dc));
	dc.target = dbpath;
	dc.conns = 2;
	if (db_open(&dc, &d) != KB_OK) {
		fprintf(stderr, "db_open %s: %s\n", dbpath,
		    kb_err_msg(KB_ERR_STORE));
		exit(2);
	}
	return d;
}

/* The log a case works on: a new SQLite file `name`, or the PostgreSQL
 * database emptied (as a new one). */
static void
fresh(const char *name)
{
	struct db *d;
	struct db_conn *c;

	setup();
	if (pg_url == NULL) {
		snprintf(dbpath, sizeof(dbpath), "%s/%s", dir, name);
		return;
	}
	snprintf(dbpath, sizeof(dbpath), "%s", pg_url);
	d = db_raw();
	c = db_conn_get(d);
	if (db_exec(c, "DROP SCHEMA public CASCADE; CREATE SCHEMA public",
	        "emptying the test database")
	    != KB_OK) {
		fprintf(stderr, "%s\n", kb_err_msg(KB_ERR_STORE));
		exit(2);
	}
	db_conn_put(d, c);
	db_close(d);
}

static enum kb_err
fingerprint(struct hsm *hh, const char *id, char fp[65])
{
	uint8_t *der = NULL;
	size_t len = 0;
	enum kb_err e;

	if ((e = hsm_public_key_der(hh, id, &der, &len)) != KB_OK)
		return e;
	e = fingerprint_spki(der, len, fp);
	free(der);
	return e;
}

static struct audit *
open_log_key(unsigned cp_events, const char *key)
{
	struct audit_config ac;
	struct audit *a = NULL;

	memset(&ac, 0, sizeof(ac));
	ac.path = dbpath;
	ac.hsm = h;
	ac.sign_key_id = key;
	ac.checkpoint_events = cp_events;
	ac.checkpoint_interval_s = 3600;
	ac.now_us = now;
	ac.key_fingerprint = fingerprint;
	if (audit_open(&ac, &a) != KB_OK) {
		fprintf(stderr, "audit_open: %s\n", kb_err_msg(KB_ERR_STORE));
		exit(2);
	}
	return a;
}

/* The log anchored in the token under `label`; the error of the open. */
static enum kb_err
open_anchored(const char *label, int accept_loss, struct audit **out)
{
	struct audit_config ac;

	memset(&ac, 0, sizeof(ac));
	ac.path = dbpath;
	ac.hsm = h;
	ac.sign_key_id = "audit";
	ac.checkpoint_events = 10;
	ac.checkpoint_interval_s = 3600;
	ac.now_us = now;
	ac.key_fingerprint = fingerprint;
	ac.anchor_label = label;
	ac.accept_loss = accept_loss;
	return audit_open(&ac, out);
}

static struct audit *
open_log(unsigned cp_events)
{
	return open_log_key(cp_events, "audit");
}

static void
append_tag(struct audit *a, const char *tag, int i)
{
	struct audit_record r;
	char reason[48];

	snprintf(reason, sizeof(reason), "%s %d", tag, i);
	memset(&r, 0, sizeof(r));
	r.actor = "alice";
	r.role = "admin";
	r.peer = "ipv4:127.0.0.1:1";
	r.method = "CreateEnvironment";
	r.tenant = "acme";
	r.env = "prod";
	r.result = "ok";
	r.reason = reason;
	r.request_id = "r-1";
	if (audit_append(a, &r, NULL) != KB_OK) {
		fprintf(stderr, "audit_append: %s\n", kb_err_msg(KB_ERR_STORE));
		exit(2);
	}
}

static void
append(struct audit *a, int i)
{
	append_tag(a, "event", i);
}

/* The audit keys a verifier knows by id (checkpoints name theirs), or
 * none: then checkpoints are checked with `pub` alone. */
struct vkey {
	const char *id;
	EVP_PKEY *pub;
	char fp[65];
};

static void
feed_checkpoint(struct kb_audit_verifier *v, struct db_stmt *cp, int by_id)
{
	struct kb_audit_checkpoint c;

	memset(&c, 0, sizeof(c));
	c.seq = (uint64_t)db_column_int64(cp, 0);
	memcpy(c.head_hash, db_column_blob(cp, 1), 32);
	c.time_us = db_column_int64(cp, 2);
	c.prev_sig = db_column_blob(cp, 3);
	c.prev_sig_len = db_column_bytes(cp, 3);
	c.sig = db_column_blob(cp, 4);
	c.sig_len = db_column_bytes(cp, 4);
	c.key_id = by_id ? db_column_text(cp, 5) : NULL;
	kb_audit_verifier_checkpoint(v, &c);
}

static const char *
txt(struct db_stmt *st, int i)
{
	const char *t = db_column_text(st, i);

	return t != NULL ? t : "";
}

/* Verify the log the way `kbctl audit verify` does: events and
 * checkpoints in log order. */
static void
verify_keys(struct kb_audit_result *res, const struct vkey *keys, int nkeys)
{
	struct kb_audit_verifier *v = NULL;
	struct db *d = db_raw();
	struct db_conn *c1 = db_conn_get(d), *c2 = db_conn_get(d);
	struct db_stmt *ev = NULL, *cp = NULL;
	int have_cp, i;

	if (db_prepare(c1,
	        "SELECT seq, time_us, actor, role, peer, method, "
	        "tenant_id, environment, key_id, result, reason, request_id, "
	        "hash FROM events ORDER BY seq",
	        &ev)
	        != KB_OK
	    || db_prepare(c2,
	           "SELECT seq, head_hash, time_us, prev_signature, "
	           "signature, key_id FROM checkpoints ORDER BY seq",
	           &cp)
	        != KB_OK) {
		fprintf(stderr, "verify: %s\n", kb_err_msg(KB_ERR_STORE));
		exit(2);
	}
	kb_audit_verifier_new(pub, &v);
	for (i = 0; i < nkeys; i++)
		kb_audit_verifier_add_key(
		    v, keys[i].id, keys[i].fp, keys[i].pub);
	have_cp = db_step(cp) == DB_ROW;
	while (db_step(ev) == DB_ROW) {
		struct kb_audit_event e = {
		    (uint64_t)db_column_int64(ev, 0),
		    db_column_int64(ev, 1),
		    txt(ev, 2),
		    txt(ev, 3),
		    txt(ev, 4),
		    txt(ev, 5),
		    txt(ev, 6),
		    txt(ev, 7),
		    txt(ev, 8),
		    txt(ev, 9),
		    txt(ev, 10),
		    txt(ev, 11),
		};
		kb_audit_verifier_event(
		    v, &e, db_column_blob(ev, 12), db_column_bytes(ev, 12));
		while (have_cp && (uint64_t)db_column_int64(cp, 0) <= e.seq) {
			feed_checkpoint(v, cp, nkeys > 0);
			have_cp = db_step(cp) == DB_ROW;
		}
	}
	while (have_cp) {
		feed_checkpoint(v, cp, nkeys > 0);
		have_cp = db_step(cp) == DB_ROW;
	}
	kb_audit_verifier_finish(v, res);
	kb_audit_verifier_free(v);
	db_reset(ev);
	db_reset(cp);
	db_conn_put(d, c1);
	db_conn_put(d, c2);
	db_close(d);
}

static void
verify(struct kb_audit_result *res)
{
	verify_keys(res, NULL, 0);
}

static void
tamper(const char *sql)
{
	struct db *d = db_raw();
	struct db_conn *c = db_conn_get(d);

	if (db_exec(c, sql, "tampering") != KB_OK)
		exit(2);
	db_conn_put(d, c);
	db_close(d);
}

/* One number from the log's database. */
static int64_t
scalar(const char *sql)
{
	struct db *d = db_raw();
	struct db_conn *c = db_conn_get(d);
	struct db_stmt *st = NULL;
	int64_t v = -1;

	if (db_prepare_dynamic(c, sql, &st) == KB_OK && db_step(st) == DB_ROW)
		v = db_column_int64(st, 0);
	db_finalize(st);
	db_conn_put(d, c);
	db_close(d);
	return v;
}

static void
test_chain_and_checkpoints(void)
{
	struct kb_audit_result res;
	struct audit_checkpoint *cps = NULL;
	struct audit_event *evs = NULL;
	struct audit_filter f;
	struct audit *a;
	size_t n = 0;
	int more = 0, i;

	fresh("chain.db");
	a = open_log(10);
	for (i = 0; i < 25; i++)
		append(a, i);
	KBT_ASSERT_INT(audit_last_seq(a), ==, 25);
	memset(&f, 0, sizeof(f));
	KBT_ASSERT_OK(audit_list(a, &f, 20, 100, &evs, &n, &more));
	KBT_ASSERT_INT(n, ==, 5);
	KBT_ASSERT_INT(evs[0].seq, ==, 21);
	KBT_ASSERT_STR(evs[0].reason, "event 20");
	free(evs);
	audit_close(a); /* final checkpoint at 25 */
	a = open_log(10);
	KBT_ASSERT_OK(audit_list_checkpoints(a, 0, 100, &cps, &n, &more));
	KBT_ASSERT_INT(n, ==, 3);
	KBT_ASSERT_INT(cps[0].seq, ==, 10);
	KBT_ASSERT_INT(cps[2].seq, ==, 25);
	free(cps);
	append(a, 25); /* the chain continues across restarts */
	audit_close(a);
	verify(&res);
	KBT_ASSERT(res.ok);
	KBT_ASSERT_INT(res.last_seq, ==, 26);
	KBT_ASSERT_INT(res.covered_seq, ==, 26);
	KBT_ASSERT_INT(res.unfinished, ==, 0);
}

static void
test_altered_event(void)
{
	struct kb_audit_result res;
	struct audit *a;
	int i;

	fresh("alter.db");
	a = open_log(10);
	for (i = 0; i < 30; i++)
		append(a, i);
	audit_close(a);
	tamper("UPDATE events SET actor = 'mallory' WHERE seq = 17");
	verify(&res);
	KBT_ASSERT(!res.ok);
	KBT_ASSERT_INT(res.first_bad_seq, ==, 17);
	KBT_ASSERT_CONTAINS(res.reason, "does not match its hash");
}

static void
test_deleted_event(void)
{
	struct kb_audit_result res;
	struct audit *a;
	int i;

	fresh("delete.db");
	a = open_log(10);
	for (i = 0; i < 30; i++)
		append(a, i);
	audit_close(a);
	tamper("DELETE FROM events WHERE seq = 12");
	verify(&res);
	KBT_ASSERT(!res.ok);
	KBT_ASSERT_INT(res.first_bad_seq, ==, 12);
	KBT_ASSERT_CONTAINS(res.reason, "missing");
}

static void
test_truncated_tail(void)
{
	struct kb_audit_result res;
	struct audit *a;
	int i;

	fresh("tail.db");
	a = open_log(1000);
	for (i = 0; i < 30; i++)
		append(a, i);
	audit_close(a); /* the shutdown checkpoint covers 30 */
	tamper("DELETE FROM events WHERE seq > 26");
	verify(&res);
	KBT_ASSERT(!res.ok);
	KBT_ASSERT_INT(res.first_bad_seq, ==, 27);
	KBT_ASSERT_CONTAINS(res.reason, "signed checkpoint at 30");
	/* A restarted log never reuses the covered numbers: the gap stays. */
	a = open_log(1000);
	append(a, 31);
	KBT_ASSERT_INT(audit_last_seq(a), ==, 31);
	audit_close(a);
	verify(&res);
	KBT_ASSERT(!res.ok);
	KBT_ASSERT_INT(res.first_bad_seq, ==, 27);
	KBT_ASSERT_CONTAINS(res.reason, "missing");
}

/* An event's columns, read out before the rows are rewritten. */
struct row {
	uint64_t seq;
	int64_t time_us;
	char f[10][64];
};

static void
test_rewritten_chain(void)
{
	struct kb_audit_result res;
	struct audit *a;
	struct row rows[20];
	int i, j, n = 0;

	/* An attacker who alters an event and recomputes every later hash
	 * still cannot forge the signed checkpoint. */
	fresh("rewrite.db");
	a = open_log(10);
	for (i = 0; i < 20; i++)
		append(a, i);
	audit_close(a);
	tamper("UPDATE events SET result = 'denied' WHERE seq = 5");
	{
		struct db *d = db_raw();
		struct db_conn *c = db_conn_get(d);
		struct db_stmt *st = NULL, *up = NULL;
		uint8_t prev[32] = {0}, hh[32];

		KBT_ASSERT_OK(db_prepare(c,
		    "SELECT seq, time_us, actor, role, peer, "
		    "method, tenant_id, environment, key_id, result, reason, "
		    "request_id FROM events ORDER BY seq",
		    &st));
		while (n < 20 && db_step(st) == DB_ROW) {
			rows[n].seq = (uint64_t)db_column_int64(st, 0);
			rows[n].time_us = db_column_int64(st, 1);
			for (j = 0; j < 10; j++)
				snprintf(rows[n].f[j], sizeof(rows[n].f[j]),
				    "%s", txt(st, 2 + j));
			n++;
		}
		db_reset(st);
		KBT_ASSERT_INT(n, ==, 20);
		KBT_ASSERT_OK(db_prepare(
		    c, "UPDATE events SET hash = ? WHERE seq = ?", &up));
		for (i = 0; i < n; i++) {
			struct kb_audit_event e = {rows[i].seq, rows[i].time_us,
			    rows[i].f[0], rows[i].f[1], rows[i].f[2],
			    rows[i].f[3], rows[i].f[4], rows[i].f[5],
			    rows[i].f[6], rows[i].f[7], rows[i].f[8],
			    rows[i].f[9]};

			kb_audit_event_hash(prev, &e, hh);
			memcpy(prev, hh, 32);
			db_reset(up);
			db_bind_blob(up, 1, hh, 32);
			db_bind_int64(up, 2, (int64_t)e.seq);
			KBT_ASSERT_INT(db_step(up), ==, DB_DONE);
		}
		db_conn_put(d, c);
		db_close(d);
	}
	verify(&res);
	KBT_ASSERT(!res.ok);
	KBT_ASSERT_INT(res.first_bad_seq, ==, 10);
	KBT_ASSERT_CONTAINS(res.reason, "do not match the signed checkpoint");
}

struct appender {
	struct audit *a;
	char tag[16];
	int n;
};

static void *
appender_main(void *p)
{
	struct appender *ap = p;
	int i;

	for (i = 0; i < ap->n; i++)
		append_tag(ap->a, ap->tag, i);
	return NULL;
}

static void
test_concurrent_group_commit(void)
{
	struct kb_audit_result res;
	struct appender ap;
	pthread_t th[8];
	struct audit *a;
	int i;

	fresh("group.db");
	a = open_log(500);
	ap.a = a;
	snprintf(ap.tag, sizeof(ap.tag), "event");
	ap.n = 100;
	for (i = 0; i < 8; i++)
		pthread_create(&th[i], NULL, appender_main, &ap);
	for (i = 0; i < 8; i++)
		pthread_join(th[i], NULL);
	KBT_ASSERT_INT(audit_last_seq(a), ==, 800);
	audit_close(a);
	verify(&res);
	KBT_ASSERT(res.ok);
	KBT_ASSERT_INT(res.events, ==, 800);
	KBT_ASSERT_INT(res.covered_seq, ==, 800);
}

#define TWO_THREADS 4 /* per broker */
#define TWO_EVENTS 150 /* per thread */

/* Every appended event is in the log exactly once: "<b><t> <i>" for
 * broker b (A, B), thread t, event i, numbered 1..total with no gap. */
static int
events_once(int total)
{
	struct db *d = db_raw();
	struct db_conn *c = db_conn_get(d);
	struct db_stmt *st = NULL;
	static unsigned char seen[2][TWO_THREADS][TWO_EVENTS];
	uint64_t want = 1;
	int bad = 0, n = 0;

	memset(seen, 0, sizeof(seen));
	if (db_prepare(c, "SELECT seq, reason FROM events ORDER BY seq", &st)
	    != KB_OK)
		exit(2);
	while (db_step(st) == DB_ROW) {
		const char *r = txt(st, 1);
		int t, i;
		char b;

		if ((uint64_t)db_column_int64(st, 0) != want++) {
			fprintf(stderr, "  seq %lld where %llu was due\n",
			    (long long)db_column_int64(st, 0),
			    (unsigned long long)want - 1);
			bad++;
		}
		if (sscanf(r, "%c%d %d", &b, &t, &i) != 3
		    || (b != 'A' && b != 'B') || t < 0 || t >= TWO_THREADS
		    || i < 0 || i >= TWO_EVENTS || seen[b - 'A'][t][i]++) {
			fprintf(stderr,
			    "  unexpected or repeated event \"%s\"\n", r);
			bad++;
		}
		n++;
	}
	db_reset(st);
	db_conn_put(d, c);
	db_close(d);
	if (n != total) {
		fprintf(stderr, "  %d events, %d appended\n", n, total);
		bad++;
	}
	return bad;
}

/* Two brokers on one log (one database, two audit handles, each with its
 * own writer and pool), appending from several threads each at once:
 * their events form one chain, every one exactly once, and the
 * checkpoints both sign chain on one another, one per seq. */
static void
test_two_brokers(void)
{
	struct kb_audit_result res;
	struct appender ap[2][TWO_THREADS];
	pthread_t th[2][TWO_THREADS];
	struct audit *a[2];
	int b, t, total = 2 * TWO_THREADS * TWO_EVENTS;

	fresh("two.db");
	a[0] = open_log(25);
	a[1] = open_log(25);
	for (b = 0; b < 2; b++)
		for (t = 0; t < TWO_THREADS; t++) {
			ap[b][t].a = a[b];
			snprintf(ap[b][t].tag, sizeof(ap[b][t].tag), "%c%d",
			    'A' + b, t);
			ap[b][t].n = TWO_EVENTS;
			pthread_create(
			    &th[b][t], NULL, appender_main, &ap[b][t]);
		}
	for (t = 0; t < TWO_THREADS; t++)
		for (b = 0; b < 2; b++)
			pthread_join(th[b][t], NULL);
	/* Each broker's copy of the head is behind the database's or at it,
	 * never past it. */
	KBT_ASSERT_INT(audit_last_seq(a[0]), <=, total);
	KBT_ASSERT_INT(audit_last_seq(a[1]), <=, total);
	KBT_ASSERT(audit_last_seq(a[0]) == (uint64_t)total
	    || audit_last_seq(a[1]) == (uint64_t)total);
	audit_close(a[0]);
	audit_close(a[1]);
	KBT_ASSERT_INT(events_once(total), ==, 0);
	/* On PostgreSQL the brokers' events interleave (the lock is granted
	 * in turn), not one broker's run, then the other's. SQLite's busy
	 * wait is not fair: there they may come in long runs. */
	KBT_ASSERT_INT(scalar("SELECT count(*) FROM events e JOIN events f ON "
	                      "f.seq = e.seq + 1 WHERE substr(e.reason, 1, 1) "
	                      "!= substr(f.reason, 1, 1)"),
	    >=, pg_url != NULL ? 10 : 1);
	KBT_ASSERT_INT(scalar("SELECT max(seq) FROM checkpoints"), ==, total);
	verify(&res);
	if (!res.ok)
		fprintf(stderr, "  verify: seq %llu: %s\n",
		    (unsigned long long)res.first_bad_seq, res.reason);
	KBT_ASSERT(res.ok);
	KBT_ASSERT_INT(res.events, ==, total);
	KBT_ASSERT_INT(res.last_seq, ==, total);
	KBT_ASSERT_INT(res.covered_seq, ==, total);
	/* Every 25 events or more (a group commit may pass 25 at once). */
	KBT_ASSERT_INT(res.checkpoints, >=, total / 50);
}

static int
key_load(struct vkey *k, const char *id)
{
	uint8_t *der = NULL;
	const uint8_t *p;
	size_t len = 0;

	k->id = id;
	if (hsm_public_key_der(h, id, &der, &len) != KB_OK
	    || fingerprint_spki(der, len, k->fp) != KB_OK) {
		free(der);
		return -1;
	}
	p = der;
	k->pub = d2i_PUBKEY(NULL, &p, (long)len);
	free(der);
	return k->pub != NULL ? 0 : -1;
}

/* The key rotates on one broker while both append: the other signs with
 * the key the log has in force (read in its checkpoint transaction), so
 * the chain of keys verifies: rot-a, then rot-b after a checkpoint signed
 * by rot-a covers the rotation. */
static void
test_two_brokers_rotate(void)
{
	struct kb_audit_result res;
	struct appender ap[2];
	pthread_t th[2];
	struct vkey keys[2];
	struct audit *a[2];
	char cur[KB_AUDIT_KEY_ID_MAX];
	int b, i;

	fresh("rotate.db");
	KBT_ASSERT_OK(hsm_rsa_generate(h, "rot-a", 2048, HSM_USE_SIGN));
	KBT_ASSERT_OK(hsm_rsa_generate(h, "rot-b", 2048, HSM_USE_SIGN));
	KBT_ASSERT(key_load(&keys[0], "rot-a") == 0);
	KBT_ASSERT(key_load(&keys[1], "rot-b") == 0);
	a[0] = open_log_key(7, "rot-a");
	a[1] = open_log_key(7, "rot-a");
	for (b = 0; b < 2; b++) {
		ap[b].a = a[b];
		snprintf(ap[b].tag, sizeof(ap[b].tag), "%c0", 'A' + b);
		ap[b].n = TWO_EVENTS;
		pthread_create(&th[b], NULL, appender_main, &ap[b]);
	}
	for (i = 0; i < 20; i++)
		append_tag(a[0], "setup", i);
	KBT_ASSERT_OK(audit_rotate_key(a[0], "rot-b"));
	audit_signing_key(a[0], cur);
	KBT_ASSERT_STR(cur, "rot-b");
	/* The other broker told to rotate to the same key (as a second
	 * broker's operator might), most likely before it has seen the
	 * hand-over: the log has it, nothing more is recorded, and it
	 * returns once it signs with the new key. */
	KBT_ASSERT_OK(audit_rotate_key(a[1], "rot-b"));
	audit_signing_key(a[1], cur);
	KBT_ASSERT_STR(cur, "rot-b");
	for (b = 0; b < 2; b++)
		pthread_join(th[b], NULL);
	audit_close(a[0]);
	audit_close(a[1]);
	KBT_ASSERT_INT(scalar("SELECT count(*) FROM events WHERE method = "
	                      "'audit.key_rotated'"),
	    ==, 1);
	KBT_ASSERT_INT(scalar("SELECT count(*) FROM checkpoints WHERE key_id "
	                      "= 'rot-b' AND seq < (SELECT seq FROM events "
	                      "WHERE method = 'audit.key_rotated')"),
	    ==, 0);
	KBT_ASSERT_INT(scalar("SELECT count(*) FROM checkpoints c WHERE key_id "
	                      "= 'rot-a' AND seq > (SELECT min(seq) FROM "
	                      "checkpoints WHERE seq >= (SELECT seq FROM "
	                      "events WHERE method = 'audit.key_rotated'))"),
	    ==, 0);
	verify_keys(&res, keys, 2);
	if (!res.ok)
		fprintf(stderr, "  verify: seq %llu: %s\n",
		    (unsigned long long)res.first_bad_seq, res.reason);
	KBT_ASSERT(res.ok);
	KBT_ASSERT_INT(res.rotations, ==, 1);
	KBT_ASSERT_INT(res.events, ==, 2 * TWO_EVENTS + 20 + 1);
	for (i = 0; i < 2; i++)
		EVP_PKEY_free(keys[i].pub);
}

/* A log written before the database layer: the same tables, made with
 * CREATE TABLE IF NOT EXISTS, and PRAGMA user_version 0. It opens as
 * schema 1 with every event and checkpoint as they were, and the chain
 * goes on from them. */
static void
test_unversioned_file(void)
{
	struct kb_audit_result res;
	struct audit *a;
	int i;

	if (pg_url != NULL)
		return; /* no release kept its log in PostgreSQL */
	fresh("old.db");
	a = open_log(10);
	for (i = 0; i < 15; i++)
		append(a, i);
	audit_close(a);
	tamper("PRAGMA user_version = 0");
	KBT_ASSERT_INT(scalar("PRAGMA user_version"), ==, 0);
	a = open_log(10);
	KBT_ASSERT_INT(audit_last_seq(a), ==, 15);
	append(a, 15);
	audit_close(a);
	KBT_ASSERT_INT(scalar("PRAGMA user_version"), ==, 1);
	KBT_ASSERT_INT(scalar("SELECT count(*) FROM events"), ==, 16);
	verify(&res);
	KBT_ASSERT(res.ok);
	KBT_ASSERT_INT(res.last_seq, ==, 16);
	KBT_ASSERT_INT(res.covered_seq, ==, 16);
}

/* A log made up here and fed straight to a verifier, each event chained to
 * the one before (no checkpoints: no token needed). */
struct chain {
	struct kb_audit_verifier *v;
	uint8_t prev[KB_AUDIT_HASH_LEN];
	uint64_t seq;
};

static void
chain_start(struct chain *c)
{
	memset(c, 0, sizeof(*c));
	if (kb_audit_verifier_new(NULL, &c->v) != KB_OK)
		exit(2);
	/* These chains have no checkpoints: only the calls are looked at. */
	kb_audit_verifier_allow_unsigned(c->v);
}

/* An event by the broker itself (role "system") or by admin "alice". */
static void
chain_add(struct chain *c, const char *role, const char *method,
    const char *tenant, const char *result, const char *request_id)
{
	struct kb_audit_event e;
	uint8_t h[KB_AUDIT_HASH_LEN];
	int sys = strcmp(role, "system") == 0;

	memset(&e, 0, sizeof(e));
	e.seq = ++c->seq;
	e.time_us = 1700000000000000LL + (int64_t)e.seq;
	e.actor = sys ? "keybroker" : "alice";
	e.role = role;
	e.peer = sys ? "" : "ipv4:127.0.0.1:1";
	e.method = method;
	e.tenant = tenant;
	e.env = strcmp(method, "ApplyKey") == 0 ? "prod" : "";
	e.result = result;
	e.reason = "";
	e.request_id = request_id;
	if (kb_audit_event_hash(c->prev, &e, h) != KB_OK)
		exit(2);
	kb_audit_verifier_event(c->v, &e, h, sizeof(h));
	memcpy(c->prev, h, sizeof(h));
}

static void
chain_finish(struct chain *c, struct kb_audit_result *res)
{
	kb_audit_verifier_finish(c->v, res);
	kb_audit_verifier_free(c->v);
	c->v = NULL;
}

static void
test_unfinished_none(void)
{
	struct kb_audit_result res;
	struct chain c;

	/* Every started call has its outcome; reads and GetDataKey are
	 * recorded once; the broker's own events carry no "started". */
	chain_start(&c);
	chain_add(&c, "system", "broker.start", "", "ok", "sys-1");
	chain_add(&c, "admin", "LockTenant", "acme", "started", "r-1");
	chain_add(&c, "admin", "LockTenant", "acme", "ok", "r-1");
	chain_add(&c, "service", "GetDataKey", "acme", "ok", "r-2");
	chain_add(&c, "admin", "CreateTenant", "Acme", "started", "r-3");
	chain_add(&c, "admin", "ApplyKey", "acme", "started", "r-4");
	chain_add(&c, "admin", "CreateTenant", "Acme", "error", "r-3");
	chain_add(&c, "system", "job.activate.start", "acme", "ok", "sys-2");
	chain_add(&c, "admin", "ApplyKey", "acme", "denied", "r-4");
	chain_add(&c, "admin", "ListTenants", "", "denied", "r-5");
	chain_add(&c, "system", "broker.stop", "", "ok", "sys-3");
	chain_finish(&c, &res);
	KBT_ASSERT(res.ok);
	KBT_ASSERT_INT(res.events, ==, 11);
	KBT_ASSERT_INT(res.unfinished, ==, 0);
	KBT_ASSERT_INT(res.unfinished_interrupted, ==, 0);
	KBT_ASSERT_INT(res.unfinished_overflow, ==, 0);
	KBT_ASSERT_INT(res.unfinished_shown, ==, 0);
}

static void
test_unfinished_started(void)
{
	struct kb_audit_result res;
	struct chain c;

	chain_start(&c);
	chain_add(&c, "system", "broker.start", "", "ok", "sys-1");
	chain_add(&c, "admin", "LockTenant", "acme", "started", "r-1");
	chain_add(&c, "service", "GetDataKey", "acme", "ok", "r-2");
	/* An outcome must name the same method and request id. */
	chain_add(&c, "admin", "UnlockTenant", "acme", "ok", "r-1");
	chain_add(&c, "admin", "ApplyKey", "acme", "started", "r-3");
	chain_add(&c, "admin", "ApplyKey", "acme", "ok", "r-3");
	/* Only the broker's own broker.start is a restart. */
	chain_add(&c, "admin", "broker.start", "", "error", "r-4");
	chain_finish(&c, &res);
	KBT_ASSERT(res.ok);
	KBT_ASSERT_INT(res.unfinished, ==, 1);
	KBT_ASSERT_INT(res.unfinished_interrupted, ==, 0);
	KBT_ASSERT_INT(res.unfinished_shown, ==, 1);
	KBT_ASSERT_INT(res.unfinished_first[0].seq, ==, 2);
	KBT_ASSERT_INT(res.unfinished_first[0].interrupted, ==, 0);
	KBT_ASSERT_STR(res.unfinished_first[0].method, "LockTenant");
	KBT_ASSERT_STR(res.unfinished_first[0].tenant, "acme");
	KBT_ASSERT_STR(res.unfinished_first[0].env, "");
	KBT_ASSERT_STR(res.unfinished_first[0].actor, "alice");
	KBT_ASSERT_STR(res.unfinished_first[0].request_id, "r-1");
}

static void
test_unfinished_restart(void)
{
	struct kb_audit_result res;
	struct chain c;

	/* Killed mid-call: no outcome, no broker.stop, then a new broker. A
	 * call started after that restart and not finished by the end of the
	 * log may still be running. */
	chain_start(&c);
	chain_add(&c, "system", "broker.start", "", "ok", "sys-1");
	chain_add(&c, "admin", "ApplyKey", "acme", "started", "r-1");
	chain_add(&c, "system", "broker.start", "", "ok", "sys-2");
	chain_add(&c, "admin", "ApplyKey", "acme", "ok", "r-1");
	chain_add(&c, "admin", "UnlockTenant", "acme", "started", "r-2");
	chain_finish(&c, &res);
	KBT_ASSERT(res.ok);
	KBT_ASSERT_INT(res.unfinished, ==, 2);
	KBT_ASSERT_INT(res.unfinished_interrupted, ==, 1);
	KBT_ASSERT_INT(res.unfinished_shown, ==, 2);
	KBT_ASSERT_INT(res.unfinished_first[0].seq, ==, 2);
	KBT_ASSERT_STR(res.unfinished_first[0].method, "ApplyKey");
	KBT_ASSERT_STR(res.unfinished_first[0].env, "prod");
	KBT_ASSERT_INT(res.unfinished_first[0].interrupted, ==, 1);
	KBT_ASSERT_INT(res.unfinished_first[1].seq, ==, 5);
	KBT_ASSERT_STR(res.unfinished_first[1].request_id, "r-2");
	KBT_ASSERT_INT(res.unfinished_first[1].interrupted, ==, 0);
}

static void
test_unfinished_two_brokers(void)
{
	struct kb_audit_result res;
	struct chain c;

	/* Two brokers on one log (instances aaaa0001 and bbbb0002; an
	 * instance is the same across restarts): B's restart cuts short only
	 * B's calls; A's call in flight meanwhile gets its outcome later and
	 * is not unfinished. */
	chain_start(&c);
	chain_add(&c, "system", "broker.start", "", "ok", "sys-aaaa0001-1");
	chain_add(&c, "system", "broker.start", "", "ok", "sys-bbbb0002-2");
	chain_add(
	    &c, "admin", "ApplyKey", "acme", "started", "r-aaaa000100000007");
	chain_add(
	    &c, "admin", "LockTenant", "acme", "started", "r-bbbb000200000003");
	chain_add(&c, "system", "broker.start", "", "ok", "sys-bbbb0002-3");
	chain_add(&c, "admin", "ApplyKey", "acme", "ok", "r-aaaa000100000007");
	chain_add(&c, "admin", "UnlockTenant", "acme", "started",
	    "r-bbbb000200000009");
	chain_finish(&c, &res);
	KBT_ASSERT(res.ok);
	KBT_ASSERT_INT(res.unfinished, ==, 2);
	KBT_ASSERT_INT(res.unfinished_interrupted, ==, 1);
	KBT_ASSERT_INT(res.unfinished_shown, ==, 2);
	KBT_ASSERT_STR(
	    res.unfinished_first[0].request_id, "r-bbbb000200000003");
	KBT_ASSERT_INT(res.unfinished_first[0].interrupted, ==, 1);
	KBT_ASSERT_STR(
	    res.unfinished_first[1].request_id, "r-bbbb000200000009");
	KBT_ASSERT_INT(res.unfinished_first[1].interrupted, ==, 0);
}

static void
test_unfinished_audit_outage(void)
{
	struct kb_audit_result res;
	struct chain c;

	/* Broker B's audit log could not write for a while: its LockTenant's
	 * outcome was lost, and B's audit.recovered says so; A's call in
	 * flight is not B's. A B call started after the recovery may still
	 * run; an audit.recovered without an instance (older broker) or not
	 * by the system cuts nothing short. */
	chain_start(&c);
	chain_add(&c, "system", "broker.start", "", "ok", "sys-aaaa0001-1");
	chain_add(&c, "system", "broker.start", "", "ok", "sys-bbbb0002-2");
	chain_add(
	    &c, "admin", "ApplyKey", "acme", "started", "r-aaaa000100000007");
	chain_add(
	    &c, "admin", "LockTenant", "acme", "started", "r-bbbb000200000003");
	chain_add(&c, "admin", "audit.recovered", "", "ok", "sys-bbbb0002-4");
	chain_add(&c, "system", "audit.recovered", "", "ok", "sys-5");
	chain_add(
	    &c, "admin", "ApplyKey", "acme", "started", "r-bbbb000200000004");
	chain_add(&c, "system", "audit.recovered", "", "ok", "sys-bbbb0002-6");
	chain_add(&c, "admin", "ApplyKey", "acme", "ok", "r-aaaa000100000007");
	chain_add(&c, "admin", "UnlockTenant", "acme", "started",
	    "r-bbbb000200000009");
	chain_finish(&c, &res);
	KBT_ASSERT(res.ok);
	KBT_ASSERT_INT(res.unfinished, ==, 3);
	KBT_ASSERT_INT(res.unfinished_interrupted, ==, 2);
	KBT_ASSERT_INT(res.unfinished_shown, ==, 3);
	KBT_ASSERT_STR(
	    res.unfinished_first[0].request_id, "r-bbbb000200000003");
	KBT_ASSERT_INT(
	    res.unfinished_first[0].interrupted, ==, KB_AUDIT_CUT_AUDIT_OUTAGE);
	KBT_ASSERT_STR(
	    res.unfinished_first[1].request_id, "r-bbbb000200000004");
	KBT_ASSERT_INT(
	    res.unfinished_first[1].interrupted, ==, KB_AUDIT_CUT_AUDIT_OUTAGE);
	KBT_ASSERT_STR(
	    res.unfinished_first[2].request_id, "r-bbbb000200000009");
	KBT_ASSERT_INT(res.unfinished_first[2].interrupted, ==, 0);
	/* A restart after an outage keeps the first reason. */
	chain_start(&c);
	chain_add(&c, "system", "broker.start", "", "ok", "sys-bbbb0002-1");
	chain_add(
	    &c, "admin", "LockTenant", "acme", "started", "r-bbbb000200000003");
	chain_add(&c, "system", "audit.recovered", "", "ok", "sys-bbbb0002-4");
	chain_add(&c, "system", "broker.start", "", "ok", "sys-bbbb0002-5");
	chain_finish(&c, &res);
	KBT_ASSERT(res.ok);
	KBT_ASSERT_INT(res.unfinished, ==, 1);
	KBT_ASSERT_INT(
	    res.unfinished_first[0].interrupted, ==, KB_AUDIT_CUT_AUDIT_OUTAGE);
}

static void
test_unfinished_bounded(void)
{
	struct kb_audit_result res;
	struct chain c;
	char rid[32];
	int i, n = 3 * KB_AUDIT_PENDING_MAX;

	/* More calls waiting than are kept: the oldest are counted at once,
	 * none is lost, and later pairs still match. */
	chain_start(&c);
	chain_add(&c, "system", "broker.start", "", "ok", "sys-1");
	for (i = 0; i < n; i++) {
		snprintf(rid, sizeof(rid), "r-lost-%d", i);
		chain_add(&c, "admin", "LockTenant", "acme", "started", rid);
		if (i % 7 == 0) {
			snprintf(rid, sizeof(rid), "r-pair-%d", i);
			chain_add(
			    &c, "admin", "CreateTenant", "t", "started", rid);
			chain_add(&c, "admin", "CreateTenant", "t", "ok", rid);
		}
	}
	chain_add(&c, "admin", "ApplyKey", "acme", "started", "r-last");
	for (i = 0; i < 100; i++)
		chain_add(&c, "service", "GetDataKey", "acme", "ok", "r-read");
	chain_add(&c, "admin", "ApplyKey", "acme", "ok", "r-last");
	chain_add(&c, "system", "broker.start", "", "ok", "sys-2");
	chain_finish(&c, &res);
	KBT_ASSERT(res.ok);
	KBT_ASSERT_INT(res.unfinished, ==, n);
	KBT_ASSERT_INT(res.unfinished_interrupted, ==, n);
	KBT_ASSERT_INT(res.unfinished_overflow, >=, n - KB_AUDIT_PENDING_MAX);
	KBT_ASSERT_INT(res.unfinished_overflow, <, n);
	KBT_ASSERT_INT(res.unfinished_shown, ==, KB_AUDIT_UNFINISHED_SHOWN);
	KBT_ASSERT_INT(res.unfinished_first[0].seq, ==, 2);
	KBT_ASSERT_STR(res.unfinished_first[0].request_id, "r-lost-0");
	KBT_ASSERT_STR(res.unfinished_first[1].request_id, "r-lost-1");
	KBT_ASSERT_STR(
	    res.unfinished_first[KB_AUDIT_UNFINISHED_SHOWN - 1].request_id,
	    "r-lost-9");
	for (i = 0; i < KB_AUDIT_UNFINISHED_SHOWN; i++)
		KBT_ASSERT_INT(res.unfinished_first[i].interrupted, ==, 1);
}

static void
test_unfinished_long_fields(void)
{
	struct kb_audit_result res;
	struct chain c;
	char tenant[200];

	/* Fields are cut to fit, not in the middle of a character. */
	memset(tenant, 'a', sizeof(tenant));
	memcpy(tenant + 62, "\xc3\xa9", 2); /* bytes 63 and 64 of it */
	tenant[sizeof(tenant) - 1] = '\0';
	chain_start(&c);
	chain_add(&c, "admin", "LockTenant", tenant, "started", "r-1");
	chain_finish(&c, &res);
	KBT_ASSERT_INT(res.unfinished, ==, 1);
	KBT_ASSERT_INT(strlen(res.unfinished_first[0].tenant), ==, 62);
	KBT_ASSERT_INT(res.unfinished_first[0].tenant[61], ==, 'a');
}

/* The anchor in the token: two brokers move it forward only; a restart
 * verifies the log from it; a lost tail is refused, then accepted with
 * accept_loss, which records the loss and numbers on after the anchor. */
static void
test_anchor(void)
{
	struct kb_audit_result res;
	struct audit *a = NULL, *b = NULL;
	uint64_t an = 0;
	int i;

	fresh("anchor.db");
	KBT_ASSERT_OK(open_anchored("kb:test-anchor", 0, &a));
	KBT_ASSERT_OK(open_anchored("kb:test-anchor", 0, &b));
	for (i = 0; i < 45; i++)
		append(i % 2 ? a : b, i);
	audit_close(a);
	audit_close(b); /* the last checkpoint: 45 */
	KBT_ASSERT_OK(audit_anchor_seq(h, "kb:test-anchor", &an));
	KBT_ASSERT_INT(an, ==, 45);
	KBT_ASSERT_OK(open_anchored("kb:test-anchor", 0, &a));
	append(a, 45);
	audit_close(a);
	KBT_ASSERT_OK(audit_anchor_seq(h, "kb:test-anchor", &an));
	KBT_ASSERT_INT(an, ==, 46);
	tamper("DELETE FROM events WHERE seq > 43");
	tamper("DELETE FROM checkpoints WHERE seq > 43");
	a = NULL;
	KBT_ASSERT_ERR(open_anchored("kb:test-anchor", 0, &a), KB_ERR_CORRUPT);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CORRUPT),
	    "events 44 to 46 are missing: the token's anchor says the log "
	    "reached 46");
	KBT_ASSERT_OK(open_anchored("kb:test-anchor", 1, &a));
	append(a, 47);
	KBT_ASSERT_INT(audit_last_seq(a), ==, 48);
	audit_close(a);
	KBT_ASSERT_INT(scalar("SELECT seq FROM events WHERE method = "
	                      "'audit.loss_accepted'"),
	    ==, 47);
	KBT_ASSERT_OK(audit_anchor_seq(h, "kb:test-anchor", &an));
	KBT_ASSERT_INT(an, ==, 48);
	verify(&res);
	KBT_ASSERT(!res.ok);
	KBT_ASSERT_INT(res.first_bad_seq, ==, 44);
	/* ... and the next start accepts the log from the moved anchor. */
	KBT_ASSERT_OK(open_anchored("kb:test-anchor", 0, &a));
	audit_close(a);
	/* Events and checkpoints the anchor did not follow (a log opened
	 * without it): the start walks them all, and finds an edit among
	 * them. */
	a = open_log(10);
	for (i = 0; i < 25; i++)
		append(a, 100 + i);
	audit_close(a);
	KBT_ASSERT_OK(open_anchored("kb:test-anchor", 0, &a));
	audit_close(a);
	tamper("UPDATE events SET reason = 'edited' WHERE seq = 70");
	a = NULL;
	KBT_ASSERT_ERR(open_anchored("kb:test-anchor", 0, &a), KB_ERR_CORRUPT);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_CORRUPT), "event 70 does not match its hash");
}

/* The online copy a backup takes (SQLite), and its head read back from
 * the copy; on PostgreSQL the log is backed up with the database. */
static void
test_snapshot(void)
{
	struct audit_head hd;
	struct audit *a;
	char dest[300];
	int i;

	fresh("snap.db");
	a = open_log(10);
	for (i = 0; i < 12; i++)
		append(a, i);
	snprintf(dest, sizeof(dest), "%s/snap-copy.db", dir);
	if (pg_url != NULL) {
		KBT_ASSERT_ERR(
		    audit_snapshot(a, dest, &hd), KB_ERR_FAILED_PRECONDITION);
		audit_close(a);
		return;
	}
	KBT_ASSERT_OK(audit_snapshot(a, dest, &hd));
	append(a, 12);
	audit_close(a);
	KBT_ASSERT_INT(hd.seq, ==, 12);
	KBT_ASSERT_INT(hd.checkpoint_seq, ==, 10);
	snprintf(dbpath, sizeof(dbpath), "%s", dest);
	KBT_ASSERT_INT(scalar("SELECT count(*) FROM events"), ==, 12);
	KBT_ASSERT_INT(scalar("PRAGMA user_version"), ==, 1);
}

static const struct kbt_case cases[] = {
    {"/audit/chain-and-checkpoints", test_chain_and_checkpoints},
    {"/audit/altered-event", test_altered_event},
    {"/audit/deleted-event", test_deleted_event},
    {"/audit/truncated-tail", test_truncated_tail},
    {"/audit/rewritten-chain", test_rewritten_chain},
    {"/audit/concurrent-group-commit", test_concurrent_group_commit},
    {"/audit/two-brokers", test_two_brokers},
    {"/audit/two-brokers-rotate", test_two_brokers_rotate},
    {"/audit/unversioned-file", test_unversioned_file},
    {"/audit/anchor", test_anchor}, {"/audit/snapshot", test_snapshot},
    {"/audit/unfinished-none", test_unfinished_none},
    {"/audit/unfinished-started", test_unfinished_started},
    {"/audit/unfinished-restart", test_unfinished_restart},
    {"/audit/unfinished-two-brokers", test_unfinished_two_brokers},
    {"/audit/unfinished-audit-outage", test_unfinished_audit_outage},
    {"/audit/unfinished-bounded", test_unfinished_bounded},
    {"/audit/unfinished-long-fields", test_unfinished_long_fields},
    {NULL, NULL}};

int
main(int argc, char **argv)
{
	int r;

	pg_url = getenv("KBT_PG_URL");
	if (pg_url != NULL && pg_url[0] == '\0')
		pg_url = NULL;
	if (pg_url != NULL)
		printf("# PostgreSQL pass: %s\n", pg_url);
	r = kbt_run(cases, argc, argv);
	hsm_close(h);
	EVP_PKEY_free(pub);
	if (dir[0] != '\0')
		kbt_rmtree(dir);
	return r;
}
