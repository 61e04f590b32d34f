/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl_secret.c: passwords, tenant key files, once-written output files
 * and typed confirmations for kbctl (after OpenSSH's readpassphrase: the
 * terminal is put back before a signal is let through). */
#include "kbctl_secret.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "kb_secmem.h"
#include "keybroker.pb-c.h"

int
kbctl_stdin_is_tty(void)
{
	return isatty(STDIN_FILENO);
}

void
kbctl_password_free(char *pw)
{
	kb_secure_free(pw);
}

/* Bytes read from a password file: its first line must fit. */
#define PASSWORD_FILE_READ 4096

enum kb_err
kbctl_password_file_read(const char *path, char **pw, size_t *len)
{
	struct stat sb;
	char *buf = NULL, *nl;
	size_t n = 0;
	ssize_t got;
	int fd = -1;
	enum kb_err r = KB_ERR_INTERNAL;

	*pw = NULL;
	*len = 0;
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)) < 0) {
		r = kb_errf(KB_ERR_CONFIG,
		    "--password-file: cannot open %s: %s", path,
		    strerror(errno));
		goto out;
	}
	/* A file, or a pipe ("--password-file <(pass show x)", or
	 * /dev/stdin fed by a pipe): what others may read or write is
	 * refused. */
	if (fstat(fd, &sb) != 0
	    || !(S_ISREG(sb.st_mode) || S_ISFIFO(sb.st_mode))) {
		r = kb_errf(KB_ERR_CONFIG,
		    "--password-file: %s is not a regular file or a pipe",
		    path);
		goto out;
	}
	if ((sb.st_mode & 077) != 0) {
		r = kb_errf(KB_ERR_CONFIG,
		    "--password-file: %s has mode %04o: group and others must "
		    "not be able to read or write it (chmod 600 %s)",
		    path, (unsigned)(sb.st_mode & 07777), path);
		goto out;
	}
	if ((buf = kb_secure_alloc(PASSWORD_FILE_READ + 1)) == NULL) {
		r = kb_errf(KB_ERR_NOMEM,
		    "cannot allocate locked memory for a password (check "
		    "RLIMIT_MEMLOCK)");
		goto out;
	}
	while (n < PASSWORD_FILE_READ && memchr(buf, '\n', n) == NULL) {
		got = read(fd, buf + n, PASSWORD_FILE_READ - n);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			r = kb_errf(KB_ERR_IO,
			    "--password-file: reading %s: %s", path,
			    strerror(errno));
			goto out;
		}
		if (got == 0)
			break;
		n += (size_t)got;
	}
	/* The first line only; the rest is wiped. */
	if ((nl = memchr(buf, '\n', n)) != NULL) {
		kb_wipe(nl, n - (size_t)(nl - buf));
		n = (size_t)(nl - buf);
	} else if (n == PASSWORD_FILE_READ) {
		r = kb_errf(KB_ERR_CONFIG,
		    "--password-file: the first line of %s is longer than %d "
		    "bytes",
		    path, KBCTL_PASSWORD_MAX);
		goto out;
	}
	if (n > 0 && buf[n - 1] == '\r')
		n--;
	buf[n] = '\0';
	if (n == 0) {
		r = kb_errf(KB_ERR_CONFIG,
		    "--password-file: the first line of %s is empty", path);
		goto out;
	}
	if (n > KBCTL_PASSWORD_MAX) {
		r = kb_errf(KB_ERR_CONFIG,
		    "--password-file: the password in %s is longer than %d "
		    "bytes",
		    path, KBCTL_PASSWORD_MAX);
		goto out;
	}
	*pw = buf;
	*len = n;
	buf = NULL;
	r = KB_OK;
out:
	kb_secure_free(buf); /* wipes */
	if (fd >= 0)
		close(fd);
	return r;
}

/* ---- reading a line from the terminal ---- */

static volatile sig_atomic_t caught;

static void
on_signal(int sig)
{
	caught = sig;
}

static const int tty_signals[] = {
    SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGTSTP, SIGTTIN, SIGTTOU};
#define NSIGS (sizeof(tty_signals) / sizeof(tty_signals[0]))

static void
fd_puts(int fd, const char *s)
{
	size_t n = strlen(s);
	ssize_t w;

	while (n > 0) {
		w = write(fd, s, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		s += w;
		n -= (size_t)w;
	}
}

static int
is_stop_signal(int sig)
{
	return sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU;
}

/* Write `prompt` to `out`, read one line from `in` into buf[0..cap) without
 * its newline (echo off when `noecho` and `in` is a terminal). The terminal
 * is always put back: Ctrl-Z stops the process with echo on and asks again
 * on return; Ctrl-C (and SIGTERM, SIGHUP, SIGQUIT) end the read with
 * KB_ERR_CANCELLED ("interrupted"), for the caller to clean up and exit.
 * Other errors: end of input before a line (KB_ERR_INVALID_ARGUMENT "no
 * answer"), a line of cap bytes or more (KB_ERR_INVALID_ARGUMENT), a read
 * error (KB_ERR_IO). On error the buffer is wiped. */
static enum kb_err
tty_read_line(int in, int out, const char *prompt, int noecho, char *buf,
    size_t cap, size_t *len)
{
	struct termios saved, quiet;
	struct sigaction sa, dfl, old[NSIGS];
	int quiet_ok = 0, sig;
	size_t n = 0, i;
	enum kb_err r = KB_ERR_INTERNAL;
	char c;
	ssize_t got;

	*len = 0;
	caught = 0;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0; /* no SA_RESTART: read() returns EINTR */
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	sigemptyset(&dfl.sa_mask);
	for (i = 0; i < NSIGS; i++)
		sigaction(tty_signals[i], &sa, &old[i]);
	if (noecho && isatty(in) && tcgetattr(in, &saved) == 0) {
		quiet = saved;
		quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHOE | ECHOK);
		quiet.c_lflag |= ECHONL;
		quiet_ok = 1;
	}
again:
	if (quiet_ok)
		(void)tcsetattr(in, TCSAFLUSH, &quiet);
	fd_puts(out, prompt);
	n = 0;
	for (;;) {
		got = read(in, &c, 1);
		if (got < 0 && errno == EINTR) {
			if ((sig = caught) == 0)
				continue;
			caught = 0;
			if (quiet_ok)
				(void)tcsetattr(in, TCSAFLUSH, &saved);
			fd_puts(out, "\n");
			if (is_stop_signal(sig)) {
				/* Stop for real, with the terminal as it was;
				 * on SIGCONT, ask again from the start. */
				sigaction(sig, &dfl, NULL);
				kill(getpid(), sig);
				sigaction(sig, &sa, NULL);
				kb_wipe(buf, cap);
				goto again;
			}
			r = kb_errf(KB_ERR_CANCELLED, "interrupted");
			goto out;
		}
		if (got < 0) {
			r = kb_errf(KB_ERR_IO, "reading the terminal: %s",
			    strerror(errno));
			goto out;
		}
		if (got == 0) {
			if (isatty(in))
				fd_puts(out, "\n");
			if (n == 0) {
				r = kb_errf(KB_ERR_INVALID_ARGUMENT,
				    "no answer (end of input)");
				goto out;
			}
			break;
		}
		if (c == '\n')
			break;
		if (n + 1 >= cap) {
			/* Drain the rest of the line, then refuse. */
			while ((got = read(in, &c, 1)) == 1 && c != '\n')
				;
			r = kb_errf(KB_ERR_INVALID_ARGUMENT,
			    "the answer is longer than %zu bytes", cap - 1);
			goto out;
		}
		buf[n++] = c;
	}
	if (n > 0 && buf[n - 1] == '\r')
		n--;
	buf[n] = '\0';
	*len = n;
	r = KB_OK;
out:
	c = 0;
	if (r != KB_OK)
		kb_wipe(buf, cap);
	if (quiet_ok)
		(void)tcsetattr(in, TCSAFLUSH, &saved);
	for (i = 0; i < NSIGS; i++)
		sigaction(tty_signals[i], &old[i], NULL);
	caught = 0;
	return r;
}

/* The prompt on (in, out): see kbctl_password_prompt. */
static enum kb_err
password_ask(int in, int out, const char *prompt, const char *again, char **pw,
    size_t *len)
{
	char *a = NULL, *b = NULL;
	size_t na = 0, nb = 0;
	enum kb_err r = KB_ERR_INTERNAL;

	*pw = NULL;
	*len = 0;
	if ((a = kb_secure_alloc(KBCTL_PASSWORD_MAX + 2)) == NULL
	    || (again != NULL
	        && (b = kb_secure_alloc(KBCTL_PASSWORD_MAX + 2)) == NULL)) {
		r = kb_errf(KB_ERR_NOMEM,
		    "cannot allocate locked memory for a "
		    "password (check RLIMIT_MEMLOCK)");
		goto out;
	}
	if ((r = tty_read_line(
	         in, out, prompt, 1, a, KBCTL_PASSWORD_MAX + 1, &na))
	    != KB_OK)
		goto out;
	if (na == 0) {
		r = kb_errf(KB_ERR_INVALID_ARGUMENT, "the password is empty");
		goto out;
	}
	if (again != NULL) {
		if ((r = tty_read_line(
		         in, out, again, 1, b, KBCTL_PASSWORD_MAX + 1, &nb))
		    != KB_OK)
			goto out;
		if (na != nb || kb_memeq_ct(a, b, na) != 0) {
			r = kb_errf(KB_ERR_INVALID_ARGUMENT,
			    "the passwords do not match");
			goto out;
		}
	}
	*pw = a;
	*len = na;
	a = NULL;
	r = KB_OK;
out:
	kb_secure_free(a);
	kb_secure_free(b);
	return r;
}

enum kb_err
kbctl_password_prompt(
    const char *prompt, const char *again, char **pw, size_t *len)
{
	int fd;
	enum kb_err r;
	char p1[256], p2[256];

	*pw = NULL;
	*len = 0;
	if ((fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY)) < 0)
		return kb_errf(
		    KB_ERR_IO, "cannot open the terminal: %s", strerror(errno));
	snprintf(p1, sizeof(p1), "%s ", prompt);
	if (again != NULL)
		snprintf(p2, sizeof(p2), "%s ", again);
	r = password_ask(fd, fd, p1, again != NULL ? p2 : NULL, pw, len);
	close(fd);
	return r;
}

/* ---- key files ---- */

void
kbctl_key_file_free(uint8_t *buf, size_t len)
{
	kb_freezero(buf, len);
}

enum kb_err
kbctl_key_file_read(const char *path, uint8_t **out, size_t *len)
{
	struct stat sb;
	uint8_t *buf = NULL;
	size_t n = 0, cap = 0;
	ssize_t got;
	int fd = -1;
	enum kb_err r = KB_ERR_INTERNAL;

	*out = NULL;
	*len = 0;
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
		r = kb_errf(KB_ERR_IO, "cannot read key file %s: %s", path,
		    strerror(errno));
		goto out;
	}
	if (fstat(fd, &sb) != 0 || S_ISDIR(sb.st_mode)) {
		r = kb_errf(KB_ERR_IO, "cannot read key file %s: %s", path,
		    S_ISDIR(sb.st_mode) ? "a directory" : strerror(errno));
		goto out;
	}
	if (S_ISREG(sb.st_mode) && sb.st_size > KBCTL_KEY_FILE_MAX) {
		r = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "key file %s is %lld bytes: more than the %d bytes (64 "
		    "KiB) a .pfx or .byok may have",
		    path, (long long)sb.st_size, KBCTL_KEY_FILE_MAX);
		goto out;
	}
	/* One byte more than the limit tells "too large" from a pipe. */
	cap = KBCTL_KEY_FILE_MAX + 1;
	if ((buf = malloc(cap)) == NULL) {
		r = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	while (n < cap) {
		got = read(fd, buf + n, cap - n);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			r = kb_errf(KB_ERR_IO, "reading key file %s: %s", path,
			    strerror(errno));
			goto out;
		}
		if (got == 0)
			break;
		n += (size_t)got;
	}
	if (n > KBCTL_KEY_FILE_MAX) {
		r = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "key file %s is more than the %d bytes (64 KiB) a .pfx or "
		    ".byok may have",
		    path, KBCTL_KEY_FILE_MAX);
		goto out;
	}
	if (n == 0) {
		r = kb_errf(
		    KB_ERR_INVALID_ARGUMENT, "key file %s is empty", path);
		goto out;
	}
	*out = buf;
	*len = n;
	buf = NULL;
	r = KB_OK;
out:
	kb_freezero(buf, cap);
	if (fd >= 0)
		close(fd);
	return r;
}

enum kb_err
kbctl_key_file_detect(
    const uint8_t *buf, size_t len, const char *path, int *format)
{
	size_t i = 0;

	*format = KEYBROKER__V1__KEY_FILE_FORMAT__KEY_FILE_FORMAT_UNSPECIFIED;
	if (len == 0)
		return kb_errf(
		    KB_ERR_INVALID_ARGUMENT, "key file %s is empty", path);
	/* PKCS#12 is a DER SEQUENCE. */
	if (buf[0] == 0x30) {
		*format = KEYBROKER__V1__KEY_FILE_FORMAT__KEY_FILE_FORMAT_PFX;
		return KB_OK;
	}
	if (len >= 3 && buf[0] == 0xef && buf[1] == 0xbb && buf[2] == 0xbf)
		i = 3;
	while (i < len
	    && (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\r'
	        || buf[i] == '\n'))
		i++;
	if (i < len && buf[i] == '{') {
		*format = KEYBROKER__V1__KEY_FILE_FORMAT__KEY_FILE_FORMAT_BYOK;
		return KB_OK;
	}
	if (len - i >= 11 && memcmp(buf + i, "-----BEGIN ", 11) == 0)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "key file %s is PEM text, not a .pfx (binary PKCS#12) or "
		    "a .byok (JSON): make a .byok from a PEM private key with "
		    "'kbctl byok wrap', or a .pfx with 'openssl pkcs12 "
		    "-export'",
		    path);
	return kb_errf(KB_ERR_INVALID_ARGUMENT,
	    "cannot tell what key file %s is: neither a .pfx (binary "
	    "PKCS#12, first byte 0x30) nor a .byok (JSON); --format pfx|byok "
	    "sends it as that",
	    path);
}

int
kbctl_key_file_format_parse(const char *word)
{
	if (strcmp(word, "pfx") == 0)
		return KEYBROKER__V1__KEY_FILE_FORMAT__KEY_FILE_FORMAT_PFX;
	if (strcmp(word, "byok") == 0)
		return KEYBROKER__V1__KEY_FILE_FORMAT__KEY_FILE_FORMAT_BYOK;
	return -1;
}

/* ---- output files ---- */

struct kbctl_out_file {
	char *path; /* the file asked for */
	char *tmp; /* with --force: the temporary file renamed over it */
	int fd;
	unsigned mode;
};

static void
out_file_free(struct kbctl_out_file *f)
{
	if (f == NULL)
		return;
	if (f->fd >= 0)
		close(f->fd);
	free(f->path);
	free(f->tmp);
	free(f);
}

enum kb_err
kbctl_out_file_open(
    const char *path, int force, unsigned mode, struct kbctl_out_file **out)
{
	struct kbctl_out_file *f = NULL;
	struct stat sb;
	size_t n = strlen(path);
	enum kb_err r = KB_ERR_INTERNAL;

	*out = NULL;
	if (n == 0)
		return kb_errf(KB_ERR_INVALID_ARGUMENT, "empty file name");
	if ((f = calloc(1, sizeof(*f))) == NULL
	    || (f->path = strdup(path)) == NULL) {
		r = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	f->fd = -1;
	f->mode = mode;
	if (!force) {
		/* Reserve the name now: nothing is ever overwritten, and a
		 * file we cannot create is known before the broker call. */
		f->fd = open(path,
		    O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
		if (f->fd < 0 && errno == EEXIST) {
			r = kb_errf(KB_ERR_ALREADY_EXISTS,
			    "%s exists; it is left alone (--force replaces "
			    "it)",
			    path);
			goto out;
		}
	} else {
		if (lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
			r = kb_errf(
			    KB_ERR_INVALID_ARGUMENT, "%s is a directory", path);
			goto out;
		}
		if ((f->tmp = malloc(n + 16)) == NULL) {
			r = kb_errf(KB_ERR_NOMEM, "out of memory");
			goto out;
		}
		snprintf(f->tmp, n + 16, "%s.tmp-XXXXXX", path);
		f->fd = mkostemp(f->tmp, O_CLOEXEC); /* mode 0600 */
		if (f->fd < 0) {
			r = kb_errf(KB_ERR_IO, "cannot create %s: %s", f->tmp,
			    strerror(errno));
			free(f->tmp);
			f->tmp = NULL;
			goto out;
		}
	}
	if (f->fd < 0) {
		r = kb_errf(
		    KB_ERR_IO, "cannot create %s: %s", path, strerror(errno));
		goto out;
	}
	*out = f;
	f = NULL;
	r = KB_OK;
out:
	out_file_free(f);
	return r;
}

void
kbctl_dir_sync(const char *path)
{
	char *copy = strdup(path);
	int fd;

	if (copy == NULL)
		return;
	if ((fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC))
	    >= 0) {
		(void)fsync(fd);
		close(fd);
	}
	free(copy);
}

int
kbctl_tmp_beside(const char *path, char **tmp)
{
	int fd;

	if (asprintf(tmp, "%s.tmp-XXXXXX", path) < 0) {
		*tmp = NULL;
		fprintf(stderr, "kbctl: out of memory\n");
		return -1;
	}
	if ((fd = mkostemp(*tmp, O_CLOEXEC)) < 0 || fchmod(fd, 0600) != 0) {
		fprintf(stderr, "kbctl: cannot create %s: %s\n", *tmp,
		    strerror(errno));
		if (fd >= 0) {
			close(fd);
			(void)unlink(*tmp);
		}
		free(*tmp);
		*tmp = NULL;
		return -1;
	}
	return fd;
}

int
kbctl_tmp_publish(const char *tmp, const char *path, int force)
{
	if (force ? rename(tmp, path) != 0 : link(tmp, path) != 0) {
		fprintf(stderr, "kbctl: cannot write %s: %s\n", path,
		    errno == EEXIST ? "it exists now (--force replaces it)"
		                    : strerror(errno));
		return -1;
	}
	if (!force)
		(void)unlink(tmp);
	kbctl_dir_sync(path);
	return 0;
}

enum kb_err
kbctl_out_file_commit(struct kbctl_out_file *f, const void *data, size_t len)
{
	const uint8_t *p = data;
	const char *name = f->tmp != NULL ? f->tmp : f->path;
	size_t left = len;
	ssize_t w;
	enum kb_err r = KB_ERR_INTERNAL;

	/* umask may have cleared bits; the mode is what was asked. */
	if (fchmod(f->fd, f->mode) != 0) {
		r = kb_errf(KB_ERR_IO, "cannot set the mode of %s: %s", name,
		    strerror(errno));
		goto fail;
	}
	while (left > 0) {
		w = write(f->fd, p, left);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			r = kb_errf(KB_ERR_IO, "cannot write %s: %s", name,
			    w < 0 ? strerror(errno) : "no progress");
			goto fail;
		}
		p += w;
		left -= (size_t)w;
	}
	if (fsync(f->fd) != 0) {
		r = kb_errf(KB_ERR_IO, "cannot write %s (fsync): %s", name,
		    strerror(errno));
		goto fail;
	}
	if (close(f->fd) != 0) {
		f->fd = -1;
		r = kb_errf(KB_ERR_IO, "cannot write %s (close): %s", name,
		    strerror(errno));
		goto fail;
	}
	f->fd = -1;
	if (f->tmp != NULL && rename(f->tmp, f->path) != 0) {
		r = kb_errf(KB_ERR_IO, "cannot rename %s to %s: %s", f->tmp,
		    f->path, strerror(errno));
		goto fail;
	}
	kbctl_dir_sync(f->path);
	out_file_free(f);
	return KB_OK;
fail:
	kbctl_out_file_abort(f);
	return r;
}

void
kbctl_out_file_abort(struct kbctl_out_file *f)
{
	if (f == NULL)
		return;
	if (f->fd >= 0) {
		/* Whatever was written may be secret: cut it first. */
		if (ftruncate(f->fd, 0) != 0) {
			/* unlinked below all the same */
		}
		close(f->fd);
		f->fd = -1;
	}
	(void)unlink(f->tmp != NULL ? f->tmp : f->path);
	out_file_free(f);
}

/* ---- confirmations ---- */

/* kbctl_confirm on (in, out). */
static int
confirm_ask(
    int in, int out, const char *explain, const char *what, const char *word)
{
	char prompt[512], line[512];
	size_t n;
	enum kb_err e;
	int ok;

	fd_puts(out, explain);
	snprintf(
	    prompt, sizeof(prompt), "Type %s (%s) to confirm: ", what, word);
	e = tty_read_line(in, out, prompt, 0, line, sizeof(line), &n);
	if (e == KB_ERR_CANCELLED)
		return -2;
	if (e != KB_OK)
		return 0;
	ok = strcmp(line, word) == 0;
	return ok;
}

int
kbctl_confirm(const char *explain, const char *what, const char *word)
{
	int fd, r;

	if ((fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY)) < 0)
		return -1;
	r = confirm_ask(fd, fd, explain, what, word);
	close(fd);
	return r;
}
