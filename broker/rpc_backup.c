/* SPDX-License-Identifier: Apache-2.0 */
/* rpc_backup.c: CreateBackup streams an online backup of the database and
 * the audit log (backup.h) to a platform-wide admin. A PostgreSQL database
 * is refused (FAILED_PRECONDITION, naming pg_basebackup and pg_dump)
 * before anything is sent. */
#include "rpc.h"

#include <inttypes.h>
#include <stdlib.h>

#include "backup.h"
#include "keybroker.pb-c.h"
#include "log.h"

#define CHUNK_BYTES 65536

enum kb_err
rpc_backup_create(struct rpc_ctx *c, const ProtobufCMessage *req,
    const struct rpc_stream_ops *ops, struct rpc_stream *st)
{
	Keybroker__V1__BackupChunk m = KEYBROKER__V1__BACKUP_CHUNK__INIT;
	struct backup *bk = NULL;
	uint8_t *buf = NULL;
	size_t n;
	enum kb_err e;

	(void)req;
	if ((buf = malloc(CHUNK_BYTES)) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	if ((e = backup_snapshot(c->b, &bk)) != KB_OK)
		goto out;
	c->stream_open = 1;
	for (;;) {
		if (ops->done(st)) {
			e = kb_errf(KB_ERR_CANCELLED,
			    "the client went away during "
			    "the backup");
			goto out;
		}
		if ((e = backup_read(bk, buf, CHUNK_BYTES, &n)) != KB_OK)
			goto out;
		if (n == 0)
			break;
		m.data.data = buf;
		m.data.len = n;
		if ((e = ops->send(st, &m.base)) != KB_OK) {
			e = kb_errf(KB_ERR_CANCELLED,
			    "the client went away during "
			    "the backup");
			goto out;
		}
	}
	log_info("backup sent to %s: %" PRIu64 " bytes, audit log to event "
	         "%" PRIu64,
	    c->id->name, backup_size(bk), backup_audit_seq(bk));
out:
	backup_free(bk);
	free(buf);
	return e;
}
