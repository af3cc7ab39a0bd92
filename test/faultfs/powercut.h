/*
 * powercut: the undo journal behind faultfs's -o powercut.
 *
 * A real disk loses, at a power cut, whatever the file system had not made
 * durable. faultfs passes every change through to BACKING_DIR at once, so
 * to lose the same things it remembers how to take each change back until
 * the change is made durable, and takes back the rest at the cut:
 *
 *  - data: before the first change to a 4 KiB block of a file since the
 *    file's last fsync or fdatasync, the block's bytes are copied into
 *    memory, and the file's size at that sync is noted; a sync forgets
 *    them; the cut writes them back and restores the size;
 *  - names: every creation, removal and rename is a record of how to undo
 *    it; a removed entry is moved into a hidden graveyard in BACKING_DIR
 *    rather than deleted, so its undo can bring the very same inode back.
 *    A record is forgotten (and its graveyard entry deleted) once every
 *    directory it changed has been fsync'd since, or once a later
 *    forgotten record changed the same name in the same directory (that
 *    directory's durable state already reflects it). The cut undoes the
 *    remaining records, newest first.
 *
 * Records and blocks find their inode through descriptors of their own,
 * so an undo lands where the inode is now, whatever was renamed since.
 * README.md states the model. One mutex guards the journal and is held
 * across each journaled change, so a change and its record are one step
 * for every other operation and for the cut.
 *
 * Paths are the mount's ("/a/b"); every function returns a negative errno
 * on failure, and -EIO once the power was cut.
 */
#ifndef FAULTFS_POWERCUT_H
#define FAULTFS_POWERCUT_H

#include <stdbool.h>
#include <sys/types.h>

/* Top-level directory of BACKING_DIR that faultfs keeps for itself. */
#define POWERCUT_GRAVEYARD ".faultfs-powercut"

struct powercut;

/*
 * A journal over the backing directory root_fd (borrowed, an O_PATH
 * handle). Makes the graveyard afresh: one left by a faultfs that was
 * killed holds entries that were removed, so it is emptied first.
 */
int powercut_new(int root_fd, struct powercut **out);

/* A clean shutdown: every change is kept, the graveyard is deleted. */
void powercut_free(struct powercut *pc);

/*
 * The cut: wait for the journaled change in progress, undo every change
 * not made durable, and refuse every later one with -EIO. Prints a summary
 * on stderr. Calling it again does nothing.
 */
void powercut_cut(struct powercut *pc);

/* Whether path (on the mount, may be NULL) names the graveyard. */
bool powercut_hides(const char *path);

/* ---- data: fd is an open handle of a regular file ---- */

/*
 * pwrite(). flags are the write's: with O_APPEND off is not where it
 * lands; with O_DSYNC (O_SYNC, O_DSYNC, RWF_SYNC, RWF_DSYNC) the kernel
 * sends no fsync after it, so the write makes the file durable itself.
 */
ssize_t powercut_write(struct powercut *pc, int fd, const void *buf, size_t n,
		       off_t off, int flags);
int powercut_truncate(struct powercut *pc, int fd, off_t size);
int powercut_fallocate(struct powercut *pc, int fd, int mode, off_t off,
		       off_t len);
/* The O_TRUNC of an open: a regular file is emptied, anything else kept. */
int powercut_open_trunc(struct powercut *pc, int fd);
/* Both make the file's data and size durable; see README.md. */
int powercut_fsync(struct powercut *pc, int fd, bool datasync);
/* dir_fd: an open directory; makes its entries durable. */
int powercut_fsyncdir(struct powercut *pc, int dir_fd, bool datasync);

/* ---- names ---- */

/* open(O_CREAT) with flags; returns the new descriptor. */
int powercut_create(struct powercut *pc, const char *path, int flags,
		    mode_t mode);
int powercut_mknod(struct powercut *pc, const char *path, mode_t mode,
		   dev_t rdev);
int powercut_mkdir(struct powercut *pc, const char *path, mode_t mode);
int powercut_symlink(struct powercut *pc, const char *target, const char *path);
int powercut_link(struct powercut *pc, const char *from, const char *to);
int powercut_unlink(struct powercut *pc, const char *path);
int powercut_rmdir(struct powercut *pc, const char *path);
int powercut_rename(struct powercut *pc, const char *from, const char *to,
		    unsigned int flags);

#endif
