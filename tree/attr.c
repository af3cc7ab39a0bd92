/*
 * Attributes: getattr, setattr, readlink, statfs and extended attributes.
 *
 * Attributes come from one child: for regular files the size is voted
 * (vote_sizes) and the attributes are those of a child in the winning
 * version; directory sizes differ between file systems and are not
 * voted. Changes go to every child and follow the write rule. Values read back
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

struct stat_op {
	struct node_arg a;
	struct stat st[CHILDREN_MAX];
};

static int witness_stat(int pathfd, struct stat *st);

static int stat_body(struct child_request *rq, int i)
{
	struct stat_op *op = rq->arg;
	int fd = tree_node_fd(op->a.tree, op->a.node,
			      child_slot(rq->view->child[i]));

	if (fd < 0)
		return fd;
	if (rq->view->witness[i] && S_ISREG(op->a.node->type))
		return witness_stat(fd, &op->st[i]);
	return child_result(fstatat(fd, "", &op->st[i],
				    AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
}

/* A witness's regular file votes on the size its header keeps. */
static int witness_stat(int pathfd, struct stat *st)
{
	int fd = witness_open(pathfd, O_RDONLY), ret;
	int64_t size;

	if (fd < 0)
		return fd;
	ret = child_result(fstat(fd, st));
	if (!ret)
		ret = witness_size(fd, &size);
	if (!ret)
		st->st_size = size;
	close(fd);
	return ret;
}

/* The attributes come from a data child of the winning version: a
 * witness's blocks and times are its digest list's. */
static int attr_source(const struct child_view *view, const int *index,
		       const int *error, int nb, const struct vote_result *r)
{
	if (!view->witness[index[r->winner]])
		return index[r->winner];
	for (int k = 0; k < nb; k++)
		if (!error[k] && !r->loser[k] && !view->witness[index[k]])
			return index[k];
	return index[r->winner];
}

/*
 * Report what the size vote found: children that could not be asked,
 * children whose size lost, and no quorum at all. Sizes are not a byte
 * range, so the reports carry sector 0, count 0.
 */
static void attr_report(struct tree *tree, const struct child_view *view,
			struct tree_node *n, const int *error, const int *index,
			int nb, const struct vote_result *r)
{
	char *path = tree_node_path(tree, n);
	const char *file = path ? path : "";

	for (int k = 0; k < nb; k++) {
		struct child *c = view->child[index[k]];

		if (error[k] || (!r->error && r->loser[k])) {
			child_count_error(c, CHILD_OP_READ);
			event_log_report_bad(tree->log, "read", child_name(c),
					     0, 0, error[k], file);
		}
	}
	if (r->error)
		event_log_quorum_failure(tree->log, file, 0, 0);
	free(path);
}

/* Voted attributes from per-child stats. Directory sizes differ between
 * file systems, so only a regular file's size is voted. */
static int attr_from_stats(struct tree *tree, const struct child_request *rq,
			   struct tree_node *n, const struct stat *st,
			   struct stat *out)
{
	int index[CHILDREN_MAX], error[CHILDREN_MAX], nb = 0;
	const struct child_view *view = rq->view;
	bool sized = S_ISREG(n->type);
	int64_t size[CHILDREN_MAX];
	struct vote_result r;

	for (int i = 0; i < view->n; i++) {
		if (!view->votes[i])
			continue;
		index[nb] = i;
		error[nb] = rq->ret[i];
		size[nb++] = st[i].st_size;
	}
	if (nb == 0)
		return -EIO;
	vote_sizes(size, error, nb, sized ? view->threshold : 1, sized, &r);
	if (vote_refused_by_all(error, nb))
		return r.error;
	if (r.error || !r.unanimous || r.successes < nb)
		attr_report(tree, view, n, error, index, nb, &r);
	if (!r.error)
		*out = st[attr_source(view, index, error, nb, &r)];
	return r.error;
}

int tree_attr_vote(struct tree *tree, const struct child_view *view,
		   struct tree_node *n, struct stat *st)
{
	struct child_request *rq =
		node_request(tree, view, n, sizeof(struct stat_op), NULL);
	struct stat_op *op;
	int ret;

	if (!rq)
		return -ENOMEM;
	op = rq->arg;
	tree_fanout(tree, rq, stat_body);
	ret = attr_from_stats(tree, rq, n, op->st, st);
	child_request_put(rq);
	if (!ret) {
		st->st_ino = n->key_ino;
		if (n == &tree->table.root)
			st->st_ino = TREE_ROOT_INO;
		atomic_store(&n->setid,
			     S_ISREG(st->st_mode) &&
				     (st->st_mode & (S_ISUID | S_ISGID)));
	}
	return ret;
}

/* The voted attributes of a node, consistent with in-flight writes. */
int node_attr(struct tree *tree, const struct child_view *view,
	      struct tree_node *n, struct stat *st)
{
	struct range_claim claim;
	int ret;

	if (!S_ISREG(n->type))
		return tree_attr_vote(tree, view, n, st);
	/* A write that grows the file must not be seen half applied. */
	range_lock(&n->ranges, &claim, 0, RANGE_END, false);
	ret = tree_attr_vote(tree, view, n, st);
	if (!ret)
		atomic_store(&n->size_hint, st->st_size);
	range_unlock(&n->ranges, &claim);
	return ret;
}

int tree_getattr(struct tree *tree, uint64_t ino, struct stat *st)
{
	const struct child_view *view = children_view_get(tree->set);
	int ret = node_attr(tree, view, tree_node(tree, ino), st);

	children_view_put(view);
	return ret;
}

/* A setattr sent to every child; the request holds the file, if any. */
struct setattr_op {
	struct node_arg a;
	struct tree_file *file;
	struct stat attr; /* the caller's, copied */
	int to_set;
	/* A witness's new last partial block, when the size changes; wret:
	 * why it could not be computed. */
	unsigned char last[WITNESS_DIGEST];
	bool has_last;
	int wret;
};

/* A size change on a witness: its digest list follows. */
static int witness_resize(struct tree *tree, const struct setattr_op *op,
			  int slot, int pathfd)
{
	int ffd = op->file ? file_fd(tree, op->file, slot) : -1;
	int fd = ffd >= 0 ? ffd : witness_open(pathfd, O_RDWR), ret;

	if (op->wret || fd < 0)
		return op->wret ? op->wret : fd;
	ret = witness_truncate(fd, op->attr.st_size,
			       op->has_last ? op->last : NULL);
	if (fd != ffd)
		close(fd);
	return ret;
}

static int set_times(int fd, const struct setattr_op *op)
{
	struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT},
				 {.tv_nsec = UTIME_OMIT}};

	if (op->to_set & TREE_SET_ATIME)
		ts[0] = op->attr.st_atim;
	if (op->to_set & TREE_SET_MTIME)
		ts[1] = op->attr.st_mtim;
	if (op->to_set & TREE_SET_ATIME_NOW)
		ts[0].tv_nsec = UTIME_NOW;
	if (op->to_set & TREE_SET_MTIME_NOW)
		ts[1].tv_nsec = UTIME_NOW;
	return child_result(
		utimensat(fd, "", ts, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
}

static int set_one(struct tree *tree, const struct setattr_op *op, int slot)
{
	int fd = tree_node_fd(tree, op->a.node, slot);
	char proc[64];
	int r = 0;

	if (fd < 0)
		return fd;
	child_proc_path(fd, proc);
	if (op->to_set & TREE_SET_MODE)
		r = child_result(chmod(proc, op->attr.st_mode & 07777));
	if (!r && (op->to_set & (TREE_SET_UID | TREE_SET_GID)))
		r = child_result(
			fchownat(fd, "",
				 (op->to_set & TREE_SET_UID) ? op->attr.st_uid
							     : (uid_t)-1,
				 (op->to_set & TREE_SET_GID) ? op->attr.st_gid
							     : (gid_t)-1,
				 AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
	if (!r && (op->to_set & TREE_SET_SIZE) &&
	    tree_slot_is_witness(tree, slot)) {
		r = witness_resize(tree, op, slot, fd);
	} else if (!r && (op->to_set & TREE_SET_SIZE)) {
		int ffd = op->file ? file_fd(tree, op->file, slot) : -1;

		r = child_result(ffd >= 0 ? ftruncate(ffd, op->attr.st_size)
					  : truncate(proc, op->attr.st_size));
	}
	if (!r && (op->to_set & (TREE_SET_ATIME | TREE_SET_MTIME |
				 TREE_SET_ATIME_NOW | TREE_SET_MTIME_NOW)))
		r = set_times(fd, op);
	return r;
}

static int setattr_body(struct child_request *rq, int i)
{
	struct setattr_op *op = rq->arg;

	return set_one(op->a.tree, op, child_slot(rq->view->child[i]));
}

static void setattr_release(struct child_request *rq)
{
	struct setattr_op *op = rq->arg;

	if (op->file)
		file_put(op->a.tree, op->file);
}

/* The change on every child and its outcome (fanout.c). */
static int setattr_children(struct tree *tree, const struct child_view *view,
			    struct tree_node *n, struct tree_file *f,
			    const struct stat *attr, int to_set)
{
	struct child_request *rq = node_request(
		tree, view, n, sizeof(struct setattr_op), setattr_release);
	struct setattr_op *op;
	int ret;

	if (!rq)
		return -ENOMEM;
	op = rq->arg;
	op->file = f;
	op->attr = *attr;
	op->to_set = to_set;
	if (f)
		file_get(f);
	op->has_last = attr->st_size % WITNESS_BLOCK != 0;
	if ((to_set & TREE_SET_SIZE) && view->witnesses && op->has_last)
		op->wret = witness_prepare_truncate(tree, view, n,
						    attr->st_size, op->last);
	tree_fanout(tree, rq, setattr_body);
	ret = tree_outcome(tree, view, rq->ret, false, "write", n,
			   (to_set & TREE_SET_SIZE) ? attr->st_size : 0, 0);
	child_request_put(rq);
	return ret;
}

int tree_setattr(struct tree *tree, uint64_t ino, struct tree_file *f,
		 const struct stat *attr, int to_set, struct stat *st)
{
	struct tree_node *n = tree_node(tree, ino);
	bool sized = to_set & TREE_SET_SIZE;
	const struct child_view *view;
	struct range_claim claim;
	int ret;

	/* A size change moves every byte past it: order it with all I/O.
	 * Other changes claim the whole node shared, so that scrub, which
	 * claims it exclusively, never compares a change half applied. */
	range_lock(&n->ranges, &claim, 0, RANGE_END, sized);
	if (sized)
		intent_write(tree, n, attr->st_size, 1);
	if (to_set & ~TREE_SET_SIZE)
		intent_change(tree, n, false);
	/* After the announcement, which may have failed a hung child. */
	view = children_view_get(tree->set);
	ret = setattr_children(tree, view, n, f, attr, to_set);
	if (!ret && sized)
		atomic_store(&n->size_hint, attr->st_size);
	if (!ret)
		ret = tree_attr_vote(tree, view, n, st);
	range_unlock(&n->ranges, &claim);
	children_view_put(view);
	return ret;
}

/*
 * A value read from every voting child into its own buffer and voted
 * like data: link targets and xattr values. A part frees its buffer when
 * it fails; the caller frees the others, release those of late parts.
 */
struct value_op {
	struct node_arg a;
	char *name;  /* xattr name (a copy), NULL for readlink / list */
	size_t size; /* 0: only the length is asked for */
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
	if (S_ISLNK(op->a.node->type))
		return op->list ? 0 : (errno = ENODATA, -1);
	child_proc_path(fd, proc);
	if (op->list)
		return listxattr(proc, buf, size);
	return getxattr(proc, op->name, buf, size);
}

static int value_body(struct child_request *rq, int i)
{
	struct value_op *op = rq->arg;
	int fd = tree_node_fd(op->a.tree, op->a.node,
			      child_slot(rq->view->child[i]));

	if (!rq->view->votes[i])
		return 0;
	if (fd < 0)
		return fd;
	if (op->size && !(op->buf[i] = malloc(op->size)))
		return -ENOMEM;
	op->len[i] = value_get(op, fd, op->buf[i], op->size);
	if (op->len[i] >= 0)
		return 0;
	free(op->buf[i]);
	op->buf[i] = NULL;
	return -errno;
}

static void value_release(struct child_request *rq)
{
	struct value_op *op = rq->arg;

	for (int i = 0; i < rq->view->n; i++)
		if (rq->late & (1u << i))
			free(op->buf[i]);
	free(op->name);
}

/* Vote the answers; the winner's length, its value copied to out. */
static ssize_t value_winner(const struct child_request *rq,
			    const struct value_op *op, void *out)
{
	const struct child_view *view = rq->view;
	struct vote_ballot b[CHILDREN_MAX];
	int index[CHILDREN_MAX], n = 0;
	struct vote_result r;
	ssize_t ret;

	for (int i = 0; i < view->n; i++) {
		if (!view->votes[i])
			continue;
		index[n] = i;
		b[n++] = (struct vote_ballot){
			.error = rq->ret[i],
			.data = op->size ? (void *)op->buf[i] : &op->len[i],
			.len = rq->ret[i] ? 0
			       : op->size ? (size_t)op->len[i]
					  : sizeof(ssize_t)};
	}
	ret = n ? vote_whole(b, n, view->threshold, &r) : -EIO;
	if (!ret) {
		ret = op->len[index[r.winner]];
		if (op->size)
			memcpy(out, op->buf[index[r.winner]], ret);
	}
	return ret;
}

static ssize_t value_vote(struct tree *tree, uint64_t ino, const char *name,
			  bool list, void *out, size_t size)
{
	const struct child_view *view = children_view_get(tree->set);
	struct child_request *rq =
		node_request(tree, view, tree_node(tree, ino),
			     sizeof(struct value_op), value_release);
	struct value_op *op = rq ? rq->arg : NULL;
	ssize_t ret = -ENOMEM;

	if (op && (!name || (op->name = strdup(name)))) {
		op->size = size;
		op->list = list;
		tree_fanout(tree, rq, value_body);
		ret = value_winner(rq, op, out);
		for (int i = 0; i < view->n; i++)
			if (!rq->ret[i])
				free(op->buf[i]);
	}
	child_request_put(rq);
	children_view_put(view);
	return ret;
}

ssize_t tree_readlink(struct tree *tree, uint64_t ino, char *buf, size_t size)
{
	return value_vote(tree, ino, NULL, false, buf, size);
}

ssize_t tree_getxattr(struct tree *tree, uint64_t ino, const char *name,
		      void *value, size_t size)
{
	return value_vote(tree, ino, name, false, value, size);
}

ssize_t tree_listxattr(struct tree *tree, uint64_t ino, char *list, size_t size)
{
	return value_vote(tree, ino, NULL, true, list, size);
}

/* setxattr or removexattr on every child; name and value are copies. */
struct xattr_change {
	struct node_arg a;
	char *name;
	void *value;
	size_t size;
	int flags;
	bool remove;
};

static int xattr_body(struct child_request *rq, int i)
{
	struct xattr_change *op = rq->arg;
	int fd = tree_node_fd(op->a.tree, op->a.node,
			      child_slot(rq->view->child[i]));
	char proc[64];

	if (fd < 0)
		return fd;
	if (S_ISLNK(op->a.node->type))
		return -EPERM; /* as for user.* on a local symlink */
	child_proc_path(fd, proc);
	return child_result(op->remove ? removexattr(proc, op->name)
				       : setxattr(proc, op->name, op->value,
						  op->size, op->flags));
}

static void xattr_release(struct child_request *rq)
{
	struct xattr_change *op = rq->arg;

	free(op->name);
	free(op->value);
}

static int xattr_change(struct tree *tree, uint64_t ino, const char *name,
			const void *value, size_t size, int flags)
{
	const struct child_view *view = children_view_get(tree->set);
	struct tree_node *n = tree_node(tree, ino);
	struct child_request *rq = node_request(
		tree, view, n, sizeof(struct xattr_change), xattr_release);
	struct xattr_change *op = rq ? rq->arg : NULL;
	struct range_claim claim;
	int ret = -ENOMEM;

	if (op && (op->name = strdup(name)) &&
	    (!value || (op->value = malloc(size ? size : 1)))) {
		if (value)
			memcpy(op->value, value, size);
		op->size = size;
		op->flags = flags;
		op->remove = !value;
		/* Shared, as setattr: scrub compares under an exclusive one. */
		range_lock(&n->ranges, &claim, 0, RANGE_END, false);
		intent_change(tree, n, false);
		tree_fanout(tree, rq, xattr_body);
		ret = tree_outcome(tree, view, rq->ret, false, "write", n, 0,
				   0);
		range_unlock(&n->ranges, &claim);
	}
	child_request_put(rq);
	children_view_put(view);
	return ret;
}

int tree_setxattr(struct tree *tree, uint64_t ino, const char *name,
		  const void *value, size_t size, int flags)
{
	/* A NULL value with size 0 is still a value: an empty one. */
	return xattr_change(tree, ino, name, value ? value : "", size, flags);
}

int tree_removexattr(struct tree *tree, uint64_t ino, const char *name)
{
	return xattr_change(tree, ino, name, NULL, 0, 0);
}

struct statfs_op {
	struct statvfs st[CHILDREN_MAX];
};

static int statfs_body(struct child_request *rq, int i)
{
	struct statfs_op *op = rq->arg;

	return child_result(
		fstatvfs(child_root_fd(rq->view->child[i]), &op->st[i]));
}

/* The voting child with the least free space, or -1. */
static int least_free(const struct child_request *rq,
		      const struct statfs_op *op)
{
	int best = -1;

	for (int i = 0; i < rq->view->n; i++) {
		if (!view_reads(rq->view, i) || rq->ret[i])
			continue;
		if (best < 0 ||
		    (uint64_t)op->st[i].f_bavail * op->st[i].f_frsize <
			    (uint64_t)op->st[best].f_bavail *
				    op->st[best].f_frsize)
			best = i;
	}
	return best;
}

/* The smallest free space of any voting child: what can still be written. */
int tree_statfs(struct tree *tree, struct statvfs *st)
{
	const struct child_view *view = children_view_get(tree->set);
	struct child_request *rq =
		child_request_new(view, sizeof(struct statfs_op), NULL);
	struct statfs_op *op;
	int best, ret = -ENOMEM;

	if (rq) {
		op = rq->arg;
		tree_fanout(tree, rq, statfs_body);
		best = least_free(rq, op);
		if (best >= 0)
			*st = op->st[best];
		ret = best >= 0 ? 0 : tree_error_vote(view, rq->ret);
		child_request_put(rq);
	}
	children_view_put(view);
	return ret;
}
