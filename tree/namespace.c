/*
 * Lookup, attributes and namespace changes.
 *
 * Every namespace operation is one struct ns_op sent to every child by
 * ns_body(): the per-child step is a single switch, so what "mkdir on a
 * child" means is visible in one place. Operations that produce an entry
 * then resolve it in the same step (O_PATH handle plus fstat) and the
 * results are voted:
 *   - a lookup is voted on existence and file type (the error vote decides
 *     between ENOENT and other errors);
 *   - a change succeeds when threshold voting children made it.
 * Attributes come from one child; for regular files the size is voted and
 * the attributes are those of a child in the winning version.
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
	enum ns_kind kind;
	struct node *parent;
	const char *name;
	struct node *newparent; /* rename */
	const char *newname;	/* rename */
	unsigned int flags;	/* rename */
	struct node *target;	/* link: the existing file */
	const char *linktarget; /* symlink */
	mode_t mode;
	dev_t rdev;
	const struct fs_caller *who;
	/* Per index of the view: the resolved entry, for entry kinds. */
	int fd[CHILDREN_MAX];
	struct stat st[CHILDREN_MAX];
};

static bool ns_makes_entry(enum ns_kind k)
{
	return k == NS_LOOKUP || k == NS_MKNOD || k == NS_MKDIR ||
	       k == NS_SYMLINK || k == NS_LINK;
}

static int errno_of(int r)
{
	return r < 0 ? -errno : 0;
}

/*
 * Give a new entry to the caller, as the kernel would have if the caller
 * had created it on the child: the caller's uid, and the caller's gid
 * unless the directory is setgid, whose group is inherited.
 */
static int own_entry(struct fs *fs, int pfd, const char *name,
		     const struct fs_caller *who, mode_t mode)
{
	struct stat dir;
	gid_t gid;

	if (!fs->as_root)
		return 0;
	if (fstat(pfd, &dir))
		return -errno;
	gid = (dir.st_mode & S_ISGID) ? dir.st_gid : who->gid;
	if (fchownat(pfd, name, who->uid, gid, AT_SYMLINK_NOFOLLOW))
		return -errno;
	/* chown clears set-id bits on files; restore what was asked for. */
	if (S_ISREG(mode) && (mode & (S_ISUID | S_ISGID)))
		return errno_of(fchmodat(pfd, name, mode & 07777, 0));
	return 0;
}

static int ns_link(int target_fd, int npfd, const char *name)
{
	char proc[64];

	fd_proc_path(target_fd, proc);
	return errno_of(linkat(AT_FDCWD, proc, npfd, name, AT_SYMLINK_FOLLOW));
}

static int ns_change(struct fs *fs, struct ns_op *op, int slot, int pfd)
{
	int r = 0;

	switch (op->kind) {
	case NS_LOOKUP:
		return 0;
	case NS_MKNOD:
		r = errno_of(mknodat(pfd, op->name, op->mode, op->rdev));
		break;
	case NS_MKDIR:
		r = errno_of(mkdirat(pfd, op->name, op->mode));
		break;
	case NS_SYMLINK:
		r = errno_of(symlinkat(op->linktarget, pfd, op->name));
		break;
	case NS_LINK:
		r = node_fd(fs, op->target, slot);
		return r < 0 ? r : ns_link(r, pfd, op->name);
	case NS_UNLINK:
		return errno_of(unlinkat(pfd, op->name, 0));
	case NS_RMDIR:
		return errno_of(unlinkat(pfd, op->name, AT_REMOVEDIR));
	case NS_RENAME: {
		int npfd = node_fd(fs, op->newparent, slot);

		if (npfd < 0)
			return npfd;
		return errno_of(
			renameat2(pfd, op->name, npfd, op->newname, op->flags));
	}
	}
	if (r)
		return r;
	return own_entry(fs, pfd, op->name, op->who, op->mode);
}

static void ns_body(struct fanout *fo, int i)
{
	struct ns_op *op = fo->arg;
	int slot = child_slot(fo->view->child[i]);
	int pfd = node_fd(fo->fs, op->parent, slot);
	int r;

	op->fd[i] = -1;
	if (pfd < 0) {
		fo->ret[i] = pfd;
		return;
	}
	r = ns_change(fo->fs, op, slot, pfd);
	if (!r && ns_makes_entry(op->kind)) {
		op->fd[i] =
			openat(pfd, op->name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		if (op->fd[i] < 0 || fstat(op->fd[i], &op->st[i]))
			r = -errno;
	}
	fo->ret[i] = r;
}

static void ns_close_fds(struct fanout *fo, struct ns_op *op)
{
	for (int i = 0; i < fo->view->n; i++)
		if (op->fd[i] >= 0)
			close(op->fd[i]);
}

struct stat_op {
	struct node *node;
	struct stat st[CHILDREN_MAX];
};

static void stat_body(struct fanout *fo, int i)
{
	struct stat_op *op = fo->arg;
	int fd = node_fd(fo->fs, op->node, child_slot(fo->view->child[i]));

	if (fd < 0) {
		fo->ret[i] = fd;
		return;
	}
	fo->ret[i] = errno_of(fstatat(fd, "", &op->st[i],
				      AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
}

/*
 * Report what the size vote found: children that could not be asked,
 * children whose size lost, and no quorum at all. Sizes are not a byte
 * range, so the reports carry sector 0, count 0.
 */
static void attr_report(struct fanout *fo, struct node *n,
			const struct vote_ballot *b, const int *index, int nb,
			const struct vote_result *r)
{
	char *path = node_path(fo->fs, n);
	const char *file = path ? path : "";

	for (int k = 0; k < nb; k++) {
		struct child *c = fo->view->child[index[k]];

		if (b[k].error || (!r->error && r->loser[k])) {
			child_count_error(c, CHILD_OP_READ);
			event_log_report_bad(fo->fs->log, "read", child_name(c),
					     0, 0, b[k].error, file);
		}
	}
	if (r->error)
		event_log_quorum_failure(fo->fs->log, file, 0, 0);
	free(path);
}

/* Voted attributes from per-child stats. Directory sizes differ between
 * file systems, so only a regular file's size is voted. */
static int attr_from_stats(struct fanout *fo, struct node *n,
			   const struct stat *st, struct stat *out)
{
	struct vote_ballot b[CHILDREN_MAX];
	int index[CHILDREN_MAX], errors[CHILDREN_MAX], nb = 0;
	bool sized = S_ISREG(n->type);
	struct vote_result r;

	for (int i = 0; i < fo->view->n; i++) {
		if (!fo->view->votes[i])
			continue;
		index[nb] = i;
		errors[nb] = fo->ret[i];
		b[nb++] = (struct vote_ballot){
			.error = fo->ret[i],
			.data = &st[i].st_size,
			.len = sized ? sizeof(st[i].st_size) : 0};
	}
	if (nb == 0)
		return -EIO;
	vote_whole(b, nb, sized ? fo->view->threshold : 1, &r);
	if (refused_by_all(errors, nb))
		return r.error;
	if (r.error || !r.unanimous || r.successes < nb)
		attr_report(fo, n, b, index, nb, &r);
	if (!r.error)
		*out = st[index[r.winner]];
	return r.error;
}

int attr_vote(struct fs *fs, const struct child_view *view, struct node *n,
	      struct stat *st)
{
	struct stat_op op = {.node = n};
	struct fanout fo = {
		.fs = fs, .view = view, .body = stat_body, .arg = &op};
	int ret;

	fanout_run(&fo);
	ret = attr_from_stats(&fo, n, op.st, st);
	if (!ret) {
		st->st_ino = n->key_ino;
		if (n == &fs->root)
			st->st_ino = FS_ROOT_INO;
	}
	return ret;
}

/* The voted attributes of a node, consistent with in-flight writes. */
static int node_attr(struct fs *fs, const struct child_view *view,
		     struct node *n, struct stat *st)
{
	struct range_claim claim;
	int ret;

	if (!S_ISREG(n->type))
		return attr_vote(fs, view, n, st);
	/* A write that grows the file must not be seen half applied. */
	range_lock(&n->ranges, &claim, 0, FS_OFF_MAX, false);
	ret = attr_vote(fs, view, n, st);
	if (!ret)
		atomic_store(&n->size_hint, st->st_size);
	range_unlock(&n->ranges, &claim);
	return ret;
}

int fs_getattr(struct fs *fs, uint64_t ino, struct stat *st)
{
	const struct child_view *view = children_view_get(fs->set);
	int ret = node_attr(fs, view, node_get(fs, ino), st);

	children_view_put(view);
	return ret;
}

/* The path of parent/name relative to the mount; caller frees. */
static char *entry_path(struct fs *fs, struct node *parent, const char *name)
{
	char *dir = node_path(fs, parent), *path = NULL;

	if (!dir || asprintf(&path, "%s%s%s", dir, *dir ? "/" : "", name) < 0)
		path = NULL;
	free(dir);
	return path;
}

static void lookup_failed(struct fanout *fo, struct ns_op *op)
{
	char *path = entry_path(fo->fs, op->parent, op->name);

	event_log_quorum_failure(fo->fs->log, path ? path : op->name, 0, 0);
	free(path);
}

/*
 * Vote a lookup's answers on existence and type. Returns the index (in
 * the view) of the child that gives the node its identity, or -errno.
 * Children whose entry has another type keep no handle.
 */
static int lookup_vote(struct fanout *fo, struct ns_op *op)
{
	struct vote_ballot b[CHILDREN_MAX];
	int index[CHILDREN_MAX], errors[CHILDREN_MAX], n = 0;
	mode_t type[CHILDREN_MAX];
	struct vote_result r;

	for (int i = 0; i < fo->view->n; i++) {
		if (!fo->view->votes[i])
			continue;
		type[i] = op->st[i].st_mode & S_IFMT;
		errors[n] = fo->ret[i];
		index[n] = i;
		b[n++] = (struct vote_ballot){.error = fo->ret[i],
					      .data = &type[i],
					      .len = sizeof(mode_t)};
	}
	if (n == 0)
		return -EIO;
	if (vote_whole(b, n, fo->view->threshold, &r)) {
		/* Every child saying ENOENT is an answer, not a failure. */
		if (!refused_by_all(errors, n))
			lookup_failed(fo, op);
		return r.error;
	}
	for (int i = 0; i < fo->view->n; i++) {
		if (op->fd[i] >= 0 &&
		    (op->st[i].st_mode & S_IFMT) != type[index[r.winner]]) {
			close(op->fd[i]);
			op->fd[i] = -1;
		}
	}
	return index[r.winner];
}

/* Report voting children that lack an entry the quorum has. */
static void report_missing(struct fanout *fo, struct node *parent,
			   const char *name)
{
	char *path = NULL;

	for (int i = 0; i < fo->view->n; i++) {
		if (!fo->view->votes[i] || !fo->ret[i])
			continue;
		if (!path)
			path = entry_path(fo->fs, parent, name);
		child_count_error(fo->view->child[i], CHILD_OP_READ);
		event_log_report_bad(fo->fs->log, "read",
				     child_name(fo->view->child[i]), 0, 0,
				     fo->ret[i], path ? path : name);
	}
	free(path);
}

/* Turn per-child handles (by view index) into a node with one lookup. */
static int ns_make_entry(struct fanout *fo, struct ns_op *op, int key,
			 const char *name, struct fs_entry *e)
{
	bool asked[CHILDREN_MAX] = {false};
	int by_slot[CHILDREN_MAX];
	struct node *n;
	int ret;

	for (int s = 0; s < CHILDREN_MAX; s++)
		by_slot[s] = -1;
	for (int i = 0; i < fo->view->n; i++) {
		int slot = child_slot(fo->view->child[i]);

		by_slot[slot] = op->fd[i];
		asked[slot] = fo->ret[i] == 0 || fo->ret[i] == -ENOENT;
		op->fd[i] = -1;
	}
	n = node_install(fo->fs, op->parent, name, by_slot, asked,
			 &op->st[key]);
	if (!n)
		return -ENOMEM;
	ret = node_attr(fo->fs, fo->view, n, &e->attr);
	if (ret) {
		node_forget(fo->fs, n, 1);
		return ret;
	}
	e->ino = node_ino(fo->fs, n);
	return 0;
}

static int first_voting_success(const struct fanout *fo)
{
	for (int i = 0; i < fo->view->n; i++)
		if (fo->view->votes[i] && !fo->ret[i])
			return i;
	return -1;
}

/*
 * Changes to a directory take its range lock shared (rename: both
 * directories, in address order), so that resync, which takes it
 * exclusively while it creates an entry on a new child, never copies an
 * entry that a concurrent unlink or rename has just removed.
 */
static void ns_lock(struct fs *fs, struct ns_op *op, struct range_claim *a,
		    struct range_claim *b, bool lock)
{
	struct node *first = op->parent, *second = op->newparent;

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
		pthread_rwlock_unlock(&fs->ns_barrier);
		return;
	}
	pthread_rwlock_rdlock(&fs->ns_barrier);
	range_lock(&first->ranges, a, 0, FS_OFF_MAX, false);
	if (second)
		range_lock(&second->ranges, b, 0, FS_OFF_MAX, false);
}

/* A syncing child that lacked what a change needed (its copy has not
 * reached it yet) gets the changed directory completed again. */
static void mark_incomplete(struct fanout *fo, struct ns_op *op)
{
	struct node *dir = op->kind == NS_RENAME ? op->newparent : op->parent;

	if (op->kind == NS_LOOKUP)
		return;
	for (int i = 0; i < fo->view->n; i++)
		if (!fo->view->votes[i] && fo->ret[i] == -ENOENT)
			resync_mark_dirty(fo->fs,
					  child_slot(fo->view->child[i]), dir);
}

static int ns_run(struct fs *fs, struct ns_op *op, struct fs_entry *e)
{
	const struct child_view *view = children_view_get(fs->set);
	struct fanout fo = {.fs = fs, .view = view, .body = ns_body, .arg = op};
	struct range_claim a, b;
	int ret, key;

	ns_lock(fs, op, &a, &b, true);
	if (op->kind != NS_LOOKUP)
		fs_announce_tree(fs);
	fanout_run(&fo);
	mark_incomplete(&fo, op);
	ns_lock(fs, op, &a, &b, false);
	if (op->kind == NS_LOOKUP) {
		key = ret = lookup_vote(&fo, op);
		if (ret >= 0)
			report_missing(&fo, op->parent, op->name);
	} else {
		ret = fanout_tally(&fo, "write", op->parent, 0, 0);
		key = first_voting_success(&fo);
	}
	if (ret >= 0 && ns_makes_entry(op->kind))
		ret = ns_make_entry(&fo, op, key, op->name, e);
	ns_close_fds(&fo, op);
	children_view_put(view);
	return ret < 0 ? ret : 0;
}

static bool bad_name(const char *name)
{
	return !*name || strchr(name, '/') || strcmp(name, ".") == 0 ||
	       strcmp(name, "..") == 0;
}

int fs_lookup(struct fs *fs, uint64_t parent, const char *name,
	      struct fs_entry *e)
{
	struct ns_op op = {.kind = NS_LOOKUP,
			   .parent = node_get(fs, parent),
			   .name = name};

	if (bad_name(name) || fs_reserved_name(parent, name))
		return -ENOENT;
	return ns_run(fs, &op, e);
}

void fs_forget(struct fs *fs, uint64_t ino, uint64_t nlookup)
{
	node_forget(fs, node_get(fs, ino), nlookup);
}

static int ns_create(struct fs *fs, struct ns_op *op, uint64_t parent,
		     struct fs_entry *e)
{
	struct fs_entry unused;

	if (bad_name(op->name))
		return -EINVAL;
	if (fs_reserved_name(parent, op->name))
		return -EPERM;
	op->parent = node_get(fs, parent);
	return ns_run(fs, op, e ? e : &unused);
}

int fs_mknod(struct fs *fs, uint64_t parent, const char *name, mode_t mode,
	     dev_t rdev, const struct fs_caller *who, struct fs_entry *e)
{
	struct ns_op op = {.kind = NS_MKNOD,
			   .name = name,
			   .mode = mode,
			   .rdev = rdev,
			   .who = who};

	return ns_create(fs, &op, parent, e);
}

int fs_mkdir(struct fs *fs, uint64_t parent, const char *name, mode_t mode,
	     const struct fs_caller *who, struct fs_entry *e)
{
	struct ns_op op = {.kind = NS_MKDIR,
			   .name = name,
			   .mode = mode | S_IFDIR,
			   .who = who};

	return ns_create(fs, &op, parent, e);
}

int fs_symlink(struct fs *fs, const char *target, uint64_t parent,
	       const char *name, const struct fs_caller *who,
	       struct fs_entry *e)
{
	struct ns_op op = {.kind = NS_SYMLINK,
			   .name = name,
			   .linktarget = target,
			   .mode = S_IFLNK,
			   .who = who};

	return ns_create(fs, &op, parent, e);
}

int fs_link(struct fs *fs, uint64_t ino, uint64_t newparent,
	    const char *newname, struct fs_entry *e)
{
	struct ns_op op = {
		.kind = NS_LINK, .name = newname, .target = node_get(fs, ino)};

	return ns_create(fs, &op, newparent, e);
}

int fs_unlink(struct fs *fs, uint64_t parent, const char *name)
{
	struct ns_op op = {.kind = NS_UNLINK, .name = name};

	return ns_create(fs, &op, parent, NULL);
}

int fs_rmdir(struct fs *fs, uint64_t parent, const char *name)
{
	struct ns_op op = {.kind = NS_RMDIR, .name = name};

	return ns_create(fs, &op, parent, NULL);
}

/* Point the moved nodes' names at their new place (for event paths). */
static void rename_follow(struct fs *fs, struct ns_op *op)
{
	const struct child_view *view = children_view_get(fs->set);
	struct stat st;

	for (int i = 0; i < view->n; i++) {
		int slot = child_slot(view->child[i]);
		int npfd = node_fd(fs, op->newparent, slot);
		int pfd = node_fd(fs, op->parent, slot);

		if (!view->votes[i] || npfd < 0 || pfd < 0 ||
		    fstatat(npfd, op->newname, &st, AT_SYMLINK_NOFOLLOW))
			continue;
		node_moved(fs, &st, op->newparent, op->newname);
		if ((op->flags & RENAME_EXCHANGE) &&
		    !fstatat(pfd, op->name, &st, AT_SYMLINK_NOFOLLOW))
			node_moved(fs, &st, op->parent, op->name);
		break;
	}
	children_view_put(view);
}

int fs_rename(struct fs *fs, uint64_t parent, const char *name,
	      uint64_t newparent, const char *newname, unsigned int flags)
{
	struct ns_op op = {.kind = NS_RENAME,
			   .name = name,
			   .newparent = node_get(fs, newparent),
			   .newname = newname,
			   .flags = flags};
	int ret;

	if (bad_name(name) || bad_name(newname))
		return -EINVAL;
	if (fs_reserved_name(parent, name) ||
	    fs_reserved_name(newparent, newname))
		return -EPERM;
	if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE))
		return -EINVAL;
	ret = ns_create(fs, &op, parent, NULL);
	if (!ret)
		rename_follow(fs, &op);
	return ret;
}
