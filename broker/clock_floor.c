/* SPDX-License-Identifier: Apache-2.0 */
/* clock_floor.c: policy time, the wall clock that never goes backward
 * (linked with either wall clock, clock.c or clock_test.c). */
#include "clock.h"

#include <stdatomic.h>

/* The highest policy time handed out or restored: never decreases. */
static _Atomic int64_t floor_us;

void
clock_floor_raise(int64_t us)
{
	int64_t f = atomic_load(&floor_us);

	/* A failed exchange reloads f; stop once the floor is at least us. */
	while (us > f && !atomic_compare_exchange_weak(&floor_us, &f, us))
		;
}

int64_t
clock_now_us(void)
{
	int64_t wall = clock_wall_us(), f = atomic_load(&floor_us);

	while (wall > f) {
		if (atomic_compare_exchange_weak(&floor_us, &f, wall))
			return wall;
	}
	return f;
}
