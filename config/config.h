/*
 * config: the command line's meaning, validated.
 *
 * quorumfs.c collects the raw strings (through libfuse's option parser);
 * this module checks every rule and turns them into typed settings. Each
 * failure is one sentence naming the bad option or path, so an operator
 * knows what to fix, and nothing is mounted. The rules are QEMU's
 * quorum_open() rules plus our own for directories:
 *   - threshold 1..N (default a majority, N / 2 + 1);
 *   - blkverify only with exactly two children and threshold 2, and not
 *     with rewrite-corrupted or read-pattern=fifo;
 *   - children exist, are directories, are distinct by device and inode,
 *     and neither contain the mountpoint nor lie inside it.
 */
#ifndef QFS_CONFIG_H
#define QFS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "children/children.h"

/*
 * The raw command line, as strings; NULL means "not given". The flags are
 * int because libfuse's option parser stores an int through them.
 */
struct config_args {
	const char *threshold;
	const char *read_pattern;
	const char *threads;
	const char *log;
	int rewrite_corrupted;
	int blkverify;
	int npaths; /* children then the mountpoint */
	const char *path[CHILDREN_MAX + 2];
	bool too_many_paths; /* more than fit in path[] were given */
};

struct config {
	struct children_config children; /* paths are owned by the config */
	int threads;
	char *log_path;	  /* absolute, or NULL for no event log */
	char *mountpoint; /* absolute */
};

#define CONFIG_DEFAULT_THREADS 16
#define CONFIG_MAX_THREADS 256

/*
 * Validate args into *cfg. Returns 0, or -EINVAL with a one-sentence
 * message (no trailing newline) in err and *cfg holding nothing to free.
 * On success release *cfg with config_release().
 */
int config_from_args(const struct config_args *args, struct config *cfg,
		     char *err, size_t errlen);

/* Free what config_from_args() allocated. */
void config_release(struct config *cfg);

#endif
