/*
 * copies: each child's own copy of the tree, read-only, at
 * MOUNTPOINT/.children/NAME/.
 *
 * When the children disagree an operator wants to look at each copy
 * before choosing one. This module serves every data member's directory
 * as it is in that child: its bytes and its attributes, never voted.
 * Nothing here changes a child: every call that would is refused with
 * EROFS by the FUSE glue before it reaches this module.
 *
 * Names resolve one component at a time beneath the child's root, with
 * O_PATH | O_NOFOLLOW as the tree does (tree/nodes.c): the daemon never
 * follows a link in a child; the kernel follows a link it reads as on any
 * file system, relative to where the link is on the mount. The child's
 * names the mount reserves at its root (.quorumfs, the graveyard,
 * .control, .children) are hidden at each child's root.
 *
 * Every call to a child runs as a struct child_request under a view of
 * that child alone (children_view_one): it is bounded by io-timeout like
 * any other request, a child that misses it is reported to the watchdog
 * (the tree fails it), and a removal of the child drains it.
 *
 * Node ids carry COPIES_INO_TAG, so that they never clash with the
 * tree's (addresses) or .control's. Conventions are the tree's
 * (tree/tree.h): 0 or a count on success, -errno on failure.
 */
#ifndef QFS_COPIES_H
#define QFS_COPIES_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>

#include "tree/tree.h"

struct child_set;
struct pool;
struct watchdog;
struct json_object;
struct copies;
struct copies_file;
struct copies_dir;

/* Above any address and below the sign bit. */
#define COPIES_INO_TAG (1ULL << 62)

/* .children itself: not an address (those are 16-byte aligned). */
#define COPIES_TOP_INO (COPIES_INO_TAG | 2)

/* Whether ino is one of this module's node ids. */
static inline bool copies_owns(uint64_t ino)
{
	return (ino & COPIES_INO_TAG) != 0;
}

/* Whether parent/name is MOUNTPOINT/.children itself. */
bool copies_is_top(uint64_t parent, const char *name);

/*
 * The copies over set; each call to a child runs on pool, bounded by wd.
 * owner and group own .children. The caller keeps set, pool and wd,
 * which must outlive the copies.
 */
int copies_new(struct child_set *set, struct pool *pool,
	       const struct watchdog *wd, uid_t owner, gid_t group,
	       struct copies **out);
/* Free every node; no request may run. NULL is accepted. */
void copies_free(struct copies *cp);

/*
 * Namespace, as the tree's. parent is TREE_ROOT_INO (name .children)
 * or one of this module's ids. A removed child's nodes answer -ESTALE;
 * a name no data member shows under .children is -ENOENT.
 */
int copies_lookup(struct copies *cp, uint64_t parent, const char *name,
		  struct tree_entry *e);
void copies_forget(struct copies *cp, uint64_t ino, uint64_t nlookup);
int copies_getattr(struct copies *cp, uint64_t ino, struct stat *st);
ssize_t copies_readlink(struct copies *cp, uint64_t ino, char *buf,
			size_t size);
int copies_statfs(struct copies *cp, uint64_t ino, struct statvfs *st);

/* Files: only regular files, only for reading (else -EROFS). */
int copies_open(struct copies *cp, uint64_t ino, int flags,
		struct copies_file **f);
/* Reads up to size bytes at off into buf; returns the bytes read. */
ssize_t copies_read(struct copies *cp, struct copies_file *f, void *buf,
		    size_t size, off_t off);
/* SEEK_DATA / SEEK_HOLE in the child's file. */
off_t copies_lseek(struct copies *cp, struct copies_file *f, off_t off,
		   int whence);
void copies_release(struct copies_file *f);

/* Directories: the listing is read once, at open. */
int copies_opendir(struct copies *cp, uint64_t ino, struct copies_dir **d);
bool copies_dir_entry(const void *d, size_t i, const char **name,
		      struct stat *st);
void copies_releasedir(struct copies_dir *d);

/* Extended attributes, with the syscalls' size protocol. */
ssize_t copies_getxattr(struct copies *cp, uint64_t ino, const char *name,
			void *buf, size_t size);
ssize_t copies_listxattr(struct copies *cp, uint64_t ino, char *buf,
			 size_t size);

/* Add `view` (".children/NAME", or null for a replication child) to each
 * member of children, the status's array of members of set. */
void copies_status(struct child_set *set, struct json_object *children);

#endif
