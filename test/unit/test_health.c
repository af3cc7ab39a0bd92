/*
 * Unit tests for the health policy (children/health.c): what a failure
 * makes of a child, as README "Reliability" describes it.
 */
#include "children/children.h"

#include <errno.h>

#include "test/unit/unit.h"

static void test_a_voter_that_missed_a_data_write_turns_stale(void)
{
	struct child_verdict v = child_health_missed(CHILD_OK, true, -EIO);

	CHECK(v.changes);
	CHECK_EQ(v.to, CHILD_STALE);
	CHECK(!v.whole_tree); /* the intent log names what it lacks */
}

static void test_a_missed_namespace_change_needs_the_whole_tree(void)
{
	struct child_verdict v = child_health_missed(CHILD_OK, false, -EIO);

	CHECK_EQ(v.to, CHILD_STALE);
	CHECK(v.whole_tree);
}

static void test_a_write_refused_for_another_reason_needs_the_whole_tree(void)
{
	/* ENOENT: the child lacks the file, which no region log repairs. */
	struct child_verdict v = child_health_missed(CHILD_OK, true, -ENOENT);

	CHECK_EQ(v.to, CHILD_STALE);
	CHECK(v.whole_tree);
}

static void test_a_timed_out_change_fails_the_child(void)
{
	struct child_verdict v =
		child_health_missed(CHILD_OK, true, -ETIMEDOUT);

	CHECK(v.changes);
	CHECK_EQ(v.to, CHILD_FAILED);
}

static void test_failed_outranks_stale(void)
{
	struct child_verdict v = child_health_missed(CHILD_FAILED, true, -EIO);

	CHECK(!v.changes);
	CHECK_EQ(v.to, CHILD_FAILED);
}

static void test_a_stale_child_is_not_made_stale_again(void)
{
	CHECK(!child_health_missed(CHILD_STALE, true, -EIO).changes);
}

static void test_a_syncing_child_is_left_to_its_resync(void)
{
	CHECK(!child_health_missed(CHILD_SYNCING, true, -EIO).changes);
}

static void test_a_syncing_child_that_stops_answering_fails(void)
{
	struct child_verdict v = child_health_late(CHILD_SYNCING);

	CHECK(v.changes);
	CHECK_EQ(v.to, CHILD_FAILED);
}

static void test_a_late_child_fails_once(void)
{
	CHECK(child_health_late(CHILD_OK).changes);
	CHECK(!child_health_late(CHILD_FAILED).changes);
}

static void test_reads_fail_a_child_at_the_third_device_error_in_a_row(void)
{
	CHECK(!child_health_read_failed(CHILD_OK, -EIO, 1).changes);
	CHECK(!child_health_read_failed(CHILD_OK, -EIO,
					CHILD_READ_ERROR_LIMIT - 1)
		       .changes);
	CHECK_EQ(child_health_read_failed(CHILD_OK, -EIO,
					  CHILD_READ_ERROR_LIMIT)
			 .to,
		 CHILD_FAILED);
}

static void test_a_read_refused_for_another_reason_is_no_device_fault(void)
{
	CHECK(!child_health_read_failed(CHILD_OK, -ENOENT, 99).changes);
}

static void test_a_timed_out_read_fails_the_child_at_once(void)
{
	struct child_verdict v =
		child_health_read_failed(CHILD_OK, -ETIMEDOUT, 0);

	CHECK(v.changes);
	CHECK_EQ(v.to, CHILD_FAILED);
}

static void test_a_syncing_child_fails_on_a_device_error(void)
{
	struct child_verdict v =
		child_health_syncing_failed(CHILD_SYNCING, -ENOSPC);

	CHECK(v.changes);
	CHECK_EQ(v.to, CHILD_FAILED);
}

static void test_a_syncing_child_lacking_a_file_is_expected(void)
{
	/* The copy has not reached it yet: the resync will create it. */
	CHECK(!child_health_syncing_failed(CHILD_SYNCING, -ENOENT).changes);
}

int main(void)
{
	RUN(test_a_voter_that_missed_a_data_write_turns_stale);
	RUN(test_a_missed_namespace_change_needs_the_whole_tree);
	RUN(test_a_write_refused_for_another_reason_needs_the_whole_tree);
	RUN(test_a_timed_out_change_fails_the_child);
	RUN(test_failed_outranks_stale);
	RUN(test_a_stale_child_is_not_made_stale_again);
	RUN(test_a_syncing_child_is_left_to_its_resync);
	RUN(test_a_syncing_child_that_stops_answering_fails);
	RUN(test_a_late_child_fails_once);
	RUN(test_reads_fail_a_child_at_the_third_device_error_in_a_row);
	RUN(test_a_read_refused_for_another_reason_is_no_device_fault);
	RUN(test_a_timed_out_read_fails_the_child_at_once);
	RUN(test_a_syncing_child_fails_on_a_device_error);
	RUN(test_a_syncing_child_lacking_a_file_is_expected);
	return unit_summary();
}
