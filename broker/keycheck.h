/* SPDX-License-Identifier: Apache-2.0 */
/* keycheck.h: which keys the database needs in the token, and whether the
 * token holds each as the database records it. One answer for
 * keybrokerd --restore (backup.c) and the doctor (doctor.c). */
#ifndef KB_KEYCHECK_H
#define KB_KEYCHECK_H

#include <stddef.h>

#include "hsm.h"
#include "store.h"

/* Whether the broker needs key `k` in the token to start and serve: keys
 * locked, deleted or retired are gone from it by design. */
int keycheck_needed(const struct store_key *k);

/* The label `k` is found by: "kb:platform" or "kb:kek:TENANT" for AES
 * keys (found by id and label together), the id itself for RSA pairs. */
void keycheck_label(const struct store_key *k, char *buf, size_t len);

/* 1 if the token holds the key `id` as recorded: an AES key by id and
 * `label` (a missing active KEK counts as there when its `parent` tenant
 * key is, since the broker unwraps it again at start), an RSA pair by id
 * and, when `fingerprint` is 64 hex digits, by the SHA-256 of its public
 * key. 0 otherwise, with `why` saying what is wrong. Only reads. */
int keycheck_present(struct hsm *h, const char *id, const char *label,
    const char *purpose, const char *state, const char *parent,
    const char *fingerprint, char *why, size_t len);

#endif /* KB_KEYCHECK_H */
