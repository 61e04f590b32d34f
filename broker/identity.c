/* SPDX-License-Identifier: Apache-2.0 */
/* identity.c: verify client certificates against the client CA and map them
 * to roles and scopes. */
#include "identity.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/asn1.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* A verified certificate is trusted from the cache for at most this long
 * (and never past its notAfter), so a changed clock or CA takes effect soon. */
#define CACHE_TTL_US (60LL * 1000000)
#define CACHE_SLOTS 256

struct cache_slot {
	uint8_t hash[32];
	int used;
	int64_t until_us;
	enum kb_err result;
	char msg[256];
	struct identity id;
};

struct identity_verifier {
	X509_STORE *store;
	pthread_mutex_t mu;
	struct cache_slot cache[CACHE_SLOTS];
};

enum kb_err
identity_verifier_new(const char *ca_file, struct identity_verifier **out)
{
	struct identity_verifier *v;

	*out = NULL;
	if ((v = calloc(1, sizeof(*v))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	pthread_mutex_init(&v->mu, NULL);
	if ((v->store = X509_STORE_new()) == NULL ||
	    X509_STORE_load_file(v->store, ca_file) != 1) {
		identity_verifier_free(v);
		return kb_err_openssl(KB_ERR_CONFIG, "cannot load the client CA "
		    "file");
	}
	*out = v;
	return KB_OK;
}

void
identity_verifier_free(struct identity_verifier *v)
{
	if (v == NULL)
		return;
	X509_STORE_free(v->store);
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

static int
name_entry(X509_NAME *n, int nid, char *buf, size_t len, int *count)
{
	int idx = -1, found = 0;
	X509_NAME_ENTRY *ent;
	unsigned char *utf8 = NULL;
	int ulen;

	buf[0] = '\0';
	while ((idx = X509_NAME_get_index_by_NID(n, nid, idx)) >= 0) {
		found++;
		if (found > 1)
			continue;
		ent = X509_NAME_get_entry(n, idx);
		ulen = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(ent));
		if (ulen < 0)
			return -1;
		snprintf(buf, len, "%.*s", ulen, utf8);
		OPENSSL_free(utf8);
		utf8 = NULL;
	}
	*count = found;
	return 0;
}

/* Parse "kb://env/T/E" or "kb://tenant/T" into a scope. */
static int
parse_scope(const char *uri, size_t len, struct identity_scope *s)
{
	char buf[256], *p, *slash;

	if (len >= sizeof(buf))
		return -1;
	memcpy(buf, uri, len);
	buf[len] = '\0';
	memset(s, 0, sizeof(*s));
	if (strncmp(buf, "kb://env/", 9) == 0) {
		p = buf + 9;
		if ((slash = strchr(p, '/')) == NULL)
			return -1;
		*slash = '\0';
		if (*p == '\0' || slash[1] == '\0' || strchr(slash + 1, '/') ||
		    strlen(p) >= sizeof(s->tenant) ||
		    strlen(slash + 1) >= sizeof(s->env))
			return -1;
		snprintf(s->tenant, sizeof(s->tenant), "%s", p);
		snprintf(s->env, sizeof(s->env), "%s", slash + 1);
		return 0;
	}
	if (strncmp(buf, "kb://tenant/", 12) == 0) {
		p = buf + 12;
		if (*p == '\0' || strchr(p, '/') || strlen(p) >= sizeof(s->tenant))
			return -1;
		snprintf(s->tenant, sizeof(s->tenant), "%s", p);
		return 0;
	}
	return -1;
}

static int64_t
asn1_time_us(const ASN1_TIME *t)
{
	struct tm tm;

	if (ASN1_TIME_to_tm(t, &tm) != 1)
		return 0;
	return (int64_t)timegm(&tm) * 1000000;
}

static enum kb_err
verify_and_parse(struct identity_verifier *v, X509 *cert, int64_t now_us,
    struct identity *out)
{
	X509_STORE_CTX *ctx = NULL;
	GENERAL_NAMES *sans = NULL;
	X509_NAME *subj;
	char ou[64];
	int i, count, rc;
	enum kb_err e = KB_ERR_INTERNAL;

	memset(out, 0, sizeof(*out));
	if ((ctx = X509_STORE_CTX_new()) == NULL ||
	    X509_STORE_CTX_init(ctx, v->store, cert, NULL) != 1) {
		e = kb_err_openssl(KB_ERR_NOMEM, "verifying the client certificate");
		goto out;
	}
	X509_STORE_CTX_set_time(ctx, 0, (time_t)(now_us / 1000000));
	X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT);
	if ((rc = X509_verify_cert(ctx)) != 1) {
		int err = X509_STORE_CTX_get_error(ctx);
		e = kb_errf(KB_ERR_UNAUTHENTICATED, "client certificate refused: "
		    "%s (it must be issued by the broker's client CA and be "
		    "valid now)", X509_verify_cert_error_string(err));
		goto out;
	}
	out->not_after_us = asn1_time_us(X509_get0_notAfter(cert));
	subj = X509_get_subject_name(cert);
	if (name_entry(subj, NID_commonName, out->name, sizeof(out->name),
	    &count) != 0 || count != 1 || out->name[0] == '\0') {
		e = kb_errf(KB_ERR_UNAUTHENTICATED, "client certificate must have "
		    "exactly one Subject CN naming the caller");
		goto out;
	}
	if (name_entry(subj, NID_organizationalUnitName, ou, sizeof(ou),
	    &count) != 0 || count != 1) {
		e = kb_errf(KB_ERR_PERMISSION_DENIED, "certificate of \"%s\" has "
		    "no keybroker role: its Subject must have exactly one OU, "
		    "one of admin, service, auditor", out->name);
		goto out;
	}
	if (strcmp(ou, "admin") == 0)
		out->role = ROLE_ADMIN;
	else if (strcmp(ou, "service") == 0)
		out->role = ROLE_SERVICE;
	else if (strcmp(ou, "auditor") == 0)
		out->role = ROLE_AUDITOR;
	else {
		e = kb_errf(KB_ERR_PERMISSION_DENIED, "certificate of \"%s\" has "
		    "role OU=\"%s\", which keybroker does not know (use admin, "
		    "service or auditor)", out->name, ou);
		goto out;
	}
	sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
	for (i = 0; sans != NULL && i < sk_GENERAL_NAME_num(sans); i++) {
		const GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);
		struct identity_scope s;
		const char *uri;
		int len;

		if (gn->type != GEN_URI)
			continue;
		uri = (const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier);
		len = ASN1_STRING_length(gn->d.uniformResourceIdentifier);
		if (len < 5 || strncmp(uri, "kb://", 5) != 0)
			continue;
		if (parse_scope(uri, (size_t)len, &s) != 0) {
			e = kb_errf(KB_ERR_PERMISSION_DENIED, "certificate of "
			    "\"%s\" has a malformed keybroker URI \"%.*s\" (use "
			    "kb://env/TENANT/ENV or kb://tenant/TENANT)", out->name,
			    len > 100 ? 100 : len, uri);
			goto out;
		}
		if ((out->role == ROLE_SERVICE && s.env[0] == '\0') ||
		    (out->role != ROLE_SERVICE && s.env[0] != '\0') ||
		    out->role == ROLE_AUDITOR) {
			e = kb_errf(KB_ERR_PERMISSION_DENIED, "certificate of "
			    "\"%s\" (role %s) may not carry the URI \"%.*s\"",
			    out->name, identity_role_name(out->role),
			    len > 100 ? 100 : len, uri);
			goto out;
		}
		if (out->nscopes == IDENTITY_MAX_SCOPES) {
			e = kb_errf(KB_ERR_PERMISSION_DENIED, "certificate of "
			    "\"%s\" has more than %d keybroker URIs", out->name,
			    IDENTITY_MAX_SCOPES);
			goto out;
		}
		out->scopes[out->nscopes++] = s;
	}
	if (out->role == ROLE_SERVICE && out->nscopes == 0) {
		e = kb_errf(KB_ERR_PERMISSION_DENIED, "service certificate of "
		    "\"%s\" names no environment (it needs a SAN URI "
		    "kb://env/TENANT/ENV)", out->name);
		goto out;
	}
	e = KB_OK;
out:
	GENERAL_NAMES_free(sans);
	X509_STORE_CTX_free(ctx);
	return e;
}

enum kb_err
identity_from_pem(struct identity_verifier *v, const char *pem, size_t len,
    int64_t now_us, struct identity *out)
{
	uint8_t hash[32];
	struct cache_slot *slot;
	BIO *bio = NULL;
	X509 *cert = NULL;
	enum kb_err e;

	if (pem == NULL || len == 0)
		return kb_errf(KB_ERR_UNAUTHENTICATED, "no client certificate: "
		    "keybroker requires mutual TLS");
	if (EVP_Digest(pem, len, hash, NULL, EVP_sha256(), NULL) != 1)
		return kb_err_openssl(KB_ERR_CRYPTO, "hashing the certificate");
	slot = &v->cache[hash[0]];
	pthread_mutex_lock(&v->mu);
	if (slot->used && memcmp(slot->hash, hash, 32) == 0 &&
	    now_us < slot->until_us && now_us >= slot->until_us - CACHE_TTL_US) {
		e = slot->result;
		*out = slot->id;
		if (e != KB_OK)
			kb_errf(e, "%s", slot->msg);
		pthread_mutex_unlock(&v->mu);
		return e;
	}
	pthread_mutex_unlock(&v->mu);

	if ((bio = BIO_new_mem_buf(pem, (int)len)) == NULL ||
	    (cert = PEM_read_bio_X509(bio, NULL, NULL, NULL)) == NULL) {
		e = kb_err_openssl(KB_ERR_UNAUTHENTICATED, "cannot parse the "
		    "client certificate");
		goto out;
	}
	e = verify_and_parse(v, cert, now_us, out);
	if (e == KB_ERR_UNAUTHENTICATED)
		out->name[0] = '\0';    /* not verified: names nobody */
	pthread_mutex_lock(&v->mu);
	memcpy(slot->hash, hash, 32);
	slot->used = 1;
	slot->result = e;
	slot->id = *out;
	slot->until_us = now_us + CACHE_TTL_US;
	if (e == KB_OK && out->not_after_us > 0 && out->not_after_us < slot->until_us)
		slot->until_us = out->not_after_us;
	snprintf(slot->msg, sizeof(slot->msg), "%s", kb_err_msg(e));
	pthread_mutex_unlock(&v->mu);
out:
	X509_free(cert);
	BIO_free(bio);
	return e;
}

int
identity_may_tenant(const struct identity *id, const char *tenant)
{
	size_t i;

	if (id->role == ROLE_AUDITOR)
		return 1;
	if (id->role == ROLE_ADMIN && id->nscopes == 0)
		return 1;
	for (i = 0; i < id->nscopes; i++)
		if (strcmp(id->scopes[i].tenant, tenant) == 0)
			return 1;
	return 0;
}

int
identity_may_env(const struct identity *id, const char *tenant,
    const char *env)
{
	size_t i;

	if (id->role != ROLE_SERVICE)
		return 0;
	for (i = 0; i < id->nscopes; i++)
		if (strcmp(id->scopes[i].tenant, tenant) == 0 &&
		    strcmp(id->scopes[i].env, env) == 0)
			return 1;
	return 0;
}
