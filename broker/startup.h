/* SPDX-License-Identifier: Apache-2.0 */
/* startup.h: start-up and shutdown of the whole broker (startup.c), for
 * main() and for tests that run a broker without its gRPC server. */
#ifndef KB_STARTUP_H
#define KB_STARTUP_H

#include "broker.h"

/* Open the token and the database, check that the database belongs to this
 * token, create the broker's own keys at first start, open the audit log
 * and start the background work. Takes ownership of `cfg`. */
enum kb_err startup_open(struct config *cfg, struct broker **out);

/* Stop the background work, record broker.stop, close everything startup_open
 * opened. Accepts NULL. */
void startup_close(struct broker *b);

#endif /* KB_STARTUP_H */
