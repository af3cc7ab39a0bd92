/*
 * quorumfs: main() and the FUSE low-level operations.
 *
 * Each handler decodes its request, makes one call into the tree module
 * (where every rule lives) and replies exactly once, holding no lock.
 * Regular files are opened in direct-I/O mode: every read reaches the
 * daemon and is voted, never served from the kernel's page cache, and the
 * writeback cache stays off so a failed quorum write reaches the writer.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <json-c/json.h>
#include <limits.h>
#include <pthread.h>
#include <linux/capability.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "children/children.h"
#include "config/config.h"
#include "control/control.h"
#include "daemon/daemon.h"
#include "events/events.h"
#include "quorumfs.h"
#include "replication/replication.h"
#include "stats/stats.h"
#include "tree/tree.h"

/* Largest request the kernel sends us whole: QEMU issues 1 MiB I/O. */
#define QFS_MAX_IO (1024 * 1024)
/* Kernel's default of 12 in-flight background requests starves QD16+. */
#define QFS_MAX_BACKGROUND 128

/* The open reply's kernel layout (struct fuse_open_out), so flags that
 * libfuse 3.14 has no field for can be set. */
struct open_reply {
	uint64_t fh;
	uint32_t open_flags;
	uint32_t padding;
};
#define QFS_FOPEN_DIRECT_IO (1u << 0)
/* Kernel 6.2+: writers to one file run in parallel; our range locks
 * order them. */
#define QFS_FOPEN_PARALLEL_DIRECT_WRITES (1u << 6)

/*
 * MOUNTPOINT/.control: never backed by a child. Reading it gives the
 * status as of the open; each write is one command. Its node id cannot
 * clash with the others, which are addresses.
 */
#define QFS_CONTROL_INO 2

struct control_handle {
	char *status;
	size_t len;
};

static struct tree *tree_of(fuse_req_t req)
{
	return qfs_of(req)->tree;
}

static struct tree_file *file_of(struct fuse_file_info *fi)
{
	return (struct tree_file *)(uintptr_t)fi->fh;
}

/*
 * The caller's credentials beyond uid and gid, read from /proc only when
 * a written file carries set-id bits. A caller whose status cannot be
 * read (it exited) is treated as unprivileged: the bits go, as they
 * would for any user but root.
 */
static bool caller_fsetid(void *ctx)
{
	const struct fuse_ctx *c = fuse_req_ctx(ctx);
	unsigned long long caps = 0;
	char path[64], line[256];
	bool found = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)c->pid);
	f = fopen(path, "re");
	while (f && !found && fgets(line, sizeof(line), f))
		found = sscanf(line, "CapEff: %llx", &caps) == 1;
	if (f)
		fclose(f);
	return found && (caps & (1ULL << CAP_FSETID));
}

static bool caller_in_group(void *ctx, gid_t gid)
{
	gid_t groups[256];
	int n = fuse_req_getgroups(ctx, 256, groups);

	if (fuse_req_ctx(ctx)->gid == gid)
		return true;
	for (int i = 0; i < n && i < 256; i++)
		if (groups[i] == gid)
			return true;
	return false;
}

static const struct tree_creds caller_creds = {
	.fsetid = caller_fsetid,
	.in_group = caller_in_group,
};

static struct tree_caller caller_of(fuse_req_t req)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);

	return (struct tree_caller){.uid = ctx->uid,
				    .gid = ctx->gid,
				    .creds = &caller_creds,
				    .ctx = req};
}

static void reply_entry(fuse_req_t req, int ret, const struct tree_entry *e)
{
	struct fuse_entry_param p = {0};

	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	p.ino = e->ino;
	p.attr = e->attr;
	p.attr_timeout = qfs_of(req)->timeout;
	p.entry_timeout = qfs_of(req)->timeout;
	fuse_reply_entry(req, &p);
}

static void reply_attr(fuse_req_t req, int ret, const struct stat *st)
{
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_attr(req, st, qfs_of(req)->timeout);
}

static struct stat control_attr(const struct qfs *q)
{
	struct stat st = {0};

	st.st_ino = QFS_CONTROL_INO;
	st.st_mode = S_IFREG | 0600;
	st.st_nlink = 1;
	st.st_uid = q->owner;
	st.st_gid = q->group;
	st.st_blksize = 4096;
	return st;
}

bool qfs_is_control(fuse_ino_t ino)
{
	return ino == QFS_CONTROL_INO;
}

static bool is_control(fuse_ino_t ino)
{
	return qfs_is_control(ino);
}

/* Operations .control does not support: true once the error is sent. */
static bool refuse_control(fuse_req_t req, fuse_ino_t ino, int err)
{
	if (!is_control(ino))
		return false;
	fuse_reply_err(req, err);
	return true;
}

static void file_control_open(fuse_req_t req, struct fuse_file_info *fi)
{
	struct control_handle *h = calloc(1, sizeof(*h));

	if (h && (fi->flags & O_ACCMODE) != O_WRONLY) {
		h->status = control_status(qfs_of(req)->ctl);
		h->len = h->status ? strlen(h->status) : 0;
		if (!h->status) {
			free(h);
			h = NULL;
		}
	}
	if (!h) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	fi->fh = (uintptr_t)h;
	fi->direct_io = 1;
	fi->nonseekable = 0;
	if (fuse_reply_open(req, fi) == -ENOENT) {
		free(h->status);
		free(h);
	}
}

static struct control_handle *file_control_of(struct fuse_file_info *fi)
{
	return (struct control_handle *)(uintptr_t)fi->fh;
}

static void file_control_read(fuse_req_t req, size_t size, off_t off,
			      struct fuse_file_info *fi)
{
	struct control_handle *h = file_control_of(fi);
	char *copy;

	if ((size_t)off >= h->len)
		size = 0;
	else if (size > h->len - off)
		size = h->len - off;
	/* A release may free h as soon as the reply is out, while the reply
	 * call may still look at its buffer: reply from our own copy. */
	copy = malloc(size ? size : 1);
	if (!copy) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if (size)
		memcpy(copy, h->status + off, size);
	fuse_reply_buf(req, copy, size);
	free(copy);
}

static void file_control_write(fuse_req_t req, const char *buf, size_t size)
{
	int ret = control_command(qfs_of(req)->ctl, buf, size);

	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_write(req, size);
}

static void file_control_release(fuse_req_t req, struct fuse_file_info *fi)
{
	struct control_handle *h = file_control_of(fi);

	free(h->status);
	free(h);
	fuse_reply_err(req, 0);
}

void qfs_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	conn->max_write = QFS_MAX_IO;
	conn->max_background = QFS_MAX_BACKGROUND;
	conn->congestion_threshold = QFS_MAX_BACKGROUND * 3 / 4;
	/* Cached writes would be acknowledged before any child took them. */
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
	if (conn->capable & FUSE_CAP_ASYNC_DIO)
		conn->want |= FUSE_CAP_ASYNC_DIO;
}

/* The inbound mount of a secondary has no .control: it is the primary's
 * way in, not the operator's. */
bool qfs_control_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct tree_entry e;

	if (parent != TREE_ROOT_INO || strcmp(name, ".control") != 0 ||
	    qfs_of(req)->inbound)
		return false;
	e.ino = QFS_CONTROL_INO;
	e.attr = control_attr(qfs_of(req));
	reply_entry(req, 0, &e);
	return true;
}

bool qfs_control_getattr(fuse_req_t req, fuse_ino_t ino)
{
	struct stat st;

	if (!is_control(ino))
		return false;
	st = control_attr(qfs_of(req));
	reply_attr(req, 0, &st);
	return true;
}

bool qfs_control_setattr(fuse_req_t req, fuse_ino_t ino, int to_set)
{
	struct stat st;

	if (!is_control(ino))
		return false;
	/* `echo cmd > .control` truncates first: nothing to do. */
	st = control_attr(qfs_of(req));
	reply_attr(req,
		   to_set & ~(FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_MTIME |
			      FUSE_SET_ATTR_MTIME_NOW | FUSE_SET_ATTR_CTIME)
			   ? -EPERM
			   : 0,
		   &st);
	return true;
}

bool qfs_control_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (!is_control(ino))
		return false;
	file_control_open(req, fi);
	return true;
}

bool qfs_control_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	if (!is_control(ino))
		return false;
	file_control_read(req, size, off, fi);
	return true;
}

bool qfs_control_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
		       size_t size)
{
	if (!is_control(ino))
		return false;
	file_control_write(req, buf, size);
	return true;
}

bool qfs_control_release(fuse_req_t req, fuse_ino_t ino,
			 struct fuse_file_info *fi)
{
	if (!is_control(ino))
		return false;
	file_control_release(req, fi);
	return true;
}

/* On a secondary's inbound mount, a change of names must be allowed
 * now (replication.h): true once the refusal is sent. */
static bool refuse_inbound(fuse_req_t req)
{
	struct secondary *in = qfs_of(req)->inbound;
	int ret = in ? inbound_may_change(in) : 0;

	if (!ret)
		return false;
	fuse_reply_err(req, -ret);
	return true;
}

/* A name about to appear: on a secondary's inbound mount the
 * checkpoint's tree must not see it (replication.h). 0 to go on; then
 * named() after the change. */
static int naming(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct secondary *in = qfs_of(req)->inbound;

	return in ? inbound_naming(in, parent, name) : 0;
}

static void named(fuse_req_t req)
{
	if (qfs_of(req)->inbound)
		inbound_named(qfs_of(req)->inbound);
}

static void qfs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct tree_entry e;

	if (qfs_control_lookup(req, parent, name) ||
	    qfs_copies_lookup(req, parent, name))
		return;
	reply_entry(req, tree_lookup(tree_of(req), parent, name, &e), &e);
}

void qfs_forget_each(fuse_req_t req, size_t count,
		     const struct fuse_forget_data *forgets,
		     void (*forget)(fuse_req_t req, uint64_t ino, uint64_t n))
{
	for (size_t i = 0; i < count; i++)
		if (!is_control(forgets[i].ino))
			forget(req, forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

static void tree_forget_one(fuse_req_t req, uint64_t ino, uint64_t n)
{
	if (!qfs_copies_forget(req, ino, n))
		tree_forget(tree_of(req), ino, n);
}

static void qfs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	struct fuse_forget_data one = {.ino = ino, .nlookup = nlookup};

	qfs_forget_each(req, 1, &one, tree_forget_one);
}

static void qfs_forget_multi(fuse_req_t req, size_t count,
			     struct fuse_forget_data *forgets)
{
	qfs_forget_each(req, count, forgets, tree_forget_one);
}

static void qfs_getattr(fuse_req_t req, fuse_ino_t ino,
			struct fuse_file_info *fi)
{
	struct stat st;

	(void)fi;
	if (qfs_control_getattr(req, ino) || qfs_copies_getattr(req, ino))
		return;
	reply_attr(req, tree_getattr(tree_of(req), ino, &st), &st);
}

int qfs_setattr_flags(int to_set)
{
	static const struct {
		int fuse, tree;
	} map[] = {
		{FUSE_SET_ATTR_MODE, TREE_SET_MODE},
		{FUSE_SET_ATTR_UID, TREE_SET_UID},
		{FUSE_SET_ATTR_GID, TREE_SET_GID},
		{FUSE_SET_ATTR_SIZE, TREE_SET_SIZE},
		{FUSE_SET_ATTR_ATIME, TREE_SET_ATIME},
		{FUSE_SET_ATTR_MTIME, TREE_SET_MTIME},
		{FUSE_SET_ATTR_ATIME_NOW, TREE_SET_ATIME_NOW},
		{FUSE_SET_ATTR_MTIME_NOW, TREE_SET_MTIME_NOW},
		{FUSE_SET_ATTR_CTIME, TREE_SET_CTIME},
	};
	int out = 0;

	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (to_set & map[i].fuse)
			out |= map[i].tree;
	return out;
}

static void qfs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
			int to_set, struct fuse_file_info *fi)
{
	struct secondary *in = qfs_of(req)->inbound;
	struct tree_file *f = fi ? file_of(fi) : NULL;
	struct stat st;
	int ret;

	if (qfs_control_setattr(req, ino, to_set) ||
	    qfs_copies_refuse(req, ino))
		return;
	to_set = qfs_setattr_flags(to_set);
	ret = in ? inbound_setattr(in, ino, f, attr, to_set, &st)
		 : tree_setattr(tree_of(req), ino, f, attr, to_set, &st);
	reply_attr(req, ret, &st);
}

static void qfs_readlink(fuse_req_t req, fuse_ino_t ino)
{
	char buf[PATH_MAX + 1];
	ssize_t len;

	if (refuse_control(req, ino, EINVAL) || qfs_copies_readlink(req, ino))
		return;
	len = tree_readlink(tree_of(req), ino, buf, sizeof(buf));
	if (len == (ssize_t)sizeof(buf))
		len = -ENAMETOOLONG;
	if (len < 0) {
		fuse_reply_err(req, (int)-len);
		return;
	}
	buf[len] = '\0';
	fuse_reply_readlink(req, buf);
}

static void qfs_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
		      mode_t mode, dev_t rdev)
{
	struct tree_caller who = caller_of(req);
	struct tree_entry e;
	int ret;

	if (qfs_copies_refuse(req, parent))
		return;
	ret = naming(req, parent, name);

	if (!ret) {
		ret = tree_mknod(tree_of(req), parent, name, mode, rdev, &who,
				 &e);
		named(req);
	}
	reply_entry(req, ret, &e);
}

static void qfs_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
		      mode_t mode)
{
	struct tree_caller who = caller_of(req);
	struct tree_entry e;
	int ret;

	if (qfs_copies_refuse(req, parent))
		return;
	ret = naming(req, parent, name);

	if (!ret) {
		ret = tree_mkdir(tree_of(req), parent, name, mode, &who, &e);
		named(req);
	}
	reply_entry(req, ret, &e);
}

static void qfs_symlink(fuse_req_t req, const char *link, fuse_ino_t parent,
			const char *name)
{
	struct tree_caller who = caller_of(req);
	struct tree_entry e;
	int ret;

	if (qfs_copies_refuse(req, parent))
		return;
	ret = naming(req, parent, name);

	if (!ret) {
		ret = tree_symlink(tree_of(req), link, parent, name, &who, &e);
		named(req);
	}
	reply_entry(req, ret, &e);
}

static void qfs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
		     const char *newname)
{
	struct tree_entry e;
	int ret;

	if (refuse_control(req, ino, EPERM) || qfs_copies_refuse(req, ino) ||
	    qfs_copies_refuse(req, newparent))
		return;
	ret = naming(req, newparent, newname);
	if (!ret) {
		ret = tree_link(tree_of(req), ino, newparent, newname, &e);
		named(req);
	}
	reply_entry(req, ret, &e);
}

static void qfs_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct secondary *in = qfs_of(req)->inbound;

	if (qfs_copies_refuse(req, parent))
		return;
	fuse_reply_err(req, -(in ? inbound_remove(in, parent, name, false)
				 : tree_unlink(tree_of(req), parent, name)));
}

static void qfs_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct secondary *in = qfs_of(req)->inbound;

	if (qfs_copies_refuse(req, parent))
		return;
	fuse_reply_err(req, -(in ? inbound_remove(in, parent, name, true)
				 : tree_rmdir(tree_of(req), parent, name)));
}

static void qfs_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		       fuse_ino_t newparent, const char *newname,
		       unsigned int flags)
{
	struct secondary *in = qfs_of(req)->inbound;

	if (qfs_copies_refuse(req, parent) || qfs_copies_refuse(req, newparent))
		return;
	fuse_reply_err(req, -(in ? inbound_rename(in, parent, name, newparent,
						  newname, flags)
				 : tree_rename(tree_of(req), parent, name,
					       newparent, newname, flags)));
}

/* An open with O_TRUNC on a secondary's inbound mount truncates first,
 * through the copy-before-write of a truncate, then opens plainly. */
static int inbound_truncating_open(fuse_req_t req, fuse_ino_t ino,
				   struct fuse_file_info *fi)
{
	struct secondary *in = qfs_of(req)->inbound;
	struct stat attr = {.st_size = 0}, st;
	int ret;

	if (!in || !(fi->flags & O_TRUNC))
		return 0;
	ret = inbound_setattr(in, ino, NULL, &attr, TREE_SET_SIZE, &st);
	if (!ret)
		fi->flags &= ~O_TRUNC;
	return ret;
}

static void qfs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct open_reply out = {0};
	struct tree_file *f;
	int ret;

	if (is_control(ino)) {
		file_control_open(req, fi);
		return;
	}
	if (qfs_copies_open(req, ino, fi))
		return;
	ret = inbound_truncating_open(req, ino, fi);
	if (!ret)
		ret = tree_open(tree_of(req), ino, fi->flags, &f);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	out.fh = (uintptr_t)f;
	out.open_flags = QFS_FOPEN_DIRECT_IO | QFS_FOPEN_PARALLEL_DIRECT_WRITES;
	if (fuse_reply_buf(req, (const char *)&out, sizeof(out)) == -ENOENT)
		tree_release(tree_of(req), f); /* the open was interrupted */
}

static void qfs_create(fuse_req_t req, fuse_ino_t parent, const char *name,
		       mode_t mode, struct fuse_file_info *fi)
{
	struct tree_caller who = caller_of(req);
	struct fuse_entry_param p = {0};
	struct tree_entry e;
	struct tree_file *f;
	int ret;

	if (qfs_copies_refuse(req, parent))
		return;
	ret = naming(req, parent, name);
	if (!ret) {
		ret = tree_create(tree_of(req), parent, name, mode, fi->flags,
				  &who, &e, &f);
		named(req);
	}
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	p.ino = e.ino;
	p.attr = e.attr;
	p.attr_timeout = p.entry_timeout = qfs_of(req)->timeout;
	fi->fh = (uintptr_t)f;
	fi->direct_io = 1;
	if (fuse_reply_create(req, &p, fi) == -ENOENT) {
		tree_release(tree_of(req), f);
		tree_forget(tree_of(req), e.ino, 1);
	}
}

/* stats_done(), and whether the request came through io_uring. */
static void count_done(enum stats_op op, uint64_t start, bool failed,
		       uint64_t bytes)
{
	stats_done(op, start, failed, bytes);
	if (transport_serving())
		stats_via_ring(op);
}

/* The bytes an answer holds (less than asked for at the end of a file). */
static uint64_t iov_bytes(const struct tree_answer *r)
{
	uint64_t n = 0;

	for (int i = 0; i < r->iovcnt; i++)
		n += r->iov[i].iov_len;
	return n;
}

static void qfs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	struct qfs *q = qfs_of(req);
	struct tree_answer r;
	uint64_t start;
	int ret;

	if (is_control(ino)) {
		file_control_read(req, size, off, fi);
		return;
	}
	if (qfs_copies_read(req, ino, size, off, fi))
		return;
	start = stats_start();
	ret = tree_read(q->tree, file_of(fi), off, size, &r);
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_iov(req, r.iov, r.iovcnt);
	count_done(STATS_READ, start, ret != 0, ret ? 0 : iov_bytes(&r));
	tree_answer_release(&r);
	if (tree_fatal(q->tree))
		fuse_session_exit(q->se); /* blkverify: stop like QEMU */
}

static void qfs_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
		      size_t size, off_t off, struct fuse_file_info *fi)
{
	struct tree_caller who = caller_of(req);
	uint64_t start = stats_start();
	ssize_t ret;

	if (is_control(ino)) {
		file_control_write(req, buf, size);
		return;
	}
	if (qfs_copies_refuse(req, ino))
		return;
	if (qfs_of(req)->inbound)
		ret = inbound_write(qfs_of(req)->inbound, file_of(fi), buf,
				    size, off, &who);
	else
		ret = tree_write(tree_of(req), file_of(fi), buf, size, off,
				 &who);
	if (ret < 0)
		fuse_reply_err(req, (int)-ret);
	else
		fuse_reply_write(req, (size_t)ret);
	count_done(STATS_WRITE, start, ret < 0, ret < 0 ? 0 : (uint64_t)ret);
}

/* A flush or fsync's answer, counted as a flush. */
static void reply_flush(fuse_req_t req, uint64_t start, int ret)
{
	fuse_reply_err(req, -ret);
	count_done(STATS_FLUSH, start, ret != 0, 0);
}

static void qfs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	uint64_t start = stats_start();

	if (is_control(ino))
		fuse_reply_err(req, 0);
	else if (!qfs_copies_nothing(req, ino))
		reply_flush(req, start, tree_flush(tree_of(req), file_of(fi)));
}

static void qfs_release(fuse_req_t req, fuse_ino_t ino,
			struct fuse_file_info *fi)
{
	if (is_control(ino)) {
		file_control_release(req, fi);
		return;
	}
	if (qfs_copies_release(req, ino, fi))
		return;
	tree_release(tree_of(req), file_of(fi));
	fuse_reply_err(req, 0);
}

static void qfs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
		      struct fuse_file_info *fi)
{
	uint64_t start = stats_start();

	if (is_control(ino))
		fuse_reply_err(req, 0);
	else if (!qfs_copies_nothing(req, ino))
		reply_flush(req, start,
			    tree_fsync(tree_of(req), file_of(fi), datasync));
}

static void qfs_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off,
			  off_t len, struct fuse_file_info *fi)
{
	struct secondary *in = qfs_of(req)->inbound;

	if (refuse_control(req, ino, EPERM) || qfs_copies_refuse(req, ino))
		return;
	fuse_reply_err(req,
		       -(in ? inbound_fallocate(in, file_of(fi), mode, off, len)
			    : tree_fallocate(tree_of(req), file_of(fi), mode,
					     off, len)));
}

static void qfs_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		      struct fuse_file_info *fi)
{
	off_t ret;

	if ((whence != SEEK_DATA && whence != SEEK_HOLE) || is_control(ino)) {
		fuse_reply_err(req, EINVAL); /* the kernel handles the rest */
		return;
	}
	if (qfs_copies_lseek(req, ino, off, whence, fi))
		return;
	ret = tree_lseek(tree_of(req), file_of(fi), off, whence);
	if (ret < 0)
		fuse_reply_err(req, (int)-ret);
	else
		fuse_reply_lseek(req, ret);
}

static void qfs_opendir(fuse_req_t req, fuse_ino_t ino,
			struct fuse_file_info *fi)
{
	struct tree_dir *d;
	int ret;

	if (refuse_control(req, ino, ENOTDIR) ||
	    qfs_copies_opendir(req, ino, fi))
		return;
	ret = tree_opendir(tree_of(req), ino, &d);
	if (ret) {
		fuse_reply_err(req, -ret);
		return;
	}
	fi->fh = (uintptr_t)d;
	if (fuse_reply_open(req, fi) == -ENOENT)
		tree_releasedir(d);
}

static bool tree_dir_at(const void *dir, size_t i, const char **name,
			struct stat *st)
{
	return tree_dir_entry(dir, i, name, st);
}

static void qfs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			struct fuse_file_info *fi)
{
	if (qfs_copies_readdir(req, ino, size, off, fi))
		return;
	qfs_reply_dir(req, size, off, tree_dir_at, (void *)(uintptr_t)fi->fh);
}

static void qfs_releasedir(fuse_req_t req, fuse_ino_t ino,
			   struct fuse_file_info *fi)
{
	if (qfs_copies_releasedir(req, ino, fi))
		return;
	tree_releasedir((struct tree_dir *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

static void qfs_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync,
			 struct fuse_file_info *fi)
{
	if (refuse_control(req, ino, ENOTDIR) || qfs_copies_nothing(req, ino))
		return;
	(void)fi;
	fuse_reply_err(req, -tree_fsyncdir(tree_of(req), ino, datasync));
}

static void qfs_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs st;
	int ret;

	if (qfs_copies_statfs(req, ino))
		return;
	ret = tree_statfs(tree_of(req), &st);
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_statfs(req, &st);
}

static void qfs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			 const char *value, size_t size, int flags)
{
	if (refuse_control(req, ino, EPERM) || qfs_copies_refuse(req, ino) ||
	    refuse_inbound(req))
		return;
	fuse_reply_err(req, -tree_setxattr(tree_of(req), ino, name, value, size,
					   flags));
}

/* get and list share the size protocol: 0 asks for the length. */
static void reply_xattr(fuse_req_t req, ssize_t ret, const char *buf,
			size_t size)
{
	if (ret < 0)
		fuse_reply_err(req, (int)-ret);
	else if (size == 0)
		fuse_reply_xattr(req, (size_t)ret);
	else
		fuse_reply_buf(req, buf, (size_t)ret);
}

static void qfs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			 size_t size)
{
	char *buf;
	ssize_t ret;

	if (refuse_control(req, ino, ENODATA) ||
	    qfs_copies_getxattr(req, ino, name, size))
		return;
	buf = size ? malloc(size) : NULL;
	ret = size && !buf ? -ENOMEM
			   : tree_getxattr(tree_of(req), ino, name, buf, size);
	reply_xattr(req, ret, buf, size);
	free(buf);
}

static void qfs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	char *buf;
	ssize_t ret;

	if (is_control(ino)) {
		reply_xattr(req, 0, NULL, size); /* no attributes */
		return;
	}
	if (qfs_copies_listxattr(req, ino, size))
		return;
	buf = size ? malloc(size) : NULL;
	ret = size && !buf ? -ENOMEM
			   : tree_listxattr(tree_of(req), ino, buf, size);
	reply_xattr(req, ret, buf, size);
	free(buf);
}

static void qfs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	if (refuse_control(req, ino, EPERM) || qfs_copies_refuse(req, ino) ||
	    refuse_inbound(req))
		return;
	fuse_reply_err(req, -tree_removexattr(tree_of(req), ino, name));
}

static const struct fuse_lowlevel_ops qfs_ops = {
	.init = qfs_init,
	.lookup = qfs_lookup,
	.forget = qfs_forget,
	.forget_multi = qfs_forget_multi,
	.getattr = qfs_getattr,
	.setattr = qfs_setattr,
	.readlink = qfs_readlink,
	.mknod = qfs_mknod,
	.mkdir = qfs_mkdir,
	.symlink = qfs_symlink,
	.link = qfs_link,
	.unlink = qfs_unlink,
	.rmdir = qfs_rmdir,
	.rename = qfs_rename,
	.open = qfs_open,
	.create = qfs_create,
	.read = qfs_read,
	.write = qfs_write,
	.flush = qfs_flush,
	.release = qfs_release,
	.fsync = qfs_fsync,
	.fallocate = qfs_fallocate,
	.lseek = qfs_lseek,
	.opendir = qfs_opendir,
	.readdir = qfs_readdir,
	.releasedir = qfs_releasedir,
	.fsyncdir = qfs_fsyncdir,
	.statfs = qfs_statfs,
	.setxattr = qfs_setxattr,
	.getxattr = qfs_getxattr,
	.listxattr = qfs_listxattr,
	.removexattr = qfs_removexattr,
};

/* ---- command line ---- */

/* What the command line gives beyond the config's raw strings. */
struct cmdline {
	struct config_args args;
	bool fsname_given; /* -o fsname=: the operator's name for the mount */
	char *children;	   /* what args.path[] points into once split */
};

enum { KEY_FSNAME = 1, KEY_WITNESS };

#define QFS_OPT(t, p)                                                          \
	{                                                                      \
		t, offsetof(struct cmdline, args.p), 1                         \
	}
static const struct fuse_opt qfs_opts[] = {
	QFS_OPT("threshold=%s", threshold),
	QFS_OPT("read-pattern=%s", read_pattern),
	QFS_OPT("threads=%s", threads),
	QFS_OPT("log=%s", log),
	QFS_OPT("io-timeout=%s", io_timeout),
	QFS_OPT("scrub-rate=%s", scrub_rate),
	QFS_OPT("control-socket=%s", control_socket),
	QFS_OPT("sync-from=%s", sync_from),
	QFS_OPT("replication=%s", replication),
	QFS_OPT("replication", replication_bare),
	QFS_OPT("active=%s", active),
	QFS_OPT("hidden=%s", hidden),
	QFS_OPT("inbound=%s", inbound),
	QFS_OPT("layer-sync=%s", layer_sync),
	QFS_OPT("layer-limit=%s", layer_limit),
	QFS_OPT("layer-cluster=%s", layer_cluster),
	QFS_OPT("events=%s", events),
	QFS_OPT("event-program=%s", event_program),
	QFS_OPT("event-program-timeout=%s", event_program_timeout),
	QFS_OPT("quarantine-limit=%s", quarantine_limit),
	QFS_OPT("rewrite-corrupted", rewrite_corrupted),
	QFS_OPT("blkverify", blkverify),
	QFS_OPT("uring=%s", uring),
	FUSE_OPT_KEY("fsname=", KEY_FSNAME),
	FUSE_OPT_KEY("witness=", KEY_WITNESS),
	FUSE_OPT_END,
};

static int collect_path(void *data, const char *arg, int key,
			struct fuse_args *outargs)
{
	struct cmdline *cl = data;
	struct config_args *a = &cl->args;

	(void)outargs;
	if (key == KEY_FSNAME)
		cl->fsname_given = true;
	if (key == KEY_WITNESS) {
		a->witness_twice |= a->witness != NULL;
		if (!a->witness)
			a->witness = strdup(arg + strlen("witness="));
		return 0;
	}
	if (key != FUSE_OPT_KEY_NONOPT)
		return 1; /* libfuse's own option: keep it */
	if (a->npaths == CHILDREN_MAX + 2)
		a->too_many_paths = true;
	else
		a->path[a->npaths++] = arg;
	return 0;
}

static void usage(const char *prog)
{
	printf("usage: %s [options] CHILD[:CHILD...]... MOUNTPOINT\n\n"
	       "quorumfs options:\n"
	       "    -o threshold=N         votes a read needs and children a "
	       "write needs\n"
	       "                           (default: a majority)\n"
	       "    -o read-pattern=P      quorum (vote every read) or fifo "
	       "(first healthy child)\n"
	       "    -o rewrite-corrupted   repair children that lose a read "
	       "vote\n"
	       "    -o blkverify           two children, threshold 2: stop on "
	       "any difference\n"
	       "    -o witness=PATH        a child holding the digests of the "
	       "data, not the data\n"
	       "    -o log=PATH            JSON event log (SIGHUP reopens "
	       "it)\n"
	       "    -o events=syslog       every event to syslog too\n"
	       "    -o event-program=PATH  run PATH EVENT MOUNTPOINT for each "
	       "event, its JSON\n"
	       "                           on stdin (killed after "
	       "event-program-timeout=S,\n"
	       "                           default %d)\n"
	       "    -o threads=N           I/O pool size (default %d)\n"
	       "    -o io-timeout=S        seconds a child may take to answer "
	       "(default %d,\n"
	       "                           0: wait for ever)\n"
	       "    -o scrub-rate=N        MiB/s a scrub reads at, 0 unlimited "
	       "(default %d)\n"
	       "    -o quarantine-limit=SIZE bytes each child keeps of what "
	       "repairs\n"
	       "                           overwrote (default 1G, 0: "
	       "off)\n"
	       "    -o sync-from=CHILD     first mount: fill the other "
	       "children "
	       "from CHILD\n"
	       "    -o control-socket=PATH the operator's unix socket, or "
	       "none\n"
	       "                           (default "
	       "/run/quorumfs/MOUNT.sock)\n"
	       "    -o uring=off|auto|on   FUSE requests through io_uring: "
	       "never (default),\n"
	       "                           when the kernel offers it, or "
	       "always\n\n",
	       prog, CONFIG_DEFAULT_EVENT_PROGRAM_TIMEOUT,
	       CONFIG_DEFAULT_THREADS, CONFIG_DEFAULT_IO_TIMEOUT,
	       CONFIG_DEFAULT_SCRUB_RATE);
	fuse_cmdline_help();
	fuse_lowlevel_help();
}

/*
 * libfuse's messages are the daemon's own: one prefix for all, and one
 * line each. libfuse builds some lines from several calls (the list of
 * unknown options), so the pieces wait here, per thread, until the
 * newline.
 */
static void log_line(enum fuse_log_level level, const char *fmt, va_list ap)
{
	static _Thread_local char line[1024];
	static _Thread_local size_t used;
	const char *text = line;

	(void)level;
	vsnprintf(line + used, sizeof(line) - used, fmt, ap);
	used = strlen(line);
	if (used < sizeof(line) - 1 && (!used || line[used - 1] != '\n'))
		return;
	if (strncmp(text, "fuse: ", 6) == 0)
		text += 6;
	fprintf(stderr, "quorumfs: %s%s", text,
		line[used - 1] == '\n' ? "" : "\n");
	used = 0;
	line[0] = '\0';
}

/* ---- signals ---- */

static struct event_log *hup_log; /* the log SIGHUP reopens */

static void on_sighup(int sig)
{
	(void)sig;
	event_log_request_reopen(hup_log);
}

static void set_sighup(bool reopen)
{
	struct sigaction sa = {0};

	sa.sa_handler = reopen ? on_sighup : SIG_IGN;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGHUP, &sa, NULL);
}

/* ---- main ---- */

static int run_loop(struct fuse_session *se,
		    const struct fuse_cmdline_opts *opts)
{
	struct fuse_loop_config *lc;
	int ret;

	if (opts->singlethread)
		return fuse_session_loop(se);
	lc = fuse_loop_cfg_create();
	if (!lc)
		return -ENOMEM;
	fuse_loop_cfg_set_clone_fd(lc, opts->clone_fd);
	/* UINT_MAX means "not given": keep libfuse's defaults. */
	if (opts->max_threads != UINT_MAX)
		fuse_loop_cfg_set_max_threads(lc, opts->max_threads);
	if (opts->max_idle_threads != UINT_MAX)
		fuse_loop_cfg_set_idle_threads(lc, opts->max_idle_threads);
	ret = fuse_session_loop_mt(se, lc);
	fuse_loop_cfg_destroy(lc);
	return ret;
}

/* ---- a secondary's inbound mount ---- */

/* The inbound session's loop, on a thread of its own: the primary's
 * changes arrive there. It ends when the mount goes away, by the
 * operator's umount or at the end of the daemon. */
struct inbound {
	struct qfs q;
	const struct fuse_cmdline_opts *opts;
	pthread_t thread;
	bool mounted, running;
};

static int run_loop(struct fuse_session *se,
		    const struct fuse_cmdline_opts *opts);

static void *inbound_loop(void *arg)
{
	struct inbound *in = arg;

	secondary_inbound(in->q.inbound, true);
	run_loop(in->q.se, in->opts);
	secondary_inbound(in->q.inbound, false);
	return NULL;
}

/* A session of the tree's operations for inbound, with args's libfuse
 * options, mounted (still to be served). */
static int inbound_open(struct inbound *in, const struct fuse_args *args,
			const struct qfs *view, const char *path)
{
	struct fuse_args copy = FUSE_ARGS_INIT(0, NULL);
	int ret = 0;

	in->q = *view;
	in->q.inbound = view->secondary;
	in->q.secondary = NULL;
	in->q.timeout = 0; /* the view's own changes never show here, but a
			    * failover makes it read-only at once */
	for (int i = 0; i < args->argc && !ret; i++)
		ret = fuse_opt_add_arg(&copy, args->argv[i]);
	if (!ret)
		in->q.se = fuse_session_new(&copy, &qfs_ops, sizeof(qfs_ops),
					    &in->q);
	fuse_opt_free_args(&copy);
	if (!in->q.se)
		return -1;
	in->mounted = fuse_session_mount(in->q.se, path) == 0;
	return in->mounted ? 0 : -1;
}

static void inbound_start(struct inbound *in,
			  const struct fuse_cmdline_opts *opts)
{
	in->opts = opts;
	in->running = pthread_create(&in->thread, NULL, inbound_loop, in) == 0;
}

static void inbound_close(struct inbound *in)
{
	if (!in->q.se)
		return;
	fuse_session_exit(in->q.se);
	if (in->mounted)
		fuse_session_unmount(in->q.se);
	if (in->running)
		pthread_join(in->thread, NULL);
	fuse_session_destroy(in->q.se);
	in->q.se = NULL;
}

/*
 * Serve until unmounted; returns the exit status. The threads start
 * after the detach, whose fork() would leave them behind, and the
 * process that was started exits only once they serve (daemon.h), so
 * mount(8) and systemd are told the truth.
 */
static int serve(const struct fuse_cmdline_opts *opts, struct qfs *q,
		 struct inbound *in)
{
	char err[512];
	int ret = 1;

	if (!opts->foreground && daemon_detach()) {
		perror("quorumfs: detaching");
		goto out;
	}
	if (chdir("/")) /* hold no directory busy */
		goto out;
	if (control_start(q->ctl, err, sizeof(err)) == 0 &&
	    transport_start(q->se, q->uring, err, sizeof(err)) == 0) {
		q->tree = control_tree(q->ctl);
		q->copies = control_copies(q->ctl);
		in->q.tree = q->tree;
		hup_log = control_log(q->ctl);
		set_sighup(hup_log != NULL);
		if (in->q.se)
			inbound_start(in, opts);
		daemon_ready();
		daemon_say(LOG_INFO, "serving %s", q->mountpoint);
		/* A signal number (SIGTERM, SIGINT: systemctl stop, ^C)
		 * ended it as orderly as an unmount; below 0 is an error. */
		ret = run_loop(q->se, opts) < 0 ? 1 : 0;
		daemon_notify("STOPPING=1");
		daemon_say(LOG_INFO, "unmounting %s", q->mountpoint);
		if (tree_fatal(q->tree))
			ret = 1; /* blkverify found a mismatch */
		set_sighup(false);
	} else {
		fprintf(stderr, "quorumfs: %s\n", err);
	}
out:
	inbound_close(in);
	fuse_session_unmount(q->se);
	transport_stop(); /* the unmount ended the rings' commands */
	return ret;
}

/*
 * Everything is checked before any child is touched: libfuse's own
 * options (fuse_session_new refuses unknown ones, in main), the command
 * line, and only then are the children's records read and written. A
 * typo in an fstab line must not enrol fresh directories into a set.
 */
static int start(struct qfs *q, const struct fuse_cmdline_opts *opts,
		 const struct config *cfg, const struct fuse_args *inbound_args)
{
	struct inbound in = {0};
	struct stat mount_st;
	char err[512];
	int ret = 1;

	if (stat(cfg->mountpoint, &mount_st)) {
		fprintf(stderr, "quorumfs: mountpoint '%s': %s\n",
			cfg->mountpoint, strerror(errno));
		return 1;
	}
	q->mountpoint = cfg->mountpoint;
	q->uring = cfg->uring == CONFIG_URING_ON    ? TRANSPORT_URING_ON
		   : cfg->uring == CONFIG_URING_OFF ? TRANSPORT_URING_OFF
						    : TRANSPORT_URING_AUTO;
	if (transport_check(q->uring, err, sizeof(err))) {
		fprintf(stderr, "quorumfs: %s\n", err);
		return 1;
	}
	if (control_open(cfg, &mount_st, &q->ctl, err, sizeof(err))) {
		fprintf(stderr, "quorumfs: %s\n", err);
		return 1;
	}
	q->secondary = control_secondary(q->ctl);
	if (q->secondary)
		q->timeout = 0; /* a checkpoint changes every name */
	if (q->secondary &&
	    inbound_open(&in, inbound_args, q, cfg->secondary.inbound)) {
		fprintf(stderr, "quorumfs: inbound '%s' cannot be mounted\n",
			cfg->secondary.inbound);
		goto out;
	}
	if (fuse_set_signal_handlers(q->se))
		goto out;
	if (fuse_session_mount(q->se, cfg->mountpoint) == 0)
		ret = serve(opts, q, &in);
	fuse_remove_signal_handlers(q->se);
out:
	inbound_close(&in);
	control_stop(q->ctl, ret == 0);
	return ret;
}

static int copy_args(const struct fuse_args *from, struct fuse_args *to)
{
	for (int i = 0; i < from->argc; i++)
		if (fuse_opt_add_arg(to, from->argv[i]))
			return -1;
	return 0;
}

/* libfuse's option parser allocated these. */
static void release_args(struct config_args *raw)
{
	free((char *)raw->threshold);
	free((char *)raw->read_pattern);
	free((char *)raw->threads);
	free((char *)raw->log);
	free((char *)raw->io_timeout);
	free((char *)raw->uring);
	free((char *)raw->scrub_rate);
	free((char *)raw->control_socket);
	free((char *)raw->sync_from);
	free((char *)raw->witness);
	free((char *)raw->replication);
	free((char *)raw->active);
	free((char *)raw->hidden);
	free((char *)raw->inbound);
	free((char *)raw->layer_sync);
	free((char *)raw->layer_limit);
	free((char *)raw->quarantine_limit);
	free((char *)raw->layer_cluster);
	free((char *)raw->events);
	free((char *)raw->event_program);
	free((char *)raw->event_program_timeout);
}

/* Add -o fsname=VALUE with libfuse's escapes for ',' and '\'. */
static int add_fsname(struct fuse_args *args, const char *value)
{
	char opt[2 * CONFIG_SOURCE_MAX + 16];
	size_t n = snprintf(opt, sizeof(opt), "-ofsname=");

	for (const char *p = value; *p && n + 3 < sizeof(opt); p++) {
		if (*p == ',' || *p == '\\')
			opt[n++] = '\\';
		opt[n++] = *p;
	}
	opt[n] = '\0';
	return fuse_opt_add_arg(args, opt);
}

/*
 * The options every mount has: the type shows as fuse.quorumfs, the
 * kernel checks permissions, and unless the operator named the mount
 * (-o fsname=) its source is the set, as an fstab line spells it.
 */
static int add_fixed_options(struct fuse_args *args, const struct cmdline *cl)
{
	char source[CONFIG_SOURCE_MAX];

	if (!cl->fsname_given && cl->args.npaths > 1 &&
	    config_join_source(&cl->args, source, sizeof(source)) >= 0 &&
	    add_fsname(args, source))
		return -1;
	return fuse_opt_add_arg(args, "-osubtype=quorumfs,default_permissions");
}

static void print_version(void)
{
	printf("quorumfs %s\nlibfuse %s\n", QFS_VERSION, fuse_pkgversion());
	fflush(stdout);
	fuse_lowlevel_version(); /* the kernel interface it speaks */
}

/*
 * The command line, parsed, each child argument split at its colons (an
 * fstab line's one source names the whole set). Returns 1 when it asked
 * for help or the version (printed), -1 on an error (printed), else 0.
 */
static int parse_cmdline(struct fuse_args *args, struct cmdline *cl,
			 struct fuse_cmdline_opts *opts, const char *prog)
{
	char err[512];

	if (fuse_opt_parse(args, cl, qfs_opts, collect_path) ||
	    fuse_parse_cmdline(args, opts))
		return -1;
	if (opts->show_help)
		usage(prog);
	else if (opts->show_version)
		print_version();
	if (opts->show_help || opts->show_version)
		return 1;
	if (config_split_source(&cl->args, &cl->children, err, sizeof(err))) {
		fprintf(stderr, "quorumfs: %s\n", err);
		return -1;
	}
	return 0;
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts opts = {0};
	struct qfs q = {.timeout = 1.0, .owner = geteuid(), .group = getegid()};
	struct fuse_args inbound_args = FUSE_ARGS_INIT(0, NULL);
	struct cmdline cl = {0};
	struct config cfg;
	char err[512];
	int ret;

	fuse_set_log_func(log_line);
	/* Events to syslog (events=syslog) and, once detached, the
	 * daemon's own messages, under one ident with the pid. */
	openlog("quorumfs", LOG_PID, LOG_DAEMON);
	ret = parse_cmdline(&args, &cl, &opts, argv[0]);
	if (ret) {
		ret = ret > 0 ? 0 : 1;
		goto out;
	}
	ret = 1;
	/* libfuse's options first: an unknown one is named even when the
	 * paths are missing too. A secondary's inbound session gets the same
	 * ones; the first session consumes them. */
	if (add_fixed_options(&args, &cl) == 0 &&
	    (!cl.args.replication || copy_args(&args, &inbound_args) == 0))
		q.se = fuse_session_new(
			&args, cl.args.replication ? &view_ops : &qfs_ops,
			sizeof(qfs_ops), &q);
	if (!q.se)
		goto out;
	if (config_from_args(&cl.args, &cfg, err, sizeof(err)) == 0) {
		/* Modes arrive with the caller's umask applied. */
		umask(0);
		ret = start(&q, &opts, &cfg, &inbound_args);
		config_release(&cfg);
	} else {
		fprintf(stderr, "quorumfs: %s\n", err);
	}
	fuse_session_destroy(q.se);
out:
	daemon_finish();
	release_args(&cl.args);
	free(cl.children);
	free(opts.mountpoint);
	fuse_opt_free_args(&inbound_args);
	fuse_opt_free_args(&args);
	return ret;
}
