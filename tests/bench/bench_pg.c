/* SPDX-License-Identifier: Apache-2.0 */
/* bench_pg.c: kb-bench's PostgreSQL section (--postgres): GetDataKey on one
 * broker with its database in PostgreSQL next to the same broker on
 * SQLite, then two and three brokers on the one database (the clients
 * spread over them), the client library's failover after a SIGKILL, and a
 * re-seal job taken over by another broker when the one running it is
 * killed. The server is a throwaway one of tests/pg/kbt-pg.sh in the
 * benchmark's directory, the brokers share a token of their own there (the
 * SQLite broker's token holds its own audit anchor). */
#include "bench.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kb_err_grpc.h"
#include "kb_secmem.h"
#include "keybroker.pb-c.h"

#define CREATE_THREADS 8
#define FAILOVER_WAIT_S 10 /* a kill's gap longer than this is a failure */
#define STALL_S 60 /* a job without progress this long fails */

struct pg_run {
	struct bench *b;
	struct bench pg[BENCH_PG_BROKERS];
	unsigned started; /* brokers made (configured) so far */
	char dir[300]; /* the server's directory */
	char uri[512];
	int server_up;
};

/* ---- the server ---- */

static enum kb_err
server_start(struct pg_run *p)
{
	struct bench *b = p->b;
	char script[700], out[400], line[600], guard[1400];
	char *argv[] = {
	    (char *)"/bin/bash", script, (char *)"start", p->dir, NULL};
	FILE *f;

	snprintf(script, sizeof(script), "%s/tests/pg/kbt-pg.sh", b->o->src);
	snprintf(p->dir, sizeof(p->dir), "%s/pg", b->dir);
	snprintf(out, sizeof(out), "%s/pg-start.out", b->dir);
	/* The server runs as another user (PostgreSQL refuses root), who must
	 * pass through our directory to its own. */
	if (geteuid() == 0 && chmod(b->dir, 0711) != 0)
		return kb_errf(
		    KB_ERR_IO, "chmod %s: %s", b->dir, strerror(errno));
	/* A guard first: if kb-bench dies (a signal, a crash), the server
	 * is stopped when it notices, as lib.sh's guard does. */
	snprintf(guard, sizeof(guard),
	    "setsid bash -c 'while kill -0 \"$0\" 2>/dev/null; do sleep 1; "
	    "done; [ -d \"$2/data\" ] && bash \"$1\" stop \"$2\"' %d '%s' '%s' "
	    "</dev/null >/dev/null 2>&1 &",
	    (int)getpid(), script, p->dir);
	{
		char *gv[] = {(char *)"/bin/bash", (char *)"-c", guard, NULL};

		if (bench_run(gv, NULL) != 0)
			return kb_errf(
			    KB_ERR_IO, "cannot start the server's guard");
	}
	fprintf(stderr, "kb-bench: starting a PostgreSQL server in %s...\n",
	    p->dir);
	if (bench_run(argv, out) != 0)
		return kb_errf(KB_ERR_UNAVAILABLE,
		    "tests/pg/kbt-pg.sh start %s failed (is the package "
		    "postgresql installed? see %s/setup.log)",
		    p->dir, b->dir);
	p->server_up = 1;
	if ((f = fopen(out, "r")) == NULL)
		return kb_errf(KB_ERR_IO, "%s: %s", out, strerror(errno));
	p->uri[0] = '\0';
	while (fgets(line, sizeof(line), f) != NULL)
		if (strncmp(line, "postgres", 8) == 0) {
			line[strcspn(line, "\n")] = '\0';
			snprintf(p->uri, sizeof(p->uri), "%.500s", line);
		}
	fclose(f);
	if (p->uri[0] == '\0')
		return kb_errf(KB_ERR_INTERNAL,
		    "kbt-pg.sh start printed no URI (see %s)", out);
	/* A broker opens workers + 2 connections for its store and a few
	 * more for the audit log and the locks (40 with workers = 32): three
	 * need more than PostgreSQL's default max_connections (100). Raised,
	 * then the server restarted as its owner. */
	{
		static const char sh[] =
		    "set -e; psql -X -q -h \"$1\" -U postgres -d postgres -c "
		    "\"ALTER SYSTEM SET max_connections = 300\"; "
		    "bash \"$0\" stop \"$1\"; "
		    "cd \"$1\"; as=(); [ \"$(id -u)\" = 0 ] && as=(runuser -u "
		    "\"$(stat -c %U \"$1/data\")\" --); "
		    "bin=/usr/lib/postgresql/15/bin; [ -x \"$bin/pg_ctl\" ] || "
		    "bin=$(pg_config --bindir); \"${as[@]}\" \"$bin/pg_ctl\" "
		    "-D "
		    "\"$1/data\" -l \"$1/server.log\" -w -t 60 start";
		char *rv[] = {(char *)"/bin/bash", (char *)"-c", (char *)sh,
		    script, p->dir, NULL};

		if (bench_run(rv, NULL) != 0)
			return kb_errf(KB_ERR_UNAVAILABLE,
			    "raising max_connections and restarting the "
			    "PostgreSQL server in %s failed (see %s/setup.log)",
			    p->dir, b->dir);
	}
	return KB_OK;
}

static void
server_stop(struct pg_run *p)
{
	char script[700];
	char *argv[] = {
	    (char *)"/bin/bash", script, (char *)"stop", p->dir, NULL};

	if (!p->server_up)
		return;
	snprintf(script, sizeof(script), "%s/tests/pg/kbt-pg.sh", p->b->o->src);
	(void)bench_run(argv, NULL);
	p->server_up = 0;
}

/* "PostgreSQL 15.18", from the first broker's log. */
static void
server_version(const char *log, char *out, size_t len)
{
	static const char pat[] = "audit log: PostgreSQL ";
	char line[1024], *q;
	size_t n;
	FILE *f;

	snprintf(out, len, "PostgreSQL");
	if ((f = fopen(log, "r")) == NULL)
		return;
	while (fgets(line, sizeof(line), f) != NULL)
		if ((q = strstr(line, pat)) != NULL) {
			q += strlen("audit log: ");
			n = strlen("PostgreSQL ")
			    + strcspn(q + strlen("PostgreSQL "), " \"\n");
			snprintf(out, len, "%.*s", (int)n, q);
			break;
		}
	fclose(f);
}

/* ---- the brokers ---- */

/* Broker i (0-based) of the cluster: b's settings, its own port, config
 * and log, the database in the server and the cluster's token. */
static enum kb_err
broker_make(struct pg_run *p, unsigned i)
{
	struct bench *b = p->b, *g = &p->pg[i];
	const struct bench_opts *o = b->o;
	char path[700], db[600], pin[400], sconf[400], workers[40];
	char *argv[8 + BENCH_MAX_SETS];
	unsigned n = 0, k;

	*g = *b;
	g->pid = 0;
	g->nload_addrs = 0;
	if ((g->port = bench_free_port()) <= 0)
		return kb_errf(KB_ERR_IO, "no free TCP port");
	snprintf(g->addr, sizeof(g->addr), "127.0.0.1:%d", g->port);
	snprintf(
	    g->conf, sizeof(g->conf), "%s/pg-broker%u.conf", b->dir, i + 1);
	snprintf(
	    g->log, sizeof(g->log), "%s/keybrokerd-pg%u.log", b->dir, i + 1);
	snprintf(g->softhsm_conf, sizeof(g->softhsm_conf),
	    "%s/pgvar/token/softhsm2.conf", b->dir);
	snprintf(g->pin, sizeof(g->pin), "%s/pgvar/token/pin", b->dir);
	snprintf(path, sizeof(path), "%s/deploy/conf.sh", o->src);
	snprintf(db, sizeof(db), "database=%s", p->uri);
	snprintf(pin, sizeof(pin), "pin_file=%s", g->pin);
	snprintf(sconf, sizeof(sconf), "softhsm2_conf=%s", g->softhsm_conf);
	argv[n++] = path;
	argv[n++] = b->dir; /* the PKI is b's */
	argv[n++] = db;
	argv[n++] = pin;
	argv[n++] = sconf;
	if (o->workers) {
		snprintf(workers, sizeof(workers), "workers=%u", o->workers);
		argv[n++] = workers;
	}
	argv[n++] = (char *)"metrics_listen=";
	for (k = 0; k < o->nsets; k++)
		argv[n++] = (char *)o->sets[k];
	argv[n] = NULL;
	setenv("KB_LISTEN", g->addr, 1);
	if (bench_run(argv, g->conf) != 0)
		return kb_errf(KB_ERR_IO, "deploy/conf.sh failed");
	p->started = i + 1;
	return KB_OK;
}

/* Start broker i; one at a time: two brokers starting at the same moment
 * on one SoftHSMv2 token directory can see no token at all. */
static enum kb_err
broker_up(struct pg_run *p, unsigned i)
{
	double ms;
	enum kb_err e;

	fprintf(stderr, "kb-bench: starting PostgreSQL broker %u on %s...\n",
	    i + 1, p->pg[i].addr);
	if ((e = bench_broker_start(&p->pg[i], &ms)) != KB_OK)
		return kb_err_wrap(e, "PostgreSQL broker %u", i + 1);
	return KB_OK;
}

/* The list "a1,a2,..." of brokers 0..n-1 into g->addr. */
static void
addr_list(const struct pg_run *p, unsigned n, char *out, size_t len)
{
	size_t off = 0;
	unsigned i;

	out[0] = '\0';
	for (i = 0; i < n && off < len; i++)
		off += (size_t)snprintf(
		    out + off, len - off, "%s%s", i ? "," : "", p->pg[i].addr);
}

/* ---- a failover client's loop ---- */

struct loop {
	struct bench *b;
	struct kb_client *c;
	pthread_t th;
	atomic_int stop;
	pthread_mutex_t mu;
	char on[64]; /* the address that answered last */
	double kill_at; /* > 0: a kill whose gap is not measured yet */
	double gap; /* seconds, once measured */
	uint64_t calls, errors;
	char first_error[256];
};

static void *
loop_main(void *arg)
{
	struct loop *l = arg;
	struct bench *b = l->b;
	struct kb_status st;
	uint8_t dek[64];
	size_t len;
	double t1;
	enum kb_err e;

	while (!atomic_load(&l->stop)) {
		e = kb_client_get_data_key(l->c, b->tenant, b->load_env[0], dek,
		    sizeof(dek), &len, NULL, &st);
		t1 = bench_now();
		pthread_mutex_lock(&l->mu);
		if (e == KB_OK && len == 32) {
			l->calls++;
			snprintf(
			    l->on, sizeof(l->on), "%s", kb_client_addr(l->c));
			if (l->kill_at > 0 && t1 > l->kill_at) {
				l->gap = t1 - l->kill_at;
				l->kill_at = 0;
			}
		} else {
			l->errors++;
			if (l->first_error[0] == '\0')
				snprintf(l->first_error, sizeof(l->first_error),
				    "%.250s", st.message);
		}
		pthread_mutex_unlock(&l->mu);
		bench_sleep(0.001);
	}
	kb_wipe(dek, sizeof(dek));
	return NULL;
}

/* SIGKILL the broker the loop's client is on, BENCH_PG_KILLS times, each
 * time restarting it once the client has answered elsewhere. */
static enum kb_err
failover(struct pg_run *p, struct bench_pg *r)
{
	struct bench *g = &p->pg[0];
	char list[64];
	struct loop l;
	unsigned n, i, k;
	double t0;
	enum kb_err e = KB_OK;

	memset(&l, 0, sizeof(l));
	l.b = g;
	pthread_mutex_init(&l.mu, NULL);
	addr_list(p, BENCH_PG_BROKERS, list, sizeof(list));
	if ((e = bench_client_at(
	         g, list, g->load_crt[0], g->load_key[0], 10000, &l.c))
	    != KB_OK)
		goto out;
	if (pthread_create(&l.th, NULL, loop_main, &l) != 0) {
		e = kb_errf(KB_ERR_RESOURCE_EXHAUSTED, "cannot start the loop");
		goto out;
	}
	for (n = 0; n < BENCH_PG_KILLS; n++) {
		char on[64];

		bench_sleep(1.0);
		pthread_mutex_lock(&l.mu);
		snprintf(on, sizeof(on), "%s", l.on);
		pthread_mutex_unlock(&l.mu);
		for (k = BENCH_PG_BROKERS, i = 0; i < BENCH_PG_BROKERS; i++)
			if (strcmp(p->pg[i].addr, on) == 0)
				k = i;
		if (k == BENCH_PG_BROKERS) {
			e = kb_errf(KB_ERR_INTERNAL,
			    "the failover loop answered no call (%s)",
			    l.first_error);
			break;
		}
		fprintf(stderr,
		    "kb-bench: SIGKILL of PostgreSQL broker %u, the one the "
		    "failover client is on...\n",
		    k + 1);
		pthread_mutex_lock(&l.mu);
		l.gap = -1;
		l.kill_at = bench_now();
		pthread_mutex_unlock(&l.mu);
		bench_broker_kill(&p->pg[k]);
		t0 = bench_now();
		for (;;) {
			double gap;

			pthread_mutex_lock(&l.mu);
			gap = l.gap;
			pthread_mutex_unlock(&l.mu);
			if (gap >= 0) {
				r->gap_ms[r->kills++] = gap * 1000.0;
				break;
			}
			if (bench_now() - t0 > FAILOVER_WAIT_S) {
				e = kb_errf(KB_ERR_UNAVAILABLE,
				    "no successful call within %d s of the "
				    "SIGKILL of broker %u (%s)",
				    FAILOVER_WAIT_S, k + 1, l.first_error);
				break;
			}
			bench_sleep(0.002);
		}
		if (e != KB_OK || (e = broker_up(p, k)) != KB_OK)
			break;
	}
	atomic_store(&l.stop, 1);
	pthread_join(l.th, NULL);
	r->loop_calls = l.calls;
	r->loop_errors = l.errors;
	snprintf(r->loop_error, sizeof(r->loop_error), "%s", l.first_error);
out:
	kb_client_close(l.c);
	pthread_mutex_destroy(&l.mu);
	return e;
}

/* ---- the job taken over ---- */

struct creator {
	struct pg_run *p;
	const char *list;
	atomic_uint *next;
	unsigned n;
	enum kb_err err;
	char msg[256];
};

static void *
create_main(void *arg)
{
	struct creator *cr = arg;
	struct bench *g = &cr->p->pg[0];
	Keybroker__V1__CreateEnvironmentRequest req =
	    KEYBROKER__V1__CREATE_ENVIRONMENT_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	struct kb_client *c = NULL;
	struct kb_status st;
	char name[32];
	unsigned i;

	if ((cr->err = bench_client_at(
	         g, cr->list, g->admin_crt, g->admin_key, 60000, &c))
	    != KB_OK) {
		snprintf(cr->msg, sizeof(cr->msg), "%s", kb_err_msg(cr->err));
		return NULL;
	}
	req.tenant_id = g->rot_tenant;
	while ((i = atomic_fetch_add(cr->next, 1)) < cr->n) {
		bench_seed_name(i, name, sizeof(name));
		req.name = name;
		cr->err =
		    kb_client_call(c, KB_METHOD_CREATE_ENVIRONMENT, &req.base,
		        &keybroker__v1__environment__descriptor, &m, &st);
		kb_wire_free(m);
		m = NULL;
		if (cr->err != KB_OK) {
			snprintf(cr->msg, sizeof(cr->msg),
			    "CreateEnvironment %s: %s: %.180s", name,
			    kb_grpc_status_name(st.code), st.message);
			break;
		}
	}
	kb_client_close(c);
	return NULL;
}

/* Which broker's log says it runs job `id` (its "re-sealing" line), other
 * than `not` (-1: any); -1 when none yet. */
static int
job_runner(const struct pg_run *p, const char *id, int not )
{
	char pat[128], line[2048];
	unsigned i;
	FILE *f;
	int found;

	snprintf(pat, sizeof(pat), "job %s: re-sealing", id);
	for (i = 0; i < BENCH_PG_BROKERS; i++) {
		if ((int)i == not || (f = fopen(p->pg[i].log, "r")) == NULL)
			continue;
		found = 0;
		while (!found && fgets(line, sizeof(line), f) != NULL)
			found = strstr(line, pat) != NULL;
		fclose(f);
		if (found)
			return (int)i;
	}
	return -1;
}

static enum kb_err
takeover(struct pg_run *p, struct bench_pg *r)
{
	struct bench *g = &p->pg[0], lb;
	struct creator cr[CREATE_THREADS];
	pthread_t th[CREATE_THREADS];
	struct kb_client *c = NULL;
	atomic_uint next = 0;
	char list[64], job[80], err[256];
	uint64_t done = 0, total = 0, last_done = 0;
	double t0, t_kill = 0, last_progress;
	int state = 0, runner = -1;
	unsigned i, nth = 0;
	enum kb_err e = KB_OK;

	r->envs = g->o->pg_envs;
	addr_list(p, BENCH_PG_BROKERS, list, sizeof(list));
	fprintf(stderr,
	    "kb-bench: making %u platform-managed environments through the "
	    "API (3 brokers)...\n",
	    r->envs);
	t0 = bench_now();
	for (i = 0; i < CREATE_THREADS; i++) {
		cr[i] = (struct creator){
		    .p = p, .list = list, .next = &next, .n = r->envs};
		if (pthread_create(&th[i], NULL, create_main, &cr[i]) != 0)
			break;
		nth++;
	}
	for (i = 0; i < nth; i++)
		pthread_join(th[i], NULL);
	r->create_s = bench_now() - t0;
	for (i = 0; i < nth; i++)
		if (cr[i].err != KB_OK)
			return kb_errf(cr[i].err, "%s", cr[i].msg);
	if (nth < CREATE_THREADS)
		return kb_errf(
		    KB_ERR_RESOURCE_EXHAUSTED, "cannot start threads");

	fprintf(stderr,
	    "kb-bench: RotatePlatformKey over %u environments, "
	    "then SIGKILL of the broker running it...\n",
	    r->envs);
	/* The job's progress through the client library's failover, from
	 * whichever broker answers. */
	lb = *g;
	snprintf(lb.addr, sizeof(lb.addr), "%s", list);
	t0 = bench_now();
	if ((e = bench_rotate(g, job, &r->job_total)) != KB_OK)
		return e;
	last_progress = bench_now();
	for (;;) {
		e = bench_job_get(&lb, &c, job, &state, &done, &total, err);
		if (e != KB_OK) {
			/* The failover client goes on: a call that fails after
			 * trying every broker is the benchmark's failure. */
			kb_client_close(c);
			return kb_err_wrap(e, "GetJob %s", job);
		}
		if (state != 1)
			break;
		if (done != last_done) {
			last_done = done;
			last_progress = bench_now();
		}
		if (t_kill > 0 && r->takeover_s == 0 && done > r->kill_done) {
			r->takeover_s = bench_now() - t_kill;
			r->resume_done = done;
			r->taker = job_runner(p, job, runner) + 1;
		}
		if (runner < 0)
			runner = job_runner(p, job, -1);
		if (t_kill == 0 && runner >= 0 && done * 4 >= total) {
			r->runner = runner + 1;
			r->kill_done = done;
			r->kill_at_s = bench_now() - t0;
			t_kill = bench_now();
			bench_broker_kill(&p->pg[runner]);
			last_progress = t_kill;
		}
		if (bench_now() - last_progress > STALL_S) {
			kb_client_close(c);
			return kb_errf(KB_ERR_DEADLINE,
			    "job %s made no progress for %d s (%llu of %llu)",
			    job, STALL_S, (unsigned long long)done,
			    (unsigned long long)total);
		}
		bench_sleep(0.005);
	}
	kb_client_close(c);
	r->job_s = bench_now() - t0;
	r->job_state = state;
	if (state != 2 || done != total)
		return kb_errf(KB_ERR_INTERNAL,
		    "the rotation job ended %s, %llu of %llu: %s",
		    state == 3 ? "FAILED" : "not done",
		    (unsigned long long)done, (unsigned long long)total, err);
	if (t_kill == 0)
		return kb_errf(KB_ERR_INTERNAL,
		    "the rotation job finished before a quarter of it was "
		    "seen done (runner %d): raise --pg-envs",
		    runner + 1);
	if (r->takeover_s == 0) {
		/* DONE at the first answer after the kill. */
		r->takeover_s = bench_now() - t_kill;
		r->resume_done = done;
		r->taker = job_runner(p, job, runner) + 1;
	}
	return KB_OK;
}

/* ---- the section ---- */

enum kb_err
bench_pg_run(struct bench *b, struct bench_pg *r)
{
	const struct bench_opts *o = b->o;
	struct pg_run *p;
	EVP_PKEY *pub = NULL;
	double ms;
	unsigned i, clients = 64; /* the figure the targets are for */
	int st;
	enum kb_err e;

	if ((p = calloc(1, sizeof(*p))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	p->b = b;
	r->clients = clients;

	/* (a) the SQLite broker once more, right before PostgreSQL. */
	fprintf(stderr,
	    "kb-bench: GetDataKey, SQLite broker again, %u "
	    "clients...\n",
	    clients);
	if ((e = bench_broker_start(b, &ms)) != KB_OK)
		goto out;
	e = bench_load_run(
	    b, BENCH_GET_DATA_KEY, clients, o->point_s, &r->sqlite);
	if ((st = bench_broker_stop(b)) != 0 && e == KB_OK)
		e = kb_errf(
		    KB_ERR_INTERNAL, "keybrokerd exited %d on SIGTERM", st);
	if (e != KB_OK)
		goto out;

	if ((e = server_start(p)) != KB_OK)
		goto out;
	{
		char path[700], var[400];
		char *argv[] = {path, var, NULL};

		snprintf(path, sizeof(path), "%s/deploy/token.sh", o->src);
		snprintf(var, sizeof(var), "%s/pgvar", b->dir);
		if (bench_run(argv, NULL) != 0) {
			e = kb_errf(
			    KB_ERR_IO, "deploy/token.sh %s failed", var);
			goto out;
		}
	}
	for (i = 0; i < BENCH_PG_BROKERS; i++)
		if ((e = broker_make(p, i)) != KB_OK)
			goto out;
	if ((e = broker_up(p, 0)) != KB_OK
	    || (e = bench_admin_setup(&p->pg[0], &pub)) != KB_OK)
		goto out;
	server_version(p->pg[0].log, r->server, sizeof(r->server));
	fprintf(stderr,
	    "kb-bench: GetDataKey, 1 broker on PostgreSQL, %u "
	    "clients...\n",
	    clients);
	if ((e = bench_load_run(
	         &p->pg[0], BENCH_GET_DATA_KEY, clients, o->point_s, &r->one))
	    != KB_OK)
		goto out;

	/* (b) 2 and 3 brokers, the clients spread over them. */
	for (i = 1; i < BENCH_PG_BROKERS; i++) {
		unsigned k;

		if ((e = broker_up(p, i)) != KB_OK)
			goto out;
		p->pg[0].nload_addrs = i + 1;
		for (k = 0; k <= i; k++)
			snprintf(p->pg[0].load_addrs[k],
			    sizeof(p->pg[0].load_addrs[k]), "%s",
			    p->pg[k].addr);
		fprintf(stderr,
		    "kb-bench: GetDataKey, %u brokers on one PostgreSQL "
		    "database, %u clients spread over them...\n",
		    i + 1, clients);
		e = bench_load_run(&p->pg[0], BENCH_GET_DATA_KEY, clients,
		    o->point_s, &r->multi[i - 1]);
		p->pg[0].nload_addrs = 0;
		if (e != KB_OK)
			goto out;
	}

	/* (c) a SIGKILL under the client library's failover, and a job
	 * taken over. */
	if ((e = failover(p, r)) != KB_OK || (e = takeover(p, r)) != KB_OK)
		goto out;
	r->ran = 1;
	e = KB_OK;
out:
	EVP_PKEY_free(pub);
	for (i = 0; i < p->started; i++) {
		if (p->pg[i].pid > 0 && (st = bench_broker_stop(&p->pg[i])) != 0
		    && e == KB_OK)
			e = kb_errf(KB_ERR_INTERNAL,
			    "PostgreSQL broker %u exited %d on SIGTERM", i + 1,
			    st);
	}
	server_stop(p);
	free(p);
	return e;
}
