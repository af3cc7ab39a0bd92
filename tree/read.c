/*
 * Voted reads.
 *
 * Every voting child reads the range into its own CHILD_IO_ALIGN-aligned
 * buffer (children opened with O_DIRECT on ext4 or xfs refuse anything
 * else, and a child that checksums in the buffer must not share it), at
 * once, through the calling thread's ring (children/io.c). The answers
 * are voted (vote/vote.h): the whole request first, as QEMU does, then,
 * only when that finds no quorum, each TREE_VOTE_BLOCK block on its own.
 * The reply is sent from the winning buffers without a copy.
 *
 * A read claims its range shared, so it never votes on a write half
 * applied, and takes its view after the claim, so a write ordered before
 * it has demoted any child that missed it. It is answered as soon as a
 * strict majority agrees; the late answers are checked after the reply
 * (tree_answer_release), still under the claim, reported when they
 * differ and rewritten under rewrite-corrupted.
 */
#define _GNU_SOURCE
#include "tree/tree_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vote/vote.h"

struct read_op {
	struct tree *tree;
	struct tree_file *file;
	const struct child_view *view;
	off_t off;
	size_t size;
	bool early; /* may answer before every voter has (tree_read) */
	char *buf[CHILDREN_MAX];
	size_t len[CHILDREN_MAX];
	int ret[CHILDREN_MAX]; /* per view index: 0 or -errno */
	struct child_io io[CHILDREN_MAX];
	struct child_io_wait wait;
	bool late[CHILDREN_MAX]; /* still reading when the answer went */
};

/*
 * Read the whole range or up to end of file. With O_DIRECT a short read
 * means end of file: reading on from an unaligned offset would fail.
 */
static int read_full(int fd, bool direct, char *buf, size_t size, off_t off,
		     size_t *got)
{
	ssize_t r = child_rw_full(fd, false, direct, buf, size, off);

	if (r < 0)
		return (int)r;
	*got = r;
	return 0;
}

/* Prepare voting child i's part of a read; 0, or why it cannot read. */
static int read_part(struct read_op *op, const struct child_view *v, int i,
		     struct child_io *io)
{
	size_t cap = (op->size + CHILD_IO_ALIGN - 1) / CHILD_IO_ALIGN *
		     CHILD_IO_ALIGN;
	int fd, ret = file_view_fd(op->tree, op->file, v, i, &fd);

	if (ret)
		return ret;
	op->buf[i] = child_buf_get(cap);
	if (!op->buf[i])
		return -ENOMEM;
	*io = (struct child_io){.fd = fd,
				.buf = op->buf[i],
				.child = v->child[i],
				.own_buf = true,
				.len = op->size,
				.off = op->off,
				.cached = file_inline_worthwhile(
					op->file, &op->file->no_inline_read,
					child_slot(v->child[i]))};
	return 0;
}

/* One child's read, on the calling thread (read-pattern=fifo). */
static int read_child(struct read_op *op, const struct child_view *v, int i)
{
	struct child_io io;
	int ret;

	op->len[i] = 0;
	ret = read_part(op, v, i, &io);
	if (ret)
		return ret;
	return read_full(io.fd, op->file->direct, op->buf[i], op->size, op->off,
			 &op->len[i]);
}

/* A part that came back short: EOF for O_DIRECT, else read on. */
static int read_rest(struct read_op *op, int i, const struct child_io *io)
{
	size_t more = 0;
	int ret;

	op->len[i] = io->ret;
	if (op->len[i] == 0 || op->len[i] == op->size || op->file->direct)
		return 0;
	ret = read_full(io->fd, false, op->buf[i] + op->len[i],
			op->size - op->len[i], op->off + op->len[i], &more);
	op->len[i] += more;
	return ret;
}

/* The parts voting child i's answer is made of, once it arrived. */
static int read_arrived(struct read_op *op, int i)
{
	struct child_io *io = &op->io[i];

	if (io->orphaned)
		op->buf[i] = NULL; /* the ring frees it when done */
	file_note_refused(&op->file->no_inline_read, io,
			  child_slot(op->view->child[i]));
	if (io->ret >= 0)
		child_error_streak(op->view->child[i], false);
	return io->ret < 0 ? io->ret : read_rest(op, i, io);
}

/* A complete answer: all asked for, or an O_DIRECT end of file. */
static bool whole_part(const struct read_op *op, const struct child_io *io)
{
	return io->done && io->ret >= 0 &&
	       ((size_t)io->ret == io->len || op->file->direct);
}

/*
 * Whether the answers in so far settle the vote: a strict majority of the
 * voters (and at least threshold) returned the same bytes. No later
 * answer can outvote them, so the reader need not wait for it.
 */
static bool majority_agrees(void *arg, const struct child_io *io, int n)
{
	const struct read_op *op = arg;
	int need = op->view->voters / 2 + 1;

	if (need < op->view->threshold)
		need = op->view->threshold;
	for (int i = 0; i < n; i++) {
		int same = 1;

		if (!whole_part(op, &io[i]))
			continue;
		for (int j = i + 1; j < n; j++)
			same += whole_part(op, &io[j]) &&
				io[j].ret == io[i].ret &&
				!memcmp(io[i].buf, io[j].buf, io[i].ret);
		if (same >= need)
			return true;
	}
	return false;
}

/*
 * Every voting child reads the range into its own buffer, at once. An
 * early read stops waiting once a strict majority agrees; the others are
 * late, and tree_answer_release() checks them.
 */
static void read_voters(struct read_op *op)
{
	struct child_io *io = op->io;

	for (int i = 0; i < op->view->n; i++) {
		io[i] = (struct child_io){.fd = -1};
		op->len[i] = 0;
		op->ret[i] = view_reads(op->view, i)
				     ? read_part(op, op->view, i, &io[i])
				     : 0;
	}
	op->wait = (struct child_io_wait){.arg = op};
	if (op->early && op->view->voters > 1)
		op->wait.enough = majority_agrees;
	child_io_start(op->tree->pool, io, op->view->n, op->tree->timeout_ms,
		       &op->wait);
	for (int i = 0; i < op->view->n; i++) {
		op->late[i] = io[i].fd >= 0 && !io[i].done;
		if (io[i].fd >= 0 && !op->late[i])
			op->ret[i] = read_arrived(op, i);
	}
}

/* A read answered before every voter was: what its release checks. */
struct read_late {
	struct range_claim claim;
	struct read_op op;
	bool held; /* holds a reference to op.file */
};

static void read_late_end(struct read_late *late, const struct tree_answer *r);

/*
 * Each thread keeps one read_late for its next read, so a read costs no
 * allocation for it: a read and its late check always run on the thread
 * that started them.
 */
static pthread_key_t late_key;
static pthread_once_t late_once = PTHREAD_ONCE_INIT;
static bool late_keyless;

static void late_key_create(void)
{
	late_keyless = pthread_key_create(&late_key, free) != 0;
}

static struct read_late *late_take(void)
{
	struct read_late *late = NULL;

	pthread_once(&late_once, late_key_create);
	if (!late_keyless && (late = pthread_getspecific(late_key)))
		pthread_setspecific(late_key, NULL);
	return late ? late : malloc(sizeof(*late));
}

static void late_give(struct read_late *late)
{
	if (late_keyless || pthread_getspecific(late_key) ||
	    pthread_setspecific(late_key, late))
		free(late);
}

struct read_answer {
	struct tree *tree;
	struct read_late *late;	 /* voters still reading, or NULL */
	size_t size;		 /* of each buffer */
	char *buf[CHILDREN_MAX]; /* every buffer the answer may point into */
	char *own;		 /* a witness vote's answer (malloc) */
	struct iovec iov[];
};

static int answer_new(struct tree_answer *r, struct read_op *op, int iovcnt)
{
	struct read_answer *a;

	a = malloc(sizeof(*a) + iovcnt * sizeof(struct iovec));
	if (!a)
		return -ENOMEM;
	a->tree = op->tree;
	a->late = NULL;
	a->own = NULL;
	a->size = op->size;
	for (int i = 0; i < CHILDREN_MAX; i++) {
		a->buf[i] = op->late[i] ? NULL : op->buf[i];
		op->buf[i] = op->late[i] ? op->buf[i] : NULL;
	}
	r->owner = a;
	r->iov = a->iov;
	r->iovcnt = 0;
	r->len = 0;
	return 0;
}

static void answer_add(struct tree_answer *r, const char *p, size_t len)
{
	struct iovec *last = r->iovcnt ? &r->iov[r->iovcnt - 1] : NULL;

	if (!len)
		return;
	if (last && (char *)last->iov_base + last->iov_len == p)
		last->iov_len += len;
	else
		r->iov[r->iovcnt++] = (struct iovec){(void *)p, len};
	r->len += len;
}

void tree_answer_release(struct tree_answer *r)
{
	struct read_answer *a = r->owner;

	if (!a)
		return;
	if (a->late)
		read_late_end(a->late, r);
	for (int i = 0; i < CHILDREN_MAX; i++)
		child_buf_put(a->buf[i], a->size);
	free(a->own);
	free(a);
	r->owner = NULL;
}

static void report_read(struct tree *tree, const struct child_view *v, int i,
			const char *path, uint64_t off, uint64_t len, int error)
{
	child_count_error(v->child[i], CHILD_OP_READ);
	event_log_report_bad(tree->log, "read", child_name(v->child[i]), off,
			     len, error, path ? path : "");
	if (error)
		health_read_error(tree, v->child[i], error);
}

static size_t min_size(size_t a, size_t b)
{
	return a < b ? a : b;
}

/*
 * rewrite-corrupted: write the winning bytes over a child that lost the
 * vote, before the read returns (QEMU waits too), once what they replace
 * (old, old_len bytes of the child's answer at off) is in the child's
 * quarantine. A correction attempt: its failure is not the reader's.
 */
static void rewrite_child(struct read_op *op, const struct child_view *v, int i,
			  const char *data, size_t len, off_t off,
			  const char *old, size_t old_len)
{
	int slot = child_slot(v->child[i]);
	int pfd = tree_node_fd(op->tree, op->file->node, slot);
	char proc[64], *path;
	int fd, saved;

	if (pfd < 0)
		return;
	path = tree_node_path(op->tree, op->file->node);
	saved = quarantine_save(
		op->tree->quarantine, v, i,
		&(struct quarantine_bytes){.path = path ? path : "",
					   .off = off,
					   .old = old,
					   .old_len = old_len,
					   .new = data,
					   .new_len = len,
					   .why = QUARANTINE_REWRITE});
	free(path);
	if (saved)
		return; /* never overwrite what could not be kept */
	child_proc_path(pfd, proc);
	fd = open(proc, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	if (pwrite(fd, data, len, off) < 0)
		child_count_error(v->child[i], CHILD_OP_WRITE);
	close(fd);
}

/* Fill ballots from the voting children; map[k] is the view index. */
static int read_ballots(struct read_op *op, struct vote_ballot *b, int *map)
{
	int n = 0;

	for (int i = 0; i < op->view->n; i++) {
		if (!view_reads(op->view, i) || op->late[i])
			continue;
		map[n] = i;
		b[n++] = (struct vote_ballot){.error = op->ret[i],
					      .data = op->buf[i],
					      .len = op->len[i]};
	}
	return n;
}

static int blkverify_mismatch(struct tree *tree, struct read_op *op,
			      const struct vote_ballot *b)
{
	ssize_t at =
		vote_first_difference(b[0].data, b[0].len, b[1].data, b[1].len);

	fprintf(stderr,
		"quorum: offset=%lld bytes=%zu contents mismatch at offset "
		"%lld\n",
		(long long)op->off, op->size, (long long)(op->off + at));
	atomic_store(&tree->fatal, true);
	return -EIO;
}

static int answer_whole(struct read_op *op, const struct vote_result *vr,
			const int *map, const char *path, struct tree_answer *r)
{
	int w = map[vr->winner];

	for (int k = 0; k < op->view->voters && !vr->unanimous; k++) {
		if (!vr->loser[k])
			continue;
		report_read(op->tree, op->view, map[k], path, op->off, op->size,
			    0);
		if (op->view->rewrite_corrupted)
			rewrite_child(op, op->view, map[k], op->buf[w],
				      op->len[w], op->off, op->buf[map[k]],
				      min_size(op->len[map[k]], op->len[w]));
	}
	if (answer_new(r, op, 1))
		return -ENOMEM;
	answer_add(r, ((struct read_answer *)r->owner)->buf[w], op->len[w]);
	return 0;
}

/* rewrite-corrupted after a per-block vote: repair each bad range. */
static void rewrite_blocks(struct read_op *op, const struct child_view *v,
			   const struct tree_answer *r,
			   const struct vote_blocks_result *vb, const int *map,
			   int n)
{
	const struct read_answer *owner = r->owner;
	char *answer = malloc(r->len ? r->len : 1);
	size_t pos = 0;

	if (!answer)
		return; /* a correction attempt only */
	for (int k = 0; k < r->iovcnt; k++) {
		memcpy(answer + pos, r->iov[k].iov_base, r->iov[k].iov_len);
		pos += r->iov[k].iov_len;
	}
	for (int k = 0; k < n; k++) {
		size_t end = vb->bad_end[k] < r->len ? vb->bad_end[k] : r->len;
		/* The answer owns every voter's buffer by now. */
		const char *mine = owner->buf[map[k]];
		size_t own = op->len[map[k]];

		if (vb->bad[k] && vb->bad_start[k] < end && mine)
			rewrite_child(op, v, map[k], answer + vb->bad_start[k],
				      end - vb->bad_start[k],
				      op->off + vb->bad_start[k],
				      mine + vb->bad_start[k],
				      own > vb->bad_start[k]
					      ? min_size(own, end) -
							vb->bad_start[k]
					      : 0);
	}
	free(answer);
}

/* Beyond QEMU: vote each block, when the whole request found no quorum. */
static int answer_blocks(struct read_op *op, const struct vote_ballot *b, int n,
			 const int *map, const char *path,
			 struct tree_answer *r)
{
	size_t nblocks = (op->size + TREE_VOTE_BLOCK - 1) / TREE_VOTE_BLOCK;
	struct vote_blocks_result vb;
	struct read_answer *a;
	int *winner, ret;

	winner = malloc((nblocks ? nblocks : 1) * sizeof(*winner));
	if (!winner)
		return -ENOMEM;
	ret = vote_blocks(b, n, op->view->threshold, TREE_VOTE_BLOCK, winner,
			  &vb);
	if (ret || (ret = answer_new(r, op, (int)nblocks + 1)))
		goto out;
	a = r->owner;
	for (size_t blk = 0; blk * TREE_VOTE_BLOCK < vb.len; blk++) {
		size_t off = blk * TREE_VOTE_BLOCK;
		size_t len = vb.len - off < TREE_VOTE_BLOCK ? vb.len - off
							    : TREE_VOTE_BLOCK;

		answer_add(r, a->buf[map[winner[blk]]] + off, len);
	}
	for (int k = 0; k < n; k++) {
		if (!vb.bad[k])
			continue;
		report_read(op->tree, op->view, map[k], path,
			    op->off + vb.bad_start[k],
			    vb.bad_end[k] - vb.bad_start[k], 0);
	}
	if (op->view->rewrite_corrupted)
		rewrite_blocks(op, op->view, r, &vb, map, n);
out:
	free(winner);
	return ret;
}

/* ---- the witness's vote, when the data children disagree ---- */

/*
 * The blocks a read touches, whole, as each voter sees them: a data
 * voter's bytes read again and hashed (zero-padded past its end of file),
 * a witness's digest list. By view index; err[i] is why voter i has none.
 */
struct wvote {
	off_t start; /* the first block's offset */
	size_t nblocks;
	char *buf[CHILDREN_MAX];
	size_t len[CHILDREN_MAX];
	unsigned char *dig[CHILDREN_MAX];
	int err[CHILDREN_MAX];
	off_t bad_start[CHILDREN_MAX], bad_end[CHILDREN_MAX];
};

static bool witness_votes(const struct child_view *v)
{
	for (int i = 0; i < v->n; i++)
		if (v->votes[i] && v->witness[i])
			return true;
	return false;
}

static int wvote_read(struct read_op *op, struct wvote *w, int i)
{
	size_t bytes = w->nblocks * TREE_VOTE_BLOCK;
	int fd, ret = file_view_fd(op->tree, op->file, op->view, i, &fd);
	ssize_t got;

	if (ret)
		return ret;
	w->dig[i] = malloc(w->nblocks * WITNESS_DIGEST);
	if (!w->dig[i])
		return -ENOMEM;
	if (op->view->witness[i])
		return witness_get(fd, (uint64_t)w->start / WITNESS_BLOCK,
				   w->dig[i], w->nblocks);
	w->buf[i] = child_buf_alloc(bytes);
	if (!w->buf[i])
		return -ENOMEM;
	got = child_rw_full(fd, false, op->file->direct, w->buf[i], bytes,
			    w->start);
	if (got < 0)
		return (int)got;
	w->len[i] = (size_t)got;
	memset(w->buf[i] + got, 0, bytes - (size_t)got);
	for (size_t b = 0; b < w->nblocks; b++)
		witness_digest(w->buf[i] + b * WITNESS_BLOCK,
			       w->dig[i] + b * WITNESS_DIGEST);
	return 0;
}

static bool wvote_same(const struct wvote *w, int i, int j, size_t b)
{
	return !w->err[i] && !w->err[j] &&
	       !memcmp(w->dig[i] + b * WITNESS_DIGEST,
		       w->dig[j] + b * WITNESS_DIGEST, WITNESS_DIGEST);
}

/* Block b's winner: the data voter whose digest the most voters share,
 * if they reach the threshold; else -1. A witness alone never wins. */
static int wvote_block(const struct read_op *op, const struct wvote *w,
		       size_t b)
{
	int best = -1, best_n = 0;

	for (int i = 0; i < op->view->n; i++) {
		int count = 0;

		if (!view_reads(op->view, i) || w->err[i])
			continue;
		for (int j = 0; j < op->view->n; j++)
			count += op->view->votes[j] && wvote_same(w, i, j, b);
		if (count > best_n) {
			best = i;
			best_n = count;
		}
	}
	return best_n >= op->view->threshold ? best : -1;
}

/* Bytes of voter j's block b that its answer holds (its old bytes). */
static size_t wvote_left(const struct wvote *w, int j, size_t b)
{
	size_t at = b * WITNESS_BLOCK;

	return w->len[j] > at ? min_size(w->len[j] - at, WITNESS_BLOCK) : 0;
}

/* Voters whose block b is not the winner's: their bad range grows, and
 * under rewrite-corrupted they get the winner's block (a data voter) or
 * its digest (a witness). */
static void wvote_losers(struct read_op *op, struct wvote *w, size_t b, int k)
{
	off_t at = w->start + (off_t)(b * WITNESS_BLOCK);
	size_t have = w->len[k] > b * WITNESS_BLOCK
			      ? w->len[k] - b * WITNESS_BLOCK
			      : 0;
	int fd;

	for (int j = 0; j < op->view->n; j++) {
		if (!op->view->votes[j] || w->err[j] || wvote_same(w, k, j, b))
			continue;
		if (w->bad_end[j] == 0)
			w->bad_start[j] = at;
		w->bad_end[j] = at + WITNESS_BLOCK;
		if (!op->view->rewrite_corrupted)
			continue;
		if (!op->view->witness[j])
			rewrite_child(op, op->view, j,
				      w->buf[k] + b * WITNESS_BLOCK,
				      min_size(have, WITNESS_BLOCK), at,
				      w->buf[j] + b * WITNESS_BLOCK,
				      wvote_left(w, j, b));
		else if (!file_view_fd(op->tree, op->file, op->view, j, &fd))
			witness_put(fd, (uint64_t)at / WITNESS_BLOCK,
				    w->dig[k] + b * WITNESS_DIGEST, 1);
	}
}

/* The winner's bytes of block b inside the read; false at its end of
 * file. */
static bool wvote_take(const struct read_op *op, const struct wvote *w,
		       size_t b, int k, char *out, size_t *pos)
{
	off_t bs = w->start + (off_t)(b * WITNESS_BLOCK);
	off_t end = op->off + (off_t)op->size,
	      from = op->off > bs ? op->off : bs;
	off_t to = bs + WITNESS_BLOCK < end ? bs + WITNESS_BLOCK : end;
	off_t eof = w->start + (off_t)w->len[k];

	if (eof < to) {
		if (eof > from) {
			memcpy(out + *pos, w->buf[k] + (from - w->start),
			       eof - from);
			*pos += eof - from;
		}
		return false;
	}
	memcpy(out + *pos, w->buf[k] + (from - w->start), to - from);
	*pos += to - from;
	return true;
}

static void wvote_free(struct wvote *w)
{
	for (int i = 0; i < CHILDREN_MAX; i++) {
		free(w->buf[i]);
		free(w->dig[i]);
	}
}

/* Each voter that lost a block is reported once, for its bad range. */
static void wvote_report(struct read_op *op, const struct wvote *w,
			 const char *path)
{
	for (int j = 0; j < op->view->n; j++)
		if (w->bad_end[j])
			report_read(op->tree, op->view, j, path,
				    w->bad_start[j],
				    w->bad_end[j] - w->bad_start[j], 0);
}

/*
 * Beyond the data vote: the data children disagree, so each block of the
 * read is voted by digest, the witness's ballot its stored digest, and
 * the winner is the data version whose digest reaches the threshold.
 */
static int answer_witness(struct read_op *op, const char *path,
			  struct tree_answer *r)
{
	off_t end = op->off + (off_t)op->size;
	struct wvote w = {.start = op->off / WITNESS_BLOCK * WITNESS_BLOCK};
	char *out = malloc(op->size ? op->size : 1);
	size_t pos = 0;
	int ret = out ? 0 : -ENOMEM;

	w.nblocks =
		(size_t)((end - w.start + WITNESS_BLOCK - 1) / WITNESS_BLOCK);
	for (int i = 0; !ret && i < op->view->n; i++)
		if (op->view->votes[i] && (w.err[i] = wvote_read(op, &w, i)) &&
		    op->view->witness[i])
			report_read(op->tree, op->view, i, path, op->off,
				    op->size, w.err[i]);
	for (size_t b = 0; !ret && b < w.nblocks; b++) {
		int k = wvote_block(op, &w, b);

		if (k < 0) {
			ret = -EIO;
			break;
		}
		wvote_losers(op, &w, b, k);
		if (!wvote_take(op, &w, b, k, out, &pos))
			break;
	}
	if (!ret)
		wvote_report(op, &w, path);
	if (!ret && !(ret = answer_new(r, op, 1))) {
		((struct read_answer *)r->owner)->own = out;
		answer_add(r, out, pos);
		out = NULL;
	}
	free(out);
	wvote_free(&w);
	return ret;
}

static int read_quorum(struct read_op *op, struct tree_answer *r)
{
	struct vote_ballot b[CHILDREN_MAX];
	int map[CHILDREN_MAX], errors[CHILDREN_MAX], n, ret;
	struct vote_result vr;
	char *path = NULL;

	read_voters(op);
	n = read_ballots(op, b, map);
	ret = vote_whole(b, n, op->view->threshold, &vr);
	for (int k = 0; k < n; k++)
		errors[k] = b[k].error;
	if (vote_refused_by_all(errors, n))
		return ret; /* e.g. EINVAL for QEMU's O_DIRECT probe */
	if (!vr.unanimous || vr.successes < n)
		path = tree_node_path(op->tree, op->file->node);
	for (int k = 0; k < n; k++)
		if (b[k].error)
			report_read(op->tree, op->view, map[k], path, op->off,
				    op->size, b[k].error);
	if (!ret)
		ret = answer_whole(op, &vr, map, path, r);
	else if (witness_votes(op->view))
		ret = answer_witness(op, path, r);
	else if (vr.successes >= op->view->threshold && op->view->blkverify)
		ret = blkverify_mismatch(op->tree, op, b);
	else if (vr.successes >= op->view->threshold)
		ret = answer_blocks(op, b, n, map, path, r);
	if (ret && ret != -ENOMEM)
		event_log_quorum_failure(op->tree->log, path ? path : "",
					 op->off, op->size);
	free(path);
	return ret;
}

/* read-pattern=fifo: the first voting child that answers; no vote. */
static int read_fifo(struct read_op *op, struct tree_answer *r)
{
	int ret = -EIO;

	for (int i = 0; i < op->view->n; i++) {
		char *path;

		if (!view_reads(op->view, i))
			continue;
		ret = read_child(op, op->view, i);
		if (!ret) {
			if (answer_new(r, op, 1))
				return -ENOMEM;
			answer_add(r, ((struct read_answer *)r->owner)->buf[i],
				   op->len[i]);
			return 0;
		}
		path = tree_node_path(op->tree, op->file->node);
		report_read(op->tree, op->view, i, path, op->off, op->size,
			    ret);
		free(path);
	}
	return ret; /* the last child's error, as QEMU's fifo does */
}

static int read_voted(struct read_op *op, const struct child_view *view,
		      struct tree_answer *r)
{
	memset(r, 0, sizeof(*r));
	op->view = view;
	if (view->read_pattern == READ_PATTERN_FIFO)
		return read_fifo(op, r);
	return read_quorum(op, r);
}

int tree_read_locked(struct tree *tree, const struct child_view *view,
		     struct tree_file *f, off_t off, size_t size,
		     struct tree_answer *r)
{
	struct read_op op = {.tree = tree, .file = f, .off = off, .size = size};
	int ret = read_voted(&op, view, r);

	for (int i = 0; i < CHILDREN_MAX; i++)
		child_buf_put(op.buf[i], size);
	return ret;
}

static bool same_as_answer(const struct tree_answer *r, const char *buf,
			   size_t len)
{
	if (len != r->len)
		return false;
	for (int k = 0; k < r->iovcnt; k++) {
		if (memcmp(buf, r->iov[k].iov_base, r->iov[k].iov_len))
			return false;
		buf += r->iov[k].iov_len;
	}
	return true;
}

/*
 * The late voters' answers, once in: each is reported like any loser
 * when it failed or differs from what the reader got (r; NULL when the
 * read failed), and rewritten under rewrite-corrupted.
 */
static void check_late(struct read_op *op, const struct tree_answer *r)
{
	const struct child_view *v = op->view;
	char *path = NULL;

	child_io_finish(op->io, v->n, &op->wait);
	for (int i = 0; i < v->n; i++) {
		int ret;

		if (!op->late[i])
			continue;
		op->late[i] = false;
		ret = read_arrived(op, i);
		if (!ret && (!r || same_as_answer(r, op->buf[i], op->len[i])))
			continue;
		if (!path)
			path = tree_node_path(op->tree, op->file->node);
		report_read(op->tree, v, i, path, op->off, op->size, ret);
		if (!ret && v->rewrite_corrupted && r->iovcnt == 1)
			rewrite_child(op, v, i, r->iov[0].iov_base, r->len,
				      op->off, op->buf[i],
				      min_size(op->len[i], r->len));
	}
	free(path);
}

static void read_late_end(struct read_late *late, const struct tree_answer *r)
{
	struct read_op *op = &late->op;

	check_late(op, r);
	range_unlock(&op->file->node->ranges, &late->claim);
	for (int i = 0; i < CHILDREN_MAX; i++)
		child_buf_put(op->buf[i], op->size);
	children_view_put(op->view);
	if (late->held)
		file_put(op->tree, op->file);
	late_give(late);
}

static bool any_late(const struct read_op *op)
{
	for (int i = 0; i < op->view->n; i++)
		if (op->late[i])
			return true;
	return false;
}

/*
 * A voted read that answers once a strict majority agrees. The range
 * stays claimed, and the view held, until the late voters are checked in
 * tree_answer_release(), so they vote on the same bytes the others did.
 */
int tree_read(struct tree *tree, struct tree_file *f, off_t off, size_t size,
	      struct tree_answer *r)
{
	struct read_late *late = late_take();
	int ret;

	memset(r, 0, sizeof(*r));
	if (!late)
		return -ENOMEM;
	/* The view after the claim: a write that overlaps and came first
	 * has demoted any child that missed it by now. */
	range_lock(&f->node->ranges, &late->claim, off, off + size, false);
	late->held = false;
	late->op = (struct read_op){.tree = tree,
				    .file = f,
				    .off = off,
				    .size = size,
				    .early = true};
	ret = read_voted(&late->op, policy_view(tree, f), r);
	if (!ret && any_late(&late->op)) {
		file_get(f);
		late->held = true;
		((struct read_answer *)r->owner)->late = late;
		return 0;
	}
	read_late_end(late, ret ? NULL : r);
	return ret;
}
