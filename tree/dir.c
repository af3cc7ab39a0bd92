/*
 * Directory listings.
 *
 * At opendir every voting child's listing is read whole, the names are
 * merged, and a name is listed when at least threshold children have it.
 * Names only some children have are reported. Reading the listing once
 * keeps readdir offsets stable however the children order their entries.
 */
#define _GNU_SOURCE
#include "tree/tree_i.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct dir_name {
	char *name;
	unsigned char type; /* DT_* */
	ino_t ino;
	int child; /* view index of the child that listed it */
};

struct tree_dir {
	size_t count;
	struct dir_name *entry;
};

/* Every voting child's listing, read whole. A part frees its names when
 * it fails; the caller takes those of the parts that answered, release
 * those of late parts. */
struct list_op {
	struct node_arg a;
	struct dir_name *names[CHILDREN_MAX];
	size_t count[CHILDREN_MAX];
};

static void names_free(struct list_op *op, int i)
{
	for (size_t k = 0; k < op->count[i]; k++)
		free(op->names[i][k].name);
	free(op->names[i]);
	op->names[i] = NULL;
	op->count[i] = 0;
}

static int list_add(struct list_op *op, int i, size_t *cap,
		    const struct dirent *de)
{
	if (op->count[i] == *cap) {
		size_t grown = *cap ? *cap * 2 : 64;
		struct dir_name *p = realloc(op->names[i], grown * sizeof(*p));

		if (!p)
			return -ENOMEM;
		op->names[i] = p;
		*cap = grown;
	}
	op->names[i][op->count[i]] =
		(struct dir_name){.name = strdup(de->d_name),
				  .type = de->d_type,
				  .ino = de->d_ino,
				  .child = i};
	if (!op->names[i][op->count[i]].name)
		return -ENOMEM;
	op->count[i]++;
	return 0;
}

static int list_child(struct list_op *op, int i, int fd)
{
	struct dirent *de;
	size_t cap = 0;
	int ret = 0;
	DIR *d;

	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	errno = 0;
	while (!ret && (de = readdir(d))) {
		bool hidden = op->a.node->parent == NULL &&
			      tree_reserved_name(TREE_ROOT_INO, de->d_name);

		if (!hidden)
			ret = list_add(op, i, &cap, de);
	}
	if (!ret && errno)
		ret = -errno;
	closedir(d);
	return ret;
}

static int list_body(struct child_request *rq, int i)
{
	struct list_op *op = rq->arg;
	int pfd = tree_node_fd(op->a.tree, op->a.node,
			       child_slot(rq->view->child[i]));
	int fd, ret;

	if (!rq->view->votes[i])
		return 0;
	if (pfd < 0)
		return pfd;
	fd = openat(pfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	ret = fd < 0 ? -errno : list_child(op, i, fd);
	if (ret)
		names_free(op, i);
	return ret;
}

static void list_release(struct child_request *rq)
{
	struct list_op *op = rq->arg;

	for (int i = 0; i < rq->view->n; i++)
		if (rq->late & (1u << i))
			names_free(op, i);
}

static int by_name(const void *a, const void *b)
{
	const struct dir_name *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	return c ? c : x->child - y->child;
}

/* Keep names that threshold children list; report the others. */
static size_t merge(struct child_request *rq, struct list_op *op,
		    struct dir_name *all, size_t total, struct dir_name *out)
{
	size_t kept = 0;

	qsort(all, total, sizeof(*all), by_name);
	for (size_t i = 0, j; i < total; i = j) {
		for (j = i + 1; j < total && !strcmp(all[i].name, all[j].name);
		     j++)
			free(all[j].name);
		if ((int)(j - i) >= rq->view->threshold) {
			out[kept++] = all[i];
			continue;
		}
		event_log_report_bad(op->a.tree->log, "read",
				     child_name(rq->view->child[all[i].child]),
				     0, 0, 0, all[i].name);
		free(all[i].name);
	}
	return kept;
}

static int listing_vote(struct child_request *rq, struct list_op *op,
			struct tree_dir *d)
{
	size_t total = 0, pos = 0, good = 0;
	struct dir_name *all;

	for (int i = 0; i < rq->view->n; i++) {
		if (rq->ret[i])
			continue;
		total += op->count[i];
		good += rq->view->votes[i];
	}
	if ((int)good < rq->view->threshold)
		return tree_error_vote(rq->view, rq->ret);
	all = malloc((total ? total : 1) * sizeof(*all));
	d->entry = malloc((total ? total : 1) * sizeof(*d->entry));
	if (!all || !d->entry) {
		free(all);
		return -ENOMEM;
	}
	for (int i = 0; i < rq->view->n; i++) {
		if (rq->ret[i] || !op->count[i])
			continue;
		memcpy(all + pos, op->names[i], op->count[i] * sizeof(*all));
		pos += op->count[i];
		op->count[i] = 0; /* the names now belong to all[] */
	}
	d->count = merge(rq, op, all, total, d->entry);
	free(all);
	return 0;
}

int tree_opendir(struct tree *tree, uint64_t ino, struct tree_dir **out)
{
	const struct child_view *view = children_view_get(tree->set);
	struct child_request *rq =
		node_request(tree, view, tree_node(tree, ino),
			     sizeof(struct list_op), list_release);
	struct tree_dir *d = calloc(1, sizeof(*d));
	int ret = -ENOMEM;

	if (rq && d) {
		tree_fanout(tree, rq, list_body);
		ret = listing_vote(rq, rq->arg, d);
		for (int i = 0; i < view->n; i++)
			if (!rq->ret[i])
				names_free(rq->arg, i);
	}
	child_request_put(rq);
	if (!ret)
		*out = d;
	else
		tree_releasedir(d);
	children_view_put(view);
	return ret;
}

bool tree_dir_entry(const struct tree_dir *d, size_t i, const char **name,
		    struct stat *st)
{
	if (i >= d->count)
		return false;
	*name = d->entry[i].name;
	memset(st, 0, sizeof(*st));
	st->st_ino = d->entry[i].ino;
	st->st_mode = DTTOIF(d->entry[i].type);
	return true;
}

void tree_releasedir(struct tree_dir *d)
{
	if (!d)
		return;
	for (size_t i = 0; d->entry && i < d->count; i++)
		free(d->entry[i].name);
	free(d->entry);
	free(d);
}

struct dirsync_op {
	struct node_arg a;
	bool datasync;
};

static int dirsync_body(struct child_request *rq, int i)
{
	struct dirsync_op *op = rq->arg;
	int pfd = tree_node_fd(op->a.tree, op->a.node,
			       child_slot(rq->view->child[i]));

	return pfd < 0 ? pfd : child_sync_dir(pfd, ".", op->datasync);
}

int tree_fsyncdir(struct tree *tree, uint64_t ino, bool datasync)
{
	const struct child_view *view = children_view_get(tree->set);
	struct tree_node *n = tree_node(tree, ino);
	struct child_request *rq =
		node_request(tree, view, n, sizeof(struct dirsync_op), NULL);
	int ret = -ENOMEM;

	if (rq) {
		((struct dirsync_op *)rq->arg)->datasync = datasync;
		tree_fanout(tree, rq, dirsync_body);
		ret = tree_outcome(tree, view, rq->ret, false, "flush", n, 0,
				   0);
		child_request_put(rq);
	}
	children_view_put(view);
	return ret;
}
