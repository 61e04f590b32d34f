/* SPDX-License-Identifier: Apache-2.0 */
/* audit_export.c: the audit export format, its offline verification, and
 * tail's state file. */
#include "audit_export.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "kb_time.h"

/* Static names carry an ax_ prefix: the unit test compiles this file
 * together with other client sources. */

/* ---- building ---- */

/* o[key] = v; v is stolen, also on failure (jansson releases it then),
 * which clears *ok. */
static void
ax_put(json_t *o, const char *key, json_t *v, int *ok)
{
	if (v == NULL || json_object_set_new(o, key, v) != 0)
		*ok = 0;
}

/* A JSON string of `s` (NULL as ""); NULL when not UTF-8. */
static json_t *
ax_str(const char *s)
{
	return json_string(s != NULL ? s : "");
}

static json_t *
ax_hex(const uint8_t *p, size_t n)
{
	char *buf = malloc(2 * n + 1);
	json_t *j;

	if (buf == NULL)
		return NULL;
	kb_hex_encode(p, n, buf);
	j = json_string(buf);
	free(buf);
	return j;
}

static json_t *
ax_b64(const uint8_t *p, size_t n)
{
	size_t cap = kb_base64_len(n, KB_B64_STD) + 1;
	char *buf = malloc(cap);
	json_t *j;

	if (buf == NULL)
		return NULL;
	(void)kb_base64_encode(p, n, buf, cap, KB_B64_STD);
	j = json_string(buf);
	free(buf);
	return j;
}

/* "time" (RFC 3339) and "time_us". */
static void
ax_put_time(json_t *o, int64_t us, int *ok)
{
	char t[40];

	ax_put(o, "time", json_string(kb_time_format(us, t, sizeof(t))), ok);
	ax_put(o, "time_us", json_integer((json_int_t)us), ok);
}

json_t *
audit_export_event_json(const Keybroker__V1__Event *ev, int typed)
{
	json_t *o = json_object();
	int ok = o != NULL;

	if (typed)
		ax_put(o, "type", json_string("event"), &ok);
	ax_put(o, "seq", json_integer((json_int_t)ev->seq), &ok);
	ax_put_time(o, ev->time_us, &ok);
	ax_put(o, "actor", ax_str(ev->actor), &ok);
	ax_put(o, "role", ax_str(ev->role), &ok);
	ax_put(o, "peer", ax_str(ev->peer), &ok);
	ax_put(o, "method", ax_str(ev->method), &ok);
	ax_put(o, "tenant_id", ax_str(ev->tenant_id), &ok);
	ax_put(o, "environment", ax_str(ev->environment), &ok);
	ax_put(o, "key_id", ax_str(ev->key_id), &ok);
	ax_put(o, "result", ax_str(ev->result), &ok);
	ax_put(o, "reason", ax_str(ev->reason), &ok);
	ax_put(o, "request_id", ax_str(ev->request_id), &ok);
	ax_put(o, "hash", ax_hex(ev->hash.data, ev->hash.len), &ok);
	if (!ok) {
		json_decref(o);
		return NULL;
	}
	return o;
}

json_t *
audit_export_checkpoint_json(const Keybroker__V1__Checkpoint *cp)
{
	json_t *o = json_object();
	int ok = o != NULL;

	ax_put(o, "type", json_string("checkpoint"), &ok);
	ax_put(o, "seq", json_integer((json_int_t)cp->seq), &ok);
	ax_put_time(o, cp->time_us, &ok);
	ax_put(
	    o, "head_hash", ax_hex(cp->head_hash.data, cp->head_hash.len), &ok);
	ax_put(o, "prev_signature",
	    ax_b64(cp->prev_signature.data, cp->prev_signature.len), &ok);
	ax_put(
	    o, "signature", ax_b64(cp->signature.data, cp->signature.len), &ok);
	ax_put(o, "key_id", ax_str(cp->key_id), &ok);
	if (!ok) {
		json_decref(o);
		return NULL;
	}
	return o;
}

static json_t *
ax_key_json(const Keybroker__V1__AuditKey *key, int with_state)
{
	json_t *k = json_object();
	int ok = k != NULL;

	ax_put(k, "key_id", ax_str(key->key_id), &ok);
	ax_put(k, "algorithm", ax_str(key->algorithm), &ok);
	ax_put(k, "fingerprint", ax_str(key->fingerprint), &ok);
	ax_put(k, "public_key_pem", ax_str(key->public_key_pem), &ok);
	if (with_state)
		ax_put(k, "state", ax_str(key->state), &ok);
	if (!ok) {
		json_decref(k);
		return NULL;
	}
	return k;
}

json_t *
audit_export_header_json(const Keybroker__V1__AuditKey *key,
    const Keybroker__V1__ListAuditKeysResponse *all, int64_t now_us,
    uint64_t head_seq)
{
	json_t *o = json_object(), *k = ax_key_json(key, 0), *arr;
	char t[40];
	int ok = o != NULL && k != NULL;
	size_t i;

	ax_put(o, "type", json_string("header"), &ok);
	ax_put(o, "format", json_string(AUDIT_EXPORT_FORMAT), &ok);
	ax_put(o, "version", json_integer(AUDIT_EXPORT_VERSION), &ok);
	ax_put(o, "exported_at",
	    json_string(kb_time_format(now_us, t, sizeof(t))), &ok);
	ax_put(o, "exported_at_us", json_integer((json_int_t)now_us), &ok);
	ax_put(o, "head_seq", json_integer((json_int_t)head_seq), &ok);
	if (k != NULL)
		json_incref(k);
	ax_put(o, "audit_key", k, &ok);
	json_decref(k);
	if (ok && all != NULL && all->n_keys > 1) {
		arr = json_array();
		ok = arr != NULL;
		for (i = 0; ok && i < all->n_keys; i++)
			ok = json_array_append_new(
			         arr, ax_key_json(all->keys[i], 1))
			    == 0;
		if (arr != NULL)
			json_incref(arr);
		ax_put(o, "audit_keys", arr, &ok);
		json_decref(arr);
	}
	if (!ok) {
		json_decref(o);
		return NULL;
	}
	return o;
}

/* ---- the audit key ---- */

enum kb_err
audit_export_key_load(const char *pem, EVP_PKEY **pub, char fp[65])
{
	BIO *b = NULL;
	EVP_PKEY *pk = NULL;
	unsigned char *der = NULL, md[EVP_MAX_MD_SIZE];
	unsigned int md_len = 0;
	int len;
	enum kb_err r = KB_ERR_INTERNAL;

	*pub = NULL;
	fp[0] = '\0';
	if ((b = BIO_new_mem_buf(pem, -1)) == NULL) {
		r = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	if ((pk = PEM_read_bio_PUBKEY(b, NULL, NULL, NULL)) == NULL) {
		r = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the audit key is not a PEM public key");
		goto out;
	}
	if (EVP_PKEY_base_id(pk) != EVP_PKEY_RSA) {
		r = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "the audit key is not an RSA key (checkpoints are signed "
		    "with " KB_AUDIT_SIG_ALG ")");
		goto out;
	}
	if ((len = i2d_PUBKEY(pk, &der)) <= 0
	    || EVP_Digest(der, (size_t)len, md, &md_len, EVP_sha256(), NULL)
	        != 1
	    || md_len != 32) {
		r = kb_err_openssl(
		    KB_ERR_CRYPTO, "fingerprinting the audit key");
		goto out;
	}
	kb_hex_encode(md, md_len, fp);
	*pub = pk;
	pk = NULL;
	r = KB_OK;
out:
	ERR_clear_error();
	OPENSSL_free(der);
	EVP_PKEY_free(pk);
	BIO_free(b);
	return r;
}

int
audit_export_fp_normalize(const char *in, char out[65])
{
	size_t n = 0;
	const char *p;

	for (p = in; *p != '\0'; p++) {
		char c = *p;

		if (c == ':' || c == ' ')
			continue;
		if (c >= 'A' && c <= 'F')
			c = (char)(c - 'A' + 'a');
		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))
		    || n >= 64)
			return -1;
		out[n++] = c;
	}
	out[n] = '\0';
	return n == 64 ? 0 : -1;
}

/* ---- verification ---- */

struct audit_export_verifier {
	char pin[65];
	int allow_unsigned;
	int have_header;
	EVP_PKEY *pub;
	struct kb_audit_verifier *kv;
	/* Our own failure: a malformed item or a refused header. */
	int failed;
	uint64_t fail_seq;
	unsigned long fail_line;
	char fail_reason[768];
	char fingerprint[65];
	char key_id[128];
	/* For the note on a missing event: the first gap in the sequence
	 * numbers, and the newest checkpoint fed before it. */
	uint64_t prev_seq, max_cp_seq, gap_want, gap_cp;
	int have_prev, gap_seen;
};

enum kb_err
audit_export_verifier_new(const char *pin, struct audit_export_verifier **out)
{
	struct audit_export_verifier *v = calloc(1, sizeof(*v));

	*out = NULL;
	if (v == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	if (pin != NULL)
		snprintf(v->pin, sizeof(v->pin), "%s", pin);
	*out = v;
	return KB_OK;
}

void
audit_export_verifier_allow_unsigned(struct audit_export_verifier *v)
{
	v->allow_unsigned = 1;
}

void
audit_export_verifier_free(struct audit_export_verifier *v)
{
	if (v == NULL)
		return;
	kb_audit_verifier_free(v->kv);
	EVP_PKEY_free(v->pub);
	free(v);
}

static int ax_fail(struct audit_export_verifier *v, unsigned long line,
    uint64_t seq, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static int
ax_fail(struct audit_export_verifier *v, unsigned long line, uint64_t seq,
    const char *fmt, ...)
{
	va_list ap;

	if (v->failed)
		return -1;
	v->failed = 1;
	v->fail_line = line;
	v->fail_seq = seq;
	va_start(ap, fmt);
	vsnprintf(v->fail_reason, sizeof(v->fail_reason), fmt, ap);
	va_end(ap);
	return -1;
}

/* A string member, or NULL (a missing member and a wrong type alike). */
static const char *
ax_get_str(const json_t *o, const char *key)
{
	const json_t *j = json_object_get(o, key);

	return json_is_string(j) ? json_string_value(j) : NULL;
}

static int
ax_get_int(const json_t *o, const char *key, json_int_t *out)
{
	const json_t *j = json_object_get(o, key);

	if (!json_is_integer(j))
		return -1;
	*out = json_integer_value(j);
	return 0;
}

/* Standard base64 (padding required) into out; -1 when malformed. */
static int
ax_b64_decode(const char *in, uint8_t *out, size_t cap, size_t *len)
{
	return kb_base64_decode(
	           in, strlen(in), out, cap, len, NULL, KB_B64_STRICT)
	        == 0
	    ? 0
	    : -1;
}

/* "time" must be time_us in RFC 3339 (any number of fraction digits). */
static int
ax_time_matches(const char *t, json_int_t us)
{
	int64_t parsed;

	if (t == NULL || !(t[0] >= '0' && t[0] <= '9'))
		return 0;
	return kb_time_parse(t, 0, &parsed) == 0 && parsed == (int64_t)us;
}

/* The header's "audit_keys" (optional): every key the log has used. */
static int
ax_header_keys(struct audit_export_verifier *v, const json_t *arr,
    unsigned long line, int *pinned)
{
	const char *pem, *fp, *kid;
	char have[65];
	EVP_PKEY *pub = NULL;
	size_t i;
	enum kb_err e;

	if (arr == NULL)
		return 0;
	if (!json_is_array(arr))
		return ax_fail(v, line, 0,
		    "the header's \"audit_keys\" is not "
		    "an array");
	for (i = 0; i < json_array_size(arr); i++) {
		const json_t *k = json_array_get(arr, i);

		if (!json_is_object(k)
		    || (pem = ax_get_str(k, "public_key_pem")) == NULL
		    || (fp = ax_get_str(k, "fingerprint")) == NULL
		    || (kid = ax_get_str(k, "key_id")) == NULL)
			return ax_fail(v, line, 0,
			    "the header's audit_keys[%zu] "
			    "needs \"key_id\", \"fingerprint\" and "
			    "\"public_key_pem\" strings",
			    i);
		if ((e = audit_export_key_load(pem, &pub, have)) != KB_OK)
			return ax_fail(v, line, 0, "audit_keys[%zu]: %s", i,
			    kb_err_msg(e));
		if (strcasecmp(fp, have) != 0) {
			EVP_PKEY_free(pub);
			return ax_fail(v, line, 0,
			    "the header says audit key "
			    "%.72s's fingerprint is %.64s, but its public "
			    "key's "
			    "is %s",
			    kid, fp, have);
		}
		e = kb_audit_verifier_add_key(v->kv, kid, have, pub);
		EVP_PKEY_free(pub);
		if (e != KB_OK)
			return ax_fail(v, line, 0, "%s", kb_err_msg(e));
		if (v->pin[0] != '\0' && strcmp(v->pin, have) == 0)
			*pinned = 1;
	}
	return 0;
}

static int
ax_header(struct audit_export_verifier *v, const json_t *o, unsigned long line)
{
	const json_t *k = json_object_get(o, "audit_key");
	const char *fmt = ax_get_str(o, "format"), *pem, *fp, *alg, *kid;
	json_int_t ver;
	enum kb_err e;
	int pinned;

	if (fmt == NULL || strcmp(fmt, AUDIT_EXPORT_FORMAT) != 0)
		return ax_fail(v, line, 0,
		    "the header's \"format\" is not \"" AUDIT_EXPORT_FORMAT
		    "\"");
	if (ax_get_int(o, "version", &ver) != 0)
		return ax_fail(v, line, 0, "the header has no \"version\"");
	if (ver != AUDIT_EXPORT_VERSION)
		return ax_fail(v, line, 0,
		    "export version %lld is not supported (this kbctl reads "
		    "version %d)",
		    (long long)ver, AUDIT_EXPORT_VERSION);
	if (!json_is_object(k)
	    || (pem = ax_get_str(k, "public_key_pem")) == NULL
	    || (fp = ax_get_str(k, "fingerprint")) == NULL
	    || (alg = ax_get_str(k, "algorithm")) == NULL
	    || (kid = ax_get_str(k, "key_id")) == NULL)
		return ax_fail(v, line, 0,
		    "the header's \"audit_key\" needs \"key_id\", "
		    "\"algorithm\", \"fingerprint\" and \"public_key_pem\" "
		    "strings");
	if (strcmp(alg, KB_AUDIT_SIG_ALG) != 0)
		return ax_fail(v, line, 0,
		    "audit key algorithm \"%.64s\" is not supported (only "
		    "%s)",
		    alg, KB_AUDIT_SIG_ALG);
	if ((e = audit_export_key_load(pem, &v->pub, v->fingerprint)) != KB_OK)
		return ax_fail(v, line, 0, "%s", kb_err_msg(e));
	snprintf(v->key_id, sizeof(v->key_id), "%s", kid);
	if (strcasecmp(fp, v->fingerprint) != 0)
		return ax_fail(v, line, 0,
		    "the header says the audit key's fingerprint is %.64s, but "
		    "its public key's is %s",
		    fp, v->fingerprint);
	if ((e = kb_audit_verifier_new(v->pub, &v->kv)) != KB_OK
	    || (e = kb_audit_verifier_add_key(
	            v->kv, kid, v->fingerprint, v->pub))
	        != KB_OK)
		return ax_fail(v, line, 0, "%s", kb_err_msg(e));
	pinned = v->pin[0] != '\0' && strcmp(v->pin, v->fingerprint) == 0;
	if (ax_header_keys(v, json_object_get(o, "audit_keys"), line, &pinned)
	    != 0)
		return -1;
	if (v->pin[0] != '\0' && !pinned)
		return ax_fail(v, line, 0,
		    "the export's audit key has fingerprint %s, not the pinned "
		    "%s: the key in the file is not the broker's (it may have "
		    "been replaced)",
		    v->fingerprint, v->pin);
	if (v->pin[0] != '\0')
		kb_audit_verifier_pin(v->kv, v->pin);
	if (v->allow_unsigned)
		kb_audit_verifier_allow_unsigned(v->kv);
	v->have_header = 1;
	return 0;
}

static int
ax_event(struct audit_export_verifier *v, const json_t *o, unsigned long line)
{
	static const char *const names[] = {"actor", "role", "peer", "method",
	    "tenant_id", "environment", "key_id", "result", "reason",
	    "request_id"};
	const char *s[10], *hash;
	uint8_t h[64];
	size_t hlen = 0, i;
	json_int_t seq, t;
	struct kb_audit_event ev;

	if (ax_get_int(o, "seq", &seq) != 0 || seq < 1)
		return ax_fail(
		    v, line, 0, "an event needs \"seq\", a number from 1");
	if (ax_get_int(o, "time_us", &t) != 0)
		return ax_fail(v, line, (uint64_t)seq,
		    "event %lld has no \"time_us\" number", (long long)seq);
	if (!ax_time_matches(ax_get_str(o, "time"), t))
		return ax_fail(v, line, (uint64_t)seq,
		    "event %lld: \"time\" is not time_us %lld in RFC 3339",
		    (long long)seq, (long long)t);
	for (i = 0; i < 10; i++)
		if ((s[i] = ax_get_str(o, names[i])) == NULL)
			return ax_fail(v, line, (uint64_t)seq,
			    "event %lld has no \"%s\" string", (long long)seq,
			    names[i]);
	if ((hash = ax_get_str(o, "hash")) == NULL
	    || kb_hex_decode(hash, h, sizeof(h), &hlen) != 0)
		return ax_fail(v, line, (uint64_t)seq,
		    "event %lld: \"hash\" is not a hex hash", (long long)seq);
	memset(&ev, 0, sizeof(ev));
	ev.seq = (uint64_t)seq;
	ev.time_us = (int64_t)t;
	ev.actor = s[0];
	ev.role = s[1];
	ev.peer = s[2];
	ev.method = s[3];
	ev.tenant = s[4];
	ev.env = s[5];
	ev.key_id = s[6];
	ev.result = s[7];
	ev.reason = s[8];
	ev.request_id = s[9];
	if (!v->gap_seen
	    && (v->have_prev ? ev.seq > v->prev_seq + 1 : ev.seq > 1)) {
		v->gap_seen = 1;
		v->gap_want = v->have_prev ? v->prev_seq + 1 : 1;
		v->gap_cp = v->max_cp_seq;
	}
	v->prev_seq = ev.seq;
	v->have_prev = 1;
	kb_audit_verifier_event(v->kv, &ev, h, hlen);
	return 0;
}

static int
ax_checkpoint(
    struct audit_export_verifier *v, const json_t *o, unsigned long line)
{
	const char *hh, *ps, *sg, *kid;
	uint8_t head[64], prev[1024], sig[1024];
	size_t head_len = 0, prev_len = 0, sig_len = 0;
	json_int_t seq, t;
	struct kb_audit_checkpoint cp;

	if (ax_get_int(o, "seq", &seq) != 0 || seq < 1)
		return ax_fail(
		    v, line, 0, "a checkpoint needs \"seq\", a number from 1");
	if (ax_get_int(o, "time_us", &t) != 0)
		return ax_fail(v, line, (uint64_t)seq,
		    "checkpoint %lld has no \"time_us\" number",
		    (long long)seq);
	if (!ax_time_matches(ax_get_str(o, "time"), t))
		return ax_fail(v, line, (uint64_t)seq,
		    "checkpoint %lld: \"time\" is not time_us %lld in RFC 3339",
		    (long long)seq, (long long)t);
	if ((hh = ax_get_str(o, "head_hash")) == NULL
	    || kb_hex_decode(hh, head, sizeof(head), &head_len) != 0
	    || head_len != KB_AUDIT_HASH_LEN)
		return ax_fail(v, line, (uint64_t)seq,
		    "checkpoint %lld: \"head_hash\" is not 64 hex digits",
		    (long long)seq);
	if ((ps = ax_get_str(o, "prev_signature")) == NULL
	    || ax_b64_decode(ps, prev, sizeof(prev), &prev_len) != 0)
		return ax_fail(v, line, (uint64_t)seq,
		    "checkpoint %lld: \"prev_signature\" is not base64",
		    (long long)seq);
	if ((sg = ax_get_str(o, "signature")) == NULL
	    || ax_b64_decode(sg, sig, sizeof(sig), &sig_len) != 0)
		return ax_fail(v, line, (uint64_t)seq,
		    "checkpoint %lld: \"signature\" is not base64",
		    (long long)seq);
	if ((kid = ax_get_str(o, "key_id")) == NULL)
		return ax_fail(v, line, (uint64_t)seq,
		    "checkpoint %lld has no \"key_id\" string", (long long)seq);
	memset(&cp, 0, sizeof(cp));
	cp.seq = (uint64_t)seq;
	memcpy(cp.head_hash, head, KB_AUDIT_HASH_LEN);
	cp.time_us = (int64_t)t;
	cp.prev_sig = prev;
	cp.prev_sig_len = prev_len;
	cp.sig = sig;
	cp.sig_len = sig_len;
	cp.key_id = kid;
	if (cp.seq > v->max_cp_seq)
		v->max_cp_seq = cp.seq;
	kb_audit_verifier_checkpoint(v->kv, &cp);
	return 0;
}

int
audit_export_verifier_item(
    struct audit_export_verifier *v, const json_t *item, unsigned long line)
{
	const char *type;

	if (v->failed)
		return -1;
	if (!json_is_object(item))
		return ax_fail(v, line, 0, "not a JSON object");
	if ((type = ax_get_str(item, "type")) == NULL)
		return ax_fail(v, line, 0, "no \"type\"");
	if (!v->have_header) {
		if (strcmp(type, "header") != 0)
			return ax_fail(v, line, 0,
			    "the first line must be the export's header "
			    "(\"type\": \"header\")");
		return ax_header(v, item, line);
	}
	if (strcmp(type, "event") == 0)
		return ax_event(v, item, line);
	if (strcmp(type, "checkpoint") == 0)
		return ax_checkpoint(v, item, line);
	if (strcmp(type, "header") == 0)
		return ax_fail(v, line, 0, "a second header");
	return ax_fail(v, line, 0, "unknown \"type\" \"%.32s\"", type);
}

int
audit_export_verifier_line(struct audit_export_verifier *v, const char *text,
    size_t len, unsigned long line)
{
	json_error_t err;
	json_t *j;
	int r;

	if (v->failed)
		return -1;
	if (len == 0)
		return ax_fail(v, line, 0, "an empty line");
	if ((j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err)) == NULL)
		return ax_fail(v, line, 0, "not JSON: %s (column %d)", err.text,
		    err.column);
	r = audit_export_verifier_item(v, j, line);
	json_decref(j);
	return r;
}

void
audit_export_verifier_finish(struct audit_export_verifier *v,
    unsigned long end_line, struct audit_export_report *rep)
{
	struct kb_audit_result res;
	size_t n;

	memset(rep, 0, sizeof(*rep));
	memset(&res, 0, sizeof(res));
	snprintf(
	    rep->fingerprint, sizeof(rep->fingerprint), "%s", v->fingerprint);
	snprintf(rep->key_id, sizeof(rep->key_id), "%s", v->key_id);
	if (v->kv != NULL && v->failed) {
		/* Input stopped early: what it lacks proves nothing. */
		kb_audit_verifier_allow_unsigned(v->kv);
		kb_audit_verifier_pin(v->kv, "");
	}
	if (v->kv != NULL)
		kb_audit_verifier_finish(v->kv, &res);
	else
		res.ok = 1;
	rep->events = res.events;
	rep->first_seq = res.first_seq;
	rep->last_seq = res.last_seq;
	rep->checkpoints = res.checkpoints;
	rep->covered_seq = res.covered_seq;
	rep->pinned = res.pinned;
	rep->rotations = res.rotations;
	rep->unfinished = res.unfinished;
	rep->unfinished_interrupted = res.unfinished_interrupted;
	rep->unfinished_overflow = res.unfinished_overflow;
	rep->unfinished_shown = res.unfinished_shown;
	memcpy(rep->unfinished_first, res.unfinished_first,
	    sizeof(rep->unfinished_first));
	/* The log's failure came before a malformed item: it is the first. */
	if (!res.ok) {
		rep->seq = res.first_bad_seq;
		snprintf(rep->reason, sizeof(rep->reason), "%s", res.reason);
		n = strlen(rep->reason);
		if (v->gap_seen && res.first_bad_seq == v->gap_want
		    && v->gap_cp >= v->gap_want
		    && strstr(rep->reason, "is missing") != NULL)
			snprintf(rep->reason + n, sizeof(rep->reason) - n,
			    "; the signed checkpoint at %" PRIu64
			    " covers it: it was deleted after it was signed",
			    v->gap_cp);
		return;
	}
	if (v->failed) {
		rep->seq = v->fail_seq;
		rep->line = v->fail_line;
		snprintf(
		    rep->reason, sizeof(rep->reason), "%s", v->fail_reason);
		return;
	}
	if (!v->have_header) {
		rep->line = end_line;
		snprintf(rep->reason, sizeof(rep->reason),
		    "the export is empty: it has no header");
		return;
	}
	if (res.events == 0) {
		snprintf(rep->reason, sizeof(rep->reason),
		    "the export holds no events");
		return;
	}
	rep->ok = 1;
}

/* ---- tail's state file ---- */

enum kb_err
audit_state_read(const char *path, uint64_t *seq, int *found)
{
	char buf[64], *end;
	ssize_t n;
	int fd;
	unsigned long long v;

	*found = 0;
	*seq = 0;
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
		if (errno == ENOENT)
			return KB_OK;
		return kb_errf(KB_ERR_IO, "cannot read state file %s: %s", path,
		    strerror(errno));
	}
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 0)
		return kb_errf(KB_ERR_IO, "cannot read state file %s: %s", path,
		    strerror(errno));
	buf[n] = '\0';
	errno = 0;
	v = strtoull(buf, &end, 10);
	if (end == buf || buf[0] < '0' || buf[0] > '9' || errno != 0
	    || (*end != '\0' && strcmp(end, "\n") != 0))
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "state file %s does not hold a sequence number; remove it "
		    "to start again",
		    path);
	*seq = v;
	*found = 1;
	return KB_OK;
}

enum kb_err
audit_state_write(const char *path, uint64_t seq)
{
	char tmp[4096], buf[32];
	int fd, n;
	ssize_t w;

	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp))
		return kb_errf(
		    KB_ERR_INVALID_ARGUMENT, "state file name too long");
	n = snprintf(buf, sizeof(buf), "%" PRIu64 "\n", seq);
	if ((fd = open(tmp,
	         O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600))
	    < 0)
		return kb_errf(KB_ERR_IO, "cannot write state file %s: %s", tmp,
		    strerror(errno));
	w = write(fd, buf, (size_t)n);
	if (w != n) {
		int err = errno;

		close(fd);
		(void)unlink(tmp);
		return kb_errf(KB_ERR_IO, "cannot write state file %s: %s", tmp,
		    w < 0 ? strerror(err) : "short write");
	}
	if (close(fd) != 0) {
		int err = errno;

		(void)unlink(tmp);
		return kb_errf(KB_ERR_IO, "cannot write state file %s: %s", tmp,
		    strerror(err));
	}
	if (rename(tmp, path) != 0) {
		int err = errno;

		(void)unlink(tmp);
		return kb_errf(KB_ERR_IO, "cannot rename %s to %s: %s", tmp,
		    path, strerror(err));
	}
	return KB_OK;
}
