/* SPDX-License-Identifier: Apache-2.0 */
/* kbclient.h: the C client library of keybroker (mutual TLS, unary calls). */
#ifndef KB_CLIENT_H
#define KB_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/status.h>
#include <protobuf-c/protobuf-c.h>

#include "kb_err.h"
#include "kb_err_grpc.h"
#include "kb_wire.h"

#define KB_CLIENT_DEFAULT_ADDR "127.0.0.1:7443"
#define KB_CLIENT_DEFAULT_TIMEOUT_MS 10000
/* With several broker addresses: how long a connection to one may take
 * before the next is tried. */
#define KB_CLIENT_DEFAULT_CONNECT_TIMEOUT_MS 2000
/* At most this many addresses in one list. */
#define KB_CLIENT_MAX_ADDRS 16
/* Largest response accepted (gRPC's default receive limit). */
#define KB_CLIENT_MAX_MESSAGE (4 * 1024 * 1024)

/* Full gRPC method names, for kb_client_call(). */
#define KB_METHOD_WHOAMI "/keybroker.v1.KeyBroker/WhoAmI"
#define KB_METHOD_CREATE_TENANT "/keybroker.v1.KeyBroker/CreateTenant"
#define KB_METHOD_LIST_TENANTS "/keybroker.v1.KeyBroker/ListTenants"
#define KB_METHOD_GET_TENANT "/keybroker.v1.KeyBroker/GetTenant"
#define KB_METHOD_CREATE_ENVIRONMENT "/keybroker.v1.KeyBroker/CreateEnvironment"
#define KB_METHOD_LIST_ENVIRONMENTS "/keybroker.v1.KeyBroker/ListEnvironments"
#define KB_METHOD_GET_ENVIRONMENT "/keybroker.v1.KeyBroker/GetEnvironment"
#define KB_METHOD_GET_DATA_KEY "/keybroker.v1.KeyBroker/GetDataKey"
#define KB_METHOD_GENERATE_KEY "/keybroker.v1.KeyBroker/GenerateKey"
#define KB_METHOD_UPLOAD_KEY "/keybroker.v1.KeyBroker/UploadKey"
#define KB_METHOD_LIST_KEYS "/keybroker.v1.KeyBroker/ListKeys"
#define KB_METHOD_GET_KEY "/keybroker.v1.KeyBroker/GetKey"
#define KB_METHOD_ACTIVATE_KEY "/keybroker.v1.KeyBroker/ActivateKey"
#define KB_METHOD_GET_JOB "/keybroker.v1.KeyBroker/GetJob"
#define KB_METHOD_ROTATE_KEY_EXCHANGE_KEY                                      \
	"/keybroker.v1.KeyBroker/RotateKeyExchangeKey"
#define KB_METHOD_ROTATE_PLATFORM_KEY                                          \
	"/keybroker.v1.KeyBroker/RotatePlatformKey"
#define KB_METHOD_VERIFY_DATA_KEYS "/keybroker.v1.KeyBroker/VerifyDataKeys"
#define KB_METHOD_REPAIR_DATA_KEYS "/keybroker.v1.KeyBroker/RepairDataKeys"
#define KB_METHOD_GET_KEY_EXCHANGE_KEY                                         \
	"/keybroker.v1.KeyBroker/GetKeyExchangeKey"
#define KB_METHOD_LOCK_TENANT "/keybroker.v1.KeyBroker/LockTenant"
#define KB_METHOD_UNLOCK_TENANT "/keybroker.v1.KeyBroker/UnlockTenant"
#define KB_METHOD_APPLY_KEY "/keybroker.v1.KeyBroker/ApplyKey"
#define KB_METHOD_REVERT_KEY "/keybroker.v1.KeyBroker/RevertKey"
#define KB_METHOD_UNLOCK_ENVIRONMENT "/keybroker.v1.KeyBroker/UnlockEnvironment"
#define KB_METHOD_RESET_ENVIRONMENT "/keybroker.v1.KeyBroker/ResetEnvironment"
#define KB_METHOD_BACKUP_ENVIRONMENT "/keybroker.v1.KeyBroker/BackupEnvironment"
#define KB_METHOD_LIST_BACKUPS "/keybroker.v1.KeyBroker/ListBackups"
#define KB_METHOD_RESTORE_BACKUP "/keybroker.v1.KeyBroker/RestoreBackup"
#define KB_METHOD_COPY_ENVIRONMENT "/keybroker.v1.KeyBroker/CopyEnvironment"
#define KB_METHOD_LIST_EVENTS "/keybroker.v1.KeyBroker/ListEvents"
/* Server streaming: kb_client_stream_open(), not kb_client_call(). */
#define KB_METHOD_TAIL_EVENTS "/keybroker.v1.KeyBroker/TailEvents"
#define KB_METHOD_LIST_CHECKPOINTS "/keybroker.v1.KeyBroker/ListCheckpoints"
#define KB_METHOD_GET_AUDIT_KEY "/keybroker.v1.KeyBroker/GetAuditKey"
#define KB_METHOD_LIST_AUDIT_KEYS "/keybroker.v1.KeyBroker/ListAuditKeys"
#define KB_METHOD_ROTATE_AUDIT_KEY "/keybroker.v1.KeyBroker/RotateAuditKey"
#define KB_METHOD_GET_CLOCK_STATE "/keybroker.v1.KeyBroker/GetClockState"
#define KB_METHOD_CONFIRM_CLOCK_JUMP "/keybroker.v1.KeyBroker/ConfirmClockJump"
/* Server streaming: the bytes of a backup file. */
#define KB_METHOD_CREATE_BACKUP "/keybroker.v1.KeyBroker/CreateBackup"
/* Key census, key retirement, DEK rotation (issue 14). */
#define KB_METHOD_GET_KEY_CENSUS "/keybroker.v1.KeyBroker/GetKeyCensus"
#define KB_METHOD_RETIRE_KEY "/keybroker.v1.KeyBroker/RetireKey"
#define KB_METHOD_ROTATE_DATA_KEY "/keybroker.v1.KeyBroker/RotateDataKey"
#define KB_METHOD_RETIRE_DATA_KEYS "/keybroker.v1.KeyBroker/RetireDataKeys"
#define KB_METHOD_HEALTH_CHECK "/grpc.health.v1.Health/Check"
/* Doctor (issue 14). */
#define KB_METHOD_RUN_DIAGNOSTICS "/keybroker.v1.KeyBroker/RunDiagnostics"
/* Deletion with a way back (issue 14). */
#define KB_METHOD_DELETE_ENVIRONMENT "/keybroker.v1.KeyBroker/DeleteEnvironment"
#define KB_METHOD_UNDELETE_ENVIRONMENT                                         \
	"/keybroker.v1.KeyBroker/UndeleteEnvironment"
#define KB_METHOD_DELETE_KEY "/keybroker.v1.KeyBroker/DeleteKey"
#define KB_METHOD_UNDELETE_KEY "/keybroker.v1.KeyBroker/UndeleteKey"

/* A client: one channel (one HTTP/2 connection) to each broker address it
 * was given; its calls go to one of them at a time. Safe to use from many
 * threads at once; every call blocks its own thread only.
 *
 * Failover (with more than one address): a call goes to the address that
 * last answered (the first at the start). When that broker cannot be
 * reached (UNAVAILABLE before the call was sent, or no connection within
 * connect_timeout_ms), the call goes to the next address, and so on round
 * the list; the address that answers is used from then on. A call the
 * broker may have received is repeated elsewhere only when it is safe to
 * repeat (kb_client_method_retry_safe: GetDataKey and the reads), also on
 * UNAVAILABLE from the broker itself and on a deadline. When every address
 * failed, st->message names each with its reason. */
struct kb_client;

struct kb_client_opts {
	/* "host:port", or a list "host:port,host:port,..." (see
	 * kb_client_addrs_parse); NULL = KB_CLIENT_DEFAULT_ADDR */
	const char *addr;
	const char *cert_file; /* client certificate (chain), PEM */
	const char *key_file; /* its private key, PEM, unencrypted (secret) */
	const char *ca_file; /* CA certificate(s) that sign the broker's */
	const char
	    *server_name; /* optional: TLS name to verify instead of host */
	int timeout_ms; /* per-call deadline (of each attempt when a call
	                   fails over); <= 0 = the default (10 s) */
	/* With several addresses: the wait for a connection to one before the
	 * next is tried; <= 0 = KB_CLIENT_DEFAULT_CONNECT_TIMEOUT_MS. */
	int connect_timeout_ms;
};

/* The outcome of a call as the broker (or gRPC) reported it. */
struct kb_status {
	grpc_status_code code;
	char message[512]; /* the status details; NUL-terminated */
	/* ABORTED (KB_ERR_APPROVAL_REQUIRED): the approval request the broker
	 * made instead of acting, from the trailer kb-request-id; else "". */
	char request_id[40];
};

/* The trailer naming the approval request a quorum-covered call made. */
#define KB_REQUEST_ID_TRAILER "kb-request-id"

/* Read the three PEM files and create the channel; nothing is sent until
 * the first call. Errors (KB_ERR_IO naming the file, KB_ERR_CONFIG, ...)
 * carry a kb_err_msg(). The copy of the private key we read is wiped; gRPC
 * keeps its own for the channel's lifetime. Free *out with kb_client_close. */
enum kb_err kb_client_open(
    const struct kb_client_opts *o, struct kb_client **out);

/* Close the channel and free the client. Calls still running on other
 * threads must have returned. Accepts NULL. */
void kb_client_close(struct kb_client *c);

/* The "host:port" this client talks to now: the address that last
 * answered, or the first (owned by the client). */
const char *kb_client_addr(const struct kb_client *c);

/* Split a list of broker addresses, "host:port[,host:port...]" (blanks
 * around the commas are ignored), into (*out)[0..*n), each a copy; free
 * with kb_client_addrs_free. "[v6addr]:port" for IPv6; a gRPC target with
 * a scheme ("unix:/path", "dns:///host:port") is taken as it is. An empty
 * list or entry, a missing or bad port (1 to 65535), an address listed
 * twice, or more than KB_CLIENT_MAX_ADDRS give KB_ERR_CONFIG naming the
 * entry; then *out is NULL. */
enum kb_err kb_client_addrs_parse(const char *list, char ***out, size_t *n);

/* Free what kb_client_addrs_parse made. Accepts NULL. */
void kb_client_addrs_free(char **v, size_t n);

/* 1 if a call of `method` (a KB_METHOD_* name) can be repeated on another
 * broker after the first may have received it (it changes nothing, or
 * doing it twice is the same as once): GetDataKey, WhoAmI, the Get and
 * List calls, VerifyDataKeys, the health check; else 0. */
int kb_client_method_retry_safe(const char *method);

/* One unary call of `method` (a KB_METHOD_* name) with `req`. On KB_OK,
 * *resp is a `resp_desc` message: free it with kb_wire_free (which wipes
 * it, so responses holding DEKs leave no copy). On failure *resp is NULL
 * and the error is the mapping of st->code (see kb_client_err_from_grpc);
 * kb_err_msg() and st->message hold the broker's words. When the broker
 * cannot be reached st->message starts "cannot connect to HOST:PORT: ".
 * `st` may be NULL. The request may carry secrets: our encoded copy is
 * wiped after the call. */
enum kb_err kb_client_call(struct kb_client *c, const char *method,
    const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
    ProtobufCMessage **resp, struct kb_status *st);

/* A server-streaming call (TailEvents): one request, then messages until
 * the broker ends the stream or the client closes it. Used by one thread
 * at a time. */
struct kb_client_stream;

/* Start a server-streaming call of `method` with `req`; its messages are
 * `resp_desc` messages, read with kb_client_stream_next. With several
 * addresses the stream opens on the first that has a connection (from the
 * one that last answered on); when none has, the stream ends at once and
 * its status names each. A stream that breaks is not resumed here: the
 * caller opens another (after the last message it saw), which goes to the
 * next broker that answers. The call has no
 * deadline when timeout_ms <= 0 (a stream may last for days), else ends
 * after timeout_ms; a connection that dies silently under it is noticed
 * within about 6.5 minutes (keepalive pings). Errors here are local (out of
 * memory, no call could be made); the broker's answer, a refusal included,
 * comes from kb_client_stream_next. `st` may be NULL. Free *out with
 * kb_client_stream_close. Our encoded copy of the request is wiped. */
enum kb_err kb_client_stream_open(struct kb_client *c, const char *method,
    const ProtobufCMessage *req, const ProtobufCMessageDescriptor *resp_desc,
    int timeout_ms, struct kb_client_stream **out, struct kb_status *st);

/* What kb_client_stream_next found. */
enum kb_stream_next {
	KB_STREAM_MESSAGE, /* *msg is the next message */
	KB_STREAM_WAITING, /* nothing within wait_ms; the stream goes on */
	KB_STREAM_ENDED /* the stream is over: st holds its final status */
};

/* Wait at most wait_ms (< 0: without limit) for the stream's next message.
 * KB_STREAM_MESSAGE: *msg is set; free it with kb_wire_free.
 * KB_STREAM_WAITING: call again (e.g. after checking for a signal).
 * KB_STREAM_ENDED: st->code is the final status as kb_client_call would
 * report it (GRPC_STATUS_OK when the broker closed the stream normally; a
 * message that cannot be decoded ends the stream locally, INTERNAL); every
 * later call says the same. */
enum kb_stream_next kb_client_stream_next(struct kb_client_stream *s,
    int wait_ms, ProtobufCMessage **msg, struct kb_status *st);

/* Cancel the call if it is still running and free the stream. Accepts
 * NULL. The client must outlive its streams. */
void kb_client_stream_close(struct kb_client_stream *s);

/* Fetch the data key of `tenant`/`env` into dek[0..dek_cap) (secret: the
 * caller wipes it after use); *dek_len gets its length (32) and *version
 * its version. A DEK longer than dek_cap gives KB_ERR_INVALID_ARGUMENT and
 * leaves dek untouched. All intermediate copies are wiped. `version` and
 * `st` may be NULL. */
enum kb_err kb_client_get_data_key(struct kb_client *c, const char *tenant,
    const char *env, uint8_t *dek, size_t dek_cap, size_t *dek_len,
    uint32_t *version, struct kb_status *st);

/* kb_client_get_data_key for DEK version `version` (0 = the current one):
 * older versions stay readable after a rotation. Same contract otherwise;
 * *version_out gets the version returned (may be NULL). */
enum kb_err kb_client_get_data_key_version(struct kb_client *c,
    const char *tenant, const char *env, uint32_t version, uint8_t *dek,
    size_t dek_cap, size_t *dek_len, uint32_t *version_out,
    struct kb_status *st);

/* grpc.health.v1.Health/Check for the whole server (service ""). On KB_OK
 * *serving_status is the ServingStatus number: 1 = SERVING, 2 =
 * NOT_SERVING (0 = UNKNOWN, 3 = SERVICE_UNKNOWN). */
enum kb_err kb_client_health(
    struct kb_client *c, int *serving_status, struct kb_status *st);

/* The client's one mapping from a gRPC status to our error space (the
 * inverse of kb_err_to_grpc, up to the codes that share a status). */
enum kb_err kb_client_err_from_grpc(grpc_status_code s);

/* For the end of main() only: shut gRPC down (the library initializes it
 * once, on the first kb_client_open). No kb_client may be open or opened
 * afterwards. Programs may also simply exit. */
void kb_client_global_cleanup(void);

#endif /* KB_CLIENT_H */
