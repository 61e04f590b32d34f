/* SPDX-License-Identifier: Apache-2.0 */
/* test-audit.c: the audit log against a real SoftHSMv2 token and SQLite
 * file: group commit, the hash chain, signed checkpoints, and the verifier
 * catching an altered event, a deleted event and a truncated tail, and
 * noting state changes started without a recorded outcome. */
#include "harness.h"

#include <pthread.h>
#include <sqlite3.h>

#include <openssl/x509.h>

#include "audit.h"
#include "hsm.h"
#include "kb_time.h"

static struct hsm *h;
static EVP_PKEY *pub;
static char dir[256], dbpath[512];

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

static struct audit *
open_log(const char *name, unsigned cp_events)
{
	struct audit_config ac;
	struct audit *a = NULL;

	snprintf(dbpath, sizeof(dbpath), "%s/%s", dir, name);
	memset(&ac, 0, sizeof(ac));
	ac.path = dbpath;
	ac.hsm = h;
	ac.sign_key_id = "audit";
	ac.checkpoint_events = cp_events;
	ac.checkpoint_interval_s = 3600;
	ac.now_us = now;
	if (audit_open(&ac, &a) != KB_OK) {
		fprintf(stderr, "audit_open: %s\n", kb_err_msg(KB_ERR_STORE));
		exit(2);
	}
	return a;
}

static void
append(struct audit *a, int i)
{
	struct audit_record r;
	char reason[32];

	snprintf(reason, sizeof(reason), "event %d", i);
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
	if (audit_append(a, &r, NULL) != KB_OK)
		exit(2);
}

static void
feed_checkpoint(struct kb_audit_verifier *v, sqlite3_stmt *cp)
{
	struct kb_audit_checkpoint c;

	memset(&c, 0, sizeof(c));
	c.seq = (uint64_t)sqlite3_column_int64(cp, 0);
	memcpy(c.head_hash, sqlite3_column_blob(cp, 1), 32);
	c.time_us = sqlite3_column_int64(cp, 2);
	c.prev_sig = sqlite3_column_blob(cp, 3);
	c.prev_sig_len = (size_t)sqlite3_column_bytes(cp, 3);
	c.sig = sqlite3_column_blob(cp, 4);
	c.sig_len = (size_t)sqlite3_column_bytes(cp, 4);
	kb_audit_verifier_checkpoint(v, &c);
}

/* Verify the database file the way `kbctl audit verify` does: events and
 * checkpoints in log order. */
static void
verify_file(const char *path, struct kb_audit_result *res)
{
	struct kb_audit_verifier *v = NULL;
	sqlite3 *db;
	sqlite3_stmt *ev, *cp;
	int have_cp;

	sqlite3_open(path, &db);
	sqlite3_prepare_v2(db,
	    "SELECT seq, time_us, actor, role, peer, method, "
	    "tenant_id, environment, key_id, result, reason, request_id, hash "
	    "FROM events ORDER BY seq",
	    -1, &ev, NULL);
	sqlite3_prepare_v2(db,
	    "SELECT seq, head_hash, time_us, prev_signature, "
	    "signature FROM checkpoints ORDER BY seq",
	    -1, &cp, NULL);
	kb_audit_verifier_new(pub, &v);
	have_cp = sqlite3_step(cp) == SQLITE_ROW;
	while (sqlite3_step(ev) == SQLITE_ROW) {
		struct kb_audit_event e = {
		    (uint64_t)sqlite3_column_int64(ev, 0),
		    sqlite3_column_int64(ev, 1),
		    (const char *)sqlite3_column_text(ev, 2),
		    (const char *)sqlite3_column_text(ev, 3),
		    (const char *)sqlite3_column_text(ev, 4),
		    (const char *)sqlite3_column_text(ev, 5),
		    (const char *)sqlite3_column_text(ev, 6),
		    (const char *)sqlite3_column_text(ev, 7),
		    (const char *)sqlite3_column_text(ev, 8),
		    (const char *)sqlite3_column_text(ev, 9),
		    (const char *)sqlite3_column_text(ev, 10),
		    (const char *)sqlite3_column_text(ev, 11),
		};
		kb_audit_verifier_event(v, &e, sqlite3_column_blob(ev, 12),
		    (size_t)sqlite3_column_bytes(ev, 12));
		while (
		    have_cp && (uint64_t)sqlite3_column_int64(cp, 0) <= e.seq) {
			feed_checkpoint(v, cp);
			have_cp = sqlite3_step(cp) == SQLITE_ROW;
		}
	}
	while (have_cp) {
		feed_checkpoint(v, cp);
		have_cp = sqlite3_step(cp) == SQLITE_ROW;
	}
	kb_audit_verifier_finish(v, res);
	kb_audit_verifier_free(v);
	sqlite3_finalize(ev);
	sqlite3_finalize(cp);
	sqlite3_close(db);
}

static void
tamper(const char *sql)
{
	sqlite3 *db;

	sqlite3_open(dbpath, &db);
	if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK)
		exit(2);
	sqlite3_close(db);
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

	setup();
	a = open_log("chain.db", 10);
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
	a = open_log("chain.db", 10);
	KBT_ASSERT_OK(audit_list_checkpoints(a, 0, 100, &cps, &n, &more));
	KBT_ASSERT_INT(n, ==, 3);
	KBT_ASSERT_INT(cps[0].seq, ==, 10);
	KBT_ASSERT_INT(cps[2].seq, ==, 25);
	free(cps);
	append(a, 25); /* the chain continues across restarts */
	audit_close(a);
	verify_file(dbpath, &res);
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

	setup();
	a = open_log("alter.db", 10);
	for (i = 0; i < 30; i++)
		append(a, i);
	audit_close(a);
	tamper("UPDATE events SET actor = 'mallory' WHERE seq = 17");
	verify_file(dbpath, &res);
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

	setup();
	a = open_log("delete.db", 10);
	for (i = 0; i < 30; i++)
		append(a, i);
	audit_close(a);
	tamper("DELETE FROM events WHERE seq = 12");
	verify_file(dbpath, &res);
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

	setup();
	a = open_log("tail.db", 1000);
	for (i = 0; i < 30; i++)
		append(a, i);
	audit_close(a); /* the shutdown checkpoint covers 30 */
	tamper("DELETE FROM events WHERE seq > 26");
	verify_file(dbpath, &res);
	KBT_ASSERT(!res.ok);
	KBT_ASSERT_INT(res.first_bad_seq, ==, 27);
	KBT_ASSERT_CONTAINS(res.reason, "signed checkpoint at 30");
	/* A restarted log never reuses the covered numbers: the gap stays. */
	a = open_log("tail.db", 1000);
	append(a, 31);
	KBT_ASSERT_INT(audit_last_seq(a), ==, 31);
	audit_close(a);
	verify_file(dbpath, &res);
	KBT_ASSERT(!res.ok);
	KBT_ASSERT_INT(res.first_bad_seq, ==, 27);
	KBT_ASSERT_CONTAINS(res.reason, "missing");
}

static void
test_rewritten_chain(void)
{
	struct kb_audit_result res;
	struct audit *a;
	int i;

	/* An attacker who alters an event and recomputes every later hash
	 * still cannot forge the signed checkpoint. */
	setup();
	a = open_log("rewrite.db", 10);
	for (i = 0; i < 20; i++)
		append(a, i);
	audit_close(a);
	{
		sqlite3 *db;
		sqlite3_stmt *st, *up;
		uint8_t prev[32] = {0}, hh[32];

		sqlite3_open(dbpath, &db);
		sqlite3_exec(db,
		    "UPDATE events SET result = 'denied' WHERE seq = 5", NULL,
		    NULL, NULL);
		sqlite3_prepare_v2(db,
		    "SELECT seq, time_us, actor, role, peer, "
		    "method, tenant_id, environment, key_id, result, reason, "
		    "request_id FROM events ORDER BY seq",
		    -1, &st, NULL);
		sqlite3_prepare_v2(db,
		    "UPDATE events SET hash = ? WHERE seq = ?", -1, &up, NULL);
		while (sqlite3_step(st) == SQLITE_ROW) {
			struct kb_audit_event e = {
			    (uint64_t)sqlite3_column_int64(st, 0),
			    sqlite3_column_int64(st, 1),
			    (const char *)sqlite3_column_text(st, 2),
			    (const char *)sqlite3_column_text(st, 3),
			    (const char *)sqlite3_column_text(st, 4),
			    (const char *)sqlite3_column_text(st, 5),
			    (const char *)sqlite3_column_text(st, 6),
			    (const char *)sqlite3_column_text(st, 7),
			    (const char *)sqlite3_column_text(st, 8),
			    (const char *)sqlite3_column_text(st, 9),
			    (const char *)sqlite3_column_text(st, 10),
			    (const char *)sqlite3_column_text(st, 11),
			};
			kb_audit_event_hash(prev, &e, hh);
			memcpy(prev, hh, 32);
			sqlite3_reset(up);
			sqlite3_bind_blob(up, 1, hh, 32, SQLITE_TRANSIENT);
			sqlite3_bind_int64(up, 2, (sqlite3_int64)e.seq);
			sqlite3_step(up);
		}
		sqlite3_finalize(st);
		sqlite3_finalize(up);
		sqlite3_close(db);
	}
	verify_file(dbpath, &res);
	KBT_ASSERT(!res.ok);
	KBT_ASSERT_INT(res.first_bad_seq, ==, 10);
	KBT_ASSERT_CONTAINS(res.reason, "do not match the signed checkpoint");
}

struct appender {
	struct audit *a;
	int n;
};

static void *
appender_main(void *p)
{
	struct appender *ap = p;
	int i;

	for (i = 0; i < ap->n; i++)
		append(ap->a, i);
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

	setup();
	a = open_log("group.db", 500);
	ap.a = a;
	ap.n = 100;
	for (i = 0; i < 8; i++)
		pthread_create(&th[i], NULL, appender_main, &ap);
	for (i = 0; i < 8; i++)
		pthread_join(th[i], NULL);
	KBT_ASSERT_INT(audit_last_seq(a), ==, 800);
	audit_close(a);
	verify_file(dbpath, &res);
	KBT_ASSERT(res.ok);
	KBT_ASSERT_INT(res.events, ==, 800);
	KBT_ASSERT_INT(res.covered_seq, ==, 800);
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

static const struct kbt_case cases[] = {
    {"/audit/chain-and-checkpoints", test_chain_and_checkpoints},
    {"/audit/altered-event", test_altered_event},
    {"/audit/deleted-event", test_deleted_event},
    {"/audit/truncated-tail", test_truncated_tail},
    {"/audit/rewritten-chain", test_rewritten_chain},
    {"/audit/concurrent-group-commit", test_concurrent_group_commit},
    {"/audit/unfinished-none", test_unfinished_none},
    {"/audit/unfinished-started", test_unfinished_started},
    {"/audit/unfinished-restart", test_unfinished_restart},
    {"/audit/unfinished-bounded", test_unfinished_bounded},
    {"/audit/unfinished-long-fields", test_unfinished_long_fields},
    {NULL, NULL}};

int
main(int argc, char **argv)
{
	int r = kbt_run(cases, argc, argv);

	hsm_close(h);
	EVP_PKEY_free(pub);
	kbt_rmtree(dir);
	return r;
}
