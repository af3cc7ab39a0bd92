/*
 * Open files.
 *
 * An open file on the mount is one struct tree_file with a handle in each
 * child, opened at tree_open() with the caller's flags (O_APPEND, O_CREAT
 * and O_EXCL stripped: offsets come from the kernel, and creating is the
 * namespace's business), or on first use for a child added later. The
 * file holds a reference to its node, and every open file is on a list so
 * that a child leaving the set can have its handles closed.
 */
#define _GNU_SOURCE
#include "tree/tree_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

/* Open the child's handle of f now, with flags (f->flags, or those of
 * the open itself, which may truncate). */
static int file_open_slot(struct tree *tree, struct tree_file *f, int slot,
			  int flags)
{
	int pfd = tree_node_fd(tree, f->node, slot), fd, expected = -1;
	char proc[64];

	if (pfd < 0)
		return pfd;
	child_proc_path(pfd, proc);
	/* A witness's file is digests: read and written in small pieces,
	 * whatever the caller's mode. */
	if (tree_slot_is_witness(tree, slot))
		flags = (flags & ~(O_ACCMODE | O_DIRECT)) | O_RDWR;
	fd = open(proc, flags);
	if (fd < 0)
		return -errno;
	if (!atomic_compare_exchange_strong(&f->fd[slot], &expected, fd)) {
		close(fd); /* another thread opened it first */
		fd = expected;
	}
	return fd;
}

int file_fd(struct tree *tree, struct tree_file *f, int slot)
{
	int fd = atomic_load(&f->fd[slot]);

	if (fd >= 0)
		return fd;
	fd = atomic_load(&f->err[slot]);
	if (fd)
		return fd;
	return file_open_slot(tree, f, slot, f->flags);
}

int file_view_fd(struct tree *tree, const struct tree_file *f,
		 const struct child_view *v, int i, int *fd)
{
	*fd = file_fd(tree, (struct tree_file *)f, child_slot(v->child[i]));
	return *fd < 0 ? *fd : 0;
}

/* Whether child slot's buffered parts are worth trying inline. */
bool file_inline_worthwhile(const struct tree_file *f, atomic_uint *refused,
			    int slot)
{
	return !f->direct && !(atomic_load(refused) & (1u << slot));
}

void file_note_refused(atomic_uint *refused, const struct child_io *io,
		       int slot)
{
	if (io->refused)
		atomic_fetch_or(refused, 1u << slot);
}

/* ---- open / release ---- */

/* An open sent to every child; the request holds a reference to the
 * file, whose handles the parts fill in. */
struct open_op {
	struct tree *tree;
	struct tree_file *file;
	int flags;
};

static int open_body(struct child_request *rq, int i)
{
	struct open_op *op = rq->arg;
	int slot = child_slot(rq->view->child[i]);
	int fd = file_open_slot(op->tree, op->file, slot, op->flags);

	if (fd < 0 && rq->view->votes[i])
		atomic_store(&op->file->err[slot], fd);
	return fd < 0 ? fd : 0;
}

static void open_release(struct child_request *rq)
{
	struct open_op *op = rq->arg;

	file_put(op->tree, op->file);
}

static void file_close(struct tree_file *f)
{
	for (int s = 0; s < CHILDREN_MAX; s++) {
		int fd = atomic_load(&f->fd[s]);

		if (fd >= 0)
			close(fd);
	}
	free(f);
}

static void files_link(struct tree *tree, struct tree_file *f)
{
	pthread_mutex_lock(&tree->files.lock);
	f->next = tree->files.head;
	if (f->next)
		f->next->prev = f;
	tree->files.head = f;
	pthread_mutex_unlock(&tree->files.lock);
}

static void files_unlink(struct tree *tree, struct tree_file *f)
{
	pthread_mutex_lock(&tree->files.lock);
	if (f->prev)
		f->prev->next = f->next;
	else
		tree->files.head = f->next;
	if (f->next)
		f->next->prev = f->prev;
	pthread_mutex_unlock(&tree->files.lock);
}

/* A file with one reference, holding its node. Its flags lose O_TRUNC:
 * truncating is done once, by the open's own request. */
static struct tree_file *file_new(struct tree *tree, struct tree_node *n,
				  int flags)
{
	struct tree_file *f = calloc(1, sizeof(*f));

	if (!f)
		return NULL;
	tree_node_ref(tree, n);
	for (int s = 0; s < CHILDREN_MAX; s++)
		atomic_init(&f->fd[s], -1);
	atomic_init(&f->refs, 1);
	atomic_init(&f->rules, 0);
	f->node = n;
	f->direct = flags & O_DIRECT;
	/* The kernel gives offsets even for O_APPEND: never let a child
	 * pick its own end of file. It resolved the name too: the child's
	 * file is opened through /proc/self/fd, a link that O_NOFOLLOW
	 * would refuse with ELOOP. */
	f->flags = (flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_APPEND | O_TRUNC |
			      O_NOFOLLOW)) |
		   O_CLOEXEC;
	return f;
}

struct tree_file *file_reader(struct tree *tree, struct tree_node *n)
{
	return file_new(tree, n, O_RDONLY);
}

/* Open every child's handle of f; the outcome of it (fanout.c). */
static int open_children(struct tree *tree, const struct child_view *view,
			 struct tree_file *f, int flags)
{
	struct child_request *rq;
	struct open_op *op;
	int ret;

	rq = child_request_new(view, sizeof(*op), open_release);
	if (!rq)
		return -ENOMEM;
	op = rq->arg;
	*op = (struct open_op){
		.tree = tree, .file = f, .flags = f->flags | (flags & O_TRUNC)};
	file_get(f);
	tree_fanout(tree, rq, open_body);
	ret = tree_outcome(tree, view, rq->ret, !(flags & O_TRUNC),
			   (flags & O_ACCMODE) == O_RDONLY ? "read" : "write",
			   f->node, 0, 0);
	child_request_put(rq);
	return ret;
}

int tree_open(struct tree *tree, uint64_t ino, int flags,
	      struct tree_file **out)
{
	struct tree_node *n = tree_node(tree, ino);
	const struct child_view *view = NULL;
	struct tree_file *f = NULL;
	struct range_claim claim;
	int ret;

	if (!S_ISREG(n->type)) {
		ret = S_ISDIR(n->type) ? -EISDIR : -ENXIO;
		goto out;
	}
	f = file_new(tree, n, flags);
	if (!f) {
		ret = -ENOMEM;
		goto out;
	}
	if (flags & O_TRUNC) {
		range_lock(&n->ranges, &claim, 0, RANGE_END, true);
		intent_write(tree, n, 0, 1);
	}
	view = children_view_get(tree->set);
	ret = open_children(tree, view, f, flags);
	if (flags & O_TRUNC) {
		if (!ret)
			atomic_store(&n->size_hint, 0);
		range_unlock(&n->ranges, &claim);
	}
	if (ret)
		goto out;
	files_link(tree, f);
	*out = f;
	f = NULL;
out:
	if (f)
		file_put(tree, f);
	if (view)
		children_view_put(view);
	return ret;
}

void file_get(struct tree_file *f)
{
	atomic_fetch_add(&f->refs, 1);
}

void file_put(struct tree *tree, struct tree_file *f)
{
	struct tree_node *n = f->node;

	if (atomic_fetch_sub(&f->refs, 1) > 1)
		return;
	file_close(f);
	tree_node_unref(tree, n);
}

void tree_release(struct tree *tree, struct tree_file *f)
{
	files_unlink(tree, f);
	file_put(tree, f);
}

void files_forget_slot(struct tree *tree, int slot)
{
	pthread_mutex_lock(&tree->files.lock);
	for (struct tree_file *f = tree->files.head; f; f = f->next) {
		int fd = atomic_exchange(&f->fd[slot], -1);

		if (fd >= 0)
			close(fd);
		atomic_store(&f->err[slot], 0);
	}
	pthread_mutex_unlock(&tree->files.lock);
}

void files_release_all(struct tree *tree)
{
	while (tree->files.head)
		tree_release(tree, tree->files.head);
}
