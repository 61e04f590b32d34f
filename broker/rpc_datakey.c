/* SPDX-License-Identifier: Apache-2.0 */
/* rpc_datakey.c: GetDataKey, the services' one call. Every answer unwraps in
 * the token: there is no plaintext DEK cache, so a lock takes effect on the
 * very next call. */
#include "rpc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dek.h"
#include "kb_secmem.h"
#include "keybroker.pb-c.h"
#include "names.h"

enum kb_err
rpc_datakey_get(struct rpc_ctx *c, const ProtobufCMessage *req,
    ProtobufCMessage **resp)
{
	const Keybroker__V1__GetDataKeyRequest *in = (const void *)req;
	Keybroker__V1__GetDataKeyResponse *out;
	struct store_env env;
	struct store_dek dek;
	uint8_t *plain;
	enum kb_err e;

	if ((e = names_check_id("tenant id", in->tenant_id)) != KB_OK ||
	    (e = names_check_id("environment name", in->environment)) != KB_OK)
		return e;
	/* Authorization before existence, so a service cannot probe which
	 * environments exist elsewhere. */
	if (!identity_may_env(c->id, in->tenant_id, in->environment))
		return kb_errf(KB_ERR_PERMISSION_DENIED, "service \"%s\" is not "
		    "bound to environment %s/%s (its certificate needs the SAN "
		    "URI kb://env/%s/%s)", c->id->name, in->tenant_id,
		    in->environment, in->tenant_id, in->environment);
	if ((e = store_env_dek(c->b->store, in->tenant_id, in->environment,
	    in->version, &env, &dek)) != KB_OK)
		return e;
	snprintf(c->audit_key_id, sizeof(c->audit_key_id), "%s", dek.key_id);
	if (env.state == STORE_ENV_LOCKED)
		return kb_errf(KB_ERR_FAILED_PRECONDITION, "environment locked: "
		    "%s/%s is locked; an admin must unlock the tenant with its "
		    "key and then unlock the environment", env.tenant_id,
		    env.name);
	if (env.state == STORE_ENV_DELETED)
		return kb_errf(KB_ERR_NOT_FOUND, "environment %s/%s was deleted "
		    "and its data key destroyed", env.tenant_id, env.name);
	if ((out = malloc(sizeof(*out))) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	keybroker__v1__get_data_key_response__init(out);
	*resp = &out->base;
	if ((plain = malloc(DEK_LEN)) == NULL)
		return kb_errf(KB_ERR_NOMEM, "out of memory");
	if ((e = dek_unwrap(c->b, &dek, plain)) != KB_OK) {
		kb_freezero(plain, DEK_LEN);
		return kb_err_wrap(e, "unwrapping the data key of %s/%s",
		    env.tenant_id, env.name);
	}
	/* The response owns the plaintext; kb_wire_free wipes it. */
	out->dek.data = plain;
	out->dek.len = DEK_LEN;
	out->dek_version = dek.version;
	out->key_id = rpc_strdup(dek.key_id);
	out->tenant_id = rpc_strdup(env.tenant_id);
	out->environment = rpc_strdup(env.name);
	return KB_OK;
}
