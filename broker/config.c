/* SPDX-License-Identifier: Apache-2.0 */
/* config.c: parse keybroker.conf. */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kb_codec.h"
#include "log.h"
#include "metrics.h"

#define CONFIG_MAX_BYTES (1 << 20)

enum value_kind {
	V_STRING,
	V_PATH,
	V_UINT,
	V_SIZE,
	V_LEVEL,
	V_BOOL,
	V_ADDR, /* a string that may be empty (off) */
	V_FORMAT,
	V_DATABASE, /* a SQLite path (resolved) or a postgresql:// string */
};

struct option {
	const char *name;
	enum value_kind kind;
	size_t offset;
	unsigned long min, max;
};

#define OPT(n, k, lo, hi)                                                      \
	{                                                                      \
#n, k, offsetof(struct config, n), lo, hi                      \
	}

static const struct option options[] = {
    OPT(listen, V_STRING, 0, 0),
    OPT(tls_cert, V_PATH, 0, 0),
    OPT(tls_key, V_PATH, 0, 0),
    OPT(client_ca, V_PATH, 0, 0),
    OPT(client_crl, V_PATH, 0, 0),
    OPT(client_crl_strict, V_BOOL, 0, 0),
    OPT(pkcs11_module, V_PATH, 0, 0),
    OPT(token_uri, V_STRING, 0, 0),
    OPT(pin_file, V_PATH, 0, 0),
    OPT(softhsm2_conf, V_PATH, 0, 0),
    OPT(database, V_DATABASE, 0, 0),
    OPT(database_password_file, V_PATH, 0, 0),
    OPT(database_connections, V_UINT, 2, 1024),
    OPT(workers, V_UINT, 1, 256),
    OPT(hsm_sessions, V_UINT, 1, 1024),
    OPT(max_message_bytes, V_SIZE, 1024, 64 << 20),
    OPT(log_level, V_LEVEL, 0, 0),
    OPT(sweep_interval_s, V_UINT, 1, 86400),
    OPT(clock_jump_limit_s, V_UINT, 60, 31536000),
    OPT(approval_ttl_s, V_UINT, 60, 2592000),
    OPT(deletion_window_days, V_UINT, 1, 30),
    OPT(rewrap_threads, V_UINT, 1, 64),
    OPT(platform_key_rotation_days, V_UINT, 0, 3650),
    OPT(max_keys_per_tenant, V_UINT, 1, 100000),
    OPT(max_dek_versions, V_UINT, 1, 1000000),
    OPT(rate_per_identity, V_UINT, 0, 1000000),
    OPT(rate_per_identity_burst, V_UINT, 0, 10000000),
    OPT(rate_per_tenant, V_UINT, 0, 1000000),
    OPT(rate_per_tenant_burst, V_UINT, 0, 10000000),
    OPT(max_streams_per_identity, V_UINT, 0, 100000),
    OPT(test_clock_file, V_PATH, 0, 0),
    OPT(audit_database, V_DATABASE, 0, 0),
    OPT(audit_checkpoint_events, V_UINT, 1, 1000000),
    OPT(audit_checkpoint_interval_s, V_UINT, 1, 86400),
    OPT(health_timeout_ms, V_UINT, 10, 60000),
    OPT(metrics_listen, V_ADDR, 0, 0),
    OPT(metrics_allow_remote, V_BOOL, 0, 0),
    OPT(log_format, V_FORMAT, 0, 0),
    OPT(doctor_disk_warn_mb, V_UINT, 1, 1048576),
    OPT(doctor_disk_fail_mb, V_UINT, 1, 1048576),
};

static char *
resolve(const char *dir, const char *v)
{
	char *p;
	size_t n;

	if (v[0] == '/' || dir == NULL || dir[0] == '\0')
		return strdup(v);
	n = strlen(dir) + strlen(v) + 2;
	if ((p = malloc(n)) != NULL)
		snprintf(p, n, "%s/%s", dir, v);
	return p;
}

int
config_is_postgres(const char *target)
{
	return target != NULL
	    && (strncmp(target, "postgresql://", 13) == 0
	        || strncmp(target, "postgres://", 11) == 0);
}

/* Where a postgresql:// connection string holds a password, or NULL if it
 * holds none. The rules are libpq's (conninfo_uri_parse_options): the user
 * information runs from after "://" to the first '@' unless a '/' comes
 * first, and a ':' in it starts the password; parameters after '?' are
 * key=value pairs split by '&', percent-decoded. */
static const char *
uri_password_where(const char *uri)
{
	const char *p = strstr(uri, "://") + 3, *q, *end;
	char key[16];
	size_t n;

	/* libpq's rule (up to an '@' with no '/' before it), and stricter,
	 * up to an '@' before the first '?': a password holding a '/' is no
	 * password to libpq, but still a secret in this file. */
	n = strcspn(p, "/") > strcspn(p, "?") ? strcspn(p, "/")
	                                      : strcspn(p, "?");
	if ((q = memchr(p, '@', n)) != NULL
	    && memchr(p, ':', (size_t)(q - p)) != NULL)
		return "in its user information (USER:PASSWORD@)";
	q = p + strcspn(p, "?");
	if (*q != '?')
		return NULL;
	for (q++; *q != '\0'; q = *end == '&' ? end + 1 : end) {
		if ((end = strchr(q, '&')) == NULL)
			end = q + strlen(q);
		for (n = 0; q < end && *q != '=' && n < sizeof(key) - 1; q++) {
			if (*q == '%' && q + 2 < end && kb_hex_digit(q[1]) >= 0
			    && kb_hex_digit(q[2]) >= 0) {
				key[n++] = (char)(kb_hex_digit(q[1]) * 16
				    + kb_hex_digit(q[2]));
				q += 2;
			} else {
				key[n++] = *q;
			}
		}
		key[n] = '\0';
		if (strcmp(key, "password") == 0)
			return "as its password parameter (?password=...)";
	}
	return NULL;
}

/* A libpq keyword=value connection string ("host=db dbname=kb") would be
 * taken for a file name: its first word is one of libpq's keywords. */
static int
looks_like_conninfo(const char *v)
{
	static const char *const kw[] = {"host", "hostaddr", "port", "dbname",
	    "user", "password", "passfile", "service", "sslmode",
	    "connect_timeout", "options", "application_name"};
	size_t n = strspn(v, "abcdefghijklmnopqrstuvwxyz_"), i;
	const char *p = v + n;

	while (*p == ' ' || *p == '\t')
		p++;
	if (n == 0 || *p != '=')
		return 0;
	for (i = 0; i < sizeof(kw) / sizeof(kw[0]); i++)
		if (strlen(kw[i]) == n && strncmp(v, kw[i], n) == 0)
			return 1;
	return 0;
}

/* database, audit_database: a SQLite file (resolved like a path) or a
 * PostgreSQL connection string, which may not hold a password. Nothing of
 * the value goes into a message: it may be a password. */
static enum kb_err
set_database(
    char **sp, const char *name, const char *v, const char *dir, int lineno)
{
	const char *where;

	if (v[0] == '\0')
		return kb_errf(
		    KB_ERR_CONFIG, "line %d: %s needs a value", lineno, name);
	if (config_is_postgres(v)) {
		if ((where = uri_password_where(v)) != NULL)
			return kb_errf(KB_ERR_CONFIG,
			    "line %d: %s: the connection string holds a "
			    "password %s: a configuration file is no place "
			    "for it (it is often readable by others, and "
			    "copied). Remove the password from the string "
			    "and put it alone in a file of mode 0600 named "
			    "by database_password_file",
			    lineno, name, where);
		free(*sp);
		if ((*sp = strdup(v)) == NULL)
			return kb_errf(KB_ERR_NOMEM, "out of memory");
		return KB_OK;
	}
	if (looks_like_conninfo(v))
		return kb_errf(KB_ERR_CONFIG,
		    "line %d: %s looks like a libpq keyword=value "
		    "connection string, which keybroker does not take: "
		    "write it as a URI, postgresql://USER@HOST:PORT/DBNAME "
		    "(parameters after '?'), with the password in "
		    "database_password_file; or give the path of a SQLite "
		    "file",
		    lineno, name);
	free(*sp);
	if ((*sp = resolve(dir, v)) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	return KB_OK;
}

static char *
trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
		*--e = '\0';
	return s;
}

static enum kb_err
set_option(struct config *c, const struct option *o, const char *v,
    const char *dir, int lineno)
{
	char *end, **sp = (char **)((char *)c + o->offset);
	unsigned long n;
	int lvl;

	switch (o->kind) {
	case V_STRING:
	case V_PATH:
		if (v[0] == '\0')
			return kb_errf(KB_ERR_CONFIG,
			    "line %d: %s needs a value", lineno, o->name);
		free(*sp);
		*sp = o->kind == V_PATH ? resolve(dir, v) : strdup(v);
		if (*sp == NULL)
			return kb_errf(KB_ERR_NOMEM, "out of memory");
		return KB_OK;
	case V_DATABASE: return set_database(sp, o->name, v, dir, lineno);
	case V_ADDR:
		free(*sp);
		if ((*sp = strdup(v)) == NULL)
			return kb_errf(KB_ERR_NOMEM, "out of memory");
		return KB_OK;
	case V_FORMAT:
		if ((lvl = log_format_parse(v)) < 0)
			return kb_errf(KB_ERR_CONFIG,
			    "line %d: log_format must be text or json, not "
			    "\"%s\"",
			    lineno, v);
		*(int *)((char *)c + o->offset) = lvl;
		return KB_OK;
	case V_UINT:
	case V_SIZE:
		errno = 0;
		n = strtoul(v, &end, 10);
		if (v[0] < '0' || v[0] > '9' || *end != '\0' || errno != 0
		    || n < o->min || n > o->max)
			return kb_errf(KB_ERR_CONFIG,
			    "line %d: %s must be a number "
			    "from %lu to %lu, not \"%s\"",
			    lineno, o->name, o->min, o->max, v);
		if (o->kind == V_UINT)
			*(unsigned *)((char *)c + o->offset) = (unsigned)n;
		else
			*(size_t *)((char *)c + o->offset) = (size_t)n;
		return KB_OK;
	case V_LEVEL:
		if ((lvl = log_level_parse(v)) < 0)
			return kb_errf(KB_ERR_CONFIG,
			    "line %d: log_level must be "
			    "error, warn, info or debug, not \"%s\"",
			    lineno, v);
		*(int *)((char *)c + o->offset) = lvl;
		return KB_OK;
	case V_BOOL:
		if (strcmp(v, "true") == 0 || strcmp(v, "yes") == 0
		    || strcmp(v, "1") == 0)
			*(int *)((char *)c + o->offset) = 1;
		else if (strcmp(v, "false") == 0 || strcmp(v, "no") == 0
		    || strcmp(v, "0") == 0)
			*(int *)((char *)c + o->offset) = 0;
		else
			return kb_errf(KB_ERR_CONFIG,
			    "line %d: %s must be true or "
			    "false, not \"%s\"",
			    lineno, o->name, v);
		return KB_OK;
	}
	return kb_errf(KB_ERR_INTERNAL, "unhandled option kind");
}

enum kb_err
config_parse(const char *text, size_t len, const char *dir, struct config **out)
{
	struct config *c = NULL;
	char *buf = NULL, *line, *next, *eq, *key, *val;
	enum kb_err e = KB_ERR_INTERNAL;
	int lineno = 0;
	size_t i;

	*out = NULL;
	if ((c = calloc(1, sizeof(*c))) == NULL
	    || (buf = malloc(len + 1)) == NULL) {
		e = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	memcpy(buf, text, len);
	buf[len] = '\0';
	if (strlen(buf) != len) {
		e = kb_errf(KB_ERR_CONFIG, "the file contains a NUL byte");
		goto out;
	}
	c->workers = 32;
	c->hsm_sessions = 8;
	c->max_message_bytes = 65536;
	c->log_level = LOG_INFO;
	c->sweep_interval_s = 60;
	c->clock_jump_limit_s = 3600;
	c->approval_ttl_s = 86400;
	c->deletion_window_days = 7;
	c->health_timeout_ms = 500;
	c->rewrap_threads = 2;
	c->platform_key_rotation_days = 30;
	c->max_keys_per_tenant = 100;
	c->max_dek_versions = 1000;
	c->rate_per_identity = 50000;
	c->rate_per_tenant = 100000;
	c->max_streams_per_identity = 16;
	c->audit_checkpoint_events = 1000;
	c->audit_checkpoint_interval_s = 60;
	c->doctor_disk_warn_mb = 1024;
	c->doctor_disk_fail_mb = 64;
	for (line = buf; line != NULL; line = next) {
		lineno++;
		if ((next = strchr(line, '\n')) != NULL)
			*next++ = '\0';
		if ((eq = strchr(line, '#')) != NULL)
			*eq = '\0';
		key = trim(line);
		if (*key == '\0')
			continue;
		if ((eq = strchr(key, '=')) == NULL) {
			e = kb_errf(KB_ERR_CONFIG,
			    "line %d: expected \"key = "
			    "value\", got \"%.60s\"",
			    lineno, key);
			goto out;
		}
		*eq = '\0';
		val = trim(eq + 1);
		key = trim(key);
		for (i = 0; i < sizeof(options) / sizeof(options[0]); i++)
			if (strcmp(options[i].name, key) == 0)
				break;
		if (i == sizeof(options) / sizeof(options[0])) {
			e = kb_errf(KB_ERR_CONFIG,
			    "line %d: unknown key \"%.60s\"", lineno, key);
			goto out;
		}
		if ((e = set_option(c, &options[i], val, dir, lineno)) != KB_OK)
			goto out;
	}
	if (c->listen == NULL && (c->listen = strdup("127.0.0.1:7443")) == NULL)
		goto nomem;
	if (c->metrics_listen == NULL
	    && (c->metrics_listen = strdup(METRICS_LISTEN_DEFAULT)) == NULL)
		goto nomem;
	if (c->metrics_listen[0] != '\0') {
		struct sockaddr_storage sa;
		socklen_t sl;

		if ((e = metrics_addr_parse(
		         c->metrics_listen, c->metrics_allow_remote, &sa, &sl))
		    != KB_OK)
			goto out;
	}
	if (c->token_uri == NULL
	    && (c->token_uri = strdup("pkcs11:token=keybroker")) == NULL)
		goto nomem;
	if (c->pkcs11_module == NULL
	    && (c->pkcs11_module = strdup("/usr/lib/softhsm/libsofthsm2.so"))
	        == NULL)
		goto nomem;
	{
		static const char *const required[] = {
		    "tls_cert", "tls_key", "client_ca", "pin_file", "database"};
		char *const vals[] = {c->tls_cert, c->tls_key, c->client_ca,
		    c->pin_file, c->database};
		for (i = 0; i < 5; i++) {
			if (vals[i] == NULL) {
				e = kb_errf(KB_ERR_CONFIG,
				    "missing required key "
				    "\"%s\"",
				    required[i]);
				goto out;
			}
		}
	}
	/* A burst without a rate would be silently ignored: say so. */
	if ((c->rate_per_identity_burst != 0 && c->rate_per_identity == 0)
	    || (c->rate_per_tenant_burst != 0 && c->rate_per_tenant == 0)) {
		e = kb_errf(KB_ERR_CONFIG,
		    "%s_burst is set but %s is 0 "
		    "(unlimited): set a rate too, or remove the burst",
		    c->rate_per_identity == 0 ? "rate_per_identity"
		                              : "rate_per_tenant",
		    c->rate_per_identity == 0 ? "rate_per_identity"
		                              : "rate_per_tenant");
		goto out;
	}
	if (c->audit_database == NULL && config_is_postgres(c->database)) {
		/* One PostgreSQL database for both: the audit log has tables
		 * of its own there, and the same password file. */
		if ((c->audit_database = strdup(c->database)) == NULL)
			goto nomem;
	} else if (c->audit_database == NULL) {
		/* keybroker.db -> keybroker-audit.db, beside it. */
		size_t n = strlen(c->database);
		if ((c->audit_database = malloc(n + 16)) == NULL)
			goto nomem;
		if (n > 3 && strcmp(c->database + n - 3, ".db") == 0)
			snprintf(c->audit_database, n + 16, "%.*s-audit.db",
			    (int)(n - 3), c->database);
		else
			snprintf(
			    c->audit_database, n + 16, "%s-audit", c->database);
	}
	if (c->database_password_file != NULL
	    && !config_is_postgres(c->database)
	    && !config_is_postgres(c->audit_database)) {
		e = kb_errf(KB_ERR_CONFIG,
		    "database_password_file is set, but database and "
		    "audit_database are SQLite files, which have no "
		    "password: remove database_password_file, or set "
		    "database to a postgresql:// connection string");
		goto out;
	}
	*out = c;
	c = NULL;
	e = KB_OK;
	goto out;
nomem:
	e = kb_errf(KB_ERR_NOMEM, "out of memory");
out:
	free(buf);
	config_free(c);
	return e;
}

enum kb_err
config_load(const char *path, struct config **out)
{
	char dir[PATH_MAX], *slash, *text = NULL;
	enum kb_err e = KB_ERR_INTERNAL;
	size_t n = 0;
	FILE *f = NULL;

	*out = NULL;
	if ((f = fopen(path, "r")) == NULL) {
		e = kb_errf(KB_ERR_CONFIG, "cannot open config file %s: %s",
		    path, strerror(errno));
		goto out;
	}
	if ((text = malloc(CONFIG_MAX_BYTES + 1)) == NULL) {
		e = kb_errf(KB_ERR_NOMEM, "out of memory");
		goto out;
	}
	n = fread(text, 1, CONFIG_MAX_BYTES + 1, f);
	if (ferror(f) || n > CONFIG_MAX_BYTES) {
		e = kb_errf(KB_ERR_CONFIG,
		    "cannot read config file %s (error or "
		    "larger than 1 MiB)",
		    path);
		goto out;
	}
	if (realpath(path, dir) == NULL)
		snprintf(dir, sizeof(dir), "%s", path);
	if ((slash = strrchr(dir, '/')) != NULL)
		*slash = '\0';
	else
		snprintf(dir, sizeof(dir), ".");
	if ((e = config_parse(text, n, dir, out)) != KB_OK)
		kb_err_wrap(e, "%s", path);
out:
	free(text);
	if (f != NULL)
		fclose(f);
	return e;
}

void
config_free(struct config *c)
{
	size_t i;

	if (c == NULL)
		return;
	for (i = 0; i < sizeof(options) / sizeof(options[0]); i++)
		if (options[i].kind == V_STRING || options[i].kind == V_PATH
		    || options[i].kind == V_ADDR
		    || options[i].kind == V_DATABASE)
			free(*(char **)((char *)c + options[i].offset));
	free(c);
}
