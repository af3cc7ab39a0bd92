/*
 * quorumctl's command line: options anywhere (getopt_long permutes),
 * then a command and its words.
 */
#define _GNU_SOURCE
#include "quorumctl/quorumctl.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *to)
{
	fprintf(to,
		"usage: quorumctl [OPTIONS] COMMAND [MOUNTPOINT] [WORDS]\n"
		"\n"
		"  status [MOUNTPOINT...]      the set as a table (every "
		"quorumfs mount when\n"
		"                              none is named); exit 1 when "
		"degraded\n"
		"  add MOUNTPOINT PATH [name=NAME]\n"
		"  remove MOUNTPOINT NAME\n"
		"  threshold MOUNTPOINT N\n"
		"  read-pattern MOUNTPOINT quorum|fifo\n"
		"  rewrite-corrupted MOUNTPOINT on|off\n"
		"  resync MOUNTPOINT NAME\n"
		"  scrub MOUNTPOINT start|repair [rate=N]\n"
		"  scrub MOUNTPOINT stop\n"
		"  policy MOUNTPOINT DIR threshold=N "
		"[read-pattern=P] [rewrite-corrupted=on|off]\n"
		"  policy MOUNTPOINT DIR clear\n"
		"  quarantine MOUNTPOINT list  what repairs overwrote (JSON)\n"
		"  quarantine MOUNTPOINT restore ID | purge ID|all\n"
		"  repair MOUNTPOINT FILE from=CHILD [OFFSET LENGTH]\n"
		"  events MOUNTPOINT           the event log, readable\n"
		"  metrics [MOUNTPOINT...]     Prometheus text format\n"
		"  heal-info MOUNTPOINT        what each child still needs, "
		"what no version\n"
		"                              could win; exit 1 unless "
		"nothing\n"
		"\n"
		"options:\n"
		"  -s, --socket=PATH   the mount's control socket (default: "
		"as the daemon\n"
		"                      chooses it, or its fstab line's "
		"control-socket=)\n"
		"  -j, --json          the daemon's JSON (status, events, "
		"heal-info)\n"
		"  -w, --wait          add, resync, scrub: until it ends; exit "
		"1 if it failed\n"
		"  -f, --follow        events: go on as they come\n"
		"  -n, --lines=N       events: only the last N first\n"
		"  -V, --version       -h, --help\n"
		"\n"
		"A refused command prints the daemon's reason and exits 1; "
		"2 means a usage\n"
		"error or a mount that could not be asked. See "
		"quorumctl(8).\n");
}

static const struct option longopts[] = {
	{"socket", required_argument, NULL, 's'},
	{"json", no_argument, NULL, 'j'},
	{"wait", no_argument, NULL, 'w'},
	{"follow", no_argument, NULL, 'f'},
	{"lines", required_argument, NULL, 'n'},
	{"version", no_argument, NULL, 'V'},
	{"help", no_argument, NULL, 'h'},
	{NULL, 0, NULL, 0},
};

/* Options into *o: -1 to go on, else the exit status. */
static int parse_options(int argc, char **argv, struct qctl_opts *o)
{
	char *end;
	int c;

	while ((c = getopt_long(argc, argv, "s:jwfn:Vh", longopts, NULL)) !=
	       -1) {
		switch (c) {
		case 's':
			o->socket = optarg;
			break;
		case 'j':
			o->json = true;
			break;
		case 'w':
			o->wait = true;
			break;
		case 'f':
			o->follow = true;
			break;
		case 'n':
			o->lines = strtol(optarg, &end, 10);
			if (*end || o->lines < 0)
				return qctl_error("-n wants a number of lines");
			break;
		case 'V':
			printf("quorumctl %s\n", QFS_VERSION);
			return QCTL_OK;
		case 'h':
			usage(stdout);
			return QCTL_OK;
		default:
			usage(stderr);
			return QCTL_ERROR;
		}
	}
	return -1;
}

int main(int argc, char **argv)
{
	struct qctl_opts o = {.lines = -1};
	int ret = parse_options(argc, argv, &o);
	const char *cmd;

	if (ret >= 0)
		return ret;
	if (optind >= argc) {
		usage(stderr);
		return QCTL_ERROR;
	}
	cmd = argv[optind];
	argc -= optind + 1;
	argv += optind + 1;
	if (strcmp(cmd, "status") == 0)
		return qctl_cmd_status(argc, argv, &o);
	if (strcmp(cmd, "events") == 0)
		return qctl_cmd_events(argc, argv, &o);
	if (strcmp(cmd, "metrics") == 0)
		return qctl_cmd_metrics(argc, argv, &o);
	if (strcmp(cmd, "heal-info") == 0)
		return qctl_cmd_heal_info(argc, argv, &o);
	if (strcmp(cmd, "help") == 0) {
		usage(stdout);
		return QCTL_OK;
	}
	return qctl_cmd_control(cmd, argc, argv, &o);
}
