/* SPDX-License-Identifier: Apache-2.0 */
/* main.c: keybrokerd, the key broker daemon. */
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <grpc/grpc.h>

#include "backup.h"
#include "broker.h"
#include "config.h"
#include "dispatch.h"
#include "doctor.h"
#include "health.h"
#include "identity.h"
#include "jobs.h"
#include "kb_secmem.h"
#include "log.h"
#include "metrics.h"
#include "metrics_collect.h"
#include "quorum.h"
#include "rpc.h"
#include "server.h"
#include "startup.h"

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: keybrokerd --config FILE [--check-config] "
	    "[--allow-new-database]\n"
	    "                  [--accept-audit-loss]\n"
	    "       keybrokerd --config FILE --restore BACKUP [--force]\n"
	    "       keybrokerd --config FILE --doctor [--json]\n"
	    "       keybrokerd --version\n"
	    "\n"
	    "Serve the keybroker gRPC API with mutual TLS. Keys stay in the\n"
	    "PKCS#11 token named by the configuration; data keys are stored\n"
	    "only wrapped, in the database (SQLite or PostgreSQL).\n"
	    "\n"
	    "  -c, --config FILE    configuration file (see "
	    "deploy/keybroker.conf.example)\n"
	    "      --check-config   parse the configuration, print it and "
	    "exit\n"
	    "      --allow-new-database\n"
	    "                       start with a new, empty database even "
	    "though the\n"
	    "                       token already holds this broker's keys "
	    "(normally\n"
	    "                       refused: a missing database is usually an\n"
	    "                       unmounted volume)\n"
	    "      --accept-audit-loss\n"
	    "                       start although the audit log lost events "
	    "or was\n"
	    "                       rewritten since the anchor kept in the "
	    "token\n"
	    "                       (normally refused): the loss is recorded "
	    "as an\n"
	    "                       audit event and the anchor moves to the "
	    "log's end\n"
	    "      --restore BACKUP restore a backup made by 'kbctl backup "
	    "create'\n"
	    "                       (the broker stopped): check its checksum, "
	    "check\n"
	    "                       that the configured token holds every key "
	    "it\n"
	    "                       needs (else refuse, naming each), then "
	    "write the\n"
	    "                       database and the audit database and exit\n"
	    "      --force          with --restore: replace existing database "
	    "files\n"
	    "      --doctor         check the token, the keys the database "
	    "refers to,\n"
	    "                       certificates, clock, disk, jobs and "
	    "deletions with\n"
	    "                       the broker stopped (the database opened "
	    "read-only;\n"
	    "                       nothing is changed) and print what was "
	    "found; exit 0\n"
	    "                       all ok, 4 warnings, 5 a failure, 1 could "
	    "not run\n"
	    "      --json           with --doctor: one JSON document\n"
	    "  -V, --version        print the version and exit\n"
	    "  -h, --help           this help\n"
	    "\n"
	    "SIGTERM or SIGINT: stop accepting calls, finish those in flight, "
	    "exit 0.\n"
	    "SIGHUP: read the client CRL (client_crl) again.\n");
}

struct sigctx {
	sigset_t set;
	struct server *srv;
	struct broker *b;
};

/* The listener stopped accepting (out of file descriptors): drain and exit
 * with EX_TEMPFAIL so the service manager restarts us (keybrokerd.service:
 * Restart=on-failure). The signal thread starts the shutdown. */
static void
listener_lost(void *arg)
{
	(void)arg;
	log_error("stopping to be restarted: calls in flight finish first");
	(void)kill(getpid(), SIGTERM);
}

static void *
signal_thread(void *p)
{
	struct sigctx *sc = p;
	enum kb_err e;
	int sig = 0;

	while (sigwait(&sc->set, &sig) == 0) {
		if (sig == SIGHUP) {
			/* The CRL is also read again when its file changes;
			 * SIGHUP makes it happen now. */
			log_info(
			    "received SIGHUP: reading the client CRL again");
			if ((e = identity_verifier_reload(sc->b->verifier))
			    != KB_OK)
				log_error("%s; the CRL read before stays in "
				          "force",
				    kb_err_msg(e));
			continue;
		}
		log_info("received %s", sig == SIGTERM ? "SIGTERM" : "SIGINT");
		server_shutdown(sc->srv);
		break;
	}
	return NULL;
}

static void
print_config(const struct config *c)
{
	printf("listen = %s\ntls_cert = %s\ntls_key = %s\nclient_ca = %s\n"
	       "client_crl = %s\nclient_crl_strict = %s\n"
	       "pkcs11_module = %s\ntoken_uri = %s\npin_file = %s\n"
	       "softhsm2_conf = %s\ndatabase = %s\nworkers = %u\n"
	       "hsm_sessions = %u\nmax_message_bytes = %zu\n"
	       "sweep_interval_s = %u\nrewrap_threads = %u\n"
	       "audit_database = %s\naudit_checkpoint_events = %u\n"
	       "audit_checkpoint_interval_s = %u\nhealth_timeout_ms = %u\n",
	    c->listen, c->tls_cert, c->tls_key, c->client_ca,
	    c->client_crl != NULL ? c->client_crl : "",
	    c->client_crl_strict ? "true" : "false", c->pkcs11_module,
	    c->token_uri, c->pin_file, c->softhsm2_conf ? c->softhsm2_conf : "",
	    c->database, c->workers, c->hsm_sessions, c->max_message_bytes,
	    c->sweep_interval_s, c->rewrap_threads, c->audit_database,
	    c->audit_checkpoint_events, c->audit_checkpoint_interval_s,
	    c->health_timeout_ms);
	printf("clock_jump_limit_s = %u\n", c->clock_jump_limit_s);
	printf("metrics_listen = %s\nmetrics_allow_remote = %s\n"
	       "log_format = %s\n",
	    c->metrics_listen, c->metrics_allow_remote ? "true" : "false",
	    c->log_format == LOG_FORMAT_JSON ? "json" : "text");
	printf("doctor_disk_warn_mb = %u\ndoctor_disk_fail_mb = %u\n",
	    c->doctor_disk_warn_mb, c->doctor_disk_fail_mb);
	printf("deletion_window_days = %u\n", c->deletion_window_days);
	printf("database_password_file = %s\n",
	    c->database_password_file != NULL ? c->database_password_file : "");
}

/* Call counters for every method of the dispatch table (b->metrics). */
static enum kb_err
metrics_start(struct broker *b, const char ***names)
{
	size_t n = dispatch_method_count();

	if ((*names = calloc(n + 1, sizeof(**names))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	dispatch_method_names(*names);
	return metrics_new(*names, n, &b->metrics);
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {"check-config", no_argument, NULL, 'C'},
	    {"allow-new-database", no_argument, NULL, 'N'},
	    {"accept-audit-loss", no_argument, NULL, 'L'},
	    {"restore", required_argument, NULL, 'R'},
	    {"force", no_argument, NULL, 'F'},
	    {"doctor", no_argument, NULL, 'D'},
	    {"json", no_argument, NULL, 'J'},
	    {"version", no_argument, NULL, 'V'},
	    {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
	const char *config_path = NULL, *restore = NULL;
	struct config *cfg = NULL;
	struct broker *b = NULL;
	struct server *srv = NULL;
	struct sigctx sc;
	struct health_deps hd;
	struct metrics_sources msrc;
	const char **metrics_names = NULL;
	pthread_t sigthr;
	int opt, check = 0, allow_new = 0, accept_loss = 0, force = 0;
	int doctor = 0, json = 0;
	enum kb_err e;

	while ((opt = getopt_long(argc, argv, "c:Vh", longopts, NULL)) != -1) {
		switch (opt) {
		case 'c': config_path = optarg; break;
		case 'C': check = 1; break;
		case 'N': allow_new = 1; break;
		case 'L': accept_loss = 1; break;
		case 'R': restore = optarg; break;
		case 'F': force = 1; break;
		case 'D': doctor = 1; break;
		case 'J': json = 1; break;
		case 'V': printf("keybrokerd %s\n", KB_VERSION); return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (config_path == NULL || optind != argc) {
		fprintf(stderr, "keybrokerd: %s\n",
		    config_path == NULL ? "--config FILE is required"
		                        : "unexpected argument");
		usage(stderr);
		return 2;
	}
	kb_process_harden();
	if ((e = config_load(config_path, &cfg)) != KB_OK) {
		fprintf(stderr, "keybrokerd: %s\n", kb_err_msg(e));
		return 1;
	}
	cfg->allow_new_database = allow_new;
	cfg->accept_audit_loss = accept_loss;
	if (check) {
		print_config(cfg);
		config_free(cfg);
		return 0;
	}
	if (force && restore == NULL) {
		fprintf(stderr, "keybrokerd: --force goes with --restore\n");
		config_free(cfg);
		return 2;
	}
	if (json && !doctor) {
		fprintf(stderr, "keybrokerd: --json goes with --doctor\n");
		config_free(cfg);
		return 2;
	}
	if (doctor && restore != NULL) {
		fprintf(stderr,
		    "keybrokerd: --doctor and --restore are two "
		    "runs: give one\n");
		config_free(cfg);
		return 2;
	}
	if (doctor) {
		/* Offline: the token and the database are only read. */
		int rc = doctor_offline(cfg, json, stdout);

		config_free(cfg);
		return rc;
	}
	if (restore != NULL) {
		/* Offline: no server, no audit writer; nothing is recorded. */
		e = backup_restore(cfg, config_path, restore, force, stdout);
		if (e != KB_OK)
			fprintf(stderr, "keybrokerd: %s\n", kb_err_msg(e));
		config_free(cfg);
		return e == KB_OK ? 0 : 1;
	}
	log_set_level((enum log_level)cfg->log_level);
	log_set_format((enum log_format)cfg->log_format);

	/* Signals go to one thread that asks the server to drain. Block them
	 * before any other thread (gRPC's included) starts. */
	sigemptyset(&sc.set);
	sigaddset(&sc.set, SIGTERM);
	sigaddset(&sc.set, SIGINT);
	sigaddset(&sc.set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sc.set, NULL);
	signal(SIGPIPE, SIG_IGN);

	server_log_init();
	grpc_init();
	log_event(LOG_INFO, "broker.starting", LOG_KV("version", KB_VERSION),
	    "keybrokerd %s starting", KB_VERSION);
	/* A method whose scope rule names a field its request lacks would
	 * check nothing: refuse to serve with such a table. */
	if ((e = dispatch_table_check(dispatch_methods)) != KB_OK) {
		log_error("cannot start: %s", kb_err_msg(e));
		config_free(cfg);
		grpc_shutdown();
		return 1;
	}
	if ((e = startup_open(cfg, &b)) != KB_OK) {
		log_error("cannot start: %s", kb_err_msg(e));
		grpc_shutdown();
		return 1;
	}
	/* The approval flow runs calls through the dispatcher and checks a
	 * lock's proof with its handler: main() wires them together. */
	{
		struct quorum_hooks qh = {dispatch_methods, dispatch_execute,
		    rpc_lock_proof, rpc_key_stage_commit};

		quorum_hooks_set(&qh);
		jobs_sweep_hook_set(b->jobs, quorum_sweep);
	}
	if (cfg->client_crl != NULL
	    && (e = identity_verifier_set_crl(
	            b->verifier, cfg->client_crl, cfg->client_crl_strict))
	        != KB_OK) {
		log_error("cannot start: %s", kb_err_msg(e));
		startup_close(b);
		grpc_shutdown();
		return 1;
	}
	/* Counting starts before the first call can arrive; the listener
	 * once the server it reports on exists. */
	if (cfg->metrics_listen[0] != '\0'
	    && (e = metrics_start(b, &metrics_names)) != KB_OK) {
		log_error("cannot start: %s", kb_err_msg(e));
		free(metrics_names);
		startup_close(b);
		grpc_shutdown();
		return 1;
	}
	hd.hsm = b->hsm;
	hd.audit = b->audit;
	hd.store = b->store;
	hd.listener_failed = server_listener_failed;
	hd.listener_lost = listener_lost;
	hd.arg = NULL;
	if ((e = health_start(&hd, &b->health)) != KB_OK
	    || (e = server_start(b, &srv)) != KB_OK) {
		log_error("cannot start: %s", kb_err_msg(e));
		health_stop(b->health);
		metrics_free(b->metrics);
		free(metrics_names);
		startup_close(b);
		grpc_shutdown();
		return 1;
	}
	msrc.b = b;
	msrc.srv = srv;
	if (b->metrics != NULL
	    && (e = metrics_listen(b->metrics, cfg->metrics_listen,
	            cfg->metrics_allow_remote, metrics_collect, &msrc))
	        != KB_OK) {
		log_error("cannot start: %s", kb_err_msg(e));
		server_shutdown(srv);
		server_run(srv);
		server_free(srv);
		metrics_free(b->metrics);
		free(metrics_names);
		health_stop(b->health);
		startup_close(b);
		grpc_shutdown();
		return 1;
	}
	sc.srv = srv;
	sc.b = b;
	if (pthread_create(&sigthr, NULL, signal_thread, &sc) != 0) {
		log_error("cannot start the signal thread");
		return 1;
	}
	{
		char workers[16];

		snprintf(workers, sizeof(workers), "%u", b->cfg->workers);
		log_event(LOG_INFO, "broker.listening",
		    LOG_KV("listen", b->cfg->listen, "token", b->token.label,
		        "workers", workers, "metrics",
		        b->metrics != NULL ? b->cfg->metrics_listen : "off"),
		    "listening on %s (mutual TLS; token '%s'; %u workers; "
		    "metrics %s%s)",
		    b->cfg->listen, b->token.label, b->cfg->workers,
		    b->metrics != NULL ? "on http://" : "off",
		    b->metrics != NULL ? b->cfg->metrics_listen : "");
	}
	server_run(srv);
	/* Only the signal thread starts a shutdown, so it has returned. */
	pthread_join(sigthr, NULL);
	/* The metrics listener reads the server: it stops first. */
	metrics_free(b->metrics);
	b->metrics = NULL;
	server_free(srv);
	health_stop(b->health);
	b->health = NULL;
	startup_close(b);
	grpc_shutdown();
	if (server_listener_failed()) {
		/* EX_TEMPFAIL: restart me (see server_listener_failed). */
		log_error("stopped: the listener had failed; exit status 75");
		return 75;
	}
	free(metrics_names);
	log_event(LOG_INFO, "broker.stopped", NULL, "stopped");
	return 0;
}
