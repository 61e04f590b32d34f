/* SPDX-License-Identifier: Apache-2.0 */
/* kb-dek-loop.c: a service's loop through the client library, for
 * test-failover.sh: GetDataKey again and again on one client (one address
 * list), each answer printed with its time and the broker that gave it.
 *
 *   kb-dek-loop --addr A,B --cert C --key K --ca CA --tenant T --env E
 *               [--seconds S] [--interval-ms N] [--connect-timeout-ms N]
 *
 * Prints one line a call: "ok TIME_US ADDR SHA256(DEK)" or "fail TIME_US
 * STATUS MESSAGE" (TIME_US: the wall clock when the call returned, us since
 * the epoch, comparable with `date +%s%6N`), then "calls N ok N fail N".
 * Runs for S seconds (default 30) or until SIGTERM; exits 0. The DEK itself
 * is never printed, only its hash. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "kb_err_grpc.h"
#include "kb_secmem.h"
#include "kbclient.h"

static volatile sig_atomic_t stop;

static void
on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static long long
now_us(int clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void
usage(void)
{
	fprintf(stderr,
	    "usage: kb-dek-loop --addr A[,B...] --cert C --key K --ca CA "
	    "--tenant T --env E [--seconds S] [--interval-ms N] "
	    "[--connect-timeout-ms N]\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	struct kb_client_opts o;
	struct kb_client *c = NULL;
	struct kb_status st;
	const char *tenant = NULL, *env = NULL;
	uint8_t dek[64], md[32];
	unsigned mdlen;
	size_t dek_len, i;
	long long end, calls = 0, ok = 0, failed = 0;
	int seconds = 30, interval_ms = 5, a;
	char hex[65];
	struct timespec nap;
	enum kb_err e;

	memset(&o, 0, sizeof(o));
	for (a = 1; a + 1 < argc; a += 2) {
		const char *k = argv[a], *v = argv[a + 1];

		if (strcmp(k, "--addr") == 0)
			o.addr = v;
		else if (strcmp(k, "--cert") == 0)
			o.cert_file = v;
		else if (strcmp(k, "--key") == 0)
			o.key_file = v;
		else if (strcmp(k, "--ca") == 0)
			o.ca_file = v;
		else if (strcmp(k, "--tenant") == 0)
			tenant = v;
		else if (strcmp(k, "--env") == 0)
			env = v;
		else if (strcmp(k, "--seconds") == 0)
			seconds = atoi(v);
		else if (strcmp(k, "--interval-ms") == 0)
			interval_ms = atoi(v);
		else if (strcmp(k, "--connect-timeout-ms") == 0)
			o.connect_timeout_ms = atoi(v);
		else
			usage();
	}
	if (a != argc || tenant == NULL || env == NULL || o.addr == NULL)
		usage();
	signal(SIGTERM, on_term);
	signal(SIGINT, on_term);
	setvbuf(stdout, NULL, _IOLBF, 0);
	if ((e = kb_client_open(&o, &c)) != KB_OK) {
		fprintf(stderr, "kb-dek-loop: %s\n", kb_err_msg(e));
		return 1;
	}
	end = now_us(CLOCK_MONOTONIC) + (long long)seconds * 1000000;
	while (!stop && now_us(CLOCK_MONOTONIC) < end) {
		e = kb_client_get_data_key(
		    c, tenant, env, dek, sizeof(dek), &dek_len, NULL, &st);
		calls++;
		if (e == KB_OK) {
			ok++;
			EVP_Digest(
			    dek, dek_len, md, &mdlen, EVP_sha256(), NULL);
			kb_wipe(dek, sizeof(dek));
			for (i = 0; i < 32; i++)
				snprintf(hex + 2 * i, 3, "%02x", md[i]);
			printf("ok %lld %s %s\n", now_us(CLOCK_REALTIME),
			    kb_client_addr(c), hex);
		} else {
			failed++;
			printf("fail %lld %s %s\n", now_us(CLOCK_REALTIME),
			    kb_grpc_status_name(st.code), st.message);
		}
		nap.tv_sec = interval_ms / 1000;
		nap.tv_nsec = (long)(interval_ms % 1000) * 1000000;
		while (nanosleep(&nap, &nap) != 0 && errno == EINTR && !stop)
			;
	}
	printf("calls %lld ok %lld fail %lld\n", calls, ok, failed);
	kb_client_close(c);
	kb_client_global_cleanup();
	return 0;
}
