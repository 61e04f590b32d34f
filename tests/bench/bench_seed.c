/* SPDX-License-Identifier: Apache-2.0 */
/* bench_seed.c: N environments written straight into the broker's
 * database (the broker stopped), because creating them through the API is
 * one durable commit (and one token operation) each: fine for thousands,
 * hours for a million. The seeder holds the token's PIN, as the broker
 * does. Customer-managed ones: it makes tenant key K0's KEK in the token
 * (wrapped under K0) and seals each environment's own random DEK under it;
 * platform-managed ones: under the database's active platform key. Each
 * with dek_seal, for that row: exactly what the broker would have stored.
 * (A DEK written without the token, as this file did before envelope v2,
 * is refused.) */
#include "bench.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <sqlite3.h>

#include "dek.h"
#include "hsm.h"
#include "kb_secmem.h"
#include "store.h"
#include "kb_time.h"

#define CHUNK 4096
#define WRAP_THREADS 2

void
bench_seed_name(unsigned i, char *buf, size_t len)
{
	snprintf(buf, len, "s-%07u", i);
}

struct chunk {
	struct hsm *h;
	const char *tenant, *key; /* the sealing key: KEK or platform key */
	enum store_env_mode mode;
	unsigned base, n;
	uint8_t dek[CHUNK][32];
	char uid[CHUNK][STORE_UID_LEN + 1];
	struct store_dek sealed[CHUNK];
};

struct wrap_arg {
	struct chunk *c;
	unsigned from, to;
	int err;
};

/* Seal each DEK in the token under the KEK, for its own row, exactly as
 * the broker does (dek_seal: AES-256-GCM with the row's associated data,
 * opened once to check). */
static void *
wrap_main(void *p)
{
	struct wrap_arg *a = p;
	struct chunk *c = a->c;
	struct dek_row row;
	uint8_t r[STORE_UID_LEN / 2];
	char name[32];
	unsigned i, j;

	a->err = 1;
	for (i = a->from; i < a->to; i++) {
		if (RAND_bytes(c->dek[i], 32) != 1
		    || RAND_bytes(r, sizeof(r)) != 1)
			return NULL;
		for (j = 0; j < sizeof(r); j++)
			snprintf(c->uid[i] + 2 * j, 3, "%02x", r[j]);
		bench_seed_name(c->base + i, name, sizeof(name));
		row = (struct dek_row){c->tenant, name, c->uid[i], 1, c->mode};
		if (dek_seal(c->h, &row, c->key, c->dek[i], &c->sealed[i])
		    != KB_OK)
			return NULL;
	}
	a->err = 0;
	return NULL;
}

static enum kb_err
wrap_chunk(struct chunk *c)
{
	struct wrap_arg a[WRAP_THREADS];
	pthread_t th[WRAP_THREADS];
	int started[WRAP_THREADS] = {0};
	unsigned t, per = (c->n + WRAP_THREADS - 1) / WRAP_THREADS;

	for (t = 0; t < WRAP_THREADS; t++) {
		a[t] = (struct wrap_arg){
		    c, t * per, (t + 1) * per < c->n ? (t + 1) * per : c->n, 1};
		if (a[t].from >= a[t].to) {
			a[t].err = 0;
			continue;
		}
		if (t > 0
		    && pthread_create(&th[t], NULL, wrap_main, &a[t]) == 0)
			started[t] = 1;
	}
	for (t = 0; t < WRAP_THREADS; t++)
		if (!started[t] && a[t].from < a[t].to)
			wrap_main(&a[t]);
	for (t = 1; t < WRAP_THREADS; t++)
		if (started[t])
			pthread_join(th[t], NULL);
	for (t = 0; t < WRAP_THREADS; t++)
		if (a[t].err)
			return kb_errf(KB_ERR_HSM,
			    "sealing a seeded data key: %s",
			    kb_err_msg(KB_ERR_HSM));
	return KB_OK;
}

static enum kb_err
sql_fail(sqlite3 *db, const char *what)
{
	return kb_errf(KB_ERR_STORE, "seeding: %s: %s", what,
	    db != NULL ? sqlite3_errmsg(db) : "cannot open");
}

unsigned
bench_sample_index(unsigned k, unsigned n)
{
	return n <= 1 ? 0
	              : (unsigned)((uint64_t)k * (n - 1) / (BENCH_SAMPLES - 1));
}

/* The tenant key's KEK, made in the token and recorded active for the
 * tenant. */
static enum kb_err
seed_kek(const struct bench_seed_spec *s, struct hsm *h, sqlite3 *db, char *kek,
    size_t len, int64_t now)
{
	static const char sql[] =
	    "INSERT INTO keys(id, tenant_id, purpose, "
	    "origin, state, fingerprint, wrap_alg, create_time_us, "
	    "update_time_us, bits, parent_id, wrapped) VALUES (?1, ?2, 'kek', "
	    "'generated', 'active', '-', ?3, ?4, ?4, 256, ?5, ?6)";
	sqlite3_stmt *st = NULL;
	char label[DEK_LABEL_MAX];
	uint8_t *w = NULL;
	size_t wl = 0;
	enum kb_err e;

	snprintf(kek, len, "kek-bench-%s", s->tenant_key + 2);
	dek_label(STORE_MODE_CUSTOMER, s->tenant, label, sizeof(label));
	if ((e = hsm_kek_create(
	         h, s->tenant_key, s->wrap_alg, kek, label, &w, &wl))
	    != KB_OK)
		return e;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
		free(w);
		return sql_fail(db, "preparing the KEK");
	}
	sqlite3_bind_text(st, 1, kek, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, s->tenant, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, s->wrap_alg, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, now);
	sqlite3_bind_text(st, 5, s->tenant_key, -1, SQLITE_STATIC);
	sqlite3_bind_blob(st, 6, w, (int)wl, SQLITE_STATIC);
	e = sqlite3_step(st) == SQLITE_DONE ? KB_OK
	                                    : sql_fail(db, "recording the KEK");
	sqlite3_finalize(st);
	free(w);
	return e;
}

/* The database's active platform key (AES-256-GCM): the one the broker
 * seals new platform-managed DEKs under. */
static enum kb_err
seed_platform_key(sqlite3 *db, char *id, size_t len)
{
	static const char sql[] = "SELECT id FROM keys WHERE tenant_id IS NULL "
	                          "AND purpose = 'platform' AND state = "
	                          "'active' AND wrap_alg = 'AES-256-GCM'";
	sqlite3_stmt *st = NULL;
	enum kb_err e;

	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		return sql_fail(db, "preparing the platform key lookup");
	if (sqlite3_step(st) == SQLITE_ROW) {
		snprintf(
		    id, len, "%s", (const char *)sqlite3_column_text(st, 0));
		e = KB_OK;
	} else {
		e = kb_errf(KB_ERR_NOT_FOUND,
		    "seeding: the database has no active platform key (has "
		    "keybrokerd started on it once?)");
	}
	sqlite3_finalize(st);
	return e;
}

/* One "NAME BASE64" line for a seeded DEK. */
static enum kb_err
seed_dek_write(FILE *f, const char *name, const uint8_t dek[32])
{
	unsigned char b64[48];
	int rc;

	EVP_EncodeBlock(b64, dek, 32);
	rc = fprintf(f, "%s %s\n", name, (const char *)b64);
	kb_wipe(b64, sizeof(b64));
	return rc < 0 ? kb_errf(KB_ERR_IO, "seeding: writing a data key: %s",
	           strerror(errno))
	              : KB_OK;
}

enum kb_err
bench_seed(const char *db_path, const char *pin,
    const struct bench_seed_spec *s, double *secs)
{
	static const char env_sql[] =
	    "INSERT INTO environments(tenant_id, name, "
	    "mode, state, dek_version, create_time_us, update_time_us, uid) "
	    "VALUES (?1, ?2, ?5, 'enabled', 1, ?3, ?3, ?4)";
	static const char dek_sql[] =
	    "INSERT INTO deks(env_id, version, key_id, "
	    "wrap_alg, wrapped, create_time_us) VALUES (?1, 1, ?2, ?3, ?4, ?5)";
	struct hsm_config hc;
	struct hsm *h = NULL;
	sqlite3 *db = NULL;
	sqlite3_stmt *se = NULL, *sd = NULL, *sv = NULL;
	struct chunk *c = NULL;
	char name[32], key[96];
	unsigned done = 0, i, k, n = s->n;
	enum store_env_mode mode =
	    s->platform ? STORE_MODE_PLATFORM : STORE_MODE_CUSTOMER;
	int64_t now = kb_time_now_us();
	double t0 = bench_now();
	enum kb_err e = KB_ERR_INTERNAL;
	int in_txn = 0;

	if ((c = calloc(1, sizeof(*c))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	memset(&hc, 0, sizeof(hc));
	hc.token_uri = "pkcs11:token=keybroker";
	hc.pin_file = pin;
	hc.check_pin_mode = 1;
	hc.sessions = WRAP_THREADS + 1;
	if ((e = hsm_open(&hc, &h)) != KB_OK)
		goto out;
	if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READWRITE, NULL)
	    != SQLITE_OK) {
		e = sql_fail(db, db_path);
		goto out;
	}
	sqlite3_busy_timeout(db, 10000);
	/* The schema this was written against (broker/store.c migration 3). */
	if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &sv, NULL)
	        != SQLITE_OK
	    || sqlite3_step(sv) != SQLITE_ROW
	    || sqlite3_column_int(sv, 0) < 3) {
		e = kb_errf(KB_ERR_STORE,
		    "seeding: %s is not at schema version 3 or later", db_path);
		goto out;
	}
	sqlite3_finalize(sv);
	sv = NULL;
	if (sqlite3_exec(
	        db, "PRAGMA foreign_keys=ON; BEGIN IMMEDIATE", NULL, NULL, NULL)
	    != SQLITE_OK) {
		e = sql_fail(db, "beginning");
		goto out;
	}
	in_txn = 1;
	if ((e = s->platform ? seed_platform_key(db, key, sizeof(key))
	                     : seed_kek(s, h, db, key, sizeof(key), now))
	    != KB_OK)
		goto out;
	c->h = h;
	c->tenant = s->tenant;
	c->key = key;
	c->mode = mode;
	if (sqlite3_prepare_v2(db, env_sql, -1, &se, NULL) != SQLITE_OK
	    || sqlite3_prepare_v2(db, dek_sql, -1, &sd, NULL) != SQLITE_OK) {
		e = sql_fail(db, "preparing");
		goto out;
	}
	while (done < n) {
		c->base = done;
		c->n = n - done < CHUNK ? n - done : CHUNK;
		if ((e = wrap_chunk(c)) != KB_OK)
			goto out;
		for (i = 0; i < c->n; i++) {
			bench_seed_name(done + i, name, sizeof(name));
			sqlite3_reset(se);
			sqlite3_bind_text(se, 1, s->tenant, -1, SQLITE_STATIC);
			sqlite3_bind_text(se, 2, name, -1, SQLITE_STATIC);
			sqlite3_bind_int64(se, 3, now);
			sqlite3_bind_text(se, 4, c->uid[i], -1, SQLITE_STATIC);
			sqlite3_bind_text(se, 5, store_env_mode_name(mode), -1,
			    SQLITE_STATIC);
			if (sqlite3_step(se) != SQLITE_DONE) {
				e = sql_fail(db, "inserting an environment");
				goto out;
			}
			sqlite3_reset(sd);
			sqlite3_bind_int64(
			    sd, 1, sqlite3_last_insert_rowid(db));
			sqlite3_bind_text(sd, 2, key, -1, SQLITE_STATIC);
			sqlite3_bind_text(
			    sd, 3, c->sealed[i].wrap_alg, -1, SQLITE_STATIC);
			sqlite3_bind_blob(sd, 4, c->sealed[i].wrapped,
			    (int)c->sealed[i].wrapped_len, SQLITE_STATIC);
			sqlite3_bind_int64(sd, 5, now);
			if (sqlite3_step(sd) != SQLITE_DONE) {
				e = sql_fail(db, "inserting a data key");
				goto out;
			}
			for (k = 0; s->sample_dek != NULL && k < BENCH_SAMPLES;
			     k++)
				if (bench_sample_index(k, n) == done + i)
					memcpy(s->sample_dek[k], c->dek[i], 32);
			if (s->deks_out != NULL
			    && (e = seed_dek_write(
			            s->deks_out, name, c->dek[i]))
			        != KB_OK)
				goto out;
		}
		done += c->n;
		if (n >= 100000 && done % (CHUNK * 25) < CHUNK)
			fprintf(stderr, "kb-bench: seeded %u of %u\n", done, n);
	}
	if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
		e = sql_fail(db, "committing");
		goto out;
	}
	in_txn = 0;
	*secs = bench_now() - t0;
	e = KB_OK;
out:
	if (in_txn)
		(void)sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
	sqlite3_finalize(sv);
	sqlite3_finalize(se);
	sqlite3_finalize(sd);
	sqlite3_close(db);
	hsm_close(h);
	if (c != NULL)
		kb_freezero(c, sizeof(*c));
	return e;
}
