/* SPDX-License-Identifier: Apache-2.0 */
/* kb-seed.c: kb-bench's seeder (bench_seed.c) as a command for the
 * integration tests: many platform-managed environments written straight
 * into a stopped broker's database, each DEK sealed in the token as the
 * broker would have, in seconds instead of one API call each. */
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sqlite3.h>

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: kb-seed --db FILE --pin-file FILE --tenant T --count N\n"
	    "               [--customer-key KEY] [--deks-out FILE]\n"
	    "\n"
	    "Insert N platform-managed environments s-0000000, s-0000001,\n"
	    "... into tenant T (which must exist) of the keybrokerd\n"
	    "database FILE, each with its own random DEK sealed in the\n"
	    "token under the database's active platform key. keybrokerd\n"
	    "must be stopped. SOFTHSM2_CONF names the token (label\n"
	    "keybroker); --pin-file is its user PIN (mode 0600).\n"
	    "\n"
	    "  --customer-key KEY  customer-managed instead: sealed under a\n"
	    "                   new KEK (kek-bench-...) made in the token\n"
	    "                   under tenant key KEY of T, recorded active\n"

	    "  --deks-out FILE  write \"NAME BASE64-DEK\" lines to FILE, a\n"
	    "                   new file of mode 0600: it holds every\n"
	    "                   plaintext DEK (for tests only)\n"
	    "\n"
	    "Exit status: 0 done, 1 failed (nothing inserted), 2 usage "
	    "error.\n");
}

/* The OAEP variant the tenant key wraps its KEK with, from its row. */
static enum kb_err
key_wrap_alg(const char *path, struct bench_seed_spec *s)
{
	static char alg[64];
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	enum kb_err e;

	if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK
	    || sqlite3_prepare_v2(db,
	           "SELECT wrap_alg FROM keys WHERE id = ? AND tenant_id = ? "
	           "AND purpose = 'tenant'",
	           -1, &st, NULL)
	        != SQLITE_OK) {
		e = kb_errf(KB_ERR_STORE, "%s: %s", path, sqlite3_errmsg(db));
		goto out;
	}
	sqlite3_bind_text(st, 1, s->tenant_key, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, s->tenant, -1, SQLITE_STATIC);
	if (sqlite3_step(st) != SQLITE_ROW) {
		e = kb_errf(KB_ERR_NOT_FOUND,
		    "--customer-key: tenant %s has no key %s", s->tenant,
		    s->tenant_key);
		goto out;
	}
	snprintf(
	    alg, sizeof(alg), "%s", (const char *)sqlite3_column_text(st, 0));
	s->wrap_alg = alg;
	e = KB_OK;
out:
	sqlite3_finalize(st);
	sqlite3_close(db);
	return e;
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"db", required_argument, NULL, 'd'},
	    {"pin-file", required_argument, NULL, 'p'},
	    {"tenant", required_argument, NULL, 't'},
	    {"count", required_argument, NULL, 'n'},
	    {"deks-out", required_argument, NULL, 'o'},
	    {"customer-key", required_argument, NULL, 'c'},
	    {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
	struct bench_seed_spec s = {.platform = 1};
	const char *db = NULL, *pin = NULL, *deks = NULL;
	unsigned long v;
	double secs = 0;
	char *end;
	int opt, fd;
	enum kb_err e;

	while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'd': db = optarg; break;
		case 'p': pin = optarg; break;
		case 't': s.tenant = optarg; break;
		case 'o': deks = optarg; break;
		case 'c':
			s.platform = 0;
			s.tenant_key = optarg;
			break;
		case 'n':
			errno = 0;
			v = strtoul(optarg, &end, 10);
			if (*end != '\0' || errno != 0 || v == 0
			    || v > 100000000ul) {
				fprintf(stderr,
				    "kb-seed: --count: expected 1 to "
				    "100000000, not \"%s\"\n",
				    optarg);
				return 2;
			}
			s.n = (unsigned)v;
			break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc || db == NULL || pin == NULL || s.tenant == NULL
	    || s.n == 0) {
		fprintf(stderr,
		    "kb-seed: --db, --pin-file, --tenant and "
		    "--count are required\n");
		usage(stderr);
		return 2;
	}
	if (deks != NULL) {
		if ((fd = open(
		         deks, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600))
		        < 0
		    || (s.deks_out = fdopen(fd, "w")) == NULL) {
			fprintf(
			    stderr, "kb-seed: %s: %s\n", deks, strerror(errno));
			return 1;
		}
	}
	if (!s.platform && (e = key_wrap_alg(db, &s)) != KB_OK) {
		fprintf(stderr, "kb-seed: %s\n", kb_err_msg(e));
		return 1;
	}
	e = bench_seed(db, pin, &s, &secs);
	if (s.deks_out != NULL && fclose(s.deks_out) != 0 && e == KB_OK)
		e = kb_errf(KB_ERR_IO, "%s: %s", deks, strerror(errno));
	if (e != KB_OK) {
		fprintf(stderr, "kb-seed: %s\n", kb_err_msg(e));
		if (deks != NULL)
			(void)unlink(deks);
		return 1;
	}
	printf("kb-seed: %u %s environments of tenant %s "
	       "seeded in %.2f s (%.0f/s)\n",
	    s.n, s.platform ? "platform-managed" : "customer-managed", s.tenant,
	    secs, secs > 0 ? s.n / secs : 0);
	return 0;
}
