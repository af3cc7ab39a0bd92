/* Private to the copies module: its nodes and its calls to one child. */
#ifndef QFS_COPIES_I_H
#define QFS_COPIES_I_H

#include "copies/copies.h"

#include <dirent.h>
#include <limits.h>
#include <pthread.h>
#include <time.h>

#include "children/children.h"

#define COPIES_HASH 256

/*
 * One entry of one child the kernel knows. The child is named, not held:
 * a reference would keep its lock (children.c) past its removal. child
 * is only compared, never followed: each call finds the member again by
 * cname and checks it is still the same one.
 */
struct cnode {
	struct cnode *next; /* hash chain; guarded by copies->lock */
	uint64_t lookups;   /* ditto */
	const struct child *child;
	char *cname;
	int slot;
	bool root;   /* the child's root directory */
	dev_t dev;   /* the entry in the child */
	ino_t ino;   /* ditto */
	mode_t type; /* S_IFMT bits */
	int fd;	     /* O_PATH handle; -1 for the root: the child's own */
};

struct copies {
	struct child_set *set;
	struct pool *pool;
	const struct watchdog *wd;
	uid_t owner;
	gid_t group;
	struct timespec made; /* .children's times */
	pthread_mutex_t lock;
	struct cnode *hash[COPIES_HASH];
};

struct copies_file {
	int fd; /* open for reading */
	const struct child *child;
	char *cname;
};

struct copies_entry {
	char *name;
	mode_t type;
	ino_t ino; /* the child's; once listed, the view's (copies_ino) */
};

struct copies_dir {
	struct copies_entry *entry;
	size_t n, cap;
};

enum call_kind {
	CALL_STAT,
	CALL_LOOKUP,
	CALL_READLINK,
	CALL_GETXATTR,
	CALL_LISTXATTR,
	CALL_OPEN,
	CALL_READ,
	CALL_LSEEK,
	CALL_LIST,
	CALL_STATFS,
};

/* One call to one child, what it needs and what it answers: one
 * argument for every kind, which is why there are more than 16 fields.
 * It belongs to the request (children.h): a late part may still use it
 * after the caller gave up, and call_release() frees what is left. */
struct call {
	enum call_kind kind;
	int fd;			 /* a copy of the handle; -1: the root */
	char name[NAME_MAX + 1]; /* LOOKUP: entry; GETXATTR: attribute */
	bool root;		 /* LIST: hide the reserved names */
	bool link;		 /* the entry is a symlink */
	void *buf;		 /* READ, READLINK, xattrs */
	size_t size;
	off_t off;
	int whence;
	struct stat st;		/* STAT, LOOKUP */
	struct statvfs vfs;	/* STATFS */
	int newfd;		/* LOOKUP, OPEN; -1: none */
	ssize_t len;		/* READ, READLINK, xattrs */
	off_t pos;		/* LSEEK */
	struct copies_dir list; /* LIST */
};

/* A call to the member cname, if it still is child (NULL: whichever
 * member cname is now, returned in *child): the request with its
 * argument zeroed, fd -1 and newfd -1, or NULL with *err -ESTALE (no
 * such member any more) or -ENOMEM. */
struct child_request *call_new(struct copies *cp, const char *cname,
			       const struct child **child, int *err);
/* Run it on the child; 0 or -errno (-ETIMEDOUT past io-timeout). */
int call_run(struct copies *cp, struct child_request *rq);

/* The child's inode number as the view shows it: unique across the
 * children, whose own numbers may repeat (one file system each). */
ino_t copies_ino(int slot, ino_t ino);

/* The node of an id, and a call for it with its handle copied. */
struct cnode *copies_node(uint64_t ino);
struct child_request *node_call(struct copies *cp, const struct cnode *n,
				enum call_kind kind, int *err);

/* The view's names: names[i] for members[i], "" for one not shown. */
int copies_names(struct child_set *set, struct child **members,
		 char names[][NAME_MAX + 1]);

void copies_dir_free(struct copies_dir *d);

#endif
