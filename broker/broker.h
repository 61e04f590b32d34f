/* SPDX-License-Identifier: Apache-2.0 */
/* broker.h: the running broker's parts (made and closed by startup.c), and
 * what they share: tenant locks, the broker's own audit events, new ids. */
#ifndef KB_BROKER_H
#define KB_BROKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "config.h"
#include "hsm.h"
#include "identity.h"
#include "kb_err.h"
#include "store.h"
#include "store_lease.h"

#define BROKER_PLATFORM_KEY_ID "kb-platform-1"
#define BROKER_AUDIT_KEY_ID "kb-audit-1"
#define BROKER_TENANT_LOCKS 64

struct jobs;
struct audit;
struct metrics;
struct health;
struct ratelimit;
struct timemark;

struct broker {
	struct config *cfg;
	struct hsm *hsm;
	struct store *store;
	struct identity_verifier *verifier;
	struct hsm_token_info token;
	char wrap_alg[STORE_ALG_MAX]; /* OAEP variant the token takes */
	/* Set while the upgrade job moves rows out of the pre-v2 envelope:
	 * only then does a read accept one. */
	atomic_int legacy_open;
	int64_t start_time_us;
	/* This broker among the brokers on one database (8 hex digits, from
	 * its host name and listen address: the same across its restarts).
	 * Request ids begin with it ("r-" instance, then 16 hex digits of a
	 * counter) and so do system events' ("sys-" instance "-" time), so a
	 * verifier tells whose calls a broker.start cut short. */
	char instance[9];
	atomic_uint_least64_t request_seq;
	/* State changes of one tenant are serialized: a policy check and the
	 * writes it allows happen under the tenant's lock (striped by id). */
	pthread_mutex_t tenant_locks[BROKER_TENANT_LOCKS];
	/* With several brokers on one database: the cluster-wide lease that
	 * goes with each held tenant lock (under that lock). */
	struct store_lease *tenant_leases[BROKER_TENANT_LOCKS];
	struct jobs *jobs; /* background work (jobs.c) */
	struct audit *audit; /* the event log (audit.c) */
	struct store_key audit_key; /* signs audit checkpoints */
	struct health *health; /* the health probe (health.c) */
	struct ratelimit *rate; /* fair shares (ratelimit.c) */
	struct timemark *timemark; /* policy time's mark (timemark.c) */
	struct metrics *metrics; /* call counters (metrics.c); NULL: off */
};

/* Take and release the lock that serializes state changes of `tenant`. */
void broker_tenant_lock(struct broker *b, const char *tenant);
void broker_tenant_unlock(struct broker *b, const char *tenant);

/* Record an event of the broker itself (actor "keybroker", role
 * "system"): start, stop, jobs, the sweeper. Logs and returns the error if
 * the audit log cannot take it. */
enum kb_err broker_audit_system(struct broker *b, const char *what,
    const char *tenant, const char *env, const char *key_id, const char *result,
    const char *reason);

/* A new random identifier "<prefix><16 hex digits>" from the token. */
enum kb_err broker_new_id(
    struct broker *b, const char *prefix, char *out, size_t len);

/* A new environment uid: 32 hex digits from the token's RNG. */
enum kb_err broker_new_uid(struct broker *b, char out[STORE_UID_LEN + 1]);

#endif /* KB_BROKER_H */
