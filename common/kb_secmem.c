/* SPDX-License-Identifier: Apache-2.0 */
/* kb_secmem.c: wipe, locked memory and secret files (after libsodium's
 * sodium_mlock and OpenSSH's freezero). */
#include "kb_secmem.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

#define KB_SECRET_FILE_MAX 16384 /* PIN files, and TLS keys up to RSA-8192 */

void
kb_wipe(void *p, size_t n)
{
	if (p != NULL && n > 0)
		OPENSSL_cleanse(p, n);
}

void
kb_freezero(void *p, size_t n)
{
	if (p == NULL)
		return;
	kb_wipe(p, n);
	free(p);
}

/* Layout: [header page: size][data pages...]; the header remembers the
 * mapping length so kb_secure_free needs only the pointer. */
struct secure_hdr {
	size_t map_len;
	size_t user_len;
};

void *
kb_secure_alloc(size_t n)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t need = sizeof(struct secure_hdr) + n;
	size_t map_len = (need + page - 1) / page * page;
	struct secure_hdr *h;

	if (n == 0 || n > (1u << 24))
		return NULL;
	h = mmap(NULL, map_len, PROT_READ | PROT_WRITE,
	    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (h == MAP_FAILED)
		return NULL;
	if (mlock(h, map_len) != 0) {
		munmap(h, map_len);
		return NULL;
	}
	(void)madvise(h, map_len, MADV_DONTDUMP);
	h->map_len = map_len;
	h->user_len = n;
	return h + 1;
}

void
kb_secure_free(void *p)
{
	struct secure_hdr *h;
	size_t map_len;

	if (p == NULL)
		return;
	h = (struct secure_hdr *)p - 1;
	map_len = h->map_len;
	OPENSSL_cleanse(h, map_len);
	munlock(h, map_len);
	munmap(h, map_len);
}

enum kb_err
kb_secret_file_read(const char *path, int check_mode, char **out, size_t *len)
{
	struct stat st;
	char *buf = NULL;
	size_t n = 0;
	ssize_t r;
	int fd = -1;
	enum kb_err e = KB_ERR_INTERNAL;

	*out = NULL;
	*len = 0;
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
		e = kb_errf(KB_ERR_CONFIG, "cannot open secret file %s: %s",
		    path, strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		e = kb_errf(KB_ERR_CONFIG,
		    "secret file %s is not a regular file", path);
		goto out;
	}
	if (check_mode && (st.st_mode & 077) != 0) {
		e = kb_errf(KB_ERR_CONFIG,
		    "secret file %s has mode %04o: it must not be readable or "
		    "writable by group or others (chmod 600 %s)",
		    path, (unsigned)(st.st_mode & 07777), path);
		goto out;
	}
	if ((buf = kb_secure_alloc(KB_SECRET_FILE_MAX + 1)) == NULL) {
		e = kb_errf(KB_ERR_NOMEM,
		    "cannot allocate locked memory for a "
		    "secret (check RLIMIT_MEMLOCK)");
		goto out;
	}
	while (n < KB_SECRET_FILE_MAX) {
		r = read(fd, buf + n, KB_SECRET_FILE_MAX - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			e = kb_errf(
			    KB_ERR_IO, "reading %s: %s", path, strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	if (n == KB_SECRET_FILE_MAX) {
		e = kb_errf(KB_ERR_CONFIG, "secret file %s is too large", path);
		goto out;
	}
	if (n > 0 && buf[n - 1] == '\n')
		n--;
	if (n > 0 && buf[n - 1] == '\r')
		n--;
	buf[n] = '\0';
	if (n == 0) {
		e = kb_errf(KB_ERR_CONFIG, "secret file %s is empty", path);
		goto out;
	}
	*out = buf;
	*len = n;
	buf = NULL;
	e = KB_OK;
out:
	kb_secure_free(buf);
	if (fd >= 0)
		close(fd);
	return e;
}

void
kb_process_harden(void)
{
	struct rlimit rl = {0, 0};

	(void)setrlimit(RLIMIT_CORE, &rl);
	(void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	/* Every connection, token object file and database needs a file
	 * descriptor; running out makes the token look empty. Take the
	 * hard limit. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int
kb_memeq_ct(const void *a, const void *b, size_t n)
{
	return CRYPTO_memcmp(a, b, n);
}
