/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl.h: kbctl's command table, shared between main and the handlers. */
#ifndef KB_KBCTL_H
#define KB_KBCTL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "kbclient.h"

enum {
	KBCTL_EXIT_OK = 0,
	KBCTL_EXIT_FAIL = 1, /* the broker refused, or the call failed */
	KBCTL_EXIT_USAGE = 2, /* unknown command or flag, missing argument */
	/* Inside kbctl only: a quorum made the call an approval request,
	 * printed; main exits 0 for it. */
	KBCTL_EXIT_REQUESTED = 3,
	KBCTL_EXIT_INTERRUPTED = 130 /* Ctrl-C at a prompt or while waiting */
};

#define KBCTL_MAX_FLAGS 16
#define KBCTL_MAX_ARGS 8

/* A flag of one subcommand. */
struct kbctl_flag {
	const char *name; /* "--name" */
	const char *metavar; /* "DISPLAY_NAME", or NULL for a boolean flag */
	const char *help; /* one line */
	int required; /* KBCTL_REQUIRED: the command needs it */
	const char *alias; /* a short form ("-f"), or NULL */
};

#define KBCTL_REQUIRED 1

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
	int local; /* KBCTL_LOCAL: runs without a broker (no TLS flags);
	              KBCTL_LOCAL_ONLINE: the same unless the handler calls
	              kbctl_connect (for an --online flag) */
};

#define KBCTL_LOCAL 1
#define KBCTL_LOCAL_ONLINE 2

/* A group of subcommands ("tenants") and its one-line help. */
struct kbctl_group {
	const char *name;
	const char *help;
};

/* kbctl_table.c: the command table (STYLE.md: the request path as a
 * table) and the groups, listed in --help in the order they appear. */
extern const struct kbctl_cmd kbctl_cmds[];
extern const size_t kbctl_ncmds;
extern const struct kbctl_group kbctl_groups[];
extern const size_t kbctl_ngroups;

/* What the parser hands a handler. */
struct kbctl_args {
	const struct kbctl_cmd *cmd;
	int argc;
	const char *argv[KBCTL_MAX_ARGS];
	const char *flag[KBCTL_MAX_FLAGS]; /* by index in cmd->flags; NULL if
	                                      absent, "" for a boolean given */
};

struct kbctl_parsed;

/* The state of one kbctl run. */
struct kbctl {
	struct kb_client_opts opts;
	struct kb_client *client; /* open before a handler runs (NULL for a
	                             KBCTL_LOCAL command) */
	int json; /* --json */
	const struct kbctl_parsed *parsed; /* the command line, for
	                                      kbctl_connect */
};

/* kbctl.c */
/* The value of flag `name` ("--all") of the running subcommand, or NULL. */
const char *kbctl_flag(const struct kbctl_args *a, const char *name);
/* Print "kbctl: MESSAGE" and the command's usage line to stderr; returns
 * KBCTL_EXIT_USAGE. */
int kbctl_usage_error(const struct kbctl_args *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Confirm a destructive command: with --yes, go on; on a terminal, print
 * `explain` and ask for `word` (named `what`: "the tenant id") to be
 * typed; without a terminal, a usage error asking for --yes. Returns -1 to
 * go on, else the exit code (said on stderr). */
int kbctl_confirm_or_yes(const struct kbctl_args *a, const char *explain,
    const char *what, const char *word);
struct kbctl_out_file;
/* Reserve the output file `path` (--out) with `mode`, replacing an
 * existing one only with --force (else a usage error). Returns -1 with *f
 * set (NULL when path is NULL), else the exit code (said on stderr). */
int kbctl_out_open(const struct kbctl_args *a, const char *path, unsigned mode,
    struct kbctl_out_file **f);
/* For a KBCTL_LOCAL_ONLINE command that needs the broker after all: take
 * the TLS flags (or KB_* variables) and open k->client, which main closes.
 * Returns -1 when connected, else the exit code (said on stderr). */
int kbctl_connect(struct kbctl *k);
/* Print "kbctl: MESSAGE" for a kb_err (its kb_err_msg) on stderr;
 * returns `code`. */
int kbctl_err(enum kb_err e, int code);

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

/* kbctl_keys.c: tenant keys, jobs, lock and unlock. */
int kbctl_cmd_keys_list(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_keys_show(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_keys_generate(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_keys_upload(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_keys_activate(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_jobs_show(struct kbctl *k, const struct kbctl_args *a);
/* Follow the job in *mp (replaced by each GetJob answer) until it is no
 * longer running: a progress bar on a terminal, a line every 5 s
 * otherwise. -1 when it ended (see its state), else an exit code. */
int kbctl_job_follow(struct kbctl *k, ProtobufCMessage **mp);
/* Print the Job `m` a call answered (following it with `wait`) and free
 * it; the exit code says how it ended (a failed job: 1). */
int kbctl_job_answer(struct kbctl *k, ProtobufCMessage *m, int wait);
/* kbctl_census.c: the key census, key retirement, DEK rotation. */
int kbctl_cmd_keys_retire(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_envs_rotate_dek(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_envs_retire_dek(struct kbctl *k, const struct kbctl_args *a);
/* kbctl_custody.c: the broker's own keys, verify and repair. */
int kbctl_cmd_platform_rotate_key(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_verify(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_repair(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_tenants_lock(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_tenants_unlock(struct kbctl *k, const struct kbctl_args *a);
/* A password (secret): from --password-file, else asked on the terminal
 * with `prompt` (and again with `again` unless NULL), else a usage error
 * "WHAT: pass --password-file FILE" (`what`: "key.pfx is a .pfx and needs
 * its password"). Returns -1 with *pw set (free with kbctl_password_free),
 * or an exit code, said on stderr (130 for Ctrl-C at the prompt). */
int kbctl_password_get(const struct kbctl_args *a, const char *prompt,
    const char *again, const char *what, char **pw, size_t *len);

/* kbctl_clock.c: the broker's policy time; confirming a clock jump. */
int kbctl_cmd_clock_show(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_clock_confirm(struct kbctl *k, const struct kbctl_args *a);

/* kbctl_quorum.c: quorum policies and approval requests. */
int kbctl_cmd_quorum_set(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_quorum_show(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_approvals_list(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_approvals_show(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_approvals_approve(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_approvals_deny(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_approvals_watch(struct kbctl *k, const struct kbctl_args *a);
/* Print approval request `id` (GetApprovalRequest) as 'approvals show'
 * does; returns an exit code. */
int kbctl_request_show(struct kbctl *k, const char *id);

/* kbctl_byok.c: the key-exchange key and offline .byok wrapping. */
int kbctl_cmd_byok_kek(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_byok_rotate_kek(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_byok_wrap(struct kbctl *k, const struct kbctl_args *a);

/* kbctl_envs.c: environment encryption, backups, copy, reset. */
int kbctl_cmd_envs_apply_key(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_envs_revert_key(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_envs_unlock(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_envs_reset(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_envs_backup(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_envs_backups(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_envs_restore(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_envs_copy(struct kbctl *k, const struct kbctl_args *a);

/* kbctl_audit.c: the audit log: list, tail, export, verify, key. */
int kbctl_cmd_audit_list(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_audit_tail(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_audit_export(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_audit_verify(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_audit_key(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_audit_keys(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_audit_rotate_key(struct kbctl *k, const struct kbctl_args *a);
struct Keybroker__V1__Event;
struct Keybroker__V1__EventFilter;
/* Follow the audit log (TailEvents, filter f) after event `cursor` (0 and
 * from_now: after the newest event now; 0 alone: from the first), handing
 * each new event to on_event in order, until a stop signal (exit 0), a
 * refusal (exit 1) or on_event returns an exit code instead of -1. A
 * stream that breaks is opened again after the last event handed over, on
 * the next broker that answers when there are several: no gap, no
 * duplicate. */
int kbctl_events_follow(struct kbctl *k,
    const struct Keybroker__V1__EventFilter *f, uint64_t cursor, int from_now,
    int (*on_event)(
        struct kbctl *k, const struct Keybroker__V1__Event *ev, void *arg),
    void *arg);
/* Ctrl-C and SIGTERM set a flag (kbctl_stop_signal) instead of ending
 * kbctl, so a command can remove what it half wrote. */
void kbctl_stop_signals_catch(void);
int kbctl_stop_signal(void);

/* kbctl_backup.c */
int kbctl_cmd_backup_create(struct kbctl *k, const struct kbctl_args *a);

/* kbctl_doctor.c: the running broker's health report. */
int kbctl_cmd_doctor(struct kbctl *k, const struct kbctl_args *a);
/* kbctl_delete.c: deletion with a way back (environments, tenant keys). */
int kbctl_cmd_envs_delete(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_envs_undelete(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_keys_delete(struct kbctl *k, const struct kbctl_args *a);
int kbctl_cmd_keys_undelete(struct kbctl *k, const struct kbctl_args *a);

#endif /* KB_KBCTL_H */
