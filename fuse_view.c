/*
 * The FUSE operations of a secondary's view (replication.h): what the
 * secondary VM sees, active over hidden over the base. Each handler
 * decodes, makes one call into the replication module and replies once,
 * as the tree's handlers do. The kernel caches nothing of the view:
 * entries and attributes time out at once and files are direct I/O,
 * since a checkpoint changes what every name and byte is. The handlers
 * have the tree's handlers' shape (quorumfs.c) on purpose: one backend
 * each, the same decode-call-reply.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "quorumfs.h"
#include "replication/replication.h"
#include "tree/tree.h"

static struct secondary *sec_of(fuse_req_t req)
{
	return qfs_of(req)->secondary;
}

static struct view_file *vfile_of(struct fuse_file_info *fi)
{
	return (struct view_file *)(uintptr_t)fi->fh;
}

static void reply_ventry(fuse_req_t req, int ret, const struct tree_entry *e)
{
	struct fuse_entry_param p = {0};

	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	p.ino = e->ino;
	p.attr = e->attr;
	fuse_reply_entry(req, &p);
}

static void reply_vattr(fuse_req_t req, int ret, const struct stat *st)
{
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_attr(req, st, 0);
}

static void v_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct tree_entry e;

	if (qfs_control_lookup(req, parent, name))
		return;
	reply_ventry(req, view_lookup(sec_of(req), parent, name, &e), &e);
}

static void view_forget_one(fuse_req_t req, uint64_t ino, uint64_t n)
{
	view_forget(sec_of(req), ino, n);
}

static void v_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	struct fuse_forget_data one = {.ino = ino, .nlookup = nlookup};

	qfs_forget_each(req, 1, &one, view_forget_one);
}

static void v_forget_multi(fuse_req_t req, size_t count,
			   struct fuse_forget_data *forgets)
{
	qfs_forget_each(req, count, forgets, view_forget_one);
}

static void v_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;

	(void)fi;
	if (qfs_control_getattr(req, ino))
		return;
	reply_vattr(req, view_getattr(sec_of(req), ino, &st), &st);
}

static void v_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
		      int to_set, struct fuse_file_info *fi)
{
	struct stat st;

	if (qfs_control_setattr(req, ino, to_set))
		return;
	reply_vattr(req,
		    view_setattr(sec_of(req), ino, fi ? vfile_of(fi) : NULL,
				 attr, qfs_setattr_flags(to_set), &st),
		    &st);
}

static struct tree_caller caller(fuse_req_t req)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);

	return (struct tree_caller){.uid = ctx->uid, .gid = ctx->gid};
}

static void v_make(fuse_req_t req, fuse_ino_t parent, const char *name,
		   mode_t mode, dev_t rdev, const char *target)
{
	struct tree_caller who = caller(req);
	struct tree_entry e;

	if (parent == TREE_ROOT_INO && strcmp(name, ".control") == 0) {
		fuse_reply_err(req, EEXIST);
		return;
	}
	reply_ventry(req,
		     view_make(sec_of(req), parent, name, mode, rdev, target,
			       &who, &e),
		     &e);
}

static void v_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
		    mode_t mode, dev_t rdev)
{
	v_make(req, parent, name, mode, rdev, NULL);
}

static void v_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
		    mode_t mode)
{
	v_make(req, parent, name, mode | S_IFDIR, 0, NULL);
}

static void v_symlink(fuse_req_t req, const char *link, fuse_ino_t parent,
		      const char *name)
{
	v_make(req, parent, name, S_IFLNK | 0777, 0, link);
}

static void v_readlink(fuse_req_t req, fuse_ino_t ino)
{
	char buf[PATH_MAX + 1];
	ssize_t len = view_readlink(sec_of(req), ino, buf, sizeof(buf));

	if (len == (ssize_t)sizeof(buf))
		len = -ENAMETOOLONG;
	if (len < 0) {
		fuse_reply_err(req, (int)-len);
		return;
	}
	buf[len] = '\0';
	fuse_reply_readlink(req, buf);
}

static void v_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fuse_reply_err(req, -view_remove(sec_of(req), parent, name, false));
}

static void v_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	fuse_reply_err(req, -view_remove(sec_of(req), parent, name, true));
}

static void v_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		     fuse_ino_t newparent, const char *newname,
		     unsigned int flags)
{
	fuse_reply_err(req, -view_rename(sec_of(req), parent, name, newparent,
					 newname, flags));
}

static void v_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
		   const char *newname)
{
	(void)ino;
	(void)newparent;
	(void)newname;
	fuse_reply_err(req, EOPNOTSUPP); /* see replication.h */
}

static void v_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct view_file *f;
	int ret;

	if (qfs_control_open(req, ino, fi))
		return;
	ret = view_open(sec_of(req), ino, fi->flags, &f);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	fi->fh = (uintptr_t)f;
	fi->direct_io = 1;
	if (fuse_reply_open(req, fi) == -ENOENT)
		view_release(sec_of(req), f);
}

static void v_create(fuse_req_t req, fuse_ino_t parent, const char *name,
		     mode_t mode, struct fuse_file_info *fi)
{
	struct tree_caller who = caller(req);
	struct fuse_entry_param p = {0};
	struct tree_entry e;
	struct view_file *f = NULL;
	int ret = view_make(sec_of(req), parent, name, (mode & 07777) | S_IFREG,
			    0, NULL, &who, &e);

	if (!ret) {
		ret = view_open(sec_of(req), e.ino, fi->flags, &f);
		if (ret)
			view_forget(sec_of(req), e.ino, 1);
	}
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	p.ino = e.ino;
	p.attr = e.attr;
	fi->fh = (uintptr_t)f;
	fi->direct_io = 1;
	if (fuse_reply_create(req, &p, fi) == -ENOENT) {
		view_release(sec_of(req), f);
		view_forget(sec_of(req), e.ino, 1);
	}
}

static void v_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		   struct fuse_file_info *fi)
{
	char *buf;
	ssize_t ret;

	if (qfs_control_read(req, ino, size, off, fi))
		return;
	buf = malloc(size ? size : 1);
	ret = buf ? view_read(sec_of(req), vfile_of(fi), buf, size, off)
		  : -ENOMEM;
	if (ret < 0)
		fuse_reply_err(req, (int)-ret);
	else
		fuse_reply_buf(req, buf, (size_t)ret);
	free(buf);
}

static void v_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
		    size_t size, off_t off, struct fuse_file_info *fi)
{
	ssize_t ret;

	if (qfs_control_write(req, ino, buf, size))
		return;
	ret = view_write(sec_of(req), vfile_of(fi), buf, size, off);
	if (ret < 0)
		fuse_reply_err(req, (int)-ret);
	else
		fuse_reply_write(req, (size_t)ret);
}

static void v_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	(void)fi;
	fuse_reply_err(req, 0);
}

static void v_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (qfs_control_release(req, ino, fi))
		return;
	view_release(sec_of(req), vfile_of(fi));
	fuse_reply_err(req, 0);
}

static void v_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
		    struct fuse_file_info *fi)
{
	if (qfs_is_control(ino))
		fuse_reply_err(req, 0);
	else
		fuse_reply_err(
			req, -view_fsync(sec_of(req), vfile_of(fi), datasync));
}

static void v_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct view_dir *d;
	int ret;

	if (qfs_is_control(ino)) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	ret = view_opendir(sec_of(req), ino, &d);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	fi->fh = (uintptr_t)d;
	if (fuse_reply_open(req, fi) == -ENOENT)
		view_releasedir(d);
}

static bool view_dir_at(const void *dir, size_t i, const char **name,
			struct stat *st)
{
	return view_dir_entry(dir, i, name, st);
}

static void v_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	(void)ino;
	qfs_reply_dir(req, size, off, view_dir_at, (void *)(uintptr_t)fi->fh);
}

static void v_releasedir(fuse_req_t req, fuse_ino_t ino,
			 struct fuse_file_info *fi)
{
	(void)ino;
	view_releasedir((struct view_dir *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

static void v_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs st;
	int ret = tree_statfs(qfs_of(req)->tree, &st);

	(void)ino;
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_statfs(req, &st);
}

const struct fuse_lowlevel_ops view_ops = {
	.init = qfs_init,
	.lookup = v_lookup,
	.forget = v_forget,
	.forget_multi = v_forget_multi,
	.getattr = v_getattr,
	.setattr = v_setattr,
	.readlink = v_readlink,
	.mknod = v_mknod,
	.mkdir = v_mkdir,
	.symlink = v_symlink,
	.link = v_link,
	.unlink = v_unlink,
	.rmdir = v_rmdir,
	.rename = v_rename,
	.create = v_create,
	.open = v_open,
	.read = v_read,
	.write = v_write,
	.flush = v_flush,
	.release = v_release,
	.fsync = v_fsync,
	.opendir = v_opendir,
	.readdir = v_readdir,
	.releasedir = v_releasedir,
	.statfs = v_statfs,
};
