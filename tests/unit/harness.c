/* SPDX-License-Identifier: Apache-2.0 */
/* harness.c: runner and fixtures for unit tests. */
#include "harness.h"

#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

int kbt_failed_current;

static jmp_buf case_jmp;
static int case_running;
static pthread_t case_thread;

void
kbt_fail_leave(void)
{
	if (case_running && pthread_equal(pthread_self(), case_thread))
		longjmp(case_jmp, 1);
}

/* Run one case; a failed assertion on this thread longjmps back here. The
 * state of an enclosing run (a harness test runs the harness) is kept. */
static void
run_one(kbt_fn fn)
{
	jmp_buf outer;
	int outer_running = case_running;
	pthread_t outer_thread = case_thread;

	memcpy(outer, case_jmp, sizeof(outer));
	case_thread = pthread_self();
	case_running = 1;
	if (setjmp(case_jmp) == 0)
		fn();
	memcpy(case_jmp, outer, sizeof(outer));
	case_running = outer_running;
	case_thread = outer_thread;
}

int
kbt_run(const struct kbt_case *cases, int argc, char **argv)
{
	int passed = 0, failed = 0;
	const struct kbt_case *c;

	for (c = cases; c->name != NULL; c++) {
		if (argc > 1 && strstr(c->name, argv[1]) == NULL)
			continue;
		kbt_failed_current = 0;
		run_one(c->fn);
		if (kbt_failed_current) {
			printf("FAIL %s\n", c->name);
			failed++;
		} else {
			printf("ok   %s\n", c->name);
			passed++;
		}
		fflush(stdout);
	}
	printf("%d passed, %d failed\n", passed, failed);
	return failed == 0 ? 0 : 1;
}

const char *
kbt_tmpdir(void)
{
	static char dir[256];
	const char *base = getenv("TMPDIR");

	snprintf(dir, sizeof(dir), "%s/kbtest.XXXXXX", base ? base : "/tmp");
	if (mkdtemp(dir) == NULL) {
		perror("mkdtemp");
		exit(2);
	}
	return dir;
}

/* tests/data: $KB_TEST_DATA, else next to this file's folder. */
static const char *
data_dir(void)
{
	/* Per thread: test-pfx parses fixtures on four threads at once. */
	static __thread char dir[1024];
	const char *env = getenv("KB_TEST_DATA");
	char *slash;

	if (env != NULL && env[0] != '\0')
		return env;
	/* tests/unit/harness.c -> tests/data */
	snprintf(dir, sizeof(dir), "%s", __FILE__);
	if ((slash = strrchr(dir, '/')) != NULL)
		snprintf(
		    slash, sizeof(dir) - (size_t)(slash - dir), "/../data");
	else
		snprintf(dir, sizeof(dir), "../data");
	return dir;
}

const char *
kbt_data_path(const char *name)
{
	static __thread char path[1200]; /* per thread, as data_dir's */

	snprintf(path, sizeof(path), "%s/%s", data_dir(), name);
	return path;
}

uint8_t *
kbt_data_load(const char *name, size_t *len)
{
	FILE *f = fopen(kbt_data_path(name), "rb");
	uint8_t *buf;
	long n;

	if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) <= 0
	    || fseek(f, 0, SEEK_SET) != 0 || (buf = malloc((size_t)n)) == NULL
	    || fread(buf, 1, (size_t)n, f) != (size_t)n) {
		fprintf(stderr, "cannot read fixture %s (KB_TEST_DATA=%s)\n",
		    kbt_data_path(name), data_dir());
		exit(2);
	}
	fclose(f);
	*len = (size_t)n;
	return buf;
}

static int
rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

void
kbt_rmtree(const char *dir)
{
	if (getenv("KBT_KEEP") == NULL)
		nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static void write_file(const char *path, int mode, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
write_file(const char *path, int mode, const char *fmt, ...)
{
	va_list ap;
	FILE *f;
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);

	if (fd < 0 || (f = fdopen(fd, "w")) == NULL) {
		perror(path);
		exit(2);
	}
	va_start(ap, fmt);
	vfprintf(f, fmt, ap);
	va_end(ap);
	fclose(f);
}

const char *
kbt_softhsm_setup(const char *label)
{
	static char dir[256];
	char path[512], cmd[1024];

	snprintf(dir, sizeof(dir), "%s", kbt_tmpdir());
	snprintf(path, sizeof(path), "%s/tokens", dir);
	mkdir(path, 0700);
	snprintf(path, sizeof(path), "%s/softhsm2.conf", dir);
	write_file(path, 0600,
	    "directories.tokendir = %s/tokens\nobjectstore.backend = file\n"
	    "log.level = ERROR\nslots.removable = false\n",
	    dir);
	setenv("SOFTHSM2_CONF", path, 1);
	snprintf(path, sizeof(path), "%s/pin", dir);
	write_file(path, 0600, "%s\n", KBT_USER_PIN);
	snprintf(cmd, sizeof(cmd),
	    "softhsm2-util --init-token --free --label '%s' --so-pin 5678 "
	    "--pin %s >/dev/null",
	    label, KBT_USER_PIN);
	if (system(cmd) != 0) {
		fprintf(stderr, "softhsm2-util --init-token failed\n");
		exit(2);
	}
	return dir;
}
