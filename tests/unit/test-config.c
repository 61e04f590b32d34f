/* SPDX-License-Identifier: Apache-2.0 */
/* test-config.c: configuration parsing. */
#include "harness.h"

#include "config.h"
#include "log.h"

#define MINIMAL                                                                \
	"tls_cert = s.crt\ntls_key = s.key\nclient_ca = /etc/ca.crt\n"         \
	"pin_file = pin\ndatabase = kb.db\n"

static enum kb_err
parse(const char *text, struct config **c)
{
	return config_parse(text, strlen(text), "/srv/kb", c);
}

static void
test_defaults_and_paths(void)
{
	struct config *c = NULL;

	KBT_ASSERT_OK(parse("# comment\n\n" MINIMAL, &c));
	KBT_ASSERT_STR(c->listen, "127.0.0.1:7443");
	KBT_ASSERT_STR(c->token_uri, "pkcs11:token=keybroker");
	KBT_ASSERT_STR(c->tls_cert, "/srv/kb/s.crt");
	KBT_ASSERT_STR(c->client_ca, "/etc/ca.crt");
	KBT_ASSERT_STR(c->database, "/srv/kb/kb.db");
	KBT_ASSERT_INT(c->workers, ==, 32);
	KBT_ASSERT_INT(c->database_connections, ==, 0); /* workers + 2 */
	KBT_ASSERT_INT(c->max_message_bytes, ==, 65536);
	KBT_ASSERT_INT(c->log_level, ==, LOG_INFO);
	config_free(c);
}

/* clock_jump_limit_s: a forward clock jump beyond it pauses the sweeper. */
static void
test_clock_jump_limit(void)
{
	struct config *c = NULL;

	KBT_ASSERT_OK(parse(MINIMAL, &c));
	KBT_ASSERT_INT(c->clock_jump_limit_s, ==, 3600);
	config_free(c);
	KBT_ASSERT_OK(parse(MINIMAL "clock_jump_limit_s = 60\n", &c));
	KBT_ASSERT_INT(c->clock_jump_limit_s, ==, 60);
	config_free(c);
	KBT_ASSERT_ERR(
	    parse(MINIMAL "clock_jump_limit_s = 59\n", &c), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG),
	    "line 6: "
	    "clock_jump_limit_s must be a number from 60 to 31536000, not "
	    "\"59\"");
	KBT_ASSERT_ERR(
	    parse(MINIMAL "clock_jump_limit_s = 1h\n", &c), KB_ERR_CONFIG);
	KBT_ASSERT_ERR(parse(MINIMAL "clock_jump_limit_s = 31536001\n", &c),
	    KB_ERR_CONFIG);
}

/* deletion_window_days: 7 by default, 1 to 30. */
static void
test_deletion_window(void)
{
	struct config *c = NULL;

	KBT_ASSERT_OK(parse(MINIMAL, &c));
	KBT_ASSERT_INT(c->deletion_window_days, ==, 7);
	config_free(c);
	KBT_ASSERT_OK(parse(MINIMAL "deletion_window_days = 30\n", &c));
	KBT_ASSERT_INT(c->deletion_window_days, ==, 30);
	config_free(c);
	KBT_ASSERT_ERR(
	    parse(MINIMAL "deletion_window_days = 0\n", &c), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG),
	    "deletion_window_days must be a number from 1 to 30, not \"0\"");
	KBT_ASSERT_ERR(
	    parse(MINIMAL "deletion_window_days = 31\n", &c), KB_ERR_CONFIG);
}

static void
test_values(void)
{
	struct config *c = NULL;

	KBT_ASSERT_OK(parse(MINIMAL
	    "listen = 0.0.0.0:9000  # all\r\n"
	    "workers=16\nlog_level = debug\nmax_message_bytes = 1048576\n"
	    "database_connections = 6\n",
	    &c));
	KBT_ASSERT_STR(c->listen, "0.0.0.0:9000");
	KBT_ASSERT_INT(c->workers, ==, 16);
	KBT_ASSERT_INT(c->database_connections, ==, 6);
	KBT_ASSERT_INT(c->log_level, ==, LOG_DEBUG);
	KBT_ASSERT_INT(c->max_message_bytes, ==, 1048576);
	config_free(c);
}

static void
test_errors(void)
{
	struct config *c = NULL;

	KBT_ASSERT_ERR(parse(MINIMAL "bogus = 1\n", &c), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_CONFIG), "line 6: unknown key \"bogus\"");
	KBT_ASSERT_ERR(parse(MINIMAL "workers = 0\n", &c), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG),
	    "workers must be a number from 1 to 256");
	KBT_ASSERT_ERR(
	    parse(MINIMAL "database_connections = 1\n", &c), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG),
	    "database_connections must be a number from 2 to 1024");
	KBT_ASSERT_ERR(parse(MINIMAL "workers = 4x\n", &c), KB_ERR_CONFIG);
	KBT_ASSERT_ERR(parse(MINIMAL "workers = -1\n", &c), KB_ERR_CONFIG);
	KBT_ASSERT_ERR(parse(MINIMAL "workers = 99999999999999999999999\n", &c),
	    KB_ERR_CONFIG);
	KBT_ASSERT_ERR(parse(MINIMAL "just words\n", &c), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_CONFIG), "expected \"key = value\"");
	KBT_ASSERT_ERR(parse(MINIMAL "listen =\n", &c), KB_ERR_CONFIG);
	KBT_ASSERT_ERR(parse(MINIMAL "log_level = loud\n", &c), KB_ERR_CONFIG);
	KBT_ASSERT_ERR(parse("tls_cert = a\n", &c), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_CONFIG), "missing required key \"tls_key\"");
	KBT_ASSERT_ERR(config_parse("a\0b", 3, "/", &c), KB_ERR_CONFIG);
	KBT_ASSERT(c == NULL);
}

static void
test_rate_limits(void)
{
	struct config *c = NULL;

	KBT_ASSERT_OK(parse(MINIMAL, &c));
	KBT_ASSERT_INT(c->rate_per_identity, ==, 50000);
	KBT_ASSERT_INT(c->rate_per_identity_burst, ==, 0);
	KBT_ASSERT_INT(c->rate_per_tenant, ==, 100000);
	KBT_ASSERT_INT(c->max_streams_per_identity, ==, 16);
	config_free(c);
	KBT_ASSERT_OK(
	    parse(MINIMAL "rate_per_identity = 20\n"
	                  "rate_per_identity_burst = 40\nrate_per_tenant = 0\n"
	                  "max_streams_per_identity = 0\n",
	        &c));
	KBT_ASSERT_INT(c->rate_per_identity, ==, 20);
	KBT_ASSERT_INT(c->rate_per_identity_burst, ==, 40);
	KBT_ASSERT_INT(c->rate_per_tenant, ==, 0);
	KBT_ASSERT_INT(c->max_streams_per_identity, ==, 0);
	config_free(c);
	c = NULL;
	KBT_ASSERT_ERR(parse(MINIMAL "rate_per_tenant = 0\n"
	                             "rate_per_tenant_burst = 5\n",
	                   &c),
	    KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG),
	    "rate_per_tenant_burst "
	    "is set but rate_per_tenant is 0 (unlimited)");
	KBT_ASSERT_ERR(
	    parse(MINIMAL "rate_per_identity = 2000000\n", &c), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG),
	    "rate_per_identity must "
	    "be a number from 0 to 1000000");
	KBT_ASSERT_ERR(parse(MINIMAL "max_streams_per_identity = few\n", &c),
	    KB_ERR_CONFIG);
	KBT_ASSERT(c == NULL);
}

static void
test_load_missing(void)
{
	struct config *c = NULL;

	KBT_ASSERT_ERR(config_load("/nonexistent/kb.conf", &c), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG), "/nonexistent/kb.conf");
}

/* metrics_listen: loopback by default, off when empty, numeric only; a
 * non-loopback address only with metrics_allow_remote. log_format. */
static void
test_metrics_and_log_format(void)
{
	static const char *const bad[] = {"localhost:7444", "127.0.0.1",
	    "127.0.0.1:", "127.0.0.1:70000", "127.0.0.1:x", "[::1]7444",
	    "::1:7444", "127.0.0.1:-1"};
	struct config *c = NULL;
	char text[256];
	size_t i;

	KBT_ASSERT_OK(parse(MINIMAL, &c));
	KBT_ASSERT_STR(c->metrics_listen, "127.0.0.1:7444");
	KBT_ASSERT_INT(c->metrics_allow_remote, ==, 0);
	KBT_ASSERT_INT(c->log_format, ==, LOG_FORMAT_TEXT);
	config_free(c);
	KBT_ASSERT_OK(parse(MINIMAL "metrics_listen =\n", &c));
	KBT_ASSERT_STR(c->metrics_listen, "");
	config_free(c);
	KBT_ASSERT_OK(parse(MINIMAL "metrics_listen = 127.1.2.3:9\n", &c));
	config_free(c);
	KBT_ASSERT_OK(parse(MINIMAL "metrics_listen = [::1]:7444\n", &c));
	KBT_ASSERT_STR(c->metrics_listen, "[::1]:7444");
	config_free(c);
	KBT_ASSERT_ERR(parse(MINIMAL "metrics_listen = 0.0.0.0:7444\n", &c),
	    KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG),
	    "metrics_listen = 0.0.0.0:7444 is not a loopback address");
	KBT_ASSERT_CONTAINS(
	    kb_err_msg(KB_ERR_CONFIG), "set metrics_allow_remote = true");
	KBT_ASSERT_ERR(
	    parse(MINIMAL "metrics_listen = [::]:7444\n", &c), KB_ERR_CONFIG);
	KBT_ASSERT_ERR(parse(MINIMAL "metrics_listen = 10.0.0.5:7444\n", &c),
	    KB_ERR_CONFIG);
	KBT_ASSERT_OK(parse(MINIMAL "metrics_listen = 10.0.0.5:7444\n"
	                            "metrics_allow_remote = true\n",
	    &c));
	KBT_ASSERT_INT(c->metrics_allow_remote, ==, 1);
	config_free(c);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(text, sizeof(text), MINIMAL "metrics_listen = %s\n",
		    bad[i]);
		KBT_ASSERT_ERR(parse(text, &c), KB_ERR_CONFIG);
		KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG),
		    "is not a numeric address and port");
	}
	KBT_ASSERT_OK(parse(MINIMAL "log_format = json\n", &c));
	KBT_ASSERT_INT(c->log_format, ==, LOG_FORMAT_JSON);
	config_free(c);
	KBT_ASSERT_ERR(parse(MINIMAL "log_format = xml\n", &c), KB_ERR_CONFIG);
	KBT_ASSERT_CONTAINS(kb_err_msg(KB_ERR_CONFIG),
	    "line 6: log_format must be text or json, not \"xml\"");
}

static const struct kbt_case cases[] = {
    {"/config/defaults-and-paths", test_defaults_and_paths},
    {"/config/clock-jump-limit", test_clock_jump_limit},
    {"/config/deletion-window", test_deletion_window},
    {"/config/values", test_values}, {"/config/errors", test_errors},
    {"/config/rate-limits", test_rate_limits},
    {"/config/load-missing", test_load_missing},
    {"/config/metrics-and-log-format", test_metrics_and_log_format},
    {NULL, NULL}};

int
main(int argc, char **argv)
{
	return kbt_run(cases, argc, argv);
}
