/* SPDX-License-Identifier: Apache-2.0 */
/* kbt_pki.h: the C tests' one certificate minter (unit tests and the
 * request fuzzer): X.509 certificates made in memory with OpenSSL. */
#ifndef KBT_PKI_H
#define KBT_PKI_H

#include <openssl/evp.h>
#include <openssl/x509.h>

/* A certificate for `key`, signed by (issuer, issuer_key), or self-signed
 * when issuer is NULL; valid from now+from_s to now+to_s seconds; with a
 * random serial. `ou` and `cn` may be NULL (left out); `san` is an OpenSSL
 * subjectAltName value ("URI:kb://platform, URI:...") or NULL. A CA (`ca`)
 * gets CA:TRUE, keyCertSign and a subject key id; a client certificate
 * CA:FALSE, digitalSignature, clientAuth and, when issued, an authority
 * key id. NULL when OpenSSL fails or refuses an extension. */
X509 *kbt_cert_make(EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key,
    const char *ou, const char *cn, const char *san, long from_s, long to_s,
    int ca);

#endif /* KBT_PKI_H */
