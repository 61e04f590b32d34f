/* SPDX-License-Identifier: Apache-2.0 */
/* kb_err.c: error codes, messages and the mapping to gRPC status. */
#include "kb_err.h"

#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

static __thread char err_msg[KB_ERR_MSG_MAX];
static __thread int err_set;

const char *
kb_strerror(enum kb_err e)
{
	switch (e) {
	case KB_OK: return "success";
	case KB_ERR_INTERNAL: return "internal error";
	case KB_ERR_NOMEM: return "out of memory";
	case KB_ERR_INVALID_ARGUMENT: return "invalid argument";
	case KB_ERR_NOT_FOUND: return "not found";
	case KB_ERR_ALREADY_EXISTS: return "already exists";
	case KB_ERR_PERMISSION_DENIED: return "permission denied";
	case KB_ERR_UNAUTHENTICATED: return "unauthenticated";
	case KB_ERR_FAILED_PRECONDITION:
		return "not allowed in the current state";
	case KB_ERR_UNAVAILABLE: return "temporarily unavailable";
	case KB_ERR_HSM: return "token operation failed";
	case KB_ERR_STORE: return "database operation failed";
	case KB_ERR_STORAGE_FULL: return "database storage is full";
	case KB_ERR_READ_ONLY: return "database is read-only";
	case KB_ERR_CRYPTO: return "cryptographic operation failed";
	case KB_ERR_IO: return "input/output error";
	case KB_ERR_CONFIG: return "invalid configuration";
	case KB_ERR_TOKEN_MISMATCH: return "database belongs to another token";
	case KB_ERR_RESOURCE_EXHAUSTED: return "resource exhausted";
	case KB_ERR_DEADLINE: return "deadline exceeded";
	case KB_ERR_CANCELLED: return "cancelled";
	case KB_ERR_UNIMPLEMENTED: return "not implemented";
	case KB_ERR_CORRUPT: return "stored data is corrupt";
	case KB_ERR_APPROVAL_REQUIRED: return "approval required";
	case KB_ERR_COUNT_: break;
	}
	return "unknown error";
}

enum kb_err
kb_verrf(enum kb_err e, const char *fmt, va_list ap)
{
	char buf[KB_ERR_MSG_MAX];

	/* Format apart first: an argument may be kb_err_msg() itself. */
	vsnprintf(buf, sizeof(buf), fmt, ap);
	memcpy(err_msg, buf, sizeof(err_msg));
	err_set = 1;
	return e;
}

enum kb_err
kb_errf(enum kb_err e, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	kb_verrf(e, fmt, ap);
	va_end(ap);
	return e;
}

enum kb_err
kb_err_wrap(enum kb_err e, const char *fmt, ...)
{
	char prefix[256], old[KB_ERR_MSG_MAX];
	va_list ap;

	snprintf(old, sizeof(old), "%s", err_set ? err_msg : kb_strerror(e));
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	/* Copy by hand: the result is cut to the buffer, on purpose. */
	{
		size_t pl = strlen(prefix), ol = strlen(old), n = 0;

		memcpy(err_msg, prefix, pl);
		n = pl;
		memcpy(err_msg + n, ": ", 2);
		n += 2;
		if (ol > sizeof(err_msg) - 1 - n)
			ol = sizeof(err_msg) - 1 - n;
		memcpy(err_msg + n, old, ol);
		err_msg[n + ol] = '\0';
	}
	err_set = 1;
	return e;
}

const char *
kb_err_msg(enum kb_err e)
{
	return err_set ? err_msg : kb_strerror(e);
}

void
kb_err_clear(void)
{
	err_set = 0;
	err_msg[0] = '\0';
}

enum kb_err
kb_err_openssl(enum kb_err e, const char *what)
{
	char buf[256];
	unsigned long l;
	size_t n;

	n = (size_t)snprintf(err_msg, sizeof(err_msg), "%s", what);
	/* Report the innermost (first queued) reason: it is the one a person
	 * can act on ("bad decrypt", "mac verify failure"). */
	if ((l = ERR_get_error()) != 0 && n < sizeof(err_msg)) {
		ERR_error_string_n(l, buf, sizeof(buf));
		const char *reason = ERR_reason_error_string(l);
		snprintf(err_msg + n, sizeof(err_msg) - n, ": %s",
		    reason != NULL ? reason : buf);
	}
	ERR_clear_error();
	err_set = 1;
	return e;
}
