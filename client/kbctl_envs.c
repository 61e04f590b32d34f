/* SPDX-License-Identifier: Apache-2.0 */
/* kbctl_envs.c: kbctl's handlers for an environment's encryption: apply
 * and revert the tenant key, unlock, reset, backups, restore and copy. */
#include "kbctl.h"

#include <string.h>

#include "kbctl_out.h"
#include "keybroker.pb-c.h"

/* One EnvironmentRef call answered with an Environment. */
static int
env_ref_call(struct kbctl *k, const struct kbctl_args *a, const char *method)
{
	Keybroker__V1__EnvironmentRef req =
	    KEYBROKER__V1__ENVIRONMENT_REF__INIT;

	req.tenant_id = (char *)a->argv[0];
	req.name = (char *)a->argv[1];
	return kbctl_call_print(k, method, &req.base,
	    &keybroker__v1__environment__descriptor, kbctl_print_env);
}

int
kbctl_cmd_envs_apply_key(struct kbctl *k, const struct kbctl_args *a)
{
	return env_ref_call(k, a, KB_METHOD_APPLY_KEY);
}

int
kbctl_cmd_envs_revert_key(struct kbctl *k, const struct kbctl_args *a)
{
	return env_ref_call(k, a, KB_METHOD_REVERT_KEY);
}

int
kbctl_cmd_envs_unlock(struct kbctl *k, const struct kbctl_args *a)
{
	return env_ref_call(k, a, KB_METHOD_UNLOCK_ENVIRONMENT);
}

int
kbctl_cmd_envs_reset(struct kbctl *k, const struct kbctl_args *a)
{
	char explain[1024], t[128], e[128];
	int rc;

	kbctl_sanitize(a->argv[0], t, sizeof(t));
	kbctl_sanitize(a->argv[1], e, sizeof(e));
	snprintf(explain, sizeof(explain),
	    "Resetting environment %s/%s:\n"
	    "  - its data key, and the data keys of all its backups, are "
	    "destroyed: data\n    encrypted under them cannot be read "
	    "again, by anyone;\n"
	    "  - it goes back to the platform key with a new data key.\n",
	    t, e);
	if ((rc = kbctl_confirm_or_yes(
	         a, explain, "the environment name", a->argv[1]))
	    >= 0)
		return rc;
	return env_ref_call(k, a, KB_METHOD_RESET_ENVIRONMENT);
}

int
kbctl_cmd_envs_backup(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__EnvironmentRef req =
	    KEYBROKER__V1__ENVIRONMENT_REF__INIT;

	req.tenant_id = (char *)a->argv[0];
	req.name = (char *)a->argv[1];
	return kbctl_call_print(k, KB_METHOD_BACKUP_ENVIRONMENT, &req.base,
	    &keybroker__v1__backup__descriptor, kbctl_print_backup);
}

int
kbctl_cmd_envs_backups(struct kbctl *k, const struct kbctl_args *a)
{
	static const struct kbctl_list_fmt backups = {"backups",
	    kbctl_backup_headers, KBCTL_BACKUP_NCOLS, kbctl_backup_row,
	    kbctl_backup_json};
	Keybroker__V1__ListBackupsRequest req =
	    KEYBROKER__V1__LIST_BACKUPS_REQUEST__INIT;

	req.tenant_id = (char *)a->argv[0];
	req.name = (char *)a->argv[1];
	return kbctl_call_list(k, KB_METHOD_LIST_BACKUPS, &req.base,
	    &keybroker__v1__list_backups_response__descriptor, &backups);
}

int
kbctl_cmd_envs_restore(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__RestoreBackupRequest req =
	    KEYBROKER__V1__RESTORE_BACKUP_REQUEST__INIT;
	char explain[1024], t[128], e[128], b[128];
	int rc;

	kbctl_sanitize(a->argv[0], t, sizeof(t));
	kbctl_sanitize(a->argv[1], e, sizeof(e));
	kbctl_sanitize(a->argv[2], b, sizeof(b));
	snprintf(explain, sizeof(explain),
	    "Restoring backup %s into environment %s/%s:\n"
	    "  - the environment's data key is replaced by the backup's: "
	    "what its current\n    data key protects and the backup's does "
	    "not cannot be read afterwards.\n",
	    b, t, e);
	if ((rc = kbctl_confirm_or_yes(
	         a, explain, "the environment name", a->argv[1]))
	    >= 0)
		return rc;
	req.tenant_id = (char *)a->argv[0];
	req.name = (char *)a->argv[1];
	req.backup_id = (char *)a->argv[2];
	return kbctl_call_print(k, KB_METHOD_RESTORE_BACKUP, &req.base,
	    &keybroker__v1__environment__descriptor, kbctl_print_env);
}

int
kbctl_cmd_envs_copy(struct kbctl *k, const struct kbctl_args *a)
{
	Keybroker__V1__CopyEnvironmentRequest req =
	    KEYBROKER__V1__COPY_ENVIRONMENT_REQUEST__INIT;
	char explain[1024], t[128], s[128], d[128];
	int rc;

	kbctl_sanitize(a->argv[0], t, sizeof(t));
	kbctl_sanitize(a->argv[1], s, sizeof(s));
	kbctl_sanitize(a->argv[2], d, sizeof(d));
	snprintf(explain, sizeof(explain),
	    "Copying environment %s/%s onto %s/%s:\n"
	    "  - %s is overwritten: it gets %s's data key, and what its own "
	    "data key\n    protects cannot be read afterwards.\n",
	    t, s, t, d, d, s);
	if ((rc = kbctl_confirm_or_yes(
	         a, explain, "the target environment name", a->argv[2]))
	    >= 0)
		return rc;
	req.tenant_id = (char *)a->argv[0];
	req.source = (char *)a->argv[1];
	req.target = (char *)a->argv[2];
	return kbctl_call_print(k, KB_METHOD_COPY_ENVIRONMENT, &req.base,
	    &keybroker__v1__environment__descriptor, kbctl_print_env);
}
