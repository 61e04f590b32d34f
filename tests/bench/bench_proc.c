/* SPDX-License-Identifier: Apache-2.0 */
/* bench_proc.c: kb-bench's processes (scripts, the broker), clocks and
 * /proc readings. */
#include "bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define START_TIMEOUT_S 60
#define STOP_TIMEOUT_S 30

double
bench_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void
bench_sleep(double s)
{
	struct timespec ts;

	if (s <= 0)
		return;
	ts.tv_sec = (time_t)s;
	ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* posix_spawn: no fork handlers run, so this is safe with gRPC's threads
 * about. stdout to `out` (truncated) or, like stderr, appended to `log`. */
static pid_t
spawn(char *const argv[], const char *out, const char *log)
{
	posix_spawn_file_actions_t fa;
	pid_t pid = 0;
	int rc;

	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	if (out != NULL)
		posix_spawn_file_actions_addopen(
		    &fa, 1, out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	else if (log != NULL)
		posix_spawn_file_actions_addopen(
		    &fa, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0600);
	if (log != NULL)
		posix_spawn_file_actions_addopen(
		    &fa, 2, log, O_WRONLY | O_CREAT | O_APPEND, 0600);
	rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (rc != 0) {
		fprintf(stderr, "kb-bench: cannot run %s: %s\n", argv[0],
		    strerror(rc));
		return -1;
	}
	return pid;
}

static char run_log[600];

int
bench_run(char *const argv[], const char *out_path)
{
	pid_t pid;
	int st;

	if (run_log[0] == '\0' && getenv("KB_VAR") != NULL)
		snprintf(
		    run_log, sizeof(run_log), "%s/setup.log", getenv("KB_VAR"));
	if ((pid = spawn(argv, out_path, run_log[0] ? run_log : NULL)) < 0)
		return -1;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -1;
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "kb-bench: %s failed (status %d); see %s\n",
		    argv[0], WIFEXITED(st) ? WEXITSTATUS(st) : -1, run_log);
		return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
	}
	return 0;
}

int
bench_free_port(void)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	int fd, port = -1;

	if ((fd = socket(AF_INET, SOCK_STREAM, 0)) < 0)
		return -1;
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0
	    && getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
		port = ntohs(sa.sin_port);
	close(fd);
	return port;
}

static int
port_open(int port)
{
	struct sockaddr_in sa;
	int fd, ok;

	if ((fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		return 0;
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
	close(fd);
	return ok;
}

enum kb_err
bench_client(const struct bench *b, const char *crt, const char *key,
    int timeout_ms, struct kb_client **out)
{
	return bench_client_at(b, b->addr, crt, key, timeout_ms, out);
}

enum kb_err
bench_client_at(const struct bench *b, const char *addr, const char *crt,
    const char *key, int timeout_ms, struct kb_client **out)
{
	struct kb_client_opts o;

	memset(&o, 0, sizeof(o));
	o.addr = addr;
	o.cert_file = crt;
	o.key_file = key;
	o.ca_file = b->ca;
	o.timeout_ms = timeout_ms;
	return kb_client_open(&o, out);
}

/* The end of the broker's log, on stderr, when it failed to start. */
static void
print_log_tail(const char *path)
{
	char buf[4096];
	size_t n;
	FILE *f;

	if ((f = fopen(path, "r")) == NULL)
		return;
	if (fseek(f, -(long)sizeof(buf) + 1, SEEK_END) != 0)
		rewind(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	fprintf(stderr, "---- end of %s ----\n%s----\n", path, buf);
}

enum kb_err
bench_broker_start(struct bench *b, double *ms)
{
	char bin[700];
	char *argv[] = {bin, (char *)"--config", b->conf, NULL};
	struct kb_client *c = NULL;
	double t0;
	int st, serving;
	pid_t w;

	snprintf(bin, sizeof(bin), "%s/keybrokerd", b->o->build);
	t0 = bench_now();
	if ((b->pid = spawn(argv, NULL, b->log)) < 0) {
		b->pid = 0;
		return kb_errf(KB_ERR_IO, "cannot start %s", bin);
	}
	/* Poll every 5 ms: first the port (cheap), then a health call on a
	 * fresh channel (a refused channel would back off for a second). */
	while (bench_now() - t0 < START_TIMEOUT_S) {
		if ((w = waitpid(b->pid, &st, WNOHANG)) == b->pid) {
			b->pid = 0;
			print_log_tail(b->log);
			return kb_errf(KB_ERR_UNAVAILABLE,
			    "keybrokerd exited "
			    "(status %d) before answering health",
			    WIFEXITED(st) ? WEXITSTATUS(st)
			                  : 128 + WTERMSIG(st));
		}
		if (port_open(b->port)
		    && bench_client(b, b->admin_crt, b->admin_key, 2000, &c)
		        == KB_OK) {
			serving = 0;
			if (kb_client_health(c, &serving, NULL) == KB_OK
			    && serving == 1) {
				*ms = (bench_now() - t0) * 1000.0;
				kb_client_close(c);
				return KB_OK;
			}
			kb_client_close(c);
			c = NULL;
		}
		bench_sleep(0.005);
	}
	print_log_tail(b->log);
	bench_broker_kill(b);
	return kb_errf(KB_ERR_UNAVAILABLE,
	    "keybrokerd did not answer health "
	    "within %d s",
	    START_TIMEOUT_S);
}

int
bench_broker_stop(struct bench *b)
{
	double t0 = bench_now();
	int st = 0;
	pid_t w;

	if (b->pid <= 0)
		return 0;
	kill(b->pid, SIGTERM);
	while ((w = waitpid(b->pid, &st, WNOHANG)) == 0
	    && bench_now() - t0 < STOP_TIMEOUT_S)
		bench_sleep(0.01);
	if (w == 0) {
		fprintf(stderr,
		    "kb-bench: keybrokerd still running %d s after "
		    "SIGTERM: killing it\n",
		    STOP_TIMEOUT_S);
		kill(b->pid, SIGKILL);
		(void)waitpid(b->pid, &st, 0);
		b->pid = 0;
		return 128 + SIGKILL;
	}
	b->pid = 0;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

void
bench_broker_kill(struct bench *b)
{
	int st;

	if (b->pid <= 0)
		return;
	kill(b->pid, SIGKILL);
	(void)waitpid(b->pid, &st, 0);
	b->pid = 0;
}

long
bench_proc_kib(pid_t pid, const char *field)
{
	char path[64], line[256];
	size_t n = strlen(field);
	long v = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	if ((f = fopen(path, "r")) == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL) {
		if (strncmp(line, field, n) == 0 && line[n] == ':') {
			v = strtol(line + n + 1, NULL, 10);
			break;
		}
	}
	fclose(f);
	return v;
}

/* utime + stime of a process, in clock ticks (0 if unreadable). */
static unsigned long long
proc_ticks(const char *path)
{
	char buf[1024], *p;
	unsigned long long ut = 0, st = 0;
	size_t n;
	FILE *f;

	if ((f = fopen(path, "r")) == NULL)
		return 0;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* Fields after the command name "(...)": state is field 3, utime
	 * 14 and stime 15. */
	if ((p = strrchr(buf, ')')) == NULL
	    || sscanf(p + 2,
	           "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu "
	           "%llu",
	           &ut, &st)
	        != 2)
		return 0;
	return ut + st;
}

void
bench_cpu_mark(struct bench_cpu_mark *m, pid_t broker)
{
	unsigned long long v[10] = {0};
	char path[64];
	FILE *f;

	memset(m, 0, sizeof(*m));
	if ((f = fopen("/proc/stat", "r")) != NULL) {
		if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu",
		        &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7])
		    == 8) {
			/* user nice system idle iowait irq softirq steal */
			m->busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
			m->total = m->busy + v[3] + v[4];
		}
		fclose(f);
	}
	m->self = proc_ticks("/proc/self/stat");
	if (broker > 0) {
		snprintf(path, sizeof(path), "/proc/%d/stat", (int)broker);
		m->broker = proc_ticks(path);
	}
}

double
bench_cpu_other(const struct bench_cpu_mark *a, const struct bench_cpu_mark *b,
    double *self, double *broker)
{
	double busy = (double)(b->busy - a->busy);
	double s = (double)(b->self - a->self);
	double k = (double)(b->broker - a->broker);
	double total = (double)(b->total - a->total);

	if (self != NULL)
		*self = total > 0 ? s / total : 0;
	if (broker != NULL)
		*broker = total > 0 ? k / total : 0;
	if (total <= 0 || busy <= s + k)
		return 0;
	return (busy - s - k) / total;
}
