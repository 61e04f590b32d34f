/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl.h: kbctl's command table, shared between main and the handlers. */
#ifndef KB_KBCTL_H
#define KB_KBCTL_H

#include <stdint.h>
#include <stdio.h>

#include "kbclient.h"

enum {
	KBCTL_EXIT_OK = 0,
	KBCTL_EXIT_FAIL = 1, /* the broker refused, or the call failed */
	KBCTL_EXIT_USAGE = 2 /* unknown command or flag, missing argument */
};

#define KBCTL_MAX_FLAGS 6
#define KBCTL_MAX_ARGS 8

/* A flag of one subcommand. */
struct kbctl_flag {
	const char *name; /* "--name" */
	const char *metavar; /* "DISPLAY_NAME", or NULL for a boolean flag */
	const char *help; /* one line */
};

struct kbctl;
struct kbctl_args;

/* One row of the command table: adding a subcommand is one row in kbctl.c
 * plus one handler. A handler returns an exit code (KBCTL_EXIT_*). */
struct kbctl_cmd {
	const char *group; /* "tenants", or NULL for a top-level command */
	const char *name; /* "create" */
	const char *args; /* positional part of the usage: "TENANT NAME" */
	int min_args, max_args;
	const char *help; /* one line, for the lists */
	const char *desc; /* optional paragraph for --help */
	struct kbctl_flag flags[KBCTL_MAX_FLAGS];
	int (*run)(struct kbctl *k, const struct kbctl_args *a);
};

/* What the parser hands a handler. */
struct kbctl_args {
	const struct kbctl_cmd *cmd;
	int argc;
	const char *argv[KBCTL_MAX_ARGS];
	const char *flag[KBCTL_MAX_FLAGS]; /* by index in cmd->flags; NULL if
	                                      absent, "" for a boolean given */
};

/* The state of one kbctl run. */
struct kbctl {
	struct kb_client_opts opts;
	struct kb_client *client; /* open before a handler runs */
	int json; /* --json */
};

/* kbctl.c */
/* The value of flag `name` ("--all") of the running subcommand, or NULL. */
const char *kbctl_flag(const struct kbctl_args *a, const char *name);
/* Print "kbctl: MESSAGE" and the command's usage line to stderr; returns
 * KBCTL_EXIT_USAGE. */
int kbctl_usage_error(const struct kbctl_args *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* kbctl_cmds.c: the handlers. */
int kbctl_cmd_health(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_whoami(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_tenants_create(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_tenants_list(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_tenants_show(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_envs_create(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_envs_list(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_envs_show(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_datakey_get(struct kbctl *k, const struct kbctl_args *a);

#endif /* KB_KBCTL_H */
