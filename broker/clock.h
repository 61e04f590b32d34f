/* SPDX-License-Identifier: Apache-2.0 */
/* clock.h: the one clock every policy rule reads. */
#ifndef KB_CLOCK_H
#define KB_CLOCK_H

#include <stdint.h>

/* Microseconds since the Unix epoch, UTC. */
int64_t clock_now_us(void);

#endif /* KB_CLOCK_H */
