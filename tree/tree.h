/*
 * fs: the mirrored tree.
 *
 * Every file and directory on the mount is backed by the same-named entry
 * in each child. This module holds the inode table (one node per file, with
 * an O_PATH handle of it in every child), the per-file range locks, and the
 * rule for every operation: which children it goes to, how their answers
 * are voted, what is reported. It knows nothing of FUSE: quorumfs.c decodes
 * requests, calls one function here and replies with the result, so the
 * rules can be read in one place.
 *
 * Conventions for every function below:
 *   - returns 0 (or a count) on success, a negative errno on failure;
 *   - an `ino` is a node id handed out by a successful lookup-like call
 *     (FS_ROOT_INO for the root) and stays valid until fs_forget() drops
 *     its last lookup;
 *   - no lock is held by the caller or on return;
 *   - on failure nothing is handed out and nothing needs releasing.
 * Writes follow QEMU's quorum: they go to every child and succeed when at
 * least threshold voting children took them; there is no rollback.
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
struct fs;
struct fs_file;
struct fs_dir;

#define FS_ROOT_INO 1

/* Who asked: new entries are owned by the caller, as on a local fs. */
struct fs_caller {
	uid_t uid;
	gid_t gid;
};

/* The answer of a lookup-like call: a node id and its voted attributes. */
struct fs_entry {
	uint64_t ino;
	struct stat attr;
};

/*
 * Build the tree over the set's children. The caller keeps ownership of
 * set, pool and log, which must outlive the fs. Returns 0 and *out.
 */
int fs_new(struct child_set *set, struct pool *pool, struct event_log *log,
	   struct fs **out);
void fs_free(struct fs *fs);

/*
 * True once a blkverify mismatch was found: the mount must stop and the
 * daemon exit with status 1, as QEMU does.
 */
bool fs_fatal(const struct fs *fs);

/*
 * Keep children healthy: the set's record (NULL: none is kept), the time
 * a child may take to answer (0: for ever), and the thread that resyncs
 * children that missed writes. Returns 0 or -errno.
 */
struct record;
int fs_start_health(struct fs *fs, struct record *record, int timeout_ms);

/*
 * The mountpoint and its directory's identity before mounting, so that
 * `add` can refuse children inside the mount without asking the mount.
 */
int fs_set_mount(struct fs *fs, const char *mountpoint,
		 const struct stat *before);

/* The rate (MiB/s, 0 unlimited) of scrubs started without rate=. */
void fs_set_scrub_rate(struct fs *fs, int rate);

/*
 * Carry out one control command (the bytes of one write to .control).
 * Returns 0, or -errno (EINVAL for a malformed or refused command, or the
 * real errno, e.g. ENOENT for a missing directory) with nothing changed
 * and CONTROL_ERROR logged; the reason is kept for the status.
 */
int fs_control(struct fs *fs, const char *buf, size_t len);

/* The status as one JSON document (NUL-terminated; caller frees), or
 * NULL when out of memory. */
char *fs_status(struct fs *fs);

/* Names the mount reserves at its root: .control and .quorumfs. */
bool fs_reserved_name(uint64_t parent, const char *name);

/* Namespace. Each successful entry-returning call adds one lookup. */
int fs_lookup(struct fs *fs, uint64_t parent, const char *name,
	      struct fs_entry *e);
void fs_forget(struct fs *fs, uint64_t ino, uint64_t nlookup);
int fs_getattr(struct fs *fs, uint64_t ino, struct stat *st);

/* Which fields of fs_setattr()'s attr to apply. */
enum {
	FS_SET_MODE = 1 << 0,
	FS_SET_UID = 1 << 1,
	FS_SET_GID = 1 << 2,
	FS_SET_SIZE = 1 << 3,
	FS_SET_ATIME = 1 << 4,
	FS_SET_MTIME = 1 << 5,
	FS_SET_ATIME_NOW = 1 << 6,
	FS_SET_MTIME_NOW = 1 << 7,
	FS_SET_CTIME = 1 << 8,
};
/* f may be NULL (path-based setattr). On success *st is the new attr. */
int fs_setattr(struct fs *fs, uint64_t ino, struct fs_file *f,
	       const struct stat *attr, int to_set, struct stat *st);

int fs_mknod(struct fs *fs, uint64_t parent, const char *name, mode_t mode,
	     dev_t rdev, const struct fs_caller *who, struct fs_entry *e);
int fs_mkdir(struct fs *fs, uint64_t parent, const char *name, mode_t mode,
	     const struct fs_caller *who, struct fs_entry *e);
int fs_symlink(struct fs *fs, const char *target, uint64_t parent,
	       const char *name, const struct fs_caller *who,
	       struct fs_entry *e);
int fs_link(struct fs *fs, uint64_t ino, uint64_t newparent,
	    const char *newname, struct fs_entry *e);
int fs_unlink(struct fs *fs, uint64_t parent, const char *name);
int fs_rmdir(struct fs *fs, uint64_t parent, const char *name);
/* flags: 0, RENAME_NOREPLACE or RENAME_EXCHANGE. */
int fs_rename(struct fs *fs, uint64_t parent, const char *name,
	      uint64_t newparent, const char *newname, unsigned int flags);
/* Returns the target's length; buf receives it without a NUL. */
ssize_t fs_readlink(struct fs *fs, uint64_t ino, char *buf, size_t size);
int fs_statfs(struct fs *fs, struct statvfs *st);

/* Files. An open file holds its node until fs_release(). */
int fs_open(struct fs *fs, uint64_t ino, int flags, struct fs_file **f);
int fs_create(struct fs *fs, uint64_t parent, const char *name, mode_t mode,
	      int flags, const struct fs_caller *who, struct fs_entry *e,
	      struct fs_file **f);
void fs_release(struct fs *fs, struct fs_file *f);

/*
 * A voted read's answer: iov[0..iovcnt) holds the data. It stays valid
 * until fs_read_release(); the caller replies from it without copying.
 */
struct fs_read {
	struct iovec *iov;
	int iovcnt;
	size_t len;
	void *owner; /* private */
};
int fs_read(struct fs *fs, struct fs_file *f, off_t off, size_t size,
	    struct fs_read *r);
void fs_read_release(struct fs_read *r);

/* Returns size on success: a quorum write is all or nothing. */
ssize_t fs_write(struct fs *fs, struct fs_file *f, const void *buf, size_t size,
		 off_t off);
int fs_fallocate(struct fs *fs, struct fs_file *f, int mode, off_t off,
		 off_t len);
int fs_fsync(struct fs *fs, struct fs_file *f, bool datasync);
int fs_flush(struct fs *fs, struct fs_file *f);
/* SEEK_DATA / SEEK_HOLE: a range is a hole only where every child says so. */
off_t fs_lseek(struct fs *fs, struct fs_file *f, off_t off, int whence);

/* Directories: the listing is read once, at open, and voted. */
int fs_opendir(struct fs *fs, uint64_t ino, struct fs_dir **d);
/*
 * Entry i of the voted listing, or false past the end. *name stays valid
 * until fs_releasedir().
 */
bool fs_dir_entry(const struct fs_dir *d, size_t i, const char **name,
		  struct stat *st);
void fs_releasedir(struct fs_dir *d);
int fs_fsyncdir(struct fs *fs, uint64_t ino, bool datasync);

/* Extended attributes. get/list return the size, or the needed size when
 * size is 0, like the syscalls. */
int fs_setxattr(struct fs *fs, uint64_t ino, const char *name,
		const void *value, size_t size, int flags);
ssize_t fs_getxattr(struct fs *fs, uint64_t ino, const char *name, void *value,
		    size_t size);
ssize_t fs_listxattr(struct fs *fs, uint64_t ino, char *list, size_t size);
int fs_removexattr(struct fs *fs, uint64_t ino, const char *name);

#endif
