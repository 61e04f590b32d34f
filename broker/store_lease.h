/* SPDX-License-Identifier: Apache-2.0 */
/* store_lease.h: locks every broker on one database sees. With several
 * brokers on PostgreSQL, one at a time runs the re-seal jobs and the
 * sweeper, and one admin call at a time changes a tenant; a broker that
 * dies loses its locks with its database session, so another takes over at
 * once. On SQLite (one broker per file) they are granted at once. */
#ifndef KB_STORE_LEASE_H
#define KB_STORE_LEASE_H

#include "kb_err.h"

struct store;
struct store_lease;

#define STORE_LEASE_JOBS "jobs"
#define STORE_LEASE_SWEEPER "sweeper"

/* Take lease `name` without waiting: KB_OK and *out, or
 * KB_ERR_FAILED_PRECONDITION when another broker holds it,
 * KB_ERR_UNAVAILABLE when the database cannot be reached. */
enum kb_err store_lease_take(
    struct store *s, const char *name, struct store_lease **out);
/* Take lease `name`, waiting while another broker holds it. */
enum kb_err store_lease_wait(
    struct store *s, const char *name, struct store_lease **out);
/* 1 while the lease is still ours (its session is alive), else 0. */
int store_lease_held(struct store_lease *l);
void store_lease_drop(struct store_lease *l); /* NULL is fine */

#endif /* KB_STORE_LEASE_H */
