/* SPDX-License-Identifier: Apache-2.0 */
/* harness.h: a tiny test harness. Cases are named "/module/case"; a binary
 * runs all of them (or those whose name contains argv[1]) and prints a
 * summary line "N passed, N failed". */
#ifndef KB_TEST_HARNESS_H
#define KB_TEST_HARNESS_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef void (*kbt_fn)(void);

struct kbt_case {
	const char *name;
	kbt_fn fn;
};

extern int kbt_failed_current;

/* Mark the running case failed and leave it: on the case's own thread, from
 * any depth of helpers (a longjmp back into kbt_run: the case stops there);
 * on another thread, by returning from the function the assertion is in
 * (the case still fails). */
void kbt_fail_leave(void);

#define KBT_FAIL(...)                                                          \
	do {                                                                   \
		fprintf(stderr, "  %s:%d: ", __FILE__, __LINE__);              \
		fprintf(stderr, __VA_ARGS__);                                  \
		fputc('\n', stderr);                                           \
		kbt_failed_current = 1;                                        \
		kbt_fail_leave();                                              \
		return;                                                        \
	} while (0)

#define KBT_ASSERT(cond)                                                       \
	do {                                                                   \
		if (!(cond))                                                   \
			KBT_FAIL("assertion failed: %s", #cond);               \
	} while (0)
#define KBT_ASSERT_INT(a, op, b)                                               \
	do {                                                                   \
		long long a_ = (long long)(a), b_ = (long long)(b);            \
		if (!(a_ op b_))                                               \
			KBT_FAIL(                                              \
			    "%s %s %s (%lld vs %lld)", #a, #op, #b, a_, b_);   \
	} while (0)
#define KBT_ASSERT_STR(a, b)                                                   \
	do {                                                                   \
		const char *a_ = (a), *b_ = (b);                               \
		if (a_ == NULL || b_ == NULL || strcmp(a_, b_) != 0)           \
			KBT_FAIL("%s == %s (\"%s\" vs \"%s\")", #a, #b,        \
			    a_ ? a_ : "(null)", b_ ? b_ : "(null)");           \
	} while (0)
#define KBT_ASSERT_CONTAINS(hay, needle)                                       \
	do {                                                                   \
		const char *h_ = (hay), *n_ = (needle);                        \
		if (h_ == NULL || strstr(h_, n_) == NULL)                      \
			KBT_FAIL("\"%s\" does not contain \"%s\"",             \
			    h_ ? h_ : "(null)", n_);                           \
	} while (0)
/* For kb_err results: prints the thread's error message on failure. */
#define KBT_ASSERT_OK(expr)                                                    \
	do {                                                                   \
		enum kb_err e_ = (expr);                                       \
		if (e_ != KB_OK)                                               \
			KBT_FAIL("%s failed: %s", #expr, kb_err_msg(e_));      \
	} while (0)
#define KBT_ASSERT_ERR(expr, code)                                             \
	do {                                                                   \
		enum kb_err e_ = (expr);                                       \
		if (e_ != (code))                                              \
			KBT_FAIL("%s: want %s, got %s (%s)", #expr,            \
			    kb_strerror(code), kb_strerror(e_),                \
			    kb_err_msg(e_));                                   \
	} while (0)

int kbt_run(const struct kbt_case *cases, int argc, char **argv);

/* Create a fresh SoftHSMv2 token in a new temporary directory and point
 * SOFTHSM2_CONF at it. Writes the user PIN to <dir>/pin (mode 0600).
 * `label` names the token. Returns the directory (static buffer) or exits
 * the test binary if softhsm2-util fails. */
const char *kbt_softhsm_setup(const char *label);

/* Remove a directory tree made by the harness. */
void kbt_rmtree(const char *dir);

/* Make a fresh temporary directory (static buffer). */
const char *kbt_tmpdir(void);

/* The path of fixture `name` in tests/data: under $KB_TEST_DATA, else found
 * from where this source file is. Returns a per-thread buffer that the
 * thread's next call overwrites. */
const char *kbt_data_path(const char *name);

/* Read fixture `name` into a malloc'd buffer of exactly its size (so ASan
 * sees reads past the end) and set *len; the caller frees it. Exits the test
 * binary if the fixture is missing, empty or unreadable. */
uint8_t *kbt_data_load(const char *name, size_t *len);

#define KBT_SOFTHSM_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#define KBT_USER_PIN "1234"

#endif
