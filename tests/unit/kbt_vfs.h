/* SPDX-License-Identifier: Apache-2.0 */
/* kbt_vfs.h: a pass-through SQLite VFS for tests and kb-bench: it counts
 * syncs and can play a full disk. */
#ifndef KBT_VFS_H
#define KBT_VFS_H

#include <stdint.h>

/* Register as the default VFS (idempotent): databases opened after it go
 * through it. 0, or -1 when SQLite's default VFS cannot be wrapped. */
int kbt_vfs_register(void);
void kbt_vfs_unregister(void);

/* xSync calls on write-ahead logs and on other files since registration. */
void kbt_vfs_counts(uint64_t *wal_syncs, uint64_t *other_syncs);

/* While on, every write fails with SQLITE_FULL, as on a full disk. */
void kbt_vfs_full(int on);

#endif /* KBT_VFS_H */
