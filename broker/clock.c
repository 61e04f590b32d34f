/* SPDX-License-Identifier: Apache-2.0 */
/* clock.c: the broker's clock. */
#include "clock.h"

#include "kb_time.h"

int64_t
clock_now_us(void)
{
	return kb_time_now_us();
}
