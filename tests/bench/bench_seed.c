/* SPDX-License-Identifier: Apache-2.0 */
/* bench_seed.c: N customer-managed environments written straight into the
 * broker's database (the broker stopped), because creating them through
 * the API is one durable commit (and one token operation) each: fine for
 * thousands, hours for a million. Each gets its own random DEK, wrapped
 * with RSA-OAEP under tenant key K0's public key by OpenSSL, with the OAEP
 * variant the broker records for the token ("RSA-OAEP-SHA1" on SoftHSMv2):
 * exactly what the broker would have stored. */
#include "bench.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <sqlite3.h>

#include "kb_secmem.h"
#include "kb_time.h"

#define CHUNK 4096
#define WRAP_THREADS 2
#define WRAPPED_MAX 512

void
bench_seed_name(unsigned i, char *buf, size_t len)
{
	snprintf(buf, len, "s-%07u", i);
}

struct chunk {
	EVP_PKEY *pub;
	const EVP_MD *md;
	unsigned n;
	uint8_t dek[CHUNK][32];
	uint8_t wrapped[CHUNK][WRAPPED_MAX];
	size_t wlen[CHUNK];
};

struct wrap_arg {
	struct chunk *c;
	unsigned from, to;
	int err;
};

static void *
wrap_main(void *p)
{
	struct wrap_arg *a = p;
	struct chunk *c = a->c;
	EVP_PKEY_CTX *ctx = NULL;
	unsigned i;

	a->err = 1;
	if ((ctx = EVP_PKEY_CTX_new(c->pub, NULL)) == NULL
	    || EVP_PKEY_encrypt_init(ctx) <= 0
	    || EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0
	    || EVP_PKEY_CTX_set_rsa_oaep_md(ctx, c->md) <= 0
	    || EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, c->md) <= 0)
		goto out;
	for (i = a->from; i < a->to; i++) {
		c->wlen[i] = WRAPPED_MAX;
		if (RAND_bytes(c->dek[i], 32) != 1
		    || EVP_PKEY_encrypt(
		           ctx, c->wrapped[i], &c->wlen[i], c->dek[i], 32)
		        <= 0)
			goto out;
	}
	a->err = 0;
out:
	EVP_PKEY_CTX_free(ctx);
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
			return kb_err_openssl(KB_ERR_CRYPTO,
			    "RSA-OAEP wrapping a "
			    "seeded data key");
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

enum kb_err
bench_seed(struct bench *b, EVP_PKEY *pub, unsigned n, double *secs)
{
	static const char env_sql[] =
	    "INSERT INTO environments(tenant_id, name, "
	    "mode, state, dek_version, create_time_us, update_time_us) VALUES "
	    "(?1, ?2, 'customer', 'enabled', 1, ?3, ?3)";
	static const char dek_sql[] =
	    "INSERT INTO deks(env_id, version, key_id, "
	    "wrap_alg, wrapped, create_time_us) VALUES (?1, 1, ?2, ?3, ?4, ?5)";
	sqlite3 *db = NULL;
	sqlite3_stmt *se = NULL, *sd = NULL, *sv = NULL;
	struct chunk *c = NULL;
	char name[32];
	unsigned done = 0, i, k;
	int64_t now = kb_time_now_us();
	double t0 = bench_now();
	enum kb_err e = KB_ERR_INTERNAL;
	int in_txn = 0;

	if ((c = calloc(1, sizeof(*c))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	c->pub = pub;
	c->md = strcmp(b->wrap_alg, "RSA-OAEP-SHA256") == 0 ? EVP_sha256()
	                                                    : EVP_sha1();
	if (strcmp(b->wrap_alg, "RSA-OAEP-SHA1") != 0
	    && strcmp(b->wrap_alg, "RSA-OAEP-SHA256") != 0) {
		e = kb_errf(KB_ERR_INVALID_ARGUMENT,
		    "seeding: unknown wrap "
		    "algorithm \"%s\"",
		    b->wrap_alg);
		goto out;
	}
	if (sqlite3_open_v2(b->db, &db, SQLITE_OPEN_READWRITE, NULL)
	    != SQLITE_OK) {
		e = sql_fail(db, b->db);
		goto out;
	}
	sqlite3_busy_timeout(db, 10000);
	/* The schema this was written against (broker/store.c migration 2). */
	if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &sv, NULL)
	        != SQLITE_OK
	    || sqlite3_step(sv) != SQLITE_ROW
	    || sqlite3_column_int(sv, 0) < 2) {
		e = kb_errf(KB_ERR_STORE,
		    "seeding: %s is not at schema version "
		    "2 or later",
		    b->db);
		goto out;
	}
	if (sqlite3_exec(
	        db, "PRAGMA foreign_keys=ON; BEGIN IMMEDIATE", NULL, NULL, NULL)
	    != SQLITE_OK) {
		e = sql_fail(db, "beginning");
		goto out;
	}
	in_txn = 1;
	if (sqlite3_prepare_v2(db, env_sql, -1, &se, NULL) != SQLITE_OK
	    || sqlite3_prepare_v2(db, dek_sql, -1, &sd, NULL) != SQLITE_OK) {
		e = sql_fail(db, "preparing");
		goto out;
	}
	while (done < n) {
		c->n = n - done < CHUNK ? n - done : CHUNK;
		if ((e = wrap_chunk(c)) != KB_OK)
			goto out;
		for (i = 0; i < c->n; i++) {
			bench_seed_name(done + i, name, sizeof(name));
			sqlite3_reset(se);
			sqlite3_bind_text(se, 1, b->tenant, -1, SQLITE_STATIC);
			sqlite3_bind_text(se, 2, name, -1, SQLITE_STATIC);
			sqlite3_bind_int64(se, 3, now);
			if (sqlite3_step(se) != SQLITE_DONE) {
				e = sql_fail(db, "inserting an environment");
				goto out;
			}
			sqlite3_reset(sd);
			sqlite3_bind_int64(
			    sd, 1, sqlite3_last_insert_rowid(db));
			sqlite3_bind_text(sd, 2, b->k0, -1, SQLITE_STATIC);
			sqlite3_bind_text(
			    sd, 3, b->wrap_alg, -1, SQLITE_STATIC);
			sqlite3_bind_blob(sd, 4, c->wrapped[i], (int)c->wlen[i],
			    SQLITE_STATIC);
			sqlite3_bind_int64(sd, 5, now);
			if (sqlite3_step(sd) != SQLITE_DONE) {
				e = sql_fail(db, "inserting a data key");
				goto out;
			}
			for (k = 0; k < BENCH_SAMPLES; k++)
				if (bench_sample_index(k, n) == done + i)
					memcpy(b->sample_dek[k], c->dek[i], 32);
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
	if (c != NULL)
		kb_freezero(c, sizeof(*c));
	return e;
}
