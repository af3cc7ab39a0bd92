/*
 * The unit tests' harness: checks that print where they failed, a runner
 * that names each failing test, and a summary line.
 *
 *   static void test_something_holds(void) { CHECK(x); CHECK_EQ(a, 3); }
 *   int main(void) { RUN(test_something_holds); return unit_summary(); }
 *
 * Prints one line per failed check, "FAIL name" per failed test, then
 * "N passed, N failed" (tests, not checks); unit_summary() returns the
 * exit status.
 */
#ifndef QFS_TEST_UNIT_H
#define QFS_TEST_UNIT_H

#include <stdbool.h>
#include <stdio.h>

static bool unit_current_failed;
static int unit_passed, unit_failed;

static inline void unit_check(bool ok, const char *what, const char *file,
			      int line)
{
	if (ok)
		return;
	unit_current_failed = true;
	fprintf(stderr, "%s:%d: check failed: %s\n", file, line, what);
}

static inline void unit_check_equal(long long actual, long long expected,
				    const char *what, const char *file,
				    int line)
{
	if (actual == expected)
		return;
	unit_current_failed = true;
	fprintf(stderr, "%s:%d: %s is %lld, expected %lld\n", file, line, what,
		actual, expected);
}

#define CHECK(cond) unit_check((cond), #cond, __FILE__, __LINE__)
#define CHECK_EQ(actual, expected)                                             \
	unit_check_equal((long long)(actual), (long long)(expected), #actual,  \
			 __FILE__, __LINE__)

static inline void unit_run(void (*test)(void), const char *name)
{
	unit_current_failed = false;
	test();
	if (unit_current_failed) {
		fprintf(stderr, "FAIL %s\n", name);
		unit_failed++;
	} else {
		unit_passed++;
	}
}

#define RUN(test) unit_run(test, #test)

static inline int unit_summary(void)
{
	printf("%d passed, %d failed\n", unit_passed, unit_failed);
	return unit_failed ? 1 : 0;
}

#endif
