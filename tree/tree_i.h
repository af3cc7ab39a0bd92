/*
 * Private to the fs module: the inode table, range locks and the fan-out
 * helper shared by the fs sources.
 *
 * Lock order, outermost first:
 *   1. a node's range lock (held across child I/O: it orders that I/O);
 *   2. fs->table_lock (node table, node parent/name/lookup counts);
 *   3. a range lock set's internal mutex, the pool's and the set's locks,
 *      a scrub's lock (leaves).
 * fs->control_lock is taken before any of them, by control commands and
 * the status, never by a job (resync, scrub), so a command may wait for a
 * job to end.
 * No lock but a range lock is held while waiting for children.
 */
#ifndef QFS_TREE_I_H
#define QFS_TREE_I_H

#include "tree/tree.h"

#include <pthread.h>
#include <stdatomic.h>

#include "children/children.h"
#include "rangelock/rangelock.h"
#include "events/events.h"
#include "persist/persist.h"

/* Alignment of every buffer handed to a child (O_DIRECT on ext4/xfs). */
#define FS_ALIGN 4096
/* The largest request: the kernel sends at most 1 MiB (max_write and
 * max_pages), and resync copies in 1 MiB chunks. */
#define FS_BUF_SIZE (1024 * 1024)
#define FS_BUF_KEEP 48
/* Block size of the per-block rescue vote. */
#define FS_VOTE_BLOCK 4096
#define FS_OFF_MAX RANGE_END
/* Failed reads in a row that fail a child. */
#define FS_ERROR_LIMIT 3

/* ---- nodes (nodes.c) ---- */

struct node {
	uint64_t key_dev, key_ino; /* identity: a child's dev+ino */
	mode_t type;		   /* S_IFMT bits; never changes */
	/* O_PATH handle per child slot, -1 where the child lacks it. Only
	 * ever set from -1 to a handle (under table_lock), so readers need no
	 * lock. */
	atomic_int fd[CHILDREN_MAX];
	struct node *parent;	/* guarded by table_lock; holds a ref */
	char *name;		/* guarded by table_lock */
	uint64_t nlookup;	/* guarded by table_lock */
	int refs;		/* guarded by table_lock: open files and
				   nodes naming this one as parent */
	struct node *hash_next; /* guarded by table_lock */
	/* Handles replaced because their file was deleted from the child;
	 * another thread may still be using one, so they close with the
	 * node. Guarded by table_lock. */
	int *retired;
	int nretired;
	struct range_locks ranges;
	/* A size no child is below, kept so that writes growing the file can
	 * lock everything past it (see data.c). */
	_Atomic int64_t size_hint;
	/* Intent regions 0..63 already announced in generation intent_gen:
	 * lets a write skip the record's lock (fs_announce_write). */
	_Atomic uint64_t intent_gen;
	_Atomic uint64_t intent_mask;
};

struct fs {
	struct child_set *set;
	struct pool *pool;
	struct event_log *log;
	atomic_bool fatal;
	bool as_root;	       /* daemon may chown new entries to the caller */
	struct record *record; /* the set's .quorumfs record, or NULL */
	int timeout_ms;	       /* per child I/O; 0: wait for ever */

	/* Child health (health.c). */
	pthread_mutex_t health_lock;
	pthread_cond_t health_wake;
	unsigned int want_resync; /* guarded by health_lock: slots */
	bool health_stop;	  /* guarded by health_lock */
	bool health_running;
	pthread_t health;
	struct fanout *running; /* guarded by health_lock: the watchdog's */

	pthread_mutex_t resync_lock;
	struct resync *resyncs;		       /* guarded by resync_lock */
	struct dirty_dir *dirty[CHILDREN_MAX]; /* guarded by resync_lock */
	/* Held shared by every namespace change, exclusively by a resync
	 * while it makes its child vote (resync.c). */
	pthread_rwlock_t ns_barrier;

	/* The mount, for refusing children inside it (control.c). */
	char *mountpoint;
	struct stat mount_st;
	pthread_mutex_t control_lock; /* one control command at a time */
	char last_error[512];	      /* guarded by control_lock */
	char last_command[256];	      /* guarded by control_lock */
	struct scrub *scrub;	      /* guarded by control_lock */
	int scrub_rate; /* default MiB/s; set once before serving */

	pthread_mutex_t bufs_lock;
	void *bufs[FS_BUF_KEEP]; /* guarded by bufs_lock: idle I/O buffers */
	int nbufs;		 /* guarded by bufs_lock */

	pthread_mutex_t files_lock;
	struct fs_file *files; /* guarded by files_lock: every open file */

	pthread_mutex_t table_lock;
	struct node root;
	struct node **hash; /* guarded by table_lock */
	size_t hash_size;   /* guarded by table_lock */
	size_t nodes;	    /* guarded by table_lock */
};

int nodes_init(struct fs *fs);
void nodes_destroy(struct fs *fs);
/* The node for an ino. No reference is taken: the kernel's lookup keeps
 * it alive for the duration of the request. */
struct node *node_get(struct fs *fs, uint64_t ino);
uint64_t node_ino(const struct fs *fs, const struct node *n);
/*
 * Find or create the node for a set of per-child O_PATH handles that were
 * just resolved under parent/name (fd[slot] = -1 where the child has no
 * such entry). Takes ownership of every handle in fd[] (installing or
 * closing it) and adds one lookup. A handle the node already has for a
 * slot in asked[] is replaced when its file has been deleted from that
 * child (no links left): the name now resolves elsewhere, or nowhere.
 * key_st gives the identity.
 */
struct node *node_install(struct fs *fs, struct node *parent, const char *name,
			  int fd[CHILDREN_MAX], const bool asked[CHILDREN_MAX],
			  const struct stat *key_st);
/*
 * The node's O_PATH handle in a child slot. A child added after the node
 * was looked up gets its handle here on first use, resolved from the
 * parent's handle and the node's name; -errno (e.g. -ENOENT while resync
 * has not created the file yet) is not remembered.
 */
int node_fd(struct fs *fs, struct node *n, int slot);
/* An open file's handle in a slot, opened on first use; or -errno. */
int fs_file_fd(struct fs *fs, struct fs_file *f, int slot);
/* Give n a copy of handle for slot unless it has a live one already. */
void node_adopt_fd(struct fs *fs, struct node *n, int slot, int handle);
/* Close every node's and open file's handle in a slot (child removed). */
void node_forget_slot(struct fs *fs, int slot);
void files_forget_slot(struct fs *fs, int slot);
/* At unmount: release files the kernel never released. */
void files_release_all(struct fs *fs);
/* Open files take a reference so the node outlives its last forget. */
void node_ref(struct fs *fs, struct node *n);
void node_unref(struct fs *fs, struct node *n);
void node_forget(struct fs *fs, struct node *n, uint64_t nlookup);
/* Record a rename so event paths follow the file. */
void node_moved(struct fs *fs, const struct stat *key_st,
		struct node *newparent, const char *newname);
/* The node's path relative to the mount, for events; caller frees. */
char *node_path(struct fs *fs, struct node *n);
/* The child-local path of a handle, for calls that take no fd. */
void fd_proc_path(int fd, char buf[64]);

/* ---- fan-out and write vote (fs.c) ---- */

/*
 * One operation sent to every child of a view. body() runs on the pool
 * for each index i in 0..view->n-1 and stores its result (0 or -errno) in
 * ret[i]; arg is the operation's own state.
 */
struct fanout {
	struct fs *fs;
	const struct child_view *view;
	void (*body)(struct fanout *fo, int i);
	void *arg;
	bool probe; /* changes nothing: a failure is no missed write */
	int ret[CHILDREN_MAX];
	/* The watchdog's view of a running fan-out (health.c). */
	struct timespec started;
	atomic_bool done[CHILDREN_MAX];
	bool overdue;		    /* guarded by fs->health_lock */
	struct fanout *prev, *next; /* guarded by fs->health_lock */
};

void fanout_run(struct fanout *fo);
/*
 * The write rule: success when at least threshold voting children
 * succeeded, else the error vote's errno. Each failing child gets
 * QUORUM_REPORT_BAD of the given type; a failure below threshold gets
 * QUORUM_FAILURE unless type is "flush" (QEMU never sends it for flush).
 */
int fanout_tally(struct fanout *fo, const char *type, struct node *n,
		 uint64_t off, uint64_t len);
/*
 * True when every child gave the same answer to a request and that answer
 * says the request itself was wrong (EEXIST, ENOTEMPTY, EINVAL from an
 * O_DIRECT alignment probe...): the caller gets it, but no child is at
 * fault, so nothing is reported. Errors that mean a device or its space
 * failed (fs_device_error) are reported even when every child gives them.
 */
bool fs_device_error(int error);
bool refused_by_all(const int *ret, int n);
/*
 * Write-intent (persist.h): announce a write to a file's bytes, or a
 * namespace or metadata change, before it reaches any child.
 */
void fs_announce_write(struct fs *fs, struct node *n, off_t off, off_t len);
void fs_announce_tree(struct fs *fs);
/* The error vote over the voting children that failed. */
int fanout_error_vote(const struct fanout *fo);

/* The voted read and seek, for callers already holding the range. */
int read_voted_locked(struct fs *fs, const struct child_view *view,
		      struct fs_file *f, off_t off, size_t size,
		      struct fs_read *r);
off_t lseek_voted_locked(struct fs *fs, const struct child_view *view,
			 struct fs_file *f, off_t off, int whence);
/* The node an open file belongs to. */
struct node *fs_file_node(const struct fs_file *f);

/* Resync jobs (resync.c). start replaces an earlier job of the child;
 * stop(NULL) stops every job. partial: copy only what the record says
 * the child missed, when it can tell. */
struct resync;
int resync_start(struct fs *fs, struct child *c, bool partial);
void resync_stop(struct fs *fs, struct child *c);
/*
 * A namespace change that failed on a syncing child with ENOENT (e.g. a
 * rename whose source sits in a directory the copy has not reached) marks
 * the directory it changed for that child's resync to complete again.
 */
struct dirty_dir;
void resync_mark_dirty(struct fs *fs, int slot, struct node *dir);
struct node *resync_take_dirty(struct fs *fs, int slot);
bool resync_has_dirty(struct fs *fs, int slot);
void resync_forget_dirty(struct fs *fs, int slot);

/* Child health (health.c): see there for the rules. */
void health_demote(struct fs *fs, struct child *c, enum child_state to,
		   const char *reason);
void health_missed(struct fs *fs, struct child *c, const char *type,
		   const char *path, int error);
void health_read_error(struct fs *fs, struct child *c, int error);
int health_start(struct fs *fs);
void health_stop(struct fs *fs);
/* A fan-out through the pool, watched: a child that does not answer in
 * io-timeout is failed, so no later request waits for it. */
void health_watch(struct fs *fs, struct fanout *fo);
void health_unwatch(struct fs *fs, struct fanout *fo);

/*
 * Scrub (scrub.c): one background job reads and votes every regular file
 * and, with repair, rewrites the copies that lost. Commands and status
 * are called with fs->control_lock held; err gets a refusal's reason.
 *   scrub_start: rate in MiB/s, 0 unlimited, -1 the mount's scrub-rate.
 *     -EBUSY, with nothing changed, while a scrub runs; if its thread
 *     cannot start, the new run shows as failed.
 *   scrub_stop: -EINVAL when none runs; returns once the job has ended
 *     and logged SCRUB_COMPLETED.
 *   scrub_status: adds "scrub" to status and "scrub-mismatches" to each
 *     of its "children".
 *   scrub_forget_child: a removed child's count starts again at zero.
 * scrub_free (fs_free) ends a running job and frees everything.
 */
struct scrub;
int scrub_start(struct fs *fs, bool repair, int rate, char *err, size_t errlen);
int scrub_stop(struct fs *fs, char *err, size_t errlen);
struct json_object;
void scrub_status(struct fs *fs, struct json_object *status);
void scrub_forget_child(struct fs *fs, const char *name);
void scrub_free(struct fs *fs);

/* Voted attributes of a node (meta.c). Takes no range lock. */
int attr_vote(struct fs *fs, const struct child_view *view, struct node *n,
	      struct stat *st);

void *aligned_alloc_or_null(size_t size);
/* An FS_ALIGN-aligned buffer of at least size bytes, and its return. */
void *fs_buf_get(struct fs *fs, size_t size);
void fs_buf_put(struct fs *fs, void *buf, size_t size);

#endif
