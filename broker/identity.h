/* SPDX-License-Identifier: Apache-2.0 */
/* identity.h: who is calling, from the client's TLS certificate.
 *
 * The certificate must chain to the configured client CA and be within its
 * validity. Subject OU is the role, CN the principal's name. Service
 * certificates carry SAN URIs kb://env/<tenant>/<env>; admin certificates
 * carry kb://tenant/<tenant> (limited to those tenants) or kb://platform
 * (every tenant). A name or URI the broker cannot parse exactly refuses the
 * certificate: it is never read as "no scope". With a client CRL, a revoked
 * certificate is refused naming its serial. */
#ifndef KB_IDENTITY_H
#define KB_IDENTITY_H

#include <stddef.h>
#include <stdint.h>

#include "kb_err.h"
#include "store.h"

enum role {
	ROLE_NONE = 0,
	ROLE_ADMIN = 1, /* values match keybroker.v1.Role */
	ROLE_SERVICE = 2,
	ROLE_AUDITOR = 3,
};

#define ROLE_BIT(r) (1u << (r))
#define IDENTITY_MAX_SCOPES 16

struct identity_scope {
	char tenant[STORE_ID_MAX];
	char env[STORE_ID_MAX]; /* "" for a tenant scope */
};

struct identity {
	enum role role;
	char name[128]; /* Subject CN */
	struct identity_scope scopes[IDENTITY_MAX_SCOPES];
	size_t nscopes;
	int platform; /* admin with kb://platform */
	int64_t not_after_us;
};

struct identity_verifier;

/* Load the client CA bundle (PEM) used to verify callers. */
enum kb_err identity_verifier_new(
    const char *ca_file, struct identity_verifier **out);
void identity_verifier_free(struct identity_verifier *v);

/* Check every certificate against the CRLs in `crl_file` (PEM, one or more,
 * each signed by a CA of the client CA file; NULL: none) from now on. The
 * file is looked at again at most once a second and read again when it
 * changed; a CRL past its nextUpdate is logged, and with `strict` refuses
 * every call (KB_ERR_UNAVAILABLE). KB_ERR_CONFIG when the file cannot be
 * used; the verifier then keeps what it had. */
enum kb_err identity_verifier_set_crl(
    struct identity_verifier *v, const char *crl_file, int strict);

/* Read the CRL file again now (SIGHUP). Cached results are voided. On
 * failure the CRL read before stays in force. */
enum kb_err identity_verifier_reload(struct identity_verifier *v);

/* Verify a PEM client certificate at time `now_us` and extract the identity.
 * KB_ERR_UNAUTHENTICATED when it does not chain to the CA, has expired or is
 * not yet valid, or has no CN; KB_ERR_PERMISSION_DENIED when it has no known
 * role. Results are cached per certificate. */
enum kb_err identity_from_pem(struct identity_verifier *v, const char *pem,
    size_t len, int64_t now_us, struct identity *out);

const char *identity_role_name(enum role r);

/* Parse one SAN URI exactly: kb://platform (*platform = 1),
 * kb://tenant/TENANT or kb://env/TENANT/ENV (names as names_check_id).
 * KB_ERR_PERMISSION_DENIED with a message saying what is wrong otherwise
 * (other scheme or case, a NUL, percent-encoding, a bad name). */
enum kb_err identity_scope_parse(const unsigned char *uri, size_t len,
    struct identity_scope *s, int *platform);

/* Whether the identity may act on `tenant`: an admin with kb://platform or
 * kb://tenant/<tenant>, or an auditor (reads every tenant). A service's
 * kb://env/<tenant>/<env> is not a tenant scope. */
int identity_may_tenant(const struct identity *id, const char *tenant);
/* Whether a service identity may read `tenant`/`env`. */
int identity_may_env(
    const struct identity *id, const char *tenant, const char *env);

#endif /* KB_IDENTITY_H */
