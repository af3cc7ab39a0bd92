/*
 * Unit tests for the control-command parser (config_parse_command): the
 * words of a command, quoting, and the refusals, as README "Runtime
 * control" describes them.
 */
#include "config/config.h"

#include <errno.h>
#include <string.h>

#include "test/unit/unit.h"

static char buf[CONFIG_COMMAND_MAX];
static char err[256];

static int parse(const char *line, struct config_command *cmd)
{
	err[0] = '\0';
	return config_parse_command(line, strlen(line), buf, cmd, err,
				    sizeof(err));
}

static void test_add_takes_a_plain_path_and_a_name(void)
{
	struct config_command c;

	CHECK_EQ(parse("add /srv/d name=d\n", &c), 0);
	CHECK_EQ(c.verb, CMD_ADD);
	CHECK(strcmp(c.path, "/srv/d") == 0);
	CHECK(strcmp(c.name, "d") == 0);
}

static void test_a_double_quoted_path_may_hold_blanks(void)
{
	struct config_command c;

	CHECK_EQ(parse("add \"/srv/my disk\"", &c), 0);
	CHECK(strcmp(c.path, "/srv/my disk") == 0);
	CHECK(c.name == NULL);
}

static void test_a_single_quoted_path_keeps_backslashes(void)
{
	struct config_command c;

	CHECK_EQ(parse("add '/srv/a\\b c'", &c), 0);
	CHECK(strcmp(c.path, "/srv/a\\b c") == 0);
}

static void test_a_backslash_keeps_a_blank_outside_quotes(void)
{
	struct config_command c;

	CHECK_EQ(parse("remove /srv/my\\ disk", &c), 0);
	CHECK_EQ(c.verb, CMD_REMOVE);
	CHECK(strcmp(c.name, "/srv/my disk") == 0);
}

static void test_quotes_may_join_parts_of_one_word(void)
{
	struct config_command c;

	CHECK_EQ(parse("add /srv/x name=\"my child\"", &c), 0);
	CHECK(strcmp(c.name, "my child") == 0);
}

static void test_double_quotes_unescape_quote_and_backslash_only(void)
{
	struct config_command c;

	CHECK_EQ(parse("resync \"a\\\"b\\\\c\\d\"", &c), 0);
	CHECK(strcmp(c.name, "a\"b\\c\\d") == 0);
}

static void test_an_unterminated_quote_is_refused(void)
{
	struct config_command c;

	CHECK_EQ(parse("add \"/srv/my disk", &c), -EINVAL);
	CHECK(strstr(err, "quote") != NULL);
}

static void test_a_trailing_backslash_is_refused(void)
{
	struct config_command c;

	CHECK_EQ(parse("remove /srv/a\\", &c), -EINVAL);
}

static void test_an_empty_quoted_name_is_refused_with_the_usage(void)
{
	struct config_command c;

	/* No child is called "", and "remove ''" must not match a prefix. */
	CHECK_EQ(parse("remove ''", &c), -EINVAL);
	CHECK(strstr(err, "usage") != NULL);
	CHECK_EQ(parse("resync \"\"", &c), -EINVAL);
}

static void test_blanks_between_words_may_be_tabs_and_repeated(void)
{
	struct config_command c;

	CHECK_EQ(parse("  threshold\t\t 2  ", &c), 0);
	CHECK_EQ(c.verb, CMD_THRESHOLD);
	CHECK_EQ(c.number, 2);
}

static void test_too_many_words_are_refused(void)
{
	struct config_command c;

	CHECK_EQ(parse("add /a name=b c d", &c), -EINVAL);
	CHECK_EQ(parse("add /a name=b mode=primary c d", &c), -EINVAL);
	CHECK(strstr(err, "too many words") != NULL);
}

static void test_add_mode_primary_makes_a_replication_child(void)
{
	struct config_command c;

	CHECK_EQ(parse("add /in mode=primary name=sec", &c), 0);
	CHECK_EQ(c.verb, CMD_ADD);
	CHECK(c.replication);
	CHECK(strcmp(c.name, "sec") == 0);
	CHECK_EQ(parse("add /in", &c), 0);
	CHECK(!c.replication);
}

static void test_add_mode_witness_makes_a_witness_once(void)
{
	struct config_command c;

	CHECK_EQ(parse("add /w name=w mode=witness", &c), 0);
	CHECK_EQ(c.verb, CMD_ADD);
	CHECK(c.witness);
	CHECK(!c.replication);
	CHECK_EQ(parse("add /w mode=witness mode=witness", &c), -EINVAL);
	CHECK(strcmp(err, "add takes mode= once, not 'mode=witness' again") ==
	      0);
	CHECK_EQ(parse("add /w mode=primary mode=witness", &c), -EINVAL);
	CHECK_EQ(parse("add /w", &c), 0);
	CHECK(!c.witness);
}

static void test_add_refuses_top_and_bad_modes_in_qemus_words(void)
{
	struct config_command c;

	CHECK_EQ(parse("add /in mode=primary top=t", &c), -EINVAL);
	CHECK(strcmp(err, "The primary side does not support option top-id") ==
	      0);
	CHECK_EQ(parse("add /in mode=bogus", &c), -EINVAL);
	CHECK(strcmp(err, "The option mode's value should be primary or "
			  "secondary") == 0);
	CHECK_EQ(parse("add /in mode=secondary", &c), -EINVAL);
	CHECK_EQ(parse("add /in top=t", &c), -EINVAL);
	CHECK_EQ(parse("add /in mode=primary mode=primary", &c), -EINVAL);
}

static void test_replication_takes_an_action_a_mode_failover_and_a_name(void)
{
	struct config_command c;

	CHECK_EQ(parse("replication start primary", &c), 0);
	CHECK_EQ(c.verb, CMD_REPLICATION);
	CHECK_EQ(c.repl, CONFIG_REPL_START);
	CHECK_EQ(c.mode, 0);
	CHECK(c.name == NULL);
	CHECK_EQ(parse("replication stop failover sec", &c), 0);
	CHECK_EQ(c.repl, CONFIG_REPL_STOP);
	CHECK_EQ(c.mode, -1);
	CHECK(c.failover);
	CHECK(strcmp(c.name, "sec") == 0);
	CHECK_EQ(parse("replication start secondary", &c), 0);
	CHECK_EQ(c.mode, 1);
	CHECK_EQ(parse("replication get-error", &c), 0);
	CHECK_EQ(c.repl, CONFIG_REPL_GET_ERROR);
}

static void test_replication_refuses_failover_outside_stop(void)
{
	struct config_command c;

	CHECK_EQ(parse("replication start primary failover", &c), -EINVAL);
	CHECK(strcmp(err, "Parameter 'failover' is only for stopping "
			  "replication") == 0);
	CHECK_EQ(parse("replication checkpoint failover", &c), -EINVAL);
	CHECK_EQ(parse("replication", &c), -EINVAL);
	CHECK_EQ(parse("replication pause", &c), -EINVAL);
	CHECK_EQ(parse("replication stop a b", &c), -EINVAL);
}

static void test_policy_takes_a_directory_a_threshold_and_rules(void)
{
	struct config_command c;

	CHECK_EQ(parse("policy /gold/vms/ threshold=3 read-pattern=fifo "
		       "rewrite-corrupted=off",
		       &c),
		 0);
	CHECK_EQ(c.verb, CMD_POLICY);
	CHECK(strcmp(c.path, "gold/vms") == 0);
	CHECK_EQ(c.number, 3);
	CHECK_EQ(c.policy_pattern, READ_PATTERN_FIFO);
	CHECK_EQ(c.policy_rewrite, 0);
	CHECK(!c.clear);
	CHECK_EQ(parse("policy gold threshold=2", &c), 0);
	CHECK_EQ(c.policy_pattern, -1);
	CHECK_EQ(c.policy_rewrite, -1);
	CHECK_EQ(parse("policy gold clear", &c), 0);
	CHECK(c.clear);
}

static void test_policy_refuses_the_root_dots_and_missing_rules(void)
{
	static const char *const bad[][2] = {
		{"policy / threshold=2", "below the mount's root"},
		{"policy a/../b threshold=2", ". or .."},
		{"policy ./a threshold=2", ". or .."},
		{"policy a threshold=33", "whole number"},
		{"policy a rewrite-corrupted=on", "needs threshold=N"},
		{"policy a threshold=2 fast", "not 'fast'"},
		{"policy a clear x", "nothing after clear"},
		{"policy a", "usage: policy DIR"},
	};
	struct config_command c;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		CHECK_EQ(parse(bad[i][0], &c), -EINVAL);
		CHECK(strstr(err, bad[i][1]) != NULL);
	}
}

static void test_quarantine_takes_list_restore_and_purge(void)
{
	struct config_command c;

	CHECK_EQ(parse("quarantine list", &c), 0);
	CHECK_EQ(c.verb, CMD_QUARANTINE);
	CHECK_EQ(c.quarantine, CONFIG_QUARANTINE_LIST);
	CHECK_EQ(parse("quarantine restore 42\n", &c), 0);
	CHECK_EQ(c.quarantine, CONFIG_QUARANTINE_RESTORE);
	CHECK_EQ(c.id, 42);
	CHECK_EQ(parse("quarantine purge 7", &c), 0);
	CHECK_EQ(c.quarantine, CONFIG_QUARANTINE_PURGE);
	CHECK_EQ(c.id, 7);
	CHECK_EQ(parse("quarantine purge all", &c), 0);
	CHECK_EQ(c.id, 0);
	CHECK_EQ(parse("quarantine restore all", &c), -EINVAL);
	CHECK_EQ(parse("quarantine restore 99999999999999999999999", &c),
		 -EINVAL);
	CHECK_EQ(parse("quarantine list 1", &c), -EINVAL);
}

static void test_repair_takes_a_file_a_child_and_a_range(void)
{
	struct config_command c;

	CHECK_EQ(parse("repair \"vm 1.img\" from=/srv/b", &c), 0);
	CHECK_EQ(c.verb, CMD_REPAIR);
	CHECK(strcmp(c.path, "vm 1.img") == 0);
	CHECK(strcmp(c.name, "/srv/b") == 0);
	CHECK(c.whole);
	CHECK_EQ(parse("repair vm.img from=b 4096 1M", &c), 0);
	CHECK(!c.whole);
	CHECK_EQ(c.offset, 4096);
	CHECK_EQ(c.length, 1024 * 1024);
	CHECK_EQ(parse("repair vm.img from=b 0 0", &c), -EINVAL);
	CHECK_EQ(parse("repair vm.img from=b 16E 1", &c), -EINVAL);
	CHECK_EQ(parse("repair vm.img b", &c), -EINVAL);
	CHECK(strcmp(err, "repair needs from=CHILD after the file, not 'b'") ==
	      0);
}

int main(void)
{
	RUN(test_add_takes_a_plain_path_and_a_name);
	RUN(test_a_double_quoted_path_may_hold_blanks);
	RUN(test_a_single_quoted_path_keeps_backslashes);
	RUN(test_a_backslash_keeps_a_blank_outside_quotes);
	RUN(test_quotes_may_join_parts_of_one_word);
	RUN(test_double_quotes_unescape_quote_and_backslash_only);
	RUN(test_an_unterminated_quote_is_refused);
	RUN(test_a_trailing_backslash_is_refused);
	RUN(test_an_empty_quoted_name_is_refused_with_the_usage);
	RUN(test_blanks_between_words_may_be_tabs_and_repeated);
	RUN(test_too_many_words_are_refused);
	RUN(test_add_mode_primary_makes_a_replication_child);
	RUN(test_add_mode_witness_makes_a_witness_once);
	RUN(test_add_refuses_top_and_bad_modes_in_qemus_words);
	RUN(test_replication_takes_an_action_a_mode_failover_and_a_name);
	RUN(test_replication_refuses_failover_outside_stop);
	RUN(test_policy_takes_a_directory_a_threshold_and_rules);
	RUN(test_policy_refuses_the_root_dots_and_missing_rules);
	RUN(test_quarantine_takes_list_restore_and_purge);
	RUN(test_repair_takes_a_file_a_child_and_a_range);
	return unit_summary();
}
