/*
 * Lookup and namespace changes (mknod, mkdir, symlink, link, unlink,
 * rmdir, rename; create is mknod plus open).
 *
 * Every namespace operation is one struct ns_op sent to every child by
 * ns_body(): the per-child step is a single switch, so what "mkdir on a
 * child" means is visible in one place. Operations that produce an entry
 * then resolve it in the same step (O_PATH handle plus fstat) and the
 * results are voted:
 *   - a lookup is voted on existence and file type (the error vote decides
 *     between ENOENT and other errors);
 *   - a change succeeds when threshold voting children made it
 *     (tree_outcome).
 * The entry's attributes are then voted like a getattr (attr.c).
 */
#define _GNU_SOURCE
#include "tree/tree_i.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "vote/vote.h"

enum ns_kind {
	NS_LOOKUP,
	NS_MKNOD,
	NS_MKDIR,
	NS_SYMLINK,
	NS_LINK,
	NS_UNLINK,
	NS_RMDIR,
	NS_RENAME,
};

struct ns_op {
	struct tree *tree;
	enum ns_kind kind;
	struct tree_node *parent;
	const char *name;
	struct tree_node *newparent; /* rename */
	const char *newname;	     /* rename */
	unsigned int flags;	     /* rename */
	struct tree_node *target;    /* link: the existing file */
	const char *linktarget;	     /* symlink */
	mode_t mode;
	dev_t rdev;
	const struct tree_caller *who;
	/* Per index of the view: the resolved entry, for entry kinds. */
	int fd[CHILDREN_MAX];
	struct stat st[CHILDREN_MAX];
};

static bool ns_makes_entry(enum ns_kind k)
{
	return k == NS_LOOKUP || k == NS_MKNOD || k == NS_MKDIR ||
	       k == NS_SYMLINK || k == NS_LINK;
}

/*
 * Give a new entry to the caller, as the kernel would have if the caller
 * had created it on the child: the caller's uid, and the caller's gid
 * unless the directory is setgid, whose group is inherited.
 */
static int own_entry(struct tree *tree, int pfd, const char *name,
		     const struct tree_caller *who, mode_t mode)
{
	struct stat dir;
	gid_t gid;

	if (!tree->as_root)
		return 0;
	if (fstat(pfd, &dir))
		return -errno;
	gid = (dir.st_mode & S_ISGID) ? dir.st_gid : who->gid;
	if (fchownat(pfd, name, who->uid, gid, AT_SYMLINK_NOFOLLOW))
		return -errno;
	/* chown clears set-id bits on files; restore what was asked for. */
	if (S_ISREG(mode) && (mode & (S_ISUID | S_ISGID)))
		return child_result(fchmodat(pfd, name, mode & 07777, 0));
	return 0;
}

static int ns_link(int target_fd, int npfd, const char *name)
{
	char proc[64];

	child_proc_path(target_fd, proc);
	return child_result(
		linkat(AT_FDCWD, proc, npfd, name, AT_SYMLINK_FOLLOW));
}

static int ns_change(struct tree *tree, struct ns_op *op, int slot, int pfd)
{
	int r = 0;

	switch (op->kind) {
	case NS_LOOKUP:
		return 0;
	case NS_MKNOD:
		r = child_result(mknodat(pfd, op->name, op->mode, op->rdev));
		break;
	case NS_MKDIR:
		r = child_result(mkdirat(pfd, op->name, op->mode));
		break;
	case NS_SYMLINK:
		r = child_result(symlinkat(op->linktarget, pfd, op->name));
		break;
	case NS_LINK:
		r = tree_node_fd(tree, op->target, slot);
		return r < 0 ? r : ns_link(r, pfd, op->name);
	case NS_UNLINK:
		return child_result(unlinkat(pfd, op->name, 0));
	case NS_RMDIR:
		return child_result(unlinkat(pfd, op->name, AT_REMOVEDIR));
	case NS_RENAME: {
		int npfd = tree_node_fd(tree, op->newparent, slot);

		if (npfd < 0)
			return npfd;
		return child_result(
			renameat2(pfd, op->name, npfd, op->newname, op->flags));
	}
	}
	if (r)
		return r;
	return own_entry(tree, pfd, op->name, op->who, op->mode);
}

static void ns_body(struct child_request *rq, int i)
{
	struct ns_op *op = rq->arg;
	int slot = child_slot(rq->view->child[i]);
	int pfd = tree_node_fd(op->tree, op->parent, slot);
	int r;

	op->fd[i] = -1;
	if (pfd < 0) {
		rq->ret[i] = pfd;
		return;
	}
	r = ns_change(op->tree, op, slot, pfd);
	if (!r && ns_makes_entry(op->kind)) {
		op->fd[i] =
			openat(pfd, op->name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		if (op->fd[i] < 0 || fstat(op->fd[i], &op->st[i]))
			r = -errno;
	}
	rq->ret[i] = r;
}

static void ns_close_fds(struct child_request *rq, struct ns_op *op)
{
	for (int i = 0; i < rq->view->n; i++)
		if (op->fd[i] >= 0)
			close(op->fd[i]);
}

static void lookup_failed(const struct ns_op *op)
{
	char *path = tree_entry_path(op->tree, op->parent, op->name);

	event_log_quorum_failure(op->tree->log, path ? path : op->name, 0, 0);
	free(path);
}

/*
 * Vote a lookup's answers on existence and type. Returns the index (in
 * the view) of the child that gives the node its identity, or -errno.
 * Children whose entry has another type keep no handle.
 */
static int lookup_vote(struct child_request *rq, struct ns_op *op)
{
	struct vote_ballot b[CHILDREN_MAX];
	int index[CHILDREN_MAX], errors[CHILDREN_MAX], n = 0;
	mode_t type[CHILDREN_MAX];
	struct vote_result r;

	for (int i = 0; i < rq->view->n; i++) {
		if (!rq->view->votes[i])
			continue;
		type[i] = op->st[i].st_mode & S_IFMT;
		errors[n] = rq->ret[i];
		index[n] = i;
		b[n++] = (struct vote_ballot){.error = rq->ret[i],
					      .data = &type[i],
					      .len = sizeof(mode_t)};
	}
	if (n == 0)
		return -EIO;
	if (vote_whole(b, n, rq->view->threshold, &r)) {
		/* Every child saying ENOENT is an answer, not a failure. */
		if (!vote_refused_by_all(errors, n))
			lookup_failed(op);
		return r.error;
	}
	for (int i = 0; i < rq->view->n; i++) {
		if (op->fd[i] >= 0 &&
		    (op->st[i].st_mode & S_IFMT) != type[index[r.winner]]) {
			close(op->fd[i]);
			op->fd[i] = -1;
		}
	}
	return index[r.winner];
}

/* Report voting children that lack an entry the quorum has. */
static void report_missing(struct child_request *rq, struct ns_op *op)
{
	struct tree_node *parent = op->parent;
	const char *name = op->name;
	char *path = NULL;

	for (int i = 0; i < rq->view->n; i++) {
		if (!rq->view->votes[i] || !rq->ret[i])
			continue;
		if (!path)
			path = tree_entry_path(op->tree, parent, name);
		child_count_error(rq->view->child[i], CHILD_OP_READ);
		event_log_report_bad(op->tree->log, "read",
				     child_name(rq->view->child[i]), 0, 0,
				     rq->ret[i], path ? path : name);
	}
	free(path);
}

/* Turn per-child handles (by view index) into a node with one lookup. */
static int ns_make_entry(struct child_request *rq, struct ns_op *op, int key,
			 const char *name, struct tree_entry *e)
{
	bool asked[CHILDREN_MAX] = {false};
	int by_slot[CHILDREN_MAX];
	struct tree_node *n;
	int ret;

	for (int s = 0; s < CHILDREN_MAX; s++)
		by_slot[s] = -1;
	for (int i = 0; i < rq->view->n; i++) {
		int slot = child_slot(rq->view->child[i]);

		by_slot[slot] = op->fd[i];
		asked[slot] = rq->ret[i] == 0 || rq->ret[i] == -ENOENT;
		op->fd[i] = -1;
	}
	n = node_install(op->tree, op->parent, name, by_slot, asked,
			 &op->st[key]);
	if (!n)
		return -ENOMEM;
	ret = node_attr(op->tree, rq->view, n, &e->attr);
	if (ret) {
		node_forget(op->tree, n, 1);
		return ret;
	}
	e->ino = tree_node_ino(op->tree, n);
	return 0;
}

static int first_voting_success(const struct child_request *rq)
{
	for (int i = 0; i < rq->view->n; i++)
		if (rq->view->votes[i] && !rq->ret[i])
			return i;
	return -1;
}

/*
 * Changes to a directory take its range lock shared (rename: both
 * directories, in address order), so that resync, which takes it
 * exclusively while it creates an entry on a new child, never copies an
 * entry that a concurrent unlink or rename has just removed.
 */
static void ns_lock(struct tree *tree, struct ns_op *op, struct range_claim *a,
		    struct range_claim *b, bool lock)
{
	struct tree_node *first = op->parent, *second = op->newparent;

	if (op->kind == NS_LOOKUP)
		return;
	if (second == first)
		second = NULL;
	if (second && second < first) {
		first = second;
		second = op->parent;
	}
	if (!lock) {
		if (second)
			range_unlock(&second->ranges, b);
		range_unlock(&first->ranges, a);
		pthread_rwlock_unlock(&tree->ns_barrier);
		return;
	}
	pthread_rwlock_rdlock(&tree->ns_barrier);
	range_lock(&first->ranges, a, 0, RANGE_END, false);
	if (second)
		range_lock(&second->ranges, b, 0, RANGE_END, false);
}

/* A syncing child that lacked what a change needed (its copy has not
 * reached it yet) gets the changed directory completed again. */
static void mark_incomplete(struct child_request *rq, struct ns_op *op)
{
	struct tree_node *dir =
		op->kind == NS_RENAME ? op->newparent : op->parent;

	if (op->kind == NS_LOOKUP)
		return;
	for (int i = 0; i < rq->view->n; i++)
		if (!rq->view->votes[i] && rq->ret[i] == -ENOENT)
			incomplete_mark(op->tree,
					child_slot(rq->view->child[i]), dir);
}

static int ns_run(struct tree *tree, struct ns_op *op, struct tree_entry *e)
{
	const struct child_view *view = children_view_get(tree->set);
	struct child_request rq = {.view = view, .body = ns_body, .arg = op};
	struct range_claim a, b;
	int ret, key;

	ns_lock(tree, op, &a, &b, true);
	if (op->kind != NS_LOOKUP)
		intent_tree(tree);
	op->tree = tree;
	tree_fanout(tree, &rq);
	mark_incomplete(&rq, op);
	ns_lock(tree, op, &a, &b, false);
	if (op->kind == NS_LOOKUP) {
		key = ret = lookup_vote(&rq, op);
		if (ret >= 0)
			report_missing(&rq, op);
	} else {
		ret = tree_outcome(tree, view, rq.ret, false, "write",
				   op->parent, 0, 0);
		key = first_voting_success(&rq);
	}
	if (ret >= 0 && ns_makes_entry(op->kind))
		ret = ns_make_entry(&rq, op, key, op->name, e);
	ns_close_fds(&rq, op);
	children_view_put(view);
	return ret < 0 ? ret : 0;
}

static bool bad_name(const char *name)
{
	return !*name || strchr(name, '/') || strcmp(name, ".") == 0 ||
	       strcmp(name, "..") == 0;
}

int tree_lookup(struct tree *tree, uint64_t parent, const char *name,
		struct tree_entry *e)
{
	struct ns_op op = {.kind = NS_LOOKUP,
			   .parent = tree_node(tree, parent),
			   .name = name};

	if (bad_name(name) || tree_reserved_name(parent, name))
		return -ENOENT;
	return ns_run(tree, &op, e);
}

void tree_forget(struct tree *tree, uint64_t ino, uint64_t nlookup)
{
	node_forget(tree, tree_node(tree, ino), nlookup);
}

static int ns_create(struct tree *tree, struct ns_op *op, uint64_t parent,
		     struct tree_entry *e)
{
	struct tree_entry unused;

	if (bad_name(op->name))
		return -EINVAL;
	if (tree_reserved_name(parent, op->name))
		return -EPERM;
	op->parent = tree_node(tree, parent);
	return ns_run(tree, op, e ? e : &unused);
}

int tree_mknod(struct tree *tree, uint64_t parent, const char *name,
	       mode_t mode, dev_t rdev, const struct tree_caller *who,
	       struct tree_entry *e)
{
	struct ns_op op = {.kind = NS_MKNOD,
			   .name = name,
			   .mode = mode,
			   .rdev = rdev,
			   .who = who};

	return ns_create(tree, &op, parent, e);
}

int tree_mkdir(struct tree *tree, uint64_t parent, const char *name,
	       mode_t mode, const struct tree_caller *who, struct tree_entry *e)
{
	struct ns_op op = {.kind = NS_MKDIR,
			   .name = name,
			   .mode = mode | S_IFDIR,
			   .who = who};

	return ns_create(tree, &op, parent, e);
}

int tree_symlink(struct tree *tree, const char *target, uint64_t parent,
		 const char *name, const struct tree_caller *who,
		 struct tree_entry *e)
{
	struct ns_op op = {.kind = NS_SYMLINK,
			   .name = name,
			   .linktarget = target,
			   .mode = S_IFLNK,
			   .who = who};

	return ns_create(tree, &op, parent, e);
}

int tree_link(struct tree *tree, uint64_t ino, uint64_t newparent,
	      const char *newname, struct tree_entry *e)
{
	struct ns_op op = {.kind = NS_LINK,
			   .name = newname,
			   .target = tree_node(tree, ino)};

	return ns_create(tree, &op, newparent, e);
}

int tree_unlink(struct tree *tree, uint64_t parent, const char *name)
{
	struct ns_op op = {.kind = NS_UNLINK, .name = name};

	return ns_create(tree, &op, parent, NULL);
}

int tree_rmdir(struct tree *tree, uint64_t parent, const char *name)
{
	struct ns_op op = {.kind = NS_RMDIR, .name = name};

	return ns_create(tree, &op, parent, NULL);
}

/* Point the moved nodes' names at their new place (for event paths). */
static void rename_follow(struct tree *tree, struct ns_op *op)
{
	const struct child_view *view = children_view_get(tree->set);
	struct stat st;

	for (int i = 0; i < view->n; i++) {
		int slot = child_slot(view->child[i]);
		int npfd = tree_node_fd(tree, op->newparent, slot);
		int pfd = tree_node_fd(tree, op->parent, slot);

		if (!view->votes[i] || npfd < 0 || pfd < 0 ||
		    fstatat(npfd, op->newname, &st, AT_SYMLINK_NOFOLLOW))
			continue;
		node_moved(tree, &st, op->newparent, op->newname);
		if ((op->flags & RENAME_EXCHANGE) &&
		    !fstatat(pfd, op->name, &st, AT_SYMLINK_NOFOLLOW))
			node_moved(tree, &st, op->parent, op->name);
		break;
	}
	children_view_put(view);
}

int tree_rename(struct tree *tree, uint64_t parent, const char *name,
		uint64_t newparent, const char *newname, unsigned int flags)
{
	struct ns_op op = {.kind = NS_RENAME,
			   .name = name,
			   .newparent = tree_node(tree, newparent),
			   .newname = newname,
			   .flags = flags};
	int ret;

	if (bad_name(name) || bad_name(newname))
		return -EINVAL;
	if (tree_reserved_name(parent, name) ||
	    tree_reserved_name(newparent, newname))
		return -EPERM;
	if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE))
		return -EINVAL;
	ret = ns_create(tree, &op, parent, NULL);
	if (!ret)
		rename_follow(tree, &op);
	return ret;
}

int tree_create(struct tree *tree, uint64_t parent, const char *name,
		mode_t mode, int flags, const struct tree_caller *who,
		struct tree_entry *e, struct tree_file **f)
{
	int ret = tree_mknod(tree, parent, name, S_IFREG | (mode & 07777), 0,
			     who, e);

	if (ret == -EEXIST && !(flags & O_EXCL))
		ret = tree_lookup(tree, parent, name, e);
	if (ret)
		return ret;
	ret = tree_open(tree, e->ino, flags & ~O_TRUNC, f);
	if (ret)
		tree_forget(tree, e->ino, 1);
	return ret;
}
