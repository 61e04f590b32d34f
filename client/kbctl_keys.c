/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl_keys.c: kbctl's handlers for tenant keys (list, show, generate,
 * upload, activate and its job), and tenant lock and unlock. */
#include "kbctl.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kb_secmem.h"
#include "kb_time.h"
#include "kbctl_out.h"
#include "kbctl_secret.h"
#include "keybroker.pb-c.h"

/* GetJob polling while --wait. */
#define POLL_MS 200
/* Without a terminal, one progress line this often. */
#define LINE_EVERY_US (5 * 1000000LL)
/* How long an unreachable broker is retried while waiting. */
#define RETRY_FOR_US (30 * 1000000LL)

int
kbctl_password_get(const struct kbctl_args *a, const char *prompt,
    const char *again, const char *what, char **pw, size_t *len)
{
	const char *file = kbctl_flag(a, "--password-file");
	enum kb_err e;

	*pw = NULL;
	*len = 0;
	if (file != NULL) {
		if ((e = kbctl_password_file_read(file, pw, len)) != KB_OK)
			return kbctl_err(e, KBCTL_EXIT_FAIL);
		return -1;
	}
	if (!kbctl_stdin_is_tty())
		return kbctl_usage_error(a,
		    "%s: pass --password-file FILE (stdin is not a terminal, "
		    "so kbctl cannot ask for it)",
		    what);
	if ((e = kbctl_password_prompt(prompt, again, pw, len)) != KB_OK) {
		if (e == KB_ERR_CANCELLED) {
			fprintf(
			    stderr, "kbctl: interrupted; nothing was done\n");
			return KBCTL_EXIT_INTERRUPTED;
		}
		return kbctl_err(e, KBCTL_EXIT_FAIL);
	}
	return -1;
}

/* Set by SIGINT (and, around `keys generate`, SIGTERM and SIGHUP). */
static volatile sig_atomic_t interrupted;

static void
on_interrupt(int sig)
{
	(void)sig;
	interrupted = 1;
}

static const int held_signals[] = {SIGINT, SIGTERM, SIGHUP};
#define NHELD (sizeof(held_signals) / sizeof(held_signals[0]))

/* Defer SIGINT, SIGTERM and SIGHUP: they only set `interrupted` until
 * signals_release. For what must not be cut in the middle. */
static void
signals_hold(struct sigaction old[NHELD])
{
	struct sigaction sa;
	size_t i;

	interrupted = 0;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_interrupt;
	sigemptyset(&sa.sa_mask);
	for (i = 0; i < NHELD; i++)
		sigaction(held_signals[i], &sa, &old[i]);
}

static void
signals_release(const struct sigaction old[NHELD])
{
	size_t i;

	for (i = 0; i < NHELD; i++)
		sigaction(held_signals[i], &old[i], NULL);
}

/* ---- key files (upload, lock, unlock) ---- */

/* A tenant key file read for sending, with its password (all secret). */
struct keyfile {
	uint8_t *buf;
	size_t len;
	int format; /* KeyFileFormat */
	char *pw; /* NULL for a .byok */
	size_t pw_len;
};

static void
keyfile_free(struct keyfile *kf)
{
	kbctl_key_file_free(kf->buf, kf->len);
	kbctl_password_free(kf->pw);
	memset(kf, 0, sizeof(*kf));
}

/* Read `path`, settle its format (--format or its content) and, for a
 * .pfx, its password. Returns -1 when done, else an exit code. */
static int
keyfile_load(const struct kbctl_args *a, const char *path, struct keyfile *kf)
{
	const char *fmt = kbctl_flag(a, "--format");
	char prompt[300], what[300];
	enum kb_err e;
	int rc;

	memset(kf, 0, sizeof(*kf));
	if (fmt != NULL && (kf->format = kbctl_key_file_format_parse(fmt)) < 0)
		return kbctl_usage_error(
		    a, "bad --format \"%s\": pfx or byok", fmt);
	if ((e = kbctl_key_file_read(path, &kf->buf, &kf->len)) != KB_OK)
		return kbctl_err(e, KBCTL_EXIT_FAIL);
	if (fmt == NULL
	    && (e = kbctl_key_file_detect(kf->buf, kf->len, path, &kf->format))
	        != KB_OK) {
		keyfile_free(kf);
		return kbctl_err(e, KBCTL_EXIT_FAIL);
	}
	if (kf->format
	    == KEYBROKER__V1__KEY_FILE_FORMAT__KEY_FILE_FORMAT_BYOK) {
		if (kbctl_flag(a, "--password-file") != NULL)
			fprintf(stderr,
			    "kbctl: note: %s is sent as a .byok, which has no "
			    "password: --password-file is not used\n",
			    path);
		return -1;
	}
	snprintf(prompt, sizeof(prompt), "Password for %s:", path);
	snprintf(
	    what, sizeof(what), "%s is a .pfx and needs its password", path);
	if ((rc = kbctl_password_get(
	         a, prompt, NULL, what, &kf->pw, &kf->pw_len))
	    >= 0) {
		keyfile_free(kf);
		return rc;
	}
	return -1;
}

/* Point a request's key file fields (`format`, `file`, `password`) at kf.
 * The request is then secret: keyfile_call wipes it. */
static void
keyfile_attach(const struct keyfile *kf, Keybroker__V1__KeyFileFormat *format,
    ProtobufCBinaryData *file, char **password)
{
	*format = (Keybroker__V1__KeyFileFormat)kf->format;
	file->data = kf->buf;
	file->len = kf->len;
	*password = kf->pw != NULL ? kf->pw : (char *)"";
}

/* kbctl_call with `req`, which carries kf (keyfile_attach); then, whatever
 * the answer, wipe req and free kf. Returns kbctl_call's exit code (and
 * *resp on KBCTL_EXIT_OK). */
static int
keyfile_call(struct kbctl *k, const char *method, ProtobufCMessage *req,
    const ProtobufCMessageDescriptor *d, struct keyfile *kf,
    ProtobufCMessage **resp)
{
	size_t size = req->descriptor->sizeof_message;
	int rc = kbctl_call(k, method, req, d, resp);

	kb_wipe(req, size);
	keyfile_free(kf);
	return rc;
}

/* ---- keys ---- */

int
kbctl_cmd_keys_list(struct kbctl *k, const struct kbctl_args *a)
{
	static const struct kbctl_list_fmt keys = {"keys", kbctl_key_headers,
	    KBCTL_KEY_NCOLS, kbctl_key_row, kbctl_key_json};
	Keybroker__V1__ListKeysRequest req =
	    KEYBROKER__V1__LIST_KEYS_REQUEST__INIT;

	req.tenant_id = (char *)a->argv[0];
	return kbctl_call_list(k, KB_METHOD_LIST_KEYS, &req.base,
	    &keybroker__v1__list_keys_response__descriptor, &keys);
}

/* A key a quorum holds for approval: what happens next. */
static void
staged_note(const struct kbctl *k, const Keybroker__V1__Key *x)
{
	char id[128], r[64];

	if (x == NULL || x->approval_request_id[0] == '\0')
		return;
	kbctl_sanitize(x->id, id, sizeof(id));
	kbctl_sanitize(x->approval_request_id, r, sizeof(r));
	fprintf(k->json ? stderr : stdout,
	    "%sKey %s is pending_approval: it cannot be activated until "
	    "request %s\nis approved (kbctl approvals approve %s); a deny or "
	    "an expiry destroys it.\n",
	    k->json ? "kbctl: " : "\n", id, r, r);
}

int
kbctl_cmd_keys_generate(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__GenerateKeyRequest req =
	    KEYBROKER__V1__GENERATE_KEY_REQUEST__INIT;
	Keybroker__V1__GenerateKeyResponse *x;
	const char *path = kbctl_flag(a, "--out");
	const char *tenant = a->argv[0];
	struct kbctl_out_file *f = NULL;
	struct sigaction held[NHELD];
	ProtobufCMessage *m = NULL;
	char *pw = NULL, id[128];
	size_t pw_len = 0;
	enum kb_err e;
	int rc;

	/* Ctrl-C must not fall between the broker's answer and the saved
	 * file: the .pfx is shown once. Until it is saved, it only marks. */
	signals_hold(held);
	/* Reserve the output first: a key whose .pfx cannot be saved is
	 * of no use for locking. */
	if ((rc = kbctl_out_open(a, path, 0600, &f)) >= 0)
		goto fail;
	if ((rc = kbctl_password_get(a, "Password for the new key's .pfx:",
	         "Repeat:", "the new key's .pfx needs a password", &pw,
	         &pw_len))
	    >= 0)
		goto fail;
	if (interrupted) {
		fprintf(stderr, "kbctl: interrupted; nothing was done\n");
		rc = KBCTL_EXIT_INTERRUPTED;
		goto fail;
	}
	req.tenant_id = (char *)tenant;
	req.password = pw;
	rc = kbctl_call(k, KB_METHOD_GENERATE_KEY, &req.base,
	    &keybroker__v1__generate_key_response__descriptor, &m);
	/* Our encoded copy was wiped by the library; now the password. */
	req.password = (char *)"";
	kbctl_password_free(pw);
	pw = NULL;
	if (rc != KBCTL_EXIT_OK)
		goto fail;
	x = (Keybroker__V1__GenerateKeyResponse *)m;
	if (x->key == NULL || x->pfx.len == 0) {
		fprintf(stderr,
		    "kbctl: INTERNAL: the broker returned no key or no .pfx\n");
		rc = KBCTL_EXIT_FAIL;
		goto fail;
	}
	kbctl_sanitize(x->key->id, id, sizeof(id));
	e = kbctl_out_file_commit(f, x->pfx.data, x->pfx.len);
	f = NULL;
	if (e != KB_OK) {
		kbctl_err(e, KBCTL_EXIT_FAIL);
		fprintf(stderr,
		    "kbctl: key %s was generated in the broker, but its .pfx "
		    "could not be saved and cannot be fetched again: that key "
		    "can never lock or unlock the tenant. Generate another.\n",
		    id);
		rc = KBCTL_EXIT_FAIL;
		goto fail;
	}
	signals_release(held);
	if (k->json) {
		json_t *o = json_object();

		kbctl_jset(o, "key", kbctl_key_json(&x->key->base));
		kbctl_jset(o, "pfx_file", kbctl_jstr(path));
		if (x->key->approval_request_id[0] != '\0')
			kbctl_jset(o, "request_id",
			    kbctl_jstr(x->key->approval_request_id));
		rc = kbctl_json_print(o);
	} else {
		rc = kbctl_print_key(k, &x->key->base);
		kbctl_kv("pfx_file", path);
	}
	fprintf(k->json ? stderr : stdout,
	    "%sKeep %s and its password safe: together they are the only "
	    "copy of key %s,\nand the only way to lock and unlock tenant %s. "
	    "The broker cannot show the .pfx again.\n",
	    k->json ? "kbctl: " : "\n", path, id, tenant);
	staged_note(k, x->key);
	if (interrupted) {
		fprintf(stderr,
		    "kbctl: interrupted after the key was made; its .pfx was "
		    "saved first\n");
		rc = KBCTL_EXIT_INTERRUPTED;
	}
	kb_wire_free(m); /* wipes the .pfx bytes */
	return rc;
fail:
	signals_release(held);
	kbctl_out_file_abort(f);
	kbctl_password_free(pw);
	kb_wire_free(m);
	return rc;
}

int
kbctl_cmd_keys_upload(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__UploadKeyRequest req =
	    KEYBROKER__V1__UPLOAD_KEY_REQUEST__INIT;
	struct keyfile kf;
	ProtobufCMessage *m = NULL;
	int rc;

	if ((rc = keyfile_load(a, a->argv[1], &kf)) >= 0)
		return rc;
	req.tenant_id = (char *)a->argv[0];
	keyfile_attach(&kf, &req.format, &req.file, &req.password);
	if ((rc = keyfile_call(k, KB_METHOD_UPLOAD_KEY, &req.base,
	         &keybroker__v1__key__descriptor, &kf, &m))
	    != KBCTL_EXIT_OK)
		return rc;
	rc = kbctl_print_key(k, m);
	staged_note(k, (const Keybroker__V1__Key *)m);
	kb_wire_free(m);
	return rc;
}

/* ---- activation and its job ---- */

static void
sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	/* A signal cuts it short: the caller checks `interrupted`. */
	(void)nanosleep(&ts, NULL);
}

/* Follow the job in *mp (a Job, replaced by each GetJob answer) until it
 * is no longer running. Returns -1 when it ended (see (*mp)->state), else
 * an exit code (said on stderr). */
int
kbctl_job_follow(struct kbctl *k, ProtobufCMessage **mp)
{
	Keybroker__V1__GetJobRequest req = KEYBROKER__V1__GET_JOB_REQUEST__INIT;
	Keybroker__V1__Job *j = (Keybroker__V1__Job *)*mp;
	struct sigaction sa, old;
	struct kb_status st;
	ProtobufCMessage *n = NULL;
	int tty = isatty(STDERR_FILENO), rc = -1, shown = 0;
	int64_t last_line = 0, failing_since = 0, now;
	char id[128], bar[128];

	kbctl_sanitize(j->id, id, sizeof(id));
	req.id = j->id;
	interrupted = 0;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_interrupt;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, &old);
	for (;;) {
		j = (Keybroker__V1__Job *)*mp;
		now = kb_time_mono_us();
		if (tty) {
			fprintf(stderr, "\r%s",
			    kbctl_progress_bar(
			        j->done, j->total, bar, sizeof(bar)));
			shown = 1;
		} else if (j->state
		        == KEYBROKER__V1__JOB_STATE__JOB_STATE_RUNNING
		    && (last_line == 0 || now - last_line >= LINE_EVERY_US)) {
			fprintf(stderr,
			    "kbctl: job %s: %llu/%llu data keys "
			    "re-sealed\n",
			    id, (unsigned long long)j->done,
			    (unsigned long long)j->total);
			last_line = now;
		}
		fflush(stderr);
		if (j->state != KEYBROKER__V1__JOB_STATE__JOB_STATE_RUNNING)
			break;
		sleep_ms(POLL_MS);
		if (interrupted)
			break;
		req.id = j->id;
		if (kb_client_call(k->client, KB_METHOD_GET_JOB, &req.base,
		        &keybroker__v1__job__descriptor, &n, &st)
		    != KB_OK) {
			/* A broker restarting (the job resumes there) is
			 * worth waiting for; anything else is not. */
			if ((st.code == GRPC_STATUS_UNAVAILABLE
			        || st.code == GRPC_STATUS_DEADLINE_EXCEEDED)
			    && (failing_since == 0
			        || now - failing_since < RETRY_FOR_US)) {
				if (failing_since == 0)
					failing_since = now;
				continue;
			}
			if (shown)
				fputc('\n', stderr);
			kbctl_fail_status(&st);
			fprintf(stderr,
			    "kbctl: stopped waiting; job %s may still be "
			    "running: 'kbctl jobs show %s' follows it\n",
			    id, id);
			rc = KBCTL_EXIT_FAIL;
			goto out;
		}
		failing_since = 0;
		kb_wire_free(*mp);
		*mp = n;
		n = NULL;
	}
	if (shown)
		fputc('\n', stderr);
	if (interrupted) {
		fprintf(stderr,
		    "kbctl: stopped waiting; job %s goes on in the broker: "
		    "'kbctl jobs show %s' follows it\n",
		    id, id);
		rc = KBCTL_EXIT_INTERRUPTED;
	}
out:
	sigaction(SIGINT, &old, NULL);
	return rc;
}

int
kbctl_cmd_keys_activate(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__ActivateKeyRequest req =
	    KEYBROKER__V1__ACTIVATE_KEY_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	int rc, wait = kbctl_flag(a, "--wait") != NULL;

	req.tenant_id = (char *)a->argv[0];
	req.key_id = (char *)a->argv[1];
	if ((rc = kbctl_call(k, KB_METHOD_ACTIVATE_KEY, &req.base,
	         &keybroker__v1__job__descriptor, &m))
	    != KBCTL_EXIT_OK)
		return rc;
	return kbctl_job_answer(k, m, wait);
}

int
kbctl_job_answer(struct kbctl *k, ProtobufCMessage *m, int wait)
{
	Keybroker__V1__Job *j;
	char id[128], err[512];
	int rc;

	if (wait && (rc = kbctl_job_follow(k, &m)) >= 0) {
		kb_wire_free(m);
		return rc;
	}
	j = (Keybroker__V1__Job *)m;
	kbctl_sanitize(j->id, id, sizeof(id));
	rc = kbctl_print_job(k, m);
	switch (j->state) {
	case KEYBROKER__V1__JOB_STATE__JOB_STATE_RUNNING:
		if (!k->json)
			fprintf(stderr,
			    "kbctl: job %s re-seals the data keys in the "
			    "broker: 'kbctl jobs show %s' follows it\n",
			    id, id);
		break;
	case KEYBROKER__V1__JOB_STATE__JOB_STATE_DONE: break;
	case KEYBROKER__V1__JOB_STATE__JOB_STATE_FAILED:
		kbctl_sanitize(j->error, err, sizeof(err));
		fprintf(stderr, "kbctl: job %s failed: %s\n", id,
		    err[0] != '\0' ? err : "(no reason given)");
		rc = KBCTL_EXIT_FAIL;
		break;
	case KEYBROKER__V1__JOB_STATE__JOB_STATE_UNSPECIFIED:
	case _KEYBROKER__V1__JOB_STATE_IS_INT_SIZE:
	default:
		if (wait) {
			fprintf(stderr,
			    "kbctl: job %s is in no known state (%d)\n", id,
			    (int)j->state);
			rc = KBCTL_EXIT_FAIL;
		}
		break;
	}
	kb_wire_free(m);
	return rc;
}

int
kbctl_cmd_jobs_show(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__GetJobRequest req = KEYBROKER__V1__GET_JOB_REQUEST__INIT;

	req.id = (char *)a->argv[0];
	return kbctl_call_print(k, KB_METHOD_GET_JOB, &req.base,
	    &keybroker__v1__job__descriptor, kbctl_print_job);
}

/* ---- lock and unlock ---- */

int
kbctl_cmd_tenants_lock(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__LockTenantRequest req =
	    KEYBROKER__V1__LOCK_TENANT_REQUEST__INIT;
	const char *tenant = a->argv[0], *path = kbctl_flag(a, "--key");
	struct keyfile kf;
	ProtobufCMessage *m = NULL;
	char explain[2048], t[128];
	int rc;

	/* Without a terminal and --yes, stop before reading anything. */
	if (kbctl_flag(a, "--yes") == NULL && !kbctl_stdin_is_tty())
		return kbctl_confirm_or_yes(a, "", "", "");
	if ((rc = keyfile_load(a, path, &kf)) >= 0)
		return rc;
	kbctl_sanitize(tenant, t, sizeof(t));
	snprintf(explain, sizeof(explain),
	    "Locking tenant %s:\n"
	    "  - every customer-managed environment of %s is locked: "
	    "services get no\n    data key from it until it is unlocked;\n"
	    "  - every active and available key of %s is destroyed in the "
	    "token; only the\n    key in %s can unlock the tenant (from 1 "
	    "hour after the lock);\n"
	    "  - locked environments not unlocked within 28 days are deleted "
	    "for good:\n    their data keys, and the data they protect, are "
	    "gone.\n",
	    t, t, t, path);
	if ((rc = kbctl_confirm_or_yes(a, explain, "the tenant id", tenant))
	    >= 0) {
		keyfile_free(&kf);
		return rc;
	}
	req.tenant_id = (char *)tenant;
	keyfile_attach(&kf, &req.format, &req.file, &req.password);
	if ((rc = keyfile_call(k, KB_METHOD_LOCK_TENANT, &req.base,
	         &keybroker__v1__tenant__descriptor, &kf, &m))
	    != KBCTL_EXIT_OK)
		return rc;
	rc = kbctl_print_tenant(k, m);
	if (!k->json)
		fprintf(stderr,
		    "kbctl: tenant %s is locked. Keep %s: 'kbctl tenants "
		    "unlock' needs it.\n",
		    t, path);
	kb_wire_free(m);
	return rc;
}

int
kbctl_cmd_tenants_unlock(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__UnlockTenantRequest req =
	    KEYBROKER__V1__UNLOCK_TENANT_REQUEST__INIT;
	const char *tenant = a->argv[0];
	struct keyfile kf;
	ProtobufCMessage *m = NULL;
	char t[128];
	int rc;

	if ((rc = keyfile_load(a, kbctl_flag(a, "--key"), &kf)) >= 0)
		return rc;
	req.tenant_id = (char *)tenant;
	keyfile_attach(&kf, &req.format, &req.file, &req.password);
	if ((rc = keyfile_call(k, KB_METHOD_UNLOCK_TENANT, &req.base,
	         &keybroker__v1__tenant__descriptor, &kf, &m))
	    != KBCTL_EXIT_OK)
		return rc;
	rc = kbctl_print_tenant(k, m);
	kbctl_sanitize(tenant, t, sizeof(t));
	if (!k->json
	    && ((Keybroker__V1__Tenant *)m)->locked_environment_count > 0)
		fprintf(stderr,
		    "kbctl: its environments are still locked: unlock each "
		    "with 'kbctl envs unlock %s ENV'\n",
		    t);
	kb_wire_free(m);
	return rc;
}
