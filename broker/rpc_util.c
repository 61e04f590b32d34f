/* SPDX-License-Identifier: Apache-2.0 */
/* rpc_util.c: small helpers shared by request handlers. */
#include "rpc.h"

#include <stdlib.h>
#include <string.h>

#include "kb_time.h"
#include "keybroker.pb-c.h"
#include "policy.h"

char *
rpc_strdup(const char *s)
{
	char *p;

	if (s == NULL || s[0] == '\0')
		return (char *)protobuf_c_empty_string;
	if ((p = strdup(s)) == NULL)
		return (char *)protobuf_c_empty_string;
	return p;
}

Keybroker__V1__Tenant *
rpc_tenant_msg(const struct store_tenant *t)
{
	Keybroker__V1__Tenant *m = malloc(sizeof(*m));

	if (m == NULL)
		return NULL;
	keybroker__v1__tenant__init(m);
	m->id = rpc_strdup(t->id);
	m->display_name = rpc_strdup(t->display_name);
	m->create_time_us = t->create_time_us;
	m->environment_count = t->env_count;
	m->state = t->locked ? KEYBROKER__V1__TENANT_STATE__TENANT_STATE_LOCKED
	                     : KEYBROKER__V1__TENANT_STATE__TENANT_STATE_ACTIVE;
	m->active_key_id = rpc_strdup(t->active_key_id);
	m->last_activation_time_us = t->last_activation_us;
	m->last_key_change_time_us = t->last_key_change_us;
	m->lock_time_us = t->lock_time_us;
	m->lock_key_id = rpc_strdup(t->lock_key_id);
	m->locked_environment_count = t->locked_env_count;
	return m;
}

static Keybroker__V1__EnvironmentState
env_state_enum(enum store_env_state st)
{
	switch (st) {
	case STORE_ENV_ENABLED:
		return KEYBROKER__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_ENABLED;
	case STORE_ENV_LOCKED:
		return KEYBROKER__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_LOCKED;
	case STORE_ENV_DELETED:
		return KEYBROKER__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_DELETED;
	case STORE_ENV_PENDING_DELETION:
		return KEYBROKER__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_PENDING_DELETION;
	}
	return KEYBROKER__V1__ENVIRONMENT_STATE__ENVIRONMENT_STATE_UNSPECIFIED;
}

enum kb_err
rpc_env_pending_refusal(const struct store_env *env, const char *what)
{
	char when[40];

	kb_time_format(env->delete_final_us, when, sizeof(when));
	return kb_errf(KB_ERR_FAILED_PRECONDITION,
	    "%s refused: environment %s/%s is pending deletion; it becomes "
	    "final at %s (deletion_window_days), when its data keys are "
	    "destroyed; until then 'kbctl envs undelete %s %s' cancels it",
	    what, env->tenant_id, env->name, when, env->tenant_id, env->name);
}

Keybroker__V1__Environment *
rpc_env_msg(const struct store_env *env)
{
	Keybroker__V1__Environment *m = malloc(sizeof(*m));

	if (m == NULL)
		return NULL;
	keybroker__v1__environment__init(m);
	m->tenant_id = rpc_strdup(env->tenant_id);
	m->name = rpc_strdup(env->name);
	m->mode = env->mode == STORE_MODE_CUSTOMER
	    ? KEYBROKER__V1__ENCRYPTION_MODE__ENCRYPTION_MODE_CUSTOMER
	    : KEYBROKER__V1__ENCRYPTION_MODE__ENCRYPTION_MODE_PLATFORM;
	m->state = env_state_enum(env->state);
	if (env->state == STORE_ENV_PENDING_DELETION)
		m->state_before_deletion =
		    env_state_enum(env->state_before_deletion);
	m->delete_request_time_us = env->delete_request_us;
	m->delete_final_time_us = env->delete_final_us;
	m->key_id = rpc_strdup(env->key_id);
	m->dek_version = env->dek_version;
	m->wrap_algorithm = rpc_strdup(env->wrap_alg);
	m->create_time_us = env->create_time_us;
	m->update_time_us = env->update_time_us;
	m->lock_time_us = env->lock_time_us;
	return m;
}

static Keybroker__V1__KeyOrigin
origin_enum(const char *s)
{
	if (strcmp(s, "generated") == 0)
		return KEYBROKER__V1__KEY_ORIGIN__KEY_ORIGIN_GENERATED;
	if (strcmp(s, "pfx") == 0)
		return KEYBROKER__V1__KEY_ORIGIN__KEY_ORIGIN_PFX;
	if (strcmp(s, "byok") == 0)
		return KEYBROKER__V1__KEY_ORIGIN__KEY_ORIGIN_BYOK;
	return KEYBROKER__V1__KEY_ORIGIN__KEY_ORIGIN_UNSPECIFIED;
}

static Keybroker__V1__KeyState
key_state_enum(const char *s)
{
	static const struct {
		const char *name;
		Keybroker__V1__KeyState v;
	} map[] = {
	    {"available", KEYBROKER__V1__KEY_STATE__KEY_STATE_AVAILABLE},
	    {"installing", KEYBROKER__V1__KEY_STATE__KEY_STATE_INSTALLING},
	    {"active", KEYBROKER__V1__KEY_STATE__KEY_STATE_ACTIVE},
	    {"locked", KEYBROKER__V1__KEY_STATE__KEY_STATE_LOCKED},
	    {"deleted", KEYBROKER__V1__KEY_STATE__KEY_STATE_DELETED},
	    {"pending_deletion",
	        KEYBROKER__V1__KEY_STATE__KEY_STATE_PENDING_DELETION},
	    {"retiring", KEYBROKER__V1__KEY_STATE__KEY_STATE_RETIRING},
	    {"retired", KEYBROKER__V1__KEY_STATE__KEY_STATE_RETIRED},
	    {"pending_approval",
	        KEYBROKER__V1__KEY_STATE__KEY_STATE_PENDING_APPROVAL},
	};
	size_t i;

	for (i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (strcmp(map[i].name, s) == 0)
			return map[i].v;
	return KEYBROKER__V1__KEY_STATE__KEY_STATE_UNSPECIFIED;
}

Keybroker__V1__Key *
rpc_key_msg(const struct store_key *k)
{
	Keybroker__V1__Key *m = malloc(sizeof(*m));

	if (m == NULL)
		return NULL;
	keybroker__v1__key__init(m);
	m->id = rpc_strdup(k->id);
	m->tenant_id = rpc_strdup(k->tenant_id);
	m->origin = origin_enum(k->origin);
	m->state = key_state_enum(k->state);
	m->fingerprint = rpc_strdup(k->fingerprint);
	m->bits = k->bits;
	m->create_time_us = k->create_time_us;
	m->update_time_us = k->update_time_us;
	m->activate_time_us = k->activate_time_us;
	m->lock_time_us = k->lock_time_us;
	m->delete_time_us = k->delete_time_us;
	m->delete_request_time_us = k->delete_request_us;
	m->delete_final_time_us = k->delete_final_us;
	m->retire_time_us = k->retire_time_us;
	return m;
}

Keybroker__V1__Job *
rpc_job_msg(const struct store_job *j)
{
	Keybroker__V1__Job *m = malloc(sizeof(*m));

	if (m == NULL)
		return NULL;
	keybroker__v1__job__init(m);
	m->id = rpc_strdup(j->id);
	m->tenant_id = rpc_strdup(j->tenant_id);
	m->kind = rpc_strdup(j->kind);
	m->key_id = rpc_strdup(j->key_id);
	m->previous_key_id = rpc_strdup(j->previous_key_id);
	m->target_key_id = rpc_strdup(j->target_key_id);
	if (strcmp(j->state, "running") == 0)
		m->state = KEYBROKER__V1__JOB_STATE__JOB_STATE_RUNNING;
	else if (strcmp(j->state, "done") == 0)
		m->state = KEYBROKER__V1__JOB_STATE__JOB_STATE_DONE;
	else
		m->state = KEYBROKER__V1__JOB_STATE__JOB_STATE_FAILED;
	m->total = j->total;
	m->done = j->done;
	m->error = rpc_strdup(j->error);
	m->create_time_us = j->create_time_us;
	m->update_time_us = j->update_time_us;
	return m;
}

Keybroker__V1__Backup *
rpc_backup_msg(const struct store_backup *bk)
{
	Keybroker__V1__Backup *m = malloc(sizeof(*m));

	if (m == NULL)
		return NULL;
	keybroker__v1__backup__init(m);
	m->id = rpc_strdup(bk->id);
	m->tenant_id = rpc_strdup(bk->tenant_id);
	m->environment = rpc_strdup(bk->env);
	m->dek_version = bk->dek_version;
	m->mode = bk->mode == STORE_MODE_CUSTOMER
	    ? KEYBROKER__V1__ENCRYPTION_MODE__ENCRYPTION_MODE_CUSTOMER
	    : KEYBROKER__V1__ENCRYPTION_MODE__ENCRYPTION_MODE_PLATFORM;
	m->key_id = rpc_strdup(bk->key_id);
	m->create_time_us = bk->create_time_us;
	return m;
}

void
rpc_policy_tenant(const struct store_tenant *t, struct policy_tenant *p)
{
	memset(p, 0, sizeof(*p));
	p->id = t->id;
	p->locked = t->locked;
	p->locked_envs = t->locked_env_count;
	p->last_env_lock_us = t->last_env_lock_us;
	p->activation_running = t->installing_key_id[0] != '\0';
	p->has_active_key = t->active_key_id[0] != '\0';
	p->last_activation_us = t->last_activation_us;
	p->last_key_change_us = t->last_key_change_us;
	p->lock_time_us = t->lock_time_us;
}

enum kb_err
rpc_reply(ProtobufCMessage **resp, void *msg)
{
	if (msg == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	*resp = msg;
	return KB_OK;
}
