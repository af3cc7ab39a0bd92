/*
 * Unit tests for the write rule of vote/ (vote_write, vote_device_error,
 * vote_refused_by_all) and the size vote (vote_sizes): each test states
 * one rule, as README "How requests are decided" describes them.
 */
#include "vote/vote.h"

#include <errno.h>

#include "test/unit/unit.h"

static void test_write_succeeds_when_threshold_voters_took_it(void)
{
	int error[] = {0, -EIO, 0};
	struct vote_write_result r;

	CHECK_EQ(vote_write(error, 3, 2, &r), 0);
	CHECK_EQ(r.successes, 2);
	CHECK(!r.nobody_at_fault);
}

static void test_write_below_threshold_gets_the_most_common_error(void)
{
	int error[] = {-ENOSPC, 0, -EIO, -EIO};
	struct vote_write_result r;

	CHECK_EQ(vote_write(error, 4, 3, &r), -EIO);
	CHECK_EQ(r.successes, 1);
}

static void test_write_error_tie_goes_to_the_highest_index(void)
{
	/* EDQUOT first seen at 2, ENOSPC at 0: QEMU's list order. */
	int error[] = {-ENOSPC, 0, -EDQUOT};
	struct vote_write_result r;

	CHECK_EQ(vote_write(error, 3, 2, &r), -EDQUOT);
}

static void test_write_refused_alike_by_all_blames_no_child(void)
{
	int error[] = {-EEXIST, -EEXIST, -EEXIST};
	struct vote_write_result r;

	CHECK_EQ(vote_write(error, 3, 2, &r), -EEXIST);
	CHECK(r.nobody_at_fault);
}

static void test_write_device_error_of_every_child_is_still_their_fault(void)
{
	int error[] = {-ENOSPC, -ENOSPC, -ENOSPC};
	struct vote_write_result r;

	CHECK_EQ(vote_write(error, 3, 2, &r), -ENOSPC);
	CHECK(!r.nobody_at_fault);
}

static void test_write_refused_differently_is_not_refused_by_all(void)
{
	int error[] = {-EEXIST, -ENOTEMPTY, -EEXIST};
	struct vote_write_result r;

	CHECK_EQ(vote_write(error, 3, 2, &r), -EEXIST);
	CHECK(!r.nobody_at_fault);
}

static void test_write_with_no_voters_fails_with_eio(void)
{
	struct vote_write_result r;

	CHECK_EQ(vote_write(NULL, 0, 1, &r), -EIO);
}

static void test_write_at_threshold_one_needs_one_success(void)
{
	int error[] = {-EIO, -EIO, 0};
	struct vote_write_result r;

	CHECK_EQ(vote_write(error, 3, 1, &r), 0);
}

static void test_device_errors_are_those_of_a_device_or_its_space(void)
{
	CHECK(vote_device_error(-EIO));
	CHECK(vote_device_error(-ENOSPC));
	CHECK(vote_device_error(-EDQUOT));
	CHECK(vote_device_error(-EROFS));
	CHECK(vote_device_error(-ETIMEDOUT));
	CHECK(vote_device_error(-ENOTCONN));
	CHECK(!vote_device_error(-EEXIST));
	CHECK(!vote_device_error(-ENOENT));
	CHECK(!vote_device_error(-EINVAL));
	CHECK(!vote_device_error(0));
}

static void test_successes_alone_are_not_refused_by_all(void)
{
	int error[] = {0, 0};

	CHECK(!vote_refused_by_all(error, 2));
	CHECK(!vote_refused_by_all(error, 0));
}

static void test_size_vote_takes_the_size_most_children_have(void)
{
	int64_t size[] = {4096, 8192, 8192};
	int error[] = {0, 0, 0};
	struct vote_result r;

	CHECK_EQ(vote_sizes(size, error, 3, 2, true, &r), 0);
	CHECK_EQ(size[r.winner], 8192);
	CHECK(r.loser[0] && !r.loser[1] && !r.loser[2]);
}

static void test_size_vote_without_quorum_fails_with_eio(void)
{
	int64_t size[] = {1, 2, 3};
	int error[] = {0, 0, 0};
	struct vote_result r;

	CHECK_EQ(vote_sizes(size, error, 3, 2, true, &r), -EIO);
}

static void test_size_vote_ignores_children_that_failed(void)
{
	int64_t size[] = {-1, 512, 512};
	int error[] = {-EIO, 0, 0};
	struct vote_result r;

	CHECK_EQ(vote_sizes(size, error, 3, 2, true, &r), 0);
	CHECK_EQ(size[r.winner], 512);
	CHECK(!r.loser[0]);
}

static void test_size_vote_by_existence_agrees_whatever_the_sizes(void)
{
	int64_t size[] = {4096, 12288};
	int error[] = {0, 0};
	struct vote_result r;

	CHECK_EQ(vote_sizes(size, error, 2, 2, false, &r), 0);
	CHECK(r.unanimous);
}

static void test_size_vote_tie_goes_to_the_highest_index(void)
{
	int64_t size[] = {100, 200};
	int error[] = {0, 0};
	struct vote_result r;

	CHECK_EQ(vote_sizes(size, error, 2, 1, true, &r), 0);
	CHECK_EQ(size[r.winner], 200);
}

int main(void)
{
	RUN(test_write_succeeds_when_threshold_voters_took_it);
	RUN(test_write_below_threshold_gets_the_most_common_error);
	RUN(test_write_error_tie_goes_to_the_highest_index);
	RUN(test_write_refused_alike_by_all_blames_no_child);
	RUN(test_write_device_error_of_every_child_is_still_their_fault);
	RUN(test_write_refused_differently_is_not_refused_by_all);
	RUN(test_write_with_no_voters_fails_with_eio);
	RUN(test_write_at_threshold_one_needs_one_success);
	RUN(test_device_errors_are_those_of_a_device_or_its_space);
	RUN(test_successes_alone_are_not_refused_by_all);
	RUN(test_size_vote_takes_the_size_most_children_have);
	RUN(test_size_vote_without_quorum_fails_with_eio);
	RUN(test_size_vote_ignores_children_that_failed);
	RUN(test_size_vote_by_existence_agrees_whatever_the_sizes);
	RUN(test_size_vote_tie_goes_to_the_highest_index);
	return unit_summary();
}
