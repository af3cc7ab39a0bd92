/*
 * Private to the jobs module: the jobs object, the voted-tree walker, the
 * chunk vote-and-repair, and what jobs.c asks of resync.c and scrub.c.
 *
 * Locks: jobs->lock serializes starting and stopping resyncs (the
 * launcher and control commands); it is held while a finished or
 * stopped job's thread is joined, so no job thread ever takes it.
 * jobs->wake_lock is a leaf guarding the launcher's wanted set: the
 * tree's hook takes it on a request's thread, which may hold a range
 * claim. A job takes range claims (and the resync barrier) as a request
 * does, never jobs->lock while holding one.
 */
#ifndef QFS_JOBS_I_H
#define QFS_JOBS_I_H

#include "jobs/jobs.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "children/children.h"
#include "events/events.h"
#include "persist/persist.h"
#include "rangelock/rangelock.h"
#include "tree/tree.h"
#include "vote/vote.h"

struct resync;
struct scrub;

/* The fields are what every job reads (the set, the tree, the pool and
 * watchdog for bounded child calls, the record, the log, the
 * quarantine), then the running jobs and the launcher's state, which is
 * why there are more than 16 fields. */
struct jobs {
	struct child_set *set;
	struct tree *tree;
	struct pool *pool;
	struct watchdog *wd;
	struct record *record;
	struct event_log *log;
	struct quarantine *quarantine;
	int timeout_ms;
	int scrub_rate;

	pthread_mutex_t lock;	/* see above */
	struct resync *resyncs; /* guarded by resync_lock */
	pthread_mutex_t resync_lock;
	struct scrub *scrub; /* set from jobs_new to jobs_free */

	/* The launcher (qfs-jobs): starts the resync of stale children. */
	pthread_mutex_t wake_lock;
	pthread_cond_t wake;
	unsigned int wanted; /* guarded by wake_lock: slots to resync */
	bool stop;	     /* guarded by wake_lock */
	pthread_t launcher;
};

/* ---- resync.c ---- */

/* Start c's resync, replacing an earlier job of c; partial: copy only
 * what the record says it missed, when it can tell. jobs->lock held. */
int resync_start(struct jobs *jobs, struct child *c, bool partial);
/* Stop c's job (NULL: every job) and wait for it. jobs->lock held. */
void resync_stop(struct jobs *jobs, struct child *c);

/* ---- scrub.c ---- */

/*
 * The scrub object lives from jobs_new (scrub_init) to jobs_free
 * (scrub_free, which ends a running job). start and stop are called with
 * jobs->lock held; status and forget_child take only the scrub's lock.
 * See jobs.h for what they do.
 */
int scrub_init(struct jobs *jobs);
int scrub_start(struct jobs *jobs, bool repair, int rate, char *err,
		size_t errlen);
int scrub_stop(struct jobs *jobs, char *err, size_t errlen);
void scrub_status(struct jobs *jobs, struct json_object *status);
void scrub_forget_child(struct jobs *jobs, const char *name);
void scrub_free(struct jobs *jobs);
/*
 * Settle one file after a crash: the quiet scrub of settle.c. Votes its
 * size at threshold 1 (every size has a winner), resizes the losers, and
 * repairs every block of the regions [region[k] * PERSIST_REGION, + one
 * region) within the voted size; syncs every copy. No events.
 */
int scrub_settle_file(struct jobs *jobs, const struct tree_entry *e,
		      const int64_t *region, int nregions);

/* What scrub finds, and how a directory comparison reports it. */
enum finding_kind {
	FINDING_DATA,	   /* a child's run of blocks lost the vote */
	FINDING_SIZE,	   /* a child's size lost the vote */
	FINDING_MISSING,   /* a voting child lacks an entry the vote keeps */
	FINDING_NO_QUORUM, /* no version reached threshold: no child blamed */
	FINDING_EXTRA,	   /* a voting child has an entry the vote drops */
	FINDING_TYPE,	   /* ... of another type than the vote's */
	FINDING_MODE,	   /* an entry's permission bits lost the vote */
	FINDING_OWNER,	   /* its owner or group */
	FINDING_TARGET,	   /* a symlink's target */
	FINDING_XATTRS,	   /* its extended attributes */
};

/* ---- directories (dirs.c) and copying entries (copy.c) ---- */

struct dir_report {
	/* name in dir; child NULL where no child is to blame. */
	void (*finding)(void *arg, struct tree_node *dir, const char *name,
			const char *child, enum finding_kind kind,
			bool repaired);
	void *arg;
};
struct dir_compare_how {
	int threshold; /* 0: the set's */
	bool repair;
	const struct dir_report *report; /* NULL: none */
	atomic_bool *stop;		 /* NULL: never stopped */
};
/*
 * Compare the names in dir (only: just that one) across the voting
 * children and, with repair, make the losers like the winners; see
 * dirs.c. 0, or -ENOMEM.
 */
int dir_compare(struct jobs *jobs, struct tree_node *dir, const char *only,
		const struct dir_compare_how *how);
/* Copy name, whole and with its metadata, from one child's directory to
 * another's, where it must not exist yet. */
int copy_entry(int from, int to, const char *name);
/* The same into a witness: each regular file becomes its digest list. */
int copy_entry_witness(int from, int to, const char *name);
/* Make to's xattrs from's (both /proc paths of O_PATH handles). */
int copy_child_xattrs(const char *from, const char *to);
/* Remove name in directory dfd with everything below it; 0 when it is
 * gone (or was never there), else the first error. */
int remove_tree(int dfd, const char *name);

/* ---- the voted-tree walker (walk.c) ---- */

/*
 * A depth-first walk of the voted tree below dir: entry() is called for
 * each listed entry that a voted lookup finds, a directory before its
 * contents, with the entry's lookup held for the call. A name gone since
 * the listing is skipped. A listing or lookup that fails otherwise is
 * passed to unlisted() or unvoted(), whose return value ends the walk
 * when not 0 (NULL: end it with the error). The walk ends with -ECANCELED
 * once *stop is set.
 */
struct walk {
	struct tree *tree;
	int (*entry)(struct walk *w, struct tree_node *dir, const char *name,
		     const struct tree_entry *e);
	int (*unlisted)(struct walk *w, struct tree_node *dir, int error);
	int (*unvoted)(struct walk *w, struct tree_node *dir, const char *name,
		       int error);
	atomic_bool *stop;
	void *arg;
};
int walk_tree(struct walk *w, struct tree_node *dir);
/* Resolve a path of the mount, one voted lookup per component; the entry
 * carries one lookup the caller forgets. */
int walk_lookup_path(struct tree *tree, const char *path, struct tree_entry *e);

/* ---- the chunk vote-and-repair (chunk.c) ---- */

/* The blocks of one chunk and what their vote decided; masks have bit k
 * for ballot k. */
struct chunk_votes {
	int winner[CHILD_IO_MAX / TREE_VOTE_BLOCK];   /* ballot holding it */
	uint32_t bad[CHILD_IO_MAX / TREE_VOTE_BLOCK]; /* lost the vote */
	uint32_t fill[CHILD_IO_MAX /
		      TREE_VOTE_BLOCK]; /* past own end, differs */
	uint32_t excluded[CHILD_IO_MAX / TREE_VOTE_BLOCK]; /* past own end */
	uint32_t
		no_quorum[CHILD_IO_MAX / TREE_VOTE_BLOCK]; /* bit 0: none won */
	bool dirty; /* any mask above is set */
};

/*
 * One chunk of a file as every voting child of view holds it. The caller
 * fills jobs, node, own_end, buffered, view, threshold, why, off and len
 * (at most CHILD_IO_MAX); chunk_read() fills the ballots (ballot k is
 * view index index[k]), chunk_vote() the votes; chunk_release() gives
 * the buffers back (a chunk may be read again before). A voting witness
 * is ballot n + j (view index windex[j]): its stored digests, with which
 * every block is then voted by digest. More than 16 fields: the data
 * ballots' and the witnesses' are kept side by side.
 */
struct chunk {
	struct jobs *jobs;
	struct tree_node *node;
	const off_t *own_end; /* by slot: a shorter copy's end, or RANGE_END */
	uint32_t *buffered;   /* by slot: the copy refused O_DIRECT */
	const struct child_view *view;
	int threshold;
	enum quarantine_why why; /* what a repair says it overwrote for */
	off_t off;
	size_t len;
	int n;
	int index[CHILDREN_MAX];
	char *buf[CHILDREN_MAX];
	struct vote_ballot ballot[CHILDREN_MAX];
	size_t own_len[CHILDREN_MAX]; /* bytes of ballot k that vote */
	struct chunk_votes votes;
	int nw;
	int windex[CHILDREN_MAX];
	unsigned char *wdig[CHILDREN_MAX]; /* a digest per block (malloc) */
	int werr[CHILDREN_MAX];		   /* why witness j has none */
};

/*
 * Open slot's copy of n. Reads use O_DIRECT unless the copy's file system
 * refused it once (its bit in *buffered); writes are buffered. Returns an
 * fd the caller closes, or -errno (-ENOENT: the child has no such file).
 */
int copy_open(struct jobs *jobs, struct tree_node *n, int slot, int flags,
	      uint32_t *buffered, bool *direct);
void chunk_read(struct chunk *c);
/* 0, or -ENOMEM; blocks without a winner are marked no_quorum. */
int chunk_vote(struct chunk *c);
void chunk_release(struct chunk *c);
size_t chunk_blocks(const struct chunk *c);
/* A run of consecutive blocks whose mask has bit: [start, end) in the
 * chunk. *b is where to look next, from 0. */
bool chunk_next_run(const struct chunk *c, const uint32_t *mask, uint32_t bit,
		    size_t *b, size_t *start, size_t *end);
/* Whether any block of ballot k is marked in mask. */
bool chunk_marked(const struct chunk *c, const uint32_t *mask, int k);
/* Write the voted bytes over ballot k's lost and missing blocks and make
 * them durable; true when all of it reached the copy. */
bool chunk_repair_copy(struct chunk *c, int k);
/* Write the voted digests over witness j's (ballot n + j) lost blocks. */
bool chunk_repair_witness(struct chunk *c, int j);

/* ---- lost.c: what a scrub found no version could win, kept on disk ---- */

/* At most this many no-quorum findings of a run are kept (in memory and
 * in .quorumfs/findings, which also stays under the record's size). */
#define SCRUB_LOST_MAX 2048

struct scrub_lost {
	struct scrub_lost_range {
		char *path;
		uint64_t off, len;
	} * range;
	size_t n;
};

/* Keep a copy of path's [off, off + len) unless the list is full. */
void scrub_lost_add(struct scrub_lost *l, const char *path, uint64_t off,
		    uint64_t len);
void scrub_lost_clear(struct scrub_lost *l);
/*
 * The run's list as .quorumfs/findings's JSON: {"result", "repair",
 * "finished", "unrecoverable" (the run's count), "kept",
 * "findings": [{path, offset, length}...]}; NULL when out of memory.
 */
char *scrub_lost_text(const struct scrub_lost *l, const char *result,
		      bool repair, time_t finished, uint64_t unrecoverable);
/* Write text to every voting child's .quorumfs/findings (bounded by
 * io-timeout); a failure is the child's business, not the scrub's. */
void scrub_lost_save(struct jobs *jobs, const char *text);

#endif
