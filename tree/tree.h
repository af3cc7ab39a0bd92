/*
 * tree: the voted tree.
 *
 * Every file and directory on the mount is backed by the same-named entry
 * in each child. This module holds the inode table (one node per file, with
 * an O_PATH handle of it in every child), the open files, the per-file
 * range locks, and the rule for every operation: which children it goes
 * to, how their answers are voted, what is reported, which children it
 * demotes. It knows nothing of FUSE: quorumfs.c decodes requests, calls
 * one function here and replies with the result, so the rules can be read
 * in one place. Jobs above it (resync, scrub) walk and copy the same tree
 * through the second half of this header.
 *
 * Conventions for every function below:
 *   - returns 0 (or a count, or a handle) on success, a negative errno on
 *     failure;
 *   - an `ino` is a node id handed out by a successful lookup-like call
 *     (TREE_ROOT_INO for the root) and stays valid until tree_forget()
 *     drops its last lookup; a struct tree_node is valid while its ino is,
 *     or while a reference (tree_node_ref) is held;
 *   - no lock is held by the caller or on return, except where a function
 *     says the caller holds a range claim;
 *   - on failure nothing is handed out, nothing needs releasing, and
 *     nothing changed on any child beyond what the failure says (QEMU's
 *     quorum has no rollback: a refused write may have reached a minority);
 *   - strings the caller passes are only read during the call.
 * Writes follow QEMU's quorum: they go to every child and succeed when at
 * least threshold voting children took them.
 */
#ifndef QFS_TREE_H
#define QFS_TREE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <sys/uio.h>

struct child_set;
struct pool;
struct event_log;
struct tree;
struct tree_file;
struct tree_dir;

#define TREE_ROOT_INO 1

/*
 * Who asked: new entries are owned by the caller, and a write by a
 * caller without CAP_FSETID clears the file's set-user-ID and
 * set-group-ID bits, as on a local file system. The credentials beyond
 * uid and gid are asked for only when a written file carries those bits
 * (they cost a look at /proc): creds->fsetid(ctx) is whether the caller
 * holds CAP_FSETID, creds->in_group(ctx, gid) whether it is in group gid.
 * creds NULL: a caller that keeps the bits.
 */
struct tree_creds {
	bool (*fsetid)(void *ctx);
	bool (*in_group)(void *ctx, gid_t gid);
};
struct tree_caller {
	uid_t uid;
	gid_t gid;
	const struct tree_creds *creds;
	void *ctx;
};

/* The answer of a lookup-like call: a node id and its voted attributes. */
struct tree_entry {
	uint64_t ino;
	struct stat attr;
};

struct record;
struct watchdog;
struct tree_node;
struct range_locks;
struct child;
struct child_view;

/* Block size of the per-block rescue vote (reads, scrub). */
#define TREE_VOTE_BLOCK 4096

/*
 * Build the tree over the set's children. wd bounds each child's answer
 * (its io-timeout) and hears, from now on, of each child that did not
 * answer in time: the tree fails it. The caller keeps ownership of set,
 * pool, wd, log and record (NULL: no record is kept), which must outlive
 * the tree. Returns 0 and *out, or -errno with nothing started.
 */
int tree_new(struct child_set *set, struct pool *pool, struct watchdog *wd,
	     struct event_log *log, struct record *record, struct tree **out);
/* Free the tree; no request may run. NULL is accepted. */
void tree_free(struct tree *tree);

/*
 * What the tree tells the layers above, through callbacks they register
 * before serving: child_stale(arg, c) when a voting child turned stale
 * (it missed a change and must be resynced). Called on a request's
 * thread, which may hold a range claim: it must not wait for one.
 */
struct tree_hooks {
	void (*child_stale)(void *arg, struct child *c);
	void *arg;
};
void tree_set_hooks(struct tree *tree, const struct tree_hooks *hooks);
/* Where rewrite-corrupted saves the bytes it overwrites (persist.h's
 * quarantine; NULL: nowhere). Set once before serving. */
struct quarantine;
void tree_set_quarantine(struct tree *tree, struct quarantine *q);

/*
 * True once a blkverify mismatch was found: the mount must stop and the
 * daemon exit with status 1, as QEMU does.
 */
bool tree_fatal(const struct tree *tree);

/* A child joined the set (its root handle takes its place), or left it
 * and its slot may be reused (every handle in it is closed). */
int tree_child_added(struct tree *tree, struct child *c);
void tree_child_removed(struct tree *tree, int slot);
/* A child out of every view (drained) is brought back: close every
 * handle the tree holds in it, so that each is opened anew on first use.
 * A network filesystem that reconnected has lost the open files behind
 * the old handles (sshfs answers EIO on them for ever). */
int tree_child_reopen(struct tree *tree, struct child *c);

/*
 * Directories' policies (persist.h's struct persist_policy): the reads,
 * writes, fsyncs, flushes and fallocates of a file use the rules of the
 * nearest directory above it with a policy, else the mount's; a rename
 * is followed from the next request on. set replaces the list (n at
 * most PERSIST_POLICY_MAX, checked by the caller); get copies it into
 * out (room for PERSIST_POLICY_MAX) and returns how many.
 */
struct persist_policy;
void tree_set_policies(struct tree *tree, const struct persist_policy *p,
		       int n);
int tree_policies(struct tree *tree, struct persist_policy *out);

/* Names the mount reserves at its root: .control, .children (each
 * child's own copy, read-only), .quorumfs and the graveyard. */
#define TREE_CHILDREN_DIR ".children"
bool tree_reserved_name(uint64_t parent, const char *name);
/* The graveyard directory at the root (PERSIST_GRAVEYARD), made if need
 * be, with one lookup: a replication secondary's own place, which no
 * name on the mount reaches. */
int tree_graveyard(struct tree *tree, uint64_t *ino);

/* Namespace. Each successful entry-returning call adds one lookup. */
int tree_lookup(struct tree *tree, uint64_t parent, const char *name,
		struct tree_entry *e);
void tree_forget(struct tree *tree, uint64_t ino, uint64_t nlookup);
int tree_getattr(struct tree *tree, uint64_t ino, struct stat *st);

/* Which fields of tree_setattr()'s attr to apply. */
enum {
	TREE_SET_MODE = 1 << 0,
	TREE_SET_UID = 1 << 1,
	TREE_SET_GID = 1 << 2,
	TREE_SET_SIZE = 1 << 3,
	TREE_SET_ATIME = 1 << 4,
	TREE_SET_MTIME = 1 << 5,
	TREE_SET_ATIME_NOW = 1 << 6,
	TREE_SET_MTIME_NOW = 1 << 7,
	TREE_SET_CTIME = 1 << 8,
};
/* f may be NULL (path-based setattr). On success *st is the new attr. */
int tree_setattr(struct tree *tree, uint64_t ino, struct tree_file *f,
		 const struct stat *attr, int to_set, struct stat *st);

int tree_mknod(struct tree *tree, uint64_t parent, const char *name,
	       mode_t mode, dev_t rdev, const struct tree_caller *who,
	       struct tree_entry *e);
int tree_mkdir(struct tree *tree, uint64_t parent, const char *name,
	       mode_t mode, const struct tree_caller *who,
	       struct tree_entry *e);
int tree_symlink(struct tree *tree, const char *target, uint64_t parent,
		 const char *name, const struct tree_caller *who,
		 struct tree_entry *e);
int tree_link(struct tree *tree, uint64_t ino, uint64_t newparent,
	      const char *newname, struct tree_entry *e);
int tree_unlink(struct tree *tree, uint64_t parent, const char *name);
int tree_rmdir(struct tree *tree, uint64_t parent, const char *name);
/* flags: 0, RENAME_NOREPLACE or RENAME_EXCHANGE. */
int tree_rename(struct tree *tree, uint64_t parent, const char *name,
		uint64_t newparent, const char *newname, unsigned int flags);
/* Returns the target's length; buf receives it without a NUL. */
ssize_t tree_readlink(struct tree *tree, uint64_t ino, char *buf, size_t size);
int tree_statfs(struct tree *tree, struct statvfs *st);

/* Files. An open file holds its node until tree_release(). */
int tree_open(struct tree *tree, uint64_t ino, int flags, struct tree_file **f);
int tree_create(struct tree *tree, uint64_t parent, const char *name,
		mode_t mode, int flags, const struct tree_caller *who,
		struct tree_entry *e, struct tree_file **f);
void tree_release(struct tree *tree, struct tree_file *f);

/*
 * A voted read's answer: iov[0..iovcnt) holds the data. It stays valid
 * until tree_answer_release(); the caller replies from it without copying.
 */
struct tree_answer {
	struct iovec *iov;
	int iovcnt;
	size_t len;
	void *owner; /* private */
};
int tree_read(struct tree *tree, struct tree_file *f, off_t off, size_t size,
	      struct tree_answer *r);
void tree_answer_release(struct tree_answer *r);

/* Returns size on success: a quorum write is all or nothing. who may be
 * NULL (a caller that keeps set-id bits). */
ssize_t tree_write(struct tree *tree, struct tree_file *f, const void *buf,
		   size_t size, off_t off, const struct tree_caller *who);
int tree_fallocate(struct tree *tree, struct tree_file *f, int mode, off_t off,
		   off_t len);
int tree_fsync(struct tree *tree, struct tree_file *f, bool datasync);
int tree_flush(struct tree *tree, struct tree_file *f);
/* SEEK_DATA / SEEK_HOLE: a range is a hole only where every child says so. */
off_t tree_lseek(struct tree *tree, struct tree_file *f, off_t off, int whence);

/* Directories: the listing is read once, at open, and voted. */
int tree_opendir(struct tree *tree, uint64_t ino, struct tree_dir **d);
/*
 * Entry i of the voted listing, or false past the end. *name stays valid
 * until tree_releasedir().
 */
bool tree_dir_entry(const struct tree_dir *d, size_t i, const char **name,
		    struct stat *st);
void tree_releasedir(struct tree_dir *d);
int tree_fsyncdir(struct tree *tree, uint64_t ino, bool datasync);

/* Extended attributes. get/list return the size, or the needed size when
 * size is 0, like the syscalls. */
int tree_setxattr(struct tree *tree, uint64_t ino, const char *name,
		  const void *value, size_t size, int flags);
ssize_t tree_getxattr(struct tree *tree, uint64_t ino, const char *name,
		      void *value, size_t size);
ssize_t tree_listxattr(struct tree *tree, uint64_t ino, char *list,
		       size_t size);
int tree_removexattr(struct tree *tree, uint64_t ino, const char *name);

/* ---- for the jobs above: walking and copying the voted tree ---- */

/*
 * Nodes. tree_node() is the node of a valid ino; tree_root() the root's.
 * tree_node_fd() is the node's O_PATH handle in child slot, owned by the
 * node (do not close it), resolved on first use from the parent's handle
 * (-ENOENT while the child lacks the entry). tree_node_adopt_fd() gives
 * the node a copy of handle for slot unless it has a live one. A
 * reference (tree_node_ref) keeps a node past its last forget.
 * tree_node_path() is the path relative to the mount, for events; the
 * caller frees it (NULL when out of memory). tree_node_ranges() are the
 * node's range locks, which order every request on it.
 */
struct tree_node *tree_node(struct tree *tree, uint64_t ino);
struct tree_node *tree_root(struct tree *tree);
uint64_t tree_node_ino(const struct tree *tree, const struct tree_node *n);
int tree_node_fd(struct tree *tree, struct tree_node *n, int slot);
void tree_node_adopt_fd(struct tree *tree, struct tree_node *n, int slot,
			int handle);
void tree_node_ref(struct tree *tree, struct tree_node *n);
void tree_node_unref(struct tree *tree, struct tree_node *n);
char *tree_node_path(struct tree *tree, struct tree_node *n);
/* The path of parent/name relative to the mount; the caller frees it. */
char *tree_entry_path(struct tree *tree, struct tree_node *parent,
		      const char *name);
struct range_locks *tree_node_ranges(struct tree_node *n);
struct tree_node *tree_file_node(const struct tree_file *f);

/*
 * Voted answers for a caller that already holds a range claim on the
 * node covering what is asked (tree_read and tree_lseek take their own):
 * a read of [off, off + size) into *r, a SEEK_DATA/SEEK_HOLE, the voted
 * attributes. view is the caller's.
 */
int tree_read_locked(struct tree *tree, const struct child_view *view,
		     struct tree_file *f, off_t off, size_t size,
		     struct tree_answer *r);
off_t tree_lseek_locked(struct tree *tree, const struct child_view *view,
			struct tree_file *f, off_t off, int whence);
int tree_attr_vote(struct tree *tree, const struct child_view *view,
		   struct tree_node *n, struct stat *st);

/*
 * A witness child's file (tree/witness.c has the layout), for its resync
 * and scrub: with a claim held exclusively on [off, off + len) (whole
 * 4 KiB blocks, len a multiple of them), tree_witness_fill() writes the
 * digests of the voted bytes there into the witness file out (open to
 * read and write) and returns how many bytes the vote had (short at the
 * end of file), or -errno; tree_witness_finish() gives it the voted size,
 * under a claim of the whole file.
 */
ssize_t tree_witness_fill(struct tree *tree, const struct child_view *view,
			  struct tree_file *f, int out, off_t off, size_t len);
int tree_witness_finish(int out, int64_t size);
/*
 * The layout itself, for a scrub that checks a witness file fd (open to
 * read and write) against the voted data: the digest of one 4 KiB block
 * (TREE_WITNESS_DIGEST bytes), n entries from block on (read: an entry of
 * zeros, or one past the list, is a block of zeros), the logical size.
 */
#define TREE_WITNESS_DIGEST 32
void tree_witness_digest(const void *block, unsigned char *out);
int tree_witness_get(int fd, uint64_t block, unsigned char *d, size_t n);
int tree_witness_put(int fd, uint64_t block, const unsigned char *d, size_t n);
int tree_witness_size(int fd, int64_t *size);

/*
 * Directories a namespace change could not complete on a syncing child
 * (its copy had not reached them): the child's resync takes them, one at
 * a time, with a node reference the taker drops (tree_node_unref), and
 * completes them again. forget drops a slot's set.
 */
struct tree_node *tree_take_incomplete(struct tree *tree, int slot);
bool tree_has_incomplete(struct tree *tree, int slot);
void tree_forget_incomplete(struct tree *tree, int slot);

/*
 * The resync barrier: every namespace change holds it shared; a resync
 * raises it (exclusively) while it makes its child vote, so that no
 * change can fail on the child in between. Writers first.
 */
void tree_barrier_raise(struct tree *tree);
void tree_barrier_lower(struct tree *tree);

#endif
