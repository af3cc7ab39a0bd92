/*
 * setattr, readlink, statfs and extended attributes.
 *
 * Changes go to every child and follow the write rule. Values read back
 * (link targets, xattr values) are voted like data, so one child's odd
 * answer cannot reach the caller.
 */
#define _GNU_SOURCE
#include "tree/tree_i.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "vote/vote.h"

static int errno_of(int r)
{
	return r < 0 ? -errno : 0;
}

struct setattr_op {
	struct node *node;
	struct fs_file *file;
	const struct stat *attr;
	int to_set;
};

static int set_times(int fd, const struct setattr_op *op)
{
	struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT},
				 {.tv_nsec = UTIME_OMIT}};

	if (op->to_set & FS_SET_ATIME)
		ts[0] = op->attr->st_atim;
	if (op->to_set & FS_SET_MTIME)
		ts[1] = op->attr->st_mtim;
	if (op->to_set & FS_SET_ATIME_NOW)
		ts[0].tv_nsec = UTIME_NOW;
	if (op->to_set & FS_SET_MTIME_NOW)
		ts[1].tv_nsec = UTIME_NOW;
	return errno_of(
		utimensat(fd, "", ts, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
}

static int set_one(struct fs *fs, const struct setattr_op *op, int slot)
{
	int fd = node_fd(fs, op->node, slot);
	char proc[64];
	int r = 0;

	if (fd < 0)
		return fd;
	fd_proc_path(fd, proc);
	if (op->to_set & FS_SET_MODE)
		r = errno_of(chmod(proc, op->attr->st_mode & 07777));
	if (!r && (op->to_set & (FS_SET_UID | FS_SET_GID)))
		r = errno_of(
			fchownat(fd, "",
				 (op->to_set & FS_SET_UID) ? op->attr->st_uid
							   : (uid_t)-1,
				 (op->to_set & FS_SET_GID) ? op->attr->st_gid
							   : (gid_t)-1,
				 AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
	if (!r && (op->to_set & FS_SET_SIZE)) {
		int ffd = op->file ? fs_file_fd(fs, op->file, slot) : -1;

		r = errno_of(ffd >= 0 ? ftruncate(ffd, op->attr->st_size)
				      : truncate(proc, op->attr->st_size));
	}
	if (!r && (op->to_set & (FS_SET_ATIME | FS_SET_MTIME |
				 FS_SET_ATIME_NOW | FS_SET_MTIME_NOW)))
		r = set_times(fd, op);
	return r;
}

static void setattr_body(struct fanout *fo, int i)
{
	fo->ret[i] = set_one(fo->fs, fo->arg, child_slot(fo->view->child[i]));
}

int fs_setattr(struct fs *fs, uint64_t ino, struct fs_file *f,
	       const struct stat *attr, int to_set, struct stat *st)
{
	const struct child_view *view = children_view_get(fs->set);
	struct setattr_op op = {.node = node_get(fs, ino),
				.file = f,
				.attr = attr,
				.to_set = to_set};
	struct fanout fo = {
		.fs = fs, .view = view, .body = setattr_body, .arg = &op};
	struct range_claim claim;
	bool sized = to_set & FS_SET_SIZE;
	int ret;

	/* A size change moves every byte past it: order it with all I/O. */
	if (sized)
		range_lock(&op.node->ranges, &claim, 0, FS_OFF_MAX, true);
	if (sized)
		fs_announce_write(fs, op.node, attr->st_size, 1);
	if (to_set & ~FS_SET_SIZE)
		fs_announce_tree(fs);
	fanout_run(&fo);
	ret = fanout_tally(&fo, "write", op.node, sized ? attr->st_size : 0, 0);
	if (!ret && sized)
		atomic_store(&op.node->size_hint, attr->st_size);
	if (!ret)
		ret = attr_vote(fs, view, op.node, st);
	if (sized)
		range_unlock(&op.node->ranges, &claim);
	children_view_put(view);
	return ret;
}

/*
 * A value read from every voting child into its own buffer and voted
 * like data: link targets and xattr values.
 */
struct value_op {
	struct node *node;
	const char *name; /* xattr name, NULL for readlink / list */
	size_t size;	  /* 0: only the length is asked for */
	bool list;
	char *buf[CHILDREN_MAX];
	ssize_t len[CHILDREN_MAX];
};

static ssize_t value_get(const struct value_op *op, int fd, char *buf,
			 size_t size)
{
	char proc[64];

	if (!op->name && !op->list)
		return readlinkat(fd, "", buf, size);
	/* xattrs of a symlink would be those of the /proc link itself. */
	if (S_ISLNK(op->node->type))
		return op->list ? 0 : (errno = ENODATA, -1);
	fd_proc_path(fd, proc);
	if (op->list)
		return listxattr(proc, buf, size);
	return getxattr(proc, op->name, buf, size);
}

static void value_body(struct fanout *fo, int i)
{
	struct value_op *op = fo->arg;
	int fd = node_fd(fo->fs, op->node, child_slot(fo->view->child[i]));

	op->buf[i] = NULL;
	fo->ret[i] = 0;
	if (!fo->view->votes[i])
		return;
	if (fd < 0) {
		fo->ret[i] = fd;
		return;
	}
	if (op->size) {
		op->buf[i] = malloc(op->size);
		if (!op->buf[i]) {
			fo->ret[i] = -ENOMEM;
			return;
		}
	}
	op->len[i] = value_get(op, fd, op->buf[i], op->size);
	if (op->len[i] < 0)
		fo->ret[i] = -errno;
}

/* Vote the values; on success copy the winner out and return its length. */
static ssize_t value_vote(struct fs *fs, struct value_op *op, void *out)
{
	const struct child_view *view = children_view_get(fs->set);
	struct fanout fo = {
		.fs = fs, .view = view, .body = value_body, .arg = op};
	struct vote_ballot b[CHILDREN_MAX];
	int index[CHILDREN_MAX], n = 0;
	struct vote_result r;
	ssize_t ret;

	fanout_run(&fo);
	for (int i = 0; i < view->n; i++) {
		if (!view->votes[i])
			continue;
		index[n] = i;
		b[n++] = (struct vote_ballot){
			.error = fo.ret[i],
			.data = op->size ? (void *)op->buf[i] : &op->len[i],
			.len = op->size ? (size_t)op->len[i] : sizeof(ssize_t)};
		if (fo.ret[i])
			b[n - 1].len = 0;
	}
	ret = n ? vote_whole(b, n, view->threshold, &r) : -EIO;
	if (!ret) {
		ret = op->len[index[r.winner]];
		if (op->size)
			memcpy(out, op->buf[index[r.winner]], ret);
	}
	for (int i = 0; i < view->n; i++)
		free(op->buf[i]);
	children_view_put(view);
	return ret;
}

ssize_t fs_readlink(struct fs *fs, uint64_t ino, char *buf, size_t size)
{
	struct value_op op = {.node = node_get(fs, ino), .size = size};

	return value_vote(fs, &op, buf);
}

ssize_t fs_getxattr(struct fs *fs, uint64_t ino, const char *name, void *value,
		    size_t size)
{
	struct value_op op = {
		.node = node_get(fs, ino), .name = name, .size = size};

	return value_vote(fs, &op, value);
}

ssize_t fs_listxattr(struct fs *fs, uint64_t ino, char *list, size_t size)
{
	struct value_op op = {
		.node = node_get(fs, ino), .list = true, .size = size};

	return value_vote(fs, &op, list);
}

struct xattr_change {
	struct node *node;
	const char *name;
	const void *value;
	size_t size;
	int flags;
	bool remove;
};

static void xattr_body(struct fanout *fo, int i)
{
	struct xattr_change *op = fo->arg;
	int fd = node_fd(fo->fs, op->node, child_slot(fo->view->child[i]));
	char proc[64];

	if (fd < 0) {
		fo->ret[i] = fd;
		return;
	}
	if (S_ISLNK(op->node->type)) {
		fo->ret[i] = -EPERM; /* as for user.* on a local symlink */
		return;
	}
	fd_proc_path(fd, proc);
	fo->ret[i] = errno_of(op->remove ? removexattr(proc, op->name)
					 : setxattr(proc, op->name, op->value,
						    op->size, op->flags));
}

static int xattr_change(struct fs *fs, struct xattr_change *op)
{
	const struct child_view *view = children_view_get(fs->set);
	struct fanout fo = {
		.fs = fs, .view = view, .body = xattr_body, .arg = op};
	int ret;

	fs_announce_tree(fs);
	fanout_run(&fo);
	ret = fanout_tally(&fo, "write", op->node, 0, 0);
	children_view_put(view);
	return ret;
}

int fs_setxattr(struct fs *fs, uint64_t ino, const char *name,
		const void *value, size_t size, int flags)
{
	struct xattr_change op = {.node = node_get(fs, ino),
				  .name = name,
				  .value = value,
				  .size = size,
				  .flags = flags};

	return xattr_change(fs, &op);
}

int fs_removexattr(struct fs *fs, uint64_t ino, const char *name)
{
	struct xattr_change op = {
		.node = node_get(fs, ino), .name = name, .remove = true};

	return xattr_change(fs, &op);
}

struct statfs_op {
	struct statvfs st[CHILDREN_MAX];
};

static void statfs_body(struct fanout *fo, int i)
{
	struct statfs_op *op = fo->arg;

	fo->ret[i] = errno_of(
		fstatvfs(child_root_fd(fo->view->child[i]), &op->st[i]));
}

/* The smallest free space of any voting child: what can still be written. */
int fs_statfs(struct fs *fs, struct statvfs *st)
{
	const struct child_view *view = children_view_get(fs->set);
	struct statfs_op op;
	struct fanout fo = {
		.fs = fs, .view = view, .body = statfs_body, .arg = &op};
	int best = -1, ret = 0;

	fanout_run(&fo);
	for (int i = 0; i < view->n; i++) {
		if (!view->votes[i] || fo.ret[i])
			continue;
		if (best < 0 ||
		    (uint64_t)op.st[i].f_bavail * op.st[i].f_frsize <
			    (uint64_t)op.st[best].f_bavail *
				    op.st[best].f_frsize)
			best = i;
	}
	if (best >= 0)
		*st = op.st[best];
	else
		ret = fanout_error_vote(&fo);
	children_view_put(view);
	return ret;
}
