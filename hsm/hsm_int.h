/* SPDX-License-Identifier: Apache-2.0 */
/* hsm_int.h: what hsm.c (token, login, session pool, handle cache) shares
 * with hsm_key.c (key life cycle and operations). Private to hsm/. */
#ifndef KB_HSM_INT_H
#define KB_HSM_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "hsm.h"
#include "kb_hist.h"

/* After the OpenSSL headers (hsm.h): pkcs11.h #defines lower-case member
 * names such as `value` and `count`. */
#include <p11-kit/p11-kit.h>
#include <p11-kit/pkcs11.h>
#include <p11-kit/uri.h>

#define HSM_ID_MAX 64
#define HSM_LABEL_MAX 96
#define HSM_CACHE_BUCKETS 128
#define HSM_TMPL_MAX 28
#define HSM_FIND_MAX 8

/* An attribute template with room for the values it points to. The
 * templates are fixed, so `overflow` is a bug here, checked before use. */
struct tmpl {
	CK_ATTRIBUTE a[HSM_TMPL_MAX];
	CK_ULONG ul[4];
	CK_ULONG n, nul;
	int overflow;
};

void hsm_tmpl_add(
    struct tmpl *t, CK_ATTRIBUTE_TYPE type, void *p, CK_ULONG len);
void hsm_tmpl_bool(struct tmpl *t, CK_ATTRIBUTE_TYPE type, int v);
void hsm_tmpl_ulong(struct tmpl *t, CK_ATTRIBUTE_TYPE type, CK_ULONG v);
/* An AES session key (CKA_TOKEN false, private, sensitive) with no use
 * but unwrapping (if `unwrap`), extractable only if `extractable`. */
void hsm_tmpl_session_aes(struct tmpl *t, int extractable, int unwrap);
/* KB_ERR_INTERNAL if a template (b may be NULL) overflowed. */
enum kb_err hsm_tmpl_check(const struct tmpl *a, const struct tmpl *b);

/* KB_ERR_INVALID_ARGUMENT unless `id` is 1 to HSM_ID_MAX bytes of
 * [A-Za-z0-9._-]. */
enum kb_err hsm_id_check(const char *id);
/* Fill an OAEP mechanism for `alg` (HSM_ALG_OAEP_*); `p` must outlive it. */
enum kb_err hsm_oaep_mech(
    const char *alg, CK_RSA_PKCS_OAEP_PARAMS *p, CK_MECHANISM *mech);

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

	/* How long hsm_op_run took (pool wait included), by kind. */
	struct kb_hist op_hist[HSM_OP_KINDS];

	/* Token calls tried again (hsm_again). */
	_Atomic unsigned long retries;
};

/* A session taken from the pool, and the pool generation it belongs to. */
struct pooled {
	CK_SESSION_HANDLE sh;
	unsigned long gen;
};

/* 1, after a pause, when a token call that makes an object (C_GenerateKey,
 * C_GenerateKeyPair, C_CreateObject, C_UnwrapKey) or logs in (C_Login)
 * failed with rv in a way that may pass and *attempt (0 before the first
 * retry) allows one more try; 0 otherwise. SoftHSMv2 answers
 * CKR_GENERAL_ERROR or CKR_FUNCTION_FAILED when its file store cannot be
 * read or written at that moment (another process writing the token
 * directory); nothing was made and nobody logged in, so trying again is
 * safe. */
int hsm_again(struct hsm *h, CK_RV rv, int *attempt);
/* C_CreateObject, tried again while hsm_again allows. */
CK_RV hsm_create_object(struct hsm *h, CK_SESSION_HANDLE sh, CK_ATTRIBUTE *a,
    CK_ULONG n, CK_OBJECT_HANDLE *obj);

/* Record "C_Fn: CKR_NAME (key id)" (id may be NULL) and return the kb_err
 * the CK_RV maps to. */
enum kb_err hsm_p11_err(const char *fn, CK_RV rv, const char *id);

/* True for the CK_RVs after which a session and its login are gone. */
int hsm_rv_session_lost(CK_RV rv);

/* Take a logged-in session (waits while all are busy) and give it back
 * with the last CK_RV seen on it: a lost session resets the pool. */
enum kb_err hsm_pool_get(struct hsm *h, struct pooled *p);
void hsm_pool_put(struct hsm *h, struct pooled *p, CK_RV rv);

void hsm_cache_put(struct hsm *h, const char *id, const char *label,
    CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE obj);
void hsm_cache_drop(struct hsm *h, const char *id, CK_OBJECT_CLASS cls);

/* Up to `max` objects (cls, id[, label]) straight from the token, only
 * among those a logged-in session made (CKA_PRIVATE; private and secret
 * keys also CKA_SENSITIVE and not CKA_EXTRACTABLE); `label` NULL matches
 * any label. *fn names the call that failed. Finding nothing on a session
 * that is not logged in is CKR_USER_NOT_LOGGED_IN, not an empty answer. */
CK_RV hsm_obj_find(struct hsm *h, CK_SESSION_HANDLE sh, const char *id,
    const char *label, CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *objs,
    CK_ULONG max, CK_ULONG *n, const char **fn);

/* The one object (cls, id[, label]), cached. KB_ERR_NOT_FOUND when absent;
 * *rv is the CK_RV of a failed call (CKR_OK otherwise). */
enum kb_err hsm_obj_lookup(struct hsm *h, CK_SESSION_HANDLE sh, const char *id,
    const char *label, CK_OBJECT_CLASS cls, CK_OBJECT_HANDLE *obj, CK_RV *rv);

/* KB_OK if no private, public or secret key has CKA_ID `id`, else
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
enum kb_err hsm_op_run(struct hsm *h, const char *id, const char *label,
    CK_OBJECT_CLASS cls, hsm_op_fn op, void *arg);

/* Single-part init + two-call operation (encrypt, decrypt, sign), an
 * hsm_op_fn: arg is a struct crypt_arg. */
struct crypt_arg {
	CK_C_EncryptInit init;
	CK_C_Encrypt run;
	const char *init_name, *run_name;
	CK_MECHANISM *mech;
	const uint8_t *in;
	size_t in_len;
	uint8_t *out; /* malloc'd, exactly out_len bytes */
	size_t out_len;
	CK_RV data_rv; /* how the data call (not init) failed */
};
CK_RV hsm_op_crypt(struct hsm *h, CK_SESSION_HANDLE sh, CK_OBJECT_HANDLE key,
    void *argp, const char **fn);

#endif /* KB_HSM_INT_H */
