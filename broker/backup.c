/* SPDX-License-Identifier: Apache-2.0 */
/* backup.c: the backup file: an online snapshot of the database and the
 * audit log with its manifest, and its offline restore. */
#include "backup.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "audit.h"
#include "broker.h"
#include "clock.h"
#include "config.h"
#include "dek.h"
#include "hsm.h"
#include "kb_audit.h"
#include "keycheck.h"
#include "store.h"

#define NSECTIONS 2
#define TRAILER_LEN (7 + 64 + 1) /* "sha256 " HEX "\n" */
#define MANIFEST_MAX (64u << 20)

static const char *const section_names[NSECTIONS] = {
    "database", "audit_database"};

struct backup {
	char dir[4200];
	char path[NSECTIONS][4300];
	uint64_t bytes[NSECTIONS];
	char *header; /* magic and manifest line */
	size_t header_len;
	struct audit_head head;
	/* Reading: where we are. */
	int part; /* 0 header, 1.. sections, then trailer */
	uint64_t off;
	FILE *f;
	EVP_MD_CTX *sha;
	char trailer[TRAILER_LEN + 1];
	uint64_t total;
};

/* ---- the manifest ---- */

static int
jset(json_t *o, const char *name, json_t *v)
{
	return v == NULL || json_object_set_new(o, name, v) != 0 ? -1 : 0;
}

static json_t *
key_json(struct store *s, const struct store_key *k)
{
	char label[DEK_LABEL_MAX], names[1400];
	uint64_t envs = 0, tenants = 0;
	json_t *o = json_object();

	keycheck_label(k, label, sizeof(label));
	if (o == NULL
	    || store_key_dependents(
	           s, k->id, &envs, &tenants, names, sizeof(names))
	        != KB_OK
	    || jset(o, "id", json_string(k->id))
	    || jset(o, "purpose", json_string(k->purpose))
	    || jset(o, "tenant", json_string(k->tenant_id))
	    || jset(o, "state", json_string(k->state))
	    || jset(o, "origin", json_string(k->origin))
	    || jset(o, "fingerprint", json_string(k->fingerprint))
	    || jset(o, "label", json_string(label))
	    || jset(o, "parent", json_string(k->parent_id))
	    || jset(o, "in_token", json_boolean(keycheck_needed(k)))
	    || jset(o, "environments", json_integer((json_int_t)envs))
	    || jset(o, "tenants", json_integer((json_int_t)tenants))
	    || jset(o, "tenant_ids", json_string(names))) {
		json_decref(o);
		return NULL;
	}
	return o;
}

/* SHA-256 (hex) and size of a file. */
static enum kb_err
file_sha256(const char *path, char hex[65], uint64_t *bytes)
{
	uint8_t buf[65536], md[32];
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	FILE *f = fopen(path, "rb");
	enum kb_err e = KB_OK;
	size_t n;

	*bytes = 0;
	if (c == NULL || f == NULL
	    || EVP_DigestInit_ex(c, EVP_sha256(), NULL) != 1) {
		e = kb_errf(
		    KB_ERR_STORE, "reading %s: %s", path, strerror(errno));
		goto out;
	}
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0) {
		EVP_DigestUpdate(c, buf, n);
		*bytes += n;
	}
	if (ferror(f)) {
		e = kb_errf(KB_ERR_STORE, "reading %s", path);
		goto out;
	}
	EVP_DigestFinal_ex(c, md, NULL);
	kb_hex_encode(md, sizeof(md), hex);
out:
	if (f != NULL)
		fclose(f);
	EVP_MD_CTX_free(c);
	return e;
}

static enum kb_err
manifest_build(struct broker *b, struct backup *bk, struct store *snap)
{
	struct store_key *keys = NULL;
	json_t *m = NULL, *tok, *head, *arr, *secs, *o;
	char hex[65], *line = NULL;
	size_t n = 0, i;
	enum kb_err e;

	if ((e = store_keys_all(snap, &keys, &n)) != KB_OK)
		return e;
	e = kb_errf(KB_ERR_NOMEM, "out of memory");
	if ((m = json_object()) == NULL || (tok = json_object()) == NULL
	    || jset(m, "format", json_string("keybroker-backup"))
	    || jset(m, "version", json_integer(1))
	    || jset(m, "keybroker", json_string(KB_VERSION))
	    || jset(m, "created_us", json_integer(clock_now_us()))
	    || jset(m, "token", tok)
	    || jset(tok, "label", json_string(b->token.label))
	    || jset(tok, "serial", json_string(b->token.serial))
	    || jset(tok, "manufacturer", json_string(b->token.manufacturer))
	    || jset(tok, "model", json_string(b->token.model))
	    || jset(
	        m, "schema_version", json_integer(store_schema_version(snap))))
		goto out;
	kb_hex_encode(bk->head.hash, sizeof(bk->head.hash), hex);
	if ((head = json_object()) == NULL || jset(m, "audit_head", head)
	    || jset(head, "seq", json_integer((json_int_t)bk->head.seq))
	    || jset(head, "hash", json_string(hex))
	    || jset(head, "checkpoint_seq",
	        json_integer((json_int_t)bk->head.checkpoint_seq))
	    || (arr = json_array()) == NULL || jset(m, "keys", arr))
		goto out;
	for (i = 0; i < n; i++)
		if ((o = key_json(snap, &keys[i])) == NULL
		    || json_array_append_new(arr, o) != 0)
			goto out;
	if ((secs = json_array()) == NULL || jset(m, "sections", secs))
		goto out;
	for (i = 0; i < NSECTIONS; i++) {
		if ((e = file_sha256(bk->path[i], hex, &bk->bytes[i])) != KB_OK)
			goto out;
		e = kb_errf(KB_ERR_NOMEM, "out of memory");
		if ((o = json_object()) == NULL
		    || json_array_append_new(secs, o) != 0
		    || jset(o, "name", json_string(section_names[i]))
		    || jset(o, "bytes", json_integer((json_int_t)bk->bytes[i]))
		    || jset(o, "sha256", json_string(hex)))
			goto out;
	}
	if ((line = json_dumps(m, JSON_COMPACT)) == NULL)
		goto out;
	bk->header_len = strlen(BACKUP_MAGIC) + strlen(line) + 1;
	if ((bk->header = malloc(bk->header_len + 1)) == NULL)
		goto out;
	snprintf(bk->header, bk->header_len + 1, "%s%s\n", BACKUP_MAGIC, line);
	e = KB_OK;
out:
	free(line);
	json_decref(m);
	free(keys);
	return e;
}

/* ---- the snapshot ---- */

static char *
dir_of(const char *path, char *buf, size_t len)
{
	char tmp[4096];

	snprintf(tmp, sizeof(tmp), "%s", path);
	snprintf(buf, len, "%s", dirname(tmp));
	return buf;
}

/* A backup file holds SQLite files: a PostgreSQL database (the store's or
 * the audit log's) is backed up with PostgreSQL's tools. KB_OK when both
 * are SQLite, else KB_ERR_FAILED_PRECONDITION saying what to use; `what`
 * is the step refused. */
static enum kb_err
postgres_refuse(
    int store_pg, const char *audit_target, const char *what, const char *after)
{
	if (!store_pg && !config_is_postgres(audit_target))
		return KB_OK;
	return kb_errf(KB_ERR_FAILED_PRECONDITION,
	    "%s works on SQLite databases only, and %s is PostgreSQL: "
	    "back a PostgreSQL database up with PostgreSQL's own tools, "
	    "pg_basebackup (the whole server, with its write-ahead log for "
	    "point-in-time recovery) or pg_dump (the database: the store's "
	    "and the audit log's tables together), and restore it with "
	    "them; the token is backed up apart, as with SQLite (README, "
	    "\"Backup and recovery\")%s",
	    what,
	    store_pg ? (config_is_postgres(audit_target)
	            ? "this broker's database"
	            : "this broker's database (not its audit log)")
	             : "this broker's audit log (audit_database)",
	    after);
}

enum kb_err
backup_snapshot(struct broker *b, struct backup **out)
{
	struct backup *bk;
	struct store *snap = NULL;
	char d[4096];
	enum kb_err e;
	int i;

	*out = NULL;
	/* Before anything is made beside the database (which has no
	 * directory when it is a connection string). */
	if ((e = postgres_refuse(store_is_postgres(b->store),
	         b->cfg->audit_database, "backup create", ""))
	    != KB_OK)
		return e;
	if ((bk = calloc(1, sizeof(*bk))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	/* Beside the database, private: the copies hold sealed DEKs. */
	snprintf(bk->dir, sizeof(bk->dir), "%s/.kb-backup-XXXXXX",
	    dir_of(b->cfg->database, d, sizeof(d)));
	if (mkdtemp(bk->dir) == NULL) {
		e = kb_errf(
		    errno == ENOSPC ? KB_ERR_STORAGE_FULL : KB_ERR_STORE,
		    "making a directory for the snapshot beside the database "
		    "(%s): %s",
		    d, strerror(errno));
		bk->dir[0] = '\0';
		goto fail;
	}
	for (i = 0; i < NSECTIONS; i++)
		snprintf(bk->path[i], sizeof(bk->path[i]), "%s/%s", bk->dir,
		    section_names[i]);
	if ((e = store_snapshot(b->store, bk->path[0])) != KB_OK
	    || (e = audit_snapshot(b->audit, bk->path[1], &bk->head)) != KB_OK)
		goto fail;
	/* The manifest is read from the copy, so it names what is in it. */
	if ((e = store_open(bk->path[0], 1, &snap)) != KB_OK)
		goto fail;
	e = manifest_build(b, bk, snap);
	store_close(snap);
	if (e != KB_OK)
		goto fail;
	if ((bk->sha = EVP_MD_CTX_new()) == NULL
	    || EVP_DigestInit_ex(bk->sha, EVP_sha256(), NULL) != 1) {
		e = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto fail;
	}
	*out = bk;
	return KB_OK;
fail:
	backup_free(bk);
	return e;
}

uint64_t
backup_size(const struct backup *bk)
{
	return bk->header_len + bk->bytes[0] + bk->bytes[1] + TRAILER_LEN;
}

uint64_t
backup_audit_seq(const struct backup *bk)
{
	return bk->head.seq;
}

enum kb_err
backup_read(struct backup *bk, uint8_t *buf, size_t len, size_t *n)
{
	size_t got;

	*n = 0;
	while (bk->part <= NSECTIONS + 1) {
		if (bk->part == 0) {
			got = bk->header_len - bk->off < len
			    ? bk->header_len - bk->off
			    : len;
			memcpy(buf, bk->header + bk->off, got);
		} else if (bk->part <= NSECTIONS) {
			if (bk->f == NULL
			    && (bk->f = fopen(bk->path[bk->part - 1], "rb"))
			        == NULL)
				return kb_errf(KB_ERR_STORE,
				    "reading the "
				    "snapshot: %s",
				    strerror(errno));
			got = fread(buf, 1, len, bk->f);
			if (got == 0 && ferror(bk->f))
				return kb_errf(KB_ERR_STORE,
				    "reading the "
				    "snapshot: %s",
				    strerror(errno));
			if (bk->off + got > bk->bytes[bk->part - 1])
				return kb_errf(KB_ERR_INTERNAL,
				    "the snapshot "
				    "of the %s grew while being sent",
				    section_names[bk->part - 1]);
		} else {
			if (bk->trailer[0] == '\0') {
				uint8_t md[32];
				char hex[65];

				EVP_DigestFinal_ex(bk->sha, md, NULL);
				kb_hex_encode(md, sizeof(md), hex);
				snprintf(bk->trailer, sizeof(bk->trailer),
				    "sha256 %s\n", hex);
			}
			got = TRAILER_LEN - bk->off < len
			    ? TRAILER_LEN - bk->off
			    : len;
			memcpy(buf, bk->trailer + bk->off, got);
		}
		if (got > 0) {
			if (bk->part <= NSECTIONS)
				EVP_DigestUpdate(bk->sha, buf, got);
			bk->off += got;
			bk->total += got;
			*n = got;
			return KB_OK;
		}
		/* This part is done: the next. */
		if (bk->f != NULL) {
			fclose(bk->f);
			bk->f = NULL;
			if (bk->off != bk->bytes[bk->part - 1])
				return kb_errf(KB_ERR_INTERNAL,
				    "the snapshot "
				    "of the %s changed while being sent",
				    section_names[bk->part - 1]);
		}
		bk->part++;
		bk->off = 0;
	}
	return KB_OK;
}

void
backup_free(struct backup *bk)
{
	int i;

	if (bk == NULL)
		return;
	if (bk->f != NULL)
		fclose(bk->f);
	if (bk->dir[0] != '\0') {
		for (i = 0; i < NSECTIONS; i++) {
			char side[4400];

			(void)unlink(bk->path[i]);
			snprintf(side, sizeof(side), "%s-wal", bk->path[i]);
			(void)unlink(side);
			snprintf(side, sizeof(side), "%s-shm", bk->path[i]);
			(void)unlink(side);
		}
		(void)rmdir(bk->dir);
	}
	EVP_MD_CTX_free(bk->sha);
	free(bk->header);
	free(bk);
}

/* ---- the restore (offline) ---- */

struct restore_file {
	const char *path;
	FILE *f;
	uint64_t size;
	char *manifest_line;
	size_t header_len;
	json_t *m;
	uint64_t bytes[NSECTIONS];
	char sha[NSECTIONS][65];
};

/* Format and checksum: the whole file hashed against its trailer, then
 * the manifest parsed. */
static enum kb_err
restore_read(struct restore_file *r)
{
	uint8_t buf[65536], md[32];
	char magic[32], hex[65], trailer[TRAILER_LEN + 1];
	EVP_MD_CTX *c = NULL;
	struct stat sb;
	json_t *secs, *o;
	json_error_t jerr;
	uint64_t left, sum;
	size_t n, cap = 0, i;
	ssize_t len;
	enum kb_err e;

	if ((r->f = fopen(r->path, "rb")) == NULL
	    || fstat(fileno(r->f), &sb) != 0)
		return kb_errf(KB_ERR_NOT_FOUND, "backup %s: %s", r->path,
		    strerror(errno));
	r->size = (uint64_t)sb.st_size;
	if (fgets(magic, sizeof(magic), r->f) == NULL
	    || strcmp(magic, BACKUP_MAGIC) != 0)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "%s is not a keybroker "
		    "backup (its first line is not \"keybroker-backup 1\"; "
		    "make one with kbctl backup create)",
		    r->path);
	if ((len = getline(&r->manifest_line, &cap, r->f)) <= 1
	    || (size_t)len > MANIFEST_MAX || r->manifest_line[len - 1] != '\n')
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "backup %s: its manifest "
		    "line is missing or cut short (the file is damaged)",
		    r->path);
	r->header_len = strlen(BACKUP_MAGIC) + (size_t)len;
	if (r->size < r->header_len + TRAILER_LEN)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "backup %s is cut short "
		    "(%" PRIu64 " bytes, no trailer)",
		    r->path, r->size);
	/* The checksum covers every byte before the trailer. */
	if ((c = EVP_MD_CTX_new()) == NULL
	    || EVP_DigestInit_ex(c, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(c);
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	}
	rewind(r->f);
	for (left = r->size - TRAILER_LEN; left > 0; left -= n) {
		n = fread(
		    buf, 1, left < sizeof(buf) ? left : sizeof(buf), r->f);
		if (n == 0)
			break;
		EVP_DigestUpdate(c, buf, n);
	}
	EVP_DigestFinal_ex(c, md, NULL);
	EVP_MD_CTX_free(c);
	kb_hex_encode(md, sizeof(md), hex);
	if (left != 0 || fread(trailer, 1, TRAILER_LEN, r->f) != TRAILER_LEN)
		return kb_errf(KB_ERR_STORE, "reading backup %s: %s", r->path,
		    strerror(errno));
	trailer[TRAILER_LEN] = '\0';
	if (memcmp(trailer, "sha256 ", 7) != 0
	    || trailer[TRAILER_LEN - 1] != '\n')
		return kb_errf(KB_ERR_CORRUPT,
		    "backup %s has no checksum "
		    "trailer (\"sha256 HEX\" as its last line): it is cut "
		    "short "
		    "or damaged; nothing was restored",
		    r->path);
	if (CRYPTO_memcmp(trailer + 7, hex, 64) != 0)
		return kb_errf(KB_ERR_CORRUPT,
		    "backup %s fails its checksum: the "
		    "SHA-256 of its contents is %s, its trailer says %.64s; "
		    "the "
		    "file was damaged or altered; nothing was restored",
		    r->path, hex, trailer + 7);
	/* Past the checksum: what the broker wrote. Still checked. */
	r->manifest_line[len - 1] = '\0';
	if ((r->m = json_loads(r->manifest_line, 0, &jerr)) == NULL
	    || !json_is_object(r->m))
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "backup %s: its manifest "
		    "is not JSON (%s)",
		    r->path, jerr.text);
	secs = json_object_get(r->m, "sections");
	if (json_integer_value(json_object_get(r->m, "version")) != 1
	    || !json_is_array(secs) || json_array_size(secs) != NSECTIONS)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "backup %s: a manifest "
		    "of another version or without its two sections: use the "
		    "keybrokerd that made it",
		    r->path);
	for (i = 0, sum = 0; i < NSECTIONS; i++) {
		const char *h;

		o = json_array_get(secs, i);
		h = json_string_value(json_object_get(o, "sha256"));
		if (!json_is_integer(json_object_get(o, "bytes")) || h == NULL
		    || strlen(h) != 64
		    || strcmp(
		           json_string_value(json_object_get(o, "name")) != NULL
		               ? json_string_value(json_object_get(o, "name"))
		               : "",
		           section_names[i])
		        != 0)
			return kb_errf(KB_ERR_INVALID_ARGUMENT,
			    "backup %s: "
			    "section %zu of the manifest is malformed",
			    r->path, i + 1);
		r->bytes[i] =
		    (uint64_t)json_integer_value(json_object_get(o, "bytes"));
		snprintf(r->sha[i], sizeof(r->sha[i]), "%s", h);
		sum += r->bytes[i];
	}
	if (r->header_len + sum + TRAILER_LEN != r->size)
		return kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "backup %s: the manifest's "
		    "sections add up to %" PRIu64
		    " bytes, the file holds %" PRIu64,
		    r->path, sum, r->size - r->header_len - TRAILER_LEN);
	e = KB_OK;
	return e;
}

static const char *
jstr(json_t *o, const char *name)
{
	const char *s = json_string_value(json_object_get(o, name));

	return s != NULL ? s : "";
}

/* Whether key `k` (a manifest entry) is in the token as the backup needs
 * it; *why says what is wrong. */
static int
key_present(struct hsm *h, json_t *k, char *why, size_t len)
{
	return keycheck_present(h, jstr(k, "id"), jstr(k, "label"),
	    jstr(k, "purpose"), jstr(k, "state"), jstr(k, "parent"),
	    jstr(k, "fingerprint"), why, len);
}

static enum kb_err
restore_check_token(struct hsm *h, const struct hsm_token_info *ti, json_t *m,
    const char *file, FILE *out)
{
	json_t *keys = json_object_get(m, "keys"), *tok, *k;
	const char *blabel, *bserial;
	char why[300];
	size_t i, needed = 0, missing = 0;
	uint64_t envs = 0;

	tok = json_object_get(m, "token");
	blabel = jstr(tok, "label");
	bserial = jstr(tok, "serial");
	fprintf(out,
	    "backup %s: token '%s' (serial %s), schema %" JSON_INTEGER_FORMAT
	    ", audit log to event %" JSON_INTEGER_FORMAT ", %zu keys\n",
	    file, blabel, bserial,
	    json_integer_value(json_object_get(m, "schema_version")),
	    json_integer_value(
	        json_object_get(json_object_get(m, "audit_head"), "seq")),
	    json_array_size(keys));
	json_array_foreach(keys, i, k)
	{
		if (!json_is_true(json_object_get(k, "in_token")))
			continue;
		needed++;
		if (key_present(h, k, why, sizeof(why)))
			continue;
		if (missing++ == 0)
			fprintf(stderr,
			    "keybrokerd: token '%s' (serial %s) lacks "
			    "keys this backup needs:\n",
			    ti->label, ti->serial);
		envs += (uint64_t)json_integer_value(
		    json_object_get(k, "environments"));
		fprintf(stderr,
		    "  MISSING %s key %s%s%s (state %s, fingerprint "
		    "%s): %s; %" JSON_INTEGER_FORMAT
		    " environment(s) depend on "
		    "it%s%s%s\n",
		    jstr(k, "purpose"), jstr(k, "id"),
		    jstr(k, "tenant")[0] ? " of tenant " : "",
		    jstr(k, "tenant"), jstr(k, "state"), jstr(k, "fingerprint"),
		    why, json_integer_value(json_object_get(k, "environments")),
		    jstr(k, "tenant_ids")[0] ? " (tenants: " : "",
		    jstr(k, "tenant_ids"), jstr(k, "tenant_ids")[0] ? ")" : "");
	}
	if (strcmp(blabel, ti->label) != 0 || strcmp(bserial, ti->serial) != 0)
		fprintf(stderr,
		    "keybrokerd: the backup's database is bound to "
		    "token '%s' (serial %s), the configured token is '%s' "
		    "(serial %s): the broker would refuse to start on it\n",
		    blabel, bserial, ti->label, ti->serial);
	if (missing > 0)
		return kb_errf(KB_ERR_TOKEN_MISMATCH,
		    "refusing to restore %s: "
		    "%zu of the %zu keys it needs are not in token '%s' "
		    "(%" PRIu64 " environment(s) depend on them; listed "
		    "above); restore the "
		    "token from its own backup first, or point token_uri at "
		    "the "
		    "token that holds them; nothing was written",
		    file, missing, needed, ti->label, envs);
	if (strcmp(blabel, ti->label) != 0 || strcmp(bserial, ti->serial) != 0)
		return kb_errf(KB_ERR_TOKEN_MISMATCH,
		    "refusing to restore %s: it "
		    "belongs to token '%s' (serial %s), not '%s' (serial %s); "
		    "nothing was written",
		    file, blabel, bserial, ti->label, ti->serial);
	fprintf(out,
	    "token '%s' (serial %s) holds all %zu keys the backup "
	    "needs\n",
	    ti->label, ti->serial, needed);
	return KB_OK;
}

/* Write section `i` of the open backup into a new temporary file beside
 * `target`, checking its SHA-256; *tmp names it. */
static enum kb_err
restore_section(struct restore_file *r, int i, uint64_t offset,
    const char *target, char *tmp, size_t tmp_len)
{
	uint8_t buf[65536], md[32];
	char hex[65];
	EVP_MD_CTX *c = NULL;
	uint64_t left;
	size_t n;
	enum kb_err e = KB_ERR_STORE;
	int fd;

	snprintf(tmp, tmp_len, "%s.restore-XXXXXX", target);
	if ((fd = mkstemp(tmp)) < 0) {
		tmp[0] = '\0';
		return kb_errf(
		    errno == ENOSPC ? KB_ERR_STORAGE_FULL : KB_ERR_STORE,
		    "creating a file beside %s: %s", target, strerror(errno));
	}
	(void)fchmod(fd, 0600);
	if ((c = EVP_MD_CTX_new()) == NULL
	    || EVP_DigestInit_ex(c, EVP_sha256(), NULL) != 1
	    || fseeko(r->f, (off_t)offset, SEEK_SET) != 0)
		goto io;
	for (left = r->bytes[i]; left > 0; left -= n) {
		n = fread(
		    buf, 1, left < sizeof(buf) ? left : sizeof(buf), r->f);
		if (n == 0)
			goto io;
		EVP_DigestUpdate(c, buf, n);
		if (write(fd, buf, n) != (ssize_t)n)
			goto io;
	}
	if (fsync(fd) != 0)
		goto io;
	EVP_DigestFinal_ex(c, md, NULL);
	kb_hex_encode(md, sizeof(md), hex);
	if (strcmp(hex, r->sha[i]) != 0) {
		e = kb_errf(KB_ERR_CORRUPT,
		    "backup %s: the %s section's SHA-256 "
		    "is not the manifest's",
		    r->path, section_names[i]);
		goto out;
	}
	e = KB_OK;
	goto out;
io:
	e = kb_errf(errno == ENOSPC ? KB_ERR_STORAGE_FULL : KB_ERR_STORE,
	    "writing %s: %s", tmp, strerror(errno));
out:
	EVP_MD_CTX_free(c);
	close(fd);
	return e;
}

static void
dir_sync(const char *path)
{
	char d[4096];
	int fd;

	if ((fd = open(dir_of(path, d, sizeof(d)), O_RDONLY | O_DIRECTORY))
	    >= 0) {
		(void)fsync(fd);
		close(fd);
	}
}

static void
remove_sidecars(const char *path)
{
	char side[4200];

	snprintf(side, sizeof(side), "%s-wal", path);
	(void)unlink(side);
	snprintf(side, sizeof(side), "%s-shm", path);
	(void)unlink(side);
}

enum kb_err
backup_restore(const struct config *cfg, const char *config_path,
    const char *file, int force, FILE *out)
{
	struct restore_file r;
	struct hsm *h = NULL;
	struct hsm_config hc;
	struct hsm_token_info ti;
	const char *targets[NSECTIONS];
	char tmp[NSECTIONS][4200];
	uint64_t off, anchor = 0, head;
	enum kb_err e;
	int i, have_anchor = 0;

	memset(&r, 0, sizeof(r));
	memset(tmp, 0, sizeof(tmp));
	r.path = file;
	targets[0] = cfg->database;
	targets[1] = cfg->audit_database;
	if ((e = postgres_refuse(config_is_postgres(cfg->database),
	         cfg->audit_database, "keybrokerd --restore",
	         "; nothing was read or written"))
	    != KB_OK)
		goto out;
	if ((e = restore_read(&r)) != KB_OK)
		goto out;
	fprintf(out, "backup %s: format and checksum good\n", file);
	if (cfg->softhsm2_conf != NULL)
		setenv("SOFTHSM2_CONF", cfg->softhsm2_conf, 1);
	memset(&hc, 0, sizeof(hc));
	hc.module_path = cfg->pkcs11_module;
	hc.token_uri = cfg->token_uri;
	hc.pin_file = cfg->pin_file;
	hc.check_pin_mode = 1;
	hc.sessions = 2;
	if ((e = hsm_open(&hc, &h)) != KB_OK)
		goto out;
	hsm_token_info(h, &ti);
	if ((e = restore_check_token(h, &ti, r.m, file, out)) != KB_OK)
		goto out;
	for (i = 0; i < NSECTIONS; i++) {
		if (access(targets[i], F_OK) != 0)
			continue;
		if (!force) {
			e = kb_errf(KB_ERR_ALREADY_EXISTS,
			    "%s exists: restoring "
			    "would replace it; give --force to replace it "
			    "(stop "
			    "the broker first); nothing was written",
			    targets[i]);
			goto out;
		}
		if ((e = store_file_settle(targets[i])) != KB_OK) {
			kb_err_wrap(e, "nothing was written");
			goto out;
		}
	}
	for (i = 0, off = r.header_len; i < NSECTIONS; off += r.bytes[i], i++)
		if ((e = restore_section(
		         &r, i, off, targets[i], tmp[i], sizeof(tmp[i])))
		    != KB_OK)
			goto out;
	/* Each file is the old one or the new one whatever happens: the new
	 * one is complete and synced before its rename. */
	for (i = 0; i < NSECTIONS; i++) {
		remove_sidecars(targets[i]);
		if (rename(tmp[i], targets[i]) != 0) {
			e = kb_errf(KB_ERR_STORE, "renaming %s to %s: %s",
			    tmp[i], targets[i], strerror(errno));
			goto out;
		}
		tmp[i][0] = '\0';
		dir_sync(targets[i]);
		fprintf(out, "restored %s (%" PRIu64 " bytes)\n", targets[i],
		    r.bytes[i]);
	}
	head = (uint64_t)json_integer_value(
	    json_object_get(json_object_get(r.m, "audit_head"), "seq"));
	if ((e = audit_anchor_seq(h, AUDIT_ANCHOR_LABEL, &anchor)) == KB_OK)
		have_anchor = 1;
	kb_err_clear();
	e = KB_OK;
	if (have_anchor && anchor > head) {
		fprintf(out,
		    "the audit log: the token's anchor says the log "
		    "reached event %" PRIu64
		    "; this backup's log ends at event "
		    "%" PRIu64 ", so events %" PRIu64 " to %" PRIu64
		    " (recorded "
		    "after the backup) are not in it. The broker refuses to "
		    "start "
		    "on it as it is (lost events). Nothing was recorded yet: "
		    "to "
		    "accept the loss, start once with\n"
		    "  keybrokerd --config %s --accept-audit-loss\n"
		    "which records it in the log (audit.loss_accepted) and "
		    "moves "
		    "the anchor; later starts need no flag. 'kbctl audit "
		    "verify' "
		    "will name event %" PRIu64 " as the first missing one.\n",
		    anchor, head, head + 1, anchor, config_path, head + 1);
	} else {
		fprintf(out,
		    "the audit log reaches the token's anchor (%s): "
		    "start the broker as usual:\n  keybrokerd --config %s\n",
		    have_anchor ? "checked again at start" : "none yet",
		    config_path);
	}
out:
	for (i = 0; i < NSECTIONS; i++)
		if (tmp[i][0] != '\0')
			(void)unlink(tmp[i]);
	if (r.f != NULL)
		fclose(r.f);
	free(r.manifest_line);
	json_decref(r.m);
	hsm_close(h);
	return e;
}
