/* SPDX-License-Identifier: Apache-2.0 */
/* mock_p11.c: a PKCS#11 module for tests that forwards to the real one
 * (SoftHSMv2) and injects the token faults SoftHSMv2 cannot produce.
 *
 * Environment:
 *   KB_MOCK_REAL_MODULE  the module to forward to
 *                        (default /usr/lib/softhsm/libsofthsm2.so)
 *   KB_MOCK_CONTROL      the control file, looked at on every call
 *   KB_MOCK_LOG          optional: a line is appended for each C_Initialize,
 *                        C_OpenSession, C_Login and injected reset
 *
 * The control file holds one directive a line (an absent or empty file
 * passes every call through):
 *   removed          the token is gone: C_GetSlotList(tokenPresent) lists
 *                    no slot, slot calls answer CKR_TOKEN_NOT_PRESENT,
 *                    session calls CKR_DEVICE_REMOVED. The sessions open
 *                    when it is noticed are closed in the real token (as a
 *                    power loss would), so the login is gone too.
 *   session-invalid  a token reset: the sessions open when it is noticed
 *                    are closed in the real token, which then answers
 *                    CKR_SESSION_HANDLE_INVALID on them; new sessions work
 *                    once logged in again
 *   pin-locked       C_Login answers CKR_PIN_LOCKED (and C_GetTokenInfo
 *                    shows CKF_USER_PIN_LOCKED)
 *   hang-ms N        every intercepted call first sleeps N milliseconds
 *   create-fail N    the next N calls that make an object (C_CreateObject,
 *                    C_GenerateKey, C_GenerateKeyPair, C_UnwrapKey) answer
 *                    CKR_GENERAL_ERROR and make nothing, as SoftHSMv2 does
 *                    when its object file cannot be made at that moment;
 *                    each write of the file counts N afresh
 *   login-fail N     the next N C_Login calls answer CKR_GENERAL_ERROR (as
 *                    SoftHSMv2 can while another process writes the token)
 * The file is re-read when its inode, size or times change: write a new
 * file and rename it over the old one. Each such write holding `removed`
 * or `session-invalid` is one reset.
 *
 * Only the calls below are intercepted (every call keybroker's hsm/ makes,
 * and the slot queries); the others pass through unchanged. */
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <p11-kit/pkcs11.h>

#define MOCK_DEFAULT_REAL "/usr/lib/softhsm/libsofthsm2.so"

struct fault {
	int removed;
	int pin_locked;
	unsigned hang_ms;
	unsigned create_fail;
	unsigned login_fail;
};

static pthread_mutex_t mock_mu = PTHREAD_MUTEX_INITIALIZER;
static CK_FUNCTION_LIST_PTR real; /* the real module's functions */
static CK_FUNCTION_LIST mock_list; /* what we hand to the caller */
static int mock_initialized; /* real C_Initialize succeeded */
static struct stat seen; /* the control file as last read */
static struct fault cur;
static unsigned create_fail_left; /* of cur.create_fail */
static unsigned login_fail_left; /* of cur.login_fail */

/* ---- the control file ---- */

static void mock_log(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static void
mock_log(const char *fmt, ...)
{
	const char *path = getenv("KB_MOCK_LOG");
	va_list ap;
	FILE *f;

	if (path == NULL || (f = fopen(path, "a")) == NULL)
		return;
	va_start(ap, fmt);
	vfprintf(f, fmt, ap);
	va_end(ap);
	fputc('\n', f);
	fclose(f);
}

static const char *
rv_name(CK_RV rv)
{
	static __thread char buf[24];

	switch (rv) {
	case CKR_OK: return "CKR_OK";
	case CKR_PIN_INCORRECT: return "CKR_PIN_INCORRECT";
	case CKR_PIN_LOCKED: return "CKR_PIN_LOCKED";
	case CKR_USER_ALREADY_LOGGED_IN: return "CKR_USER_ALREADY_LOGGED_IN";
	case CKR_TOKEN_NOT_PRESENT: return "CKR_TOKEN_NOT_PRESENT";
	case CKR_DEVICE_REMOVED: return "CKR_DEVICE_REMOVED";
	case CKR_SESSION_HANDLE_INVALID: return "CKR_SESSION_HANDLE_INVALID";
	default:
		snprintf(buf, sizeof(buf), "CKR_0x%08lX", (unsigned long)rv);
		return buf;
	}
}

static int
same_file(const struct stat *a, const struct stat *b)
{
	return a->st_ino == b->st_ino && a->st_dev == b->st_dev
	    && a->st_size == b->st_size
	    && a->st_mtim.tv_sec == b->st_mtim.tv_sec
	    && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec
	    && a->st_ctim.tv_sec == b->st_ctim.tv_sec
	    && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Parse the control file into *f; returns 1 if it asks for a reset
 * (`removed` or `session-invalid`). Unknown lines are reported once. */
static int
control_parse(const char *path, struct fault *f)
{
	char line[128], word[32];
	unsigned n;
	int reset = 0;
	FILE *fp;

	memset(f, 0, sizeof(*f));
	if (path == NULL || (fp = fopen(path, "r")) == NULL)
		return 0;
	while (fgets(line, sizeof(line), fp) != NULL) {
		if (sscanf(line, "%31s", word) != 1 || word[0] == '#')
			continue;
		if (strcmp(word, "removed") == 0) {
			f->removed = 1;
			reset = 1;
		} else if (strcmp(word, "session-invalid") == 0) {
			reset = 1;
		} else if (strcmp(word, "pin-locked") == 0) {
			f->pin_locked = 1;
		} else if (sscanf(line, " hang-ms %u", &n) == 1) {
			f->hang_ms = n;
		} else if (sscanf(line, " create-fail %u", &n) == 1) {
			f->create_fail = n;
		} else if (sscanf(line, " login-fail %u", &n) == 1) {
			f->login_fail = n;
		} else {
			fprintf(stderr,
			    "kbmockp11: %s: unknown directive \"%s\"\n", path,
			    word);
		}
	}
	fclose(fp);
	return reset;
}

/* Close every session of the process in the real token: what a token
 * reset or a power loss does. The real token then logs out. Caller holds
 * mock_mu; the module is initialized. */
static void
real_sessions_drop(const char *why)
{
	CK_SLOT_ID slots[16];
	CK_ULONG n = 16, i;

	if (real->C_GetSlotList(CK_FALSE, slots, &n) != CKR_OK)
		n = 0;
	for (i = 0; i < n; i++)
		(void)real->C_CloseAllSessions(slots[i]);
	mock_log("reset %s: closed all sessions", why);
}

/* The fault in force now, re-reading the control file if it changed. */
static struct fault
fault_now(void)
{
	const char *path = getenv("KB_MOCK_CONTROL");
	struct stat st;
	struct fault f;

	pthread_mutex_lock(&mock_mu);
	if (path == NULL || stat(path, &st) != 0)
		memset(&st, 0, sizeof(st));
	if (!same_file(&st, &seen)) {
		seen = st;
		if (control_parse(path, &cur) && mock_initialized)
			real_sessions_drop(
			    cur.removed ? "removed" : "session-invalid");
		create_fail_left = cur.create_fail;
		login_fail_left = cur.login_fail;
	}
	f = cur;
	pthread_mutex_unlock(&mock_mu);
	if (f.hang_ms > 0) {
		struct timespec ts = {
		    f.hang_ms / 1000, (long)(f.hang_ms % 1000) * 1000000L};

		while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
			;
	}
	return f;
}

/* The gates: CKR_OK lets the call through. */
static CK_RV
gate_slot(void)
{
	return fault_now().removed ? CKR_TOKEN_NOT_PRESENT : CKR_OK;
}

static CK_RV
gate_session(void)
{
	return fault_now().removed ? CKR_DEVICE_REMOVED : CKR_OK;
}

/* A call that makes an object: as gate_session, and CKR_GENERAL_ERROR
 * while create-fail has calls left. */
static CK_RV
gate_create(void)
{
	CK_RV rv = gate_session();

	if (rv != CKR_OK)
		return rv;
	pthread_mutex_lock(&mock_mu);
	if (create_fail_left > 0) {
		create_fail_left--;
		rv = CKR_GENERAL_ERROR;
	}
	pthread_mutex_unlock(&mock_mu);
	if (rv != CKR_OK)
		mock_log("create-fail CKR_GENERAL_ERROR");
	return rv;
}

/* Define mock_<fn>, for a call that has no fault of its own: `gate` (a
 * gate_* above) answers it while the token is removed, else it is passed
 * to the real module's C_<fn>. `params` is the parameter list, `args` the
 * same names as arguments. */
#define MOCK_FORWARD(gate, fn, params, args)                                   \
	static CK_RV mock_##fn params                                          \
	{                                                                      \
		CK_RV rv = gate();                                             \
                                                                               \
		return rv != CKR_OK ? rv : real->C_##fn args;                  \
	}

/* ---- library and slot calls ---- */

static CK_RV
mock_Initialize(CK_VOID_PTR args)
{
	CK_RV rv = real->C_Initialize(args);

	pthread_mutex_lock(&mock_mu);
	if (rv == CKR_OK)
		mock_initialized = 1;
	pthread_mutex_unlock(&mock_mu);
	mock_log("C_Initialize %s", rv_name(rv));
	return rv;
}

static CK_RV
mock_Finalize(CK_VOID_PTR reserved)
{
	pthread_mutex_lock(&mock_mu);
	mock_initialized = 0;
	pthread_mutex_unlock(&mock_mu);
	return real->C_Finalize(reserved);
}

static CK_RV
mock_GetSlotList(CK_BBOOL present, CK_SLOT_ID_PTR list, CK_ULONG_PTR count)
{
	if (present && fault_now().removed) {
		*count = 0;
		return CKR_OK;
	}
	return real->C_GetSlotList(present, list, count);
}

static CK_RV
mock_GetSlotInfo(CK_SLOT_ID slot, CK_SLOT_INFO_PTR info)
{
	int removed = fault_now().removed;
	CK_RV rv = real->C_GetSlotInfo(slot, info);

	if (rv == CKR_OK && removed)
		info->flags &= ~(CK_FLAGS)CKF_TOKEN_PRESENT;
	return rv;
}

static CK_RV
mock_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info)
{
	struct fault f = fault_now();
	CK_RV rv;

	if (f.removed)
		return CKR_TOKEN_NOT_PRESENT;
	rv = real->C_GetTokenInfo(slot, info);
	if (rv == CKR_OK && f.pin_locked)
		info->flags |= CKF_USER_PIN_LOCKED;
	return rv;
}

MOCK_FORWARD(gate_slot, GetMechanismList,
    (CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count),
    (slot, list, count))

MOCK_FORWARD(gate_slot, GetMechanismInfo,
    (CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info),
    (slot, type, info))

static CK_RV
mock_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app,
    CK_NOTIFY notify, CK_SESSION_HANDLE_PTR sh)
{
	CK_RV rv = gate_slot();

	if (rv == CKR_OK)
		rv = real->C_OpenSession(slot, flags, app, notify, sh);
	mock_log("C_OpenSession %s", rv_name(rv));
	return rv;
}

MOCK_FORWARD(gate_slot, CloseAllSessions, (CK_SLOT_ID slot), (slot))

/* ---- session calls ---- */

MOCK_FORWARD(gate_session, CloseSession, (CK_SESSION_HANDLE sh), (sh))

MOCK_FORWARD(gate_session, GetSessionInfo,
    (CK_SESSION_HANDLE sh, CK_SESSION_INFO_PTR info), (sh, info))

static CK_RV
mock_Login(CK_SESSION_HANDLE sh, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin,
    CK_ULONG pin_len)
{
	struct fault f = fault_now();
	CK_RV rv;
	int fail = 0;

	pthread_mutex_lock(&mock_mu);
	if (login_fail_left > 0) {
		login_fail_left--;
		fail = 1;
	}
	pthread_mutex_unlock(&mock_mu);
	if (f.removed)
		rv = CKR_DEVICE_REMOVED;
	else if (f.pin_locked)
		rv = CKR_PIN_LOCKED;
	else if (fail)
		rv = CKR_GENERAL_ERROR;
	else
		rv = real->C_Login(sh, user, pin, pin_len);
	mock_log("C_Login %s", rv_name(rv));
	return rv;
}

MOCK_FORWARD(gate_session, Logout, (CK_SESSION_HANDLE sh), (sh))

MOCK_FORWARD(gate_create, CreateObject,
    (CK_SESSION_HANDLE sh, CK_ATTRIBUTE_PTR t, CK_ULONG n,
        CK_OBJECT_HANDLE_PTR obj),
    (sh, t, n, obj))

MOCK_FORWARD(gate_session, DestroyObject,
    (CK_SESSION_HANDLE sh, CK_OBJECT_HANDLE obj), (sh, obj))

MOCK_FORWARD(gate_session, GetAttributeValue,
    (CK_SESSION_HANDLE sh, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_PTR t,
        CK_ULONG n),
    (sh, obj, t, n))

MOCK_FORWARD(gate_session, SetAttributeValue,
    (CK_SESSION_HANDLE sh, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_PTR t,
        CK_ULONG n),
    (sh, obj, t, n))

MOCK_FORWARD(gate_session, FindObjectsInit,
    (CK_SESSION_HANDLE sh, CK_ATTRIBUTE_PTR t, CK_ULONG n), (sh, t, n))

MOCK_FORWARD(gate_session, FindObjects,
    (CK_SESSION_HANDLE sh, CK_OBJECT_HANDLE_PTR objs, CK_ULONG max,
        CK_ULONG_PTR n),
    (sh, objs, max, n))

MOCK_FORWARD(gate_session, FindObjectsFinal, (CK_SESSION_HANDLE sh), (sh))

MOCK_FORWARD(gate_session, EncryptInit,
    (CK_SESSION_HANDLE sh, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (sh, m, k))

MOCK_FORWARD(gate_session, Encrypt,
    (CK_SESSION_HANDLE sh, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out,
        CK_ULONG_PTR out_len),
    (sh, in, in_len, out, out_len))

MOCK_FORWARD(gate_session, DecryptInit,
    (CK_SESSION_HANDLE sh, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (sh, m, k))

MOCK_FORWARD(gate_session, Decrypt,
    (CK_SESSION_HANDLE sh, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR out,
        CK_ULONG_PTR out_len),
    (sh, in, in_len, out, out_len))

MOCK_FORWARD(gate_session, SignInit,
    (CK_SESSION_HANDLE sh, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (sh, m, k))

MOCK_FORWARD(gate_session, Sign,
    (CK_SESSION_HANDLE sh, CK_BYTE_PTR in, CK_ULONG in_len, CK_BYTE_PTR sig,
        CK_ULONG_PTR sig_len),
    (sh, in, in_len, sig, sig_len))

MOCK_FORWARD(gate_create, GenerateKey,
    (CK_SESSION_HANDLE sh, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR t, CK_ULONG n,
        CK_OBJECT_HANDLE_PTR key),
    (sh, m, t, n, key))

MOCK_FORWARD(gate_create, GenerateKeyPair,
    (CK_SESSION_HANDLE sh, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pub_t,
        CK_ULONG pub_n, CK_ATTRIBUTE_PTR priv_t, CK_ULONG priv_n,
        CK_OBJECT_HANDLE_PTR pub, CK_OBJECT_HANDLE_PTR priv),
    (sh, m, pub_t, pub_n, priv_t, priv_n, pub, priv))

MOCK_FORWARD(gate_session, WrapKey,
    (CK_SESSION_HANDLE sh, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE wk,
        CK_OBJECT_HANDLE k, CK_BYTE_PTR out, CK_ULONG_PTR out_len),
    (sh, m, wk, k, out, out_len))

MOCK_FORWARD(gate_create, UnwrapKey,
    (CK_SESSION_HANDLE sh, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE uk,
        CK_BYTE_PTR in, CK_ULONG in_len, CK_ATTRIBUTE_PTR t, CK_ULONG n,
        CK_OBJECT_HANDLE_PTR key),
    (sh, m, uk, in, in_len, t, n, key))

MOCK_FORWARD(gate_session, GenerateRandom,
    (CK_SESSION_HANDLE sh, CK_BYTE_PTR buf, CK_ULONG len), (sh, buf, len))

/* ---- the entry point ---- */

/* Load the real module once and build our list: the real one with the
 * calls above replaced. */
CK_RV
C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out)
{
	const char *path = getenv("KB_MOCK_REAL_MODULE");
	CK_RV (*get)(CK_FUNCTION_LIST_PTR_PTR);
	CK_RV rv = CKR_OK;
	void *dl;

	if (out == NULL)
		return CKR_ARGUMENTS_BAD;
	if (path == NULL || path[0] == '\0')
		path = MOCK_DEFAULT_REAL;
	pthread_mutex_lock(&mock_mu);
	if (real != NULL)
		goto done;
	if ((dl = dlopen(path, RTLD_NOW | RTLD_LOCAL)) == NULL) {
		fprintf(stderr, "kbmockp11: cannot load the real module: %s\n",
		    dlerror());
		rv = CKR_GENERAL_ERROR;
		goto done;
	}
	*(void **)&get = dlsym(dl, "C_GetFunctionList");
	if (get == NULL || (rv = get(&real)) != CKR_OK || real == NULL) {
		fprintf(stderr, "kbmockp11: %s: no usable C_GetFunctionList\n",
		    path);
		real = NULL;
		rv = CKR_GENERAL_ERROR;
		dlclose(dl);
		goto done;
	}
	/* The module stays loaded for the life of the process. */
	mock_list = *real;
	mock_list.C_GetFunctionList = C_GetFunctionList;
#define MOCK(fn) mock_list.C_##fn = mock_##fn
	MOCK(Initialize);
	MOCK(Finalize);
	MOCK(GetSlotList);
	MOCK(GetSlotInfo);
	MOCK(GetTokenInfo);
	MOCK(GetMechanismList);
	MOCK(GetMechanismInfo);
	MOCK(OpenSession);
	MOCK(CloseAllSessions);
	MOCK(CloseSession);
	MOCK(GetSessionInfo);
	MOCK(Login);
	MOCK(Logout);
	MOCK(CreateObject);
	MOCK(DestroyObject);
	MOCK(GetAttributeValue);
	MOCK(SetAttributeValue);
	MOCK(FindObjectsInit);
	MOCK(FindObjects);
	MOCK(FindObjectsFinal);
	MOCK(EncryptInit);
	MOCK(Encrypt);
	MOCK(DecryptInit);
	MOCK(Decrypt);
	MOCK(SignInit);
	MOCK(Sign);
	MOCK(GenerateKey);
	MOCK(GenerateKeyPair);
	MOCK(WrapKey);
	MOCK(UnwrapKey);
	MOCK(GenerateRandom);
#undef MOCK
done:
	pthread_mutex_unlock(&mock_mu);
	if (rv == CKR_OK)
		*out = &mock_list;
	return rv;
}
