/* SPDX-License-Identifier: Apache-2.0 */
/* kb_audit.h: the audit log's canonical encoding, hash chain, checkpoint
 * signing data, and a verifier, shared by the broker (which writes) and
 * kbctl (which verifies, online or offline from an export).
 *
 * Event encoding: "kbev1" then, in this order, each field as a 4-byte
 * big-endian length and its bytes: seq and time_us in decimal, actor, role,
 * peer, method, tenant_id, environment, key_id, result, reason, request_id.
 * hash(n) = SHA-256(hash(n-1) || encoding(n)); hash(0) = 32 zero bytes.
 * Checkpoint signing data: "kbcp1" || seq (8 bytes BE) || head_hash (32) ||
 * time_us (8 bytes BE) || prev_signature length (4 bytes BE) || it.
 * Signatures: RSASSA-PKCS1-v1_5 with SHA-256. */
#ifndef KB_AUDIT_H
#define KB_AUDIT_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

#include "kb_codec.h"
#include "kb_err.h"

#define KB_AUDIT_HASH_LEN 32
#define KB_AUDIT_SIG_ALG "RSASSA-PKCS1-v1_5-SHA256"

struct kb_audit_event {
	uint64_t seq;
	int64_t time_us;
	const char *actor, *role, *peer, *method, *tenant, *env, *key_id;
	const char *result, *reason, *request_id;
};

struct kb_audit_checkpoint {
	uint64_t seq;
	uint8_t head_hash[KB_AUDIT_HASH_LEN];
	int64_t time_us;
	const uint8_t *prev_sig;
	size_t prev_sig_len;
	const uint8_t *sig;
	size_t sig_len;
	const char *key_id; /* the key that signed it (not signed itself) */
};

/* Rotation of the audit signing key. The broker records an event (role
 * "system", method KB_AUDIT_ROTATE_METHOD, key_id the new key's id) whose
 * reason is exactly
 *   "audit signing key NEW_ID (fingerprint NEW_FP) replaces OLD_ID
 *    (fingerprint OLD_FP)"
 * (one line; fingerprints are 64 lower-case hex digits). The new key signs
 * only after a checkpoint signed by the old key covers that event, so the
 * old key vouches for the new one and a pinned key of either vouches for
 * the whole chain. */
#define KB_AUDIT_ROTATE_METHOD "audit.key_rotated"
#define KB_AUDIT_KEY_ID_MAX 72

int kb_audit_rotation_format(char *out, size_t len, const char *new_id,
    const char *new_fp, const char *old_id, const char *old_fp);
/* 0 when `reason` is a rotation's, its parts copied out; else -1. */
int kb_audit_rotation_parse(const char *reason,
    char new_id[KB_AUDIT_KEY_ID_MAX], char new_fp[65],
    char old_id[KB_AUDIT_KEY_ID_MAX], char old_fp[65]);

/* The request id of a broker's own event (broker.start, audit.recovered,
 * jobs...): "sys-" instance (8 hex digits) "-" time_us in hex, which the
 * verifier reads back to tell whose calls such an event ends; "sys-" and
 * the time alone when instance is NULL (ending every broker's calls). */
void kb_audit_system_rid(
    char *out, size_t len, const char *instance, uint64_t time_us);

/* out = SHA-256(prev || encoding(ev)). NULL strings encode as empty. */
enum kb_err kb_audit_event_hash(const uint8_t prev[KB_AUDIT_HASH_LEN],
    const struct kb_audit_event *ev, uint8_t out[KB_AUDIT_HASH_LEN]);

/* The bytes a checkpoint's signature covers; *out malloc'd. */
enum kb_err kb_audit_checkpoint_data(
    const struct kb_audit_checkpoint *cp, uint8_t **out, size_t *len);

/* Verify a checkpoint's signature with the audit public key. */
enum kb_err kb_audit_checkpoint_verify(
    EVP_PKEY *pub, const struct kb_audit_checkpoint *cp);

/* A streaming verifier: feed events and checkpoints in log order (a
 * checkpoint after the event it covers). The first failure is kept and
 * reported; later input is ignored. It also notes state changes with no
 * recorded outcome (see struct kb_audit_result). */
struct kb_audit_verifier;

/* `pub` verifies checkpoints that name no key (key_id NULL). */
enum kb_err kb_audit_verifier_new(
    EVP_PKEY *pub, struct kb_audit_verifier **out);
void kb_audit_verifier_free(struct kb_audit_verifier *v);

/* A published key (the verifier takes a reference): checkpoints that name
 * key_id are verified with it, and it signs only while it is the key in
 * force (the first checkpoint's key, then each key a rotation hands over
 * to). `fp` is its fingerprint (hex SHA-256 of the SubjectPublicKeyInfo). */
enum kb_err kb_audit_verifier_add_key(struct kb_audit_verifier *v,
    const char *key_id, const char *fp, EVP_PKEY *pub);

/* A fingerprint that must be one of the keys in force in the verified log
 * (checked at finish). */
void kb_audit_verifier_pin(struct kb_audit_verifier *v, const char *fp);

/* Accept a log with no checkpoint (only the hash chain is checked). By
 * default such a log fails: nothing in it is signed. */
void kb_audit_verifier_allow_unsigned(struct kb_audit_verifier *v);

/* `stored_hash` is the hash the log claims for this event. */
void kb_audit_verifier_event(struct kb_audit_verifier *v,
    const struct kb_audit_event *ev, const uint8_t *stored_hash,
    size_t stored_len);
void kb_audit_verifier_checkpoint(
    struct kb_audit_verifier *v, const struct kb_audit_checkpoint *cp);

/* Unfinished calls: a state change is recorded as a "started" event, then
 * its outcome (any other result) with the same request_id and method. The
 * verifier holds the "started" events still waiting for their outcome, at
 * most KB_AUDIT_PENDING_MAX (outcomes follow within milliseconds and a
 * broker runs a few dozen calls at once); when that many are waiting, the
 * oldest quarter is counted unfinished. A "broker.start" (role "system")
 * ends every wait: the broker that ran those calls stopped. */
#define KB_AUDIT_PENDING_MAX 4096
#define KB_AUDIT_UNFINISHED_SHOWN 10

/* A "started" event with no outcome after it. Fields are truncated copies
 * (at a UTF-8 character boundary). */
/* Why a call without an outcome was cut short (kb_audit_unfinished). */
#define KB_AUDIT_CUT_RESTART 1 /* its broker's broker.start comes after it */
/* its broker's audit.recovered comes after it: the outcome was lost while
 * that broker's audit log could not write */
#define KB_AUDIT_CUT_AUDIT_OUTAGE 2

struct kb_audit_unfinished {
	uint64_t seq;
	int interrupted; /* 0 (may still be running) or a KB_AUDIT_CUT_* */
	char method[40], request_id[40];
	char tenant[64], env[64], actor[80];
};

struct kb_audit_result {
	int ok; /* no failure found */
	uint64_t
	    first_bad_seq; /* when !ok: the first sequence number that fails */
	char reason[512]; /* when !ok: why */
	uint64_t events; /* events seen */
	uint64_t first_seq, last_seq;
	uint64_t checkpoints;
	uint64_t covered_seq; /* last event covered by a good checkpoint */
	uint64_t rotations; /* key rotations that took effect */
	int pinned; /* a pinned key was found in force */
	/* Information, not failures (up to the first failure, if any):
	 * state changes started without a recorded outcome. Of them,
	 * `unfinished_interrupted` have a broker.start after them (the broker
	 * stopped mid-call); the others may still have been running when the
	 * log was read. `unfinished_overflow` of them were counted when
	 * KB_AUDIT_PENDING_MAX were waiting at once (an outcome after that was
	 * not looked for). The first few, in log order, are in
	 * `unfinished_first`. */
	uint64_t unfinished, unfinished_interrupted, unfinished_overflow;
	size_t unfinished_shown;
	struct kb_audit_unfinished unfinished_first[KB_AUDIT_UNFINISHED_SHOWN];
};

/* Finish: checks that the last checkpoint's events are all present, that
 * there was a checkpoint (unless allowed), that a pinned key was in force,
 * and counts the calls still waiting for an outcome as unfinished. */
void kb_audit_verifier_finish(
    struct kb_audit_verifier *v, struct kb_audit_result *res);

#endif /* KB_AUDIT_H */
