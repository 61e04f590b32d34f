/* SPDX-License-Identifier: Apache-2.0 */
/* jobs.h: the broker's background work: key activation jobs (re-wrap a
 * tenant's customer-managed environments under the new key, resumable) and
 * the 28-day sweeper of locked environments. */
#ifndef KB_JOBS_H
#define KB_JOBS_H

#include "broker.h"

/* Start the background threads; jobs left running by a previous process
 * resume. */
enum kb_err jobs_start(struct broker *b, struct jobs **out);

/* A new job was recorded: run it now. */
void jobs_kick(struct jobs *j);

/* Start a platform-key rotation: a new platform key (installing) and a job
 * re-sealing every platform-managed DEK under it; when it is done the old
 * key is destroyed. KB_ERR_ALREADY_EXISTS (and *job the running one) if one
 * is running. `why` goes to the log. */
enum kb_err jobs_rotate_platform(
    struct broker *b, const char *why, struct store_job *job);

/* Run one sweep now (also done every sweep_interval_s). Returns the number
 * of environments deleted. */
unsigned jobs_sweep(struct broker *b);

/* Have the sweeper thread call fn(b) after each sweep: work other modules
 * do on its schedule (quorum_sweep), set by main(), which knows them. NULL
 * stops it. */
void jobs_sweep_hook_set(struct jobs *j, void (*fn)(struct broker *b));

/* Stop the threads: a running job stops between batches and resumes at the
 * next start. Accepts NULL. */
void jobs_stop(struct jobs *j);

#endif /* KB_JOBS_H */
