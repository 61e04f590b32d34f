/* SPDX-License-Identifier: Apache-2.0 */
/* bench.h: what the files of kb-bench share (tests/bench/ only). */
#ifndef KB_BENCH_H
#define KB_BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <openssl/evp.h>

#include "kb_err.h"
#include "kbclient.h"

#define BENCH_SAMPLES 4 /* seeded environments read during the job */
#define BENCH_LOAD_ENVS 4 /* environments the load phases read */
#define BENCH_MAX_POINTS 3 /* client counts in one run */
#define BENCH_MAX_SETS 8 /* --set KEY=VALUE settings */
#define BENCH_PG_BROKERS 3 /* --postgres: brokers on one database */
#define BENCH_PG_KILLS 3 /* --postgres: SIGKILLs under a failover loop */

struct bench_opts {
	int short_mode;
	int json;
	int kill_resume;
	int no_python;
	int keep; /* keep the temporary directory */
	unsigned envs; /* N for the activation re-wrap */
	double point_s; /* measured seconds per load point */
	double warm_s; /* load before each measured window */
	unsigned clients[BENCH_MAX_POINTS];
	unsigned npoints;
	unsigned workers; /* 0 = the configuration's default */
	unsigned py_channels; /* channels of the Python client */
	int postgres; /* --postgres: the PostgreSQL section too */
	unsigned pg_envs; /* environments the take-over job re-seals */
	const char *sets[BENCH_MAX_SETS]; /* --set KEY=VALUE for conf.sh */
	unsigned nsets;
	const char *src; /* repository (deploy/ scripts) */
	const char *build; /* build tree (keybrokerd) */
};

/* Seeded environments read while a job runs (BENCH_SAMPLES of them,
 * spread over the seeded ones): their service certificates, and the DEKs
 * the seeder sealed for them. */
struct bench_samples {
	const char *tenant;
	char env[BENCH_SAMPLES][64];
	char crt[BENCH_SAMPLES][512], key[BENCH_SAMPLES][512];
	uint8_t dek[BENCH_SAMPLES][32];
};

/* Everything about the one broker under test and its files. */
struct bench {
	const struct bench_opts *o;
	char dir[256]; /* the temporary directory (KB_VAR) */
	char conf[512], log[512], db[512], pin[512], softhsm_conf[512];
	char ca[512], admin_crt[512], admin_key[512];
	char load_crt[BENCH_LOAD_ENVS][512], load_key[BENCH_LOAD_ENVS][512];
	char load_env[BENCH_LOAD_ENVS][64];
	struct bench_samples act; /* customer-managed, tenant `tenant` */
	struct bench_samples rot; /* platform-managed, tenant `rot_tenant` */
	char addr[64]; /* "host:port", or a list for a failover client */
	int port;
	/* bench_load_run with several brokers: client i on load_addrs[i %
	 * nload_addrs]; 0 = every client on addr. */
	char load_addrs[BENCH_PG_BROKERS][64];
	unsigned nload_addrs;
	pid_t pid; /* the broker, 0 when not running */
	unsigned workers, rewrap_threads, hsm_sessions;
	char tenant[64];
	char rot_tenant[64]; /* platform-managed environments only */
	char k0[80], k1[80]; /* tenant keys: seeded under K0, activate K1 */
	char wrap_alg[32];
	char token_info[160];
};

/* Latency and rate of one measured window. */
struct bench_lat {
	unsigned threads;
	double secs;
	uint64_t calls, errors;
	double rate; /* calls per second */
	double p50_ms, p99_ms, max_ms;
	double other; /* CPU share of other processes, 0..1 */
	double self_cpu, broker_cpu; /* ... of kb-bench, of keybrokerd */
	char first_error[256];
};

/* A point in time for bench_cpu_other(). */
struct bench_cpu_mark {
	unsigned long long busy; /* the machine's busy ticks */
	unsigned long long self; /* ticks of kb-bench */
	unsigned long long broker; /* ticks of keybrokerd */
	unsigned long long total; /* all ticks (busy + idle) */
};

/* Latencies of one thread, in microseconds. */
struct bench_vec {
	uint32_t *us;
	size_t n, cap;
};

/* ---- bench_proc.c: processes, files, clocks ---- */

double bench_now(void); /* monotonic seconds */
void bench_sleep(double s);
/* Run argv (argv[0] a path) with stdout to out_path (NULL: our stderr);
 * returns its exit status, or -1 if it could not run. */
int bench_run(char *const argv[], const char *out_path);
/* Start the broker; *ms gets the time from exec to the first SERVING
 * health answer. KB_OK, or the error with the end of its log printed. */
enum kb_err bench_broker_start(struct bench *b, double *ms);
/* SIGTERM and wait: its exit status (0 expected). */
int bench_broker_stop(struct bench *b);
void bench_broker_kill(struct bench *b);
/* A "Name:   123 kB" field of /proc/PID/status in KiB, -1 if unreadable. */
long bench_proc_kib(pid_t pid, const char *field);
/* A client for cert/key (paths) against the broker (b->addr). */
enum kb_err bench_client(const struct bench *b, const char *crt,
    const char *key, int timeout_ms, struct kb_client **out);
/* The same against addr ("host:port" or a list of them). */
enum kb_err bench_client_at(const struct bench *b, const char *addr,
    const char *crt, const char *key, int timeout_ms, struct kb_client **out);
int bench_free_port(void);
/* Sample the machine's CPU ticks and ours (this process and `broker`,
 * 0 for none). */
void bench_cpu_mark(struct bench_cpu_mark *m, pid_t broker);
/* The share of all CPUs that other processes used between a and b; *self
 * and *broker (may be NULL) get kb-bench's and keybrokerd's shares. */
double bench_cpu_other(const struct bench_cpu_mark *a,
    const struct bench_cpu_mark *b, double *self, double *broker);

/* ---- bench_raw.c: in-process ceilings through hsm/ (broker stopped) ---- */

struct bench_raw {
	struct bench_lat decrypt[3]; /* 1, 2 and `workers` threads */
	struct bench_lat rewrap; /* decrypt+encrypt, rewrap threads */
	unsigned rewrap_threads;
	/* Audit group commit alone, and the broker's worker loop emulated. */
	unsigned audit_threads;
	struct bench_lat audit; /* audit_threads appending */
	double audit_per_commit; /* events per WAL sync */
	struct bench_lat audit_serial; /* one appender: commits/s */
	struct bench_lat worker_audit; /* decrypt + append, workers threads */
	unsigned worker_threads;
	char alg[32];
};

enum kb_err bench_raw_run(struct bench *b, struct bench_raw *r);

/* The SQLite VFS that counts syncs (commits): tests/unit/kbt_vfs.h. */
#include "kbt_vfs.h"

/* ---- bench_load.c: GetDataKey load through gRPC and admin calls ---- */

void bench_vec_add(struct bench_vec *v, double secs);
/* p50, p99 and max of all the vectors into `out` (and frees them). */
void bench_vec_stats(struct bench_vec *v, unsigned nv, struct bench_lat *out);

enum bench_call {
	BENCH_GET_DATA_KEY, /* the load environments, round robin */
	BENCH_WHO_AM_I, /* no token, no audit: gRPC+TLS+dispatch */
};

/* `threads` clients (own channel each) calling for o->warm_s + secs
 * seconds; the window's figures into *out. */
enum kb_err bench_load_run(struct bench *b, enum bench_call what,
    unsigned threads, double secs, struct bench_lat *out);

/* The admin set-up: tenants, load environments, keys K0 and K1; *pub gets
 * K0's public key (from its .pfx). */
enum kb_err bench_admin_setup(struct bench *b, EVP_PKEY **pub);
/* ActivateKey K1; *job_id (80 bytes) and *total set. */
enum kb_err bench_activate(struct bench *b, char *job_id, uint64_t *total);
/* RotatePlatformKey; *job_id (80 bytes) and *total set. */
enum kb_err bench_rotate(struct bench *b, char *job_id, uint64_t *total);
/* GetJob: state (1 running, 2 done, 3 failed), done, total; err (256).
 * *c is an admin client, opened when NULL and closed (NULL) on failure. */
enum kb_err bench_job_get(struct bench *b, struct kb_client **c,
    const char *job_id, int *state, uint64_t *done, uint64_t *total, char *err);

/* A GetDataKey loop on the sampled seeded environments while the job runs:
 * every answer is compared with the DEK seeded. *max_at: seconds from the
 * start to the slowest answer. */
struct bench_reader;
enum kb_err bench_reader_start(struct bench *b, const struct bench_samples *s,
    double pause_s, struct bench_reader **out);
/* While set, failures are counted apart (the broker is known down). */
void bench_reader_outage(struct bench_reader *r, int down);
void bench_reader_stop(struct bench_reader *r, uint64_t *calls,
    uint64_t *errors, uint64_t *mismatches, uint64_t *outage_errors,
    double *max_ms, double *max_at, char *first_error, size_t len);

/* ---- bench_seed.c: environments straight into the database ---- */

/* What bench_seed writes: n environments of an existing tenant, named by
 * bench_seed_name, each with DEK version 1. */
struct bench_seed_spec {
	const char *tenant;
	int platform; /* platform-managed, under the active platform key */
	/* Customer-managed: sealed under a new KEK made under this tenant
	 * key (wrap_alg: the token's RSA-OAEP choice, from WhoAmI). */
	const char *tenant_key, *wrap_alg;
	unsigned n;
	uint8_t (*sample_dek)[32]; /* BENCH_SAMPLES plaintext DEKs, or NULL */
	FILE *deks_out; /* "NAME BASE64" line per DEK (secret!), or NULL */
};

/* Insert the environments of `s` into the database at db_path, in one
 * transaction, sealing each DEK in the token whose PIN file is `pin`
 * (SOFTHSM2_CONF names the token); the broker must be stopped. */
enum kb_err bench_seed(const char *db_path, const char *pin,
    const struct bench_seed_spec *s, double *secs);
/* Seeded environment i's name ("s-0000042"). */
void bench_seed_name(unsigned i, char *buf, size_t len);
/* Which seeded environment is sample k of BENCH_SAMPLES (spread over n). */
unsigned bench_sample_index(unsigned k, unsigned n);

/* ---- bench_pg.c: PostgreSQL (--postgres) ---- */

/* What the PostgreSQL section measured. */
struct bench_pg {
	int ran;
	char server[64]; /* "PostgreSQL 15.x" */
	/* GetDataKey at `clients`: the SQLite broker again, right before one
	 * broker on PostgreSQL; then 2 and 3 brokers on the one database,
	 * the clients spread over them (multi[0]: 2 brokers). */
	unsigned clients;
	struct bench_lat sqlite, one, multi[BENCH_PG_BROKERS - 1];
	/* SIGKILL of the broker a failover client (the client library, all
	 * three addresses) is on, to that client's next successful call. */
	unsigned kills;
	double gap_ms[BENCH_PG_KILLS];
	uint64_t loop_calls, loop_errors;
	char loop_error[256];
	/* A platform-key rotation over `envs` environments (made through the
	 * API): SIGKILL of the broker running it, to the job's next progress
	 * seen through another broker. */
	unsigned envs;
	double create_s; /* making the environments */
	uint64_t job_total, kill_done, resume_done;
	double kill_at_s; /* from RotatePlatformKey to the kill */
	double takeover_s; /* from the kill to progress again */
	double job_s; /* RotatePlatformKey to DONE */
	int job_state; /* 2 done */
	int runner, taker; /* 1-based: the broker that ran it, that took over */
};

/* The PostgreSQL section: a server of its own (tests/pg/kbt-pg.sh) and a
 * token of its own in b->dir, brokers configured as b's but with
 * database = the server; b's broker (stopped) is started again for the
 * SQLite figure. Everything it started is stopped before it returns. */
enum kb_err bench_pg_run(struct bench *b, struct bench_pg *r);

#endif /* KB_BENCH_H */
