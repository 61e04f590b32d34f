/* SPDX-License-Identifier: Apache-2.0 */
/* config_fuzzer.c: libFuzzer target for config_parse (keybroker.conf).
 *
 * The whole input is the file's text; relative paths are resolved against
 * a fixed directory, or none when the input starts with '!' (as a caller
 * without a directory would). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "kb_err.h"
#include "log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int
path_ok(const char *p, int required)
{
	if (p == NULL)
		return !required;
	return p[0] != '\0';
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *dir = "/etc/keybroker";
	struct config *c = NULL;
	enum kb_err e;

	if (size > 0 && data[0] == '!')
		dir = NULL;
	e = config_parse((const char *)data, size, dir, &c);
	if ((e == KB_OK) != (c != NULL))
		abort();
	if (e == KB_OK) {
		/* What config.h and the option table promise a parsed
		 * configuration holds. */
		if (!path_ok(c->listen, 1) || !path_ok(c->tls_cert, 1)
		    || !path_ok(c->tls_key, 1) || !path_ok(c->client_ca, 1)
		    || !path_ok(c->pkcs11_module, 1)
		    || !path_ok(c->token_uri, 1) || !path_ok(c->pin_file, 1)
		    || !path_ok(c->database, 1)
		    || !path_ok(c->audit_database, 1)
		    || !path_ok(c->softhsm2_conf, 0)
		    || !path_ok(c->test_clock_file, 0) || c->workers < 1
		    || c->workers > 256 || c->hsm_sessions < 1
		    || c->hsm_sessions > 1024 || c->max_message_bytes < 1024
		    || c->max_message_bytes > (64u << 20)
		    || c->log_level < LOG_ERROR || c->log_level > LOG_DEBUG
		    || c->rewrap_threads < 1 || c->rewrap_threads > 64
		    || c->sweep_interval_s < 1 || c->audit_checkpoint_events < 1
		    || c->audit_checkpoint_interval_s < 1)
			abort();
		/* With a directory, every path is absolute; a PostgreSQL
		 * database is a connection string, kept as written. */
		if (dir != NULL
		    && (c->tls_cert[0] != '/'
		        || (c->database[0] != '/'
		            && !config_is_postgres(c->database))
		        || (c->audit_database[0] != '/'
		            && !config_is_postgres(c->audit_database))))
			abort();
	} else if (kb_err_msg(e)[0] == '\0') {
		abort();
	}
	config_free(c);
	kb_err_clear();
	return 0;
}
