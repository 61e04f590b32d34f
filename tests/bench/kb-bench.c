/* SPDX-License-Identifier: Apache-2.0 */
/* kb-bench.c: keybroker's performance benchmark. One run, one fresh token:
 * the token's raw ceilings (broker stopped), GetDataKey through gRPC with
 * mutual TLS from C clients (and Python grpc.aio), the audit log's group
 * commit, an activation re-sealing N customer-managed environments, a
 * platform-key rotation re-sealing N platform-managed ones, and the
 * broker's start-up time and peak memory. Prints one table (or JSON).
 * Figures are for people to read: nothing here asserts a timing. */
#include "bench.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "kb_secmem.h"

#ifndef KB_SRC_DIR
#define KB_SRC_DIR "."
#endif
#ifndef KB_BUILD_DIR
#define KB_BUILD_DIR "build"
#endif

#define PYTHON "/usr/bin/python3"
#define READER_PAUSE_S 0.01
#define STALL_S 120 /* a job without progress this long fails */

/* One re-seal job over seeded environments, read meanwhile. */
struct job_run {
	double seed_s;
	uint64_t total, done;
	double secs, rate, other;
	int state; /* 1 running, 2 done, 3 failed */
	char error[256];
	uint64_t rd_calls, rd_errors, rd_mismatch, rd_outage;
	double rd_max_ms, rd_max_at;
	char rd_error[256];
	int killed, resumed;
	uint64_t kill_done, resume_done;
	double restart_ms;
};

struct results {
	struct bench_raw raw;
	struct bench_lat load[BENCH_MAX_POINTS];
	struct bench_lat whoami;
	int have_py;
	double py_rate, py_p50, py_p99, py_max;
	uint64_t py_calls, py_errors;
	unsigned py_inflight, py_channels;
	double start_first_ms, start_n_ms;
	long rss_first_kib, rss_n_kib, hwm_kib;
	struct job_run act; /* ActivateKey over N customer-managed */
	struct job_run rot; /* RotatePlatformKey over N platform-managed */
	int stop_status;
	struct bench_pg pg; /* --postgres */
};

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: kb-bench [--short] [--envs N] [--kill-resume] [--json]\n"
	    "                [--seconds S] [--clients 1,8,64] [--workers N]\n"
	    "                [--set KEY=VALUE]... [--no-python] [--py-channels "
	    "N]\n"
	    "                [--keep] [--postgres [--pg-envs N]]\n"
	    "                [--src DIR] [--build DIR]\n"
	    "\n"
	    "Measure keybroker on a fresh SoftHSMv2 token in a temporary\n"
	    "directory and print one table: raw token ceilings, GetDataKey\n"
	    "through gRPC+mTLS (C clients, Python grpc.aio), audit cost, an\n"
	    "activation re-sealing N environments, a platform-key rotation\n"
	    "re-sealing N more, start-up time and peak RSS.\n"
	    "\n"
	    "  --short        CI mode: ~1 s per point, N=300, no Python "
	    "client\n"
	    "  --envs N       environments re-sealed by the activation, and "
	    "by the\n"
	    "                 platform-key rotation (10000)\n"
	    "  --kill-resume  SIGKILL the broker mid-job (each job), restart, "
	    "check\n"
	    "                 it ends\n"
	    "  --json         print the figures as one JSON document\n"
	    "  --seconds S    measured seconds per load point (5; --short 1)\n"
	    "  --clients L    C client counts, comma-separated (1,8,64)\n"
	    "  --workers N    override keybrokerd's workers setting\n"
	    "  --set K=V      any other keybrokerd setting (repeatable)\n"
	    "  --no-python    skip the Python grpc.aio client\n"
	    "  --py-channels N  channels the Python client's calls share (1)\n"
	    "  --keep         keep the temporary directory (token, db, logs)\n"
	    "  --postgres     also PostgreSQL (a server of its own, by\n"
	    "                 tests/pg/kbt-pg.sh): GetDataKey on one broker "
	    "next\n"
	    "                 to SQLite, 2 and 3 brokers on one database, a\n"
	    "                 SIGKILL under client failover, a job taken over\n"
	    "                 (40 to 60 s more; not in the CI run, --short)\n"
	    "  --pg-envs N    environments the taken-over job re-seals (4000)\n"
	    "  --src DIR      repository (deploy/ scripts; default %s)\n"
	    "  --build DIR    build tree with keybrokerd (default %s)\n"
	    "\n"
	    "Exit status: 0 when the table was produced, 1 when a phase "
	    "failed,\n"
	    "2 on a usage error.\n",
	    KB_SRC_DIR, KB_BUILD_DIR);
}

static int
parse_clients(const char *s, struct bench_opts *o)
{
	char *end;
	unsigned long v;

	o->npoints = 0;
	while (*s != '\0' && o->npoints < BENCH_MAX_POINTS) {
		v = strtoul(s, &end, 10);
		if (end == s || v == 0 || v > 1024)
			return -1;
		o->clients[o->npoints++] = (unsigned)v;
		s = *end == ',' ? end + 1 : end;
		if (*end != ',' && *end != '\0')
			return -1;
	}
	return o->npoints > 0 && *s == '\0' ? 0 : -1;
}

/* ---- set-up: token, PKI, configuration (deploy/ scripts) ---- */

static int
script(const struct bench *b, const char *name, const char *a1, const char *a2,
    const char *a3, const char *out)
{
	char path[700];
	char *argv[] = {path, (char *)a1, (char *)a2, (char *)a3, NULL};

	snprintf(path, sizeof(path), "%s/deploy/%s", b->o->src, name);
	return bench_run(argv, out);
}

/* The settings keybrokerd will use, read back from the configuration. */
static void
read_conf(struct bench *b)
{
	char line[512], k[64];
	unsigned v;
	FILE *f;

	b->workers = 32; /* keybrokerd's default (config.c) */
	b->hsm_sessions = 8;
	b->rewrap_threads = 2;
	if ((f = fopen(b->conf, "r")) == NULL)
		return;
	while (fgets(line, sizeof(line), f) != NULL) {
		if (sscanf(line, " %63[a-z_0-9] = %u", k, &v) != 2)
			continue;
		if (strcmp(k, "workers") == 0)
			b->workers = v;
		else if (strcmp(k, "hsm_sessions") == 0)
			b->hsm_sessions = v;
		else if (strcmp(k, "rewrap_threads") == 0)
			b->rewrap_threads = v;
	}
	fclose(f);
}

/* The sampled seeded environments of s->tenant and their certificates'
 * paths (made by setup). */
static void
samples_name(struct bench_samples *s, unsigned envs, const char *pki)
{
	unsigned k;

	for (k = 0; k < BENCH_SAMPLES; k++) {
		bench_seed_name(
		    bench_sample_index(k, envs), s->env[k], sizeof(s->env[k]));
		snprintf(s->crt[k], sizeof(s->crt[k]), "%s/service-%s-%s.crt",
		    pki, s->tenant, s->env[k]);
		snprintf(s->key[k], sizeof(s->key[k]), "%s/service-%s-%s.key",
		    pki, s->tenant, s->env[k]);
	}
}

static enum kb_err
setup(struct bench *b)
{
	const struct bench_opts *o = b->o;
	const char *tmp = getenv("TMPDIR");
	char workers[40], pki[300];
	unsigned k;

	snprintf(b->dir, sizeof(b->dir), "%s/kb-bench.XXXXXX",
	    tmp != NULL && *tmp ? tmp : "/tmp");
	if (mkdtemp(b->dir) == NULL)
		return kb_errf(
		    KB_ERR_IO, "mkdtemp %s: %s", b->dir, strerror(errno));
	setenv("KB_VAR", b->dir, 1);
	snprintf(pki, sizeof(pki), "%s/pki", b->dir);
	snprintf(b->conf, sizeof(b->conf), "%s/keybroker.conf", b->dir);
	snprintf(b->log, sizeof(b->log), "%s/keybrokerd.log", b->dir);
	snprintf(b->db, sizeof(b->db), "%s/keybroker.db", b->dir);
	snprintf(b->pin, sizeof(b->pin), "%s/token/pin", b->dir);
	snprintf(b->softhsm_conf, sizeof(b->softhsm_conf),
	    "%s/token/softhsm2.conf", b->dir);
	snprintf(b->ca, sizeof(b->ca), "%s/ca.crt", pki);
	snprintf(b->admin_crt, sizeof(b->admin_crt), "%s/admin.crt", pki);
	snprintf(b->admin_key, sizeof(b->admin_key), "%s/admin.key", pki);
	snprintf(b->tenant, sizeof(b->tenant), "bench");
	snprintf(b->rot_tenant, sizeof(b->rot_tenant), "bench-platform");
	b->act.tenant = b->tenant;
	b->rot.tenant = b->rot_tenant;
	for (k = 0; k < BENCH_LOAD_ENVS; k++) {
		snprintf(b->load_env[k], sizeof(b->load_env[k]), "load-%u", k);
		snprintf(b->load_crt[k], sizeof(b->load_crt[k]),
		    "%s/service-%s-%s.crt", pki, b->tenant, b->load_env[k]);
		snprintf(b->load_key[k], sizeof(b->load_key[k]),
		    "%s/service-%s-%s.key", pki, b->tenant, b->load_env[k]);
	}
	samples_name(&b->act, o->envs, pki);
	samples_name(&b->rot, o->envs, pki);
	/* The module inside this process reads the same token. */
	setenv("SOFTHSM2_CONF", b->softhsm_conf, 1);

	fprintf(stderr, "kb-bench: token, PKI and configuration in %s...\n",
	    b->dir);
	if (script(b, "token.sh", b->dir, NULL, NULL, NULL) != 0
	    || script(b, "pki.sh", "init", NULL, NULL, NULL) != 0)
		return kb_errf(KB_ERR_IO, "deploy/token.sh or pki.sh failed");
	for (k = 0; k < BENCH_LOAD_ENVS; k++)
		if (script(
		        b, "pki.sh", "service", b->tenant, b->load_env[k], NULL)
		    != 0)
			return kb_errf(
			    KB_ERR_IO, "deploy/pki.sh service failed");
	for (k = 0; k < 2 * BENCH_SAMPLES; k++) {
		const struct bench_samples *sm =
		    k < BENCH_SAMPLES ? &b->act : &b->rot;

		if (script(b, "pki.sh", "service", sm->tenant,
		        sm->env[k % BENCH_SAMPLES], NULL)
		    != 0)
			return kb_errf(
			    KB_ERR_IO, "deploy/pki.sh service failed");
	}
	if ((b->port = bench_free_port()) <= 0)
		return kb_errf(KB_ERR_IO, "no free TCP port");
	snprintf(b->addr, sizeof(b->addr), "127.0.0.1:%d", b->port);
	setenv("KB_LISTEN", b->addr, 1);
	/* The production defaults of deploy/keybroker.conf.example, unless
	 * --workers or --set say otherwise. */
	{
		char path[700];
		char *argv[5 + BENCH_MAX_SETS];
		unsigned n = 0, i;

		snprintf(path, sizeof(path), "%s/deploy/conf.sh", o->src);
		argv[n++] = path;
		argv[n++] = b->dir;
		snprintf(workers, sizeof(workers), "workers=%u", o->workers);
		if (o->workers)
			argv[n++] = workers;
		/* Metrics off unless --set metrics_listen=... turns them on:
		 * the default port may be taken by a broker of run.sh. */
		argv[n++] = (char *)"metrics_listen=";
		for (i = 0; i < o->nsets; i++)
			argv[n++] = (char *)o->sets[i];
		argv[n] = NULL;
		if (bench_run(argv, b->conf) != 0)
			return kb_errf(KB_ERR_IO, "deploy/conf.sh failed");
	}
	read_conf(b);
	return KB_OK;
}

static void
remove_dir(const char *dir)
{
	char *argv[] = {(char *)"/bin/rm", (char *)"-rf", (char *)dir, NULL};

	(void)bench_run(argv, NULL);
}

/* ---- the Python load client ---- */

static double
json_num(const char *buf, const char *key)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	if ((p = strstr(buf, pat)) == NULL)
		return -1;
	return strtod(p + strlen(pat), NULL);
}

static void
run_python(struct bench *b, struct results *r, unsigned inflight)
{
	char script_path[700], out[700], stubs[700], secs[32], warm[32], n[16];
	char proto[700], buf[4096], chans[16];
	char *argv[] = {(char *)PYTHON, script_path, (char *)"--json",
	    (char *)"--addr", b->addr, (char *)"--ca", b->ca, (char *)"--cert",
	    b->load_crt[0], (char *)"--key", b->load_key[0], (char *)"--tenant",
	    b->tenant, (char *)"--env", b->load_env[0], (char *)"--inflight", n,
	    (char *)"--seconds", secs, (char *)"--warmup", warm,
	    (char *)"--stubs", stubs, (char *)"--proto", proto,
	    (char *)"--channels", chans, NULL};
	size_t len;
	FILE *f;

	snprintf(script_path, sizeof(script_path), "%s/tests/bench/pyload.py",
	    b->o->src);
	snprintf(out, sizeof(out), "%s/pyload.json", b->dir);
	snprintf(stubs, sizeof(stubs), "%s/pystubs", b->dir);
	snprintf(proto, sizeof(proto), "%s/proto", b->o->src);
	snprintf(secs, sizeof(secs), "%g", b->o->point_s);
	snprintf(warm, sizeof(warm), "%g", b->o->warm_s);
	snprintf(n, sizeof(n), "%u", inflight);
	snprintf(chans, sizeof(chans), "%u", b->o->py_channels);
	fprintf(stderr,
	    "kb-bench: GetDataKey, Python grpc.aio, %u in "
	    "flight...\n",
	    inflight);
	if (access(PYTHON, X_OK) != 0 || bench_run(argv, out) != 0) {
		fprintf(stderr,
		    "kb-bench: the Python client did not run (see "
		    "%s/setup.log); its row is left out\n",
		    b->dir);
		return;
	}
	if ((f = fopen(out, "r")) == NULL)
		return;
	len = fread(buf, 1, sizeof(buf) - 1, f);
	buf[len] = '\0';
	fclose(f);
	if ((r->py_rate = json_num(buf, "rate")) < 0)
		return;
	r->have_py = 1;
	r->py_calls = (uint64_t)json_num(buf, "calls");
	r->py_errors = (uint64_t)json_num(buf, "errors");
	r->py_p50 = json_num(buf, "p50_ms");
	r->py_p99 = json_num(buf, "p99_ms");
	r->py_max = json_num(buf, "max_ms");
	r->py_inflight = inflight;
	r->py_channels = (unsigned)json_num(buf, "channels");
}

/* ---- the re-seal jobs ---- */

enum job_kind {
	JOB_ACTIVATE, /* ActivateKey K1 over the tenant's N environments */
	JOB_ROTATE, /* RotatePlatformKey over every platform-managed one */
};

/* Start the job, follow it to its end with a reader checking the sampled
 * DEKs (and, with --kill-resume, SIGKILL the broker at 30 % and restart
 * it); the figures into *r. */
static enum kb_err
run_job(struct bench *b, enum job_kind kind, struct job_run *r)
{
	const struct bench_opts *o = b->o;
	const char *name = kind == JOB_ACTIVATE ? "activation" : "rotation";
	struct bench_reader *rd = NULL;
	struct kb_client *ac = NULL;
	struct bench_cpu_mark m0, m1;
	char job[80];
	uint64_t done = 0, total = 0, prev;
	double t0, last_progress, last_print = 0,
	                          poll = o->envs <= 1000 ? 0.01 : 0.05;
	int state = 0;
	enum kb_err e;

	if ((e = bench_reader_start(b, kind == JOB_ACTIVATE ? &b->act : &b->rot,
	         READER_PAUSE_S, &rd))
	    != KB_OK)
		return e;
	if (kind == JOB_ACTIVATE)
		fprintf(stderr,
		    "kb-bench: ActivateKey %s: re-sealing %u "
		    "environments from %s...\n",
		    b->k1, o->envs, b->k0);
	else
		fprintf(stderr,
		    "kb-bench: RotatePlatformKey: re-sealing %u "
		    "platform-managed environments (and the load ones)...\n",
		    o->envs);
	t0 = bench_now();
	bench_cpu_mark(&m0, b->pid);
	e = kind == JOB_ACTIVATE ? bench_activate(b, job, &r->total)
	                         : bench_rotate(b, job, &r->total);
	if (e != KB_OK)
		goto out;
	last_progress = bench_now();
	for (;;) {
		prev = done;
		e = bench_job_get(b, &ac, job, &state, &done, &total, r->error);
		if (e == KB_OK && state != 1)
			break;
		if (e != KB_OK && !r->killed)
			goto out;
		if (e == KB_OK && r->killed && !r->resumed) {
			/* The first answer after the restart: progress was
			 * kept (resumed, not started over). */
			r->resumed = 1;
			r->resume_done = done;
		}
		if (e == KB_OK && done != prev)
			last_progress = bench_now();
		if (bench_now() - last_progress > STALL_S) {
			e = kb_errf(KB_ERR_DEADLINE,
			    "job %s made no progress for "
			    "%d s (%llu of %llu)",
			    job, STALL_S, (unsigned long long)done,
			    (unsigned long long)total);
			goto out;
		}
		if (o->kill_resume && !r->killed && e == KB_OK
		    && done * 10 >= total * 3) {
			/* A crash mid-job: no drain, no final checkpoint. */
			r->killed = 1;
			r->kill_done = done;
			fprintf(stderr,
			    "kb-bench: SIGKILL keybrokerd at %llu of "
			    "%llu (%s); restarting...\n",
			    (unsigned long long)done, (unsigned long long)total,
			    name);
			bench_reader_outage(rd, 1);
			bench_broker_kill(b);
			kb_client_close(ac);
			ac = NULL;
			e = bench_broker_start(b, &r->restart_ms);
			bench_reader_outage(rd, 0);
			if (e != KB_OK)
				goto out;
			continue;
		}
		if (bench_now() - last_print >= 10) {
			last_print = bench_now();
			if (t0 + 1 < last_print)
				fprintf(stderr,
				    "kb-bench: job %s: %llu of %llu\n", job,
				    (unsigned long long)done,
				    (unsigned long long)total);
		}
		bench_sleep(poll);
	}
	r->secs = bench_now() - t0;
	bench_cpu_mark(&m1, b->pid);
	r->other = r->killed ? -1 : bench_cpu_other(&m0, &m1, NULL, NULL);
	r->state = state;
	r->done = done;
	r->rate = r->secs > 0 ? (double)total / r->secs : 0;
	e = KB_OK;
out:
	kb_client_close(ac);
	bench_reader_stop(rd, &r->rd_calls, &r->rd_errors, &r->rd_mismatch,
	    &r->rd_outage, &r->rd_max_ms, &r->rd_max_at, r->rd_error,
	    sizeof(r->rd_error));
	return e;
}

/* What a finished job must show: done, progress kept across a kill, and
 * every DEK read meanwhile the one seeded. */
static enum kb_err
job_check(const char *name, const struct job_run *r)
{
	if (r->state != 2)
		return kb_errf(KB_ERR_INTERNAL, "the %s job did not finish: %s",
		    name, r->error);
	if (r->killed && r->resume_done < r->kill_done)
		return kb_errf(KB_ERR_INTERNAL,
		    "after the restart the %s job reported %llu done, fewer "
		    "than the %llu seen before the kill",
		    name, (unsigned long long)r->resume_done,
		    (unsigned long long)r->kill_done);
	if (r->rd_mismatch > 0)
		return kb_errf(KB_ERR_CORRUPT,
		    "%llu GetDataKey answers during the %s returned another "
		    "DEK than the one seeded",
		    (unsigned long long)r->rd_mismatch, name);
	return KB_OK;
}

/* ---- output ---- */

static void
machine(char *cpu, size_t clen, double *mem_gib)
{
	char line[256];
	FILE *f;

	snprintf(cpu, clen, "?");
	*mem_gib = 0;
	if ((f = fopen("/proc/cpuinfo", "r")) != NULL) {
		while (fgets(line, sizeof(line), f) != NULL) {
			char *p = strchr(line, ':');

			if (strncmp(line, "model name", 10) == 0 && p != NULL) {
				p += 2;
				p[strcspn(p, "\n")] = '\0';
				snprintf(cpu, clen, "%s", p);
				break;
			}
		}
		fclose(f);
	}
	if ((f = fopen("/proc/meminfo", "r")) != NULL) {
		long kib;

		if (fscanf(f, "MemTotal: %ld kB", &kib) == 1)
			*mem_gib = (double)kib / 1048576.0;
		fclose(f);
	}
}

/* The raw ceiling a GetDataKey point is compared with: one thread for one
 * client, else the two cores' worth (2 threads). */
static const struct bench_lat *
ceiling(const struct results *r, unsigned threads)
{
	return threads == 1 ? &r->raw.decrypt[0] : &r->raw.decrypt[1];
}

static double
ratio(double a, double b)
{
	return b > 0 ? a / b : 0;
}

/* CPU microseconds per operation from a share of all cores. */
static double
cpu_us(const struct bench_lat *l, double share, long ncpu)
{
	return l->calls > 0
	    ? share * (double)ncpu * l->secs * 1e6 / (double)l->calls
	    : 0;
}

/* One row; negative numbers print as blanks. */
static void
row(const char *sec, const char *what, unsigned thr, double rate, double p50,
    double p99, double max, long long errors, double other, const char *note)
{
	char c[6][24];
	double v[4] = {rate, p50, p99, max};
	int i;

	for (i = 0; i < 4; i++) {
		if (v[i] < 0)
			c[i][0] = '\0';
		else
			snprintf(
			    c[i], sizeof(c[i]), i == 0 ? "%.0f" : "%.2f", v[i]);
	}
	if (errors < 0)
		c[4][0] = '\0';
	else
		snprintf(c[4], sizeof(c[4]), "%lld", errors);
	if (other < 0)
		c[5][0] = '\0';
	else
		snprintf(c[5], sizeof(c[5]), "%.0f%%", other * 100);
	printf("%-2s %-47s %4u %8s %7s %7s %7s %6s %6s  %s\n", sec, what, thr,
	    c[0], c[1], c[2], c[3], c[4], c[5], note);
}

/* The lines under the table about one job. */
static void
job_lines(const char *name, const char *what, const char *call,
    const struct job_run *j)
{
	printf("4  %s: %llu %s in %.2f s (job %s, done %llu of %llu);\n   "
	       "seeding them took %.2f s (SQL, broker stopped); %llu "
	       "GetDataKey answers checked meanwhile,\n   %llu wrong, the "
	       "slowest (%.0f ms) %.1f s after %s\n",
	    name, (unsigned long long)j->total, what, j->secs,
	    j->state == 2       ? "DONE"
	        : j->state == 3 ? "FAILED"
	                        : "not done",
	    (unsigned long long)j->done, (unsigned long long)j->total,
	    j->seed_s, (unsigned long long)j->rd_calls,
	    (unsigned long long)j->rd_mismatch, j->rd_max_ms, j->rd_max_at,
	    call);
	if (j->killed)
		printf("4  kill-resume (%s): SIGKILL at %llu of %llu done, "
		       "restarted in %.0f ms, resumed at %llu,\n   job %s "
		       "(%llu of "
		       "%llu); %llu reader calls failed while it was down\n",
		    name, (unsigned long long)j->kill_done,
		    (unsigned long long)j->total, j->restart_ms,
		    (unsigned long long)j->resume_done,
		    j->state == 2 ? "finished" : "DID NOT FINISH",
		    (unsigned long long)j->done, (unsigned long long)j->total,
		    (unsigned long long)j->rd_outage);
}

static void json_lat(
    const char *name, const struct bench_lat *l, const char *tail);

/* The PostgreSQL section's rows (--postgres). */
static void
pg_rows(const struct bench_pg *g)
{
	char note[128], what[64];
	unsigned i;

	if (!g->ran)
		return;
	row("P", "GetDataKey, SQLite, 1 broker (again, same run)", g->clients,
	    g->sqlite.rate, g->sqlite.p50_ms, g->sqlite.p99_ms,
	    g->sqlite.max_ms, (long long)g->sqlite.errors, g->sqlite.other, "");
	snprintf(note, sizeof(note), "%.2f of SQLite@%u",
	    ratio(g->one.rate, g->sqlite.rate), g->clients);
	row("P", "GetDataKey, PostgreSQL, 1 broker", g->clients, g->one.rate,
	    g->one.p50_ms, g->one.p99_ms, g->one.max_ms,
	    (long long)g->one.errors, g->one.other, note);
	for (i = 0; i < BENCH_PG_BROKERS - 1; i++) {
		const struct bench_lat *l = &g->multi[i];

		snprintf(what, sizeof(what),
		    "GetDataKey, PostgreSQL, %u brokers (all calls)", i + 2);
		snprintf(note, sizeof(note), "%.2f of 1 broker",
		    ratio(l->rate, g->one.rate));
		row("P", what, g->clients, l->rate, l->p50_ms, l->p99_ms,
		    l->max_ms, (long long)l->errors, l->other, note);
	}
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

/* Median and max of the failover gaps, in ms. */
static void
pg_gaps(const struct bench_pg *g, double *median, double *max)
{
	double v[BENCH_PG_KILLS];
	unsigned n = g->kills;

	*median = *max = 0;
	if (n == 0)
		return;
	memcpy(v, g->gap_ms, n * sizeof(v[0]));
	qsort(v, n, sizeof(v[0]), cmp_double);
	*median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
	*max = v[n - 1];
}

/* The lines under the table about the PostgreSQL section. */
static void
pg_lines(const struct bench_pg *g)
{
	double med, max;
	unsigned i;

	if (!g->ran)
		return;
	pg_gaps(g, &med, &max);
	printf("P  %s (tests/pg/kbt-pg.sh: unix socket, fsync on) and a token "
	       "of its own; the %u clients\n   spread evenly over the "
	       "brokers, a channel each; other%% includes PostgreSQL and the "
	       "other brokers\n",
	    g->server, g->clients);
	printf("P  SIGKILL of the broker a failover client (the client "
	       "library, 3 addresses) is on, to\n   its next successful "
	       "GetDataKey:");
	for (i = 0; i < g->kills; i++)
		printf("%s %.0f ms", i ? "," : "", g->gap_ms[i]);
	printf(" (median %.0f, max %.0f);\n   %llu calls, %llu failed%s%s\n",
	    med, max, (unsigned long long)g->loop_calls,
	    (unsigned long long)g->loop_errors, g->loop_error[0] ? ": " : "",
	    g->loop_error);
	printf("P  job take-over: %u environments made through the API in "
	       "%.1f s (%.0f/s); RotatePlatformKey\n   (%llu data keys) run by "
	       "broker %d, SIGKILLed at %llu done (%.2f s in); progress again "
	       "(%llu done,\n   broker %d) %.2f s after the kill; DONE %.2f s "
	       "after RotatePlatformKey\n",
	    g->envs, g->create_s, g->create_s > 0 ? g->envs / g->create_s : 0,
	    (unsigned long long)g->job_total, g->runner,
	    (unsigned long long)g->kill_done, g->kill_at_s,
	    (unsigned long long)g->resume_done, g->taker, g->takeover_s,
	    g->job_s);
}

static void
pg_targets(const struct bench_pg *g)
{
	double med, max, x;

	if (!g->ran)
		return;
	pg_gaps(g, &med, &max);
	x = ratio(g->one.rate, g->sqlite.rate);
	printf("  PostgreSQL GetDataKey >= 0.8 of SQLite at %u clients: %.3f  "
	       "%s\n",
	    g->clients, x, x >= 0.8 ? "met" : "MISSED");
	printf("  SIGKILL to the next successful call (client failover) < 1 "
	       "s: max %.0f ms  %s\n",
	    max, g->kills > 0 && max < 1000 ? "met" : "MISSED");
	printf("  SIGKILL of the job runner to progress again < 10 s: %.2f s  "
	       "%s\n",
	    g->takeover_s, g->takeover_s < 10 ? "met" : "MISSED");
}

static void
pg_json(const struct bench_pg *g)
{
	double med, max;
	unsigned i;

	if (!g->ran)
		return;
	pg_gaps(g, &med, &max);
	printf("  \"postgres\": {\"server\": \"%s\", \"clients\": %u,\n",
	    g->server, g->clients);
	json_lat("sqlite_one_broker", &g->sqlite, ",");
	json_lat("one_broker", &g->one, ",");
	json_lat("two_brokers", &g->multi[0], ",");
	json_lat("three_brokers", &g->multi[1], ",");
	printf("    \"ratio_to_sqlite\": %.3f,\n    \"failover_gaps_ms\": [",
	    ratio(g->one.rate, g->sqlite.rate));
	for (i = 0; i < g->kills; i++)
		printf("%s%.1f", i ? ", " : "", g->gap_ms[i]);
	printf("], \"failover_max_ms\": %.1f, \"failover_loop_calls\": %llu, "
	       "\"failover_loop_errors\": %llu,\n",
	    max, (unsigned long long)g->loop_calls,
	    (unsigned long long)g->loop_errors);
	printf("    \"takeover\": {\"envs\": %u, \"create_secs\": %.2f, "
	       "\"total\": %llu, \"runner\": %d, \"kill_done\": %llu, "
	       "\"kill_at_secs\": %.3f, \"taker\": %d, \"resume_done\": "
	       "%llu, \"takeover_secs\": %.3f, \"job_secs\": %.3f}\n  },\n",
	    g->envs, g->create_s, (unsigned long long)g->job_total, g->runner,
	    (unsigned long long)g->kill_done, g->kill_at_s, g->taker,
	    (unsigned long long)g->resume_done, g->takeover_s, g->job_s);
}

static void
print_table(const struct bench *b, const struct results *r, double run_s)
{
	const struct bench_opts *o = b->o;
	const struct bench_raw *w = &r->raw;
	char cpu[128], date[40], note[128], what[64];
	double mem;
	unsigned i;
	time_t now = time(NULL);
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

	machine(cpu, sizeof(cpu), &mem);
	strftime(date, sizeof(date), "%Y-%m-%d %H:%M UTC", gmtime(&now));
	printf("kb-bench (keybroker %s%s), %s\n", KB_VERSION,
	    o->short_mode ? ", --short" : "", date);
	printf("machine: %ld CPUs (%s), %.1f GiB RAM; token: %s, RSA-2048, "
	       "%s\n",
	    ncpu, cpu, mem, b->token_info, w->alg);
	printf("NOTE: the load generator, keybrokerd and the token share these "
	       "%ld cores; other%% is the CPU\nother processes took during the "
	       "point (of all cores).\n",
	    ncpu);
	printf(
	    "keybrokerd: workers=%u hsm_sessions=%u rewrap_threads=%u; "
	    "every GetDataKey is audited\n(a durable group commit before the "
	    "answer). %.1f s per point after %.1f s of warm-up.\n\n",
	    b->workers, b->hsm_sessions, b->rewrap_threads, o->point_s,
	    o->warm_s);

	printf("%-2s %-47s %4s %8s %7s %7s %7s %6s %6s  %s\n", "#",
	    "measurement", "thr", "per s", "p50 ms", "p99 ms", "max ms",
	    "errors", "other", "ratio");
	for (i = 0; i < 3; i++) {
		const struct bench_lat *l = &w->decrypt[i];

		row("1",
		    i == 0       ? "raw RSA-OAEP decrypt, in-process (hsm/)"
		        : i == 1 ? "raw RSA-OAEP decrypt (threads = cores)"
		                 : "raw RSA-OAEP decrypt (threads = workers)",
		    l->threads, l->rate, l->p50_ms, l->p99_ms, l->max_ms, -1,
		    l->other, "");
	}
	row("1", "raw re-wrap: decrypt + encrypt (rewrap_threads)",
	    w->rewrap.threads, w->rewrap.rate, -1, -1, -1, -1, w->rewrap.other,
	    "");
	for (i = 0; i < o->npoints; i++) {
		const struct bench_lat *l = &r->load[i];

		snprintf(note, sizeof(note), "%.2f of raw@%u",
		    ratio(l->rate, ceiling(r, l->threads)->rate),
		    ceiling(r, l->threads)->threads);
		row("2",
		    i == 0 ? "GetDataKey, C clients, gRPC+mTLS, audit on"
		           : "GetDataKey, C clients (a channel each)",
		    l->threads, l->rate, l->p50_ms, l->p99_ms, l->max_ms,
		    (long long)l->errors, l->other, note);
	}
	snprintf(note, sizeof(note), "no token, no audit");
	row("2", "WhoAmI, C clients (gRPC+mTLS+dispatch only)",
	    r->whoami.threads, r->whoami.rate, r->whoami.p50_ms,
	    r->whoami.p99_ms, r->whoami.max_ms, (long long)r->whoami.errors,
	    r->whoami.other, note);
	if (r->have_py) {
		double c = 0;

		for (i = 0; i < o->npoints; i++)
			if (r->load[i].threads == r->py_inflight)
				c = r->load[i].rate;
		if (c > 0)
			snprintf(note, sizeof(note), "%.2f of C@%u",
			    ratio(r->py_rate, c), r->py_inflight);
		else
			snprintf(note, sizeof(note), "%.2f of raw@2",
			    ratio(r->py_rate, w->decrypt[1].rate));
		snprintf(what, sizeof(what),
		    "GetDataKey, Python grpc.aio, %u "
		    "channel(s)",
		    r->py_channels);
		row("2", what, r->py_inflight, r->py_rate, r->py_p50, r->py_p99,
		    r->py_max, (long long)r->py_errors, -1, note);
	}
	snprintf(note, sizeof(note), "%.1f events/commit", w->audit_per_commit);
	row("A", "audit append alone (group commit + fsync)", w->audit.threads,
	    w->audit.rate, w->audit.p50_ms, w->audit.p99_ms, w->audit.max_ms,
	    -1, w->audit.other, note);
	row("A", "audit append, one appender (= commits/s)", 1,
	    w->audit_serial.rate, w->audit_serial.p50_ms,
	    w->audit_serial.p99_ms, w->audit_serial.max_ms, -1,
	    w->audit_serial.other, "");
	snprintf(note, sizeof(note), "%.2f of raw@%u",
	    ratio(w->worker_audit.rate, w->decrypt[2].rate), w->worker_threads);
	row("A", "decrypt + audit append (worker loop, no gRPC)",
	    w->worker_audit.threads, w->worker_audit.rate, -1, -1, -1, -1,
	    w->worker_audit.other, note);
	snprintf(
	    what, sizeof(what), "activation re-wrap, N=%u (envs/s)", o->envs);
	snprintf(note, sizeof(note), "%.2f of raw re-wrap",
	    ratio(r->act.rate, w->rewrap.rate));
	row("4", what, b->rewrap_threads, r->act.rate, -1, -1, -1, -1,
	    r->act.other, note);
	snprintf(note, sizeof(note), "wrong DEK %llu",
	    (unsigned long long)r->act.rd_mismatch);
	row("4", "GetDataKey on 4 seeded envs during the job", 1,
	    ratio((double)r->act.rd_calls, r->act.secs), -1, -1,
	    r->act.rd_max_ms, (long long)r->act.rd_errors, -1, note);
	snprintf(what, sizeof(what), "platform-key rotation, N=%u (envs/s)",
	    o->envs);
	snprintf(note, sizeof(note), "%.2f s", r->rot.secs);
	row("4", what, b->rewrap_threads, r->rot.rate, -1, -1, -1, -1,
	    r->rot.other, note);
	snprintf(note, sizeof(note), "wrong DEK %llu",
	    (unsigned long long)r->rot.rd_mismatch);
	row("4", "GetDataKey on 4 seeded envs during the rotation", 1,
	    ratio((double)r->rot.rd_calls, r->rot.secs), -1, -1,
	    r->rot.rd_max_ms, (long long)r->rot.rd_errors, -1, note);
	pg_rows(&r->pg);
	printf("\n");
	for (i = 0; i < o->npoints; i++) {
		const struct bench_lat *l = &r->load[i];

		printf(
		    "2  %2u clients: CPU keybrokerd %3.0f%%, C clients "
		    "%3.0f%%, "
		    "others %3.0f%% of %ld cores; per call keybrokerd %.0f us, "
		    "client %.0f us\n",
		    l->threads, l->broker_cpu * 100, l->self_cpu * 100,
		    l->other * 100, ncpu, cpu_us(l, l->broker_cpu, ncpu),
		    cpu_us(l, l->self_cpu, ncpu));
	}
	{
		/* Where keybrokerd's CPU per GetDataKey goes, from parts
		 * measured apart: the token (raw decrypt), gRPC+TLS+dispatch
		 * (WhoAmI), the audit log (appends alone); the rest is the
		 * SQLite read, hand-offs between threads and the like. */
		const struct bench_lat *top = &r->load[o->npoints - 1];
		double total = cpu_us(top, top->broker_cpu, ncpu);
		double tok =
		    cpu_us(&w->decrypt[1], w->decrypt[1].self_cpu, ncpu);
		double rpc = cpu_us(&r->whoami, r->whoami.broker_cpu, ncpu);
		double aud = cpu_us(&w->audit, w->audit.self_cpu, ncpu);

		printf(
		    "2  keybrokerd CPU per GetDataKey at %u clients: %.0f us = "
		    "token %.0f (raw decrypt) + gRPC/TLS/dispatch %.0f\n   "
		    "(WhoAmI) "
		    "+ audit %.0f (appends alone) + rest %.0f (SQLite read, "
		    "thread "
		    "hand-offs...)\n",
		    top->threads, total, tok, rpc, aud,
		    total - tok - rpc - aud);
	}
	job_lines(
	    "activation", "environments re-wrapped", "ActivateKey", &r->act);
	job_lines("rotation", "platform-managed data keys re-sealed",
	    "RotatePlatformKey", &r->rot);
	printf(
	    "5  start-up (exec to first SERVING health): fresh token %.0f ms "
	    "(creates its keys);\n   with N=%u environments stored %.0f ms\n",
	    r->start_first_ms, o->envs, r->start_n_ms);
	printf("5  RSS right after start-up: fresh %.1f MiB, with N=%u %.1f "
	       "MiB; peak RSS (VmHWM) of the\n   job runs (the rotation's "
	       "broker holds 2N) %.1f MiB\n",
	    r->rss_first_kib / 1024.0, o->envs, r->rss_n_kib / 1024.0,
	    r->hwm_kib / 1024.0);
	if (r->act.rd_error[0] != '\0')
		printf("   first reader error (activation): %s\n",
		    r->act.rd_error);
	if (r->rot.rd_error[0] != '\0')
		printf(
		    "   first reader error (rotation): %s\n", r->rot.rd_error);
	for (i = 0; i < o->npoints; i++)
		if (r->load[i].first_error[0] != '\0')
			printf("   first error at %u clients: %s\n",
			    r->load[i].threads, r->load[i].first_error);
	pg_lines(&r->pg);
	printf("\ntargets (read, not asserted):\n");
	for (i = 0; i < o->npoints; i++) {
		const struct bench_lat *l = &r->load[i];
		double x = ratio(l->rate, ceiling(r, l->threads)->rate);

		if (l->threads != 64)
			continue;
		/* Issue 10 (envelope v2: an AES-GCM open in the token per
		 * call): 3 times the raw RSA-OAEP ceiling, and 0.8 of WhoAmI
		 * through the same broker. */
		printf(
		    "  GetDataKey >= 3 times raw RSA-OAEP@2 at 64 clients, 0 "
		    "errors: %.2f, %llu errors  %s\n",
		    x, (unsigned long long)l->errors,
		    x >= 3 && l->errors == 0 ? "met" : "MISSED");
		printf(
		    "  GetDataKey >= 0.8 of WhoAmI at 64 clients: %.2f  %s\n",
		    ratio(l->rate, r->whoami.rate),
		    l->rate >= 0.8 * r->whoami.rate ? "met" : "MISSED");
		printf("  p99 < 25 ms at 64 clients: %.2f ms  %s\n", l->p99_ms,
		    l->p99_ms < 25 ? "met" : "MISSED");
		if (r->have_py)
			printf("  Python within 10%% of C at 64: %.2f  %s\n",
			    ratio(r->py_rate, l->rate),
			    r->py_rate >= 0.9 * l->rate ? "met" : "MISSED");
	}
	printf("  activation over 1,000,000 in < 120 s: %.0f s at this rate  "
	       "%s (N=%u here)\n",
	    r->act.rate > 0 ? 1e6 / r->act.rate : 0,
	    r->act.rate > 1e6 / 120 ? "met" : "MISSED", o->envs);
	printf("  platform-key rotation over 1,000,000 in < 120 s: %.0f s at "
	       "this rate  %s (N=%llu here)\n",
	    r->rot.rate > 0 ? 1e6 / r->rot.rate : 0,
	    r->rot.rate > 1e6 / 120 ? "met" : "MISSED",
	    (unsigned long long)r->rot.total);
	printf(
	    "  peak RSS < 150 MiB: %.1f MiB  %s; start-up < 3 s: %.0f ms  %s "
	    "(targets for N=1,000,000; here N=%u)\n",
	    r->hwm_kib / 1024.0, r->hwm_kib < 150 * 1024 ? "met" : "MISSED",
	    r->start_n_ms, r->start_n_ms < 3000 ? "met" : "MISSED", o->envs);
	pg_targets(&r->pg);
	printf("\nwhole run %.0f s\n", run_s);
}

static void
json_lat(const char *name, const struct bench_lat *l, const char *tail)
{
	printf(
	    "    \"%s\": {\"threads\": %u, \"rate\": %.1f, \"p50_ms\": %.3f, "
	    "\"p99_ms\": %.3f, \"max_ms\": %.3f, \"calls\": %llu, \"errors\": "
	    "%llu, \"other_cpu\": %.3f}%s\n",
	    name, l->threads, l->rate, l->p50_ms, l->p99_ms, l->max_ms,
	    (unsigned long long)l->calls, (unsigned long long)l->errors,
	    l->other, tail);
}

/* One job's object (and a comma: more follows it). */
static void
json_job(const char *key, unsigned envs, const struct job_run *j, double rat)
{
	printf("  \"%s\": {\"envs\": %u, \"total\": %llu, \"done\": "
	       "%llu, \"state\": \"%s\", \"secs\": %.3f, \"rate\": %.1f, ",
	    key, envs, (unsigned long long)j->total,
	    (unsigned long long)j->done,
	    j->state == 2       ? "done"
	        : j->state == 3 ? "failed"
	                        : "running",
	    j->secs, j->rate);
	if (rat >= 0)
		printf("\"ratio\": %.3f, ", rat);
	printf("\"other_cpu\": %.3f, \"seed_secs\": %.3f,\n"
	       "    \"reader_calls\": %llu, \"reader_errors\": %llu, "
	       "\"reader_wrong_dek\": %llu, \"reader_max_ms\": %.3f, "
	       "\"killed\": %s, \"kill_done\": %llu, \"resume_done\": %llu, "
	       "\"restart_ms\": %.1f, \"outage_errors\": %llu},\n",
	    j->other, j->seed_s, (unsigned long long)j->rd_calls,
	    (unsigned long long)j->rd_errors,
	    (unsigned long long)j->rd_mismatch, j->rd_max_ms,
	    j->killed ? "true" : "false", (unsigned long long)j->kill_done,
	    (unsigned long long)j->resume_done, j->restart_ms,
	    (unsigned long long)j->rd_outage);
}

static void
print_json(const struct bench *b, const struct results *r, double run_s)
{
	const struct bench_opts *o = b->o;
	const struct bench_raw *w = &r->raw;
	unsigned i;

	printf("{\n  \"version\": \"%s\", \"short\": %s, \"time\": %lld, "
	       "\"cpus\": %ld, \"wrap_alg\": \"%s\",\n",
	    KB_VERSION, o->short_mode ? "true" : "false", (long long)time(NULL),
	    sysconf(_SC_NPROCESSORS_ONLN), w->alg);
	printf("  \"broker\": {\"workers\": %u, \"hsm_sessions\": %u, "
	       "\"rewrap_threads\": %u},\n",
	    b->workers, b->hsm_sessions, b->rewrap_threads);
	printf("  \"raw\": {\n");
	json_lat("decrypt_1", &w->decrypt[0], ",");
	json_lat("decrypt_2", &w->decrypt[1], ",");
	json_lat("decrypt_workers", &w->decrypt[2], ",");
	json_lat("rewrap", &w->rewrap, "");
	printf("  },\n  \"get_data_key\": [");
	for (i = 0; i < o->npoints; i++) {
		const struct bench_lat *l = &r->load[i];

		printf(
		    "%s\n    {\"client\": \"c\", \"threads\": %u, \"rate\": "
		    "%.1f, \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": "
		    "%.3f, "
		    "\"calls\": %llu, \"errors\": %llu, \"other_cpu\": %.3f, "
		    "\"broker_cpu\": %.3f, \"client_cpu\": %.3f, \"ratio\": "
		    "%.3f, "
		    "\"ratio_to\": \"raw@%u\"}",
		    i ? "," : "", l->threads, l->rate, l->p50_ms, l->p99_ms,
		    l->max_ms, (unsigned long long)l->calls,
		    (unsigned long long)l->errors, l->other, l->broker_cpu,
		    l->self_cpu, ratio(l->rate, ceiling(r, l->threads)->rate),
		    ceiling(r, l->threads)->threads);
	}
	if (r->have_py)
		printf(
		    ",\n    {\"client\": \"python-grpc-aio\", \"in_flight\": "
		    "%u, \"channels\": %u, \"rate\": %.1f, \"p50_ms\": %.3f, "
		    "\"p99_ms\": %.3f, \"max_ms\": %.3f, \"calls\": %llu, "
		    "\"errors\": %llu}",
		    r->py_inflight, r->py_channels, r->py_rate, r->py_p50,
		    r->py_p99, r->py_max, (unsigned long long)r->py_calls,
		    (unsigned long long)r->py_errors);
	printf("\n  ],\n");
	printf("  \"who_am_i\": {\"threads\": %u, \"rate\": %.1f, \"p50_ms\": "
	       "%.3f, \"p99_ms\": %.3f, \"broker_cpu\": %.3f, \"client_cpu\": "
	       "%.3f},\n",
	    r->whoami.threads, r->whoami.rate, r->whoami.p50_ms,
	    r->whoami.p99_ms, r->whoami.broker_cpu, r->whoami.self_cpu);
	printf("  \"audit\": {\n");
	json_lat("alone", &w->audit, ",");
	json_lat("one_appender", &w->audit_serial, ",");
	json_lat("decrypt_and_append", &w->worker_audit, ",");
	printf("    \"events_per_commit\": %.2f\n  },\n", w->audit_per_commit);
	json_job(
	    "activation", o->envs, &r->act, ratio(r->act.rate, w->rewrap.rate));
	json_job("platform_rotation", o->envs, &r->rot, -1);
	printf("  \"startup_ms\": {\"fresh\": %.1f, \"with_envs\": %.1f},\n",
	    r->start_first_ms, r->start_n_ms);
	printf("  \"rss_kib\": {\"after_fresh_start\": %ld, \"after_start_"
	       "with_envs\": %ld, \"peak\": %ld},\n",
	    r->rss_first_kib, r->rss_n_kib, r->hwm_kib);
	pg_json(&r->pg);
	printf("  \"run_secs\": %.1f\n}\n", run_s);
}

/* ---- main ---- */

static enum kb_err
bench_all(struct bench *b, struct results *r)
{
	const struct bench_opts *o = b->o;
	struct bench_seed_spec seed;
	EVP_PKEY *pub = NULL;
	double start_ms;
	long hwm;
	unsigned i;
	int st;
	enum kb_err e;

	/* 1: the ceilings, before keybrokerd exists. */
	r->raw.worker_threads = b->workers;
	r->raw.rewrap_threads = b->rewrap_threads;
	r->raw.audit_threads = 64;
	if ((e = bench_raw_run(b, &r->raw)) != KB_OK)
		return kb_err_wrap(e, "raw ceilings");

	/* 2: GetDataKey through the production daemon. */
	fprintf(stderr, "kb-bench: starting keybrokerd (fresh token)...\n");
	if ((e = bench_broker_start(b, &r->start_first_ms)) != KB_OK)
		return e;
	r->rss_first_kib = bench_proc_kib(b->pid, "VmRSS");
	if ((e = bench_admin_setup(b, &pub)) != KB_OK)
		goto out;
	for (i = 0; i < o->npoints; i++) {
		fprintf(stderr, "kb-bench: GetDataKey, %u C client(s)...\n",
		    o->clients[i]);
		if ((e = bench_load_run(b, BENCH_GET_DATA_KEY, o->clients[i],
		         o->point_s, &r->load[i]))
		    != KB_OK)
			goto out;
	}
	/* The broker's cost without token or audit, for "where the time
	 * goes". */
	fprintf(stderr, "kb-bench: WhoAmI, 64 C clients...\n");
	if ((e = bench_load_run(b, BENCH_WHO_AM_I, 64, o->point_s, &r->whoami))
	    != KB_OK)
		goto out;
	if (!o->no_python)
		run_python(b, r, 64);

	/* 4 and 5: N environments, stored while the broker is down. */
	if ((st = bench_broker_stop(b)) != 0) {
		e = kb_errf(
		    KB_ERR_INTERNAL, "keybrokerd exited %d on SIGTERM", st);
		goto out;
	}
	fprintf(stderr,
	    "kb-bench: seeding %u environments (broker "
	    "stopped)...\n",
	    o->envs);
	seed = (struct bench_seed_spec){.tenant = b->tenant,
	    .tenant_key = b->k0,
	    .wrap_alg = b->wrap_alg,
	    .n = o->envs,
	    .sample_dek = b->act.dek};
	if ((e = bench_seed(b->db, b->pin, &seed, &r->act.seed_s)) != KB_OK)
		goto out;
	fprintf(stderr,
	    "kb-bench: starting keybrokerd with %u environments "
	    "stored...\n",
	    o->envs);
	if ((e = bench_broker_start(b, &r->start_n_ms)) != KB_OK)
		goto out;
	r->rss_n_kib = bench_proc_kib(b->pid, "VmRSS");
	if ((e = run_job(b, JOB_ACTIVATE, &r->act)) != KB_OK
	    || (e = job_check("activation", &r->act)) != KB_OK)
		goto out;
	r->hwm_kib = bench_proc_kib(b->pid, "VmHWM");

	/* 4: N platform-managed environments of another tenant, stored while
	 * the broker is down again, and the platform key rotated. */
	if ((st = bench_broker_stop(b)) != 0) {
		e = kb_errf(
		    KB_ERR_INTERNAL, "keybrokerd exited %d on SIGTERM", st);
		goto out;
	}
	fprintf(stderr,
	    "kb-bench: seeding %u platform-managed environments (broker "
	    "stopped)...\n",
	    o->envs);
	seed = (struct bench_seed_spec){.tenant = b->rot_tenant,
	    .platform = 1,
	    .n = o->envs,
	    .sample_dek = b->rot.dek};
	if ((e = bench_seed(b->db, b->pin, &seed, &r->rot.seed_s)) != KB_OK)
		goto out;
	if ((e = bench_broker_start(b, &start_ms)) != KB_OK)
		goto out;
	if ((e = run_job(b, JOB_ROTATE, &r->rot)) != KB_OK)
		goto out;
	hwm = bench_proc_kib(b->pid, "VmHWM");
	if (hwm > r->hwm_kib)
		r->hwm_kib = hwm;
	r->stop_status = bench_broker_stop(b);
	if (r->stop_status != 0)
		e = kb_errf(KB_ERR_INTERNAL, "keybrokerd exited %d on SIGTERM",
		    r->stop_status);
	else
		e = job_check("rotation", &r->rot);
	if (e == KB_OK && o->postgres && (e = bench_pg_run(b, &r->pg)) != KB_OK)
		e = kb_err_wrap(e, "the PostgreSQL section");
out:
	EVP_PKEY_free(pub);
	if (b->pid > 0)
		bench_broker_kill(b);
	return e;
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"short", no_argument, NULL, 's'},
	    {"envs", required_argument, NULL, 'n'},
	    {"kill-resume", no_argument, NULL, 'k'},
	    {"json", no_argument, NULL, 'j'},
	    {"seconds", required_argument, NULL, 'S'},
	    {"clients", required_argument, NULL, 'c'},
	    {"workers", required_argument, NULL, 'w'},
	    {"no-python", no_argument, NULL, 'P'},
	    {"py-channels", required_argument, NULL, 'C'},
	    {"set", required_argument, NULL, 'E'},
	    {"keep", no_argument, NULL, 'K'},
	    {"postgres", no_argument, NULL, 'G'},
	    {"pg-envs", required_argument, NULL, 'N'},
	    {"src", required_argument, NULL, 'r'},
	    {"build", required_argument, NULL, 'b'},
	    {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
	struct bench_opts o;
	struct bench b;
	struct results *r;
	double t0 = bench_now(), secs = 0;
	int opt, envs_set = 0;
	unsigned long v;
	char *end;
	enum kb_err e;

	memset(&o, 0, sizeof(o));
	o.envs = 10000;
	o.pg_envs = 4000;
	o.py_channels = 1;
	o.src = getenv("KB_SRC") ? getenv("KB_SRC") : KB_SRC_DIR;
	o.build = getenv("KB_BUILD") ? getenv("KB_BUILD") : KB_BUILD_DIR;
	parse_clients("1,8,64", &o);
	while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (opt) {
		case 's': o.short_mode = 1; break;
		case 'k': o.kill_resume = 1; break;
		case 'j': o.json = 1; break;
		case 'P': o.no_python = 1; break;
		case 'K': o.keep = 1; break;
		case 'G': o.postgres = 1; break;
		case 'r': o.src = optarg; break;
		case 'E':
			if (o.nsets == BENCH_MAX_SETS
			    || strchr(optarg, '=') == NULL) {
				fprintf(stderr,
				    "kb-bench: --set KEY=VALUE, at most "
				    "%d times\n",
				    BENCH_MAX_SETS);
				return 2;
			}
			o.sets[o.nsets++] = optarg;
			break;
		case 'b': o.build = optarg; break;
		case 'n':
		case 'w':
		case 'C':
		case 'N':
			errno = 0;
			v = strtoul(optarg, &end, 10);
			if (*end != '\0' || errno != 0 || v == 0
			    || v > (opt == 'n' || opt == 'N' ? 100000000ul
			                                     : 256ul)) {
				fprintf(stderr,
				    "kb-bench: --%s: bad number \"%s\"\n",
				    opt == 'n'       ? "envs"
				        : opt == 'N' ? "pg-envs"
				        : opt == 'w' ? "workers"
				                     : "py-channels",
				    optarg);
				return 2;
			}
			if (opt == 'n') {
				o.envs = (unsigned)v;
				envs_set = 1;
			} else if (opt == 'N') {
				o.pg_envs = (unsigned)v;
			} else if (opt == 'w') {
				o.workers = (unsigned)v;
			} else {
				o.py_channels = (unsigned)v;
			}
			break;
		case 'S':
			secs = strtod(optarg, &end);
			if (*end != '\0' || secs <= 0 || secs > 3600) {
				fprintf(stderr,
				    "kb-bench: --seconds: bad value "
				    "\"%s\"\n",
				    optarg);
				return 2;
			}
			break;
		case 'c':
			if (parse_clients(optarg, &o) != 0) {
				fprintf(stderr,
				    "kb-bench: --clients: expected up to "
				    "%d numbers like 1,8,64\n",
				    BENCH_MAX_POINTS);
				return 2;
			}
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	if (o.short_mode) {
		o.point_s = 1.0;
		o.warm_s = 0.3;
		o.no_python = 1;
		if (!envs_set)
			o.envs = 300;
	} else {
		o.point_s = 5.0;
		o.warm_s = 1.0;
	}
	if (secs > 0)
		o.point_s = secs;
	if (o.envs < BENCH_SAMPLES) {
		fprintf(stderr, "kb-bench: --envs must be at least %d\n",
		    BENCH_SAMPLES);
		return 2;
	}
	if (o.kill_resume && o.envs < 1000) {
		fprintf(stderr,
		    "kb-bench: --kill-resume needs --envs 1000 or "
		    "more (a job long enough to be killed mid-way)\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);

	memset(&b, 0, sizeof(b));
	b.o = &o;
	if ((r = calloc(1, sizeof(*r))) == NULL)
		return 1;
	if ((e = setup(&b)) == KB_OK)
		e = bench_all(&b, r);
	if (e != KB_OK) {
		fprintf(stderr, "kb-bench: %s\n", kb_err_msg(e));
		fprintf(stderr,
		    "kb-bench: kept %s (keybrokerd.log, setup.log)\n", b.dir);
		free(r);
		return 1;
	}
	if (o.json)
		print_json(&b, r, bench_now() - t0);
	else
		print_table(&b, r, bench_now() - t0);
	fflush(stdout);
	if (o.keep)
		fprintf(stderr, "kb-bench: kept %s\n", b.dir);
	else if (b.dir[0] != '\0')
		remove_dir(b.dir);
	free(r);
	kb_client_global_cleanup();
	return 0;
}
