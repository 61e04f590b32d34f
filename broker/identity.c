/* SPDX-License-Identifier: Apache-2.0 */
/* identity.c: verify client certificates against the client CA (and its
 * CRLs) and map them to roles and scopes. */
#include "identity.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/asn1.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "kb_time.h"
#include "log.h"
#include "names.h"

/* A verified certificate is trusted from the cache for at most this long
 * (and never past its notAfter), so a changed clock or CA takes effect soon.
 * A CRL reload voids the whole cache at once (the generation changes). */
#define CACHE_TTL_US (60LL * 1000000)
#define CACHE_SLOTS 256
/* The CRL file is looked at (stat) at most this often. */
#define CRL_STAT_US 1000000LL
/* A CRL past its nextUpdate is logged at most this often. */
#define CRL_STALE_LOG_US (60LL * 1000000)

struct cache_slot {
	uint8_t hash[32];
	int used;
	uint64_t gen;
	int64_t until_us;
	enum kb_err result;
	char msg[256];
	struct identity id;
};

/* What the CRL file was when it was last read: a change of any of these
 * (a rename over it, a rewrite in place) makes the broker read it again. */
struct file_id {
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime, ctime;
};

struct identity_verifier {
	char *ca_file;
	char *crl_file; /* NULL: no revocation list */
	int crl_strict; /* refuse every call while the CRL is stale */
	X509_STORE *store; /* CA (+ CRLs): replaced whole, refcounted */
	uint64_t gen; /* bumped by every CRL (re)load */
	int64_t next_update_us; /* earliest nextUpdate of the CRLs; 0 none */
	int ncrls;
	struct file_id crl_id;
	int64_t crl_checked_mono_us;
	int64_t stale_logged_mono_us;
	pthread_mutex_t mu;
	struct cache_slot cache[CACHE_SLOTS];
};

static int64_t
mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void
fmt_time(int64_t us, char *buf, size_t len)
{
	time_t t = (time_t)(us / 1000000);
	struct tm tm;

	if (gmtime_r(&t, &tm) == NULL
	    || strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(buf, len, "?");
}

/* A CRL whose nextUpdate has passed still lists what it listed: use it
 * (the broker says loudly that it is stale, and client_crl_strict refuses
 * every call instead); everything else OpenSSL refuses stays refused. */
static int
verify_cb(int ok, X509_STORE_CTX *ctx)
{
	if (!ok
	    && X509_STORE_CTX_get_error(ctx) == X509_V_ERR_CRL_HAS_EXPIRED) {
		X509_STORE_CTX_set_error(ctx, X509_V_OK);
		return 1;
	}
	return ok;
}

static enum kb_err
file_id_of(const char *path, struct file_id *id)
{
	struct stat st;

	if (stat(path, &st) != 0)
		return kb_errf(
		    KB_ERR_CONFIG, "cannot stat the client CRL %s: %m", path);
	memset(id, 0, sizeof(*id));
	id->dev = st.st_dev;
	id->ino = st.st_ino;
	id->size = st.st_size;
	id->mtime = st.st_mtim;
	id->ctime = st.st_ctim;
	return KB_OK;
}

static int
file_id_eq(const struct file_id *a, const struct file_id *b)
{
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size
	    && a->mtime.tv_sec == b->mtime.tv_sec
	    && a->mtime.tv_nsec == b->mtime.tv_nsec
	    && a->ctime.tv_sec == b->ctime.tv_sec
	    && a->ctime.tv_nsec == b->ctime.tv_nsec;
}

/* The CA certificate of `store` that issued and signed `crl`, or NULL. */
static X509 *
crl_issuer(X509_STORE *store, X509_CRL *crl)
{
	STACK_OF(X509_OBJECT) *objs = X509_STORE_get0_objects(store);
	int i;

	for (i = 0; i < sk_X509_OBJECT_num(objs); i++) {
		X509 *ca = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objs, i));
		EVP_PKEY *pk;

		if (ca == NULL
		    || X509_NAME_cmp(
		           X509_get_subject_name(ca), X509_CRL_get_issuer(crl))
		        != 0)
			continue;
		if ((pk = X509_get0_pubkey(ca)) != NULL
		    && X509_CRL_verify(crl, pk) == 1)
			return ca;
	}
	ERR_clear_error();
	return NULL;
}

/* A new store: the client CA file and, when crl_file is set, every CRL in
 * it, each of which must be signed by a CA of the store. On failure nothing
 * is returned and the message says which CRL and why. */
static enum kb_err
store_build(const char *ca_file, const char *crl_file, X509_STORE **out,
    int64_t *next_update_us, int *ncrls)
{
	X509_STORE *st = NULL;
	X509_CRL *crl = NULL;
	BIO *bio = NULL;
	char what[600];
	enum kb_err e = KB_ERR_INTERNAL;
	int n = 0;

	*out = NULL;
	*next_update_us = 0;
	*ncrls = 0;
	if ((st = X509_STORE_new()) == NULL
	    || X509_STORE_load_file(st, ca_file) != 1) {
		snprintf(what, sizeof(what),
		    "cannot load the client CA file %s", ca_file);
		e = kb_err_openssl(KB_ERR_CONFIG, what);
		goto out;
	}
	if (crl_file != NULL) {
		if ((bio = BIO_new_file(crl_file, "r")) == NULL) {
			snprintf(what, sizeof(what),
			    "cannot open the client "
			    "CRL %s",
			    crl_file);
			e = kb_err_openssl(KB_ERR_CONFIG, what);
			goto out;
		}
		while ((crl = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL))
		    != NULL) {
			const ASN1_TIME *nu = X509_CRL_get0_nextUpdate(crl);
			int64_t t = kb_time_asn1_us(nu);

			n++;
			if (crl_issuer(st, crl) == NULL) {
				e = kb_errf(KB_ERR_CONFIG,
				    "client CRL %s: CRL "
				    "number %d is not signed by a CA of "
				    "client_ca %s",
				    crl_file, n, ca_file);
				goto out;
			}
			if (t != 0
			    && (*next_update_us == 0 || t < *next_update_us))
				*next_update_us = t;
			if (X509_STORE_add_crl(st, crl) != 1) {
				snprintf(what, sizeof(what),
				    "client CRL %s: "
				    "CRL number %d",
				    crl_file, n);
				e = kb_err_openssl(KB_ERR_CONFIG, what);
				goto out;
			}
			X509_CRL_free(crl);
			crl = NULL;
		}
		/* The loop ends at the end of the file or at a damaged CRL:
		 * only the first is fine. */
		if (ERR_GET_REASON(ERR_peek_last_error()) != PEM_R_NO_START_LINE
		    || n == 0) {
			snprintf(what, sizeof(what), "client CRL %s: %s",
			    crl_file,
			    n == 0 ? "no PEM CRL in the file"
			           : "a damaged CRL after the first ones");
			e = kb_err_openssl(KB_ERR_CONFIG, what);
			goto out;
		}
		ERR_clear_error();
		X509_STORE_set_flags(st, X509_V_FLAG_CRL_CHECK);
		X509_STORE_set_verify_cb(st, verify_cb);
	}
	*out = st;
	*ncrls = n;
	st = NULL;
	e = KB_OK;
out:
	X509_CRL_free(crl);
	BIO_free(bio);
	X509_STORE_free(st);
	return e;
}

enum kb_err
identity_verifier_new(const char *ca_file, struct identity_verifier **out)
{
	struct identity_verifier *v;
	enum kb_err e;
	int64_t nu;
	int n;

	*out = NULL;
	if ((v = calloc(1, sizeof(*v))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	pthread_mutex_init(&v->mu, NULL);
	if ((v->ca_file = strdup(ca_file)) == NULL) {
		identity_verifier_free(v);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	if ((e = store_build(ca_file, NULL, &v->store, &nu, &n)) != KB_OK) {
		identity_verifier_free(v);
		return e;
	}
	*out = v;
	return KB_OK;
}

/* Read the CRL file again; with v->mu held. On failure the verifier keeps
 * what it had. */
static enum kb_err
crl_reload_locked(struct identity_verifier *v, const char *why)
{
	X509_STORE *st = NULL;
	struct file_id fid;
	char nu_s[32];
	enum kb_err e;
	int64_t nu;
	int n;

	if ((e = file_id_of(v->crl_file, &fid)) != KB_OK
	    || (e = store_build(v->ca_file, v->crl_file, &st, &nu, &n))
	        != KB_OK)
		return e;
	X509_STORE_free(v->store);
	v->store = st;
	v->next_update_us = nu;
	v->ncrls = n;
	v->crl_id = fid;
	v->gen++; /* every cached result is void */
	v->stale_logged_mono_us = 0;
	fmt_time(nu, nu_s, sizeof(nu_s));
	log_info("client CRL %s %s: %d CRL%s, next update %s", v->crl_file, why,
	    n, n == 1 ? "" : "s", nu != 0 ? nu_s : "not set");
	return KB_OK;
}

enum kb_err
identity_verifier_set_crl(
    struct identity_verifier *v, const char *crl_file, int strict)
{
	enum kb_err e;

	pthread_mutex_lock(&v->mu);
	free(v->crl_file);
	v->crl_file = NULL;
	v->crl_strict = strict;
	if (crl_file != NULL && (v->crl_file = strdup(crl_file)) == NULL) {
		pthread_mutex_unlock(&v->mu);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	e = v->crl_file != NULL ? crl_reload_locked(v, "loaded") : KB_OK;
	v->crl_checked_mono_us = mono_us();
	pthread_mutex_unlock(&v->mu);
	return e;
}

enum kb_err
identity_verifier_reload(struct identity_verifier *v)
{
	enum kb_err e = KB_OK;

	pthread_mutex_lock(&v->mu);
	if (v->crl_file != NULL)
		e = crl_reload_locked(v, "reloaded (SIGHUP)");
	v->crl_checked_mono_us = mono_us();
	pthread_mutex_unlock(&v->mu);
	return e;
}

/* With v->mu held: read the CRL again if its file changed (looked at once
 * a second at most). A CRL that cannot be read keeps the previous one in
 * force, and says so each time the file changes. */
static void
crl_check_locked(struct identity_verifier *v)
{
	struct file_id fid;
	int64_t now = mono_us();

	if (v->crl_file == NULL || now - v->crl_checked_mono_us < CRL_STAT_US)
		return;
	v->crl_checked_mono_us = now;
	if (file_id_of(v->crl_file, &fid) != KB_OK) {
		if (v->crl_id.ino != 0)
			log_error("client CRL %s is gone: the CRL read before "
			          "stays in force",
			    v->crl_file);
		memset(&v->crl_id, 0, sizeof(v->crl_id));
		return;
	}
	if (file_id_eq(&fid, &v->crl_id))
		return;
	if (crl_reload_locked(v, "changed: reloaded") != KB_OK) {
		log_error("%s; the CRL read before stays in force",
		    kb_err_msg(KB_ERR_CONFIG));
		v->crl_id = fid; /* say it once per change */
	}
}

/* With v->mu held: KB_OK, or (client_crl_strict) an error when the CRL is
 * past its nextUpdate at `now_us`. A stale CRL is logged either way. */
static enum kb_err
crl_stale_locked(struct identity_verifier *v, int64_t now_us)
{
	char nu_s[32];
	int64_t m;

	if (v->crl_file == NULL || v->next_update_us == 0
	    || now_us < v->next_update_us)
		return KB_OK;
	fmt_time(v->next_update_us, nu_s, sizeof(nu_s));
	m = mono_us();
	if (v->stale_logged_mono_us == 0
	    || m - v->stale_logged_mono_us >= CRL_STALE_LOG_US) {
		v->stale_logged_mono_us = m;
		log_error(
		    "CLIENT CRL IS STALE: %s was due to be replaced at %s "
		    "(its nextUpdate); revocations since then are unknown to "
		    "the broker%s",
		    v->crl_file, nu_s,
		    v->crl_strict
		        ? "; client_crl_strict is on: every call is refused"
		        : "; set client_crl_strict = true to refuse calls "
		          "instead");
	}
	if (!v->crl_strict)
		return KB_OK;
	return kb_errf(KB_ERR_UNAVAILABLE,
	    "the broker's client CRL is past its "
	    "nextUpdate (%s) and client_crl_strict is on: every call is "
	    "refused until a fresh CRL is installed",
	    nu_s);
}

void
identity_verifier_free(struct identity_verifier *v)
{
	if (v == NULL)
		return;
	X509_STORE_free(v->store);
	free(v->ca_file);
	free(v->crl_file);
	pthread_mutex_destroy(&v->mu);
	free(v);
}

const char *
identity_role_name(enum role r)
{
	switch (r) {
	case ROLE_ADMIN: return "admin";
	case ROLE_SERVICE: return "service";
	case ROLE_AUDITOR: return "auditor";
	case ROLE_NONE: break;
	}
	return "none";
}

/* The one entry `nid` of `n` as UTF-8 in buf, *count the entries there
 * are. -1 when an entry cannot be read or holds a NUL or a control
 * character: such a name is not one the broker can judge. */
static int
name_entry(X509_NAME *n, int nid, char *buf, size_t len, int *count)
{
	int idx = -1, found = 0, i;
	X509_NAME_ENTRY *ent;
	unsigned char *utf8 = NULL;
	int ulen;

	buf[0] = '\0';
	*count = 0;
	while ((idx = X509_NAME_get_index_by_NID(n, nid, idx)) >= 0) {
		found++;
		if (found > 1)
			continue;
		ent = X509_NAME_get_entry(n, idx);
		ulen =
		    ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(ent));
		if (ulen < 0)
			return -1;
		for (i = 0; i < ulen; i++) {
			if (utf8[i] < 0x20 || utf8[i] == 0x7f) {
				OPENSSL_free(utf8);
				return -1;
			}
		}
		if ((size_t)ulen >= len) {
			OPENSSL_free(utf8);
			return -1;
		}
		memcpy(buf, utf8, (size_t)ulen);
		buf[ulen] = '\0';
		OPENSSL_free(utf8);
		utf8 = NULL;
	}
	*count = found;
	return 0;
}

/* A URI as it may be shown in a message: printable ASCII, others as \xNN,
 * at most about 100 characters. */
static void
uri_show(const unsigned char *u, size_t len, char *buf, size_t blen)
{
	size_t i, o = 0;

	for (i = 0; i < len && o + 5 < blen && o < 100; i++) {
		if (u[i] >= 0x20 && u[i] < 0x7f && u[i] != '"' && u[i] != '\\')
			buf[o++] = (char)u[i];
		else
			o += (size_t)snprintf(
			    buf + o, blen - o, "\\x%02x", u[i]);
	}
	if (i < len && o + 4 < blen)
		o += (size_t)snprintf(buf + o, blen - o, "...");
	buf[o] = '\0';
}

enum kb_err
identity_scope_parse(const unsigned char *uri, size_t len,
    struct identity_scope *s, int *platform)
{
	char buf[256], *p, *slash;
	size_t i;

	memset(s, 0, sizeof(*s));
	*platform = 0;
	if (len >= sizeof(buf))
		return kb_errf(KB_ERR_PERMISSION_DENIED,
		    "it is longer than %zu "
		    "bytes",
		    sizeof(buf) - 1);
	for (i = 0; i < len; i++) {
		if (uri[i] == '\0')
			return kb_errf(KB_ERR_PERMISSION_DENIED,
			    "it contains a NUL "
			    "byte at position %zu",
			    i + 1);
		if (uri[i] < 0x21 || uri[i] > 0x7e)
			return kb_errf(KB_ERR_PERMISSION_DENIED,
			    "it contains byte "
			    "0x%02x at position %zu",
			    uri[i], i + 1);
	}
	memcpy(buf, uri, len);
	buf[len] = '\0';
	if (strncmp(buf, "kb://", 5) != 0)
		return kb_errf(KB_ERR_PERMISSION_DENIED,
		    "it does not start with "
		    "\"kb://\" (scheme and authority are lowercase and exact; "
		    "the broker accepts no other URI in a client certificate)");
	p = buf + 5;
	if (strcmp(p, "platform") == 0) {
		*platform = 1;
		return KB_OK;
	}
	if (strncmp(p, "env/", 4) == 0) {
		p += 4;
		if ((slash = strchr(p, '/')) == NULL)
			return kb_errf(KB_ERR_PERMISSION_DENIED,
			    "kb://env/ needs "
			    "a tenant and an environment: kb://env/TENANT/ENV");
		*slash = '\0';
		if (names_check_id("its tenant", p) != KB_OK
		    || names_check_id("its environment", slash + 1) != KB_OK)
			return kb_errf(KB_ERR_PERMISSION_DENIED, "%s",
			    kb_err_msg(KB_ERR_INVALID_ARGUMENT));
		snprintf(s->tenant, sizeof(s->tenant), "%.63s", p);
		snprintf(s->env, sizeof(s->env), "%.63s", slash + 1);
		return KB_OK;
	}
	if (strncmp(p, "tenant/", 7) == 0) {
		p += 7;
		if (names_check_id("its tenant", p) != KB_OK)
			return kb_errf(KB_ERR_PERMISSION_DENIED, "%s",
			    kb_err_msg(KB_ERR_INVALID_ARGUMENT));
		snprintf(s->tenant, sizeof(s->tenant), "%.63s", p);
		return KB_OK;
	}
	return kb_errf(KB_ERR_PERMISSION_DENIED,
	    "it is none of kb://platform, "
	    "kb://tenant/TENANT, kb://env/TENANT/ENV");
}

/* The certificate's serial number in hex, as `openssl x509 -serial`
 * prints it. */
static void
serial_hex(X509 *cert, char *buf, size_t len)
{
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
	char *hex = bn != NULL ? BN_bn2hex(bn) : NULL;

	snprintf(buf, len, "%s", hex != NULL ? hex : "?");
	OPENSSL_free(hex);
	BN_free(bn);
}

/* Chain, validity and revocation of `cert` against `store` at now_us. */
static enum kb_err
verify_chain(
    X509_STORE *store, const char *crl_file, X509 *cert, int64_t now_us)
{
	X509_STORE_CTX *ctx = NULL;
	char serial[80], cn[128];
	enum kb_err e = KB_ERR_INTERNAL;
	int err, count;

	if ((ctx = X509_STORE_CTX_new()) == NULL
	    || X509_STORE_CTX_init(ctx, store, cert, NULL) != 1) {
		e = kb_err_openssl(
		    KB_ERR_NOMEM, "verifying the client certificate");
		goto out;
	}
	X509_STORE_CTX_set_time(ctx, 0, (time_t)(now_us / 1000000));
	X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT);
	if (X509_verify_cert(ctx) == 1) {
		e = KB_OK;
		goto out;
	}
	err = X509_STORE_CTX_get_error(ctx);
	serial_hex(cert, serial, sizeof(serial));
	if (err == X509_V_ERR_CERT_REVOKED) {
		if (name_entry(X509_get_subject_name(cert), NID_commonName, cn,
		        sizeof(cn), &count)
		    != 0)
			cn[0] = '\0';
		e = kb_errf(KB_ERR_UNAUTHENTICATED,
		    "client certificate serial %s "
		    "(CN \"%s\") is revoked: the client CRL %s lists it",
		    serial, cn, crl_file != NULL ? crl_file : "");
	} else if (err == X509_V_ERR_UNABLE_TO_GET_CRL) {
		e = kb_errf(KB_ERR_UNAUTHENTICATED,
		    "client certificate serial %s "
		    "refused: the client CRL %s has no CRL of the CA that "
		    "issued it",
		    serial, crl_file != NULL ? crl_file : "");
	} else {
		e = kb_errf(KB_ERR_UNAUTHENTICATED,
		    "client certificate refused: "
		    "%s (it must be issued by the broker's client CA and be "
		    "valid now)",
		    X509_verify_cert_error_string(err));
	}
out:
	ERR_clear_error();
	X509_STORE_CTX_free(ctx);
	return e;
}

static enum kb_err
verify_and_parse(X509_STORE *store, const char *crl_file, X509 *cert,
    int64_t now_us, struct identity *out)
{
	GENERAL_NAMES *sans = NULL;
	X509_NAME *subj;
	char ou[64], shown[128];
	int i, count;
	enum kb_err e = KB_ERR_INTERNAL;

	memset(out, 0, sizeof(*out));
	if ((e = verify_chain(store, crl_file, cert, now_us)) != KB_OK)
		goto out;
	out->not_after_us = kb_time_asn1_us(X509_get0_notAfter(cert));
	subj = X509_get_subject_name(cert);
	if (name_entry(
	        subj, NID_commonName, out->name, sizeof(out->name), &count)
	    != 0) {
		out->name[0] = '\0';
		e = kb_errf(KB_ERR_UNAUTHENTICATED,
		    "client certificate has a "
		    "Subject CN the broker cannot read exactly (a NUL or "
		    "control "
		    "character, not UTF-8, or longer than %zu bytes)",
		    sizeof(out->name) - 1);
		goto out;
	}
	if (count != 1 || out->name[0] == '\0') {
		e = kb_errf(KB_ERR_UNAUTHENTICATED,
		    "client certificate must have "
		    "exactly one Subject CN naming the caller");
		goto out;
	}
	if (name_entry(subj, NID_organizationalUnitName, ou, sizeof(ou), &count)
	    != 0) {
		e = kb_errf(KB_ERR_PERMISSION_DENIED,
		    "certificate of \"%s\" has "
		    "a Subject OU the broker cannot read exactly (a NUL or "
		    "control character, or not UTF-8)",
		    out->name);
		goto out;
	}
	if (count != 1) {
		e = kb_errf(KB_ERR_PERMISSION_DENIED,
		    "certificate of \"%s\" has "
		    "no keybroker role: its Subject must have exactly one OU, "
		    "one of admin, service, auditor",
		    out->name);
		goto out;
	}
	if (strcmp(ou, "admin") == 0)
		out->role = ROLE_ADMIN;
	else if (strcmp(ou, "service") == 0)
		out->role = ROLE_SERVICE;
	else if (strcmp(ou, "auditor") == 0)
		out->role = ROLE_AUDITOR;
	else {
		e = kb_errf(KB_ERR_PERMISSION_DENIED,
		    "certificate of \"%s\" has "
		    "role OU=\"%s\", which keybroker does not know (use admin, "
		    "service or auditor)",
		    out->name, ou);
		goto out;
	}
	sans = X509_get_ext_d2i(cert, NID_subject_alt_name, &i, NULL);
	if (sans == NULL && i != -1) {
		/* Present but unreadable, or there twice. */
		e = kb_errf(KB_ERR_PERMISSION_DENIED,
		    "certificate of \"%s\" has "
		    "a subjectAltName extension the broker cannot read",
		    out->name);
		goto out;
	}
	for (i = 0; sans != NULL && i < sk_GENERAL_NAME_num(sans); i++) {
		const GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);
		struct identity_scope s;
		const unsigned char *uri;
		int len, platform;

		/* DNS names, IP addresses and e-mail addresses say nothing
		 * to keybroker; every URI must be one of ours, exactly. */
		if (gn->type != GEN_URI)
			continue;
		uri = ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier);
		len = ASN1_STRING_length(gn->d.uniformResourceIdentifier);
		uri_show(uri, len > 0 ? (size_t)len : 0, shown, sizeof(shown));
		if (len <= 0
		    || identity_scope_parse(uri, (size_t)len, &s, &platform)
		        != KB_OK) {
			if (len <= 0)
				kb_errf(
				    KB_ERR_PERMISSION_DENIED, "it is empty");
			e = kb_errf(KB_ERR_PERMISSION_DENIED,
			    "certificate of "
			    "\"%s\" is refused: its SAN URI \"%s\" cannot be "
			    "used: %s",
			    out->name, shown,
			    kb_err_msg(KB_ERR_PERMISSION_DENIED));
			goto out;
		}
		if (platform) {
			if (out->role != ROLE_ADMIN) {
				e = kb_errf(KB_ERR_PERMISSION_DENIED,
				    "certificate "
				    "of \"%s\" (role %s) may not carry the URI "
				    "kb://platform (admins only)",
				    out->name, identity_role_name(out->role));
				goto out;
			}
			out->platform = 1;
			continue;
		}
		if ((out->role == ROLE_SERVICE && s.env[0] == '\0')
		    || (out->role != ROLE_SERVICE && s.env[0] != '\0')
		    || out->role == ROLE_AUDITOR) {
			e = kb_errf(KB_ERR_PERMISSION_DENIED,
			    "certificate of "
			    "\"%s\" (role %s) may not carry the URI \"%s\"",
			    out->name, identity_role_name(out->role), shown);
			goto out;
		}
		if (out->nscopes == IDENTITY_MAX_SCOPES) {
			e = kb_errf(KB_ERR_PERMISSION_DENIED,
			    "certificate of "
			    "\"%s\" has more than %d keybroker URIs",
			    out->name, IDENTITY_MAX_SCOPES);
			goto out;
		}
		out->scopes[out->nscopes++] = s;
	}
	if (out->role == ROLE_SERVICE && out->nscopes == 0) {
		e = kb_errf(KB_ERR_PERMISSION_DENIED,
		    "service certificate of "
		    "\"%s\" names no environment (it needs a SAN URI "
		    "kb://env/TENANT/ENV)",
		    out->name);
		goto out;
	}
	if (out->role == ROLE_ADMIN && out->platform && out->nscopes > 0) {
		e = kb_errf(KB_ERR_PERMISSION_DENIED,
		    "admin certificate of \"%s\" "
		    "carries both kb://platform and kb://tenant/ URIs: it must "
		    "be "
		    "one or the other",
		    out->name);
		goto out;
	}
	if (out->role == ROLE_ADMIN && !out->platform && out->nscopes == 0) {
		e = kb_errf(KB_ERR_PERMISSION_DENIED,
		    "admin certificate of \"%s\" "
		    "names no scope: a platform-wide admin must carry the SAN "
		    "URI "
		    "kb://platform, a tenant admin kb://tenant/TENANT (reissue "
		    "it: "
		    "deploy/pki.sh admin NAME [TENANT...])",
		    out->name);
		goto out;
	}
	e = KB_OK;
out:
	GENERAL_NAMES_free(sans);
	return e;
}

enum kb_err
identity_from_pem(struct identity_verifier *v, const char *pem, size_t len,
    int64_t now_us, struct identity *out)
{
	uint8_t hash[32];
	struct cache_slot *slot;
	X509_STORE *store = NULL;
	BIO *bio = NULL;
	X509 *cert = NULL;
	uint64_t gen;
	enum kb_err e;

	memset(out, 0, sizeof(*out));
	if (pem == NULL || len == 0)
		return kb_errf(KB_ERR_UNAUTHENTICATED,
		    "no client certificate: "
		    "keybroker requires mutual TLS");
	if (EVP_Digest(pem, len, hash, NULL, EVP_sha256(), NULL) != 1)
		return kb_err_openssl(KB_ERR_CRYPTO, "hashing the certificate");
	slot = &v->cache[hash[0]];
	pthread_mutex_lock(&v->mu);
	crl_check_locked(v);
	if ((e = crl_stale_locked(v, now_us)) != KB_OK) {
		pthread_mutex_unlock(&v->mu);
		return e;
	}
	if (slot->used && slot->gen == v->gen
	    && memcmp(slot->hash, hash, 32) == 0 && now_us < slot->until_us
	    && now_us >= slot->until_us - CACHE_TTL_US) {
		e = slot->result;
		*out = slot->id;
		if (e != KB_OK)
			kb_errf(e, "%s", slot->msg);
		pthread_mutex_unlock(&v->mu);
		return e;
	}
	/* Verify against the store of now, outside the lock: a reload in the
	 * meantime bumps the generation, and this result is then not cached. */
	X509_STORE_up_ref(v->store);
	store = v->store;
	gen = v->gen;
	pthread_mutex_unlock(&v->mu);

	if ((bio = BIO_new_mem_buf(pem, (int)len)) == NULL
	    || (cert = PEM_read_bio_X509(bio, NULL, NULL, NULL)) == NULL) {
		e = kb_err_openssl(KB_ERR_UNAUTHENTICATED,
		    "cannot parse the "
		    "client certificate");
		goto out;
	}
	e = verify_and_parse(store, v->crl_file, cert, now_us, out);
	if (e == KB_ERR_UNAUTHENTICATED)
		out->name[0] = '\0'; /* not verified: names nobody */
	if (e != KB_OK) {
		/* A refused certificate grants nothing, whatever was parsed
		 * before the refusal; only its name stays, for messages. */
		out->role = ROLE_NONE;
		out->platform = 0;
		out->nscopes = 0;
		memset(out->scopes, 0, sizeof(out->scopes));
	}
	pthread_mutex_lock(&v->mu);
	if (gen == v->gen) {
		memcpy(slot->hash, hash, 32);
		slot->used = 1;
		slot->gen = gen;
		slot->result = e;
		slot->id = *out;
		slot->until_us = now_us + CACHE_TTL_US;
		if (e == KB_OK && out->not_after_us > 0
		    && out->not_after_us < slot->until_us)
			slot->until_us = out->not_after_us;
		snprintf(slot->msg, sizeof(slot->msg), "%s", kb_err_msg(e));
	}
	pthread_mutex_unlock(&v->mu);
out:
	X509_free(cert);
	BIO_free(bio);
	X509_STORE_free(store);
	return e;
}

int
identity_may_tenant(const struct identity *id, const char *tenant)
{
	size_t i;

	if (id->role == ROLE_AUDITOR)
		return 1;
	/* A service's kb://env/T/E is no scope over tenant T as a whole. */
	if (id->role != ROLE_ADMIN)
		return 0;
	if (id->platform)
		return 1;
	for (i = 0; i < id->nscopes; i++)
		if (strcmp(id->scopes[i].tenant, tenant) == 0)
			return 1;
	return 0;
}

int
identity_may_env(const struct identity *id, const char *tenant, const char *env)
{
	size_t i;

	if (id->role != ROLE_SERVICE)
		return 0;
	for (i = 0; i < id->nscopes; i++)
		if (strcmp(id->scopes[i].tenant, tenant) == 0
		    && strcmp(id->scopes[i].env, env) == 0)
			return 1;
	return 0;
}
