/* SPDX-License-Identifier: Apache-2.0 */
/* kb_err.h: the one error space shared by broker, hsm and client. It knows
 * nothing of gRPC: kb_err_grpc.h maps it to status codes, for the layers
 * that speak gRPC. */
#ifndef KB_ERR_H
#define KB_ERR_H

#include <stdarg.h>

/* The longest message kept, with its NUL. */
#define KB_ERR_MSG_MAX 1024

enum kb_err {
	KB_OK = 0,
	KB_ERR_INTERNAL, /* a bug or an unexpected library failure */
	KB_ERR_NOMEM,
	KB_ERR_INVALID_ARGUMENT, /* the caller sent something malformed */
	KB_ERR_NOT_FOUND,
	KB_ERR_ALREADY_EXISTS,
	KB_ERR_PERMISSION_DENIED, /* authenticated, but not allowed */
	KB_ERR_UNAUTHENTICATED, /* no valid client identity */
	KB_ERR_FAILED_PRECONDITION, /* state or policy forbids it now */
	KB_ERR_UNAVAILABLE, /* token or store not reachable; retry later */
	KB_ERR_HSM, /* the token refused or failed (CK_RV in message) */
	KB_ERR_STORE, /* the database failed */
	KB_ERR_STORAGE_FULL, /* the database's disk is full */
	KB_ERR_READ_ONLY, /* the database cannot be written */
	KB_ERR_CRYPTO, /* OpenSSL failed */
	KB_ERR_IO, /* a file could not be read or written */
	KB_ERR_CONFIG, /* bad configuration */
	KB_ERR_TOKEN_MISMATCH, /* the database belongs to another token */
	KB_ERR_RESOURCE_EXHAUSTED,
	KB_ERR_DEADLINE,
	KB_ERR_CANCELLED,
	KB_ERR_UNIMPLEMENTED,
	KB_ERR_CORRUPT, /* stored data failed an integrity check */
	KB_ERR_APPROVAL_REQUIRED, /* not done: a quorum request was made instead
	                           */
	KB_ERR_COUNT_ /* not an error: number of codes */
};

/* Short fixed description of a code; never NULL, never "unknown" for a
 * defined code (tests walk every code). */
const char *kb_strerror(enum kb_err e);

/* Record a detailed, human-actionable message for the current thread and
 * return `e`, so callers can write `return kb_errf(KB_ERR_NOT_FOUND, ...)`.
 * The message must never contain secrets. */
enum kb_err kb_errf(enum kb_err e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
enum kb_err kb_verrf(enum kb_err e, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

/* Prefix the current thread's message with more context ("loading key x: ..."),
 * returning `e` unchanged. */
enum kb_err kb_err_wrap(enum kb_err e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The current thread's last message, or kb_strerror(e) if none was set
 * since the last kb_err_clear(). Valid until the next kb_errf on this thread.
 */
const char *kb_err_msg(enum kb_err e);
void kb_err_clear(void);

/* Append OpenSSL's error queue (and clear it) to a kb_errf message. */
enum kb_err kb_err_openssl(enum kb_err e, const char *what);

#endif /* KB_ERR_H */
