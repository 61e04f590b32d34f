/* SPDX-License-Identifier: Apache-2.0 */
/* broker.h: the running broker's parts, handed to every request handler. */
#ifndef KB_BROKER_H
#define KB_BROKER_H

#include <stdint.h>

#include "config.h"
#include "hsm.h"
#include "identity.h"
#include "kb_err.h"
#include "store.h"

#define KB_VERSION "0.1.0"
#define BROKER_PLATFORM_KEY_ID "kb-platform-1"

struct broker {
	struct config *cfg;
	struct hsm *hsm;
	struct store *store;
	struct identity_verifier *verifier;
	struct hsm_token_info token;
	char platform_key_id[STORE_KEY_ID_MAX];
	char wrap_alg[STORE_ALG_MAX];    /* OAEP variant the token takes */
	int64_t start_time_us;
};

/* Open the token and the database, check that the database belongs to this
 * token, and create the platform key at first start. Takes ownership of
 * `cfg`. */
enum kb_err broker_open(struct config *cfg, struct broker **out);
void broker_close(struct broker *b);

#endif /* KB_BROKER_H */
