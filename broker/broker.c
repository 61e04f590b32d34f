/* SPDX-License-Identifier: Apache-2.0 */
/* broker.c: what every part of the running broker shares: the tenant locks
 * that serialize state changes (a lease across brokers on PostgreSQL), the
 * broker's own audit events, and new ids from the token's RNG. Start-up and
 * shutdown are startup.c's. */
#include "broker.h"

#include <stdio.h>
#include <string.h>

#include "audit.h"
#include "clock.h"
#include "kb_codec.h"
#include "log.h"
#include "store_lease.h"

static unsigned
tenant_slot(const char *tenant)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	const char *p;

	for (p = tenant; *p != '\0'; p++)
		h = (h ^ (uint8_t)*p) * 16777619u;
	return h % BROKER_TENANT_LOCKS;
}

/* The mutex keeps this broker's threads in line; on PostgreSQL a lease of
 * the same name keeps the other brokers' (their rules are read and the
 * change they allow is made under it, so two brokers racing get one
 * winner, not timing). A lease that cannot be had (the database is down)
 * is logged: the call then fails at its first store access anyway. */
void
broker_tenant_lock(struct broker *b, const char *tenant)
{
	unsigned i = tenant_slot(tenant);
	char name[STORE_ID_MAX + 16];
	enum kb_err e;

	pthread_mutex_lock(&b->tenant_locks[i]);
	b->tenant_leases[i] = NULL;
	if (!store_is_postgres(b->store))
		return;
	snprintf(name, sizeof(name), "tenant/%s", tenant);
	if ((e = store_lease_wait(b->store, name, &b->tenant_leases[i]))
	    != KB_OK) {
		log_error("tenant %s: the lock shared by the brokers: %s",
		    tenant, kb_err_msg(e));
		b->tenant_leases[i] = NULL;
	}
}

void
broker_tenant_unlock(struct broker *b, const char *tenant)
{
	unsigned i = tenant_slot(tenant);

	store_lease_drop(b->tenant_leases[i]);
	b->tenant_leases[i] = NULL;
	pthread_mutex_unlock(&b->tenant_locks[i]);
}

enum kb_err
broker_audit_system(struct broker *b, const char *what, const char *tenant,
    const char *env, const char *key_id, const char *result, const char *reason)
{
	struct audit_record r;
	char rid[40];
	enum kb_err e;

	memset(&r, 0, sizeof(r));
	kb_audit_system_rid(
	    rid, sizeof(rid), b->instance, (uint64_t)clock_now_us());
	r.actor = "keybroker";
	r.role = "system";
	r.method = what;
	r.tenant = tenant;
	r.env = env;
	r.key_id = key_id;
	r.result = result;
	r.reason = reason;
	r.request_id = rid;
	if ((e = audit_append(b->audit, &r, NULL)) != KB_OK)
		log_error(
		    "audit log: cannot record %s: %s", what, kb_err_msg(e));
	return e;
}

enum kb_err
broker_new_id(struct broker *b, const char *prefix, char *out, size_t len)
{
	uint8_t r[8];
	enum kb_err e;

	if ((e = hsm_random(b->hsm, r, sizeof(r))) != KB_OK)
		return e;
	snprintf(out, len, "%s%02x%02x%02x%02x%02x%02x%02x%02x", prefix, r[0],
	    r[1], r[2], r[3], r[4], r[5], r[6], r[7]);
	return KB_OK;
}

enum kb_err
broker_new_uid(struct broker *b, char out[STORE_UID_LEN + 1])
{
	uint8_t r[STORE_UID_LEN / 2];
	enum kb_err e;

	if ((e = hsm_random(b->hsm, r, sizeof(r))) != KB_OK)
		return e;
	kb_hex_encode(r, sizeof(r), out);
	return KB_OK;
}
