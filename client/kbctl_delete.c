/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl_delete.c: kbctl's handlers for deletion with a way back: envs
 * delete/undelete and keys delete/undelete. */
#include "kbctl.h"

#include <stdio.h>
#include <string.h>

#include "kbctl_out.h"
#include "keybroker.pb-c.h"

static int
env_call(struct kbctl *k, const struct kbctl_args *a, const char *method)
{
	Keybroker__V1__EnvironmentRef req =
	    KEYBROKER__V1__ENVIRONMENT_REF__INIT;

	req.tenant_id = (char *)a->argv[0];
	req.name = (char *)a->argv[1];
	return kbctl_call_print(k, method, &req.base,
	    &keybroker__v1__environment__descriptor, kbctl_print_env);
}

static int
key_call(struct kbctl *k, const struct kbctl_args *a, const char *method)
{
	Keybroker__V1__KeyRef req = KEYBROKER__V1__KEY_REF__INIT;

	req.tenant_id = (char *)a->argv[0];
	req.key_id = (char *)a->argv[1];
	return kbctl_call_print(k, method, &req.base,
	    &keybroker__v1__key__descriptor, kbctl_print_key);
}

int
kbctl_cmd_envs_delete(struct kbctl *k, const struct kbctl_args *a)
{
	char explain[1024], t[128], e[128];
	int rc;

	kbctl_sanitize(a->argv[0], t, sizeof(t));
	kbctl_sanitize(a->argv[1], e, sizeof(e));
	snprintf(explain, sizeof(explain),
	    "Deleting environment %s/%s:\n"
	    "  - from now on it serves no data key and cannot be backed up, "
	    "restored,\n    copied or changed; its backups cannot be "
	    "restored;\n"
	    "  - when the broker's deletion window (deletion_window_days) "
	    "ends, its data\n    key and those of its backups are destroyed "
	    "for good: data encrypted\n    under them cannot be read again, "
	    "by anyone;\n"
	    "  - until then 'kbctl envs undelete %s %s' gives it back as it "
	    "was.\n",
	    t, e, t, e);
	if ((rc = kbctl_confirm_or_yes(
	         a, explain, "the environment name", a->argv[1]))
	    >= 0)
		return rc;
	return env_call(k, a, KB_METHOD_DELETE_ENVIRONMENT);
}

int
kbctl_cmd_envs_undelete(struct kbctl *k, const struct kbctl_args *a)
{
	return env_call(k, a, KB_METHOD_UNDELETE_ENVIRONMENT);
}

int
kbctl_cmd_keys_delete(struct kbctl *k, const struct kbctl_args *a)
{
	char explain[1024], t[128], id[128];
	int rc;

	kbctl_sanitize(a->argv[0], t, sizeof(t));
	kbctl_sanitize(a->argv[1], id, sizeof(id));
	snprintf(explain, sizeof(explain),
	    "Deleting key %s of tenant %s:\n"
	    "  - only an available key that protects nothing (no data key, "
	    "KEK or backup\n    depends on it) can be deleted; it cannot be "
	    "activated meanwhile;\n"
	    "  - when the broker's deletion window (deletion_window_days) "
	    "ends, it is\n    destroyed in the token for good (its .pfx, if "
	    "you kept it, can be uploaded\n    again as a new key);\n"
	    "  - until then 'kbctl keys undelete %s %s' gives it back.\n",
	    id, t, t, id);
	if ((rc = kbctl_confirm_or_yes(a, explain, "the key id", a->argv[1]))
	    >= 0)
		return rc;
	return key_call(k, a, KB_METHOD_DELETE_KEY);
}

int
kbctl_cmd_keys_undelete(struct kbctl *k, const struct kbctl_args *a)
{
	return key_call(k, a, KB_METHOD_UNDELETE_KEY);
}
