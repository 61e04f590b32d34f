/* SPDX-License-Identifier: Apache-2.0 */
/* jobs.c: re-seal jobs (activation, platform-key rotation, the v2 upgrade),
 * the scheduled rotation and the retention sweeper, on their own threads. */
#include "jobs.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "dek.h"
#include "kb_secmem.h"
#include "kb_time.h"
#include "keys.h"
#include "log.h"
#include "policy.h"
#include "store_lease.h"
#include "timemark.h"

#define REWRAP_BATCH 256
#define SWEEP_BATCH 100
#define RETRY_DELAY_MS 1000

struct jobs {
	struct broker *b;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int stopping;
	int kicked;
	pthread_t job_thread, sweep_thread;
	int job_started, sweep_started;
	void (*sweep_hook)(struct broker *b); /* under mu */
	/* The cluster-wide lease on the job runner, while the job thread
	 * holds it (job thread only). */
	struct store_lease *job_lease;
};

/* With several brokers on one database, a job another broker made, or one
 * a dead broker was running, is found by polling this often: the bound on
 * a take-over is this plus the time the database takes to end a dead
 * broker's session (at once for a killed process). */
#define JOB_POLL_MS 1000

/* One thread's share of a batch: it takes the next row not yet taken, so
 * a thread that gets less CPU (or slower rows) does not leave the others
 * idle at the end of the batch. */
struct slice {
	struct hsm *hsm;
	struct store_rewrap *rows;
	char (*old)[STORE_KEY_ID_MAX];
	char (*target)[STORE_KEY_ID_MAX];
	atomic_size_t *next;
	size_t n;
	int legacy, upgrade;
	enum kb_err err;
	char msg[256];
};

static void *
slice_main(void *p)
{
	struct slice *s = p;
	struct dek_row row;
	size_t i;

	s->err = KB_OK;
	while ((i = atomic_fetch_add(s->next, 1)) < s->n) {
		struct store_rewrap *r = &s->rows[i];

		snprintf(s->old[i], STORE_KEY_ID_MAX, "%s", r->dek.key_id);
		if (r->skip)
			continue;
		row = (struct dek_row){
		    r->tenant_id, r->name, r->uid, r->version, r->mode};
		/* Same row, same mode: only the sealing key changes. */
		s->err = dek_reseal(s->hsm, &row, &r->dek, s->legacy, &row,
		    s->target[i], &r->dek);
		/* The upgrade leaves rows whose key is not in the token (their
		 * tenant is locked): they move at its unlock. */
		if (s->err == KB_ERR_NOT_FOUND && s->upgrade) {
			kb_err_clear();
			s->err = KB_OK;
			r->skip = 1;
			continue;
		}
		/* A row that fails its integrity check will never open: it is
		 * marked unrecoverable (after the batch) and left, rather than
		 * one forged row stopping the job for every other. */
		if (s->err == KB_ERR_CORRUPT) {
			snprintf(r->dek.damaged, sizeof(r->dek.damaged), "%s",
			    kb_err_msg(s->err));
			kb_err_clear();
			s->err = KB_OK;
			r->skip = 2;
			continue;
		}
		if (s->err != KB_OK) {
			snprintf(s->msg, sizeof(s->msg),
			    "data key %u of "
			    "%s/%s: %s",
			    r->version, r->tenant_id, r->name,
			    kb_err_msg(s->err));
			break;
		}
	}
	/* The DEKs were wiped inside dek_reseal; nothing secret remains. */
	return NULL;
}

/* Re-seal rows[0..n) (row i under target[i]) with up to `threads` threads
 * in parallel. */
static enum kb_err
reseal_rows(struct broker *b, struct store_rewrap *rows,
    char (*old)[STORE_KEY_ID_MAX], char (*target)[STORE_KEY_ID_MAX], size_t n,
    int legacy, int upgrade, unsigned threads)
{
	struct slice sl[64];
	pthread_t th[64];
	int started[64] = {0};
	atomic_size_t next;
	unsigned t;
	enum kb_err e = KB_OK;

	if (threads > 64)
		threads = 64;
	if (threads > n)
		threads = (unsigned)n;
	atomic_init(&next, 0);
	for (t = 0; t < threads; t++) {
		sl[t] = (struct slice){b->hsm, rows, old, target, &next, n,
		    legacy, upgrade, KB_OK, ""};
		if (t > 0
		    && pthread_create(&th[t], NULL, slice_main, &sl[t]) == 0)
			started[t] = 1;
	}
	/* Slice 0 (and any whose thread did not start) runs here. */
	for (t = 0; t < threads; t++)
		if (!started[t])
			slice_main(&sl[t]);
	for (t = 1; t < threads; t++)
		if (started[t])
			pthread_join(th[t], NULL);
	for (t = 0; t < threads; t++) {
		if (sl[t].err != KB_OK) {
			e = kb_errf(sl[t].err, "%s", sl[t].msg);
			break;
		}
	}
	return e;
}

/* The key each row is re-sealed under: the job's target, or for the
 * upgrade the current key of the row's kind (the tenant's KEK, the
 * platform key), looked up once per tenant in a batch. */
static enum kb_err
targets_fill(struct broker *b, const struct store_job *job,
    struct store_rewrap *rows, char (*target)[STORE_KEY_ID_MAX], size_t n)
{
	struct store_key k;
	char tenant[STORE_ID_MAX] = "", kek[STORE_KEY_ID_MAX] = "";
	char platform[STORE_KEY_ID_MAX] = "";
	size_t i;
	enum kb_err e;

	for (i = 0; i < n; i++) {
		if (strcmp(job->kind, STORE_JOB_UPGRADE) != 0) {
			snprintf(target[i], STORE_KEY_ID_MAX, "%s",
			    job->target_key_id);
			continue;
		}
		if (rows[i].mode == STORE_MODE_PLATFORM) {
			if (platform[0] == '\0') {
				if ((e = store_platform_current(b->store, &k))
				    != KB_OK)
					return e;
				snprintf(
				    platform, sizeof(platform), "%s", k.id);
			}
			snprintf(target[i], STORE_KEY_ID_MAX, "%s", platform);
			continue;
		}
		if (strcmp(tenant, rows[i].tenant_id) != 0) {
			snprintf(
			    tenant, sizeof(tenant), "%s", rows[i].tenant_id);
			e = store_kek_current(b->store, tenant, &k);
			if (e == KB_ERR_NOT_FOUND) {
				kb_err_clear();
				kek[0] = '\0';
			} else if (e != KB_OK) {
				return e;
			} else {
				snprintf(kek, sizeof(kek), "%s", k.id);
			}
		}
		/* A tenant with no KEK (locked before v2): at its unlock. */
		if (kek[0] == '\0')
			rows[i].skip = 1;
		snprintf(target[i], STORE_KEY_ID_MAX, "%s", kek);
	}
	return KB_OK;
}

static int
stopping(struct jobs *j)
{
	int s;

	pthread_mutex_lock(&j->mu);
	s = j->stopping;
	pthread_mutex_unlock(&j->mu);
	return s;
}

/* Sleep up to ms milliseconds, waking early on stop (j->cv waits on
 * CLOCK_MONOTONIC: a wall clock set back does not stretch the sleep). */
static void
nap(struct jobs *j, unsigned ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&j->mu);
	if (!j->stopping)
		pthread_cond_timedwait(&j->cv, &j->mu, &ts);
	pthread_mutex_unlock(&j->mu);
}

/* After an upgrade: a tenant key that seals no pre-v2 row any more loses
 * its decrypt use, and the pre-v2 platform key goes, so no forged pre-v2
 * blob can ever be opened; reads stop accepting the old envelope. */
static void
upgrade_done(struct broker *b)
{
	struct store_key *v = NULL;
	size_t n = 0, i;
	int changed;
	int64_t left = store_deks_legacy(b->store);

	if (left == 0)
		atomic_store(&b->legacy_open, 0);
	if (store_keys_by_purpose(b->store, "tenant", &v, &n) == KB_OK) {
		for (i = 0; i < n; i++) {
			if ((strcmp(v[i].state, "active") != 0
			        && strcmp(v[i].state, "available") != 0)
			    || store_deks_sealed_by(b->store, v[i].id) != 0)
				continue;
			if (hsm_rsa_upgrade(
			        b->hsm, v[i].id, HSM_USE_KEYWRAP, &changed)
			    != KB_OK)
				kb_err_clear();
		}
		free(v);
	}
	if (store_keys_by_purpose(b->store, "platform", &v, &n) == KB_OK) {
		for (i = 0; i < n; i++) {
			if (strncmp(v[i].wrap_alg, "RSA-OAEP", 8) != 0
			    || strcmp(v[i].state, "active") != 0
			    || store_deks_sealed_by(b->store, v[i].id) != 0)
				continue;
			if (store_key_set_state(b->store, v[i].id, "active",
			        "deleted", clock_now_us())
			    == KB_OK) {
				log_info(
				    "the pre-v2 platform key %s seals nothing "
				    "now: destroyed",
				    v[i].id);
				(void)broker_audit_system(b, "key.destroy",
				    NULL, NULL, v[i].id, "ok",
				    "pre-v2 platform key, "
				    "after the upgrade");
			}
		}
		free(v);
	}
	(void)keys_reconcile(b, 1);
	kb_err_clear();
	if (left > 0)
		log_warn("upgrade: %lld pre-v2 rows left, of locked tenants: "
		         "they are upgraded when their tenant is unlocked",
		    (long long)left);
}

static const char *
job_event(const struct store_job *job, const char *what, char *buf, size_t len)
{
	const char *k = strcmp(job->kind, STORE_JOB_ACTIVATE) == 0 ? "activate"
	    : strcmp(job->kind, STORE_JOB_ROTATE) == 0             ? "rotate"
	    : strcmp(job->kind, STORE_JOB_RETIRE) == 0             ? "retire"
	                                                           : "upgrade";

	snprintf(buf, len, "job.%s.%s", k, what);
	return buf;
}

/* Run one job to its end (or until stop). Progress is stored with every
 * batch, so a restart resumes where it was. */
static void
run_job(struct jobs *j, struct store_job *job)
{
	struct broker *b = j->b;
	struct store_rewrap *rows;
	char(*old)[STORE_KEY_ID_MAX], (*target)[STORE_KEY_ID_MAX];
	char ev[40];
	int64_t after_env = 0;
	uint32_t after_version = 0;
	int upgrade = strcmp(job->kind, STORE_JOB_UPGRADE) == 0;
	int tenant_job = job->tenant_id[0] != '\0';
	size_t n, i, sealed_this_pass = 0;
	enum kb_err e;

	rows = calloc(REWRAP_BATCH, sizeof(*rows));
	old = calloc(REWRAP_BATCH, sizeof(*old));
	target = calloc(REWRAP_BATCH, sizeof(*target));
	if (rows == NULL || old == NULL || target == NULL) {
		log_error("job %s: out of memory", job->id);
		goto out;
	}
	log_info("job %s: re-sealing data keys (%s%s%s) under %s (%llu of "
	         "%llu done)",
	    job->id, job->kind, tenant_job ? ", tenant " : "", job->tenant_id,
	    upgrade ? "their current keys" : job->target_key_id,
	    (unsigned long long)job->done, (unsigned long long)job->total);
	{
		char why[128];

		snprintf(why, sizeof(why),
		    "job %s: %llu of %llu data keys "
		    "re-sealed so far",
		    job->id, (unsigned long long)job->done,
		    (unsigned long long)job->total);
		(void)broker_audit_system(b,
		    job_event(job, "start", ev, sizeof(ev)),
		    tenant_job ? job->tenant_id : NULL, NULL, job->key_id, "ok",
		    why);
	}
	while (!stopping(j)) {
		if (j->job_lease != NULL && !store_lease_held(j->job_lease)) {
			/* The database ended our session (a restart, a
			 * failover): another broker may run the job now.
			 * Stop; the next pass takes the lease again. */
			log_warn("job %s: the job lease was lost; leaving "
			         "the job to whichever broker takes it",
			    job->id);
			break;
		}
		/* From where the last batch ended: a fetch reads the rows it
		 * returns, not the ones done before (O(N) in all, not N^2). */
		e = store_rewrap_fetch_after(b->store, job, after_env,
		    after_version, rows, REWRAP_BATCH, &n);
		if (e == KB_OK && n == 0
		    && (after_env != 0 || after_version != 0)
		    && (!upgrade || sealed_this_pass > 0)) {
			/* One more pass from the start catches rows changed
			 * behind the position: the job ends only when a whole
			 * pass finds nothing left to do. */
			after_env = 0;
			after_version = 0;
			sealed_this_pass = 0;
			continue;
		}
		if (e == KB_OK && n == 0) {
			if (tenant_job)
				broker_tenant_lock(b, job->tenant_id);
			e = store_job_finish(b->store, job, clock_now_us());
			if (tenant_job)
				broker_tenant_unlock(b, job->tenant_id);
			if (e == KB_OK) {
				log_info("job %s: done", job->id);
				if (upgrade)
					upgrade_done(b);
				else
					(void)keys_reconcile(b, 1);
				kb_err_clear();
				if (strcmp(job->kind, STORE_JOB_RETIRE) == 0)
					keys_retire_done(b, job->tenant_id,
					    job->key_id, job->id);
				(void)broker_audit_system(b,
				    job_event(job, "done", ev, sizeof(ev)),
				    tenant_job ? job->tenant_id : NULL, NULL,
				    job->key_id, "ok", job->id);
				break;
			}
			if (e == KB_ERR_UNAVAILABLE) {
				/* Rows added meanwhile: another pass. */
				log_info("%s", kb_err_msg(e));
				after_env = 0;
				after_version = 0;
				continue;
			}
		}
		if (e == KB_OK)
			e = targets_fill(b, job, rows, target, n);
		if (e == KB_OK)
			e = reseal_rows(b, rows, old, target, n,
			    upgrade || atomic_load(&b->legacy_open), upgrade,
			    b->cfg->rewrap_threads);
		if (e == KB_OK)
			e = store_rewrap_commit(
			    b->store, job->id, rows, old, n, clock_now_us());
		for (i = 0; e == KB_OK && i < n; i++) {
			if (rows[i].skip != 2)
				continue;
			log_error("job %s: data key %u of %s/%s failed its "
			          "integrity check: marked unrecoverable (%s)",
			    job->id, rows[i].version, rows[i].tenant_id,
			    rows[i].name, rows[i].dek.damaged);
			(void)store_dek_mark_damaged(b->store,
			    rows[i].tenant_id, rows[i].name, rows[i].version,
			    rows[i].dek.damaged);
			(void)broker_audit_system(b, "datakey.integrity",
			    rows[i].tenant_id, rows[i].name, rows[i].dek.key_id,
			    "error", rows[i].dek.damaged);
		}
		if (e == KB_OK) {
			for (i = 0; i < n; i++)
				sealed_this_pass += !rows[i].skip;
			after_env = rows[n - 1].env_id;
			after_version = rows[n - 1].version;
			kb_wipe(rows, n * sizeof(*rows));
			continue;
		}
		kb_wipe(rows, REWRAP_BATCH * sizeof(*rows));
		/* The token or the disk may come back: retry those. A data
		 * key that does not open will not: the job fails, and the
		 * environments already re-sealed stay readable. */
		if (e == KB_ERR_UNAVAILABLE || e == KB_ERR_STORAGE_FULL
		    || e == KB_ERR_READ_ONLY || e == KB_ERR_STORE) {
			log_warn(
			    "job %s: %s; retrying", job->id, kb_err_msg(e));
			nap(j, RETRY_DELAY_MS);
			continue;
		}
		{
			char why[300];

			snprintf(why, sizeof(why), "job %s: %s", job->id,
			    kb_err_msg(e));
			log_error("%s", why);
			if (tenant_job)
				broker_tenant_lock(b, job->tenant_id);
			(void)store_job_fail(
			    b->store, job->id, kb_err_msg(e), clock_now_us());
			if (tenant_job)
				broker_tenant_unlock(b, job->tenant_id);
			(void)broker_audit_system(b,
			    job_event(job, "failed", ev, sizeof(ev)),
			    tenant_job ? job->tenant_id : NULL, NULL,
			    job->key_id, "error", why);
		}
		break;
	}
out:
	free(rows);
	free(old);
	free(target);
}

enum kb_err
jobs_rotate_platform(struct broker *b, const char *why, struct store_job *job)
{
	struct store_key cur, k;
	char id[STORE_KEY_ID_MAX];
	enum kb_err e;

	if ((e = store_platform_current(b->store, &cur)) != KB_OK)
		return e;
	if ((e = broker_new_id(b, "j-", id, sizeof(id))) != KB_OK
	    || (e = keys_platform_new(b, "installing", &k)) != KB_OK)
		return e;
	if ((e = store_job_begin(b->store, id, STORE_JOB_ROTATE, &k, cur.id,
	         clock_now_us(), job))
	    != KB_OK) {
		(void)hsm_key_destroy(b->hsm, k.id);
		return e;
	}
	log_info("platform key rotation %s: %s -> %s, %llu data keys to "
	         "re-seal (%s)",
	    job->id, cur.id, k.id, (unsigned long long)job->total, why);
	jobs_kick(b->jobs);
	return KB_OK;
}

/* The scheduled rotation: due when the current platform key has been in
 * use for platform_key_rotation_days (policy clock). */
static void
rotation_check(struct broker *b)
{
	struct store_key cur;
	struct store_job job;
	int64_t since, period;
	enum kb_err e;

	if (b->cfg->platform_key_rotation_days == 0)
		return;
	if (store_platform_current(b->store, &cur) != KB_OK
	    || strcmp(cur.state, "active") != 0) {
		kb_err_clear();
		return;
	}
	since = cur.activate_time_us != 0 ? cur.activate_time_us
	                                  : cur.create_time_us;
	period = (int64_t)b->cfg->platform_key_rotation_days * 86400 * 1000000;
	if (clock_now_us() - since < period)
		return;
	e = jobs_rotate_platform(
	    b, "scheduled: platform_key_rotation_days", &job);
	if (e == KB_OK)
		(void)broker_audit_system(b, "platform.rotate.scheduled", NULL,
		    NULL, job.target_key_id, "ok", job.id);
	else if (e != KB_ERR_ALREADY_EXISTS)
		log_error("scheduled platform key rotation: %s", kb_err_msg(e));
	kb_err_clear();
}

/* Run the listed jobs under the cluster-wide job lease, so one broker at a
 * time re-seals (each job resumes from the progress stored in its row).
 * Held by another broker: nothing to do here. */
static void
run_jobs_leased(struct jobs *j, struct store_job *v, size_t n)
{
	enum kb_err e;
	size_t i;

	e = store_lease_take(j->b->store, STORE_LEASE_JOBS, &j->job_lease);
	if (e == KB_ERR_FAILED_PRECONDITION) {
		kb_err_clear();
		return;
	}
	if (e != KB_OK) {
		log_error("taking the job lease: %s", kb_err_msg(e));
		return;
	}
	for (i = 0; i < n && !stopping(j); i++) {
		/* Listed before the lease was ours: another broker may have
		 * finished it since. */
		if (store_job_get(j->b->store, v[i].id, &v[i]) != KB_OK
		    || strcmp(v[i].state, "running") != 0) {
			kb_err_clear();
			continue;
		}
		run_job(j, &v[i]);
	}
	store_lease_drop(j->job_lease);
	j->job_lease = NULL;
}

static void *
job_main(void *p)
{
	struct jobs *j = p;
	struct store_job *v;
	size_t n;

	while (!stopping(j)) {
		pthread_mutex_lock(&j->mu);
		j->kicked = 0;
		pthread_mutex_unlock(&j->mu);
		if (store_jobs_running(j->b->store, &v, &n) == KB_OK) {
			if (n > 0)
				run_jobs_leased(j, v, n);
			free(v);
		} else {
			log_error("listing jobs: %s", kb_err_msg(KB_ERR_STORE));
		}
		kb_err_clear();
		if (store_is_postgres(j->b->store)) {
			/* Other brokers make jobs too, and die. */
			pthread_mutex_lock(&j->mu);
			if (j->kicked || j->stopping) {
				pthread_mutex_unlock(&j->mu);
				continue;
			}
			pthread_mutex_unlock(&j->mu);
			nap(j, JOB_POLL_MS);
			continue;
		}
		pthread_mutex_lock(&j->mu);
		while (!j->kicked && !j->stopping)
			pthread_cond_wait(&j->cv, &j->mu);
		pthread_mutex_unlock(&j->mu);
	}
	return NULL;
}

/* Deletions asked for (DeleteEnvironment, DeleteKey) whose window has
 * ended become final: an environment's DEK versions are destroyed (its
 * backups' with them), a key's token object is destroyed. Each under its
 * tenant's lock, so an undelete either came first or is refused. */
static unsigned
deletions_sweep(struct broker *b, int64_t now)
{
	struct store_env *v = NULL;
	struct store_key *k = NULL;
	char asked[40], reason[256];
	size_t n = 0, i;
	unsigned done = 0;
	enum kb_err e;

	if ((e = store_envs_delete_due(b->store, now, &v, &n, SWEEP_BATCH))
	    != KB_OK) {
		log_error("sweep: %s", kb_err_msg(e));
		return 0;
	}
	for (i = 0; i < n; i++) {
		broker_tenant_lock(b, v[i].tenant_id);
		e = store_env_delete_finish(
		    b->store, v[i].tenant_id, v[i].name, now);
		broker_tenant_unlock(b, v[i].tenant_id);
		if (e != KB_OK) {
			log_error("sweep: deleting %s/%s: %s", v[i].tenant_id,
			    v[i].name, kb_err_msg(e));
			kb_err_clear();
			continue;
		}
		done++;
		kb_time_format(v[i].delete_request_us, asked, sizeof(asked));
		snprintf(reason, sizeof(reason),
		    "deletion asked at %s is final: its data keys and its "
		    "backups' are destroyed",
		    asked);
		(void)broker_audit_system(b, "env.delete.final", v[i].tenant_id,
		    v[i].name, v[i].key_id, "ok", reason);
		log_warn("environment %s/%s DELETED: its deletion (asked at "
		         "%s) is final; its data keys are destroyed",
		    v[i].tenant_id, v[i].name, asked);
	}
	free(v);
	n = 0;
	if ((e = store_keys_delete_due(b->store, now, &k, &n, SWEEP_BATCH))
	    != KB_OK) {
		log_error("sweep: %s", kb_err_msg(e));
		return done;
	}
	for (i = 0; i < n; i++) {
		/* The record first: a crash before the token work leaves a
		 * key the database calls deleted, which start-up destroys. */
		broker_tenant_lock(b, k[i].tenant_id);
		e = store_key_delete_finish(b->store, k[i].id, now);
		if (e == KB_OK) {
			enum kb_err e2 = hsm_key_destroy(b->hsm, k[i].id);

			if (e2 != KB_OK && e2 != KB_ERR_NOT_FOUND)
				log_error("sweep: key %s: cannot destroy its "
				          "token object now (start-up will): "
				          "%s",
				    k[i].id, kb_err_msg(e2));
			kb_err_clear();
		}
		broker_tenant_unlock(b, k[i].tenant_id);
		if (e != KB_OK) {
			log_error("sweep: deleting key %s: %s", k[i].id,
			    kb_err_msg(e));
			kb_err_clear();
			continue;
		}
		done++;
		kb_time_format(k[i].delete_request_us, asked, sizeof(asked));
		snprintf(reason, sizeof(reason),
		    "deletion asked at %s is final: its token object is "
		    "destroyed",
		    asked);
		(void)broker_audit_system(b, "key.delete.final", k[i].tenant_id,
		    NULL, k[i].id, "ok", reason);
		log_warn("key %s of tenant %s DELETED: its deletion (asked at "
		         "%s) is final; its token object is destroyed",
		    k[i].id, k[i].tenant_id, asked);
	}
	free(k);
	return done;
}

unsigned
jobs_sweep(struct broker *b)
{
	struct store_env *v = NULL;
	size_t n = 0, i;
	unsigned deleted = 0;
	int64_t now = 0;
	enum kb_err e;

	/* Deleting destroys: the mark is stored first, and a forward clock
	 * jump nobody has confirmed deletes nothing (logged there once). */
	e = timemark_may_sweep(b->timemark, &now);
	if (e == KB_ERR_FAILED_PRECONDITION) {
		kb_err_clear();
		return 0;
	}
	if (e != KB_OK) {
		log_error("sweep: %s; nothing deleted", kb_err_msg(e));
		return 0;
	}
	if ((e = store_envs_locked_before(b->store,
	         now - POLICY_LOCKED_RETENTION_US, &v, &n, SWEEP_BATCH))
	    != KB_OK) {
		log_error("sweep: %s", kb_err_msg(e));
		return 0;
	}
	for (i = 0; i < n; i++) {
		char since[40];

		if (!policy_env_expired(v[i].lock_time_us, now))
			continue;
		broker_tenant_lock(b, v[i].tenant_id);
		e = store_env_purge(b->store, v[i].tenant_id, v[i].name, now);
		broker_tenant_unlock(b, v[i].tenant_id);
		if (e != KB_OK) {
			log_error("sweep: deleting %s/%s: %s", v[i].tenant_id,
			    v[i].name, kb_err_msg(e));
			continue;
		}
		deleted++;
		(void)broker_audit_system(b, "sweeper.delete", v[i].tenant_id,
		    v[i].name, v[i].key_id, "ok",
		    "locked for 28 days: data keys "
		    "destroyed");
		log_warn("environment %s/%s DELETED: locked since %s and not "
		         "unlocked within 28 days; its data keys are destroyed",
		    v[i].tenant_id, v[i].name,
		    kb_time_format(v[i].lock_time_us, since, sizeof(since)));
	}
	free(v);
	/* Then the deletions asked for whose window has ended (after the
	 * 28-day rule, which may have deleted some of them already), batch
	 * by batch. */
	while (deletions_sweep(b, now) >= SWEEP_BATCH)
		;
	return deleted;
}

static void *
sweep_main(void *p)
{
	struct jobs *j = p;
	void (*hook)(struct broker *);

	while (!stopping(j)) {
		struct store_lease *l = NULL;
		enum kb_err e;

		/* One broker of several sweeps and schedules rotations; the
		 * others skip this round. */
		e = store_lease_take(j->b->store, STORE_LEASE_SWEEPER, &l);
		if (e == KB_OK) {
			/* Several batches when many expired at once. */
			while (!stopping(j) && jobs_sweep(j->b) == SWEEP_BATCH
			    && store_lease_held(l))
				;
			if (!stopping(j) && store_lease_held(l))
				rotation_check(j->b);
			store_lease_drop(l);
		} else if (e != KB_ERR_FAILED_PRECONDITION) {
			log_error(
			    "taking the sweeper lease: %s", kb_err_msg(e));
		}
		kb_err_clear();
		pthread_mutex_lock(&j->mu);
		hook = j->sweep_hook;
		pthread_mutex_unlock(&j->mu);
		if (hook != NULL && !stopping(j))
			hook(j->b);
		nap(j, j->b->cfg->sweep_interval_s * 1000);
	}
	return NULL;
}

enum kb_err
jobs_start(struct broker *b, struct jobs **out)
{
	pthread_condattr_t ca;
	struct jobs *j;

	*out = NULL;
	if ((j = calloc(1, sizeof(*j))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	j->b = b;
	pthread_mutex_init(&j->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&j->cv, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&j->job_thread, NULL, job_main, j) != 0) {
		jobs_stop(j);
		return kb_errf(KB_ERR_RESOURCE_EXHAUSTED,
		    "cannot start the job "
		    "thread");
	}
	j->job_started = 1;
	if (pthread_create(&j->sweep_thread, NULL, sweep_main, j) != 0) {
		jobs_stop(j);
		return kb_errf(KB_ERR_RESOURCE_EXHAUSTED,
		    "cannot start the "
		    "sweeper thread");
	}
	j->sweep_started = 1;
	*out = j;
	return KB_OK;
}

void
jobs_kick(struct jobs *j)
{
	if (j == NULL)
		return;
	pthread_mutex_lock(&j->mu);
	j->kicked = 1;
	pthread_cond_broadcast(&j->cv);
	pthread_mutex_unlock(&j->mu);
}

void
jobs_sweep_hook_set(struct jobs *j, void (*fn)(struct broker *b))
{
	if (j == NULL)
		return;
	pthread_mutex_lock(&j->mu);
	j->sweep_hook = fn;
	pthread_mutex_unlock(&j->mu);
}

void
jobs_stop(struct jobs *j)
{
	if (j == NULL)
		return;
	pthread_mutex_lock(&j->mu);
	j->stopping = 1;
	pthread_cond_broadcast(&j->cv);
	pthread_mutex_unlock(&j->mu);
	if (j->job_started)
		pthread_join(j->job_thread, NULL);
	if (j->sweep_started)
		pthread_join(j->sweep_thread, NULL);
	pthread_mutex_destroy(&j->mu);
	pthread_cond_destroy(&j->cv);
	free(j);
}
