/*
 * Private to the tree module: the tree object, nodes, open files and the
 * helpers the tree's files share.
 *
 * Lock order, outermost first:
 *   1. tree->ns_barrier (namespace changes shared, a resync finishing its
 *      child exclusively);
 *   2. a node's range locks (held across child I/O: they order it);
 *   3. tree->table.lock (node table, a node's parent, name and counts);
 *   4. leaves: a range lock set's mutex, tree->files.lock,
 *      tree->incomplete.lock, the set's, the pool's, the record's and the
 *      watchdog's locks.
 * No lock but a range lock (and the barrier around it) is held while
 * waiting for children.
 */
#ifndef QFS_TREE_I_H
#define QFS_TREE_I_H

#include "tree/tree.h"

#include <pthread.h>
#include <stdatomic.h>

#include "children/children.h"
#include "events/events.h"
#include "persist/persist.h"
#include "rangelock/rangelock.h"

/* ---- nodes (nodes.c) ---- */

/* One file of the tree. Its many fields: identity, per-child handles,
 * place in the table, range locks, and caches that spare the hot path a
 * lock (size hint, what the intent log already knows, set-id bits). */
struct tree_node {
	uint64_t key_dev, key_ino; /* identity: a child's dev+ino */
	mode_t type;		   /* S_IFMT bits; never changes */
	/* O_PATH handle per child slot, -1 where the child lacks it. Only
	 * ever set from -1 to a handle (under table.lock), so readers need
	 * no lock. */
	atomic_int fd[CHILDREN_MAX];
	struct tree_node *parent;    /* guarded by table.lock; holds a ref */
	char *name;		     /* guarded by table.lock */
	uint64_t nlookup;	     /* guarded by table.lock */
	int refs;		     /* guarded by table.lock: open files and
					nodes naming this one as parent */
	struct tree_node *hash_next; /* guarded by table.lock */
	/* Handles replaced because their file was deleted from the child;
	 * another thread may still be using one, so they close with the
	 * node. Guarded by table.lock. */
	int *retired;
	int nretired;
	struct range_locks ranges;
	/* A size no child is below, kept so that writes growing the file can
	 * lock everything past it (write.c). */
	_Atomic int64_t size_hint;
	/* Never reused, unlike the inode number (another file may get it
	 * once this one is removed): what the record remembers this node's
	 * announcements by. */
	uint64_t serial;
	/* Intent regions 0..63 already announced in generation intent_gen:
	 * lets a write skip the record's lock (intent.c). */
	_Atomic uint64_t intent_gen;
	_Atomic uint64_t intent_mask;
	/* The generation the intent log already names the node's listing
	 * (a directory's names) and its own metadata in. */
	_Atomic uint64_t listing_gen, entry_gen;
	/* The last voted mode had S_ISUID or S_ISGID: a write must look
	 * whether to clear them (write.c). */
	atomic_bool setid;
};

/* Every node the kernel knows, by identity; the root is kept apart. */
struct node_table {
	pthread_mutex_t lock;
	struct tree_node root;
	struct tree_node **hash; /* guarded by lock */
	size_t size;		 /* guarded by lock */
	size_t count;		 /* guarded by lock */
};

/* ---- open files (files.c) ---- */

struct tree_file {
	struct tree_node *node; /* read-only after tree_open() */
	int flags;		/* what each child's handle is opened with */
	bool direct;
	/* By slot: the child's handle, or -1 until it is opened. Set once
	 * from -1 (compare-and-swap), reset only when its child leaves. */
	atomic_int fd[CHILDREN_MAX];
	/* By slot: why a voting child's open failed at tree_open(). A child
	 * that was not voting then is retried on every use instead, because
	 * its resync may create the file at any moment. */
	atomic_int err[CHILDREN_MAX];
	/* Bit per slot: that child's file system refuses RWF_NOWAIT reads
	 * (writes), so its buffered parts go straight to the ring. */
	atomic_uint no_inline_read, no_inline_write;
	/* Its directory's policy, as policy.c packs it (0: not looked up). */
	_Atomic uint64_t rules;
	/* The open handle's, plus one per read still checking late voters
	 * after its answer went: the handle may be released before. */
	atomic_int refs;
	struct tree_file *prev, *next; /* guarded by files.lock */
};

struct open_files {
	pthread_mutex_t lock;
	struct tree_file *head; /* guarded by lock */
};

/* ---- directories incomplete on a syncing child (incomplete.c) ---- */

struct incomplete_dir {
	struct tree_node *dir; /* a reference */
	struct incomplete_dir *next;
};

struct incomplete {
	pthread_mutex_t lock;
	struct incomplete_dir *slot[CHILDREN_MAX]; /* guarded by lock */
};

/* ---- the tree ---- */

/* ---- directories' policies (policy.c) ---- */

struct policies {
	pthread_mutex_t lock;
	struct persist_policy p[PERSIST_POLICY_MAX]; /* guarded by lock */
	atomic_int count;			     /* written under lock */
	atomic_uint gen; /* moves on with every change and rename */
};

void policies_init(struct tree *tree);
void policies_destroy(struct tree *tree);
/* A rename may have moved files under another policy. */
void policies_moved(struct tree *tree);
/* The current view, with the rules of f's directory's policy if one
 * applies; put it as any view. */
const struct child_view *policy_view(struct tree *tree, struct tree_file *f);

struct tree {
	struct child_set *set;
	struct pool *pool;
	struct event_log *log;
	struct record *record;	   /* NULL: no record is kept */
	struct watchdog *watchdog; /* the caller's */
	int timeout_ms;		   /* per child answer; 0: wait for ever */
	bool as_root; /* the daemon may chown new entries to the caller */
	atomic_bool fatal;
	struct tree_hooks hooks;       /* set once before serving */
	struct quarantine *quarantine; /* likewise; NULL: none */
	/* Held shared by every namespace change, exclusively by a resync
	 * while it makes its child vote (tree_barrier_raise). */
	pthread_rwlock_t ns_barrier;
	struct incomplete incomplete;
	struct open_files files;
	struct node_table table;
	struct policies policies;
	/* Bit per slot: that child is a witness (witness.c), kept so that
	 * opening a handle and claiming a range need no view. */
	atomic_uint witness_slots;
};

int nodes_init(struct tree *tree);
void nodes_destroy(struct tree *tree);
/*
 * Find or create the node for a set of per-child O_PATH handles that were
 * just resolved under parent/name (fd[slot] = -1 where the child has no
 * such entry). Takes ownership of every handle in fd[] (installing or
 * closing it) and adds one lookup; NULL when out of memory. A handle the
 * node already has for a slot in asked[] is replaced when its file has
 * been deleted from that child (no links left): the name now resolves
 * elsewhere, or nowhere. key_st gives the identity.
 */
struct tree_node *node_install(struct tree *tree, struct tree_node *parent,
			       const char *name, int fd[CHILDREN_MAX],
			       const bool asked[CHILDREN_MAX],
			       const struct stat *key_st);
void node_forget(struct tree *tree, struct tree_node *n, uint64_t nlookup);
/* Close every node's handle in a slot (its child left). */
void node_forget_slot(struct tree *tree, int slot);
/* Record a rename so event paths follow the file. */
void node_moved(struct tree *tree, const struct stat *key_st,
		struct tree_node *newparent, const char *newname);

/* An open file's handle in a slot, opened on first use; or -errno.
 * file_view_fd() is the same for view index i, with the handle in *fd. */
int file_fd(struct tree *tree, struct tree_file *f, int slot);
int file_view_fd(struct tree *tree, const struct tree_file *f,
		 const struct child_view *v, int i, int *fd);
/* Whether child slot's buffered parts are worth trying inline, and
 * noting a file system that refused an inline try (children/io.c). */
bool file_inline_worthwhile(const struct tree_file *f, atomic_uint *refused,
			    int slot);
void file_note_refused(atomic_uint *refused, const struct child_io *io,
		       int slot);
/* A private read-only file of n, for reads a change makes under its own
 * claim (a witness's old blocks); file_put() closes it. NULL: no memory. */
struct tree_file *file_reader(struct tree *tree, struct tree_node *n);
/* Take another reference to f, or drop one (the last closes it). */
void file_get(struct tree_file *f);
void file_put(struct tree *tree, struct tree_file *f);
void files_forget_slot(struct tree *tree, int slot);
/* At unmount: release files the kernel never released. */
void files_release_all(struct tree *tree);

/* ---- requests and their outcome (fanout.c) ---- */

/*
 * What most requests' arguments start with: the tree, and a node the
 * request holds a reference to, so a part given up on may still use it.
 * node_request() makes such a request (size: the whole argument, zeroed
 * past this head); release, when not NULL, runs before the node's
 * reference goes. NULL when out of memory.
 */
struct node_arg {
	struct tree *tree;
	struct tree_node *node;
	void (*release)(struct child_request *rq);
};
struct child_request *node_request(struct tree *tree,
				   const struct child_view *view,
				   struct tree_node *n, size_t size,
				   void (*release)(struct child_request *rq));

/* Run body on every child of rq's view, bounded by io-timeout; the
 * children it gave up on are failed (health_late) before it returns. */
void tree_fanout(struct tree *tree, struct child_request *rq,
		 int (*body)(struct child_request *rq, int i));

/*
 * What a change that went to every child of view amounts to (ret[i]:
 * child i's answer): the write rule (vote_write) over the voting
 * children, QUORUM_REPORT_BAD of the given type ("write" or "flush") for
 * each failing child, QUORUM_FAILURE below threshold (never for flush:
 * QEMU's rule), and the failing children demoted before the caller is
 * answered. probe: the request changes nothing (an open, a close of a
 * read-only file), so a failure is no missed change. n and [off, off +
 * len) name what the reports are about. Returns 0 or the caller's -errno.
 */
int tree_outcome(struct tree *tree, const struct child_view *view,
		 const int *ret, bool probe, const char *type,
		 struct tree_node *n, uint64_t off, uint64_t len);
/* The error vote over the voting children that failed. */
int tree_error_vote(const struct child_view *view, const int *ret);

/* ---- health (health.c): the tree applies children's verdicts ---- */

/* A voting child failed a change the quorum took. */
void health_missed(struct tree *tree, struct child *c, const char *type,
		   const char *path, int error);
/* A syncing child failed a write. */
void health_syncing_failed(struct tree *tree, struct child *c, int error);
/* A change to replication child c failed (type, path and range as in
 * tree_outcome): latched in stage RUNNING, else it fails the child. */
void health_forward_failed(struct tree *tree, struct child *c, int error,
			   const char *type, const char *path, uint64_t off,
			   uint64_t len);
/* A read of c failed with error. */
void health_read_error(struct tree *tree, struct child *c, int error);
/* The watchdog's callback: c held a call past io-timeout. */
void health_late(void *tree, struct child *c);

/* ---- write-intent (intent.c) ---- */

/*
 * Announce, before it reaches any child, a write to [off, off + len) of
 * n, or a namespace or metadata change (persist.h: the intent log).
 */
void intent_write(struct tree *tree, struct tree_node *n, off_t off, off_t len);
void intent_tree(struct tree *tree);
/* A change of directory n's names (listing), or of n's own metadata:
 * announced once per generation, always, so that the next mount after a
 * crash knows which directories and entries to compare. */
void intent_change(struct tree *tree, struct tree_node *n, bool listing);
/* A rename, announced every time: settling reads the paths the log named
 * before it through it (exchange: both ways at once). */
void intent_move(struct tree *tree, struct tree_node *parent, const char *name,
		 struct tree_node *newparent, const char *newname,
		 bool exchange);

/* A namespace change that failed on a syncing child with ENOENT marks
 * the directory for its resync to complete again (incomplete.c). */
void incomplete_mark(struct tree *tree, int slot, struct tree_node *dir);
void incomplete_init(struct incomplete *inc);
void incomplete_destroy(struct tree *tree);

/* The voted attributes of a regular file's node under a shared claim on
 * the whole file, so a growing write is never seen half applied; the
 * size hint follows (attr.c). */
int node_attr(struct tree *tree, const struct child_view *view,
	      struct tree_node *n, struct stat *st);

/* ---- witness children: the layout (digest.c), the changes (witness.c) */
#define WITNESS_BLOCK CHILD_WITNESS_BLOCK
#define WITNESS_DIGEST 32
#define WITNESS_HEADER 32
/*
 * What a change does to a witness's digest list: n digests from block
 * first on (a write; fallocate: n edge blocks, their numbers in edge[]),
 * and the end of the change (a write grows the file to it).
 */
struct witness_change {
	uint64_t first;
	size_t n;
	unsigned char *digest; /* n * WITNESS_DIGEST bytes */
	int64_t end;
	uint64_t edge[2];
};
/* SHA-256 of one WITNESS_BLOCK-byte block. */
void witness_digest(const void *block, unsigned char *out);
/* A witness file's logical size; 0 or -errno. fd is readable. */
int witness_size(int fd, int64_t *size);
/* n digests from block on; entries past the list are blocks of zeros. */
int witness_get(int fd, uint64_t block, unsigned char *d, size_t n);
int witness_put(int fd, uint64_t block, const unsigned char *d, size_t n);
/* Apply a change to a witness file, open to read and write. */
int witness_write(int fd, const struct witness_change *wc);
int witness_truncate(int fd, int64_t size, const unsigned char *last);
int witness_fallocate(int fd, const struct witness_change *wc, int mode,
		      off_t off, off_t len);
/* Open the file of an O_PATH handle with flags; fd or -errno. */
int witness_open(int pathfd, int flags);
/*
 * The digests a change needs, computed under the caller's range claim
 * covering the whole blocks it touches: a write's blocks, a zeroed
 * range's partial edges, a truncate's new last block. The old bytes of a
 * partial block are the voted ones (witness_old_block: a block read
 * zero-padded past the end of file). witness_change_free() frees wc.
 */
int witness_old_block(struct tree *tree, const struct child_view *view,
		      struct tree_node *n, uint64_t block, char *out);
int witness_prepare_write(struct tree *tree, const struct child_view *view,
			  struct tree_node *n, const char *buf, size_t size,
			  off_t off, struct witness_change *wc);
int witness_prepare_zero(struct tree *tree, const struct child_view *view,
			 struct tree_node *n, off_t off, off_t len,
			 struct witness_change *wc);
int witness_prepare_truncate(struct tree *tree, const struct child_view *view,
			     struct tree_node *n, int64_t size,
			     unsigned char *last);
void witness_change_free(struct witness_change *wc);
static inline bool tree_has_witness(struct tree *tree)
{
	return atomic_load(&tree->witness_slots) != 0;
}
static inline bool tree_slot_is_witness(struct tree *tree, int slot)
{
	return atomic_load(&tree->witness_slots) & (1u << slot);
}
#endif
