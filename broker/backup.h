/* SPDX-License-Identifier: Apache-2.0 */
/* backup.h: disaster recovery. A backup file is an online snapshot of the
 * database and the audit log with a manifest (kbctl backup create); it is
 * restored offline (keybrokerd --restore) only onto a token that holds
 * every key it refers to.
 *
 * The file (README "Backup and recovery"):
 *   line 1  "keybroker-backup 1"
 *   line 2  the manifest, one line of JSON: token, keys, schema version,
 *           audit head, and "sections": [{"name", "bytes", "sha256"}]
 *   then    each section's bytes, in the manifest's order (the SQLite
 *           files of the database, then of the audit log)
 *   last    "sha256 HEX\n": SHA-256 of every byte before it.
 * No key material is in it: the database holds DEKs only sealed, KEKs only
 * wrapped, and the token's keys stay in the token. */
#ifndef KB_BACKUP_H
#define KB_BACKUP_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kb_err.h"

struct broker;
struct config;
struct backup;

#define BACKUP_MAGIC "keybroker-backup 1\n"

/* Snapshot the running broker's database, then its audit log (so every
 * change in the copy has its "started" event in the copy of the log),
 * into a private directory beside the database, and build the manifest.
 * Read the file with backup_read; backup_free removes the copies.
 * SQLite only: KB_ERR_FAILED_PRECONDITION when the database or the audit
 * log is PostgreSQL (the message names pg_basebackup and pg_dump). */
enum kb_err backup_snapshot(struct broker *b, struct backup **out);

/* The next at most `len` bytes of the backup file into `buf`; *n = 0 at
 * its end. */
enum kb_err backup_read(struct backup *bk, uint8_t *buf, size_t len, size_t *n);

/* Its size in bytes, and the audit head it holds (for the log line). */
uint64_t backup_size(const struct backup *bk);
uint64_t backup_audit_seq(const struct backup *bk);

/* Remove the snapshot's files and free it. Accepts NULL. */
void backup_free(struct backup *bk);

/* keybrokerd --restore: check `file` (format, checksum), check that the
 * token `cfg` names holds every key the backup needs (else refuse, naming
 * each missing key and what depends on it, nothing written), then write
 * the database and the audit database of `cfg` (each through a temporary
 * file renamed into place); existing ones are replaced only with `force`.
 * Progress and the next step go to `out`. Takes nothing from `cfg`.
 * KB_ERR_FAILED_PRECONDITION, before anything is read, when `cfg` names a
 * PostgreSQL database or audit log. */
enum kb_err backup_restore(const struct config *cfg, const char *config_path,
    const char *file, int force, FILE *out);

#endif /* KB_BACKUP_H */
