/*
 * Writes, and everything else that changes a file's data: fallocate,
 * truncate's sibling (attr.c has truncate), fsync, flush; and SEEK_DATA /
 * SEEK_HOLE, which asks where the data is.
 *
 * Ordering. Every change holds an exclusive claim on its byte range of
 * the node for as long as any child works on it, so two overlapping
 * writes reach every child in the same order, and a read (which claims
 * shared) never votes on a write that some children have applied and
 * others not. A change that may grow the file claims from the smallest
 * size any child may have (node->size_hint) to the end of the file,
 * because a read past the old end would otherwise see some children
 * grown and others not.
 *
 * Each change is announced in the intent log (intent.c) before it goes
 * out, and its answers go to tree_outcome() (fanout.c), which applies
 * the write rule, reports and demotes.
 *
 * Buffers: a write's bytes are handed to the children as they came,
 * copied to an aligned buffer only when the file is O_DIRECT and
 * libfuse's buffer is not aligned (it places payloads 80 bytes in).
 */
#define _GNU_SOURCE
#include "tree/tree_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- ranges ---- */

/*
 * Claim [off, end) exclusively, or from the smallest possible size to the
 * end of file when the request may grow the file. The hint may move while
 * we wait, so check again once granted.
 */
static void lock_for_change(struct tree_node *n, struct range_claim *c,
			    off_t off, off_t end)
{
	for (;;) {
		off_t hint = atomic_load(&n->size_hint);
		bool grows = end > hint;

		range_lock(&n->ranges, c, grows && hint < off ? hint : off,
			   grows ? RANGE_END : end, true);
		hint = atomic_load(&n->size_hint);
		if (end <= hint || (grows && c->start <= hint))
			return;
		range_unlock(&n->ranges, c);
	}
}

/* While the set has a witness, a change claims whole blocks: a partial
 * block's digest needs its other bytes, which no other change may touch
 * meanwhile. */
static void lock_blocks(struct tree *tree, struct tree_node *n,
			struct range_claim *c, off_t off, off_t end)
{
	if (tree_has_witness(tree)) {
		off = off / WITNESS_BLOCK * WITNESS_BLOCK;
		end = (end + WITNESS_BLOCK - 1) / WITNESS_BLOCK * WITNESS_BLOCK;
	}
	lock_for_change(n, c, off, end);
}

static void grow_hint(struct tree_node *n, off_t end)
{
	int64_t hint = atomic_load(&n->size_hint);

	while (hint < end &&
	       !atomic_compare_exchange_weak(&n->size_hint, &hint, end))
		;
}

/* ---- write ---- */

struct write_op {
	struct tree_file *file;
	const char *buf;
	size_t size;
	off_t off;
};

/* An O_DIRECT write stops short when space runs out; going on from an
 * unaligned offset would say EINVAL instead. */
static int write_full(int fd, bool direct, const char *buf, size_t size,
		      off_t off)
{
	ssize_t r = child_rw_full(fd, true, direct, (void *)buf, size, off);

	if (r < 0)
		return (int)r;
	return (size_t)r < size ? -ENOSPC : 0;
}

/*
 * What child slot's part of the write came to: a part that came back
 * short is finished by hand (a buffered write may stop early), except a
 * short O_DIRECT write, which ran out of space (see write_full).
 */
static int write_rest(const struct write_op *op, const struct child_io *io,
		      int slot)
{
	size_t done = io->ret < 0 ? 0 : (size_t)io->ret;

	file_note_refused(&op->file->no_inline_write, io, slot);
	if (io->ret < 0)
		return io->ret;
	if (done == op->size)
		return 0;
	if (done > 0 && op->file->direct)
		return -ENOSPC;
	return write_full(io->fd, op->file->direct, op->buf + done,
			  op->size - done, op->off + done);
}

/* A witness's part: the digests, computed once for every witness
 * (wret: why they could not be). */
static int write_witness(struct tree *tree, const struct child_view *view,
			 const struct write_op *op, int i,
			 struct witness_change *wc, int *wret)
{
	int fd, ret = file_view_fd(tree, op->file, view, i, &fd);

	if (ret)
		return ret;
	if (!*wret && !wc->end)
		*wret = witness_prepare_write(tree, view, op->file->node,
					      op->buf, op->size, op->off, wc);
	return *wret ? *wret : witness_write(fd, wc);
}

/* Every witness's part; ret[i] gets witness i's answer. */
static void write_witnesses(struct tree *tree, const struct child_view *view,
			    const struct write_op *op, int *ret)
{
	struct witness_change wc = {.end = 0};
	int wret = 0;

	for (int i = 0; i < view->n; i++)
		if (view->witness[i])
			ret[i] = write_witness(tree, view, op, i, &wc, &wret);
	witness_change_free(&wc);
}

static bool at_once(void *arg, const struct child_io *io, int n)
{
	(void)arg;
	(void)io;
	(void)n;
	return true;
}

/*
 * The data children's parts on the ring, and the witnesses' digests. A
 * write of whole blocks needs no old bytes, so its digests are computed
 * while the data is written; a partial block's old bytes must be read
 * before any child has the new ones.
 */
static void write_all(struct tree *tree, const struct child_view *view,
		      const struct write_op *op, struct child_io *io, int *ret)
{
	struct child_io_wait w = {.enough = at_once};
	bool whole =
		op->off % WITNESS_BLOCK == 0 && op->size % WITNESS_BLOCK == 0;

	if (!view->witnesses) {
		child_io_run(tree->pool, io, view->n, tree->timeout_ms);
		return;
	}
	if (!whole) {
		write_witnesses(tree, view, op, ret);
		child_io_run(tree->pool, io, view->n, tree->timeout_ms);
		return;
	}
	if (child_io_start(tree->pool, io, view->n, tree->timeout_ms, &w)) {
		write_witnesses(tree, view, op, ret);
		child_io_finish(io, view->n, &w);
		return;
	}
	write_witnesses(tree, view, op, ret);
}

/* Every child, voting or syncing, writes the range at once; ret[i] gets
 * child i's answer. */
static void write_children(struct tree *tree, const struct child_view *view,
			   const struct write_op *op, int *ret)
{
	struct child_io io[CHILDREN_MAX];
	int fd;

	for (int i = 0; i < view->n; i++) {
		io[i] = (struct child_io){.fd = -1};
		if (view->witness[i])
			continue;
		ret[i] = file_view_fd(tree, op->file, view, i, &fd);
		if (!ret[i])
			io[i] = (struct child_io){
				.fd = fd,
				.child = view->child[i],
				.write = true,
				.buf = (void *)op->buf,
				.len = op->size,
				.off = op->off,
				.cached = file_inline_worthwhile(
					op->file, &op->file->no_inline_write,
					child_slot(view->child[i]))};
	}
	write_all(tree, view, op, io, ret);
	for (int i = 0; i < view->n; i++)
		if (io[i].fd >= 0)
			ret[i] = write_rest(op, &io[i],
					    child_slot(view->child[i]));
}

/*
 * The bits a write by who clears, the kernel's rule for a local file
 * (setattr_should_drop_suidgid): a caller without CAP_FSETID loses
 * S_ISUID, and S_ISGID where it means "run as the group" (group execute
 * set) or where the caller is not in the file's group.
 */
static mode_t setid_to_clear(const struct stat *st,
			     const struct tree_caller *who)
{
	mode_t kill = st->st_mode & S_ISUID;

	if ((st->st_mode & S_ISGID) &&
	    ((st->st_mode & S_IXGRP) ||
	     !who->creds->in_group(who->ctx, st->st_gid)))
		kill |= S_ISGID;
	if (!kill || who->creds->fsetid(who->ctx))
		return 0;
	return kill;
}

/* Before a write, as file_remove_privs() does on a local file system. */
static int drop_setid(struct tree *tree, struct tree_file *f,
		      const struct tree_caller *who)
{
	const struct child_view *view;
	struct stat st, now;
	mode_t kill;
	int ret;

	if (!who || !who->creds || !atomic_load(&f->node->setid))
		return 0;
	view = children_view_get(tree->set);
	ret = node_attr(tree, view, f->node, &st);
	children_view_put(view);
	if (ret || !(kill = setid_to_clear(&st, who)))
		return ret;
	st.st_mode &= ~kill;
	return tree_setattr(tree, tree_node_ino(tree, f->node), f, &st,
			    TREE_SET_MODE, &now);
}

ssize_t tree_write(struct tree *tree, struct tree_file *f, const void *buf,
		   size_t size, off_t off, const struct tree_caller *who)
{
	const struct child_view *view = NULL;
	struct write_op op = {.file = f, .buf = buf, .size = size, .off = off};
	int ret[CHILDREN_MAX];
	struct range_claim claim;
	char *copy = NULL;
	ssize_t result;

	result = drop_setid(tree, f, who);
	if (result)
		goto out;
	if (f->direct && (uintptr_t)buf % CHILD_IO_ALIGN) {
		copy = child_buf_get(size);
		if (!copy) {
			result = -ENOMEM;
			goto out;
		}
		memcpy(copy, buf, size);
		op.buf = copy;
	}
	lock_blocks(tree, f->node, &claim, off, off + size);
	intent_write(tree, f->node, off, size);
	/* The view after the announcement: a child that could not take it
	 * in io-timeout has been failed, and this write leaves it out. */
	view = policy_view(tree, f);
	write_children(tree, view, &op, ret);
	result = tree_outcome(tree, view, ret, false, "write", f->node, off,
			      size);
	if (!result) {
		grow_hint(f->node, off + size);
		result = size;
	}
	range_unlock(&f->node->ranges, &claim);
out:
	child_buf_put(copy, size);
	if (view)
		children_view_put(view);
	return result;
}

/* ---- fallocate, fsync, flush ---- */

/* One call on each child's handle of a file, on the pool. The request
 * holds a reference to the file. */
struct fd_op {
	struct tree *tree;
	struct tree_file *file;
	int (*call)(int fd, const struct fd_op *op);
	/* A witness's part, when not call (wret: why it cannot be done). */
	int (*witness_call)(int fd, const struct fd_op *op);
	int mode;
	off_t off, len;
	struct witness_change wc;
	int wret;
};

static int fd_body(struct child_request *rq, int i)
{
	struct fd_op *op = rq->arg;
	int fd, ret = file_view_fd(op->tree, op->file, rq->view, i, &fd);

	if (ret)
		return ret;
	if (rq->view->witness[i] && op->witness_call)
		return op->wret ? op->wret : op->witness_call(fd, op);
	return op->call(fd, op);
}

static void fd_release(struct child_request *rq)
{
	struct fd_op *op = rq->arg;

	witness_change_free(&op->wc);
	file_put(op->tree, op->file);
}

/* The digests a zeroing fallocate needs, before any child changes. */
static int fallocate_digests(struct tree *tree, const struct child_view *view,
			     struct fd_op *op)
{
	if (!(op->mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)))
		return 0;
	return witness_prepare_zero(tree, view, op->file->node, op->off,
				    op->len, &op->wc);
}

static int fd_run(struct tree *tree, const struct fd_op *how, const char *type)
{
	const struct child_view *view = policy_view(tree, how->file);
	struct child_request *rq =
		child_request_new(view, sizeof(*how), fd_release);
	/* Closing a file opened for reading changes nothing on any child. */
	bool probe = (how->file->flags & O_ACCMODE) == O_RDONLY;
	struct fd_op *op;
	int ret = -ENOMEM;

	if (rq) {
		op = rq->arg;
		*op = *how;
		op->tree = tree;
		file_get(op->file);
		if (view->witnesses && how->witness_call)
			op->wret = fallocate_digests(tree, view, op);
		tree_fanout(tree, rq, fd_body);
		ret = tree_outcome(tree, view, rq->ret, probe, type,
				   op->file->node, op->off, op->len);
		child_request_put(rq);
	}
	children_view_put(view);
	return ret;
}

static int call_fallocate(int fd, const struct fd_op *op)
{
	return child_result(fallocate(fd, op->mode, op->off, op->len));
}

static int witness_fallocate_call(int fd, const struct fd_op *op)
{
	return witness_fallocate(fd, &op->wc, op->mode, op->off, op->len);
}

/* Modes that move data: a witness's list would have to move too. */
#define FALLOC_MOVES (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE)

int tree_fallocate(struct tree *tree, struct tree_file *f, int mode, off_t off,
		   off_t len)
{
	struct fd_op op = {.file = f,
			   .call = call_fallocate,
			   .witness_call = witness_fallocate_call,
			   .mode = mode,
			   .off = off,
			   .len = len};
	struct range_claim claim;
	int ret;

	if ((mode & FALLOC_MOVES) && tree_has_witness(tree))
		return -EOPNOTSUPP;
	if ((mode & FALLOC_FL_KEEP_SIZE) && !tree_has_witness(tree))
		range_lock(&f->node->ranges, &claim, off, off + len, true);
	else
		lock_blocks(tree, f->node, &claim, off, off + len);
	intent_write(tree, f->node, off, len);
	ret = fd_run(tree, &op, "write");
	if (!ret && !(mode & FALLOC_FL_KEEP_SIZE))
		grow_hint(f->node, off + len);
	range_unlock(&f->node->ranges, &claim);
	return ret;
}

/* On the ring like reads and writes, so that io-timeout bounds it too. */
int tree_fsync(struct tree *tree, struct tree_file *f, bool datasync)
{
	const struct child_view *view = policy_view(tree, f);
	struct child_io io[CHILDREN_MAX];
	int ret[CHILDREN_MAX], fd, result;

	for (int i = 0; i < view->n; i++) {
		io[i] = (struct child_io){.fd = -1};
		ret[i] = file_view_fd(tree, f, view, i, &fd);
		if (!ret[i])
			io[i] = (struct child_io){
				.fd = fd,
				.child = view->child[i],
				.sync = datasync ? CHILD_IO_FDATASYNC
						 : CHILD_IO_FSYNC};
	}
	child_io_run(tree->pool, io, view->n, tree->timeout_ms);
	for (int i = 0; i < view->n; i++)
		if (io[i].fd >= 0)
			ret[i] = io[i].ret < 0 ? io[i].ret : 0;
	result = tree_outcome(tree, view, ret, false, "flush", f->node, 0, 0);
	children_view_put(view);
	return result;
}

/* close() of a duplicate reports what the child's close would (NFS). */
static int call_flush(int fd, const struct fd_op *op)
{
	int dup_fd = dup(fd);

	(void)op;
	if (dup_fd < 0)
		return -errno;
	return child_result(close(dup_fd));
}

int tree_flush(struct tree *tree, struct tree_file *f)
{
	struct fd_op op = {.file = f, .call = call_flush};

	return fd_run(tree, &op, "flush");
}

/* ---- SEEK_DATA / SEEK_HOLE ---- */

/*
 * Data is wherever any voting child has data, so SEEK_DATA is the
 * smallest answer, and a hole starts only where every child has one:
 * SEEK_HOLE moves forward until all children agree on the same offset.
 */
static off_t seek_voters(struct tree *tree, const struct tree_file *f,
			 const struct child_view *v, off_t off, int whence,
			 bool *all_same)
{
	off_t best = -ENXIO;

	*all_same = true;
	for (int i = 0; i < v->n; i++) {
		off_t r;
		int fd;

		if (!view_reads(v, i) || file_view_fd(tree, f, v, i, &fd))
			continue;
		r = lseek(fd, off, whence);
		if (r < 0)
			r = -errno;
		if (r == -ENXIO && whence == SEEK_HOLE)
			r = off; /* past a child's end is a hole */
		if (r < 0 && r != -ENXIO)
			return r;
		*all_same &= r == off;
		if (whence == SEEK_DATA && r >= 0 && (best < 0 || r < best))
			best = r;
		if (whence == SEEK_HOLE && r > best)
			best = r;
	}
	return best;
}

off_t tree_lseek_locked(struct tree *tree, const struct child_view *view,
			struct tree_file *f, off_t off, int whence)
{
	bool same;
	off_t r = seek_voters(tree, f, view, off, whence, &same);

	for (int round = 0; whence == SEEK_HOLE && r >= 0 && round < 1024;
	     round++) {
		off_t next = seek_voters(tree, f, view, r, SEEK_HOLE, &same);

		if (same || next < 0)
			break;
		r = next;
	}
	return r;
}

off_t tree_lseek(struct tree *tree, struct tree_file *f, off_t off, int whence)
{
	const struct child_view *view = children_view_get(tree->set);
	struct range_claim claim;
	off_t r;

	range_lock(&f->node->ranges, &claim, off, RANGE_END, false);
	r = tree_lseek_locked(tree, view, f, off, whence);
	range_unlock(&f->node->ranges, &claim);
	children_view_put(view);
	return r;
}

struct tree_node *tree_file_node(const struct tree_file *f)
{
	return f->node;
}
