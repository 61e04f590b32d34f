/* SPDX-License-Identifier: Apache-2.0 */
/* hsm_int.h: what hsm.c (token, login, session pool, handle cache) shares
 * with hsm_key.c (key life cycle and operations). Private to hsm/. */
#ifndef KB_HSM_INT_H
#define KB_HSM_INT_H

#include <pthread.h>

#include "hsm.h"

/* After the OpenSSL headers (hsm.h): pkcs11.h #defines lower-case member
 * names such as `value` and `count`. */
#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>
#include <p11-kit/uri.h>

#define HSM_ID_MAX 64
#define HSM_CACHE_BUCKETS 128

struct cache_entry;

struct hsm {
	CK_FUNCTION_LIST *m;
	int initialized; /* p11_kit_module_initialize succeeded */
	P11KitUri *uri;
	char *uri_str;
	struct hsm_token_info info;
	char *pin; /* locked memory (kb_secret_file_read) */
	size_t pin_len;

	/* Session pool: idle sessions, plus `nbusy` handed out or being
	 * opened; nidle + nbusy <= size. `gen` grows when the sessions are
	 * thrown away after a token failure, so stale ones are not pooled. */
	pthread_mutex_t pool_mu;
	pthread_cond_t pool_cv;
	CK_SLOT_ID slot;
	CK_SESSION_HANDLE *idle;
	unsigned nidle, nbusy, size;
	unsigned long gen;

	/* (CKA_CLASS, CKA_ID) -> object handle. */
	pthread_mutex_t cache_mu;
	struct cache_entry *cache[HSM_CACHE_BUCKETS];

	/* Serializes key creation and destruction, so "id is free" stays
	 * true until the key is made. Never taken on the decrypt path. */
	pthread_mutex_t create_mu;

	/* Operations on objects share it; destroying a key takes it alone.
	 * SoftHSMv2 2.6.1 crashes (SIGSEGV in C_Decrypt) when a key is
	 * destroyed while another session decrypts with it, as a LockTenant
	 * racing GetDataKey did. Prefers writers, so a destroy is not starved
	 * by a stream of decrypts. Taken after a pooled session, never
	 * before: a holder never waits for the pool. */
	pthread_rwlock_t objects_rw;
};

/* A session taken from the pool, and the pool generation it belongs to. */
struct pooled {
	CK_SESSION_HANDLE sh;
	unsigned long gen;
};

/* Record "C_Fn: CKR_NAME (key id)" (id may be NULL) and return the kb_err
 * the CK_RV maps to. */
enum kb_err hsm_p11_err(const char *fn, CK_RV rv, const char *id);

/* True for the CK_RVs after which a session and its login are gone. */
int hsm_rv_session_lost(CK_RV rv);

/* Take a logged-in session (waits while all are busy) and give it back
 * with the last CK_RV seen on it: a lost session resets the pool. */
enum kb_err hsm_pool_get(struct hsm *h, struct pooled *p);
void hsm_pool_put(struct hsm *h, struct pooled *p, CK_RV rv);

void hsm_cache_put(
    struct hsm *h, const char *id, CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE obj);
void hsm_cache_drop(struct hsm *h, const char *id, CK_OBJECT_CLASS cls);

/* Up to `max` objects (cls, id) straight from the token; *fn names the
 * call that failed. Finding nothing on a session that is not logged in
 * is CKR_USER_NOT_LOGGED_IN, not an empty answer. */
CK_RV hsm_obj_find(struct hsm *h, CK_SESSION_HANDLE sh, const char *id,
    CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *objs, CK_ULONG max, CK_ULONG *n,
    const char **fn);

/* The one object (cls, id), cached. KB_ERR_NOT_FOUND when absent; *rv is
 * the CK_RV of a failed call (CKR_OK otherwise). */
enum kb_err hsm_obj_lookup(struct hsm *h, CK_SESSION_HANDLE sh, const char *id,
    CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *obj, CK_RV *rv);

/* KB_OK if no private or public key has CKA_ID `id`, else
 * KB_ERR_ALREADY_EXISTS (or the failure, with *rv). */
enum kb_err hsm_id_free(
    struct hsm *h, CK_SESSION_HANDLE sh, const char *id, CK_RV *rv);

/* A variable-length attribute; *buf malloc'd. */
CK_RV hsm_attr_get(struct hsm *h, CK_SESSION_HANDLE sh, CK_OBJECT_HANDLE obj,
    CK_ATTRIBUTE_TYPE type, uint8_t **buf, size_t *len);

/* Run `op` with the object (cls, id) on a pooled session, retrying once
 * after a stale handle and once after a lost session. */
typedef CK_RV (*hsm_op_fn)(struct hsm *h, CK_SESSION_HANDLE sh,
    CK_OBJECT_HANDLE key, void *arg, const char **fn);
enum kb_err hsm_op_run(struct hsm *h, const char *id, CK_OBJECT_CLASS cls,
    hsm_op_fn op, void *arg);

#endif /* KB_HSM_INT_H */
