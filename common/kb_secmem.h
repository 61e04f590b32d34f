/* SPDX-License-Identifier: Apache-2.0 */
/* kb_secmem.h: wiping, locked memory and secret files. */
#ifndef KB_SECMEM_H
#define KB_SECMEM_H

#include <stddef.h>
#include <stdint.h>

#include "kb_err.h"

/* Wipe `n` bytes at `p` and free it. Accepts NULL. */
void kb_freezero(void *p, size_t n);

/* Wipe a buffer in a way the compiler may not elide. */
void kb_wipe(void *p, size_t n);

/* Allocate `n` zeroed bytes in their own pages, locked in RAM (mlock) and
 * excluded from core dumps (MADV_DONTDUMP). Fails with KB_ERR_NOMEM when the
 * pages cannot be locked (we check mlock's result). Free with
 * kb_secure_free(), which wipes. */
void *kb_secure_alloc(size_t n);
void kb_secure_free(void *p);

/* Read a secret (PIN, password) from `path`: refuses a file readable or
 * writable by group or others (KB_ERR_CONFIG naming the mode), strips one
 * trailing newline. On success *out is a NUL-terminated string in locked
 * memory (free with kb_secure_free) and *len its length. */
enum kb_err kb_secret_file_read(
    const char *path, int check_mode, char **out, size_t *len);

/* Disable core dumps and ptrace attach for this process, and raise the
 * open-file limit to its hard maximum. */
void kb_process_harden(void);

/* Constant-time comparison; 0 when equal. */
int kb_memeq_ct(const void *a, const void *b, size_t n);

#endif /* KB_SECMEM_H */
