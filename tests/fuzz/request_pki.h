/* SPDX-License-Identifier: Apache-2.0 */
/* request_pki.h: what request_fuzzer.c and request_corpus.c (its seed
 * writer) share: the callers byte 1 of an input picks, the placeholders
 * replaced by the ids of the fuzzer's world, and a throw-away PKI made in
 * memory. Tests only. */
#ifndef KB_FUZZ_REQUEST_PKI_H
#define KB_FUZZ_REQUEST_PKI_H

#include <stddef.h>

/* Byte 1 of a request_fuzzer input, modulo FUZZ_CALLERS. */
enum fuzz_caller {
	FUZZ_ADMIN = 0, /* OU=admin, kb://platform */
	FUZZ_SERVICE, /* OU=service, kb://env/acme/prod */
	FUZZ_AUDITOR, /* OU=auditor */
	FUZZ_NONE, /* no client certificate */
	FUZZ_GARBAGE, /* a PEM block that is not a certificate */
	FUZZ_TENANT_ADMIN, /* OU=admin limited to kb://tenant/globex */
	FUZZ_OTHER_CA, /* OU=admin, issued by another CA */
	FUZZ_EXPIRED, /* OU=admin, expired yesterday */
	FUZZ_NO_ROLE, /* OU=operator: no keybroker role */
	FUZZ_FROM_INPUT, /* bytes 2-3: length L (big-endian) of the PEM
	                  * that follows; the message comes after it */
	FUZZ_CALLERS
};

/* The world the fuzzer builds before the first input (request_fuzzer.c):
 * tenants acme (environments prod, dev; dev under acme's active key) and
 * globex (prod). Ids the broker draws at random are reached through these
 * placeholders, each as long as the id it stands for: a request holding
 * one gets the real id in its place. */
#define FUZZ_PH_ACTIVE_KEY "k-@@@@@@@@@@@@@@@A" /* acme's active key */
#define FUZZ_PH_SPARE_KEY "k-@@@@@@@@@@@@@@@B" /* acme's available key */
#define FUZZ_PH_JOB "j-@@@@@@@@@@@@@@@@" /* its activation job */
#define FUZZ_PH_BACKUP "b-@@@@@@@@@@@@@@@@" /* a backup of acme/prod */
#define FUZZ_PH_KEK "x-@@@@@@@@@@@@@@@@" /* acme's BYOK KEK */

/* PEM certificates for each caller (NULL for FUZZ_NONE and
 * FUZZ_FROM_INPUT) and the client CA's. */
struct fuzz_pki {
	char *ca_pem;
	char *pem[FUZZ_CALLERS];
};

/* Make a CA and the callers' certificates (EC P-256, SHA-256) in memory.
 * Returns 0, or -1 with a message on stderr. Free with fuzz_pki_free. */
int fuzz_pki_make(struct fuzz_pki *p);
void fuzz_pki_free(struct fuzz_pki *p);

#endif /* KB_FUZZ_REQUEST_PKI_H */
