/* SPDX-License-Identifier: Apache-2.0 */
/* hsm.c: the PKCS#11 module through p11-kit: token selection by URI,
 * login, the session pool, the object-handle cache and error names. */
#include "hsm_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kb_secmem.h"

#define HSM_DEFAULT_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#define HSM_DEFAULT_SESSIONS 8
#define HSM_MAX_SESSIONS 1024
/* A token not found at start is looked for again this many times. */
#define SLOT_FIND_ATTEMPTS 10
#define SLOT_FIND_DELAY_MS 200
/* hsm_again: tries after the first, and the pause before each (doubled
 * every time: 50, 100, 200 ms). */
#define AGAIN_RETRIES 3
#define AGAIN_DELAY_MS 50
/* hsm_obj_lookup: the pause before a second search for an object not
 * found. */
#define LOOKUP_AGAIN_MS 10

struct cache_entry {
	struct cache_entry *next;
	CK_OBJECT_CLASS cls;
	CK_OBJECT_HANDLE obj;
	char id[HSM_ID_MAX + 1];
	char label[HSM_LABEL_MAX + 1]; /* "" when found by id alone */
};

/* clang-format off */
static const struct {
	CK_RV rv;
	const char *name;
} rv_names[] = {
#define RV(x) { x, #x }
	RV(CKR_OK), RV(CKR_CANCEL), RV(CKR_HOST_MEMORY),
	RV(CKR_SLOT_ID_INVALID), RV(CKR_GENERAL_ERROR), RV(CKR_FUNCTION_FAILED),
	RV(CKR_ARGUMENTS_BAD), RV(CKR_NO_EVENT), RV(CKR_NEED_TO_CREATE_THREADS),
	RV(CKR_CANT_LOCK), RV(CKR_ATTRIBUTE_READ_ONLY),
	RV(CKR_ATTRIBUTE_SENSITIVE), RV(CKR_ATTRIBUTE_TYPE_INVALID),
	RV(CKR_ATTRIBUTE_VALUE_INVALID), RV(CKR_ACTION_PROHIBITED),
	RV(CKR_DATA_INVALID), RV(CKR_DATA_LEN_RANGE), RV(CKR_DEVICE_ERROR),
	RV(CKR_DEVICE_MEMORY), RV(CKR_DEVICE_REMOVED),
	RV(CKR_ENCRYPTED_DATA_INVALID), RV(CKR_ENCRYPTED_DATA_LEN_RANGE),
	RV(CKR_FUNCTION_CANCELED), RV(CKR_FUNCTION_NOT_PARALLEL),
	RV(CKR_FUNCTION_NOT_SUPPORTED), RV(CKR_KEY_HANDLE_INVALID),
	RV(CKR_KEY_SIZE_RANGE), RV(CKR_KEY_TYPE_INCONSISTENT),
	RV(CKR_KEY_NOT_NEEDED), RV(CKR_KEY_CHANGED), RV(CKR_KEY_NEEDED),
	RV(CKR_KEY_INDIGESTIBLE), RV(CKR_KEY_FUNCTION_NOT_PERMITTED),
	RV(CKR_KEY_NOT_WRAPPABLE), RV(CKR_KEY_UNEXTRACTABLE),
	RV(CKR_MECHANISM_INVALID), RV(CKR_MECHANISM_PARAM_INVALID),
	RV(CKR_OBJECT_HANDLE_INVALID), RV(CKR_OPERATION_ACTIVE),
	RV(CKR_OPERATION_NOT_INITIALIZED), RV(CKR_PIN_INCORRECT),
	RV(CKR_PIN_INVALID), RV(CKR_PIN_LEN_RANGE), RV(CKR_PIN_EXPIRED),
	RV(CKR_PIN_LOCKED), RV(CKR_SESSION_CLOSED), RV(CKR_SESSION_COUNT),
	RV(CKR_SESSION_HANDLE_INVALID), RV(CKR_SESSION_PARALLEL_NOT_SUPPORTED),
	RV(CKR_SESSION_READ_ONLY), RV(CKR_SESSION_EXISTS),
	RV(CKR_SESSION_READ_ONLY_EXISTS), RV(CKR_SESSION_READ_WRITE_SO_EXISTS),
	RV(CKR_SIGNATURE_INVALID), RV(CKR_SIGNATURE_LEN_RANGE),
	RV(CKR_TEMPLATE_INCOMPLETE), RV(CKR_TEMPLATE_INCONSISTENT),
	RV(CKR_TOKEN_NOT_PRESENT), RV(CKR_TOKEN_NOT_RECOGNIZED),
	RV(CKR_TOKEN_WRITE_PROTECTED), RV(CKR_UNWRAPPING_KEY_HANDLE_INVALID),
	RV(CKR_UNWRAPPING_KEY_SIZE_RANGE),
	RV(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT),
	RV(CKR_USER_ALREADY_LOGGED_IN), RV(CKR_USER_NOT_LOGGED_IN),
	RV(CKR_USER_PIN_NOT_INITIALIZED), RV(CKR_USER_TYPE_INVALID),
	RV(CKR_USER_ANOTHER_ALREADY_LOGGED_IN), RV(CKR_USER_TOO_MANY_TYPES),
	RV(CKR_WRAPPED_KEY_INVALID), RV(CKR_WRAPPED_KEY_LEN_RANGE),
	RV(CKR_WRAPPING_KEY_HANDLE_INVALID), RV(CKR_WRAPPING_KEY_SIZE_RANGE),
	RV(CKR_WRAPPING_KEY_TYPE_INCONSISTENT), RV(CKR_RANDOM_SEED_NOT_SUPPORTED),
	RV(CKR_RANDOM_NO_RNG), RV(CKR_DOMAIN_PARAMS_INVALID),
	RV(CKR_CURVE_NOT_SUPPORTED), RV(CKR_BUFFER_TOO_SMALL),
	RV(CKR_SAVED_STATE_INVALID), RV(CKR_INFORMATION_SENSITIVE),
	RV(CKR_STATE_UNSAVEABLE), RV(CKR_CRYPTOKI_NOT_INITIALIZED),
	RV(CKR_CRYPTOKI_ALREADY_INITIALIZED), RV(CKR_MUTEX_BAD),
	RV(CKR_MUTEX_NOT_LOCKED), RV(CKR_NEW_PIN_MODE), RV(CKR_NEXT_OTP),
	RV(CKR_EXCEEDED_MAX_ITERATIONS), RV(CKR_FIPS_SELF_TEST_FAILED),
	RV(CKR_LIBRARY_LOAD_FAILED), RV(CKR_PIN_TOO_WEAK),
	RV(CKR_PUBLIC_KEY_INVALID), RV(CKR_FUNCTION_REJECTED),
#undef RV
};
/* clang-format on */

const char *
hsm_rv_name(unsigned long rv)
{
	static __thread char buf[32];
	size_t i;

	for (i = 0; i < sizeof(rv_names) / sizeof(rv_names[0]); i++) {
		if (rv_names[i].rv == rv)
			return rv_names[i].name;
	}
	snprintf(buf, sizeof(buf), "CKR_0x%08lX", rv);
	return buf;
}

/* Errors after which a session (and the login it carries) is gone: the
 * pool throws its sessions away and opens new ones on the next call. */
int
hsm_rv_session_lost(CK_RV rv)
{
	switch (rv) {
	case CKR_SESSION_HANDLE_INVALID:
	case CKR_SESSION_CLOSED:
	case CKR_USER_NOT_LOGGED_IN:
	case CKR_DEVICE_REMOVED:
	case CKR_TOKEN_NOT_PRESENT:
	case CKR_DEVICE_ERROR: return 1;
	default: return 0;
	}
}

static enum kb_err
rv_to_err(CK_RV rv)
{
	switch (rv) {
	case CKR_DEVICE_REMOVED:
	case CKR_TOKEN_NOT_PRESENT:
	case CKR_SESSION_HANDLE_INVALID:
	case CKR_SESSION_CLOSED:
	case CKR_USER_NOT_LOGGED_IN:
	case CKR_DEVICE_ERROR: return KB_ERR_UNAVAILABLE;
	case CKR_ENCRYPTED_DATA_INVALID:
	case CKR_ENCRYPTED_DATA_LEN_RANGE: return KB_ERR_CORRUPT;
	default: return KB_ERR_HSM;
	}
}

/* Record "C_Fn: CKR_NAME (key id)" and return the mapped code. */
enum kb_err
hsm_p11_err(const char *fn, CK_RV rv, const char *id)
{
	if (id != NULL)
		return kb_errf(
		    rv_to_err(rv), "%s: %s (key %s)", fn, hsm_rv_name(rv), id);
	return kb_errf(rv_to_err(rv), "%s: %s", fn, hsm_rv_name(rv));
}

/* ---- object-handle cache ---- */

static const char *
label_or_empty(const char *label)
{
	return label != NULL ? label : "";
}

static unsigned
cache_hash(const char *id, CK_OBJECT_CLASS cls)
{
	uint32_t x = 2166136261u;

	for (; *id != '\0'; id++)
		x = (x ^ (unsigned char)*id) * 16777619u;
	x = (x ^ (uint32_t)cls) * 16777619u;
	return x % HSM_CACHE_BUCKETS;
}

static int
cache_get(struct hsm *h, const char *id, const char *label, CK_OBJECT_CLASS cls,
    CK_OBJECT_HANDLE *obj)
{
	struct cache_entry *e;
	int found = 0;

	label = label_or_empty(label);
	pthread_mutex_lock(&h->cache_mu);
	for (e = h->cache[cache_hash(id, cls)]; e != NULL; e = e->next) {
		if (e->cls == cls && strcmp(e->id, id) == 0
		    && strcmp(e->label, label) == 0) {
			*obj = e->obj;
			found = 1;
			break;
		}
	}
	pthread_mutex_unlock(&h->cache_mu);
	return found;
}

/* Remember a handle. The cache only saves C_FindObjects calls, so a
 * failed allocation just leaves the entry out. */
void
hsm_cache_put(struct hsm *h, const char *id, const char *label,
    CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE obj)
{
	struct cache_entry *e;
	unsigned b = cache_hash(id, cls);

	label = label_or_empty(label);
	pthread_mutex_lock(&h->cache_mu);
	for (e = h->cache[b]; e != NULL; e = e->next) {
		if (e->cls == cls && strcmp(e->id, id) == 0
		    && strcmp(e->label, label) == 0)
			break;
	}
	if (e == NULL && (e = calloc(1, sizeof(*e))) != NULL) {
		snprintf(e->id, sizeof(e->id), "%s", id);
		snprintf(e->label, sizeof(e->label), "%s", label);
		e->cls = cls;
		e->next = h->cache[b];
		h->cache[b] = e;
	}
	if (e != NULL)
		e->obj = obj;
	pthread_mutex_unlock(&h->cache_mu);
}

void
hsm_cache_drop(struct hsm *h, const char *id, CK_OBJECT_CLASS cls)
{
	struct cache_entry **pp, *e;

	pthread_mutex_lock(&h->cache_mu);
	/* Every entry of (id, cls), whatever label it was found with. */
	for (pp = &h->cache[cache_hash(id, cls)]; (e = *pp) != NULL;) {
		if (e->cls == cls && strcmp(e->id, id) == 0) {
			*pp = e->next;
			free(e);
			continue;
		}
		pp = &e->next;
	}
	pthread_mutex_unlock(&h->cache_mu);
}

static void
cache_flush(struct hsm *h)
{
	struct cache_entry *e, *next;
	size_t b;

	pthread_mutex_lock(&h->cache_mu);
	for (b = 0; b < HSM_CACHE_BUCKETS; b++) {
		for (e = h->cache[b]; e != NULL; e = next) {
			next = e->next;
			free(e);
		}
		h->cache[b] = NULL;
	}
	pthread_mutex_unlock(&h->cache_mu);
}

/* ---- token selection, sessions and login ---- */

static void
trim_copy(char *dst, size_t dstsz, const unsigned char *src, size_t n)
{
	while (n > 0 && (src[n - 1] == ' ' || src[n - 1] == '\0'))
		n--;
	if (n > dstsz - 1)
		n = dstsz - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

/* Find the one initialized token that matches the configured URI. On
 * failure the message lists the labels of the tokens seen; *none (if not
 * NULL) is set when no token matched. */
static enum kb_err
slot_find(struct hsm *h, CK_SLOT_ID *slot, CK_TOKEN_INFO *info, int *none)
{
	CK_SLOT_ID *slots = NULL;
	CK_ULONG nslots = 0, i, nmatch = 0;
	CK_TOKEN_INFO ti;
	char seen[512] = "", label[33];
	size_t off = 0;
	CK_RV rv;
	enum kb_err r = KB_ERR_INTERNAL;

	if ((rv = h->m->C_GetSlotList(CK_TRUE, NULL, &nslots)) != CKR_OK) {
		r = hsm_p11_err("C_GetSlotList", rv, NULL);
		goto out;
	}
	if (nslots > 0) {
		if ((slots = calloc(nslots, sizeof(*slots))) == NULL) {
			r = kb_errf(KB_ERR_NOMEM, "out of memory");
			goto out;
		}
		rv = h->m->C_GetSlotList(CK_TRUE, slots, &nslots);
		if (rv != CKR_OK) {
			r = hsm_p11_err("C_GetSlotList", rv, NULL);
			goto out;
		}
	}
	for (i = 0; i < nslots; i++) {
		if (h->m->C_GetTokenInfo(slots[i], &ti) != CKR_OK
		    || (ti.flags & CKF_TOKEN_INITIALIZED) == 0)
			continue;
		trim_copy(label, sizeof(label), ti.label, sizeof(ti.label));
		if (off < sizeof(seen))
			off += (size_t)snprintf(seen + off, sizeof(seen) - off,
			    "%s\"%s\"", off > 0 ? ", " : "", label);
		if (p11_kit_uri_match_token_info(h->uri, &ti) == 1) {
			if (nmatch++ == 0) {
				*slot = slots[i];
				*info = ti;
			}
		}
	}
	if (nmatch == 0) {
		if (none != NULL)
			*none = 1;
		r = kb_errf(KB_ERR_CONFIG,
		    "token URI %s matches no token; tokens seen: %s",
		    h->uri_str, off > 0 ? seen : "none");
		goto out;
	}
	if (nmatch > 1) {
		r = kb_errf(KB_ERR_CONFIG,
		    "token URI %s matches %lu tokens (%s); add serial=",
		    h->uri_str, nmatch, seen);
		goto out;
	}
	r = KB_OK;
out:
	free(slots);
	return r;
}

/* Log the session in unless the application already is (login state is
 * shared by all sessions of the token). */
static CK_RV
session_login(struct hsm *h, CK_SESSION_HANDLE sh, const char **fn)
{
	CK_SESSION_INFO si;
	CK_RV rv;
	int attempt = 0;

	*fn = "C_GetSessionInfo";
	if ((rv = h->m->C_GetSessionInfo(sh, &si)) != CKR_OK)
		return rv;
	if (si.state == CKS_RW_USER_FUNCTIONS)
		return CKR_OK;
	*fn = "C_Login";
	while ((rv = h->m->C_Login(sh, CKU_USER, (CK_UTF8CHAR_PTR)h->pin,
	            (CK_ULONG)h->pin_len))
	        != CKR_OK
	    && hsm_again(h, rv, &attempt))
		;
	if (rv == CKR_USER_ALREADY_LOGGED_IN)
		rv = CKR_OK;
	return rv;
}

static int
rv_slot_gone(CK_RV rv)
{
	return rv == CKR_SLOT_ID_INVALID || rv == CKR_TOKEN_NOT_PRESENT
	    || rv == CKR_DEVICE_REMOVED;
}

/* Open a logged-in R/W session. When the slot is gone, look for the
 * token again: it may have come back in another slot. */
static enum kb_err
session_open(struct hsm *h, CK_SLOT_ID slot, CK_SESSION_HANDLE *out)
{
	CK_SESSION_HANDLE sh = CK_INVALID_HANDLE;
	CK_TOKEN_INFO ti;
	const char *fn = "C_OpenSession";
	CK_RV rv;
	enum kb_err r = KB_ERR_INTERNAL;

	rv = h->m->C_OpenSession(
	    slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &sh);
	if (rv_slot_gone(rv) && slot_find(h, &slot, &ti, NULL) == KB_OK) {
		pthread_mutex_lock(&h->pool_mu);
		h->slot = slot;
		pthread_mutex_unlock(&h->pool_mu);
		rv = h->m->C_OpenSession(
		    slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &sh);
	}
	if (rv != CKR_OK) {
		sh = CK_INVALID_HANDLE;
		r = hsm_p11_err(fn, rv, NULL);
		if (rv_slot_gone(rv))
			r = kb_errf(KB_ERR_UNAVAILABLE,
			    "%s: %s: token %s is not present", fn,
			    hsm_rv_name(rv), h->uri_str);
		goto out;
	}
	if ((rv = session_login(h, sh, &fn)) != CKR_OK) {
		r = hsm_p11_err(fn, rv, NULL);
		goto out;
	}
	*out = sh;
	sh = CK_INVALID_HANDLE;
	r = KB_OK;
out:
	if (sh != CK_INVALID_HANDLE)
		(void)h->m->C_CloseSession(sh);
	return r;
}

/* Take a session from the pool, opening one if none is idle and the pool
 * is not full; waits while all `size` sessions are in use. */
enum kb_err
hsm_pool_get(struct hsm *h, struct pooled *p)
{
	CK_SLOT_ID slot;
	enum kb_err r;

	pthread_mutex_lock(&h->pool_mu);
	while (h->nidle == 0 && h->nbusy >= h->size)
		pthread_cond_wait(&h->pool_cv, &h->pool_mu);
	h->nbusy++;
	p->gen = h->gen;
	if (h->nidle > 0) {
		p->sh = h->idle[--h->nidle];
		pthread_mutex_unlock(&h->pool_mu);
		return KB_OK;
	}
	slot = h->slot;
	pthread_mutex_unlock(&h->pool_mu);

	/* Outside the lock: opening and logging in may be slow. */
	if ((r = session_open(h, slot, &p->sh)) != KB_OK) {
		pthread_mutex_lock(&h->pool_mu);
		h->nbusy--;
		pthread_cond_signal(&h->pool_cv);
		pthread_mutex_unlock(&h->pool_mu);
	}
	return r;
}

/* Close every idle session and start a new generation, so sessions still
 * in use are closed when they come back. Caller holds pool_mu. */
static void
pool_reset_locked(struct hsm *h)
{
	h->gen++;
	while (h->nidle > 0)
		(void)h->m->C_CloseSession(h->idle[--h->nidle]);
	pthread_cond_broadcast(&h->pool_cv);
}

static void
pool_reset(struct hsm *h)
{
	pthread_mutex_lock(&h->pool_mu);
	pool_reset_locked(h);
	pthread_mutex_unlock(&h->pool_mu);
	cache_flush(h);
}

/* Give a session back; `rv` is the last CK_RV seen on it. A lost session
 * resets the whole pool (they share the login and the token); a session
 * that may still hold an active operation is closed instead of pooled. */
void
hsm_pool_put(struct hsm *h, struct pooled *p, CK_RV rv)
{
	int lost = hsm_rv_session_lost(rv), reset = 0, pooled = 0;
	int reusable = !lost && rv != CKR_OPERATION_ACTIVE
	    && rv != CKR_BUFFER_TOO_SMALL && rv != CKR_HOST_MEMORY;

	pthread_mutex_lock(&h->pool_mu);
	h->nbusy--;
	if (lost && p->gen == h->gen) {
		pool_reset_locked(h);
		reset = 1;
	}
	if (reusable && p->gen == h->gen) {
		h->idle[h->nidle++] = p->sh;
		pooled = 1;
	}
	pthread_cond_signal(&h->pool_cv);
	pthread_mutex_unlock(&h->pool_mu);
	if (!pooled)
		(void)h->m->C_CloseSession(p->sh);
	if (reset)
		cache_flush(h);
}

/* ---- objects ---- */

static const char *
cls_name(CK_OBJECT_CLASS cls)
{
	return cls == CKO_PRIVATE_KEY ? "private"
	    : cls == CKO_PUBLIC_KEY   ? "public"
	                              : "secret";
}

/* Find up to `max` objects of class `cls` with CKA_ID `id` (and CKA_LABEL
 * `label` unless NULL) that only a logged-in session can have made:
 * CKA_TOKEN and CKA_PRIVATE, and for private and secret keys CKA_SENSITIVE
 * and not CKA_EXTRACTABLE. A session without the PIN can create public
 * objects (CKA_PRIVATE false) with any id; such objects are never found. */
CK_RV
hsm_obj_find(struct hsm *h, CK_SESSION_HANDLE sh, const char *id,
    const char *label, CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *objs,
    CK_ULONG max, CK_ULONG *n, const char **fn)
{
	CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
	CK_ATTRIBUTE t[7] = {
	    {CKA_CLASS, &cls, sizeof(cls)},
	    {CKA_ID, (void *)id, strlen(id)},
	    {CKA_TOKEN, &yes, sizeof(yes)},
	    {CKA_PRIVATE, &yes, sizeof(yes)},
	};
	CK_ULONG nt = 4;
	CK_SESSION_INFO si;
	CK_RV rv, rv2;

	if (cls == CKO_PRIVATE_KEY || cls == CKO_SECRET_KEY) {
		t[nt++] = (CK_ATTRIBUTE){CKA_SENSITIVE, &yes, sizeof(yes)};
		t[nt++] = (CK_ATTRIBUTE){CKA_EXTRACTABLE, &no, sizeof(no)};
	}
	if (label != NULL)
		t[nt++] =
		    (CK_ATTRIBUTE){CKA_LABEL, (void *)label, strlen(label)};
	*n = 0;
	*fn = "C_FindObjectsInit";
	if ((rv = h->m->C_FindObjectsInit(sh, t, nt)) != CKR_OK)
		return rv;
	*fn = "C_FindObjects";
	rv = h->m->C_FindObjects(sh, objs, max, n);
	rv2 = h->m->C_FindObjectsFinal(sh);
	if (rv == CKR_OK && rv2 != CKR_OK) {
		*fn = "C_FindObjectsFinal";
		rv = rv2;
	}
	/* Private objects are invisible to a session that lost its login
	 * (another C_Logout, a token reset): that is not "no such key". */
	if (rv == CKR_OK && *n == 0
	    && ((rv2 = h->m->C_GetSessionInfo(sh, &si)) != CKR_OK
	        || si.state != CKS_RW_USER_FUNCTIONS)) {
		*fn = "C_FindObjects";
		rv = rv2 != CKR_OK ? rv2 : CKR_USER_NOT_LOGGED_IN;
	}
	return rv;
}

/* The one object (cls, id), from the cache or the token. Returns
 * KB_ERR_NOT_FOUND when there is none; *rv is the CK_RV of a failed call
 * (CKR_OK otherwise) so the caller can tell a lost session. */
enum kb_err
hsm_obj_lookup(struct hsm *h, CK_SESSION_HANDLE sh, const char *id,
    const char *label, CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *obj, CK_RV *rv)
{
	CK_OBJECT_HANDLE objs[2];
	CK_ULONG n;
	const char *fn;

	*rv = CKR_OK;
	if (cache_get(h, id, label, cls, obj))
		return KB_OK;
	if ((*rv = hsm_obj_find(h, sh, id, label, cls, objs, 2, &n, &fn))
	    != CKR_OK)
		return hsm_p11_err(fn, *rv, id);
	/* SoftHSMv2 re-reads its directory when another process changed it,
	 * and an object file that process is writing at that moment is left
	 * out of the search (seen: a key pair's public half missing for one
	 * find while another broker locked a tenant). Not there: look once
	 * more, a moment later. */
	if (n == 0) {
		usleep(LOOKUP_AGAIN_MS * 1000);
		if ((*rv = hsm_obj_find(
		         h, sh, id, label, cls, objs, 2, &n, &fn))
		    != CKR_OK)
			return hsm_p11_err(fn, *rv, id);
		if (n > 0)
			atomic_fetch_add(&h->retries, 1);
	}
	if (n == 0 && label != NULL)
		return kb_errf(KB_ERR_NOT_FOUND,
		    "no %s key with id %s for %s in the token", cls_name(cls),
		    id, label);
	if (n == 0)
		return kb_errf(KB_ERR_NOT_FOUND,
		    "no %s key with id %s in the token", cls_name(cls), id);
	if (n > 1)
		return kb_errf(KB_ERR_HSM,
		    "the token holds several %s keys with id %s", cls_name(cls),
		    id);
	hsm_cache_put(h, id, label, cls, objs[0]);
	*obj = objs[0];
	return KB_OK;
}

/* KB_OK if no private or public object has CKA_ID `id`. */
enum kb_err
hsm_id_free(struct hsm *h, CK_SESSION_HANDLE sh, const char *id, CK_RV *rv)
{
	static const CK_OBJECT_CLASS classes[] = {
	    CKO_PRIVATE_KEY, CKO_PUBLIC_KEY, CKO_SECRET_KEY};
	CK_OBJECT_HANDLE obj;
	CK_ULONG n;
	const char *fn;
	size_t i;

	for (i = 0; i < 3; i++) {
		*rv =
		    hsm_obj_find(h, sh, id, NULL, classes[i], &obj, 1, &n, &fn);
		if (*rv != CKR_OK)
			return hsm_p11_err(fn, *rv, id);
		if (n > 0)
			return kb_errf(KB_ERR_ALREADY_EXISTS,
			    "a key with id %s already exists in the token", id);
	}
	return KB_OK;
}

int
hsm_again(struct hsm *h, CK_RV rv, int *attempt)
{
	if ((rv != CKR_GENERAL_ERROR && rv != CKR_FUNCTION_FAILED)
	    || *attempt >= AGAIN_RETRIES)
		return 0;
	usleep((useconds_t)(AGAIN_DELAY_MS << *attempt) * 1000);
	(*attempt)++;
	atomic_fetch_add(&h->retries, 1);
	return 1;
}

CK_RV
hsm_create_object(struct hsm *h, CK_SESSION_HANDLE sh, CK_ATTRIBUTE *a,
    CK_ULONG n, CK_OBJECT_HANDLE *obj)
{
	CK_RV rv;
	int attempt = 0;

	while ((rv = h->m->C_CreateObject(sh, a, n, obj)) != CKR_OK
	    && hsm_again(h, rv, &attempt))
		;
	return rv;
}

unsigned long
hsm_retries(const struct hsm *h)
{
	return atomic_load(&h->retries);
}

/* Read a variable-length attribute (*buf malloc'd, wiped on free by the
 * caller if secret). */
CK_RV
hsm_attr_get(struct hsm *h, CK_SESSION_HANDLE sh, CK_OBJECT_HANDLE obj,
    CK_ATTRIBUTE_TYPE type, uint8_t **buf, size_t *len)
{
	CK_ATTRIBUTE a = {type, NULL, 0};
	CK_RV rv;

	*buf = NULL;
	*len = 0;
	if ((rv = h->m->C_GetAttributeValue(sh, obj, &a, 1)) != CKR_OK)
		return rv;
	if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen == 0)
		return CKR_ATTRIBUTE_TYPE_INVALID;
	if ((a.pValue = malloc(a.ulValueLen)) == NULL)
		return CKR_HOST_MEMORY;
	if ((rv = h->m->C_GetAttributeValue(sh, obj, &a, 1)) != CKR_OK) {
		free(a.pValue);
		return rv;
	}
	*buf = a.pValue;
	*len = a.ulValueLen;
	return CKR_OK;
}

/* ---- the retrying key-operation runner ---- */

/* The kind of operation the last PKCS#11 function an op called belongs
 * to ("C_DecryptInit" and "C_Decrypt": decrypt). */
static enum hsm_op_kind
op_kind(const char *fn)
{
	if (strncmp(fn, "C_Encrypt", 9) == 0)
		return HSM_OP_ENCRYPT;
	if (strncmp(fn, "C_Decrypt", 9) == 0)
		return HSM_OP_DECRYPT;
	if (strncmp(fn, "C_Sign", 6) == 0)
		return HSM_OP_SIGN;
	return HSM_OP_OTHER;
}

/* Run `op` on the object (cls, id) on a pooled session. A stale cached
 * handle is dropped and the object found again (once); a lost session
 * resets the pool and the operation runs once more on a fresh session.
 * No lock is held while the token works. */
enum kb_err
hsm_op_run(struct hsm *h, const char *id, const char *label,
    CK_OBJECT_CLASS cls, hsm_op_fn op, void *arg)
{
	struct pooled p;
	CK_OBJECT_HANDLE key;
	const char *fn = "";
	CK_RV rv = CKR_OK;
	enum kb_err r = KB_ERR_INTERNAL;
	int refound = 0, reopened = 0;
	uint64_t t0 = kb_hist_now_ns();

	for (;;) {
		if ((r = hsm_pool_get(h, &p)) != KB_OK)
			break;
		pthread_rwlock_rdlock(&h->objects_rw);
		if ((r = hsm_obj_lookup(h, p.sh, id, label, cls, &key, &rv))
		    == KB_OK) {
			rv = op(h, p.sh, key, arg, &fn);
			r = rv == CKR_OK ? KB_OK : hsm_p11_err(fn, rv, id);
		}
		pthread_rwlock_unlock(&h->objects_rw);
		hsm_pool_put(h, &p, rv);
		if ((rv == CKR_KEY_HANDLE_INVALID
		        || rv == CKR_OBJECT_HANDLE_INVALID)
		    && !refound) {
			hsm_cache_drop(h, id, cls);
			refound = 1;
		} else if (hsm_rv_session_lost(rv) && !reopened) {
			reopened = 1;
		} else {
			break;
		}
	}
	kb_hist_since(&h->op_hist[op_kind(fn)], t0);
	return r;
}

const char *
hsm_op_kind_name(enum hsm_op_kind k)
{
	switch (k) {
	case HSM_OP_ENCRYPT: return "encrypt";
	case HSM_OP_DECRYPT: return "decrypt";
	case HSM_OP_SIGN: return "sign";
	case HSM_OP_OTHER: break;
	}
	return "other";
}

const struct kb_hist *
hsm_op_hist(const struct hsm *h, enum hsm_op_kind k)
{
	return &h->op_hist[(unsigned)k < HSM_OP_KINDS ? k : HSM_OP_OTHER];
}

/* ---- public functions: open, close, check ---- */

enum kb_err
hsm_open(const struct hsm_config *cfg, struct hsm **out)
{
	struct hsm *h = NULL;
	struct pooled p;
	pthread_rwlockattr_t rwa;
	CK_TOKEN_INFO ti;
	const char *path;
	unsigned size;
	int ur, attempt;
	CK_RV rv;
	enum kb_err r = KB_ERR_INTERNAL;

	*out = NULL;
	if (cfg == NULL || cfg->token_uri == NULL || cfg->pin_file == NULL) {
		r = kb_errf(
		    KB_ERR_CONFIG, "hsm: token URI and PIN file are required");
		goto out;
	}
	path = cfg->module_path != NULL ? cfg->module_path : HSM_DEFAULT_MODULE;
	size = cfg->sessions != 0 ? cfg->sessions : HSM_DEFAULT_SESSIONS;
	if (size > HSM_MAX_SESSIONS) {
		r = kb_errf(KB_ERR_CONFIG, "hsm: %u sessions asked, at most %d",
		    size, HSM_MAX_SESSIONS);
		goto out;
	}
	if ((h = calloc(1, sizeof(*h))) == NULL
	    || (h->idle = calloc(size, sizeof(*h->idle))) == NULL
	    || (h->uri_str = strdup(cfg->token_uri)) == NULL
	    || (h->uri = p11_kit_uri_new()) == NULL) {
		free(h != NULL ? h->idle : NULL);
		free(h != NULL ? h->uri_str : NULL);
		free(h);
		h = NULL;
		r = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	pthread_mutex_init(&h->pool_mu, NULL);
	pthread_cond_init(&h->pool_cv, NULL);
	pthread_mutex_init(&h->cache_mu, NULL);
	pthread_mutex_init(&h->create_mu, NULL);
	pthread_rwlockattr_init(&rwa);
	pthread_rwlockattr_setkind_np(
	    &rwa, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&h->objects_rw, &rwa);
	pthread_rwlockattr_destroy(&rwa);
	h->size = size;

	ur = p11_kit_uri_parse(cfg->token_uri, P11_KIT_URI_FOR_TOKEN, h->uri);
	if (ur != P11_KIT_URI_OK) {
		r = kb_errf(KB_ERR_CONFIG, "token URI \"%s\": %s",
		    cfg->token_uri, p11_kit_uri_message(ur));
		goto out;
	}
	if (access(path, R_OK) != 0) {
		r = kb_errf(KB_ERR_CONFIG, "PKCS#11 module %s: %s", path,
		    strerror(errno));
		goto out;
	}
	if ((r = kb_secret_file_read(
	         cfg->pin_file, cfg->check_pin_mode, &h->pin, &h->pin_len))
	    != KB_OK)
		goto out;
	if ((h->m = p11_kit_module_load(path, 0)) == NULL) {
		r = kb_errf(KB_ERR_CONFIG, "cannot load PKCS#11 module %s: %s",
		    path, p11_kit_message() != NULL ? p11_kit_message() : "?");
		goto out;
	}
	for (attempt = 0;; attempt++) {
		int none = 0;

		if ((rv = p11_kit_module_initialize(h->m)) != CKR_OK) {
			r = kb_err_wrap(hsm_p11_err("C_Initialize", rv, NULL),
			    "PKCS#11 module %s", path);
			goto out;
		}
		h->initialized = 1;
		r = slot_find(h, &h->slot, &ti, &none);
		if (r == KB_OK)
			break;
		if (!none || attempt >= SLOT_FIND_ATTEMPTS - 1)
			goto out;
		/* SoftHSMv2 reads its token directory in C_Initialize; a
		 * read while another process (a second broker on the same
		 * token) writes it can see no token at all (SoftHSMv2 issue
		 * 757). Read it again a few times before giving up. */
		kb_err_clear();
		(void)p11_kit_module_finalize(h->m);
		h->initialized = 0;
		usleep(SLOT_FIND_DELAY_MS * 1000);
	}
	trim_copy(
	    h->info.label, sizeof(h->info.label), ti.label, sizeof(ti.label));
	trim_copy(h->info.serial, sizeof(h->info.serial), ti.serialNumber,
	    sizeof(ti.serialNumber));
	trim_copy(h->info.manufacturer, sizeof(h->info.manufacturer),
	    ti.manufacturerID, sizeof(ti.manufacturerID));
	trim_copy(
	    h->info.model, sizeof(h->info.model), ti.model, sizeof(ti.model));

	/* Open the first session now: it proves the PIN. */
	if ((r = hsm_pool_get(h, &p)) != KB_OK)
		goto out;
	hsm_pool_put(h, &p, CKR_OK);
	*out = h;
	h = NULL;
	r = KB_OK;
out:
	hsm_close(h);
	return r;
}

void
hsm_close(struct hsm *h)
{
	if (h == NULL)
		return;
	if (h->initialized) {
		pthread_mutex_lock(&h->pool_mu);
		if (h->nidle > 0)
			(void)h->m->C_Logout(h->idle[0]);
		pool_reset_locked(h);
		pthread_mutex_unlock(&h->pool_mu);
		(void)p11_kit_module_finalize(h->m);
	}
	if (h->m != NULL)
		p11_kit_module_release(h->m);
	cache_flush(h);
	kb_secure_free(h->pin);
	if (h->uri != NULL)
		p11_kit_uri_free(h->uri);
	free(h->uri_str);
	free(h->idle);
	pthread_mutex_destroy(&h->pool_mu);
	pthread_cond_destroy(&h->pool_cv);
	pthread_mutex_destroy(&h->cache_mu);
	pthread_mutex_destroy(&h->create_mu);
	pthread_rwlock_destroy(&h->objects_rw);
	free(h);
}

void
hsm_token_info(const struct hsm *h, struct hsm_token_info *out)
{
	*out = h->info;
}

enum kb_err
hsm_check(struct hsm *h)
{
	struct pooled p;
	CK_SESSION_INFO si;
	CK_RV rv = CKR_OK;
	enum kb_err r = KB_ERR_INTERNAL;
	int attempt;

	for (attempt = 0; attempt < 2; attempt++) {
		if ((r = hsm_pool_get(h, &p)) != KB_OK) {
			pool_reset(h);
			continue;
		}
		rv = h->m->C_GetSessionInfo(p.sh, &si);
		if (rv == CKR_OK && si.state != CKS_RW_USER_FUNCTIONS)
			rv = CKR_USER_NOT_LOGGED_IN;
		hsm_pool_put(h, &p, rv);
		if (rv == CKR_OK)
			return KB_OK;
		r = hsm_p11_err("C_GetSessionInfo", rv, NULL);
		/* Whatever went wrong, start again from fresh sessions. */
		pool_reset(h);
	}
	if (r != KB_ERR_UNAVAILABLE)
		r = kb_err_wrap(KB_ERR_UNAVAILABLE, "token %s", h->uri_str);
	return r;
}

enum kb_err
hsm_random(struct hsm *h, uint8_t *buf, size_t n)
{
	struct pooled p;
	CK_RV rv = CKR_OK;
	enum kb_err r = KB_OK;
	int attempt;

	if (n == 0)
		return KB_OK;
	for (attempt = 0; attempt < 2; attempt++) {
		if ((r = hsm_pool_get(h, &p)) != KB_OK)
			return r;
		rv = h->m->C_GenerateRandom(p.sh, buf, (CK_ULONG)n);
		hsm_pool_put(h, &p, rv);
		if (!hsm_rv_session_lost(rv))
			break;
	}
	return rv == CKR_OK ? KB_OK : hsm_p11_err("C_GenerateRandom", rv, NULL);
}
