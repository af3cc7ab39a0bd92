/*
 * The FUSE side of MOUNTPOINT/.children (copies/copies.h): each handler
 * of quorumfs.c asks here first, as it asks .control's, and goes on to
 * the tree only when the node is not one of the copies'. Each answers
 * once, from one call into the copies module. Nothing is cached by the
 * kernel: entries and attributes time out at once and files are direct
 * I/O, since a resync or a removal changes what a copy holds. Every
 * change is refused with EROFS here, before anything reaches a child.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "copies/copies.h"
#include "quorumfs.h"

static struct copies *copies_of(fuse_req_t req)
{
	return qfs_of(req)->copies;
}

static struct copies_file *cfile_of(struct fuse_file_info *fi)
{
	return (struct copies_file *)(uintptr_t)fi->fh;
}

/* The inbound mount of a secondary is the primary's way in: no copies. */
static bool serves(fuse_req_t req, uint64_t ino)
{
	return copies_owns(ino) && copies_of(req) && !qfs_of(req)->inbound;
}

bool qfs_copies_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param p = {0};
	struct tree_entry e;
	int ret;

	if (!copies_is_top(parent, name) && !copies_owns(parent))
		return false;
	if (!copies_of(req) || qfs_of(req)->inbound) {
		fuse_reply_err(req, ENOENT);
		return true;
	}
	ret = copies_lookup(copies_of(req), parent, name, &e);
	if (ret) {
		fuse_reply_err(req, -ret);
		return true;
	}
	p.ino = e.ino;
	p.attr = e.attr;
	if (fuse_reply_entry(req, &p) == -ENOENT)
		copies_forget(copies_of(req), e.ino, 1);
	return true;
}

bool qfs_copies_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	if (!serves(req, ino))
		return false;
	copies_forget(copies_of(req), ino, nlookup);
	return true;
}

bool qfs_copies_getattr(fuse_req_t req, fuse_ino_t ino)
{
	struct stat st;
	int ret;

	if (!serves(req, ino))
		return false;
	ret = copies_getattr(copies_of(req), ino, &st);
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_attr(req, &st, 0);
	return true;
}

bool qfs_copies_refuse(fuse_req_t req, fuse_ino_t ino)
{
	if (!copies_owns(ino))
		return false;
	fuse_reply_err(req, EROFS);
	return true;
}

bool qfs_copies_readlink(fuse_req_t req, fuse_ino_t ino)
{
	char buf[PATH_MAX + 1];
	ssize_t len;

	if (!serves(req, ino))
		return false;
	len = copies_readlink(copies_of(req), ino, buf, sizeof(buf));
	if (len == (ssize_t)sizeof(buf))
		len = -ENAMETOOLONG;
	if (len < 0) {
		fuse_reply_err(req, (int)-len);
		return true;
	}
	buf[len] = '\0';
	fuse_reply_readlink(req, buf);
	return true;
}

bool qfs_copies_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct copies_file *f;
	int ret;

	if (!serves(req, ino))
		return false;
	ret = copies_open(copies_of(req), ino, fi->flags, &f);
	if (ret) {
		fuse_reply_err(req, -ret);
		return true;
	}
	fi->fh = (uintptr_t)f;
	fi->direct_io = 1;
	if (fuse_reply_open(req, fi) == -ENOENT)
		copies_release(f);
	return true;
}

bool qfs_copies_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	char *buf;
	ssize_t ret;

	if (!serves(req, ino))
		return false;
	buf = malloc(size ? size : 1);
	ret = buf ? copies_read(copies_of(req), cfile_of(fi), buf, size, off)
		  : -ENOMEM;
	if (ret < 0)
		fuse_reply_err(req, (int)-ret);
	else
		fuse_reply_buf(req, buf, (size_t)ret);
	free(buf);
	return true;
}

/* Flush, fsync, fsyncdir: nothing was written. */
bool qfs_copies_nothing(fuse_req_t req, fuse_ino_t ino)
{
	if (!serves(req, ino))
		return false;
	fuse_reply_err(req, 0);
	return true;
}

bool qfs_copies_release(fuse_req_t req, fuse_ino_t ino,
			struct fuse_file_info *fi)
{
	if (!serves(req, ino))
		return false;
	copies_release(cfile_of(fi));
	fuse_reply_err(req, 0);
	return true;
}

bool qfs_copies_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		      struct fuse_file_info *fi)
{
	off_t ret;

	if (!serves(req, ino))
		return false;
	ret = copies_lseek(copies_of(req), cfile_of(fi), off, whence);
	if (ret < 0)
		fuse_reply_err(req, (int)-ret);
	else
		fuse_reply_lseek(req, ret);
	return true;
}

bool qfs_copies_opendir(fuse_req_t req, fuse_ino_t ino,
			struct fuse_file_info *fi)
{
	struct copies_dir *d;
	int ret;

	if (!serves(req, ino))
		return false;
	ret = copies_opendir(copies_of(req), ino, &d);
	if (ret) {
		fuse_reply_err(req, -ret);
		return true;
	}
	fi->fh = (uintptr_t)d;
	if (fuse_reply_open(req, fi) == -ENOENT)
		copies_releasedir(d);
	return true;
}

bool qfs_copies_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			struct fuse_file_info *fi)
{
	if (!serves(req, ino))
		return false;
	qfs_reply_dir(req, size, off, copies_dir_entry,
		      (void *)(uintptr_t)fi->fh);
	return true;
}

bool qfs_copies_releasedir(fuse_req_t req, fuse_ino_t ino,
			   struct fuse_file_info *fi)
{
	if (!serves(req, ino))
		return false;
	copies_releasedir((struct copies_dir *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
	return true;
}

/* .children itself answers for the mount, as the tree does. */
bool qfs_copies_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs st;
	int ret;

	if (!serves(req, ino) || ino == COPIES_TOP_INO)
		return false;
	ret = copies_statfs(copies_of(req), ino, &st);
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_statfs(req, &st);
	return true;
}

/* get and list share the size protocol: 0 asks for the length. */
static void reply_value(fuse_req_t req, ssize_t ret, const char *buf,
			size_t size)
{
	if (ret < 0)
		fuse_reply_err(req, (int)-ret);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)ret);
	else
		fuse_reply_buf(req, buf, (size_t)ret);
}

bool qfs_copies_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			 size_t size)
{
	char *buf;
	ssize_t ret;

	if (!serves(req, ino))
		return false;
	buf = size ? malloc(size) : NULL;
	ret = size && !buf
		      ? -ENOMEM
		      : copies_getxattr(copies_of(req), ino, name, buf, size);
	reply_value(req, ret, buf, size);
	free(buf);
	return true;
}

bool qfs_copies_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	char *buf;
	ssize_t ret;

	if (!serves(req, ino))
		return false;
	buf = size ? malloc(size) : NULL;
	ret = size && !buf ? -ENOMEM
			   : copies_listxattr(copies_of(req), ino, buf, size);
	reply_value(req, ret, buf, size);
	free(buf);
	return true;
}
