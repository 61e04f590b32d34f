/* SPDX-License-Identifier: Apache-2.0 */
/* kbt_vfs.c: a pass-through SQLite VFS for tests and the benchmark. It
 * counts xSync calls (kb-bench: in WAL mode with synchronous=FULL every
 * commit syncs the -wal file once, a checkpoint once more, so events per
 * WAL sync is a lower bound of events per commit), and it can make every
 * write fail as a full disk does (test-store: each store function's
 * answer to a full disk). */
#include "kbt_vfs.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

struct cfile {
	sqlite3_file base;
	sqlite3_file *real; /* follows this struct in the same block */
	int wal;
};

static sqlite3_vfs *real_vfs;
static sqlite3_vfs cvfs;
static atomic_ullong wal_syncs, other_syncs;
static atomic_int full;
static int registered;

#define REAL(f) (((struct cfile *)(f))->real)

static int
c_close(sqlite3_file *f)
{
	return REAL(f)->pMethods->xClose(REAL(f));
}

static int
c_read(sqlite3_file *f, void *b, int n, sqlite3_int64 o)
{
	return REAL(f)->pMethods->xRead(REAL(f), b, n, o);
}

static int
c_write(sqlite3_file *f, const void *b, int n, sqlite3_int64 o)
{
	if (atomic_load(&full))
		return SQLITE_FULL;
	return REAL(f)->pMethods->xWrite(REAL(f), b, n, o);
}

static int
c_truncate(sqlite3_file *f, sqlite3_int64 n)
{
	return REAL(f)->pMethods->xTruncate(REAL(f), n);
}

static int
c_sync(sqlite3_file *f, int flags)
{
	if (((struct cfile *)f)->wal)
		atomic_fetch_add(&wal_syncs, 1);
	else
		atomic_fetch_add(&other_syncs, 1);
	return REAL(f)->pMethods->xSync(REAL(f), flags);
}

static int
c_size(sqlite3_file *f, sqlite3_int64 *n)
{
	return REAL(f)->pMethods->xFileSize(REAL(f), n);
}

static int
c_lock(sqlite3_file *f, int l)
{
	return REAL(f)->pMethods->xLock(REAL(f), l);
}

static int
c_unlock(sqlite3_file *f, int l)
{
	return REAL(f)->pMethods->xUnlock(REAL(f), l);
}

static int
c_reserved(sqlite3_file *f, int *r)
{
	return REAL(f)->pMethods->xCheckReservedLock(REAL(f), r);
}

static int
c_fctl(sqlite3_file *f, int op, void *arg)
{
	return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}

static int
c_sector(sqlite3_file *f)
{
	return REAL(f)->pMethods->xSectorSize(REAL(f));
}

static int
c_devchar(sqlite3_file *f)
{
	return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}

static int
c_shmmap(sqlite3_file *f, int pg, int sz, int ext, void volatile **p)
{
	return REAL(f)->pMethods->xShmMap(REAL(f), pg, sz, ext, p);
}

static int
c_shmlock(sqlite3_file *f, int off, int n, int flags)
{
	return REAL(f)->pMethods->xShmLock(REAL(f), off, n, flags);
}

static void
c_shmbarrier(sqlite3_file *f)
{
	REAL(f)->pMethods->xShmBarrier(REAL(f));
}

static int
c_shmunmap(sqlite3_file *f, int del)
{
	return REAL(f)->pMethods->xShmUnmap(REAL(f), del);
}

static int
c_fetch(sqlite3_file *f, sqlite3_int64 o, int n, void **p)
{
	return REAL(f)->pMethods->xFetch(REAL(f), o, n, p);
}

static int
c_unfetch(sqlite3_file *f, sqlite3_int64 o, void *p)
{
	return REAL(f)->pMethods->xUnfetch(REAL(f), o, p);
}

/* One table per io_methods version the real VFS hands out. */
static sqlite3_io_methods methods[4];

static int
c_open(sqlite3_vfs *v, const char *name, sqlite3_file *f, int flags,
    int *out_flags)
{
	struct cfile *cf = (struct cfile *)f;
	int rc, ver;

	(void)v;
	cf->real = (sqlite3_file *)(cf + 1);
	cf->wal = (flags & SQLITE_OPEN_WAL) != 0;
	rc = real_vfs->xOpen(real_vfs, name, cf->real, flags, out_flags);
	if (rc != SQLITE_OK || cf->real->pMethods == NULL) {
		f->pMethods = NULL;
		return rc;
	}
	ver = cf->real->pMethods->iVersion;
	if (ver < 1 || ver > 3)
		ver = 1;
	f->pMethods = &methods[ver];
	return rc;
}

static int
c_delete(sqlite3_vfs *v, const char *n, int sync)
{
	(void)v;
	return real_vfs->xDelete(real_vfs, n, sync);
}

static int
c_access(sqlite3_vfs *v, const char *n, int flags, int *res)
{
	(void)v;
	return real_vfs->xAccess(real_vfs, n, flags, res);
}

static int
c_fullpath(sqlite3_vfs *v, const char *n, int len, char *out)
{
	(void)v;
	return real_vfs->xFullPathname(real_vfs, n, len, out);
}

static void *
c_dlopen(sqlite3_vfs *v, const char *n)
{
	(void)v;
	return real_vfs->xDlOpen(real_vfs, n);
}

static void
c_dlerror(sqlite3_vfs *v, int n, char *msg)
{
	(void)v;
	real_vfs->xDlError(real_vfs, n, msg);
}

static void (*c_dlsym(sqlite3_vfs *v, void *h, const char *s))(void)
{
	(void)v;
	return real_vfs->xDlSym(real_vfs, h, s);
}

static void
c_dlclose(sqlite3_vfs *v, void *h)
{
	(void)v;
	real_vfs->xDlClose(real_vfs, h);
}

static int
c_random(sqlite3_vfs *v, int n, char *out)
{
	(void)v;
	return real_vfs->xRandomness(real_vfs, n, out);
}

static int
c_vsleep(sqlite3_vfs *v, int us)
{
	(void)v;
	return real_vfs->xSleep(real_vfs, us);
}

static int
c_time(sqlite3_vfs *v, double *t)
{
	(void)v;
	return real_vfs->xCurrentTime(real_vfs, t);
}

static int
c_lasterr(sqlite3_vfs *v, int n, char *msg)
{
	(void)v;
	return real_vfs->xGetLastError(real_vfs, n, msg);
}

static int
c_time64(sqlite3_vfs *v, sqlite3_int64 *t)
{
	(void)v;
	return real_vfs->xCurrentTimeInt64(real_vfs, t);
}

int
kbt_vfs_register(void)
{
	int i;

	if (registered)
		return 0;
	if ((real_vfs = sqlite3_vfs_find(NULL)) == NULL
	    || real_vfs->iVersion < 2)
		return -1;
	for (i = 1; i <= 3; i++) {
		sqlite3_io_methods *m = &methods[i];

		memset(m, 0, sizeof(*m));
		m->iVersion = i;
		m->xClose = c_close;
		m->xRead = c_read;
		m->xWrite = c_write;
		m->xTruncate = c_truncate;
		m->xSync = c_sync;
		m->xFileSize = c_size;
		m->xLock = c_lock;
		m->xUnlock = c_unlock;
		m->xCheckReservedLock = c_reserved;
		m->xFileControl = c_fctl;
		m->xSectorSize = c_sector;
		m->xDeviceCharacteristics = c_devchar;
		if (i >= 2) {
			m->xShmMap = c_shmmap;
			m->xShmLock = c_shmlock;
			m->xShmBarrier = c_shmbarrier;
			m->xShmUnmap = c_shmunmap;
		}
		if (i >= 3) {
			m->xFetch = c_fetch;
			m->xUnfetch = c_unfetch;
		}
	}
	memset(&cvfs, 0, sizeof(cvfs));
	cvfs.iVersion = 2;
	cvfs.szOsFile = (int)sizeof(struct cfile) + real_vfs->szOsFile;
	cvfs.mxPathname = real_vfs->mxPathname;
	cvfs.zName = "kbt-vfs";
	cvfs.xOpen = c_open;
	cvfs.xDelete = c_delete;
	cvfs.xAccess = c_access;
	cvfs.xFullPathname = c_fullpath;
	cvfs.xDlOpen = c_dlopen;
	cvfs.xDlError = c_dlerror;
	cvfs.xDlSym = c_dlsym;
	cvfs.xDlClose = c_dlclose;
	cvfs.xRandomness = c_random;
	cvfs.xSleep = c_vsleep;
	cvfs.xCurrentTime = c_time;
	cvfs.xGetLastError = c_lasterr;
	cvfs.xCurrentTimeInt64 = c_time64;
	if (sqlite3_vfs_register(&cvfs, 1) != SQLITE_OK)
		return -1;
	registered = 1;
	return 0;
}

void
kbt_vfs_unregister(void)
{
	if (!registered)
		return;
	sqlite3_vfs_unregister(&cvfs);
	registered = 0;
}

void
kbt_vfs_counts(uint64_t *wal, uint64_t *other)
{
	*wal = atomic_load(&wal_syncs);
	*other = atomic_load(&other_syncs);
}

void
kbt_vfs_full(int on)
{
	atomic_store(&full, on);
}
