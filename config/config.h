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
#include <stdint.h>

#include <sys/stat.h>

#include "children/children.h"

/*
 * The raw command line, as strings; NULL means "not given". The flags are
 * int because libfuse's option parser stores an int through them. One
 * field per option, which is why there are more than 16 fields.
 */
struct config_args {
	const char *threshold;
	const char *read_pattern;
	const char *threads;
	const char *log;
	const char *io_timeout;
	const char *scrub_rate;
	const char *control_socket;
	const char *sync_from;
	/* Replication's secondary: replication=MODE (or the bare word),
	 * the layer directories, the inbound mountpoint, layer-sync=on|off,
	 * layer-limit=SIZE, layer-cluster=BYTES. */
	const char *replication;
	int replication_bare;
	const char *active, *hidden, *inbound;
	const char *layer_sync, *layer_limit, *layer_cluster;
	const char *events;		   /* "syslog" */
	const char *event_program;	   /* run for each event */
	const char *event_program_timeout; /* seconds */
	const char *uring;		   /* auto, on, off */
	const char *quarantine_limit;	   /* SIZE, 0: off */
	int rewrite_corrupted;
	int blkverify;
	/* -o witness=PATH: a witness child after the others; given twice
	 * is an error. */
	const char *witness;
	bool witness_twice;
	int npaths; /* children then the mountpoint */
	const char *path[CHILDREN_MAX + 2];
	bool too_many_paths; /* more than fit in path[] were given */
};

/*
 * A secondary of replication (-o replication=secondary): the mountpoint
 * is the secondary VM's view, the children are its base, and the
 * primary's changes arrive through a second mount, inbound.
 */
struct config_secondary {
	bool on;
	char *active, *hidden, *inbound; /* absolute, resolved */
	bool layer_sync;	  /* layers made durable (off on tmpfs) */
	unsigned long long limit; /* bytes a layer may hold; 0: no limit */
	unsigned int cluster;	  /* the layers' allocation unit, bytes */
};

#define CONFIG_DEFAULT_CLUSTER 65536

/* uring=: FUSE requests through io_uring never (the default: it measured
 * slower here, docs/PERFORMANCE.md), when offered, always. */
enum config_uring { CONFIG_URING_OFF, CONFIG_URING_AUTO, CONFIG_URING_ON };

/* One group of fields per concern of the command line, which is why
 * there are more than 16 fields. */
struct config {
	struct children_config children; /* paths are owned by the config */
	int threads;
	int io_timeout_ms; /* per child request; 0: none */
	int scrub_rate;	   /* MiB/s a scrub reads at by default; 0: unlimited */
	char *log_path;	   /* absolute, or NULL for no event log */
	char *mountpoint;  /* absolute */
	/* The operator's socket: absolute, or NULL for none. */
	char *control_socket;
	/* First mount: the child (index in children) the others are filled
	 * from, or -1. */
	int sync_from;
	/* The command line gave these rules (else the record's stand). */
	bool threshold_given, read_pattern_given, rewrite_given;
	struct config_secondary secondary;
	/* Where events go besides log_path (config/sinks.c). */
	bool events_syslog;
	char *event_program; /* absolute, or NULL */
	int event_program_timeout_ms;
	enum config_uring uring; /* how FUSE requests arrive */
	/* Bytes each child's quarantine may hold; 0: nothing is saved. */
	unsigned long long quarantine_limit;
};

#define CONFIG_DEFAULT_THREADS 16
#define CONFIG_MAX_THREADS 256
#define CONFIG_DEFAULT_IO_TIMEOUT 10 /* seconds */
#define CONFIG_MAX_IO_TIMEOUT 3600
/* Scrub rates are MiB/s; 0 means unlimited. */
#define CONFIG_DEFAULT_SCRUB_RATE 64
#define CONFIG_MAX_SCRUB_RATE (1024 * 1024)
/* An event program's run is killed after this many seconds. */
#define CONFIG_DEFAULT_EVENT_PROGRAM_TIMEOUT 10
#define CONFIG_MAX_EVENT_PROGRAM_TIMEOUT 3600
/* The quarantine (persist.h's QUARANTINE_DEFAULT_LIMIT and _MIN_LIMIT). */
#define CONFIG_DEFAULT_QUARANTINE_LIMIT (1ULL << 30)
#define CONFIG_MIN_QUARANTINE_LIMIT (1ULL << 20)

/*
 * Validate args into *cfg. Returns 0, or -EINVAL with a one-sentence
 * message (no trailing newline) in err and *cfg holding nothing to free.
 * On success release *cfg with config_release().
 */
int config_from_args(const struct config_args *args, struct config *cfg,
		     char *err, size_t errlen);

/*
 * The control socket a mount at mountpoint has when control-socket= is
 * not given: /run/quorumfs/NAME.sock for root, else
 * $XDG_RUNTIME_DIR/quorumfs/NAME.sock (or /tmp/quorumfs-UID/NAME.sock),
 * NAME the mountpoint with '/' as '-' and other bytes outside
 * [A-Za-z0-9._] as %XX, or a hash of it where the path would not fit a
 * socket address. Returns 0 with the path in buf, or -ENAMETOOLONG.
 */
int config_default_socket(const char *mountpoint, char *buf, size_t size);

/* ---- the set as one source string (config/source.c) ---- */

/* The longest default fsname; longer sets are shortened (see below). */
#define CONFIG_SOURCE_MAX 1024

/*
 * The children of a (every path but the last, as given) as one string:
 * joined by ':', a ':' or '\' inside a path written '\:' or '\\', so that
 * the string reads back as the same children. When that does not fit
 * size bytes, as many whole children as fit followed by ":+N", N the
 * children left out. Returns N (0 when all fit), or -ENAMETOOLONG when
 * size is too small for anything. Pure; buf is always NUL-terminated on
 * success.
 */
int config_join_source(const struct config_args *a, char *buf, size_t size);

/*
 * Split each child argument of a (every path but the last) at the colons
 * that are not escaped, a backslash keeping the next byte ('\:' a colon,
 * '\\' a backslash), so "/srv/a:/srv/b" names two children. a->path[]
 * then points into *store (one allocation; the caller frees it, also on
 * failure, after the config is made). More than CHILDREN_MAX children
 * set a->too_many_paths. Returns 0, -ENOMEM, or -EINVAL with the reason
 * in err for an empty child ("/srv/a::/srv/b", a trailing colon).
 */
int config_split_source(struct config_args *a, char **store, char *err,
			size_t errlen);

/*
 * The rules once the membership is known (cc->n, the command line's
 * children plus the members the record names): what the command line
 * gave, else what recorded holds (a children_config whose threshold is
 * 0 holds nothing; NULL: no record), else a majority of the members.
 * Returns 0, or -EINVAL with the reason in err for a threshold above
 * the members.
 */
int config_resolve_rules(const struct config *cfg, struct children_config *cc,
			 const struct children_config *recorded, char *err,
			 size_t errlen);

/* Free what config_from_args() allocated. */
void config_release(struct config *cfg);

/*
 * Check a directory offered as a new child at runtime: it must exist and be
 * a directory (-ENOENT, -ENOTDIR), differ by device and inode from every
 * current child (-EEXIST; roots[] are their O_PATH handles), and neither
 * contain the mountpoint nor lie inside it (-EINVAL). mount_st is the
 * mountpoint's directory as it was before mounting. On success *real is
 * the resolved absolute path (caller frees). err gets the reason.
 */
int config_check_new_child(const char *path, const char *mountpoint,
			   const struct stat *mount_st, const int *roots,
			   int nroots, char **real, char *err, size_t errlen);

/* ---- control commands (written to MOUNTPOINT/.control) ---- */

/* Longest command a single write may carry, newline included. */
#define CONFIG_COMMAND_MAX 4096

enum config_verb {
	CMD_ADD,
	CMD_REMOVE,
	CMD_THRESHOLD,
	CMD_READ_PATTERN,
	CMD_REWRITE_CORRUPTED,
	CMD_RESYNC,
	CMD_SCRUB,
	CMD_REPLICATION,
	CMD_POLICY,
	CMD_QUARANTINE,
	CMD_REPAIR,
};

/* quarantine list|restore ID|purge ID|all */
enum config_quarantine_action {
	CONFIG_QUARANTINE_LIST,
	CONFIG_QUARANTINE_RESTORE,
	CONFIG_QUARANTINE_PURGE,
};

/* replication start|checkpoint|get-error|stop: QEMU's xen-set-replication,
 * xen-colo-do-checkpoint and query-xen-replication-status. */
enum config_repl_action {
	CONFIG_REPL_START,
	CONFIG_REPL_CHECKPOINT,
	CONFIG_REPL_GET_ERROR,
	CONFIG_REPL_STOP,
	CONFIG_REPL_COMMIT, /* retry a failover's commit (FAILOVER_FAILED) */
};

enum config_scrub_action {
	CONFIG_SCRUB_START,
	CONFIG_SCRUB_REPAIR,
	CONFIG_SCRUB_STOP,
};

/* One parsed command; strings point into the caller's line buffer. One
 * group of fields per verb, which is why there are more than 16 fields. */
struct config_command {
	enum config_verb verb;
	const char *path; /* add */
	const char *name; /* add (NULL: the path), remove, resync */
	int number;	  /* threshold */
	enum read_pattern read_pattern;
	bool on;			/* rewrite-corrupted */
	enum config_scrub_action scrub; /* scrub */
	/* scrub start and repair: rate=N in MiB/s (0: unlimited), or -1
	 * when not given (the mount's scrub-rate). */
	int rate;
	/* add: mode=primary makes a replication child, mode=witness a
	 * witness. */
	bool replication, witness;
	/* replication: what to do; mode 0 primary, 1 secondary (QEMU's
	 * numbers), -1 not given; failover; name (NULL: every replication
	 * child, in order). */
	enum config_repl_action repl;
	int mode;
	bool failover;
	/* policy DIR threshold=N [read-pattern=P] [rewrite-corrupted=on|off]
	 * or policy DIR clear: dir (in path) relative to the mount, without
	 * leading or trailing slashes; number the threshold; these -1 when
	 * not given (the mount's). */
	int policy_pattern, policy_rewrite;
	bool clear;
	/* quarantine: what to do, and the entry (0: every entry). */
	enum config_quarantine_action quarantine;
	uint64_t id;
	/* repair FILE from=CHILD [OFFSET LENGTH]: path is the file, name
	 * the child; whole when no range was given. */
	bool whole;
	uint64_t offset;
	uint64_t length;
};

/*
 * Parse one command. line (len bytes, not NUL-terminated, may end in one
 * newline) is copied into buf (CONFIG_COMMAND_MAX bytes), which *cmd's
 * strings then point into. Words are separated by blanks and may be
 * quoted as in a shell: 'single quotes' keep everything, "double quotes"
 * everything but \" and \\, and a backslash outside quotes keeps the
 * next character, so a path with blanks can be given. The whole line is checked
 * before anything is returned: unknown verbs, missing or extra words, bad
 * numbers, NUL bytes, several lines and over-long input are refused. Returns 0,
 * or -EINVAL with a one-sentence reason in err.
 */
int config_parse_command(const char *line, size_t len, char *buf,
			 struct config_command *cmd, char *err, size_t errlen);

#endif
