/* SPDX-License-Identifier: Apache-2.0 */
/* identity.h: who is calling, from the client's TLS certificate.
 *
 * The certificate must chain to the configured client CA and be within its
 * validity. Subject OU is the role, CN the principal's name. Service
 * certificates carry SAN URIs kb://env/<tenant>/<env>; admin certificates may
 * carry kb://tenant/<tenant> to limit them to those tenants. */
#ifndef KB_IDENTITY_H
#define KB_IDENTITY_H

#include <stddef.h>
#include <stdint.h>

#include "kb_err.h"
#include "store.h"

enum role {
	ROLE_NONE = 0,
	ROLE_ADMIN = 1,     /* values match keybroker.v1.Role */
	ROLE_SERVICE = 2,
	ROLE_AUDITOR = 3,
};

#define ROLE_BIT(r) (1u << (r))
#define IDENTITY_MAX_SCOPES 16

struct identity_scope {
	char tenant[STORE_ID_MAX];
	char env[STORE_ID_MAX];      /* "" for a tenant scope */
};

struct identity {
	enum role role;
	char name[128];                 /* Subject CN */
	struct identity_scope scopes[IDENTITY_MAX_SCOPES];
	size_t nscopes;
	int64_t not_after_us;
};

struct identity_verifier;

/* Load the client CA bundle (PEM) used to verify callers. */
enum kb_err identity_verifier_new(const char *ca_file,
    struct identity_verifier **out);
void identity_verifier_free(struct identity_verifier *v);

/* Verify a PEM client certificate at time `now_us` and extract the identity.
 * KB_ERR_UNAUTHENTICATED when it does not chain to the CA, has expired or is
 * not yet valid, or has no CN; KB_ERR_PERMISSION_DENIED when it has no known
 * role. Results are cached per certificate. */
enum kb_err identity_from_pem(struct identity_verifier *v, const char *pem,
    size_t len, int64_t now_us, struct identity *out);

const char *identity_role_name(enum role r);

/* Whether the identity may act on `tenant` (admins: unlimited or listed). */
int identity_may_tenant(const struct identity *id, const char *tenant);
/* Whether a service identity may read `tenant`/`env`. */
int identity_may_env(const struct identity *id, const char *tenant,
    const char *env);

#endif /* KB_IDENTITY_H */
