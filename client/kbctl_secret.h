/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl_secret.h: what kbctl reads and writes that is secret or final:
 * passwords (file or no-echo prompt), tenant key files (.pfx, .byok) and
 * their format, output files made once (mode 0600, fsync), and the typed
 * confirmation of destructive commands. No broker calls here. */
#ifndef KB_KBCTL_SECRET_H
#define KB_KBCTL_SECRET_H

#include <stddef.h>
#include <stdint.h>

#include "kb_err.h"

/* Largest key file kbctl sends (a .pfx or .byok is a few KiB). */
#define KBCTL_KEY_FILE_MAX (64 * 1024)
/* Longest password accepted, in bytes. */
#define KBCTL_PASSWORD_MAX 1023

/* Is stdin a terminal? Prompts and confirmations happen only then. */
int kbctl_stdin_is_tty(void);

/* The password in `path`: its first line (without "\n" or "\r\n").
 * `path` may be a regular file or a pipe (/dev/stdin, "<(...)"). Refuses
 * (KB_ERR_CONFIG, with the chmod to run) one that group or others may read
 * or write, anything else (a terminal, a directory), an empty first line
 * and one longer than KBCTL_PASSWORD_MAX. On KB_OK *pw is NUL-terminated
 * in locked memory, *len its length (secret): free with
 * kbctl_password_free. */
enum kb_err kbctl_password_file_read(const char *path, char **pw, size_t *len);

/* Ask for a password on /dev/tty with echo off: `prompt`, and when `again`
 * is not NULL, a second time with `again` (KB_ERR_INVALID_ARGUMENT if they
 * differ). Empty answers and end of input are KB_ERR_INVALID_ARGUMENT.
 * Ctrl-C puts the terminal back and gives KB_ERR_CANCELLED (the caller
 * cleans up and exits); Ctrl-Z stops with echo on and asks again. Same
 * result as kbctl_password_file_read. */
enum kb_err kbctl_password_prompt(
    const char *prompt, const char *again, char **pw, size_t *len);

/* Wipe and free a password. Accepts NULL. */
void kbctl_password_free(char *pw);

/* Read a whole tenant key file (secret) of at most KBCTL_KEY_FILE_MAX
 * bytes into *buf (free with kbctl_key_file_free, which wipes). Errors
 * name the file: KB_ERR_IO, or KB_ERR_INVALID_ARGUMENT for an empty file
 * or one that is too large (with its size and the limit). */
enum kb_err kbctl_key_file_read(const char *path, uint8_t **buf, size_t *len);
void kbctl_key_file_free(uint8_t *buf, size_t len);

/* The KeyFileFormat of a key file from its content: DER (first byte 0x30)
 * is a .pfx, JSON ('{' after optional white space and a UTF-8 BOM) a
 * .byok. Anything else is KB_ERR_INVALID_ARGUMENT with a message naming
 * `path` and what it looks like (PEM text, for instance). */
enum kb_err kbctl_key_file_detect(
    const uint8_t *buf, size_t len, const char *path, int *format);

/* "pfx" or "byok" (--format) to a KeyFileFormat; -1 for anything else. */
int kbctl_key_file_format_parse(const char *word);

/* fsync the directory holding `path`, so a new name there (a rename, a
 * created file) survives a crash. Best effort: errors are ignored. */
void kbctl_dir_sync(const char *path);

/* A file streamed from the broker is written beside its name and takes it
 * only once whole. kbctl_tmp_beside makes PATH.tmp-XXXXXX (mode 0600):
 * its descriptor, *tmp its name (the caller frees it, and unlinks it on
 * failure), or -1 with the reason printed (*tmp NULL). */
int kbctl_tmp_beside(const char *path, char **tmp);

/* Give the finished, closed `tmp` the name `path`: with `force` by rename
 * (replacing it), else by link, so that a file that appeared meanwhile is
 * never replaced, and then tmp is unlinked; the directory is synced.
 * 0, or -1 with the reason printed (tmp is left to the caller). */
int kbctl_tmp_publish(const char *tmp, const char *path, int force);

/* An output file written once, after a broker call that may fail:
 * kbctl_out_file_open reserves it (without `force`: O_CREAT|O_EXCL, so an
 * existing file is KB_ERR_ALREADY_EXISTS and is left alone; with `force`:
 * a temporary file next to it, renamed over it at the end, so a failed
 * call leaves the old file intact). Then kbctl_out_file_commit writes,
 * fsyncs and closes (and renames), or kbctl_out_file_abort removes what
 * open made. Both free `f`. `mode` is 0600 for secrets. */
struct kbctl_out_file;
enum kb_err kbctl_out_file_open(
    const char *path, int force, unsigned mode, struct kbctl_out_file **f);
enum kb_err kbctl_out_file_commit(
    struct kbctl_out_file *f, const void *data, size_t len);
void kbctl_out_file_abort(struct kbctl_out_file *f);

/* On /dev/tty: print `explain`, then ask "Type WHAT (WORD) to confirm: "
 * and read a line. Returns 1 when the line is exactly `word`, 0 when it is
 * not (or at end of input), -1 when the terminal cannot be used, -2 when
 * interrupted (Ctrl-C). */
int kbctl_confirm(const char *explain, const char *what, const char *word);

#endif /* KB_KBCTL_SECRET_H */
