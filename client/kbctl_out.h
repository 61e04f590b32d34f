/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl_out.h: kbctl's output: calls with their errors, JSON documents,
 * "key: value" text, and the broker's messages (tenant, environment, key,
 * job, backup) in both forms. */
#ifndef KB_KBCTL_OUT_H
#define KB_KBCTL_OUT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "kbctl.h"
#include "kbctl_fmt.h"

/* ---- calls ---- */

/* Print "kbctl: STATUS: message" (sanitized) to stderr; returns
 * KBCTL_EXIT_FAIL. */
int kbctl_fail_status(const struct kb_status *st);

/* kb_client_call through k->client; a failure is printed with
 * kbctl_fail_status. Returns KBCTL_EXIT_OK (and *resp, freed by the caller
 * with kb_wire_free) or KBCTL_EXIT_FAIL; KBCTL_EXIT_REQUESTED when a
 * quorum made the call an approval request (ABORTED with the trailer
 * kb-request-id), which is then printed on stdout. */
int kbctl_call(struct kbctl *k, const char *method, const ProtobufCMessage *req,
    const ProtobufCMessageDescriptor *d, ProtobufCMessage **resp);

/* An approval request (ApprovalRequest) as text, or as JSON with a
 * top-level "request_id" (kbctl_quorum.c). */
int kbctl_print_request(const struct kbctl *k, const ProtobufCMessage *m);

/* kbctl_call, then print the answer with `print` (kbctl_print_tenant,
 * kbctl_print_env, ...) and free it. Returns an exit code. */
int kbctl_call_print(struct kbctl *k, const char *method,
    const ProtobufCMessage *req, const ProtobufCMessageDescriptor *d,
    int (*print)(const struct kbctl *k, const ProtobufCMessage *m));

/* How a list of one message type prints: as {items: [...]} (--json) or as
 * a table of `ncols` columns, one row per item. */
struct kbctl_list_fmt {
	const char *items; /* "keys": the answer's repeated field, JSON key */
	const char *const *headers;
	size_t ncols;
	int (*row)(struct kbctl_table *t, const ProtobufCMessage *item);
	json_t *(*json)(const ProtobufCMessage *item);
};

/* kbctl_call for a List* call answered in one message (no pages), then
 * print the answer's field fmt->items as `fmt` says and free it. Returns
 * an exit code. */
int kbctl_call_list(struct kbctl *k, const char *method,
    const ProtobufCMessage *req, const ProtobufCMessageDescriptor *d,
    const struct kbctl_list_fmt *fmt);

/* The field `name` of message m (by its proto name): a pointer into m, or
 * NULL if m has none; for a repeated field, *count (unless NULL) gets its
 * number of items. */
void *kbctl_field_ptr(
    const ProtobufCMessage *m, const char *name, size_t *count);

/* ---- JSON ---- */

/* A JSON string; bytes that are not UTF-8 become '?'. NULL prints "". */
json_t *kbctl_jstr(const char *s);
/* Set o[key] = v (stealing v); a failure marks the document broken, and
 * kbctl_json_print then refuses to print it. */
void kbctl_jset(json_t *o, const char *key, json_t *v);
/* o[name] = RFC 3339 time, or null for 0; o[name "_us"] = the number. */
void kbctl_jset_time(json_t *o, const char *name, int64_t us);
json_t *kbctl_jstr_array(char **v, size_t n);
/* Print one document (2-space indent, newline) on stdout and release it.
 * Returns KBCTL_EXIT_OK, or KBCTL_EXIT_FAIL (said on stderr). */
int kbctl_json_print(json_t *j);

/* ---- text ---- */

/* "key: value" on stdout, control characters replaced. */
void kbctl_kv(const char *key, const char *val);
void kbctl_kv_u(const char *key, unsigned long long v);
/* "-" for NULL or "". */
const char *kbctl_or_dash(const char *s);
/* Words joined by ", " into buf ("-" when none); returns buf. */
const char *kbctl_join(char **v, size_t n, char *buf, size_t len);
/* Print and free a table; returns an exit code. Accepts NULL (out of
 * memory: said on stderr). */
int kbctl_table_done(struct kbctl_table *t);

/* ---- the broker's messages ---- */

/* Each type has: *_HEADERS/NCOLS for a table, *_row (append one row;
 * 0 or -1 out of memory), *_json (a new object), and kbctl_print_* which
 * prints one message as JSON (--json) or as "key: value" lines and
 * returns an exit code. `m` is the message of that type. */
extern const char *const kbctl_tenant_headers[];
#define KBCTL_TENANT_NCOLS 6
int kbctl_tenant_row(struct kbctl_table *t, const ProtobufCMessage *m);
json_t *kbctl_tenant_json(const ProtobufCMessage *m);
int kbctl_print_tenant(const struct kbctl *k, const ProtobufCMessage *m);

extern const char *const kbctl_env_headers[];
#define KBCTL_ENV_NCOLS 7
int kbctl_env_row(struct kbctl_table *t, const ProtobufCMessage *m);
json_t *kbctl_env_json(const ProtobufCMessage *m);
int kbctl_print_env(const struct kbctl *k, const ProtobufCMessage *m);

extern const char *const kbctl_key_headers[];
#define KBCTL_KEY_NCOLS 6
int kbctl_key_row(struct kbctl_table *t, const ProtobufCMessage *m);
json_t *kbctl_key_json(const ProtobufCMessage *m);
int kbctl_print_key(const struct kbctl *k, const ProtobufCMessage *m);

json_t *kbctl_job_json(const ProtobufCMessage *m);
int kbctl_print_job(const struct kbctl *k, const ProtobufCMessage *m);

extern const char *const kbctl_backup_headers[];
#define KBCTL_BACKUP_NCOLS 5
int kbctl_backup_row(struct kbctl_table *t, const ProtobufCMessage *m);
json_t *kbctl_backup_json(const ProtobufCMessage *m);
int kbctl_print_backup(const struct kbctl *k, const ProtobufCMessage *m);

#endif /* KB_KBCTL_OUT_H */
