/*
 * libFuzzer target for the parsers an operator feeds: the .control
 * command parser, and the command-line validation.
 *
 * The input is the bytes of one write() to MOUNTPOINT/.control. Beyond
 * "does not crash", each run checks the contract config.h states:
 *   - the result is 0 or -EINVAL, and a refusal always has a reason;
 *   - an accepted command had no NUL byte, no inner newline and fit in
 *     CONFIG_COMMAND_MAX, and its verb's fields are valid (an absolute
 *     path for add, a threshold in 1..CHILDREN_MAX, non-empty names, all
 *     strings inside the caller's buffer, without newlines; a scrub
 *     action, and a rate in 0..CONFIG_MAX_SCRUB_RATE or -1 for none);
 *   - printing the parsed command back and parsing that gives the same
 *     command (the parser keeps no state and reads what it was given).
 * The line buffer and the error buffer are heap blocks of the exact size
 * the contract promises, so AddressSanitizer catches any write past them;
 * the error buffer is also tried at sizes 0 to 15.
 *
 * An input containing a NUL byte (which the command parser must refuse)
 * is also split at NUL bytes into a command line for config_from_args():
 *   FLAGS \0 THRESHOLD \0 READ_PATTERN \0 THREADS \0 LOG \0 PATH...
 * FLAGS' first byte: bit 0 rewrite-corrupted, bit 1 blkverify, bits 2-5
 * whether THRESHOLD, READ_PATTERN, THREADS, LOG are given. Paths are
 * resolved in a scratch tree made at start-up (directories a, b, c, m,
 * a/in, a file f, a symlink l to a; the call runs with that as working
 * directory), so that relative inputs reach the checks past "does not
 * exist". config_from_args() only reads the file system (realpath, stat).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config/config.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define ERR_MAX 256

static char scratch[] = "/tmp/qfs-fuzz-XXXXXX";
static int scratch_fd = -1; /* the working directory of config_from_args */

/* A broken contract: report it and crash, so libFuzzer keeps the input. */
static void contract(int ok, const char *what)
{
	if (ok)
		return;
	fprintf(stderr, "fuzz_control: contract broken: %s\n", what);
	abort();
}

static void remove_scratch(void)
{
	static const char *const made[] = {"l", "f", "a/in", "a",
					   "b", "c", "m"};
	for (size_t i = 0; i < sizeof(made) / sizeof(made[0]); i++)
		if (unlinkat(scratch_fd, made[i], 0) && errno == EISDIR)
			unlinkat(scratch_fd, made[i], AT_REMOVEDIR);
	close(scratch_fd);
	rmdir(scratch);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	if (!mkdtemp(scratch) ||
	    (scratch_fd = open(scratch, O_RDONLY | O_DIRECTORY)) < 0) {
		perror("fuzz_control: scratch directory");
		exit(1);
	}
	atexit(remove_scratch);
	if (mkdirat(scratch_fd, "a", 0755) ||
	    mkdirat(scratch_fd, "a/in", 0755) ||
	    mkdirat(scratch_fd, "b", 0755) || mkdirat(scratch_fd, "c", 0755) ||
	    mkdirat(scratch_fd, "m", 0755) ||
	    close(openat(scratch_fd, "f", O_CREAT | O_WRONLY, 0644)) ||
	    symlinkat("a", scratch_fd, "l")) {
		perror("fuzz_control: scratch tree");
		exit(1);
	}
	return 0;
}

static const char *const verb_words[] = {
	[CMD_ADD] = "add",
	[CMD_REMOVE] = "remove",
	[CMD_THRESHOLD] = "threshold",
	[CMD_READ_PATTERN] = "read-pattern",
	[CMD_REWRITE_CORRUPTED] = "rewrite-corrupted",
	[CMD_RESYNC] = "resync",
	[CMD_SCRUB] = "scrub",
	[CMD_REPLICATION] = "replication",
	[CMD_POLICY] = "policy",
	[CMD_QUARANTINE] = "quarantine",
	[CMD_REPAIR] = "repair",
};

static const char *const quarantine_words[] = {
	[CONFIG_QUARANTINE_LIST] = "list",
	[CONFIG_QUARANTINE_RESTORE] = "restore",
	[CONFIG_QUARANTINE_PURGE] = "purge",
};

static const char *const repl_words[] = {
	[CONFIG_REPL_START] = "start",
	[CONFIG_REPL_CHECKPOINT] = "checkpoint",
	[CONFIG_REPL_GET_ERROR] = "get-error",
	[CONFIG_REPL_STOP] = "stop",
	[CONFIG_REPL_COMMIT] = "commit",
};

static const char *const scrub_words[] = {
	[CONFIG_SCRUB_START] = "start",
	[CONFIG_SCRUB_REPAIR] = "repair",
	[CONFIG_SCRUB_STOP] = "stop",
};

/* Words may hold blanks (quoted or escaped), never a newline. */
static int in_buffer(const char *s, const char *buf)
{
	return s >= buf && s < buf + CONFIG_COMMAND_MAX &&
	       memchr(s, '\0', (size_t)(buf + CONFIG_COMMAND_MAX - s)) &&
	       !strchr(s, '\n');
}

/* word with a backslash before every byte the parser treats specially,
 * in a static buffer (one per argument position). */
static const char *escaped(const char *word, int which)
{
	static char out[2][2 * CONFIG_COMMAND_MAX];
	char *o = out[which];

	for (; *word; word++) {
		if (strchr(" \t'\"\\", *word))
			*o++ = '\\';
		*o++ = *word;
	}
	*o = '\0';
	return out[which];
}

static void check_fields(const struct config_command *cmd, const char *buf)
{
	contract(cmd->verb <= CMD_REPAIR, "the verb is one of the table's");
	switch (cmd->verb) {
	case CMD_ADD:
		contract(cmd->path && in_buffer(cmd->path, buf) &&
				 cmd->path[0] == '/',
			 "add has an absolute path in the buffer");
		contract(!cmd->name || (in_buffer(cmd->name, buf) &&
					cmd->name[0] != '\0'),
			 "add's name is absent or a non-empty word");
		break;
	case CMD_REMOVE:
	case CMD_RESYNC:
		contract(cmd->name && in_buffer(cmd->name, buf) &&
				 cmd->name[0] != '\0',
			 "remove and resync name a non-empty word");
		break;
	case CMD_THRESHOLD:
		contract(cmd->number >= 1 && cmd->number <= CHILDREN_MAX,
			 "threshold is in 1..CHILDREN_MAX");
		break;
	case CMD_READ_PATTERN:
		contract(cmd->read_pattern == READ_PATTERN_QUORUM ||
				 cmd->read_pattern == READ_PATTERN_FIFO,
			 "read-pattern is quorum or fifo");
		break;
	case CMD_REWRITE_CORRUPTED:
		break;
	case CMD_SCRUB:
		contract(cmd->scrub <= CONFIG_SCRUB_STOP,
			 "scrub is start, repair or stop");
		contract(cmd->rate == -1 ||
				 (cmd->rate >= 0 &&
				  cmd->rate <= CONFIG_MAX_SCRUB_RATE &&
				  cmd->scrub != CONFIG_SCRUB_STOP),
			 "a scrub rate is in range, and never given to stop");
		break;
	case CMD_REPLICATION:
		contract(cmd->repl <= CONFIG_REPL_COMMIT && cmd->mode >= -1 &&
				 cmd->mode <= 1,
			 "replication names an action and a mode, or none");
		contract(!cmd->failover || cmd->repl == CONFIG_REPL_STOP,
			 "failover only stops");
		contract(!cmd->name || (in_buffer(cmd->name, buf) &&
					cmd->name[0] != '\0'),
			 "replication's name is absent or a non-empty word");
		break;
	case CMD_POLICY:
		contract(cmd->path && in_buffer(cmd->path, buf) &&
				 cmd->path[0] != '\0' && cmd->path[0] != '/',
			 "policy names a relative directory in the buffer");
		contract(cmd->clear || (cmd->number >= 1 &&
					cmd->number <= CHILDREN_MAX),
			 "a policy is cleared or has a threshold in range");
		contract(cmd->policy_pattern >= -1 &&
				 cmd->policy_pattern <= 1 &&
				 cmd->policy_rewrite >= -1 &&
				 cmd->policy_rewrite <= 1,
			 "a policy's rules are given or -1");
		break;
	case CMD_QUARANTINE:
		contract(cmd->quarantine <= CONFIG_QUARANTINE_PURGE &&
				 (cmd->id > 0 ||
				  cmd->quarantine != CONFIG_QUARANTINE_RESTORE),
			 "quarantine names an action, restore an id from 1");
		break;
	case CMD_REPAIR:
		contract(cmd->path && in_buffer(cmd->path, buf) && cmd->name &&
				 in_buffer(cmd->name, buf) &&
				 cmd->name[0] != '\0',
			 "repair names a file and a non-empty child");
		contract(cmd->whole || (cmd->length > 0 &&
					cmd->offset <= INT64_MAX - cmd->length),
			 "repair's range is whole, or non-empty and in range");
		break;
	}
}

/* The quarantine's and repair's commands as an operator writes them. */
static int format_quarantine(const struct config_command *cmd, char *out,
			     size_t len)
{
	if (cmd->verb == CMD_REPAIR && cmd->whole)
		return snprintf(out, len, "repair %s from=%s",
				escaped(cmd->path, 0), escaped(cmd->name, 1));
	if (cmd->verb == CMD_REPAIR)
		return snprintf(out, len, "repair %s from=%s %llu %llu",
				escaped(cmd->path, 0), escaped(cmd->name, 1),
				(unsigned long long)cmd->offset,
				(unsigned long long)cmd->length);
	if (cmd->quarantine == CONFIG_QUARANTINE_LIST)
		return snprintf(out, len, "quarantine list");
	if (!cmd->id)
		return snprintf(out, len, "quarantine purge all");
	return snprintf(out, len, "quarantine %s %llu",
			quarantine_words[cmd->quarantine],
			(unsigned long long)cmd->id);
}

/* policy DIR clear, or policy DIR threshold=N [rules], as an operator
 * writes it. */
static int format_policy(const struct config_command *cmd, char *out,
			 size_t len)
{
	if (cmd->clear)
		return snprintf(out, len, "policy %s clear",
				escaped(cmd->path, 0));
	return snprintf(out, len, "policy %s threshold=%d%s%s",
			escaped(cmd->path, 0), cmd->number,
			cmd->policy_pattern < 0 ? ""
			: cmd->policy_pattern == READ_PATTERN_FIFO
				? " read-pattern=fifo"
				: " read-pattern=quorum",
			cmd->policy_rewrite < 0 ? ""
			: cmd->policy_rewrite	? " rewrite-corrupted=on"
						: " rewrite-corrupted=off");
}

/* replication ACTION [MODE] [failover] [NAME] as an operator writes it. */
static int format_replication(const struct config_command *cmd, char *out,
			      size_t len)
{
	static const char *const modes[] = {"", " primary", " secondary"};

	return snprintf(out, len, "replication %s%s%s%s%s",
			repl_words[cmd->repl], modes[cmd->mode + 1],
			cmd->failover ? " failover" : "", cmd->name ? " " : "",
			cmd->name ? escaped(cmd->name, 0) : "");
}

/* Print cmd the way an operator would write it. */
static int format_command(const struct config_command *cmd, char *out,
			  size_t len)
{
	const char *verb = verb_words[cmd->verb];

	switch (cmd->verb) {
	case CMD_ADD:
		return snprintf(out, len, "add %s%s%s%s\n",
				escaped(cmd->path, 0),
				cmd->name ? " name=" : "",
				cmd->name ? escaped(cmd->name, 1) : "",
				cmd->replication ? " mode=primary"
				: cmd->witness	 ? " mode=witness"
						 : "");
	case CMD_REMOVE:
	case CMD_RESYNC:
		return snprintf(out, len, "%s %s", verb, escaped(cmd->name, 0));
	case CMD_THRESHOLD:
		return snprintf(out, len, "%s %d", verb, cmd->number);
	case CMD_READ_PATTERN:
		return snprintf(out, len, "%s %s", verb,
				cmd->read_pattern == READ_PATTERN_FIFO
					? "fifo"
					: "quorum");
	case CMD_REWRITE_CORRUPTED:
		return snprintf(out, len, "%s %s", verb,
				cmd->on ? "on" : "off");
	case CMD_SCRUB:
		if (cmd->rate < 0)
			return snprintf(out, len, "%s %s", verb,
					scrub_words[cmd->scrub]);
		return snprintf(out, len, "%s %s rate=%d", verb,
				scrub_words[cmd->scrub], cmd->rate);
	case CMD_REPLICATION:
		return format_replication(cmd, out, len);
	case CMD_POLICY:
		return format_policy(cmd, out, len);
	case CMD_QUARANTINE:
	case CMD_REPAIR:
		return format_quarantine(cmd, out, len);
	}
	return -1;
}

static int same_string(const char *a, const char *b)
{
	return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static void check_round_trip(const struct config_command *cmd)
{
	char *text = malloc(4 * CONFIG_COMMAND_MAX);
	char *buf = malloc(CONFIG_COMMAND_MAX);
	struct config_command again;
	char err[ERR_MAX];
	int n;

	contract(text && buf, "memory for the round trip");
	n = format_command(cmd, text, 4 * CONFIG_COMMAND_MAX);
	contract(n > 0 && n < 4 * CONFIG_COMMAND_MAX, "the command prints");
	/* Escaping may make the printed form longer than the input (which
	 * could quote a run of blanks with two bytes); one that no longer
	 * fits must be refused for its length, and is not compared. */
	if (n - (text[n - 1] == '\n') >= CONFIG_COMMAND_MAX) {
		contract(config_parse_command(text, (size_t)n, buf, &again, err,
					      sizeof(err)) == -EINVAL,
			 "a printed command too long is refused");
		goto out;
	}
	contract(config_parse_command(text, (size_t)n, buf, &again, err,
				      sizeof(err)) == 0,
		 "the printed command parses");
	contract(again.verb == cmd->verb && again.number == cmd->number &&
			 again.read_pattern == cmd->read_pattern &&
			 again.on == cmd->on && again.scrub == cmd->scrub &&
			 again.rate == cmd->rate &&
			 again.replication == cmd->replication &&
			 again.witness == cmd->witness &&
			 again.clear == cmd->clear &&
			 again.policy_pattern == cmd->policy_pattern &&
			 again.policy_rewrite == cmd->policy_rewrite &&
			 again.repl == cmd->repl && again.mode == cmd->mode &&
			 again.failover == cmd->failover &&
			 again.quarantine == cmd->quarantine &&
			 again.id == cmd->id && again.whole == cmd->whole &&
			 again.offset == cmd->offset &&
			 again.length == cmd->length &&
			 same_string(again.path, cmd->path) &&
			 same_string(again.name, cmd->name),
		 "the printed command parses to the same command");
out:
	free(text);
	free(buf);
}

static void fuzz_command(const char *line, size_t len)
{
	char *buf = malloc(CONFIG_COMMAND_MAX);
	struct config_command cmd;
	char err[ERR_MAX];
	size_t body = len && line[len - 1] == '\n' ? len - 1 : len;
	int ret;

	contract(buf != NULL, "memory for the line buffer");
	err[0] = '\0';
	ret = config_parse_command(line, len, buf, &cmd, err, sizeof(err));
	contract(ret == 0 || ret == -EINVAL, "the result is 0 or -EINVAL");
	if (ret) {
		contract(memchr(err, '\0', sizeof(err)) && err[0] != '\0',
			 "a refusal has a reason");
	} else {
		contract(body < CONFIG_COMMAND_MAX, "an accepted line fits");
		contract(!memchr(line, '\0', body), "no NUL byte was accepted");
		contract(!memchr(line, '\n', body),
			 "no second line was accepted");
		check_fields(&cmd, buf);
		check_round_trip(&cmd);
	}

	/* Error buffers of every small size, exactly allocated. */
	for (size_t errlen = 0; errlen < 16; errlen++) {
		char *small = malloc(errlen ? errlen : 1);

		contract(small != NULL, "memory for the error buffer");
		contract(config_parse_command(line, len, buf, &cmd, small,
					      errlen) == ret,
			 "the result does not depend on the error buffer");
		if (ret && errlen)
			contract(memchr(small, '\0', errlen) != NULL,
				 "a short reason is still terminated");
		free(small);
	}
	free(buf);
}

/* ---- command lines ---- */

/* No record: the command line's threshold if it fits, else a majority. */
static void check_resolved(const struct config *cfg)
{
	struct children_config cc = cfg->children;
	char err[ERR_MAX];
	int ret;

	err[0] = '\0';
	ret = config_resolve_rules(cfg, &cc, NULL, err, sizeof(err));
	contract(ret == 0 || (ret == -EINVAL && err[0] != '\0' &&
			      cfg->threshold_given && cc.threshold > cc.n),
		 "only a threshold above the children is refused, with a "
		 "reason");
	if (!ret)
		contract(cc.threshold >= 1 && cc.threshold <= cc.n,
			 "the resolved threshold is in 1..children");
}

static void check_config(const struct config_args *a, int ret,
			 const struct config *cfg, const char *err)
{
	static const struct config zero;

	if (ret) {
		contract(ret == -EINVAL || ret == -ENOMEM,
			 "config_from_args fails with -EINVAL or -ENOMEM");
		contract(err[0] != '\0', "a refused command line has a reason");
		contract(memcmp(cfg, &zero, sizeof(zero)) == 0,
			 "a refused command line leaves nothing to free");
		return;
	}
	contract(a->npaths >= 2 && cfg->children.n == a->npaths - 1,
		 "one child per path before the mountpoint");
	/* The threshold is bounded by the membership, which is only known
	 * once the children's records are read: before that it is the
	 * command line's (or 0), after config_resolve_rules in 1..children. */
	contract(cfg->threshold_given
			 ? cfg->children.threshold >= 1 &&
				   cfg->children.threshold <= CHILDREN_MAX
			 : cfg->children.threshold == 0,
		 "an unresolved threshold is the command line's, or 0");
	check_resolved(cfg);
	contract(cfg->threads >= 1 && cfg->threads <= CONFIG_MAX_THREADS,
		 "threads is in range");
	contract(cfg->scrub_rate >= 0 &&
			 cfg->scrub_rate <= CONFIG_MAX_SCRUB_RATE,
		 "the scrub rate is in range");
	contract(cfg->mountpoint && cfg->mountpoint[0] == '/',
		 "the mountpoint is absolute");
	for (int i = 0; i < cfg->children.n; i++)
		contract(cfg->children.path[i][0] == '/',
			 "children are absolute");
	contract(!cfg->log_path || cfg->log_path[0] == '/',
		 "the log path is absolute");
	contract(!cfg->children.blkverify ||
			 (cfg->children.n == 2 &&
			  (!cfg->threshold_given ||
			   cfg->children.threshold == 2) &&
			  !cfg->children.rewrite_corrupted &&
			  cfg->children.read_pattern == READ_PATTERN_QUORUM),
		 "blkverify only in its one valid combination");
}

static void fuzz_args(const uint8_t *data, size_t size)
{
	char *copy = malloc(size + 1), *field[5 + CHILDREN_MAX + 3];
	struct config_args a = {0};
	struct config cfg;
	char err[ERR_MAX];
	int n = 0, flags, ret, cwd;

	contract(copy != NULL, "memory for the arguments");
	memcpy(copy, data, size);
	copy[size] = '\0';
	for (char *p = copy;
	     p <= copy + size && n < (int)(sizeof(field) / sizeof(field[0]));
	     p += strlen(p) + 1)
		field[n++] = p;
	flags = (unsigned char)field[0][0];
	a.rewrite_corrupted = flags & 1;
	a.blkverify = (flags >> 1) & 1;
	if (n > 1 && (flags & 4))
		a.threshold = field[1];
	if (n > 2 && (flags & 8))
		a.read_pattern = field[2];
	if (n > 3 && (flags & 16))
		a.threads = field[3];
	if (n > 4 && (flags & 32))
		a.log = field[4];
	for (int i = 5; i < n; i++) {
		if (a.npaths == CHILDREN_MAX + 2) {
			a.too_many_paths = true;
			break;
		}
		a.path[a.npaths++] = field[i];
	}
	/* Relative paths resolve in the scratch tree; libFuzzer's own
	 * relative corpus paths need the original directory back. */
	cwd = open(".", O_RDONLY | O_DIRECTORY);
	contract(cwd >= 0 && fchdir(scratch_fd) == 0, "enter the scratch tree");
	err[0] = '\0';
	ret = config_from_args(&a, &cfg, err, sizeof(err));
	contract(fchdir(cwd) == 0, "leave the scratch tree");
	close(cwd);
	check_config(&a, ret, &cfg, err);
	if (!ret)
		config_release(&cfg);
	free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_command((const char *)data, size);
	if (memchr(data, '\0', size))
		fuzz_args(data, size);
	return 0;
}
