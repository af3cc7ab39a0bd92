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

/* A namespace operation as the caller describes it (borrowed strings). */
struct ns_op {
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
};

/*
 * The request an ns_op becomes: what the parts read, owned (names
 * copied, nodes referenced), and per index of the view the resolved
 * entry, for entry kinds. A part closes its handle when it fails.
 */
struct ns_req {
	struct node_arg a; /* the parent */
	enum ns_kind kind;
	char *name, *newname, *linktarget;
	struct tree_node *newparent, *target; /* references, or NULL */
	unsigned int flags;
	mode_t mode;
	dev_t rdev;
	uid_t uid;
	gid_t gid;
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
static int own_entry(struct tree *tree, int pfd, const struct ns_req *r)
{
	struct stat dir;
	gid_t gid;

	if (!tree->as_root)
		return 0;
	if (fstat(pfd, &dir))
		return -errno;
	gid = (dir.st_mode & S_ISGID) ? dir.st_gid : r->gid;
	if (fchownat(pfd, r->name, r->uid, gid, AT_SYMLINK_NOFOLLOW))
		return -errno;
	/* chown clears set-id bits on files; restore what was asked for. */
	if (S_ISREG(r->mode) && (r->mode & (S_ISUID | S_ISGID)))
		return child_result(fchmodat(pfd, r->name, r->mode & 07777, 0));
	return 0;
}

static int ns_link(int target_fd, int npfd, const char *name)
{
	char proc[64];

	child_proc_path(target_fd, proc);
	return child_result(
		linkat(AT_FDCWD, proc, npfd, name, AT_SYMLINK_FOLLOW));
}

static int ns_change(struct tree *tree, const struct ns_req *r, int slot,
		     int pfd)
{
	int ret = 0;

	switch (r->kind) {
	case NS_LOOKUP:
		return 0;
	case NS_MKNOD:
		ret = child_result(mknodat(pfd, r->name, r->mode, r->rdev));
		break;
	case NS_MKDIR:
		ret = child_result(mkdirat(pfd, r->name, r->mode));
		break;
	case NS_SYMLINK:
		ret = child_result(symlinkat(r->linktarget, pfd, r->name));
		break;
	case NS_LINK:
		ret = tree_node_fd(tree, r->target, slot);
		return ret < 0 ? ret : ns_link(ret, pfd, r->name);
	case NS_UNLINK:
		return child_result(unlinkat(pfd, r->name, 0));
	case NS_RMDIR:
		return child_result(unlinkat(pfd, r->name, AT_REMOVEDIR));
	case NS_RENAME: {
		int npfd = tree_node_fd(tree, r->newparent, slot);

		if (npfd < 0)
			return npfd;
		return child_result(
			renameat2(pfd, r->name, npfd, r->newname, r->flags));
	}
	}
	return ret ? ret : own_entry(tree, pfd, r);
}

static int ns_body(struct child_request *rq, int i)
{
	struct ns_req *r = rq->arg;
	int slot = child_slot(rq->view->child[i]);
	int pfd = tree_node_fd(r->a.tree, r->a.node, slot);
	int ret;

	if (pfd < 0)
		return pfd;
	ret = ns_change(r->a.tree, r, slot, pfd);
	if (ret || !ns_makes_entry(r->kind))
		return ret;
	r->fd[i] = openat(pfd, r->name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (r->fd[i] >= 0 && !fstat(r->fd[i], &r->st[i]))
		return 0;
	ret = -errno;
	if (r->fd[i] >= 0)
		close(r->fd[i]);
	r->fd[i] = -1;
	return ret;
}

/* The handles of the parts that answered (late ones: release). */
static void ns_close_fds(struct child_request *rq, int only_late)
{
	struct ns_req *r = rq->arg;

	for (int i = 0; i < rq->view->n; i++) {
		bool late = rq->late & (1u << i);

		if (late == (bool)only_late && r->fd[i] >= 0) {
			close(r->fd[i]);
			r->fd[i] = -1;
		}
	}
}

static void ns_release(struct child_request *rq)
{
	struct ns_req *r = rq->arg;

	ns_close_fds(rq, true);
	if (r->newparent)
		tree_node_unref(r->a.tree, r->newparent);
	if (r->target)
		tree_node_unref(r->a.tree, r->target);
	free(r->name);
	free(r->newname);
	free(r->linktarget);
}

static char *copy_or_null(const char *s, bool *failed)
{
	char *copy = s ? strdup(s) : NULL;

	*failed |= s && !copy;
	return copy;
}

/* The request for op, owning all it reads; NULL when out of memory. */
static struct child_request *ns_request(struct tree *tree,
					const struct child_view *view,
					const struct ns_op *op)
{
	struct child_request *rq = node_request(
		tree, view, op->parent, sizeof(struct ns_req), ns_release);
	struct ns_req *r = rq ? rq->arg : NULL;
	bool failed = false;

	if (!r)
		return NULL;
	for (int i = 0; i < CHILDREN_MAX; i++)
		r->fd[i] = -1;
	r->kind = op->kind;
	r->flags = op->flags;
	r->mode = op->mode;
	r->rdev = op->rdev;
	r->uid = op->who ? op->who->uid : 0;
	r->gid = op->who ? op->who->gid : 0;
	r->name = copy_or_null(op->name, &failed);
	r->newname = copy_or_null(op->newname, &failed);
	r->linktarget = copy_or_null(op->linktarget, &failed);
	if ((r->newparent = op->newparent))
		tree_node_ref(tree, r->newparent);
	if ((r->target = op->target))
		tree_node_ref(tree, r->target);
	if (!failed)
		return rq;
	child_request_put(rq);
	return NULL;
}

static void lookup_failed(struct tree *tree, const struct ns_op *op)
{
	char *path = tree_entry_path(tree, op->parent, op->name);

	event_log_quorum_failure(tree->log, path ? path : op->name, 0, 0);
	free(path);
}

/*
 * Vote a lookup's answers on existence and type. Returns the index (in
 * the view) of the child that gives the node its identity, or -errno.
 * Children whose entry has another type keep no handle.
 */
static int lookup_vote(struct tree *tree, struct child_request *rq,
		       const struct ns_op *op)
{
	struct ns_req *r = rq->arg;
	struct vote_ballot b[CHILDREN_MAX];
	int index[CHILDREN_MAX], errors[CHILDREN_MAX], n = 0;
	mode_t type[CHILDREN_MAX] = {0};
	struct vote_result v;

	for (int i = 0; i < rq->view->n; i++) {
		if (!rq->view->votes[i])
			continue;
		if (!rq->ret[i])
			type[i] = r->st[i].st_mode & S_IFMT;
		errors[n] = rq->ret[i];
		index[n] = i;
		b[n++] = (struct vote_ballot){.error = rq->ret[i],
					      .data = &type[i],
					      .len = sizeof(mode_t)};
	}
	if (n == 0)
		return -EIO;
	if (vote_whole(b, n, rq->view->threshold, &v)) {
		/* Every child saying ENOENT is an answer, not a failure. */
		if (!vote_refused_by_all(errors, n))
			lookup_failed(tree, op);
		return v.error;
	}
	for (int i = 0; i < rq->view->n; i++) {
		if (!rq->ret[i] && r->fd[i] >= 0 &&
		    (r->st[i].st_mode & S_IFMT) != type[index[v.winner]]) {
			close(r->fd[i]);
			r->fd[i] = -1;
		}
	}
	return index[v.winner];
}

/* Report voting children that lack an entry the quorum has. */
static void report_missing(struct tree *tree, struct child_request *rq,
			   const struct ns_op *op)
{
	char *path = NULL;

	for (int i = 0; i < rq->view->n; i++) {
		if (!rq->view->votes[i] || !rq->ret[i])
			continue;
		if (!path)
			path = tree_entry_path(tree, op->parent, op->name);
		child_count_error(rq->view->child[i], CHILD_OP_READ);
		event_log_report_bad(tree->log, "read",
				     child_name(rq->view->child[i]), 0, 0,
				     rq->ret[i], path ? path : op->name);
	}
	free(path);
}

/* Turn per-child handles (by view index) into a node with one lookup.
 * A late part's index is not asked: its handle is its own. */
static int ns_make_entry(struct tree *tree, struct child_request *rq,
			 const struct ns_op *op, int key, struct tree_entry *e)
{
	struct ns_req *r = rq->arg;
	bool asked[CHILDREN_MAX] = {false};
	int by_slot[CHILDREN_MAX];
	struct tree_node *n;
	int ret;

	for (int s = 0; s < CHILDREN_MAX; s++)
		by_slot[s] = -1;
	for (int i = 0; i < rq->view->n; i++) {
		int slot = child_slot(rq->view->child[i]);

		asked[slot] = rq->ret[i] == 0 || rq->ret[i] == -ENOENT;
		if (rq->ret[i])
			continue;
		by_slot[slot] = r->fd[i];
		r->fd[i] = -1;
	}
	n = node_install(tree, op->parent, op->name, by_slot, asked,
			 &r->st[key]);
	if (!n)
		return -ENOMEM;
	ret = node_attr(tree, rq->view, n, &e->attr);
	if (ret) {
		node_forget(tree, n, 1);
		return ret;
	}
	e->ino = tree_node_ino(tree, n);
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
static void mark_incomplete(struct tree *tree, struct child_request *rq,
			    const struct ns_op *op)
{
	struct tree_node *dir =
		op->kind == NS_RENAME ? op->newparent : op->parent;

	if (op->kind == NS_LOOKUP)
		return;
	for (int i = 0; i < rq->view->n; i++)
		if (!rq->view->votes[i] && rq->ret[i] == -ENOENT)
			incomplete_mark(tree, child_slot(rq->view->child[i]),
					dir);
}

/* The vote of a lookup, or the outcome of a change; the index of the
 * child that gives a new entry its identity. */
static int ns_decide(struct tree *tree, struct child_request *rq,
		     const struct ns_op *op, int *key)
{
	int ret;

	if (op->kind == NS_LOOKUP) {
		ret = *key = lookup_vote(tree, rq, op);
		if (ret >= 0)
			report_missing(tree, rq, op);
		return ret;
	}
	*key = first_voting_success(rq);
	return tree_outcome(tree, rq->view, rq->ret, false, "write", op->parent,
			    0, 0);
}

static int ns_run(struct tree *tree, struct ns_op *op, struct tree_entry *e)
{
	const struct child_view *view;
	struct child_request *rq;
	struct range_claim a, b;
	int ret = -ENOMEM, key;

	ns_lock(tree, op, &a, &b, true);
	if (op->kind != NS_LOOKUP)
		intent_change(tree, op->parent, true);
	if (op->kind == NS_RENAME && op->newparent != op->parent)
		intent_change(tree, op->newparent, true);
	if (op->kind == NS_RENAME)
		intent_move(tree, op->parent, op->name, op->newparent,
			    op->newname, op->flags & RENAME_EXCHANGE);
	/* After the announcement, which may have failed a hung child. */
	view = children_view_get(tree->set);
	rq = ns_request(tree, view, op);
	if (rq) {
		tree_fanout(tree, rq, ns_body);
		mark_incomplete(tree, rq, op);
	}
	ns_lock(tree, op, &a, &b, false);
	if (rq)
		ret = ns_decide(tree, rq, op, &key);
	if (ret >= 0 && ns_makes_entry(op->kind))
		ret = ns_make_entry(tree, rq, op, key, e);
	if (rq)
		ns_close_fds(rq, false);
	child_request_put(rq);
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

int tree_graveyard(struct tree *tree, uint64_t *ino)
{
	struct ns_op look = {.kind = NS_LOOKUP,
			     .parent = tree_root(tree),
			     .name = PERSIST_GRAVEYARD};
	struct ns_op make = {.kind = NS_MKDIR,
			     .parent = tree_root(tree),
			     .name = PERSIST_GRAVEYARD,
			     .mode = S_IFDIR | 0700};
	struct tree_entry e;
	int ret = ns_run(tree, &look, &e);

	if (ret == -ENOENT) {
		ret = ns_run(tree, &make, &e);
		if (ret == -EEXIST)
			ret = ns_run(tree, &look, &e);
	}
	if (!ret)
		*ino = e.ino;
	return ret;
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
	if (!ret) {
		rename_follow(tree, &op);
		policies_moved(tree);
	}
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
