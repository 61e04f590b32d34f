/* SPDX-License-Identifier: Apache-2.0 */
/* kb_audit.c: canonical event encoding, hash chain, checkpoint signatures
 * and the verifier. */
#include "kb_audit.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rsa.h>

#define KEYS_MAX 64

struct vkey {
	char id[KB_AUDIT_KEY_ID_MAX];
	char fp[65];
	EVP_PKEY *pub;
	int in_force; /* has been the key in force */
};

struct kb_audit_verifier {
	EVP_PKEY *pub;
	int failed;
	int allow_unsigned;
	char pin[65];
	/* Published keys; the one in force (-1: none yet); a rotation seen
	 * and not yet covered by the old key's checkpoint. */
	struct vkey keys[KEYS_MAX];
	size_t nkeys;
	int cur;
	uint64_t rot_seq;
	char rot_new[KB_AUDIT_KEY_ID_MAX], rot_fp[65];
	struct kb_audit_result res;
	uint8_t last_hash[KB_AUDIT_HASH_LEN];
	uint8_t *last_sig;
	size_t last_sig_len;
	uint64_t last_cp_seq;
	int have_event;
	/* Hashes of events since the last checkpoint, to check a checkpoint
	 * whose seq is behind the newest event. Kept for the last few. */
	uint64_t ring_seq[1024];
	uint8_t ring_hash[1024][KB_AUDIT_HASH_LEN];
	/* "started" events waiting for their outcome, in log order; seq 0
	 * marks one whose outcome came (dropped from the end at once, from
	 * elsewhere when the array is full). Grows to KB_AUDIT_PENDING_MAX. */
	struct kb_audit_unfinished *pend;
	size_t npend, pend_cap;
	/* Calls counted unfinished since the last broker.start. */
	uint64_t unfinished_open;
};

#define PENDING_FIRST 64

static void
put_field(EVP_MD_CTX *md, const char *s)
{
	uint8_t len[4];
	size_t n = s != NULL ? strlen(s) : 0;

	len[0] = (uint8_t)(n >> 24);
	len[1] = (uint8_t)(n >> 16);
	len[2] = (uint8_t)(n >> 8);
	len[3] = (uint8_t)n;
	EVP_DigestUpdate(md, len, 4);
	if (n > 0)
		EVP_DigestUpdate(md, s, n);
}

enum kb_err
kb_audit_event_hash(const uint8_t prev[KB_AUDIT_HASH_LEN],
    const struct kb_audit_event *ev, uint8_t out[KB_AUDIT_HASH_LEN])
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	char seq[32], t[32];
	unsigned int olen = 0;

	if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(md);
		return kb_err_openssl(KB_ERR_CRYPTO, "hashing an audit event");
	}
	snprintf(seq, sizeof(seq), "%" PRIu64, ev->seq);
	snprintf(t, sizeof(t), "%" PRId64, ev->time_us);
	EVP_DigestUpdate(md, prev, KB_AUDIT_HASH_LEN);
	EVP_DigestUpdate(md, "kbev1", 5);
	put_field(md, seq);
	put_field(md, t);
	put_field(md, ev->actor);
	put_field(md, ev->role);
	put_field(md, ev->peer);
	put_field(md, ev->method);
	put_field(md, ev->tenant);
	put_field(md, ev->env);
	put_field(md, ev->key_id);
	put_field(md, ev->result);
	put_field(md, ev->reason);
	put_field(md, ev->request_id);
	EVP_DigestFinal_ex(md, out, &olen);
	EVP_MD_CTX_free(md);
	return KB_OK;
}

static void
be64(uint8_t *p, uint64_t v)
{
	int i;

	for (i = 7; i >= 0; i--) {
		p[i] = (uint8_t)v;
		v >>= 8;
	}
}

enum kb_err
kb_audit_checkpoint_data(
    const struct kb_audit_checkpoint *cp, uint8_t **out, size_t *len)
{
	size_t n = 5 + 8 + KB_AUDIT_HASH_LEN + 8 + 4 + cp->prev_sig_len;
	uint8_t *p;

	if ((p = malloc(n)) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	memcpy(p, "kbcp1", 5);
	be64(p + 5, cp->seq);
	memcpy(p + 13, cp->head_hash, KB_AUDIT_HASH_LEN);
	be64(p + 13 + KB_AUDIT_HASH_LEN, (uint64_t)cp->time_us);
	p[53] = (uint8_t)(cp->prev_sig_len >> 24);
	p[54] = (uint8_t)(cp->prev_sig_len >> 16);
	p[55] = (uint8_t)(cp->prev_sig_len >> 8);
	p[56] = (uint8_t)cp->prev_sig_len;
	if (cp->prev_sig_len > 0)
		memcpy(p + 57, cp->prev_sig, cp->prev_sig_len);
	*out = p;
	*len = n;
	return KB_OK;
}

enum kb_err
kb_audit_checkpoint_verify(EVP_PKEY *pub, const struct kb_audit_checkpoint *cp)
{
	EVP_MD_CTX *md = NULL;
	EVP_PKEY_CTX *pctx = NULL;
	uint8_t *data = NULL;
	size_t len = 0;
	enum kb_err e;
	int rc;

	if ((e = kb_audit_checkpoint_data(cp, &data, &len)) != KB_OK)
		return e;
	if ((md = EVP_MD_CTX_new()) == NULL
	    || EVP_DigestVerifyInit(md, &pctx, EVP_sha256(), NULL, pub) != 1
	    || EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) != 1) {
		e = kb_err_openssl(
		    KB_ERR_CRYPTO, "setting up signature checks");
		goto out;
	}
	rc = EVP_DigestVerify(md, cp->sig, cp->sig_len, data, len);
	ERR_clear_error();
	e = rc == 1 ? KB_OK
	            : kb_errf(KB_ERR_CORRUPT,
	                "the signature does not "
	                "verify with the audit key");
out:
	EVP_MD_CTX_free(md);
	free(data);
	return e;
}

enum kb_err
kb_audit_verifier_new(EVP_PKEY *pub, struct kb_audit_verifier **out)
{
	struct kb_audit_verifier *v = calloc(1, sizeof(*v));

	*out = NULL;
	if (v == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	v->pend_cap = PENDING_FIRST;
	if ((v->pend = calloc(v->pend_cap, sizeof(*v->pend))) == NULL) {
		free(v);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	v->pub = pub;
	v->cur = -1;
	v->res.ok = 1;
	*out = v;
	return KB_OK;
}

enum kb_err
kb_audit_verifier_add_key(struct kb_audit_verifier *v, const char *key_id,
    const char *fp, EVP_PKEY *pub)
{
	size_t i;

	for (i = 0; i < v->nkeys; i++)
		if (strcmp(v->keys[i].id, key_id) == 0)
			return strcmp(v->keys[i].fp, fp) == 0
			    ? KB_OK
			    : kb_errf(KB_ERR_INVALID_ARGUMENT,
			        "audit key %s is "
			        "published twice, with different public keys",
			        key_id);
	if (v->nkeys == KEYS_MAX)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "more than %d audit keys", KEYS_MAX);
	if (strlen(key_id) >= sizeof(v->keys[0].id) || strlen(fp) != 64)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "audit key id or "
		    "fingerprint malformed");
	if (EVP_PKEY_up_ref(pub) != 1)
		return kb_errf(KB_ERR_CRYPTO, "EVP_PKEY_up_ref failed");
	snprintf(v->keys[v->nkeys].id, sizeof(v->keys[0].id), "%s", key_id);
	snprintf(v->keys[v->nkeys].fp, sizeof(v->keys[0].fp), "%s", fp);
	v->keys[v->nkeys].pub = pub;
	v->nkeys++;
	return KB_OK;
}

void
kb_audit_verifier_pin(struct kb_audit_verifier *v, const char *fp)
{
	snprintf(v->pin, sizeof(v->pin), "%s", fp);
}

void
kb_audit_verifier_allow_unsigned(struct kb_audit_verifier *v)
{
	v->allow_unsigned = 1;
}

int
kb_audit_rotation_format(char *out, size_t len, const char *new_id,
    const char *new_fp, const char *old_id, const char *old_fp)
{
	int n = snprintf(out, len,
	    "audit signing key %s (fingerprint %s) "
	    "replaces %s (fingerprint %s)",
	    new_id, new_fp, old_id, old_fp);

	return n > 0 && (size_t)n < len ? 0 : -1;
}

static int
is_fp(const char *s)
{
	size_t i;

	for (i = 0; i < 64; i++)
		if (!((s[i] >= '0' && s[i] <= '9')
		        || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	return s[64] == '\0';
}

int
kb_audit_rotation_parse(const char *reason, char new_id[KB_AUDIT_KEY_ID_MAX],
    char new_fp[65], char old_id[KB_AUDIT_KEY_ID_MAX], char old_fp[65])
{
	char again[512];
	int n = 0;

	if (reason == NULL || strlen(reason) >= sizeof(again))
		return -1;
	if (sscanf(reason,
	        "audit signing key %71s (fingerprint %64[0-9a-f]) "
	        "replaces %71s (fingerprint %64[0-9a-f])%n",
	        new_id, new_fp, old_id, old_fp, &n)
	        != 4
	    || reason[n] != '\0' || !is_fp(new_fp) || !is_fp(old_fp))
		return -1;
	/* Exactly the format, nothing looser. */
	if (kb_audit_rotation_format(
	        again, sizeof(again), new_id, new_fp, old_id, old_fp)
	        != 0
	    || strcmp(again, reason) != 0)
		return -1;
	return 0;
}

void
kb_audit_verifier_free(struct kb_audit_verifier *v)
{
	size_t i;

	if (v == NULL)
		return;
	for (i = 0; i < v->nkeys; i++)
		EVP_PKEY_free(v->keys[i].pub);
	free(v->pend);
	free(v->last_sig);
	free(v);
}

static void fail(struct kb_audit_verifier *v, uint64_t seq, const char *fmt,
    ...) __attribute__((format(printf, 3, 4)));

static void
fail(struct kb_audit_verifier *v, uint64_t seq, const char *fmt, ...)
{
	va_list ap;

	if (v->failed)
		return;
	v->failed = 1;
	v->res.ok = 0;
	v->res.first_bad_seq = seq;
	va_start(ap, fmt);
	vsnprintf(v->res.reason, sizeof(v->res.reason), fmt, ap);
	va_end(ap);
}

/* Copy s (NULL as "") into dst, cut short at a UTF-8 character boundary. */
static void
copy_field(char *dst, size_t size, const char *s)
{
	size_t n = s != NULL ? strlen(s) : 0;

	if (n >= size) {
		n = size - 1;
		while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
			n--;
	}
	if (n > 0)
		memcpy(dst, s, n);
	dst[n] = '\0';
}

static int
field_is(const char *s, const char *want)
{
	return s != NULL && strcmp(s, want) == 0;
}

/* A call that will get no outcome: count it, keep the first few. */
static void
unfinished_add(struct kb_audit_verifier *v, const struct kb_audit_unfinished *u,
    int overflow)
{
	struct kb_audit_result *r = &v->res;

	r->unfinished++;
	if (overflow)
		r->unfinished_overflow++;
	v->unfinished_open++;
	if (r->unfinished_shown < KB_AUDIT_UNFINISHED_SHOWN)
		r->unfinished_first[r->unfinished_shown++] = *u;
}

void
kb_audit_system_rid(
    char *out, size_t len, const char *instance, uint64_t time_us)
{
	if (instance != NULL)
		snprintf(out, len, "sys-%s-%llx", instance,
		    (unsigned long long)time_us);
	else
		snprintf(out, len, "sys-%llx", (unsigned long long)time_us);
}

/* The broker instance a system event's request id names ("sys-" 8 hex
 * digits "-" ...), into inst; 0 for one from before instances ("sys-"
 * and a time), which ends every broker's calls. */
static int
start_instance(const char *rid, char inst[9])
{
	size_t i;

	if (strncmp(rid, "sys-", 4) != 0 || strlen(rid) < 14 || rid[12] != '-')
		return 0;
	for (i = 0; i < 8; i++) {
		if (!isxdigit((unsigned char)rid[4 + i]))
			return 0;
		inst[i] = rid[4 + i];
	}
	inst[8] = '\0';
	return 1;
}

/* A call's request id ("r-" instance counter) is of instance inst. */
static int
of_instance(const char *rid, const char *inst)
{
	return strncmp(rid, "r-", 2) == 0 && strncmp(rid + 2, inst, 8) == 0;
}

/* Every call still waiting is unfinished; `restart` (a KB_AUDIT_CUT_*): a
 * broker.start says the broker that ran them, and those counted before,
 * stopped; an audit.recovered that their outcomes were lost while its
 * audit log could not write. `inst` (not NULL): several brokers write the
 * log, and the one that started (or recovered) is that instance: only its
 * calls were cut short, the others' still wait. */
static void
pending_flush(struct kb_audit_verifier *v, int restart, const char *inst)
{
	size_t i, n = 0;

	for (i = 0; i < v->npend; i++) {
		if (v->pend[i].seq == 0)
			continue;
		if (inst != NULL && !of_instance(v->pend[i].request_id, inst)) {
			v->pend[n++] = v->pend[i];
			continue;
		}
		unfinished_add(v, &v->pend[i], 0);
	}
	v->npend = n;
	if (!restart)
		return;
	/* Everything shown so far (of that instance) comes before this
	 * broker.start. */
	for (i = 0; i < v->res.unfinished_shown; i++)
		if ((inst == NULL
		        || of_instance(
		            v->res.unfinished_first[i].request_id, inst))
		    && v->res.unfinished_first[i].interrupted == 0)
			v->res.unfinished_first[i].interrupted = restart;
	v->res.unfinished_interrupted += v->unfinished_open;
	v->unfinished_open = 0;
}

/* Room for one more waiting call. When the array is full: drop the calls
 * whose outcome came; then, if more than three quarters still wait, grow,
 * or at KB_AUDIT_PENDING_MAX count the oldest as unfinished (so this runs
 * at most once every quarter of the array). */
static void
pending_make_room(struct kb_audit_verifier *v)
{
	struct kb_audit_unfinished *p;
	size_t i, n = 0, keep = v->pend_cap / 4 * 3, cap;

	if (v->npend < v->pend_cap)
		return;
	for (i = 0; i < v->npend; i++)
		if (v->pend[i].seq != 0)
			v->pend[n++] = v->pend[i];
	v->npend = n;
	if (n <= keep)
		return;
	if (v->pend_cap < KB_AUDIT_PENDING_MAX) {
		cap = v->pend_cap * 2;
		if (cap > KB_AUDIT_PENDING_MAX)
			cap = KB_AUDIT_PENDING_MAX;
		if ((p = reallocarray(v->pend, cap, sizeof(*p))) != NULL) {
			v->pend = p;
			v->pend_cap = cap;
			return;
		}
		/* Out of memory: as if at the limit. */
	}
	for (i = 0; i < n - keep; i++)
		unfinished_add(v, &v->pend[i], 1);
	memmove(v->pend, v->pend + (n - keep), keep * sizeof(*v->pend));
	v->npend = keep;
}

/* Track a verified event: a "started" waits for its outcome (the same
 * request_id and method, any other result); a broker.start ends every
 * wait. */
static void
pending_event(struct kb_audit_verifier *v, const struct kb_audit_event *ev)
{
	struct kb_audit_unfinished *p, u;
	size_t i;

	if (field_is(ev->role, "system")
	    && field_is(ev->method, "broker.start")) {
		char inst[9], rid[40];

		copy_field(rid, sizeof(rid), ev->request_id);
		pending_flush(v, KB_AUDIT_CUT_RESTART,
		    start_instance(rid, inst) ? inst : NULL);
		return;
	}
	/* A broker's audit log writes again after an outage: the outcomes of
	 * its calls that were waiting were lost (only one that names its
	 * instance says whose). */
	if (field_is(ev->role, "system")
	    && field_is(ev->method, "audit.recovered")) {
		char inst[9], rid[40];

		copy_field(rid, sizeof(rid), ev->request_id);
		if (start_instance(rid, inst))
			pending_flush(v, KB_AUDIT_CUT_AUDIT_OUTAGE, inst);
		return;
	}
	memset(&u, 0, sizeof(u));
	u.seq = ev->seq;
	copy_field(u.method, sizeof(u.method), ev->method);
	copy_field(u.request_id, sizeof(u.request_id), ev->request_id);
	if (field_is(ev->result, "started")) {
		copy_field(u.tenant, sizeof(u.tenant), ev->tenant);
		copy_field(u.env, sizeof(u.env), ev->env);
		copy_field(u.actor, sizeof(u.actor), ev->actor);
		pending_make_room(v);
		v->pend[v->npend++] = u;
		return;
	}
	/* The newest waiting call first: outcomes follow closely. */
	for (i = v->npend; i > 0; i--) {
		p = &v->pend[i - 1];
		if (p->seq != 0 && strcmp(p->request_id, u.request_id) == 0
		    && strcmp(p->method, u.method) == 0) {
			p->seq = 0;
			break;
		}
	}
	while (v->npend > 0 && v->pend[v->npend - 1].seq == 0)
		v->npend--;
}

static struct vkey *
key_find(struct kb_audit_verifier *v, const char *id)
{
	size_t i;

	for (i = 0; id != NULL && i < v->nkeys; i++)
		if (strcmp(v->keys[i].id, id) == 0)
			return &v->keys[i];
	return NULL;
}

/* A verified rotation event: the key in force hands over to the new key
 * once one of its checkpoints covers this event. */
static void
rotation_event(struct kb_audit_verifier *v, const struct kb_audit_event *ev)
{
	char nid[KB_AUDIT_KEY_ID_MAX], nfp[65], oid[KB_AUDIT_KEY_ID_MAX];
	char ofp[65];
	struct vkey *old;

	if (kb_audit_rotation_parse(ev->reason, nid, nfp, oid, ofp) != 0
	    || !field_is(ev->key_id, nid)) {
		fail(v, ev->seq,
		    "event %" PRIu64 " rotates the audit key but is "
		    "not in the rotation format",
		    ev->seq);
		return;
	}
	if (v->rot_seq != 0) {
		fail(v, ev->seq,
		    "event %" PRIu64 " rotates the audit key again "
		    "before the rotation at %" PRIu64 " took effect",
		    ev->seq, v->rot_seq);
		return;
	}
	if (v->nkeys == 0)
		return; /* no published keys: only the chain counts */
	if (v->cur < 0) {
		/* Before the first checkpoint: the old key is the first. */
		if ((old = key_find(v, oid)) == NULL) {
			fail(v, ev->seq,
			    "event %" PRIu64 " rotates from audit key "
			    "%s, which the export does not publish",
			    ev->seq, oid);
			return;
		}
		v->cur = (int)(old - v->keys);
		old->in_force = 1;
	}
	old = &v->keys[v->cur];
	if (strcmp(old->id, oid) != 0 || strcmp(old->fp, ofp) != 0) {
		fail(v, ev->seq,
		    "event %" PRIu64 " rotates from audit key %s, "
		    "but the key in force is %s",
		    ev->seq, oid, old->id);
		return;
	}
	v->rot_seq = ev->seq;
	snprintf(v->rot_new, sizeof(v->rot_new), "%s", nid);
	snprintf(v->rot_fp, sizeof(v->rot_fp), "%s", nfp);
}

void
kb_audit_verifier_event(struct kb_audit_verifier *v,
    const struct kb_audit_event *ev, const uint8_t *stored_hash,
    size_t stored_len)
{
	uint8_t h[KB_AUDIT_HASH_LEN];
	uint64_t want;

	if (v->failed)
		return;
	want = v->have_event ? v->res.last_seq + 1 : 1;
	if (v->res.checkpoints > 0 && ev->seq <= v->last_cp_seq) {
		fail(v, ev->seq,
		    "event %" PRIu64 " comes after the checkpoint at "
		    "%" PRIu64
		    " that covers it: a checkpoint was moved ahead of "
		    "its events",
		    ev->seq, v->last_cp_seq);
		return;
	}
	if (ev->seq != want) {
		if (ev->seq > want)
			fail(v, want,
			    "event %" PRIu64 " is missing (the next event "
			    "present is %" PRIu64 ")",
			    want, ev->seq);
		else
			fail(v, ev->seq,
			    "event %" PRIu64 " is out of order or "
			    "duplicated (expected %" PRIu64 ")",
			    ev->seq, want);
		return;
	}
	if (kb_audit_event_hash(v->last_hash, ev, h) != KB_OK) {
		fail(v, ev->seq, "cannot hash event %" PRIu64, ev->seq);
		return;
	}
	if (stored_len != KB_AUDIT_HASH_LEN
	    || CRYPTO_memcmp(h, stored_hash, KB_AUDIT_HASH_LEN) != 0) {
		fail(v, ev->seq,
		    "event %" PRIu64 " does not match its hash: it "
		    "was altered, or an earlier event was",
		    ev->seq);
		return;
	}
	memcpy(v->last_hash, h, sizeof(h));
	v->ring_seq[ev->seq % 1024] = ev->seq;
	memcpy(v->ring_hash[ev->seq % 1024], h, sizeof(h));
	if (!v->have_event)
		v->res.first_seq = ev->seq;
	v->have_event = 1;
	v->res.last_seq = ev->seq;
	v->res.events++;
	pending_event(v, ev);
	if (field_is(ev->role, "system")
	    && field_is(ev->method, KB_AUDIT_ROTATE_METHOD))
		rotation_event(v, ev);
}

void
kb_audit_verifier_checkpoint(
    struct kb_audit_verifier *v, const struct kb_audit_checkpoint *cp)
{
	struct kb_audit_checkpoint c = *cp;
	EVP_PKEY *pub = v->pub;
	const uint8_t *have;

	if (v->failed)
		return;
	if (cp->seq <= v->last_cp_seq && v->res.checkpoints > 0) {
		fail(v, cp->seq, "checkpoint at %" PRIu64 " is out of order",
		    cp->seq);
		return;
	}
	/* Checkpoints chain: each signs the previous one's signature. */
	if (cp->prev_sig_len != v->last_sig_len
	    || (cp->prev_sig_len > 0
	        && memcmp(cp->prev_sig, v->last_sig, cp->prev_sig_len) != 0)) {
		fail(v, cp->seq,
		    "checkpoint at %" PRIu64 " does not chain to "
		    "the previous checkpoint (one was removed or altered)",
		    cp->seq);
		return;
	}
	if (v->nkeys > 0) {
		/* Named keys: the one in force, and only it. */
		struct vkey *k = key_find(v, cp->key_id);

		if (k == NULL) {
			fail(v, cp->seq,
			    "checkpoint at %" PRIu64 " names audit "
			    "key %.72s, which the export does not publish",
			    cp->seq,
			    cp->key_id != NULL ? cp->key_id : "(none)");
			return;
		}
		if (v->cur < 0) {
			v->cur = (int)(k - v->keys);
			k->in_force = 1;
		}
		if (k != &v->keys[v->cur]) {
			fail(v, cp->seq,
			    "checkpoint at %" PRIu64 " is signed by "
			    "audit key %s, but the key in force is %s (a key "
			    "takes over only after the old one signs a "
			    "checkpoint "
			    "covering its rotation)",
			    cp->seq, k->id, v->keys[v->cur].id);
			return;
		}
		pub = k->pub;
	}
	if (pub == NULL || kb_audit_checkpoint_verify(pub, &c) != KB_OK) {
		fail(v, cp->seq,
		    "checkpoint at %" PRIu64 " has a bad signature "
		    "(altered, or signed by another key)",
		    cp->seq);
		return;
	}
	/* The signed head must be the hash of the event it covers. When that
	 * event is absent, the events up to it were removed. */
	if (!v->have_event || cp->seq > v->res.last_seq) {
		/* Checked at finish, when no more events can come. */
	} else {
		if (v->ring_seq[cp->seq % 1024] != cp->seq) {
			fail(v, cp->seq,
			    "checkpoint at %" PRIu64 " comes too long "
			    "after its event",
			    cp->seq);
			return;
		}
		have = v->ring_hash[cp->seq % 1024];
		if (memcmp(have, cp->head_hash, KB_AUDIT_HASH_LEN) != 0) {
			fail(v, cp->seq,
			    "events up to %" PRIu64 " do not match the "
			    "signed checkpoint: the log was rewritten",
			    cp->seq);
			return;
		}
		v->res.covered_seq = cp->seq;
	}
	free(v->last_sig);
	v->last_sig = malloc(cp->sig_len);
	if (v->last_sig != NULL)
		memcpy(v->last_sig, cp->sig, cp->sig_len);
	v->last_sig_len = v->last_sig != NULL ? cp->sig_len : 0;
	v->last_cp_seq = cp->seq;
	v->res.checkpoints++;
	if (v->rot_seq != 0 && cp->seq >= v->rot_seq && v->nkeys > 0) {
		struct vkey *k = key_find(v, v->rot_new);

		if (k == NULL || strcmp(k->fp, v->rot_fp) != 0) {
			fail(v, v->rot_seq,
			    "the rotation at %" PRIu64 " hands over "
			    "to audit key %s (fingerprint %s), which the "
			    "export "
			    "does not publish with that fingerprint",
			    v->rot_seq, v->rot_new, v->rot_fp);
			return;
		}
		v->cur = (int)(k - v->keys);
		k->in_force = 1;
		v->rot_seq = 0;
		v->res.rotations++;
	} else if (v->rot_seq != 0 && cp->seq >= v->rot_seq) {
		v->rot_seq = 0;
	}
}

void
kb_audit_verifier_finish(
    struct kb_audit_verifier *v, struct kb_audit_result *res)
{
	if (!v->failed && v->res.checkpoints > 0
	    && v->last_cp_seq > v->res.last_seq)
		fail(v, v->have_event ? v->res.last_seq + 1 : 1,
		    "events %" PRIu64 " to %" PRIu64
		    " are missing: the signed checkpoint at %" PRIu64
		    " covers them",
		    v->have_event ? v->res.last_seq + 1 : 1, v->last_cp_seq,
		    v->last_cp_seq);
	if (!v->failed && v->res.checkpoints == 0 && v->res.events > 0
	    && !v->allow_unsigned)
		fail(v, 0,
		    "the log has no checkpoint: nothing in it is signed, "
		    "so it proves nothing (its checkpoints were removed, or "
		    "none "
		    "was written yet); --allow-unsigned checks the hash chain "
		    "alone");
	if (!v->failed && v->pin[0] != '\0' && v->nkeys > 0) {
		size_t i;

		for (i = 0; i < v->nkeys; i++)
			if (v->keys[i].in_force
			    && strcmp(v->keys[i].fp, v->pin) == 0)
				v->res.pinned = 1;
		if (!v->res.pinned && v->res.checkpoints > 0)
			fail(v, 0,
			    "the pinned audit key %s signed no checkpoint "
			    "here and no rotation in this log hands over to it",
			    v->pin);
	}
	/* Still waiting at the end of the log: maybe still running. */
	pending_flush(v, 0, NULL);
	*res = v->res;
}
