/*
 * The control-command parser: one command a write, parsed whole into a
 * struct config_command before anything changes (config.h).
 */
#define _GNU_SOURCE
#include "config/config.h"
#include "config/config_i.h"

#include <stdio.h>
#include <stdint.h>
#include <string.h>

#define CMD_MAX_WORDS 5

/*
 * One word of buf at *pos, unquoted in place (the result is never longer
 * than the input): blanks end a word; 'single quotes' keep everything
 * literally; "double quotes" keep everything but \" and \\, which
 * stand for " and \; outside quotes a backslash keeps the next
 * character. So `add "/srv/my disk"` and `add /srv/my\ disk` name one
 * path, as in a shell. Returns the word, NULL at the end of buf, and
 * sets *bad on an unterminated quote or a trailing backslash.
 */
static char *next_word(char *buf, size_t *pos, bool *bad)
{
	char *in = buf + *pos, *out, *word;
	char quote = 0;

	while (*in == ' ' || *in == '\t')
		in++;
	if (!*in)
		return NULL;
	word = out = in;
	for (; *in && (quote || (*in != ' ' && *in != '\t')); in++) {
		if (!quote && (*in == '\'' || *in == '"')) {
			quote = *in;
		} else if (quote && *in == quote) {
			quote = 0;
		} else if (*in == '\\' && quote != '\'' &&
			   (!quote || in[1] == '"' || in[1] == '\\')) {
			if (!in[1]) {
				*bad = true;
				break;
			}
			*out++ = *++in;
		} else {
			*out++ = *in;
		}
	}
	*bad |= quote != 0;
	*pos = in - buf + (*in != '\0');
	*out = '\0';
	return word;
}

/* Split buf into words in place; -EINVAL with a reason in err. */
static int split_words(char *buf, char **word, int *nwords, char *err,
		       size_t errlen)
{
	size_t pos = 0;
	bool bad = false;
	char *w;

	*nwords = 0;
	while ((w = next_word(buf, &pos, &bad)) && !bad) {
		if (*nwords == CMD_MAX_WORDS)
			return config_fail(err, errlen,
					   "too many words in the command");
		word[(*nwords)++] = w;
	}
	if (bad)
		return config_fail(
			err, errlen,
			"a quote is not closed, or the command ends in a "
			"backslash");
	return 0;
}

/* QEMU's texts for the replication driver's options. */
#define MODE_VALUE "The option mode's value should be primary or secondary"
#define PRIMARY_TOP_ID "The primary side does not support option top-id"

/* One NAME=VALUE option of add: name=, mode=primary|witness, top=. */
static int parse_add_option(const char *word, struct config_command *cmd,
			    bool *top, char *err, size_t errlen)
{
	if (strncmp(word, "name=", 5) == 0 && word[5] && !cmd->name) {
		cmd->name = word + 5;
	} else if (strncmp(word, "mode=", 5) == 0 &&
		   (cmd->replication || cmd->witness)) {
		return config_fail(err, errlen,
				   "add takes mode= once, not '%s' again",
				   word);
	} else if (strncmp(word, "mode=", 5) == 0) {
		if (strcmp(word + 5, "primary") == 0)
			cmd->replication = true;
		else if (strcmp(word + 5, "witness") == 0)
			cmd->witness = true;
		else if (strcmp(word + 5, "secondary") == 0)
			return config_fail(
				err, errlen,
				"a secondary is a mount of its own (-o "
				"replication=secondary), not a child");
		else
			return config_fail(err, errlen, MODE_VALUE);
	} else if (strncmp(word, "top=", 4) == 0) {
		*top = true;
	} else {
		return config_fail(err, errlen,
				   "add takes name=NAME and mode=primary or "
				   "mode=witness after the path, not '%s'",
				   word);
	}
	return 0;
}

static int parse_add(char **word, int n, struct config_command *cmd, char *err,
		     size_t errlen)
{
	bool top = false;

	if (n < 2)
		return config_fail(
			err, errlen,
			"usage: add PATH [name=NAME] [mode=primary|witness]");
	cmd->path = word[1];
	if (cmd->path[0] != '/')
		return config_fail(err, errlen,
				   "add needs an absolute path, not '%s'",
				   cmd->path);
	for (int i = 2; i < n; i++)
		if (parse_add_option(word[i], cmd, &top, err, errlen))
			return -EINVAL;
	if (top && cmd->replication)
		return config_fail(err, errlen, PRIMARY_TOP_ID);
	if (top)
		return config_fail(err, errlen,
				   "top= goes with mode=, and only a "
				   "secondary has a top");
	return 0;
}

static int parse_switch(char **word, int n, struct config_command *cmd,
			char *err, size_t errlen)
{
	if (n != 2)
		return config_fail(err, errlen, "usage: %s",
				   cmd->verb == CMD_READ_PATTERN
					   ? "read-pattern quorum|fifo"
					   : "rewrite-corrupted on|off");
	if (cmd->verb == CMD_READ_PATTERN) {
		if (strcmp(word[1], "quorum") && strcmp(word[1], "fifo"))
			return config_fail(
				err, errlen,
				"read-pattern must be quorum or fifo, not "
				"'%s'",
				word[1]);
		cmd->read_pattern = strcmp(word[1], "fifo") == 0
					    ? READ_PATTERN_FIFO
					    : READ_PATTERN_QUORUM;
		return 0;
	}
	if (strcmp(word[1], "on") && strcmp(word[1], "off"))
		return config_fail(
			err, errlen,
			"rewrite-corrupted must be on or off, not '%s'",
			word[1]);
	cmd->on = strcmp(word[1], "on") == 0;
	return 0;
}

/* scrub start|repair [rate=N], scrub stop */
static int parse_scrub(char **word, int n, struct config_command *cmd,
		       char *err, size_t errlen)
{
	static const char usage[] = "usage: scrub start|repair "
				    "[rate=MIB_PER_SECOND], or scrub stop";

	cmd->rate = -1;
	if (n < 2 || n > 3)
		return config_fail(err, errlen, "%s", usage);
	if (strcmp(word[1], "start") == 0)
		cmd->scrub = CONFIG_SCRUB_START;
	else if (strcmp(word[1], "repair") == 0)
		cmd->scrub = CONFIG_SCRUB_REPAIR;
	else if (strcmp(word[1], "stop") == 0 && n == 2)
		cmd->scrub = CONFIG_SCRUB_STOP;
	else
		return config_fail(err, errlen, "%s", usage);
	if (n == 3 &&
	    (strncmp(word[2], "rate=", 5) != 0 ||
	     !parse_int(word[2] + 5, 0, CONFIG_MAX_SCRUB_RATE, &cmd->rate)))
		return config_fail(
			err, errlen,
			"scrub takes rate=N after %s, N a whole number of "
			"MiB/s from 0 (unlimited) to %d, not '%s'",
			word[1], CONFIG_MAX_SCRUB_RATE, word[2]);
	return 0;
}

/* replication ACTION [primary|secondary] [failover] [NAME] */
static int parse_replication(char **word, int n, struct config_command *cmd,
			     char *err, size_t errlen)
{
	static const char *const actions[] = {"start", "checkpoint",
					      "get-error", "stop", "commit"};
	int i, a;

	cmd->mode = -1;
	for (a = 0; n >= 2 && a < 5 && strcmp(word[1], actions[a]); a++)
		;
	if (n < 2 || a == 5)
		return config_fail(
			err, errlen,
			"usage: replication start|checkpoint|get-error|"
			"stop|commit [primary|secondary] [failover] "
			"[NAME]");
	cmd->repl = a;
	for (i = 2; i < n; i++) {
		if (!strcmp(word[i], "primary") ||
		    !strcmp(word[i], "secondary"))
			cmd->mode = !strcmp(word[i], "secondary");
		else if (!strcmp(word[i], "failover"))
			cmd->failover = true;
		else if (i == n - 1 && word[i][0])
			cmd->name = word[i];
		else
			return config_fail(
				err, errlen,
				"replication takes primary, secondary, "
				"failover and one NAME, not '%s'",
				word[i]);
	}
	if (cmd->failover && cmd->repl != CONFIG_REPL_STOP)
		return config_fail(err, errlen,
				   "Parameter 'failover' is only for "
				   "stopping replication");
	return 0;
}

/* DIR of a policy, made relative to the mount in place: slashes at
 * either end go, and it may not be the root, name . or .., or start
 * with a name the mount reserves. */
static int policy_dir(char *dir, struct config_command *cmd, char *err,
		      size_t errlen)
{
	size_t len;
	char *part, *save;
	char copy[CONFIG_COMMAND_MAX];

	while (*dir == '/')
		dir++;
	len = strlen(dir);
	while (len > 0 && dir[len - 1] == '/')
		dir[--len] = '\0';
	if (len == 0)
		return config_fail(err, errlen,
				   "policy needs a directory below the mount's "
				   "root (the root's rules are threshold, "
				   "read-pattern and rewrite-corrupted)");
	if (len > 255)
		return config_fail(err, errlen,
				   "a policy's directory may be at most 255 "
				   "bytes");
	snprintf(copy, sizeof(copy), "%s", dir);
	for (part = strtok_r(copy, "/", &save); part;
	     part = strtok_r(NULL, "/", &save))
		if (!strcmp(part, ".") || !strcmp(part, ".."))
			return config_fail(err, errlen,
					   "a policy's directory may not "
					   "name . or .., not '%s'",
					   dir);
	if (strstr(dir, "//"))
		return config_fail(err, errlen,
				   "a policy's directory may not hold an "
				   "empty name, not '%s'",
				   dir);
	cmd->path = dir;
	return 0;
}

/* One option of policy: threshold=N, read-pattern=P,
 * rewrite-corrupted=on|off. */
static int policy_option(const char *word, struct config_command *cmd,
			 char *err, size_t errlen)
{
	if (!strncmp(word, "threshold=", 10)) {
		if (!parse_int(word + 10, 1, CHILDREN_MAX, &cmd->number))
			return config_fail(err, errlen,
					   "a policy's threshold needs one "
					   "whole number from 1 to the number "
					   "of voting children, not '%s'",
					   word + 10);
	} else if (!strcmp(word, "read-pattern=quorum") ||
		   !strcmp(word, "read-pattern=fifo")) {
		cmd->policy_pattern = !strcmp(word + 13, "fifo")
					      ? READ_PATTERN_FIFO
					      : READ_PATTERN_QUORUM;
	} else if (!strcmp(word, "rewrite-corrupted=on") ||
		   !strcmp(word, "rewrite-corrupted=off")) {
		cmd->policy_rewrite = !strcmp(word + 18, "on");
	} else {
		return config_fail(err, errlen,
				   "policy takes threshold=N, "
				   "read-pattern=quorum|fifo and "
				   "rewrite-corrupted=on|off, not '%s'",
				   word);
	}
	return 0;
}

static int parse_policy(char **word, int n, struct config_command *cmd,
			char *err, size_t errlen)
{
	cmd->policy_pattern = cmd->policy_rewrite = -1;
	if (n < 3)
		return config_fail(err, errlen,
				   "usage: policy DIR threshold=N "
				   "[read-pattern=quorum|fifo] "
				   "[rewrite-corrupted=on|off], or policy "
				   "DIR clear");
	if (policy_dir(word[1], cmd, err, errlen))
		return -EINVAL;
	if (!strcmp(word[2], "clear")) {
		cmd->clear = true;
		return n == 3 ? 0
			      : config_fail(err, errlen,
					    "policy DIR clear takes nothing "
					    "after clear");
	}
	for (int i = 2; i < n; i++)
		if (policy_option(word[i], cmd, err, errlen))
			return -EINVAL;
	if (!cmd->number)
		return config_fail(err, errlen, "a policy needs threshold=N");
	return 0;
}

/* An entry id: a whole number from 1. */
static bool parse_id(const char *s, uint64_t *out)
{
	char *end;

	if (!s || !*s || strspn(s, "0123456789") != strlen(s))
		return false;
	errno = 0;
	*out = strtoull(s, &end, 10);
	return !errno && *out > 0;
}

/* quarantine list, quarantine restore ID, quarantine purge ID|all */
static int parse_quarantine(char **word, int n, struct config_command *cmd,
			    char *err, size_t errlen)
{
	static const char usage[] = "usage: quarantine list, quarantine "
				    "restore ID, or quarantine purge ID|all";

	if (n == 2 && strcmp(word[1], "list") == 0) {
		cmd->quarantine = CONFIG_QUARANTINE_LIST;
		return 0;
	}
	if (n != 3 || (strcmp(word[1], "restore") && strcmp(word[1], "purge")))
		return config_fail(err, errlen, "%s", usage);
	cmd->quarantine = strcmp(word[1], "restore") == 0
				  ? CONFIG_QUARANTINE_RESTORE
				  : CONFIG_QUARANTINE_PURGE;
	if (cmd->quarantine == CONFIG_QUARANTINE_PURGE &&
	    strcmp(word[2], "all") == 0)
		return 0; /* id 0: every entry */
	if (!parse_id(word[2], &cmd->id))
		return config_fail(
			err, errlen,
			"quarantine %s needs an entry id (a whole number "
			"from 1, see quarantine list)%s, not '%s'",
			word[1],
			cmd->quarantine == CONFIG_QUARANTINE_PURGE ? " or all"
								   : "",
			word[2]);
	return 0;
}

/* repair FILE from=CHILD [OFFSET LENGTH] */
static int parse_repair(char **word, int n, struct config_command *cmd,
			char *err, size_t errlen)
{
	unsigned long long off = 0, len = 0;

	if ((n != 3 && n != 5) || !word[1][0])
		return config_fail(err, errlen,
				   "usage: repair FILE from=CHILD [OFFSET "
				   "LENGTH]");
	cmd->path = word[1];
	if (strncmp(word[2], "from=", 5) != 0 || !word[2][5])
		return config_fail(err, errlen,
				   "repair needs from=CHILD after the file, "
				   "not '%s'",
				   word[2]);
	cmd->name = word[2] + 5;
	cmd->whole = n == 3;
	if (n == 5 && (!config_parse_size(word[3], &off) ||
		       !config_parse_size(word[4], &len) || len == 0 ||
		       off > INT64_MAX || len > INT64_MAX - off))
		return config_fail(
			err, errlen,
			"repair's OFFSET and LENGTH must be sizes in bytes "
			"(such as 4096 or 1M), LENGTH at least 1, not '%s "
			"%s'",
			word[3], word[4]);
	cmd->offset = off;
	cmd->length = len;
	return 0;
}

static int parse_words(char **word, int n, struct config_command *cmd,
		       char *err, size_t errlen)
{
	static const struct {
		const char *word;
		enum config_verb verb;
	} verbs[] = {
		{"add", CMD_ADD},
		{"remove", CMD_REMOVE},
		{"threshold", CMD_THRESHOLD},
		{"read-pattern", CMD_READ_PATTERN},
		{"rewrite-corrupted", CMD_REWRITE_CORRUPTED},
		{"resync", CMD_RESYNC},
		{"scrub", CMD_SCRUB},
		{"replication", CMD_REPLICATION},
		{"policy", CMD_POLICY},
		{"quarantine", CMD_QUARANTINE},
		{"repair", CMD_REPAIR},
	};
	size_t v;

	for (v = 0; v < sizeof(verbs) / sizeof(verbs[0]); v++)
		if (strcmp(word[0], verbs[v].word) == 0)
			break;
	if (v == sizeof(verbs) / sizeof(verbs[0]))
		return config_fail(err, errlen, "unknown command '%s'",
				   word[0]);
	cmd->verb = verbs[v].verb;
	switch (cmd->verb) {
	case CMD_ADD:
		return parse_add(word, n, cmd, err, errlen);
	case CMD_REMOVE:
	case CMD_RESYNC:
		if (n != 2 || !word[1][0])
			return config_fail(err, errlen, "usage: %s NAME|PATH",
					   word[0]);
		cmd->name = word[1];
		return 0;
	case CMD_THRESHOLD:
		if (n != 2 ||
		    !parse_int(word[1], 1, CHILDREN_MAX, &cmd->number))
			return config_fail(
				err, errlen,
				"threshold needs one whole number from 1 "
				"to the number of voting children");
		return 0;
	case CMD_SCRUB:
		return parse_scrub(word, n, cmd, err, errlen);
	case CMD_REPLICATION:
		return parse_replication(word, n, cmd, err, errlen);
	case CMD_POLICY:
		return parse_policy(word, n, cmd, err, errlen);
	case CMD_QUARANTINE:
		return parse_quarantine(word, n, cmd, err, errlen);
	case CMD_REPAIR:
		return parse_repair(word, n, cmd, err, errlen);
	default:
		return parse_switch(word, n, cmd, err, errlen);
	}
}

int config_parse_command(const char *line, size_t len, char *buf,
			 struct config_command *cmd, char *err, size_t errlen)
{
	char *word[CMD_MAX_WORDS];
	int n;

	memset(cmd, 0, sizeof(*cmd));
	if (len > 0 && line[len - 1] == '\n')
		len--;
	if (len >= CONFIG_COMMAND_MAX)
		return config_fail(err, errlen,
				   "a command may be at most %d bytes",
				   CONFIG_COMMAND_MAX - 1);
	if (memchr(line, '\0', len))
		return config_fail(err, errlen,
				   "a command may not contain NUL bytes");
	if (memchr(line, '\n', len))
		return config_fail(err, errlen, "write one command at a time");
	memcpy(buf, line, len);
	buf[len] = '\0';
	if (split_words(buf, word, &n, err, errlen))
		return -EINVAL;
	if (n == 0)
		return config_fail(err, errlen, "the command is empty");
	return parse_words(word, n, cmd, err, errlen);
}
