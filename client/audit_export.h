/* SPDX-License-Identifier: Apache-2.0 */
/* audit_export.h: what kbctl does with the audit log without a broker: the
 * export format and its verification (with common/kb_audit.h's verifier),
 * and the state file of `kbctl audit tail -f`. No broker calls here.
 *
 * An export is JSON Lines. Line 1 is the header:
 *   {"type":"header","format":"keybroker-audit-export","version":1,
 *    "exported_at":RFC3339,"exported_at_us":N,"head_seq":N,
 *    "audit_key":{"key_id","algorithm","fingerprint","public_key_pem"},
 *    "audit_keys":[{the same, and "state"}, ...]}
 * ("audit_keys": every key the log has used, oldest first, when there are
 * retired ones; a checkpoint's "key_id" names the key that signed it)
 * then, in log order, events
 *   {"type":"event","seq","time","time_us","actor","role","peer","method",
 *    "tenant_id","environment","key_id","result","reason","request_id",
 *    "hash" (hex)}
 * and checkpoints
 *   {"type":"checkpoint","seq","time","time_us","head_hash" (hex),
 *    "prev_signature" (base64),"signature" (base64),"key_id"}
 * A checkpoint comes right after the event with its seq (or, when that
 * event is absent, where its seq would be). "time" is time_us as RFC 3339
 * UTC and must say the same instant: only time_us is hashed. */
#ifndef KB_AUDIT_EXPORT_H
#define KB_AUDIT_EXPORT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "kb_audit.h"
#include "kb_err.h"
#include "keybroker.pb-c.h"

#define AUDIT_EXPORT_FORMAT "keybroker-audit-export"
#define AUDIT_EXPORT_VERSION 1

/* ---- building the export's items ---- */

/* An event as a JSON object with the fields above; with `typed`, "type":
 * "event" comes first (an export line; `audit list --json` has none). NULL
 * when out of memory or a string is not UTF-8. The caller decrefs. */
json_t *audit_export_event_json(const Keybroker__V1__Event *ev, int typed);

/* A checkpoint as an export line's object (NULL: out of memory). */
json_t *audit_export_checkpoint_json(const Keybroker__V1__Checkpoint *cp);

/* The header: `key` (the one in force) as the broker published it, every
 * key the log has used (`all`, oldest first; NULL when the broker does not
 * list them), the time of the export and the last event it covers (NULL:
 * out of memory). */
json_t *audit_export_header_json(const Keybroker__V1__AuditKey *key,
    const Keybroker__V1__ListAuditKeysResponse *all, int64_t now_us,
    uint64_t head_seq);

/* ---- the audit key ---- */

/* Parse a PEM public key (an RSA key: checkpoints are RSASSA-PKCS1-v1_5)
 * into *pub (free with EVP_PKEY_free) and its fingerprint, the hex SHA-256
 * of its DER SubjectPublicKeyInfo, into fp. KB_ERR_INVALID_ARGUMENT says
 * what is wrong with it. */
enum kb_err audit_export_key_load(const char *pem, EVP_PKEY **pub, char fp[65]);

/* A fingerprint as a person types it (upper or lower case, ':' or spaces
 * between the digits) to 64 lower-case hex digits in out. Returns 0, or -1
 * when it is not 32 bytes of hex. */
int audit_export_fp_normalize(const char *in, char out[65]);

/* ---- verification ---- */

/* The outcome of a verification. */
struct audit_export_report {
	int ok;
	/* When !ok: the first sequence number that fails (0 when the failure
	 * is no event's, e.g. the header), the line of a malformed item (0
	 * when the failure is the log's own, or items not from a file), and
	 * why. */
	uint64_t seq;
	unsigned long line;
	char reason[768];
	/* What was verified (also when !ok: up to the failure). */
	uint64_t events, first_seq, last_seq, checkpoints;
	uint64_t covered_seq; /* last event covered by a good checkpoint */
	char fingerprint[65]; /* of the header's key, computed from it */
	char key_id[128];
	int pinned; /* a pinned key was in force (else not pinned) */
	uint64_t rotations; /* audit key rotations that took effect */
	/* Information, not a failure: state changes with a "started" event
	 * and no outcome after it (kb_audit_result's fields of that name). */
	uint64_t unfinished, unfinished_interrupted, unfinished_overflow;
	size_t unfinished_shown;
	struct kb_audit_unfinished unfinished_first[KB_AUDIT_UNFINISHED_SHOWN];
};

/* Feed items in file order (header first) with _item or _line, then
 * _finish. `pin` (may be NULL) is a fingerprint the header's key must
 * have (audit_export_fp_normalize form). */
struct audit_export_verifier;

enum kb_err audit_export_verifier_new(
    const char *pin, struct audit_export_verifier **out);
void audit_export_verifier_free(struct audit_export_verifier *v);

/* Accept a log without checkpoints (by default it fails: nothing in it is
 * signed). Call before feeding. */
void audit_export_verifier_allow_unsigned(struct audit_export_verifier *v);

/* Feed one item; `line` numbers it in messages (0: not from a file).
 * Returns 0 to go on, -1 when the item is malformed or the header is
 * refused: stop feeding and call _finish. A failure of the log itself
 * (a hash, a signature, a missing event) shows only in _finish. */
int audit_export_verifier_item(
    struct audit_export_verifier *v, const json_t *item, unsigned long line);

/* Parse one line of an export (without its newline) and feed it. */
int audit_export_verifier_line(struct audit_export_verifier *v,
    const char *text, size_t len, unsigned long line);

/* The report: the first failure in item order, else what was verified
 * and the state changes with no recorded outcome. `end_line` is the line
 * after the last one read (for "no header"). */
void audit_export_verifier_finish(struct audit_export_verifier *v,
    unsigned long end_line, struct audit_export_report *rep);

/* ---- tail's state file ---- */

/* The last sequence number `kbctl audit tail -f --state-file` printed,
 * as decimal text and a newline. _read: *found 0 when the file does not
 * exist; anything but one number is KB_ERR_INVALID_ARGUMENT naming the
 * file. _write: to PATH.tmp (mode 0600), then renamed over PATH, so the
 * file always holds a whole number. */
enum kb_err audit_state_read(const char *path, uint64_t *seq, int *found);
enum kb_err audit_state_write(const char *path, uint64_t seq);

#endif /* KB_AUDIT_EXPORT_H */
