/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl_backup.c: kbctl backup create: the broker's backup stream into a
 * file, written whole or not at all. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "kb_audit.h"
#include "kb_wire.h"
#include "kbctl.h"
#include "kbctl_out.h"
#include "kbctl_secret.h"
#include "keybroker.pb-c.h"

#define POLL_MS 250
#define TRAILER_LEN (7 + 64 + 1) /* "sha256 " HEX "\n" */
#define HEAD_MAX (64u << 20)

/* What kbctl sees of the file as it arrives: its running SHA-256 (of
 * every byte but the trailer, which lags TRAILER_LEN bytes behind), its
 * first two lines (magic and manifest) and its last TRAILER_LEN bytes. */
struct recv {
	EVP_MD_CTX *sha;
	uint8_t tail[TRAILER_LEN];
	size_t ntail;
	char *head;
	size_t nhead;
	int head_done;
	unsigned long long bytes;
};

static int
recv_add(struct recv *r, const uint8_t *p, size_t n)
{
	size_t i, keep, out;
	char *nh;

	r->bytes += n;
	/* The first two lines, for the summary. */
	for (i = 0; i < n && !r->head_done; i++) {
		if (r->nhead % 4096 == 0) {
			if (r->nhead >= HEAD_MAX
			    || (nh = realloc(r->head, r->nhead + 4097)) == NULL)
				return -1;
			r->head = nh;
		}
		r->head[r->nhead++] = (char)p[i];
		r->head[r->nhead] = '\0';
		if (p[i] == '\n' && memchr(r->head, '\n', r->nhead - 1) != NULL)
			r->head_done = 1;
	}
	/* Hash all but the last TRAILER_LEN bytes seen so far. */
	if (r->ntail + n <= TRAILER_LEN) {
		memcpy(r->tail + r->ntail, p, n);
		r->ntail += n;
		return 0;
	}
	out = r->ntail + n - TRAILER_LEN;
	keep = out < r->ntail ? out : r->ntail;
	EVP_DigestUpdate(r->sha, r->tail, keep);
	memmove(r->tail, r->tail + keep, r->ntail - keep);
	r->ntail -= keep;
	EVP_DigestUpdate(r->sha, p, out - keep);
	memcpy(r->tail + r->ntail, p + (out - keep), n - (out - keep));
	r->ntail += n - (out - keep);
	return 0;
}

/* Whether the trailer is the SHA-256 of what came before it; hex gets it. */
static int
recv_check(struct recv *r, char hex[65])
{
	uint8_t md[32];

	EVP_DigestFinal_ex(r->sha, md, NULL);
	kb_hex_encode(md, sizeof(md), hex);
	return r->ntail == TRAILER_LEN && memcmp(r->tail, "sha256 ", 7) == 0
	    && r->tail[TRAILER_LEN - 1] == '\n'
	    && CRYPTO_memcmp(r->tail + 7, hex, 64) == 0;
}

static int
print_summary(
    struct kbctl *k, const char *path, struct recv *r, const char *hex)
{
	json_t *m = NULL, *o, *keys;
	const char *nl;
	json_int_t seq;
	int rc;

	nl = r->head_done ? strchr(r->head, '\n') : NULL;
	if (nl != NULL)
		m = json_loadb(nl + 1, strlen(nl + 1), 0, NULL);
	keys = json_object_get(m, "keys");
	seq = json_integer_value(
	    json_object_get(json_object_get(m, "audit_head"), "seq"));
	if (k->json) {
		o = json_object();
		kbctl_jset(o, "file", kbctl_jstr(path));
		kbctl_jset(o, "bytes", json_integer((json_int_t)r->bytes));
		kbctl_jset(o, "sha256", kbctl_jstr(hex));
		kbctl_jset(o, "audit_seq", json_integer(seq));
		kbctl_jset(
		    o, "keys", json_integer((json_int_t)json_array_size(keys)));
		rc = kbctl_json_print(o);
	} else {
		printf("backup written to %s: %llu bytes, sha256 %s\n", path,
		    r->bytes, hex);
		printf("token '%s' (serial %s); %zu keys; audit log to event "
		       "%lld\n",
		    json_string_value(
		        json_object_get(json_object_get(m, "token"), "label")),
		    json_string_value(
		        json_object_get(json_object_get(m, "token"), "serial")),
		    json_array_size(keys), (long long)seq);
		printf("the keys stay in the token: back it up too (README, "
		       "Backup and recovery)\n");
		rc = KBCTL_EXIT_OK;
	}
	json_decref(m);
	return rc;
}

int
kbctl_cmd_backup_create(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__CreateBackupRequest req =
	    KEYBROKER__V1__CREATE_BACKUP_REQUEST__INIT;
	const char *path = kbctl_flag(a, "--out");
	int force = kbctl_flag(a, "--force") != NULL, fd = -1;
	int rc = KBCTL_EXIT_FAIL;
	struct kb_client_stream *s = NULL;
	struct kb_status st;
	struct recv r;
	struct stat sb;
	ProtobufCMessage *m;
	Keybroker__V1__BackupChunk *c;
	enum kb_stream_next nx;
	char *tmp = NULL, hex[65];

	memset(&r, 0, sizeof(r));
	if (path[0] == '\0')
		return kbctl_usage_error(a, "--out needs a file name");
	if (!force && lstat(path, &sb) == 0)
		return kbctl_usage_error(a,
		    "--out %s exists; it is left alone (--force replaces it)",
		    path);
	if (force && lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
		return kbctl_usage_error(a, "--out %s is a directory", path);
	kbctl_stop_signals_catch();
	if ((r.sha = EVP_MD_CTX_new()) == NULL
	    || EVP_DigestInit_ex(r.sha, EVP_sha256(), NULL) != 1) {
		fprintf(stderr, "kbctl: out of memory\n");
		goto out;
	}
	if ((fd = kbctl_tmp_beside(path, &tmp)) < 0)
		goto out;
	if (kb_client_stream_open(k->client, KB_METHOD_CREATE_BACKUP, &req.base,
	        &keybroker__v1__backup_chunk__descriptor, 0, &s, &st)
	    != KB_OK) {
		rc = kbctl_fail_status(&st);
		goto out;
	}
	for (;;) {
		nx = kb_client_stream_next(s, POLL_MS, &m, &st);
		if (kbctl_stop_signal()) {
			if (nx == KB_STREAM_MESSAGE)
				kb_wire_free(m);
			fprintf(
			    stderr, "kbctl: interrupted; no backup written\n");
			rc = KBCTL_EXIT_INTERRUPTED;
			goto out;
		}
		if (nx == KB_STREAM_WAITING)
			continue;
		if (nx == KB_STREAM_ENDED)
			break;
		c = (Keybroker__V1__BackupChunk *)m;
		if (recv_add(&r, c->data.data, c->data.len) != 0
		    || write(fd, c->data.data, c->data.len)
		        != (ssize_t)c->data.len) {
			fprintf(stderr,
			    "kbctl: writing %s: %s; no backup "
			    "written\n",
			    tmp, errno ? strerror(errno) : "out of memory");
			kb_wire_free(m);
			goto out;
		}
		kb_wire_free(m);
	}
	if (st.code != GRPC_STATUS_OK) {
		rc = kbctl_fail_status(&st);
		fprintf(stderr, "kbctl: no backup written\n");
		goto out;
	}
	if (!recv_check(&r, hex)) {
		fprintf(stderr,
		    "kbctl: the backup received (%llu bytes) does "
		    "not match its checksum trailer: damaged on the way; no "
		    "backup written\n",
		    r.bytes);
		goto out;
	}
	if (fsync(fd) != 0 || close(fd) != 0) {
		fd = -1;
		fprintf(stderr, "kbctl: writing %s: %s; no backup written\n",
		    tmp, strerror(errno));
		goto out;
	}
	fd = -1;
	if (kbctl_tmp_publish(tmp, path, force) != 0)
		goto out;
	free(tmp);
	tmp = NULL;
	rc = print_summary(k, path, &r, hex);
out:
	kb_client_stream_close(s);
	if (fd >= 0)
		close(fd);
	if (tmp != NULL)
		(void)unlink(tmp);
	free(tmp);
	free(r.head);
	EVP_MD_CTX_free(r.sha);
	return rc;
}
