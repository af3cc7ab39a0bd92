/*
 * replication: QEMU's replication driver (block/replication.c, the block
 * half of COLO) for a tree of files.
 *
 * The primary side: a replication child (children.h, CHILD_REPLICATION)
 * receives every change of the tree inside the writer's range claim and
 * never votes; this module is its stage machine, driven by the
 * `replication ...` control commands with QEMU's rules and texts:
 *
 *   start primary   NONE -> RUNNING, the latch cleared; refused while
 *                   the child is not yet in step (syncing, stale,
 *                   failed), and in RUNNING or FAILOVER_FAILED;
 *   checkpoint      a barrier: returns once every change sent before it
 *                   has been answered (bounded by io-timeout);
 *   get-error       "Block replication is not running" in NONE, "I/O
 *                   error occurred" when a forward failed;
 *   stop            RUNNING -> DONE: the stream ends, nothing more is
 *                   sent; refused in NONE and FAILOVER_FAILED.
 *
 * DONE and FAILOVER accept start, checkpoint and stop silently, as QEMU
 * 7.2 does for a promoted secondary.
 */
#ifndef QFS_REPLICATION_H
#define QFS_REPLICATION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

struct child;
struct child_set;
struct config_command;
struct config_secondary;
struct event_log;
struct json_object;
struct tree;
struct tree_caller;
struct tree_entry;
struct tree_file;

/*
 * Run one `replication ...` command on the primary's replication
 * children: the one cmd->name names, else each in the set's order,
 * stopping at the first refusal (QEMU's replication_*_all). timeout_ms
 * bounds checkpoint's wait. Returns 0, or -errno with QEMU's text in
 * err; children before a refused one keep what the command did to them.
 * Takes the set's lock briefly; call it with no range claim held.
 */
int replication_primary(struct child_set *set, const struct config_command *cmd,
			int timeout_ms, char *err, size_t errlen);

/* c is leaving the set: a running stream ends first (stage DONE). */
void replication_child_removed(struct child_set *set, struct child *c);

/*
 * The secondary side (replication_i.h draws its three trees): the view
 * the secondary VM runs on (V: active over hidden over the base), the
 * inbound mount the primary's changes arrive through (B, the base, with
 * copy-before-write into hidden), and the stage machine with QEMU's
 * rules and texts:
 *
 *   start secondary  NONE -> RUNNING, both layers empty, the error
 *                    cleared; "The secondary disk doesn't have block
 *                    backend" while the inbound mount is not mounted;
 *   checkpoint       RUNNING: both layers empty in one step, so V = B;
 *                    NONE: "Backup job was cancelled unexpectedly";
 *   get-error        as on the primary;
 *   stop [failover]  RUNNING -> DONE: without failover the layers are
 *                    dropped (V = B); with it they are committed into
 *                    the base first (V stays what the VM saw).
 *
 * In NONE the view shows the base's names but refuses data (EIO, as
 * QEMU's replication driver); in DONE it is the base.
 */
struct secondary;

/*
 * Open the layers of cfg (made if new) and the stage they recorded.
 * Returns 0 and *out, or -errno with the reason in err. Nothing is
 * served until secondary_start().
 */
int secondary_open(const struct config_secondary *cfg, struct secondary **out,
		   char *err, size_t errlen);
/* Serve over tree; log takes its events; timeout_ms bounds a
 * checkpoint's wait for requests in flight. */
void secondary_start(struct secondary *sec, struct tree *tree,
		     struct event_log *log, int timeout_ms);
/* Close (clean: nothing is in flight). NULL accepted. */
void secondary_close(struct secondary *sec, bool clean);
/* The inbound mount came up, or went away. */
void secondary_inbound(struct secondary *sec, bool mounted);
/* Run a `replication ...` command on the secondary (-errno and QEMU's
 * text in err on a refusal); whether a command is the secondary's or
 * the primary children's is replication_route()'s answer. */
int replication_secondary(struct secondary *sec,
			  const struct config_command *cmd, char *err,
			  size_t errlen);
/* Whether cmd is for the secondary (true) or for set's replication
 * children: once the secondary is DONE and a primary child exists, the
 * mount is a primary. */
bool replication_route(struct secondary *sec, struct child_set *set);
/* Refuse (-EBUSY, QEMU's text) an `add ... mode=primary` before DONE. */
int secondary_check_add(struct secondary *sec, char *err, size_t errlen);
/* Add the "replication" object to a status document. */
void secondary_status(struct secondary *sec, struct json_object *status);

/* ---- the view: node ids of its own, 1 the root ---- */

struct view_file;
struct view_dir;

int view_lookup(struct secondary *sec, uint64_t parent, const char *name,
		struct tree_entry *e);
void view_forget(struct secondary *sec, uint64_t ino, uint64_t nlookup);
int view_getattr(struct secondary *sec, uint64_t ino, struct stat *st);
/* Only the size may change here (truncate); to_set is tree_setattr's. */
int view_setattr(struct secondary *sec, uint64_t ino, struct view_file *f,
		 const struct stat *attr, int to_set, struct stat *st);
int view_open(struct secondary *sec, uint64_t ino, int flags,
	      struct view_file **f);
void view_release(struct secondary *sec, struct view_file *f);
/* Read into buf (size bytes); returns the bytes read or -errno. */
ssize_t view_read(struct secondary *sec, struct view_file *f, char *buf,
		  size_t size, off_t off);
ssize_t view_write(struct secondary *sec, struct view_file *f, const char *buf,
		   size_t size, off_t off);
int view_fsync(struct secondary *sec, struct view_file *f, bool datasync);
int view_opendir(struct secondary *sec, uint64_t ino, struct view_dir **d);
bool view_dir_entry(const struct view_dir *d, size_t i, const char **name,
		    struct stat *st);
void view_releasedir(struct view_dir *d);

/*
 * The view's changes of names. view_make makes a regular file, device,
 * FIFO, directory or symlink (target) as mode says, owned by who, and
 * returns its entry with one lookup. Hard links and extended attributes
 * of the view are not supported while the layers are in use.
 */
int view_make(struct secondary *sec, uint64_t parent, const char *name,
	      mode_t mode, dev_t rdev, const char *target,
	      const struct tree_caller *who, struct tree_entry *e);
int view_remove(struct secondary *sec, uint64_t parent, const char *name,
		bool dir);
int view_rename(struct secondary *sec, uint64_t parent, const char *name,
		uint64_t newparent, const char *newname, unsigned int flags);
/* The target's length; buf (size bytes) gets it without a NUL. */
ssize_t view_readlink(struct secondary *sec, uint64_t ino, char *buf,
		      size_t size);

/* ---- the inbound mount's changes (the rest goes to the tree) ---- */

ssize_t inbound_write(struct secondary *sec, struct tree_file *f,
		      const void *buf, size_t size, off_t off,
		      const struct tree_caller *who);
int inbound_setattr(struct secondary *sec, uint64_t ino, struct tree_file *f,
		    const struct stat *attr, int to_set, struct stat *st);
int inbound_fallocate(struct secondary *sec, struct tree_file *f, int mode,
		      off_t off, off_t len);
/* A change of names or xattrs may go on: 0, or -EROFS after failover. */
int inbound_may_change(struct secondary *sec);
/*
 * A name is about to appear at B's parent/name (create, mknod, mkdir,
 * symlink, link): the checkpoint's tree must not see it. On 0 the caller
 * makes the change with the tree, then calls inbound_named(); on -errno
 * it changes nothing (and calls nothing).
 */
int inbound_naming(struct secondary *sec, uint64_t parent, const char *name);
void inbound_named(struct secondary *sec);
/* unlink (dir: rmdir) and rename of B's names, done here: what the
 * checkpoint's tree still has goes into the graveyard, not away. */
int inbound_remove(struct secondary *sec, uint64_t parent, const char *name,
		   bool dir);
int inbound_rename(struct secondary *sec, uint64_t parent, const char *name,
		   uint64_t newparent, const char *newname, unsigned int flags);

#endif
