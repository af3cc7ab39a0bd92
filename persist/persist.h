/*
 * persist: the record each child keeps of the set, in CHILD/.quorumfs/.
 *
 * Two files, both small:
 *   state   JSON, replaced atomically (written aside, fsync'd, renamed):
 *           the set's identity, this child's identity, the generation it
 *           was last known to be in step at, whether the set was unmounted
 *           cleanly, and the membership;
 *   intent  the write-intent log, one JSON object per line, appended and
 *           fdatasync'd before the change it announces reaches any child:
 *           {"g":G,"p":PATH,"r":REGION} (bytes REGION*PERSIST_REGION of
 *           PATH may differ between children), {"g":G,"d":PATH} (the
 *           names in directory PATH may), {"g":G,"e":PATH} (the entry's
 *           own metadata may), {"g":G,"mv":OLD,"to":NEW} (a rename:
 *           paths of earlier lines below OLD are read as below NEW; with
 *           "x":true, an exchange, also those below NEW as below OLD) or
 *           {"g":G,"tree":true} (the namespace changed while some member
 *           was not in step).
 *
 * Generations work like md's event counter. Every mount and every change
 * of membership or health raises the set's generation on the children
 * that are in step; a child that was absent, stale or failed keeps the
 * older number, so the next mount knows it is behind and what it missed:
 * the intent lines from its generation on.
 *
 * Two halves: persist.c reads and writes the files, record.c is the
 * policy built on them, the set's record at runtime (below): who is a
 * member, who is behind and since when, what was announced. What a
 * child's state means for voting is decided above (children/ and
 * tree/); settling the regions an unclean stop left in flight is a job
 * (jobs/settle.c), which reads them here.
 *
 * Conventions: functions return 0 or -errno; err gets a one-sentence
 * reason where a function takes one. Files are replaced atomically and
 * made durable before a function returns success; on failure the files
 * are as they were, or (an append) hold a torn last line the reader
 * ignores.
 */
#ifndef QFS_PERSIST_H
#define QFS_PERSIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "children/children.h"

#define PERSIST_DIR ".quorumfs"
/* Where a replication secondary parks what the primary removed or
 * renamed over, while the last checkpoint may still see it: beside the
 * record in every base child, hidden from the mount like it. */
#define PERSIST_GRAVEYARD ".qfs-graveyard"
#define PERSIST_ID_LEN 32
/* Granularity of the intent log: a returning child copies whole regions
 * (md's write-intent bitmap uses the same order of size). */
#define PERSIST_REGION (64LL * 1024 * 1024)

struct persist_member {
	char id[PERSIST_ID_LEN + 1];
	char *name;
	char *path;
	/* A replication child keeps no record of its own (its root is the
	 * other side's tree); the data children's records name it, with
	 * "kind": "replication". */
	enum child_kind kind;
	char *failed; /* why it was failed, or NULL: it stays out until
			 `resync NAME` clears this */
};

/* The voting rules last set through .control: what the next mount uses
 * unless its command line says otherwise. threshold 0: none recorded. */
struct persist_rules {
	int threshold;
	enum read_pattern read_pattern;
	bool rewrite_corrupted;
};

/*
 * A directory's own rules (`policy DIR ...`), for everything below it
 * that no nearer directory has a policy for. dir is relative to the
 * mount, without leading or trailing slashes. read_pattern and
 * rewrite_corrupted -1: the mount's.
 */
#define PERSIST_POLICY_MAX 16
#define PERSIST_POLICY_DIR_MAX 255
struct persist_policy {
	char dir[PERSIST_POLICY_DIR_MAX + 1];
	int threshold;
	int read_pattern;
	int rewrite_corrupted;
};

/* A policy as the record and the status show it (caller owns). */
struct json_object;
struct json_object *persist_policy_json(const struct persist_policy *p);

struct persist_state {
	char set[PERSIST_ID_LEN + 1];
	char child[PERSIST_ID_LEN + 1];
	uint64_t generation; /* last generation this child was in step at */
	uint64_t log_since;  /* the intent log holds every line from here */
	bool clean;	     /* the set was unmounted cleanly */
	struct persist_rules rules;
	int npolicies;
	struct persist_policy policy[PERSIST_POLICY_MAX];
	int n;
	struct persist_member member[CHILDREN_MAX];
};

/*
 * Read root/.quorumfs/state. Returns 0, -ENOENT when the child has no
 * record (a new child), or another -errno with a reason in err (an
 * unreadable or malformed record). Free with persist_clear().
 */
int persist_load(int root_fd, struct persist_state *st, char *err,
		 size_t errlen);
/* Write it atomically and durably, creating .quorumfs/ if needed. The
 * same in two steps: the text (caller frees; NULL when out of memory),
 * then its saving, which reads nothing but the text. */
int persist_save(int root_fd, const struct persist_state *st);
char *persist_state_text(const struct persist_state *st);
int persist_save_text(int root_fd, const char *text);
void persist_clear(struct persist_state *st);
/* Deep copy; -ENOMEM leaves dst cleared. */
int persist_copy(struct persist_state *dst, const struct persist_state *src);
/* Add a member (strings are copied). */
int persist_add_member(struct persist_state *st, const char *id,
		       const char *name, const char *path,
		       enum child_kind kind);
void persist_remove_member(struct persist_state *st, const char *id);
/* Mark a member failed with reason, or in good standing (NULL). */
int persist_set_failed(struct persist_state *st, const char *id,
		       const char *reason);
const struct persist_member *persist_member(const struct persist_state *st,
					    const char *id);
/* Whether the trees below root[0..n) agree in paths, types and file
 * sizes (persist/first.c); -EINVAL with how they differ in err. */
int persist_first_check(const char *const *root, int n, char *err,
			size_t errlen);

/* A fresh random identity. */
void persist_new_id(char id[PERSIST_ID_LEN + 1]);

/*
 * .quorumfs/findings: what the last scrub found that no version could
 * win (JSON, written by jobs/lost.c, at most STATE_MAX bytes), replaced
 * whole and durably. Load: 0 and *text (caller frees), or -errno
 * (-ENOENT: no scrub wrote one).
 */
int persist_save_findings(int root_fd, const char *text);
int persist_load_findings(int root_fd, char **text);

/* The intent log. Appends open and close the file each time: a handle
 * kept open for writing would stop an operator remounting the child's
 * file system read-only. */
int persist_log_append(int root_fd, const char *line);
int persist_log_reset(int root_fd);

/* What a child that is behind missed, read from a log. */
struct persist_missed {
	bool tree;  /* the namespace changed: copy the whole tree */
	int nfiles; /* otherwise these regions of these files */
	struct persist_file {
		char *path;
		char *was; /* its path before a rename that followed, or NULL */
		int nregions;
		int64_t *region;
	} * file;
	/* Directories whose names changed (listing) and entries whose own
	 * metadata changed: what settling after a crash compares. */
	int nentries;
	struct persist_entry {
		char *path;
		char *was; /* as for a file */
		bool listing;
	} * entry;
};
/*
 * Collect the log's lines of generation >= since into *m. Returns 0, or
 * -errno (e.g. -ENOENT, or -EINVAL for a torn line other than the last)
 * when the log cannot be trusted and the whole tree must be copied.
 */
int persist_log_missed(int root_fd, uint64_t since, struct persist_missed *m);
void persist_missed_free(struct persist_missed *m);

/* ---- the set's record at runtime (record.c) ---- */

/*
 * What the mount knows of the set: its identity, the current generation,
 * every member's identity by slot, and which (file, region) pairs the
 * intent log already announced in this generation. All calls are
 * thread-safe.
 */
struct record;
struct child_set;

/*
 * Before the children are opened: read every child's record and decide.
 * Refuses (-EINVAL, reason in err) a child of another set, a child that
 * was removed from this set, and an unreadable child directory. Members
 * the record names that the command line left out are appended to cfg
 * (reachable ones only; cfg's strings then stay owned by the record).
 * A first mount (no child has a record) is refused, with how the
 * children differ, unless their trees agree or sync_from (an index in
 * cfg, or -1) names the child the others are filled from.
 */
int record_scan(struct children_config *cfg, int sync_from, struct record **out,
		char *err, size_t errlen);
/*
 * Once the set exists: mark children that are behind stale, refuse a
 * mount with fewer children in step than the threshold, raise the
 * generation on the others. After an unclean stop the caller then
 * settles what was in flight (record_unclean, record_in_flight).
 */
int record_start(struct record *r, struct child_set *set, char *err,
		 size_t errlen);
void record_free(struct record *r);
/*
 * From now on, write the children's records on pool, each write bounded
 * by wd's io-timeout: a child that does not answer in time is passed to
 * wd's late callback once the record's lock is dropped (it fails the
 * child, which comes back here). Before this call, writes run on the
 * caller's thread. pool and wd must outlive the record's use.
 */
struct pool;
struct watchdog;
void record_set_io(struct record *r, struct pool *pool, struct watchdog *wd);
/* A clean unmount: sync every child, clear the log if all are in step. */
void record_unmount(struct record *r, struct child_set *set);

/* Health and membership: keep every in-step child's record current. */
void record_demoted(struct record *r, struct child_set *set);
void record_promoted(struct record *r, struct child_set *set, struct child *c);
int record_added(struct record *r, struct child_set *set, struct child *c);
/* Refuse (-EINVAL, reason in err) a directory offered to `add` whose
 * record names another set. */
int record_check_new(struct record *r, const char *path, char *err,
		     size_t errlen);
void record_removed(struct record *r, struct child_set *set, struct child *c);

/*
 * Announce a write to [off, off + len) of a file before it happens. id
 * identifies the file for the announcements already made (it must never
 * stand for another file in the same generation: an inode number does,
 * once the file is removed and its number reused); path (computed only
 * when needed) names it.
 */
bool record_announced(struct record *r, uint64_t id, off_t off, off_t len);
/* The current generation, without the lock (announcements are per one). */
uint64_t record_generation(struct record *r);
void record_announce(struct record *r, struct child_set *set, uint64_t id,
		     const char *path, off_t off, off_t len);
/* Announce a change of directory path's names (listing), or of the
 * entry's own metadata, once per entry per generation. */
void record_announce_entry(struct record *r, struct child_set *set, uint64_t id,
			   const char *path, bool listing);
/* Announce a rename of path from to path to, every time: the lines
 * before it that name paths below from are read as below to (exchange:
 * and those below to as below from). */
void record_announce_move(struct record *r, struct child_set *set,
			  const char *from, const char *to, bool exchange);
/* Announce a namespace change while some member is not in step. */
void record_announce_tree(struct record *r, struct child_set *set);
/* c stopped being in step now (before the generation moves on). tree:
 * what it missed is not only data (a file it lacks, a failed flush), so
 * its resync must copy the whole tree. */
void record_set_behind(struct record *r, struct child *c, bool tree);
/* What child c missed, from an in-step child's log (tree when unsure). */
int record_missed(struct record *r, struct child_set *set, struct child *c,
		  struct persist_missed *m);
/* c was failed for reason: from the next save on, the record says so,
 * and a later mount keeps it failed until `resync NAME`. */
void record_set_failed(struct record *r, struct child *c, const char *reason);
/* The rules the newest record holds (threshold 0: none), and new ones
 * to keep on every voting child. */
void record_rules(struct record *r, struct persist_rules *out);
void record_set_rules(struct record *r, struct child_set *set,
		      const struct persist_rules *rules);
/* The directories' policies the newest record holds (out has room for
 * PERSIST_POLICY_MAX; returns how many), and new ones to keep on every
 * voting child, as the rules are kept. */
int record_policies(struct record *r, struct persist_policy *out);
void record_set_policies(struct record *r, struct child_set *set,
			 const struct persist_policy *p, int n);
/* The set was not unmounted cleanly: settle before serving. */
bool record_unclean(struct record *r);
/* Every region announced since the log was last cleared, read from a
 * voting child's log (-ENOENT: none was announced). Free with
 * persist_missed_free(). */
int record_in_flight(struct record *r, struct child_set *set,
		     struct persist_missed *m);
/* text as .quorumfs/findings on every voting child, each bounded by
 * io-timeout; 0 or the first child's -errno. */
int record_save_findings(struct record *r, struct child_set *set,
			 const char *text);
/* .quorumfs/findings of the first voting child that has one: 0 and
 * *text (caller frees), or -ENOENT. */
int record_load_findings(struct record *r, struct child_set *set, char **text);
/* Members the record names that are not mounted (JSON array). */
struct json_object *record_status(struct record *r);

/* ---- the quarantine (quarantine.c, its files: qfile.c) ---- */

/*
 * Before a repair overwrites bytes of a child's copy because a vote said
 * so (rewrite-corrupted, scrub repair and its cutting of a copy longer
 * than the voted size, a resync's regions, settling after a crash), the bytes
 * it replaces are saved in that child's .quorumfs/quarantine/, durably, first:
 * a vote can be wrong (two copies damaged alike), and then the saved bytes are
 * the only good copy. Only the 4 KiB blocks that differ are saved, with the
 * file, range, time, why, the child and the SHA-256 of the winning bytes of
 * that range. Each child keeps at most limit bytes; the oldest entries are
 * dropped first (QUARANTINE_DROPPED). Limit 0: nothing is saved. Entry ids are
 * unique in the mount. The files are written and read on the pool, each
 * bounded by the watchdog's io-timeout like the record's. Thread-safe.
 */
enum quarantine_why {
	QUARANTINE_REWRITE,
	QUARANTINE_SCRUB,
	QUARANTINE_RESYNC,
	QUARANTINE_SETTLE,
};
#define QUARANTINE_DEFAULT_LIMIT (1ULL << 30)
/* The smallest limit besides 0: an entry is at most one chunk a job
 * repairs at once, and must fit. */
#define QUARANTINE_MIN_LIMIT (1ULL << 20)
#define QUARANTINE_BLOCK 4096

struct quarantine;
struct event_log;
int quarantine_new(unsigned long long limit, struct event_log *log,
		   struct pool *pool, struct watchdog *wd,
		   struct quarantine **out);
void quarantine_free(struct quarantine *q);
const char *quarantine_why_name(enum quarantine_why why);
/* Know child c and read the entries on its disk (at mount, after add and
 * resync); forget it (remove). */
void quarantine_attach(struct quarantine *q, struct child_set *set,
		       struct child *c);
void quarantine_detach(struct quarantine *q, struct child *c);

/* Bytes each child may keep; 0: the quarantine is off (or NULL). */
unsigned long long quarantine_capacity(const struct quarantine *q);

/* What an overwrite of [off, off + new_len) of a copy replaces; old
 * bytes past new_len are what cutting the copy removes. */
struct quarantine_bytes {
	const char *path; /* the file, relative to the mount */
	off_t off;
	const void *old; /* the copy's bytes now (old_len: to its end) */
	size_t old_len;
	const void *new; /* the winning bytes about to replace them */
	size_t new_len;
	enum quarantine_why why;
};
/*
 * Save what b replaces on view v's child i before the overwrite: 0 once
 * it is on the child's disk (or nothing differs, or the quarantine is
 * off), else -errno and the caller must not overwrite. NULL q: 0.
 */
int quarantine_save(struct quarantine *q, const struct child_view *v, int i,
		    const struct quarantine_bytes *b);

/* Every entry, oldest first: [{id, child, file, offset, length, time,
 * why, digest}...]. */
struct json_object *quarantine_list(struct quarantine *q);
/* The newest n entries, oldest first (the status keeps them). */
struct json_object *quarantine_recent(struct quarantine *q, size_t n);
/* Add "quarantine": {entries, bytes, limit} to each child object of the
 * status's children array. */
void quarantine_status(struct quarantine *q, struct json_object *children);
/* Entry id's file, offset and bytes, read from its child (caller frees
 * *path and *bytes): 0, or -errno with the reason in err. */
int quarantine_fetch(struct quarantine *q, struct child_set *set, uint64_t id,
		     char **path, uint64_t *off, void **bytes, size_t *len,
		     char *err, size_t errlen);
/* Remove entry id (0: every entry): 0, or -ENOENT with the reason. */
int quarantine_purge(struct quarantine *q, struct child_set *set, uint64_t id,
		     char *err, size_t errlen);

#endif
