/*
 * Unit tests for the set as one source string (config/source.c): the
 * children joined by colons with \: and \\ for those bytes in a path,
 * and a set too long for the buffer shortened to whole children and
 * ":+N".
 */
#include "config/config.h"

#include <errno.h>
#include <string.h>

#include "test/unit/unit.h"

/* Join paths (children, then the mountpoint) into size bytes: the
 * result must be ret and, when ret >= 0, the string want. */
static void check_join(const char *const *paths, int n, size_t size, int ret,
		       const char *want)
{
	struct config_args a = {0};
	char buf[256] = "junk";

	for (int i = 0; i < n; i++)
		a.path[a.npaths++] = paths[i];
	CHECK_EQ(config_join_source(&a, buf, size), ret);
	if (ret >= 0 && strcmp(buf, want) != 0) {
		fprintf(stderr, "joined '%s', expected '%s'\n", buf, want);
		CHECK(false);
	}
}

static void test_children_are_joined_by_colons(void)
{
	const char *p[] = {"/srv/a", "/srv/b", "/srv/c", "/mnt/q"};

	check_join(p, 4, 64, 0, "/srv/a:/srv/b:/srv/c");
}

static void test_a_colon_or_backslash_in_a_path_is_escaped(void)
{
	const char *p[] = {"/srv/x:y", "/srv/back\\slash", "/mnt/q"};

	check_join(p, 3, 64, 0, "/srv/x\\:y:/srv/back\\\\slash");
}

static void test_no_children_is_an_empty_string(void)
{
	const char *p[] = {"/mnt/q"};

	check_join(p, 1, 16, 0, "");
}

static void test_a_set_that_does_not_fit_keeps_whole_children(void)
{
	const char *p[] = {"/srv/aaaa", "/srv/bbbb", "/srv/cccc", "/mnt/q"};

	/* The whole set is 29 bytes; with room kept for ":+N", two
	 * children fit in 28. */
	check_join(p, 4, 28, 1, "/srv/aaaa:/srv/bbbb:+1");
	check_join(p, 4, 12, 3, "+3");
}

static void test_an_exact_fit_is_not_shortened(void)
{
	const char *p[] = {"/srv/aaaa", "/srv/bbbb", "/mnt/q"};

	check_join(p, 3, 20, 0, "/srv/aaaa:/srv/bbbb");
}

static void test_a_tiny_buffer_is_refused(void)
{
	const char *p[] = {"/srv/a", "/mnt/q"};

	check_join(p, 2, 4, -ENAMETOOLONG, NULL);
}

int main(void)
{
	RUN(test_children_are_joined_by_colons);
	RUN(test_a_colon_or_backslash_in_a_path_is_escaped);
	RUN(test_no_children_is_an_empty_string);
	RUN(test_a_set_that_does_not_fit_keeps_whole_children);
	RUN(test_an_exact_fit_is_not_shortened);
	RUN(test_a_tiny_buffer_is_refused);
	return unit_summary();
}
