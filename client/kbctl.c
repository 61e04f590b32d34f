/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl.c: the command line of keybroker: flags, command table, help. */
#include "kbctl.h"

#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <grpc/support/log.h>
#include <jansson.h>

#include "kb_secmem.h"
#include "kbctl_fmt.h"
#include "kbctl_secret.h"

#ifndef KB_VERSION
#define KB_VERSION "unknown"
#endif

/* clang-format off */
/* Flags every command accepts, before or after the command words. */
enum gflag {
	G_ADDR, G_CERT, G_KEY, G_CA, G_SERVER_NAME, G_TIMEOUT, G_JSON,
	G_HELP, G_VERSION, G_CONNECT_TIMEOUT, G_COUNT_
};

static const struct kbctl_flag gflags[G_COUNT_] = {
	[G_ADDR] = { "--addr", "HOST:PORT[,...]",
	    "broker address, or several to fail over between (env KB_ADDR; "
	    "default " KB_CLIENT_DEFAULT_ADDR ")" },
	[G_CERT] = { "--cert", "FILE", "client certificate, PEM (env KB_CERT)" },
	[G_KEY] = { "--key", "FILE", "client private key, PEM (env KB_KEY)" },
	[G_CA] = { "--ca", "FILE",
	    "CA certificate that signed the broker's (env KB_CA)" },
	[G_SERVER_NAME] = { "--server-name", "NAME",
	    "name the broker's certificate must carry, if not HOST" },
	[G_TIMEOUT] = { "--timeout", "SECONDS", "deadline of each call (default 10)" },
	[G_JSON] = { "--json", NULL, "print one JSON document instead of text" },
	[G_HELP] = { "--help", NULL, "show help (also -h)" },
	[G_VERSION] = { "--version", NULL, "print kbctl's version" },
	[G_CONNECT_TIMEOUT] = { "--connect-timeout", "SECONDS",
	    "with several --addr: wait this long for one before the next "
	    "(default 2)" },
};
/* clang-format on */

/* What the command line resolved to. */
struct kbctl_parsed {
	const char *group; /* a group word, if any */
	const struct kbctl_cmd *cmd; /* the command, once known */
	const char *gval[G_COUNT_];
	struct kbctl_args a;
};

static const char *
group_help(const char *name)
{
	size_t i;

	for (i = 0; i < kbctl_ngroups; i++)
		if (strcmp(kbctl_groups[i].name, name) == 0)
			return kbctl_groups[i].help;
	return "";
}

static size_t
cmd_nflags(const struct kbctl_cmd *c)
{
	size_t n = 0;

	while (n < KBCTL_MAX_FLAGS && c->flags[n].name != NULL)
		n++;
	return n;
}

/* "create ID [--name DISPLAY_NAME]", after "kbctl tenants ". */
static void
cmd_usage_short(const struct kbctl_cmd *c, char *buf, size_t len)
{
	size_t i, n = cmd_nflags(c), o;

	o = (size_t)snprintf(
	    buf, len, "%s%s%s", c->name, c->args[0] ? " " : "", c->args);
	for (i = 0; i < n && o < len; i++) {
		const struct kbctl_flag *f = &c->flags[i];

		o += (size_t)snprintf(buf + o, len - o,
		    f->required ? " %s%s%s" : " [%s%s%s]",
		    f->alias ? f->alias : f->name, f->metavar ? " " : "",
		    f->metavar ? f->metavar : "");
	}
}

/* "tenants create ID [--name DISPLAY_NAME]", after "kbctl ". */
static void
cmd_usage(const struct kbctl_cmd *c, char *buf, size_t len)
{
	size_t o = 0;

	buf[0] = '\0';
	if (c->group != NULL)
		o = (size_t)snprintf(buf, len, "%s ", c->group);
	if (o < len)
		cmd_usage_short(c, buf + o, len - o);
}

/* "-n, --lines N" or "--name DISPLAY_NAME" */
static void
flag_left(const struct kbctl_flag *fl, char *buf, size_t len)
{
	snprintf(buf, len, "%s%s%s%s%s", fl->alias ? fl->alias : "",
	    fl->alias ? ", " : "", fl->name, fl->metavar ? " " : "",
	    fl->metavar ? fl->metavar : "");
}

static void
print_flags(FILE *f, const struct kbctl_flag *fl, size_t n)
{
	size_t i, w = 0;
	char left[96];

	for (i = 0; i < n; i++) {
		flag_left(&fl[i], left, sizeof(left));
		if (strlen(left) > w)
			w = strlen(left);
	}
	for (i = 0; i < n; i++) {
		flag_left(&fl[i], left, sizeof(left));
		fprintf(f, "  %-*s  %s\n", (int)w, left, fl[i].help);
	}
}

static void
help_top(FILE *f)
{
	size_t i, j, w = 0;

	fprintf(f,
	    "Usage: kbctl [FLAGS] COMMAND [ARGS]\n\n"
	    "kbctl manages a keybroker over mutual TLS: tenants, their keys "
	    "(generate,\nupload, BYOK, activate, lock, unlock), environments "
	    "and data keys,\nand reads, follows, exports and verifies the "
	    "audit log.\n\nCommands:\n");
	for (i = 0; i < kbctl_ncmds; i++) {
		const char *n = kbctl_cmds[i].group ? kbctl_cmds[i].group
		                                    : kbctl_cmds[i].name;

		if (strlen(n) > w)
			w = strlen(n);
	}
	for (i = 0; i < kbctl_ncmds; i++) {
		const struct kbctl_cmd *c = &kbctl_cmds[i];
		int seen = 0;

		if (c->group == NULL) {
			fprintf(f, "  %-*s  %s\n", (int)w, c->name, c->help);
			continue;
		}
		for (j = 0; j < i && !seen; j++)
			seen = kbctl_cmds[j].group != NULL
			    && strcmp(kbctl_cmds[j].group, c->group) == 0;
		if (!seen)
			fprintf(f, "  %-*s  %s\n", (int)w, c->group,
			    group_help(c->group));
	}
	fprintf(f,
	    "\nFlags (before or after the command; after it, the command's "
	    "own flag of the\nsame name wins: 'tenants lock --key FILE' is "
	    "the tenant key, 'datakey get\n--version N' a DEK version):\n");
	print_flags(f, gflags, G_COUNT_);
	fprintf(f,
	    "\nRun 'kbctl COMMAND --help' for its subcommands and flags.\n"
	    "Exit status: 0 done; 1 the broker refused, the call or a file "
	    "failed, or\na confirmation was not given; 2 usage error "
	    "(including a password or\n--yes needed without a terminal); 130 "
	    "stopped waiting with Ctrl-C.\n");
}

static void
help_group(FILE *f, const char *group)
{
	char u[256];
	size_t i, w = 0;

	fprintf(f,
	    "Usage: kbctl %s SUBCOMMAND [ARGS] [FLAGS]\n\n%s.\n\n"
	    "Subcommands:\n",
	    group, group_help(group));
	for (i = 0; i < kbctl_ncmds; i++) {
		if (kbctl_cmds[i].group == NULL
		    || strcmp(kbctl_cmds[i].group, group) != 0)
			continue;
		cmd_usage_short(&kbctl_cmds[i], u, sizeof(u));
		if (strlen(u) > w)
			w = strlen(u);
	}
	for (i = 0; i < kbctl_ncmds; i++) {
		if (kbctl_cmds[i].group == NULL
		    || strcmp(kbctl_cmds[i].group, group) != 0)
			continue;
		cmd_usage_short(&kbctl_cmds[i], u, sizeof(u));
		/* Long usage lines: the help goes under them. */
		if (w > 36)
			fprintf(f, "  %s\n      %s\n", u, kbctl_cmds[i].help);
		else
			fprintf(
			    f, "  %-*s  %s\n", (int)w, u, kbctl_cmds[i].help);
	}
	fprintf(f,
	    "\nRun 'kbctl %s SUBCOMMAND --help' for details, "
	    "'kbctl --help' for the global flags.\n",
	    group);
}

static void
help_cmd(FILE *f, const struct kbctl_cmd *c)
{
	char u[256];

	cmd_usage(c, u, sizeof(u));
	fprintf(f, "Usage: kbctl %s\n\n%s.\n", u, c->help);
	if (c->desc != NULL)
		fprintf(f, "\n%s\n", c->desc);
	if (cmd_nflags(c) > 0) {
		fprintf(f, "\nFlags:\n");
		print_flags(f, c->flags, cmd_nflags(c));
	}
	if (c->local == KBCTL_LOCAL_ONLINE)
		fprintf(f,
		    "\nGlobal flags: --json (see 'kbctl --help'); without "
		    "--online this command\ndoes not talk to the broker, with "
		    "it --addr, --cert, --key, --ca,\n--server-name and "
		    "--timeout apply.\n");
	else if (c->local)
		fprintf(f,
		    "\nGlobal flags: --json (see 'kbctl --help'); this "
		    "command does not\ntalk to the broker.\n");
	else
		fprintf(f,
		    "\nGlobal flags (--addr, --cert, --key, --ca, "
		    "--server-name, --timeout, --connect-timeout, --json): see "
		    "'kbctl --help'.\n");
}

/* The usage line of whatever level the parse reached. */
static void
print_usage_line(FILE *f, const struct kbctl_parsed *p)
{
	char u[256];

	if (p->cmd != NULL) {
		cmd_usage(p->cmd, u, sizeof(u));
		fprintf(f, "Usage: kbctl %s\n", u);
	} else if (p->group != NULL) {
		fprintf(f,
		    "Usage: kbctl %s SUBCOMMAND [ARGS]; "
		    "see 'kbctl %s --help'\n",
		    p->group, p->group);
	} else {
		fprintf(f,
		    "Usage: kbctl [FLAGS] COMMAND [ARGS]; "
		    "see 'kbctl --help'\n");
	}
}

/* "kbctl: MESSAGE" and p's usage line on stderr; returns
 * KBCTL_EXIT_USAGE. */
static int usage_vfail(const struct kbctl_parsed *p, const char *fmt,
    va_list ap) __attribute__((format(printf, 2, 0)));

static int
usage_vfail(const struct kbctl_parsed *p, const char *fmt, va_list ap)
{
	fputs("kbctl: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	print_usage_line(stderr, p);
	return KBCTL_EXIT_USAGE;
}

static int usage_fail(const struct kbctl_parsed *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int
usage_fail(const struct kbctl_parsed *p, const char *fmt, ...)
{
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = usage_vfail(p, fmt, ap);
	va_end(ap);
	return r;
}

int
kbctl_usage_error(const struct kbctl_args *a, const char *fmt, ...)
{
	struct kbctl_parsed p = {.cmd = a->cmd};
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = usage_vfail(&p, fmt, ap);
	va_end(ap);
	return r;
}

int
kbctl_err(enum kb_err e, int code)
{
	char msg[1024];

	kbctl_sanitize(kb_err_msg(e), msg, sizeof(msg));
	fprintf(stderr, "kbctl: %s\n", msg);
	return code;
}

int
kbctl_confirm_or_yes(const struct kbctl_args *a, const char *explain,
    const char *what, const char *word)
{
	int r;

	if (kbctl_flag(a, "--yes") != NULL)
		return -1;
	if (!kbctl_stdin_is_tty())
		return kbctl_usage_error(a,
		    "'%s%s%s' is destructive and there is no terminal to "
		    "confirm it on: add --yes to go ahead",
		    a->cmd->group ? a->cmd->group : "",
		    a->cmd->group ? " " : "", a->cmd->name);
	r = kbctl_confirm(explain, what, word);
	if (r == -2) {
		fprintf(stderr, "kbctl: interrupted; nothing was done\n");
		return KBCTL_EXIT_INTERRUPTED;
	}
	if (r < 0) {
		fprintf(stderr,
		    "kbctl: cannot open the terminal to confirm; add --yes "
		    "to go ahead\n");
		return KBCTL_EXIT_USAGE;
	}
	if (r == 0) {
		fprintf(stderr, "kbctl: not confirmed; nothing was done\n");
		return KBCTL_EXIT_FAIL;
	}
	return -1;
}

int
kbctl_out_open(const struct kbctl_args *a, const char *path, unsigned mode,
    struct kbctl_out_file **f)
{
	enum kb_err e;

	*f = NULL;
	if (path == NULL)
		return -1;
	if ((e = kbctl_out_file_open(
	         path, kbctl_flag(a, "--force") != NULL, mode, f))
	    == KB_OK)
		return -1;
	if (e == KB_ERR_ALREADY_EXISTS)
		return kbctl_usage_error(a, "--out %s", kb_err_msg(e));
	return kbctl_err(e, KBCTL_EXIT_FAIL);
}

const char *
kbctl_flag(const struct kbctl_args *a, const char *name)
{
	size_t i;

	for (i = 0; i < KBCTL_MAX_FLAGS && a->cmd->flags[i].name != NULL; i++)
		if (strcmp(a->cmd->flags[i].name, name) == 0)
			return a->flag[i];
	return NULL;
}

static int
is_group(const char *w)
{
	size_t i;

	for (i = 0; i < kbctl_ncmds; i++)
		if (kbctl_cmds[i].group != NULL
		    && strcmp(kbctl_cmds[i].group, w) == 0)
			return 1;
	return 0;
}

static const struct kbctl_cmd *
find_cmd(const char *group, const char *name)
{
	size_t i;

	for (i = 0; i < kbctl_ncmds; i++) {
		const struct kbctl_cmd *c = &kbctl_cmds[i];

		if ((group == NULL) != (c->group == NULL))
			continue;
		if (group != NULL && strcmp(group, c->group) != 0)
			continue;
		if (strcmp(name, c->name) == 0)
			return c;
	}
	return NULL;
}

/* "create, list, show" */
static void
subcommand_names(const char *group, char *buf, size_t len)
{
	size_t i, o = 0;

	buf[0] = '\0';
	for (i = 0; i < kbctl_ncmds && o < len; i++)
		if (kbctl_cmds[i].group != NULL
		    && strcmp(kbctl_cmds[i].group, group) == 0)
			o += (size_t)snprintf(buf + o, len - o, "%s%s",
			    o ? ", " : "", kbctl_cmds[i].name);
}

/* Match "--name" or "--name=value" against a flag list. Returns the index
 * or -1; *inline_val points after '=' when present. */
static int
flag_match(const struct kbctl_flag *fl, size_t n, const char *arg,
    const char **inline_val)
{
	size_t i, len;
	const char *eq = strchr(arg, '=');

	len = eq != NULL ? (size_t)(eq - arg) : strlen(arg);
	for (i = 0; i < n; i++) {
		if ((strlen(fl[i].name) == len
		        && strncmp(fl[i].name, arg, len) == 0)
		    || (fl[i].alias != NULL && strlen(fl[i].alias) == len
		        && strncmp(fl[i].alias, arg, len) == 0)) {
			*inline_val = eq != NULL ? eq + 1 : NULL;
			return (int)i;
		}
	}
	return -1;
}

/* Parse argv into p. Returns -1 when fine, else an exit code (errors have
 * been printed). */
static int
parse(int argc, char **argv, struct kbctl_parsed *p)
{
	int i, only_words = 0;

	memset(p, 0, sizeof(*p));
	for (i = 1; i < argc; i++) {
		const char *s = argv[i], *val = NULL;
		int fi;

		if (!only_words && strcmp(s, "--") == 0) {
			only_words = 1;
			continue;
		}
		if (!only_words && s[0] == '-' && s[1] != '\0') {
			const struct kbctl_flag *fl;

			if (strcmp(s, "-h") == 0)
				s = "--help";
			/* After the command words, the command's own flags
			 * win: "tenants lock --key FILE" is the tenant key,
			 * "datakey get --version N" a DEK version. */
			if (p->cmd != NULL
			    && (fi = flag_match(
			            p->cmd->flags, cmd_nflags(p->cmd), s, &val))
			        >= 0)
				fl = &p->cmd->flags[fi];
			else if ((fi = flag_match(gflags, G_COUNT_, s, &val))
			    >= 0)
				fl = &gflags[fi];
			else
				return usage_fail(p, "unknown flag \"%s\"", s);
			if (fl->metavar != NULL && val == NULL) {
				if (i + 1 >= argc)
					return usage_fail(p,
					    "%s needs a value "
					    "(%s)",
					    fl->name, fl->metavar);
				val = argv[++i];
			} else if (fl->metavar == NULL && val != NULL) {
				return usage_fail(
				    p, "%s takes no value", fl->name);
			}
			if (val == NULL)
				val = "";
			if (fl >= gflags && fl < gflags + G_COUNT_)
				p->gval[fi] = val;
			else
				p->a.flag[fi] = val;
			continue;
		}
		/* A word: the command, the subcommand, or an argument. */
		if (p->cmd == NULL && p->group == NULL) {
			if (is_group(s)) {
				p->group = s;
			} else if ((p->cmd = find_cmd(NULL, s)) == NULL) {
				return usage_fail(
				    p, "unknown command \"%s\"", s);
			}
			continue;
		}
		if (p->cmd == NULL) {
			char names[128];

			if ((p->cmd = find_cmd(p->group, s)) == NULL) {
				subcommand_names(
				    p->group, names, sizeof(names));
				return usage_fail(p,
				    "%s: unknown subcommand "
				    "\"%s\" (one of: %s)",
				    p->group, s, names);
			}
			continue;
		}
		if (p->a.argc >= KBCTL_MAX_ARGS
		    || p->a.argc >= p->cmd->max_args) {
			if (p->gval[G_HELP] != NULL)
				continue;
			return usage_fail(p, "unexpected argument \"%s\"", s);
		}
		p->a.argv[p->a.argc++] = s;
	}
	p->a.cmd = p->cmd;
	return -1;
}

/* The name of the first missing positional argument ("TENANT"). */
static void
missing_arg(const struct kbctl_cmd *c, int have, char *buf, size_t len)
{
	const char *s = c->args;
	int k = 0;
	size_t n;

	while (*s != '\0') {
		n = strcspn(s, " ");
		if (k == have) {
			snprintf(buf, len, "%.*s", (int)n, s);
			return;
		}
		k++;
		s += n;
		s += strspn(s, " ");
	}
	snprintf(buf, len, "an argument");
}

/* A usage error for the first required flag not given, else -1. */
static int
missing_flag(const struct kbctl_parsed *p)
{
	size_t i, n = cmd_nflags(p->cmd);

	for (i = 0; i < n; i++)
		if (p->cmd->flags[i].required && p->a.flag[i] == NULL)
			return usage_fail(p, "missing %s %s",
			    p->cmd->flags[i].name,
			    p->cmd->flags[i].metavar ? p->cmd->flags[i].metavar
			                             : "");
	return -1;
}

static const char *
env_or(const char *flag, const char *env)
{
	const char *v;

	if (flag != NULL)
		return flag;
	v = getenv(env);
	return (v != NULL && *v != '\0') ? v : NULL;
}

static int
file_exists(const char *path)
{
	struct stat sb;

	return stat(path, &sb) == 0;
}

/* Fill k->opts from flags, environment and defaults. Returns -1 when
 * fine, else an exit code. */
static int
resolve_opts(const struct kbctl_parsed *p, struct kbctl *k)
{
	const char *t;
	char missing[160];
	size_t o = 0;

	k->opts.addr = env_or(p->gval[G_ADDR], "KB_ADDR");
	if (k->opts.addr == NULL)
		k->opts.addr = KB_CLIENT_DEFAULT_ADDR;
	if (strchr(k->opts.addr, ',') != NULL) {
		char **v;
		size_t n;
		enum kb_err e = kb_client_addrs_parse(k->opts.addr, &v, &n);

		if (e != KB_OK)
			return usage_fail(p, "%s %s",
			    p->gval[G_ADDR] != NULL ? "--addr:" : "KB_ADDR:",
			    kb_err_msg(e));
		kb_client_addrs_free(v, n);
	}
	if ((t = p->gval[G_CONNECT_TIMEOUT]) != NULL) {
		char *end;
		double v = strtod(t, &end);

		if (end == t || *end != '\0' || !(v > 0) || v > 3600)
			return usage_fail(p,
			    "bad --connect-timeout \"%s\": seconds, more "
			    "than 0 and at most 3600",
			    t);
		k->opts.connect_timeout_ms = (int)(v * 1000 + 0.5);
		if (k->opts.connect_timeout_ms < 1)
			k->opts.connect_timeout_ms = 1;
	}
	k->opts.cert_file = env_or(p->gval[G_CERT], "KB_CERT");
	k->opts.key_file = env_or(p->gval[G_KEY], "KB_KEY");
	k->opts.ca_file = env_or(p->gval[G_CA], "KB_CA");
	k->opts.server_name = p->gval[G_SERVER_NAME];
	k->opts.timeout_ms = KB_CLIENT_DEFAULT_TIMEOUT_MS;
	if ((t = p->gval[G_TIMEOUT]) != NULL) {
		char *end;
		double v = strtod(t, &end);

		if (end == t || *end != '\0' || !(v > 0) || v > 86400)
			return usage_fail(p,
			    "bad --timeout \"%s\": seconds, "
			    "more than 0 and at most 86400",
			    t);
		k->opts.timeout_ms = (int)(v * 1000 + 0.5);
		if (k->opts.timeout_ms < 1)
			k->opts.timeout_ms = 1;
	}
	missing[0] = '\0';
	if (k->opts.cert_file == NULL)
		o += (size_t)snprintf(missing + o, sizeof(missing) - o,
		    "%s--cert FILE (or KB_CERT)", o ? ", " : "");
	if (k->opts.key_file == NULL && o < sizeof(missing))
		o += (size_t)snprintf(missing + o, sizeof(missing) - o,
		    "%s--key FILE (or KB_KEY)", o ? ", " : "");
	if (k->opts.ca_file == NULL && o < sizeof(missing))
		o += (size_t)snprintf(missing + o, sizeof(missing) - o,
		    "%s--ca FILE (or KB_CA)", o ? ", " : "");
	if (o == 0)
		return -1;
	/* Never pick up a development PKI silently: say how to use it. */
	fprintf(stderr, "kbctl: mutual TLS needs %s\n", missing);
	if (file_exists("var/pki/admin.crt") && file_exists("var/pki/ca.crt"))
		fprintf(stderr,
		    "kbctl: hint: var/pki/ has the development "
		    "PKI; to use it:\n  export KB_CERT=var/pki/admin.crt "
		    "KB_KEY=var/pki/admin.key KB_CA=var/pki/ca.crt\n");
	return KBCTL_EXIT_USAGE;
}

int
kbctl_connect(struct kbctl *k)
{
	enum kb_err e;
	int rc;

	if (k->client != NULL)
		return -1;
	if ((rc = resolve_opts(k->parsed, k)) >= 0)
		return rc;
	if ((e = kb_client_open(&k->opts, &k->client)) != KB_OK) {
		fprintf(stderr, "kbctl: %s\n", kb_err_msg(e));
		return KBCTL_EXIT_FAIL;
	}
	return -1;
}

/* jansson frees through here: DEKs pass through its strings. */
static void
json_wipe_free(void *ptr)
{
	if (ptr == NULL)
		return;
	kb_wipe(ptr, malloc_usable_size(ptr));
	free(ptr);
}

/* gRPC logs connection failures on stderr; kbctl reports them itself.
 * Setting GRPC_VERBOSITY or GRPC_TRACE brings gRPC's own log back. */
static void
grpc_log_quiet(gpr_log_func_args *args)
{
	(void)args;
}

int
main(int argc, char **argv)
{
	struct kbctl_parsed p;
	struct kbctl k;
	char what[32];
	enum kb_err e;
	int rc;

	kb_process_harden();
	json_set_alloc_funcs(malloc, json_wipe_free);
	if (getenv("GRPC_VERBOSITY") == NULL && getenv("GRPC_TRACE") == NULL)
		gpr_set_log_function(grpc_log_quiet);
	memset(&k, 0, sizeof(k));

	if ((rc = parse(argc, argv, &p)) >= 0)
		return rc;
	if (p.gval[G_VERSION] != NULL) {
		printf("kbctl %s\n", KB_VERSION);
		return KBCTL_EXIT_OK;
	}
	if (p.gval[G_HELP] != NULL) {
		if (p.cmd != NULL)
			help_cmd(stdout, p.cmd);
		else if (p.group != NULL)
			help_group(stdout, p.group);
		else
			help_top(stdout);
		return fflush(stdout) == 0 ? KBCTL_EXIT_OK : KBCTL_EXIT_FAIL;
	}
	if (p.cmd == NULL && p.group == NULL) {
		help_top(stderr);
		return KBCTL_EXIT_USAGE;
	}
	if (p.cmd == NULL) {
		char names[128];

		subcommand_names(p.group, names, sizeof(names));
		return usage_fail(
		    &p, "%s: missing subcommand (one of: %s)", p.group, names);
	}
	if (p.a.argc < p.cmd->min_args) {
		missing_arg(p.cmd, p.a.argc, what, sizeof(what));
		return usage_fail(&p, "missing %s", what);
	}
	if ((rc = missing_flag(&p)) >= 0)
		return rc;
	k.json = p.gval[G_JSON] != NULL;
	k.parsed = &p;
	if (p.cmd->local) {
		rc = p.cmd->run(&k, &p.a);
		kb_client_close(k.client);
	} else {
		if ((rc = resolve_opts(&p, &k)) >= 0)
			return rc;
		if ((e = kb_client_open(&k.opts, &k.client)) != KB_OK) {
			fprintf(stderr, "kbctl: %s\n", kb_err_msg(e));
			return KBCTL_EXIT_FAIL;
		}
		rc = p.cmd->run(&k, &p.a);
		kb_client_close(k.client);
	}
	if (rc == KBCTL_EXIT_REQUESTED)
		rc = KBCTL_EXIT_OK;
	if (fflush(stdout) != 0 || ferror(stdout)) {
		perror("kbctl: writing the output");
		rc = KBCTL_EXIT_FAIL;
	}
	return rc;
}
