/* SPDX-License-Identifier: Apache-2.0 */
/* doctor.c: the checks behind kbctl doctor and keybrokerd --doctor, and
 * the offline run. Nothing here writes: the token is only asked, the
 * database only read. */
#include "doctor.h"

#include <inttypes.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "clock.h"
#include "dek.h"
#include "kb_doctor.h"
#include "kb_time.h"
#include "kb_wire.h"
#include "keycheck.h"
#include "policy.h"
#include "timemark.h"

#define SEV_OK KEYBROKER__V1__FINDING_SEVERITY__FINDING_SEVERITY_OK
#define SEV_WARN KEYBROKER__V1__FINDING_SEVERITY__FINDING_SEVERITY_WARN
#define SEV_FAIL KEYBROKER__V1__FINDING_SEVERITY__FINDING_SEVERITY_FAIL

#define DAY_US (86400LL * 1000000)
#define MIB (1024ULL * 1024)
/* Keys missing from the token named one by one; the rest counted. */
#define DOCTOR_KEYS_NAMED 50
/* A running job that has not moved for this long is stuck. */
#define JOB_STALL_US (10LL * 60 * 1000000)

struct report {
	Keybroker__V1__DiagnosticsReport *r;
	size_t cap;
	int oom;
	int64_t now_us; /* the wall clock when the checks began */
};

/* Add one finding; `found` is a format. A failed allocation is remembered
 * (doctor_run then answers KB_ERR_NOMEM). */
static void __attribute__((format(printf, 6, 7)))
add(struct report *rp, Keybroker__V1__FindingSeverity sev, const char *check,
    const char *subject, const char *remedy, const char *fmt, ...)
{
	Keybroker__V1__DiagnosticsReport *r = rp->r;
	Keybroker__V1__Finding *f, **v;
	char found[4096];
	va_list ap;

	if (rp->oom)
		return;
	va_start(ap, fmt);
	vsnprintf(found, sizeof(found), fmt, ap);
	va_end(ap);
	if (r->n_findings == rp->cap) {
		rp->cap = rp->cap ? rp->cap * 2 : 32;
		if ((v = realloc(r->findings, rp->cap * sizeof(*v))) == NULL) {
			rp->oom = 1;
			return;
		}
		r->findings = v;
	}
	if ((f = malloc(sizeof(*f))) == NULL) {
		rp->oom = 1;
		return;
	}
	keybroker__v1__finding__init(f);
	f->severity = sev;
	f->check = strdup(check);
	f->subject = strdup(subject);
	f->found = strdup(found);
	f->remedy = strdup(remedy != NULL ? remedy : "");
	r->findings[r->n_findings++] = f;
	if (f->check == NULL || f->subject == NULL || f->found == NULL
	    || f->remedy == NULL)
		rp->oom = 1;
}

/* "2026-12-03 08:30:00Z" */
static const char *
when(int64_t us, char *buf, size_t len)
{
	char t[40];

	kb_time_format(us, t, sizeof(t));
	snprintf(buf, len, "%.10s %.8sZ", t, t + 11);
	return buf;
}

/* "12 d 3 h", "5 h 2 min", "42 s" */
static const char *
span(int64_t us, char *buf, size_t len)
{
	long long s = (long long)((us < 0 ? -us : us) / 1000000);

	if (s >= 86400)
		snprintf(
		    buf, len, "%lld d %lld h", s / 86400, s % 86400 / 3600);
	else if (s >= 3600)
		snprintf(buf, len, "%lld h %lld min", s / 3600, s % 3600 / 60);
	else
		snprintf(buf, len, "%lld s", s);
	return buf;
}

/* ---- the token ---- */

static void
check_token(
    const struct doctor_deps *d, struct report *rp, struct hsm_token_info *ti)
{
	struct hsm_diag dg;
	char subj[300], missing[1200];
	size_t i, n = 0, nok = 0;

	snprintf(subj, sizeof(subj), "token %s", d->cfg->token_uri);
	if (d->hsm == NULL) {
		add(rp, SEV_FAIL, "token", subj,
		    "check token_uri, pin_file, pkcs11_module (and "
		    "softhsm2_conf) in the configuration; "
		    "'softhsm2-util --show-slots' lists SoftHSMv2's tokens",
		    "cannot be opened: %s",
		    d->hsm_error != NULL ? d->hsm_error : "unknown error");
		return;
	}
	hsm_token_info(d->hsm, ti);
	snprintf(subj, sizeof(subj), "token '%s' (serial %s, %s %s)", ti->label,
	    ti->serial, ti->manufacturer, ti->model);
	if (hsm_diagnose(d->hsm, &dg) != KB_OK) {
		add(rp, SEV_FAIL, "token", subj,
		    "check the token (its device, its network HSM "
		    "connection) and restart keybrokerd",
		    "does not answer: %s", kb_err_msg(KB_ERR_HSM));
		kb_err_clear();
		return;
	}
	if (dg.logged_in)
		add(rp, SEV_OK, "token", subj, NULL, "present, logged in");
	else
		add(rp, SEV_FAIL, "token", subj,
		    "check the user PIN in pin_file and the token; the "
		    "broker logs in again by itself when the token returns",
		    "present but not logged in: %s", dg.login_error);
	if (dg.pin_locked)
		add(rp, SEV_FAIL, "token", subj,
		    "unlock the user PIN with the token's SO PIN "
		    "(SoftHSMv2: softhsm2-util --init-pin needs the token "
		    "re-initialized; a network HSM: its vendor's tool)",
		    "the user PIN is locked (CKF_USER_PIN_LOCKED)");
	else if (dg.pin_final_try || dg.pin_count_low)
		add(rp, SEV_WARN, "token", subj,
		    "find who tried wrong PINs; check pin_file",
		    "wrong user PINs were tried (%s)",
		    dg.pin_final_try ? "CKF_USER_PIN_FINAL_TRY: one more "
		                       "locks it"
		                     : "CKF_USER_PIN_COUNT_LOW");
	if (!dg.rng)
		add(rp, SEV_FAIL, "token.mech", subj,
		    "use a token with a random number generator",
		    "has no random number generator (CKF_RNG): the broker "
		    "draws ids, data keys and IVs from C_GenerateRandom");
	missing[0] = '\0';
	for (i = 0; i < dg.nmechs; i++) {
		char s[200];

		if (dg.mechs[i].ok) {
			nok++;
			n += (size_t)snprintf(missing + n,
			    n < sizeof(missing) ? sizeof(missing) - n : 0,
			    "%s%s", nok > 1 ? ", " : "", dg.mechs[i].name);
			continue;
		}
		snprintf(s, sizeof(s), "mechanism %s (%s)", dg.mechs[i].name,
		    dg.mechs[i].use);
		add(rp, SEV_FAIL, "token.mech", s,
		    "use a token (or PKCS#11 module) that offers it; note "
		    "that p11-kit-client 0.24 does not pass CKM_AES_GCM on "
		    "(DESIGN.md, facts found on this machine)",
		    "not usable: %s", dg.mechs[i].why);
	}
	if (nok > 0)
		add(rp, SEV_OK, "token.mech", "the mechanisms the broker uses",
		    NULL, "%zu of %zu offered with the flags needed: %s", nok,
		    dg.nmechs, missing);
}

/* ---- the keys the database refers to ---- */

static const char *
purpose_name(const char *purpose)
{
	return strcmp(purpose, "tenant") == 0  ? "tenant key"
	    : strcmp(purpose, "platform") == 0 ? "platform key"
	    : strcmp(purpose, "kek") == 0      ? "KEK"
	    : strcmp(purpose, "audit") == 0    ? "audit signing key"
	    : strcmp(purpose, "exchange") == 0 ? "key-exchange key"
	                                       : purpose;
}

static const char *
key_remedy(const struct store_key *k)
{
	if (strcmp(k->purpose, "exchange") == 0)
		return "restore the token from its backup, or make a new "
		       "key-exchange key: kbctl byok rotate-kek TENANT "
		       "(.byok files made for the old one are then refused)";
	if (strcmp(k->purpose, "audit") == 0)
		return "restore the token from its backup (README \"Backup "
		       "and recovery\"); the broker cannot sign checkpoints "
		       "(nor start) without it";
	return "restore the token from its backup (README \"Backup and "
	       "recovery\"), or point token_uri at the token that holds "
	       "it; until then the data keys it protects cannot be "
	       "opened, nor the broker restarted";
}

static void
check_keys(const struct doctor_deps *d, struct report *rp,
    const struct hsm_token_info *ti)
{
	struct store_key *v = NULL;
	char label[DEK_LABEL_MAX], why[300], subj[300], names[1400],
	    envs_s[1400];
	uint64_t envs, tenants;
	size_t n = 0, i, needed = 0, bad = 0, warned = 0;

	if (d->store == NULL)
		return;
	if (d->hsm == NULL) {
		add(rp, SEV_WARN, "key", "the keys the database refers to",
		    "make the token usable (see the token finding)",
		    "not checked: the token could not be opened");
		return;
	}
	if (store_keys_all(d->store, &v, &n) != KB_OK) {
		add(rp, SEV_FAIL, "key", "the keys the database refers to",
		    "check the database (see the database finding)",
		    "cannot be listed: %s", kb_err_msg(KB_ERR_STORE));
		kb_err_clear();
		return;
	}
	for (i = 0; i < n; i++) {
		const struct store_key *k = &v[i];

		if (!keycheck_needed(k))
			continue;
		needed++;
		keycheck_label(k, label, sizeof(label));
		if (keycheck_present(d->hsm, k->id, label, k->purpose, k->state,
		        k->parent_id, k->fingerprint, why, sizeof(why))) {
			/* A KEK whose token object is gone while its tenant
			 * key is there: the next start unwraps it again, but
			 * until then this broker cannot open what it seals. */
			if (d->online && strcmp(k->purpose, "kek") == 0
			    && hsm_secret_exists(d->hsm, k->id, label)
			        != KB_OK) {
				kb_err_clear();
				snprintf(subj, sizeof(subj),
				    "KEK %s of tenant %s (state %s)", k->id,
				    k->tenant_id, k->state);
				snprintf(why, sizeof(why),
				    "kbctl repair %s (unwraps it again from "
				    "its "
				    "stored copy), or restart keybrokerd",
				    k->tenant_id);
				warned++;
				add(rp, SEV_WARN, "key", subj, why,
				    "not in token '%s', but its tenant key %s "
				    "is: the data keys it seals fail until it "
				    "is unwrapped again",
				    ti->label, k->parent_id);
			}
			continue;
		}
		/* A token that lost everything: name the first ones, count
		 * the rest (the report stays readable, and small). */
		if (bad++ >= DOCTOR_KEYS_NAMED)
			continue;
		envs = tenants = 0;
		names[0] = envs_s[0] = '\0';
		if (store_key_dependents(
		        d->store, k->id, &envs, &tenants, names, sizeof(names))
		        != KB_OK
		    || store_key_dependent_envs(
		           d->store, k->id, envs_s, sizeof(envs_s))
		        != KB_OK)
			kb_err_clear();
		snprintf(subj, sizeof(subj), "%s %s%s%s (state %s%s%.16s%s)",
		    purpose_name(k->purpose), k->id,
		    k->tenant_id[0] ? " of tenant " : "", k->tenant_id,
		    k->state,
		    strlen(k->fingerprint) == 64 ? ", fingerprint " : "",
		    strlen(k->fingerprint) == 64 ? k->fingerprint : "",
		    strlen(k->fingerprint) == 64 ? "..." : "");
		if (strcmp(k->purpose, "audit") == 0)
			add(rp, SEV_FAIL, "key", subj, key_remedy(k),
			    "not in token '%s': %s; it signs the audit log's "
			    "checkpoints",
			    ti->label, why);
		else if (strcmp(k->purpose, "exchange") == 0)
			add(rp, SEV_FAIL, "key", subj, key_remedy(k),
			    "not in token '%s': %s; .byok uploads of tenant %s "
			    "fail",
			    ti->label, why, k->tenant_id);
		else
			add(rp, SEV_FAIL, "key", subj, key_remedy(k),
			    "not in token '%s': %s; %" PRIu64
			    " environment(s) of %" PRIu64
			    " tenant(s) depend on it%s%s%s%s%s%s",
			    ti->label, why, envs, tenants,
			    envs_s[0] ? ": " : "", envs_s,
			    envs > 20 ? ", ..." : "",
			    names[0] ? " (tenants: " : "", names,
			    names[0] ? ")" : "");
	}
	if (bad > DOCTOR_KEYS_NAMED)
		add(rp, SEV_FAIL, "key", "the keys the database refers to",
		    "restore the token from its backup (README \"Backup and "
		    "recovery\"), or point token_uri at the token that holds "
		    "them",
		    "%zu of the %zu keys needed are not in token '%s' as "
		    "recorded; the first %d are named above",
		    bad, needed, ti->label, DOCTOR_KEYS_NAMED);
	if (bad == 0 && warned == 0)
		add(rp, SEV_OK, "key", "the keys the database refers to", NULL,
		    "all %zu needed in the token are in token '%s', RSA keys "
		    "with the recorded public-key fingerprint (%zu more are "
		    "locked, deleted or retired: not needed)",
		    needed, ti->label, n - needed);
	free(v);
}

/* The database is bound to one token (store_token_bind). */
static void
check_binding(const struct doctor_deps *d, struct report *rp,
    const struct hsm_token_info *ti)
{
	char label[64], serial[64];

	if (d->store == NULL)
		return;
	if (d->hsm == NULL) {
		add(rp, SEV_OK, "database", d->cfg->database, NULL,
		    "schema %d; its token binding not checked (the token "
		    "could not be opened)",
		    store_schema_version(d->store));
		return;
	}
	if (store_meta_get(d->store, "token_label", label, sizeof(label))
	        != KB_OK
	    || store_meta_get(d->store, "token_serial", serial, sizeof(serial))
	        != KB_OK) {
		kb_err_clear();
		add(rp, SEV_OK, "database", d->cfg->database, NULL,
		    "not yet bound to a token (the broker binds it at its "
		    "first start)");
		return;
	}
	if (strcmp(label, ti->label) != 0 || strcmp(serial, ti->serial) != 0)
		add(rp, SEV_FAIL, "database", d->cfg->database,
		    "point token_uri (and softhsm2_conf) at the token the "
		    "database belongs to, or database at this token's "
		    "database",
		    "bound to token '%s' (serial %s), but the configured "
		    "token is '%s' (serial %s): the broker refuses to start "
		    "on it",
		    label, serial, ti->label, ti->serial);
	else
		add(rp, SEV_OK, "database", d->cfg->database, NULL,
		    "schema %d, bound to this token",
		    store_schema_version(d->store));
}

/* ---- certificates and CRLs ---- */

static void
cert_name(X509 *x, char *buf, size_t len)
{
	X509_NAME *n = X509_get_subject_name(x);

	if (n == NULL
	    || X509_NAME_get_text_by_NID(n, NID_commonName, buf, (int)len) < 0)
		snprintf(buf, len, "(no CN)");
}

static void
expiry(struct report *rp, const char *check, const char *subj,
    int64_t not_before, int64_t not_after, const char *remedy,
    const char *what_fails)
{
	char t[40], s[40];
	int64_t left = not_after - rp->now_us;

	if (not_after == 0)
		add(rp, SEV_FAIL, check, subj, remedy,
		    "its expiry time cannot be read");
	else if (not_before > rp->now_us)
		add(rp, SEV_FAIL, check, subj, remedy,
		    "not valid before %s (in %s): %s",
		    when(not_before, t, sizeof(t)),
		    span(not_before - rp->now_us, s, sizeof(s)), what_fails);
	else if (left <= 0)
		add(rp, SEV_FAIL, check, subj, remedy,
		    "expired %s ago (%s): %s", span(left, s, sizeof(s)),
		    when(not_after, t, sizeof(t)), what_fails);
	else if (left < DOCTOR_CERT_WARN_DAYS * DAY_US)
		add(rp, SEV_WARN, check, subj, remedy,
		    "expires in %s (%s), within %d days: %s then",
		    span(left, s, sizeof(s)), when(not_after, t, sizeof(t)),
		    DOCTOR_CERT_WARN_DAYS, what_fails);
	else
		add(rp, SEV_OK, check, subj, NULL, "valid until %s (%s left)",
		    when(not_after, t, sizeof(t)), span(left, s, sizeof(s)));
}

/* Every certificate in PEM file `path`: the first as `first`, the rest as
 * `rest` (its chain, or more CAs). */
static void
check_cert_file(struct report *rp, const char *key, const char *path,
    const char *first, const char *rest, const char *remedy,
    const char *what_fails)
{
	char subj[600], cn[256];
	BIO *bio;
	X509 *x;
	int i = 0;

	if (path == NULL)
		return;
	if ((bio = BIO_new_file(path, "r")) == NULL) {
		snprintf(subj, sizeof(subj), "%s (%s %s)", first, key, path);
		add(rp, SEV_FAIL, "cert", subj, remedy, "cannot be read");
		ERR_clear_error();
		return;
	}
	while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
		cert_name(x, cn, sizeof(cn));
		snprintf(subj, sizeof(subj), "%s \"%s\" (%s %s)",
		    i == 0 ? first : rest, cn, key, path);
		expiry(rp, "cert", subj,
		    kb_time_asn1_us(X509_get0_notBefore(x)),
		    kb_time_asn1_us(X509_get0_notAfter(x)), remedy, what_fails);
		X509_free(x);
		i++;
	}
	ERR_clear_error();
	BIO_free(bio);
	if (i == 0) {
		snprintf(subj, sizeof(subj), "%s (%s %s)", first, key, path);
		add(rp, SEV_FAIL, "cert", subj, remedy,
		    "holds no PEM certificate");
	}
}

static void
check_crl(const struct doctor_deps *d, struct report *rp)
{
	const char *path = d->cfg->client_crl;
	const char *remedy =
	    "publish a fresh CRL at client_crl (the development CA: "
	    "deploy/pki.sh crl); the broker reads it within a second";
	char subj[600], cn[256], t[40], s[40];
	X509_NAME *iss;
	X509_CRL *crl;
	BIO *bio;
	int i = 0;

	if (path == NULL) {
		add(rp, SEV_OK, "crl", "client_crl", NULL,
		    "not set: revoked client certificates are not refused "
		    "(set client_crl to a PEM CRL file of client_ca's CA)");
		return;
	}
	if ((bio = BIO_new_file(path, "r")) == NULL) {
		snprintf(
		    subj, sizeof(subj), "client CRL (client_crl %s)", path);
		add(rp, SEV_FAIL, "crl", subj, remedy,
		    "cannot be read: the broker keeps the CRL it read "
		    "before, and cannot start without one");
		ERR_clear_error();
		return;
	}
	while ((crl = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL)) != NULL) {
		int64_t last = kb_time_asn1_us(X509_CRL_get0_lastUpdate(crl));
		int64_t next = kb_time_asn1_us(X509_CRL_get0_nextUpdate(crl));
		int64_t left = next - rp->now_us, warn;

		iss = X509_CRL_get_issuer(crl);
		if (iss == NULL
		    || X509_NAME_get_text_by_NID(
		           iss, NID_commonName, cn, sizeof(cn))
		        < 0)
			snprintf(cn, sizeof(cn), "(no CN)");
		snprintf(subj, sizeof(subj),
		    "client CRL %d of \"%s\" (client_crl %s)", i + 1, cn, path);
		/* A CRL reissued often (every day) would always be within 30
		 * days of its nextUpdate: warn once half its period is used
		 * up, if that is sooner. */
		warn = DOCTOR_CERT_WARN_DAYS * DAY_US;
		if (last != 0 && next > last && (next - last) / 2 < warn)
			warn = (next - last) / 2;
		if (next == 0)
			add(rp, SEV_OK, "crl", subj, NULL,
			    "has no nextUpdate: never stale");
		else if (left <= 0)
			add(rp, SEV_FAIL, "crl", subj, remedy,
			    "stale since %s (%s ago): %s",
			    when(next, t, sizeof(t)), span(left, s, sizeof(s)),
			    d->cfg->client_crl_strict
			        ? "client_crl_strict is on: every call is "
			          "refused"
			        : "revocations since then are unknown to the "
			          "broker (client_crl_strict = true refuses "
			          "calls instead)");
		else if (left < warn)
			add(rp, SEV_WARN, "crl", subj, remedy,
			    "nextUpdate in %s (%s): stale then%s",
			    span(left, s, sizeof(s)), when(next, t, sizeof(t)),
			    d->cfg->client_crl_strict
			        ? ", and every call refused (client_crl_strict)"
			        : "");
		else
			add(rp, SEV_OK, "crl", subj, NULL,
			    "nextUpdate %s (%s left)", when(next, t, sizeof(t)),
			    span(left, s, sizeof(s)));
		X509_CRL_free(crl);
		i++;
	}
	ERR_clear_error();
	BIO_free(bio);
	if (i == 0) {
		snprintf(
		    subj, sizeof(subj), "client CRL (client_crl %s)", path);
		add(rp, SEV_FAIL, "crl", subj, remedy, "holds no PEM CRL");
	}
}

static void
check_certs(const struct doctor_deps *d, struct report *rp)
{
	check_cert_file(rp, "tls_cert", d->cfg->tls_cert, "server certificate",
	    "server chain certificate",
	    "issue a new server certificate (the development CA: "
	    "deploy/pki.sh server), put it at tls_cert (its key at "
	    "tls_key) and restart keybrokerd",
	    "clients refuse the broker's TLS handshake");
	check_cert_file(rp, "client_ca", d->cfg->client_ca, "client CA",
	    "client CA",
	    "make a new CA, issue every client certificate again from it "
	    "and list both CAs in client_ca during the change",
	    "no client certificate it issued is accepted");
	check_crl(d, rp);
}

/* ---- policy time ---- */

static void
check_clock(const struct doctor_deps *d, struct report *rp)
{
	struct store_clock c;
	char a[40], b[40], s[40];
	const char *subj = "policy time (the durable mark and the wall clock)";
	int64_t wall = clock_wall_us(), ahead;
	unsigned limit = d->cfg->clock_jump_limit_s;

	if (d->store == NULL)
		return;
	if (store_clock_get(d->store, &c) != KB_OK) {
		add(rp, SEV_WARN, "clock", subj,
		    "start keybrokerd once: it migrates the database",
		    "cannot be read: %s", kb_err_msg(KB_ERR_STORE));
		kb_err_clear();
		return;
	}
	if (c.jump_from_us != 0)
		add(rp, SEV_WARN, "clock", subj,
		    "check the host's clock (timedatectl, NTP); if it is "
		    "right: kbctl clock confirm",
		    "a forward jump of %s (%s to %s) waits for confirmation: "
		    "the sweeper deletes nothing meanwhile",
		    span(c.jump_to_us - c.jump_from_us, s, sizeof(s)),
		    when(c.jump_from_us, a, sizeof(a)),
		    when(c.jump_to_us, b, sizeof(b)));
	if (!c.kept) {
		add(rp, SEV_OK, "clock", subj, NULL,
		    "mark %s, seeded from the newest time the database "
		    "records; no broker has kept it yet",
		    when(c.mark_us, a, sizeof(a)));
		return;
	}
	ahead = wall - c.mark_us;
	if (ahead < -POLICY_CLOCK_SLACK_US)
		add(rp, SEV_WARN, "clock", subj,
		    "check the host's clock (timedatectl, NTP)",
		    "the wall clock (%s) is %s behind the mark (%s): it was "
		    "set back; time rules wait until it catches up",
		    when(wall, a, sizeof(a)), span(ahead, s, sizeof(s)),
		    when(c.mark_us, b, sizeof(b)));
	else if (!d->online && ahead > (int64_t)limit * 1000000)
		add(rp, SEV_WARN, "clock", subj,
		    "check the host's clock; after the next start, 'kbctl "
		    "clock confirm' lets the sweeper delete again",
		    "the wall clock (%s) is %s past the mark (%s), more than "
		    "clock_jump_limit_s (%u s): the next start records a "
		    "clock jump and pauses the sweeper until it is confirmed",
		    when(wall, a, sizeof(a)), span(ahead, s, sizeof(s)),
		    when(c.mark_us, b, sizeof(b)), limit);
	else if (d->online && ahead > 6LL * TIMEMARK_INTERVAL_S * 1000000)
		add(rp, SEV_WARN, "clock", subj,
		    "check the database's disk and the log (the mark is "
		    "stored every 10 s)",
		    "the mark (%s) was last stored %s ago",
		    when(c.mark_us, a, sizeof(a)), span(ahead, s, sizeof(s)));
	else if (c.jump_from_us == 0)
		add(rp, SEV_OK, "clock", subj, NULL,
		    "wall clock %s, mark %s; no clock jump waits",
		    when(wall, a, sizeof(a)), when(c.mark_us, b, sizeof(b)));
}

/* ---- free disk ---- */

static void
check_disk(const struct doctor_deps *d, struct report *rp)
{
	const char *paths[2] = {d->cfg->database, d->cfg->audit_database};
	const char *what[2] = {"the database", "the audit log"};
	unsigned long long warn = d->cfg->doctor_disk_warn_mb * MIB;
	unsigned long long fail = d->cfg->doctor_disk_fail_mb * MIB;
	const char *remedy =
	    "free space on that file system or grow it (doctor_disk_warn_mb "
	    "and doctor_disk_fail_mb set the thresholds); a full disk "
	    "stops every write, and GetDataKey once the audit log cannot "
	    "record it";
	char dirs[2][4200], tmp[4200];
	dev_t dev0 = 0;
	int i;

	if (warn < fail)
		warn = fail;
	for (i = 0; i < 2; i++) {
		snprintf(tmp, sizeof(tmp), "%s", paths[i]);
		snprintf(dirs[i], sizeof(dirs[i]), "%s", dirname(tmp));
	}
	for (i = 0; i < 2; i++) {
		struct statvfs sv;
		struct stat st;
		char subj[4400];
		unsigned long long avail, size;

		if (config_is_postgres(paths[i])) {
			/* Its disk is the server's, not ours to stat. */
			if (i == 1 && strcmp(paths[0], paths[1]) == 0)
				continue;
			snprintf(
			    subj, sizeof(subj), "free disk for %s", what[i]);
			add(rp, SEV_OK, "disk", subj, NULL,
			    "on the PostgreSQL server (%.2000s): watch its "
			    "disk there (a full disk makes every write fail "
			    "UNAVAILABLE here)",
			    paths[i]);
			continue;
		}
		if (stat(dirs[i], &st) != 0 || statvfs(dirs[i], &sv) != 0) {
			snprintf(subj, sizeof(subj),
			    "free disk for %s (%.4096s)", what[i], dirs[i]);
			add(rp, SEV_FAIL, "disk", subj,
			    "check the path in the configuration (database, "
			    "audit_database) and that its volume is mounted",
			    "cannot be read: %m");
			continue;
		}
		/* Both on one file system: one finding says it. */
		if (i == 1 && st.st_dev == dev0)
			continue;
		dev0 = st.st_dev;
		snprintf(subj, sizeof(subj), "free disk for %s (%.4096s)",
		    i == 0 && stat(dirs[1], &st) == 0 && st.st_dev == dev0
		        ? "the database and the audit log"
		        : what[i],
		    dirs[i]);
		avail = (unsigned long long)sv.f_bavail * sv.f_frsize;
		size = (unsigned long long)sv.f_blocks * sv.f_frsize;
		if (sv.f_files > 0 && sv.f_favail == 0)
			add(rp, SEV_FAIL, "disk", subj, remedy,
			    "no inode left (%llu MiB of %llu MiB free)",
			    avail / MIB, size / MIB);
		else if (avail < fail)
			add(rp, SEV_FAIL, "disk", subj, remedy,
			    "%llu MiB of %llu MiB free, below "
			    "doctor_disk_fail_mb (%u)",
			    avail / MIB, size / MIB,
			    d->cfg->doctor_disk_fail_mb);
		else if (avail < warn)
			add(rp, SEV_WARN, "disk", subj, remedy,
			    "%llu MiB of %llu MiB free, below "
			    "doctor_disk_warn_mb (%u)",
			    avail / MIB, size / MIB,
			    d->cfg->doctor_disk_warn_mb);
		else
			add(rp, SEV_OK, "disk", subj, NULL,
			    "%llu MiB of %llu MiB free", avail / MIB,
			    size / MIB);
	}
}

/* ---- pending jobs and deletions ---- */

static void
check_jobs(const struct doctor_deps *d, struct report *rp)
{
	struct store_job *v = NULL;
	char subj[300], remedy[300], s[40];
	size_t n = 0, i;

	if (d->store == NULL)
		return;
	if (store_jobs_pending(d->store, &v, &n) != KB_OK) {
		add(rp, SEV_WARN, "job", "background jobs",
		    "start keybrokerd once: it migrates the database",
		    "cannot be listed: %s", kb_err_msg(KB_ERR_STORE));
		kb_err_clear();
		return;
	}
	if (n == 0)
		add(rp, SEV_OK, "job", "background jobs", NULL,
		    "none running, none failed");
	for (i = 0; i < n; i++) {
		const struct store_job *j = &v[i];
		int64_t idle = rp->now_us - j->update_time_us;

		snprintf(subj, sizeof(subj), "job %s (%s%s%s)", j->id, j->kind,
		    j->tenant_id[0] ? ", tenant " : "", j->tenant_id);
		snprintf(remedy, sizeof(remedy), "kbctl jobs show %s%s", j->id,
		    strcmp(j->state, "running") == 0
		        ? "; keybrokerd resumes a running job at its start"
		        : strcmp(j->kind, STORE_JOB_ACTIVATE) == 0
		        ? "; then activate the key again: kbctl keys activate"
		        : strcmp(j->kind, STORE_JOB_ROTATE) == 0
		        ? "; then rotate again: kbctl platform rotate-key"
		        : "; restart keybrokerd to run it again");
		if (strcmp(j->state, "failed") == 0)
			add(rp, SEV_WARN, "job", subj, remedy,
			    "failed %s ago after %" PRIu64 " of %" PRIu64
			    ": %s",
			    span(idle, s, sizeof(s)), j->done, j->total,
			    j->error);
		else if (!d->online)
			add(rp, SEV_WARN, "job", subj, remedy,
			    "was running when the broker stopped (%" PRIu64
			    " of %" PRIu64 " done): it resumes at the next "
			    "start",
			    j->done, j->total);
		else if (idle > JOB_STALL_US)
			add(rp, SEV_WARN, "job", subj, remedy,
			    "running, but no progress for %s (%" PRIu64
			    " of %" PRIu64 " done)",
			    span(idle, s, sizeof(s)), j->done, j->total);
		else
			add(rp, SEV_OK, "job", subj, NULL,
			    "running: %" PRIu64 " of %" PRIu64 " done", j->done,
			    j->total);
	}
	free(v);
}

static void
check_deletions(const struct doctor_deps *d, struct report *rp)
{
	struct store_state_count *v = NULL;
	char subj[200], a[40], s[40];
	size_t n = 0, i;

	if (d->store == NULL)
		return;
	if (store_state_counts(d->store, &v, &n) != KB_OK) {
		add(rp, SEV_WARN, "deletion", "pending and final deletions",
		    "start keybrokerd once: it migrates the database",
		    "cannot be counted: %s", kb_err_msg(KB_ERR_STORE));
		kb_err_clear();
		return;
	}
	if (n == 0)
		add(rp, SEV_OK, "deletion", "pending and final deletions", NULL,
		    "no environment or key is locked, pending deletion or "
		    "deleted");
	for (i = 0; i < n; i++) {
		const struct store_state_count *c = &v[i];
		int64_t due = c->oldest_us + POLICY_LOCKED_RETENTION_US;
		int64_t late = rp->now_us - due
		    - (int64_t)d->cfg->sweep_interval_s * 2 * 1000000;

		snprintf(
		    subj, sizeof(subj), "%ss in state %s", c->kind, c->state);
		if (strcmp(c->kind, "environment") == 0
		    && strcmp(c->state, "locked") == 0) {
			if (d->online && c->oldest_us != 0 && late > 0)
				add(rp, SEV_WARN, "deletion", subj,
				    "kbctl clock show (a clock jump pauses "
				    "the sweeper); the log says why a sweep "
				    "failed",
				    "%" PRIu64 " locked; the oldest was due "
				    "for deletion %s ago (%s, 28 days after "
				    "its lock) and is still there",
				    c->count, span(late, s, sizeof(s)),
				    when(due, a, sizeof(a)));
			else
				add(rp, SEV_OK, "deletion", subj, NULL,
				    "%" PRIu64 " locked: pending deletion by "
				    "the sweeper 28 days after each lock "
				    "unless unlocked, the first at %s",
				    c->count, when(due, a, sizeof(a)));
		} else if (strcmp(c->state, "pending_deletion") == 0) {
			/* oldest_us: the first to become final. */
			late = rp->now_us - c->oldest_us
			    - (int64_t)d->cfg->sweep_interval_s * 2 * 1000000;
			if (d->online && late > 0)
				add(rp, SEV_WARN, "deletion", subj,
				    "kbctl clock show (a clock jump pauses "
				    "the sweeper); the log says why a sweep "
				    "failed",
				    "%" PRIu64 " pending deletion; the first "
				    "became final %s ago (%s) and is still "
				    "there",
				    c->count, span(late, s, sizeof(s)),
				    when(c->oldest_us, a, sizeof(a)));
			else
				add(rp, SEV_OK, "deletion", subj, NULL,
				    "%" PRIu64 " pending deletion (kbctl %s "
				    "undelete cancels one until then), the "
				    "first final at %s",
				    c->count,
				    strcmp(c->kind, "environment") == 0
				        ? "envs"
				        : "keys",
				    when(c->oldest_us, a, sizeof(a)));
		} else if (strcmp(c->state, "deleted") == 0) {
			add(rp, SEV_OK, "deletion", subj, NULL,
			    "%" PRIu64 " deleted for good%s", c->count,
			    strcmp(c->kind, "environment") == 0
			        ? " (their data keys destroyed)"
			        : " (their token objects destroyed)");
		} else if (strcmp(c->kind, "key") == 0
		    && strcmp(c->state, "locked") == 0) {
			add(rp, SEV_OK, "deletion", subj, NULL,
			    "%" PRIu64 " locked: gone from the token until "
			    "their tenant is unlocked with them",
			    c->count);
		} else {
			/* A state this build does not describe (pending
			 * deletion, ...): counted all the same. */
			add(rp, SEV_OK, "deletion", subj, NULL,
			    "%" PRIu64 ", the oldest since %s", c->count,
			    c->oldest_us != 0 ? when(c->oldest_us, a, sizeof(a))
			                      : "-");
		}
	}
	free(v);
}

/* ---- the report ---- */

enum kb_err
doctor_run(const struct doctor_deps *d, Keybroker__V1__DiagnosticsReport **out)
{
	struct report rp;
	struct hsm_token_info ti;

	*out = NULL;
	memset(&rp, 0, sizeof(rp));
	memset(&ti, 0, sizeof(ti));
	if ((rp.r = malloc(sizeof(*rp.r))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	keybroker__v1__diagnostics_report__init(rp.r);
	rp.now_us = clock_wall_us();
	rp.r->time_us = rp.now_us;
	rp.r->online = d->online != 0;
	rp.r->broker_version = strdup(KB_VERSION);
	if (rp.r->broker_version == NULL)
		rp.oom = 1;
	check_token(d, &rp, &ti);
	if (d->store == NULL)
		add(&rp, SEV_FAIL, "database", d->cfg->database,
		    "check database in the configuration (is its volume "
		    "mounted? is the path right?)",
		    "cannot be opened read-only: %s",
		    d->store_error != NULL ? d->store_error : "unknown error");
	else if (d->schema > store_schema_version(d->store))
		add(&rp, SEV_FAIL, "database", d->cfg->database,
		    "use the keybrokerd that wrote it (or a newer one)",
		    "schema %d, newer than this keybroker knows (%d)",
		    d->schema, store_schema_version(d->store));
	else if (d->schema != 0 && d->schema < store_schema_version(d->store))
		add(&rp, SEV_WARN, "database", d->cfg->database,
		    "start keybrokerd: it migrates the database (some checks "
		    "below may fail until then)",
		    "schema %d; this keybrokerd migrates it to %d at its start",
		    d->schema, store_schema_version(d->store));
	else
		check_binding(d, &rp, &ti);
	check_keys(d, &rp, &ti);
	check_certs(d, &rp);
	check_clock(d, &rp);
	check_disk(d, &rp);
	check_jobs(d, &rp);
	check_deletions(d, &rp);
	if (rp.oom) {
		kb_wire_free(&rp.r->base);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	*out = rp.r;
	return KB_OK;
}

int
doctor_offline(const struct config *cfg, int json, FILE *out)
{
	struct doctor_deps d;
	struct hsm_config hc;
	Keybroker__V1__DiagnosticsReport *r = NULL;
	char herr[1024] = "", serr[1024] = "";
	enum kb_err e;
	int rc;

	memset(&d, 0, sizeof(d));
	d.cfg = cfg;
	/* The test build's clock reads its offset file; keybrokerd refuses
	 * one, as it would at start. */
	if ((e = clock_init(cfg->test_clock_file)) != KB_OK) {
		fprintf(stderr, "keybrokerd: %s\n", kb_err_msg(e));
		return 1;
	}
	if (cfg->softhsm2_conf != NULL)
		setenv("SOFTHSM2_CONF", cfg->softhsm2_conf, 1);
	memset(&hc, 0, sizeof(hc));
	hc.module_path = cfg->pkcs11_module;
	hc.token_uri = cfg->token_uri;
	hc.pin_file = cfg->pin_file;
	hc.check_pin_mode = 1;
	hc.sessions = 2;
	if ((e = hsm_open(&hc, &d.hsm)) != KB_OK) {
		snprintf(herr, sizeof(herr), "%s", kb_err_msg(e));
		d.hsm_error = herr;
		kb_err_clear();
	}
	if ((e = store_open_readonly(cfg->database, cfg->database_password_file,
	         &d.store, &d.schema))
	    != KB_OK) {
		snprintf(serr, sizeof(serr), "%s", kb_err_msg(e));
		d.store_error = serr;
		kb_err_clear();
	}
	if ((e = doctor_run(&d, &r)) != KB_OK) {
		fprintf(stderr, "keybrokerd: %s\n", kb_err_msg(e));
		rc = 1;
	} else if (kb_doctor_print(out, r, json) != 0) {
		fprintf(stderr, "keybrokerd: out of memory\n");
		rc = 1;
	} else {
		rc = kb_doctor_exit(r);
	}
	kb_wire_free(r != NULL ? &r->base : NULL);
	store_close(d.store);
	hsm_close(d.hsm);
	return rc;
}
