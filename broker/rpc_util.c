/* SPDX-License-Identifier: Apache-2.0 */
/* rpc_util.c: small helpers shared by request handlers. */
#include "rpc.h"

#include <stdlib.h>
#include <string.h>

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

enum kb_err
rpc_check_tenant_access(struct rpc_ctx *c, const char *tenant)
{
	if (identity_may_tenant(c->id, tenant))
		return KB_OK;
	return kb_errf(KB_ERR_PERMISSION_DENIED, "%s \"%s\" is limited to "
	    "other tenants and may not act on tenant \"%s\"",
	    identity_role_name(c->id->role), c->id->name, tenant);
}
