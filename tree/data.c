/*
 * Open files and their I/O: voted reads, quorum writes.
 *
 * Ordering. Every request holds a claim on its byte range of the node for
 * as long as any child works on it: reads shared, writes exclusive. So two
 * overlapping writes reach every child in the same order, and a read never
 * votes on a write that some children have applied and others not. A
 * request that may change the file's size claims from the smallest size any
 * child may have (node->size_hint) to the end of the file, because a read
 * past the old end would otherwise see some children grown and others not.
 *
 * Buffers. Each child reads into its own FS_ALIGN-aligned buffer (children
 * opened with O_DIRECT on ext4 or xfs refuse anything else; a child that
 * checksums in the buffer must not share it), and the reply is sent from
 * the winning buffer without a copy. Writes are copied to an aligned
 * buffer only when the file is O_DIRECT and libfuse's buffer is not.
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

struct fs_file {
	struct node *node; /* read-only after fs_open() */
	int flags;	   /* what each child's handle is opened with */
	bool direct;
	/* By slot: the child's handle, or -1 until it is opened. Set once
	 * from -1 (compare-and-swap), reset only by fs_forget_slot(). */
	atomic_int fd[CHILDREN_MAX];
	/* By slot: why a voting child's open failed at fs_open(). A child
	 * that was not voting then is retried on every use instead, because
	 * its resync may create the file at any moment. */
	int err[CHILDREN_MAX];
	/* Bit per slot: that child's file system refuses RWF_NOWAIT reads
	 * (writes), so its buffered parts go straight to the ring. */
	atomic_uint no_inline_read, no_inline_write;
	/* The open handle's, plus one per read still checking late voters
	 * after its answer went: the handle may be released before. */
	atomic_int refs;
	struct fs_file *prev, *next; /* guarded by fs->files_lock */
};

static int errno_of(int r)
{
	return r < 0 ? -errno : 0;
}

/* Open the child's handle of f now (a child added after fs_open()). */
static int file_open_slot(struct fs *fs, struct fs_file *f, int slot)
{
	int pfd = node_fd(fs, f->node, slot), fd, expected = -1;
	char proc[64];

	if (pfd < 0)
		return pfd;
	fd_proc_path(pfd, proc);
	fd = open(proc, f->flags);
	if (fd < 0)
		return -errno;
	if (!atomic_compare_exchange_strong(&f->fd[slot], &expected, fd)) {
		close(fd); /* another thread opened it first */
		fd = expected;
	}
	return fd;
}

int fs_file_fd(struct fs *fs, struct fs_file *f, int slot)
{
	int fd = atomic_load(&f->fd[slot]);

	if (fd >= 0)
		return fd;
	if (f->err[slot])
		return f->err[slot];
	return file_open_slot(fs, f, slot);
}

/* The child's handle for this file, or why there is none. */
static int file_fd(struct fs *fs, const struct fs_file *f,
		   const struct child_view *v, int i, int *fd)
{
	*fd = fs_file_fd(fs, (struct fs_file *)f, child_slot(v->child[i]));
	return *fd < 0 ? *fd : 0;
}

/* ---- open / release ---- */

static void open_body(struct fanout *fo, int i)
{
	struct fs_file *f = fo->arg;
	int slot = child_slot(fo->view->child[i]);
	int fd = file_open_slot(fo->fs, f, slot);

	fo->ret[i] = fd < 0 ? fd : 0;
	if (fd < 0 && fo->view->votes[i])
		f->err[slot] = fd;
}

static void file_close(struct fs_file *f)
{
	for (int s = 0; s < CHILDREN_MAX; s++) {
		int fd = atomic_load(&f->fd[s]);

		if (fd >= 0)
			close(fd);
	}
	free(f);
}

static void files_link(struct fs *fs, struct fs_file *f)
{
	pthread_mutex_lock(&fs->files_lock);
	f->next = fs->files;
	if (f->next)
		f->next->prev = f;
	fs->files = f;
	pthread_mutex_unlock(&fs->files_lock);
}

static void files_unlink(struct fs *fs, struct fs_file *f)
{
	pthread_mutex_lock(&fs->files_lock);
	if (f->prev)
		f->prev->next = f->next;
	else
		fs->files = f->next;
	if (f->next)
		f->next->prev = f->prev;
	pthread_mutex_unlock(&fs->files_lock);
}

static struct fs_file *file_new(struct node *n, int flags)
{
	struct fs_file *f = calloc(1, sizeof(*f));

	if (!f)
		return NULL;
	for (int s = 0; s < CHILDREN_MAX; s++)
		atomic_init(&f->fd[s], -1);
	atomic_init(&f->refs, 1);
	f->node = n;
	f->direct = flags & O_DIRECT;
	/* The kernel gives offsets even for O_APPEND: never let a child
	 * pick its own end of file. O_TRUNC is done once, at fs_open(). */
	f->flags =
		(flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_APPEND)) | O_CLOEXEC;
	return f;
}

int fs_open(struct fs *fs, uint64_t ino, int flags, struct fs_file **out)
{
	const struct child_view *view = children_view_get(fs->set);
	struct node *n = node_get(fs, ino);
	struct fs_file *f = file_new(n, flags);
	struct fanout fo = {.fs = fs,
			    .view = view,
			    .body = open_body,
			    .arg = f,
			    .probe = !(flags & O_TRUNC)};
	struct range_claim claim;
	int ret;

	if (!f) {
		ret = -ENOMEM;
		goto out;
	}
	if (!S_ISREG(n->type)) {
		ret = S_ISDIR(n->type) ? -EISDIR : -ENXIO;
		goto out;
	}
	if (flags & O_TRUNC)
		range_lock(&n->ranges, &claim, 0, FS_OFF_MAX, true);
	if (flags & O_TRUNC)
		fs_announce_write(fs, n, 0, 1);
	fanout_run(&fo);
	f->flags &= ~O_TRUNC;
	ret = fanout_tally(&fo,
			   (flags & O_ACCMODE) == O_RDONLY ? "read" : "write",
			   n, 0, 0);
	if (flags & O_TRUNC) {
		if (!ret)
			atomic_store(&n->size_hint, 0);
		range_unlock(&n->ranges, &claim);
	}
	if (ret)
		goto out;
	node_ref(fs, n);
	files_link(fs, f);
	*out = f;
	f = NULL;
out:
	if (f)
		file_close(f);
	children_view_put(view);
	return ret;
}

int fs_create(struct fs *fs, uint64_t parent, const char *name, mode_t mode,
	      int flags, const struct fs_caller *who, struct fs_entry *e,
	      struct fs_file **f)
{
	int ret =
		fs_mknod(fs, parent, name, S_IFREG | (mode & 07777), 0, who, e);

	if (ret == -EEXIST && !(flags & O_EXCL))
		ret = fs_lookup(fs, parent, name, e);
	if (ret)
		return ret;
	ret = fs_open(fs, e->ino, flags & ~O_TRUNC, f);
	if (ret)
		fs_forget(fs, e->ino, 1);
	return ret;
}

static void file_put(struct fs *fs, struct fs_file *f)
{
	struct node *n = f->node;

	if (atomic_fetch_sub(&f->refs, 1) > 1)
		return;
	file_close(f);
	node_unref(fs, n);
}

void fs_release(struct fs *fs, struct fs_file *f)
{
	files_unlink(fs, f);
	file_put(fs, f);
}

void files_forget_slot(struct fs *fs, int slot)
{
	pthread_mutex_lock(&fs->files_lock);
	for (struct fs_file *f = fs->files; f; f = f->next) {
		int fd = atomic_exchange(&f->fd[slot], -1);

		if (fd >= 0)
			close(fd);
		f->err[slot] = 0;
	}
	pthread_mutex_unlock(&fs->files_lock);
}

void files_release_all(struct fs *fs)
{
	while (fs->files)
		fs_release(fs, fs->files);
}

/* ---- ranges ---- */

/*
 * Claim [off, end) exclusively, or from the smallest possible size to the
 * end of file when the request may grow the file. The hint may move while
 * we wait, so check again once granted.
 */
static void lock_for_change(struct node *n, struct range_claim *c, off_t off,
			    off_t end)
{
	for (;;) {
		off_t hint = atomic_load(&n->size_hint);
		bool grows = end > hint;

		range_lock(&n->ranges, c, grows && hint < off ? hint : off,
			   grows ? FS_OFF_MAX : end, true);
		hint = atomic_load(&n->size_hint);
		if (end <= hint || (grows && c->start <= hint))
			return;
		range_unlock(&n->ranges, c);
	}
}

static void grow_hint(struct node *n, off_t end)
{
	int64_t hint = atomic_load(&n->size_hint);

	while (hint < end &&
	       !atomic_compare_exchange_weak(&n->size_hint, &hint, end))
		;
}

/* ---- read ---- */

struct read_op {
	struct fs *fs;
	struct fs_file *file;
	const struct child_view *view;
	off_t off;
	size_t size;
	bool early; /* may answer before every voter has (fs_read) */
	char *buf[CHILDREN_MAX];
	size_t len[CHILDREN_MAX];
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
	size_t done = 0;

	while (done < size) {
		ssize_t r = pread(fd, buf + done, size - done, off + done);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		done += r;
		if (r == 0 || (direct && done < size))
			break;
	}
	*got = done;
	return 0;
}

/* Whether child slot's buffered parts are worth trying inline. */
static bool inline_worthwhile(const struct fs_file *f, atomic_uint *refused,
			      int slot)
{
	return !f->direct && !(atomic_load(refused) & (1u << slot));
}

static void note_refused(atomic_uint *refused, const struct child_io *io,
			 int slot)
{
	if (io->refused)
		atomic_fetch_or(refused, 1u << slot);
}

/* Prepare voting child i's part of a read; 0, or why it cannot read. */
static int read_part(struct read_op *op, const struct child_view *v, int i,
		     struct child_io *io)
{
	size_t cap = (op->size + FS_ALIGN - 1) / FS_ALIGN * FS_ALIGN;
	int fd, ret = file_fd(op->fs, op->file, v, i, &fd);

	if (ret)
		return ret;
	op->buf[i] = fs_buf_get(op->fs, cap);
	if (!op->buf[i])
		return -ENOMEM;
	*io = (struct child_io){
		.fd = fd,
		.buf = op->buf[i],
		.child = v->child[i],
		.own_buf = true,
		.len = op->size,
		.off = op->off,
		.cached = inline_worthwhile(op->file, &op->file->no_inline_read,
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
	note_refused(&op->file->no_inline_read, io,
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
 * late, and fs_read_release() checks them.
 */
static void read_voters(struct fanout *fo, struct read_op *op)
{
	struct child_io *io = op->io;

	op->view = fo->view;
	for (int i = 0; i < fo->view->n; i++) {
		io[i] = (struct child_io){.fd = -1};
		op->len[i] = 0;
		fo->ret[i] = fo->view->votes[i]
				     ? read_part(op, fo->view, i, &io[i])
				     : 0;
	}
	op->wait = (struct child_io_wait){.arg = op};
	if (op->early && fo->view->voters > 1)
		op->wait.enough = majority_agrees;
	child_io_start(fo->fs->pool, io, fo->view->n, fo->fs->timeout_ms,
		       &op->wait);
	for (int i = 0; i < fo->view->n; i++) {
		op->late[i] = io[i].fd >= 0 && !io[i].done;
		if (io[i].fd >= 0 && !op->late[i])
			fo->ret[i] = read_arrived(op, i);
	}
}

/* A read answered before every voter was: what its release checks. */
struct read_late {
	struct range_claim claim;
	struct read_op op;
	bool held; /* holds a reference to op.file */
};

static void read_late_end(struct read_late *late, const struct fs_read *r);

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
	struct fs *fs;
	struct read_late *late;	 /* voters still reading, or NULL */
	size_t size;		 /* of each buffer */
	char *buf[CHILDREN_MAX]; /* every buffer the answer may point into */
	struct iovec iov[];
};

static int answer_new(struct fs_read *r, struct read_op *op, int iovcnt)
{
	struct read_answer *a;

	a = malloc(sizeof(*a) + iovcnt * sizeof(struct iovec));
	if (!a)
		return -ENOMEM;
	a->fs = op->fs;
	a->late = NULL;
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

static void answer_add(struct fs_read *r, const char *p, size_t len)
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

void fs_read_release(struct fs_read *r)
{
	struct read_answer *a = r->owner;

	if (!a)
		return;
	if (a->late)
		read_late_end(a->late, r);
	for (int i = 0; i < CHILDREN_MAX; i++)
		fs_buf_put(a->fs, a->buf[i], a->size);
	free(a);
	r->owner = NULL;
}

static void report_read(struct fs *fs, const struct child_view *v, int i,
			const char *path, uint64_t off, uint64_t len, int error)
{
	child_count_error(v->child[i], CHILD_OP_READ);
	event_log_report_bad(fs->log, "read", child_name(v->child[i]), off, len,
			     error, path ? path : "");
	if (error)
		health_read_error(fs, v->child[i], error);
}

/*
 * rewrite-corrupted: write the winning bytes over a child that lost the
 * vote, before the read returns (QEMU waits too). A correction attempt:
 * its failure is not the reader's.
 */
static void rewrite_child(struct read_op *op, const struct child_view *v, int i,
			  const char *data, size_t len, off_t off)
{
	int slot = child_slot(v->child[i]);
	int pfd = node_fd(op->fs, op->file->node, slot);
	char proc[64];
	int fd;

	if (pfd < 0)
		return;
	fd_proc_path(pfd, proc);
	fd = open(proc, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	if (pwrite(fd, data, len, off) < 0)
		child_count_error(v->child[i], CHILD_OP_WRITE);
	close(fd);
}

/* Fill ballots from the voting children; map[k] is the view index. */
static int read_ballots(struct fanout *fo, struct read_op *op,
			struct vote_ballot *b, int *map)
{
	int n = 0;

	for (int i = 0; i < fo->view->n; i++) {
		if (!fo->view->votes[i] || op->late[i])
			continue;
		map[n] = i;
		b[n++] = (struct vote_ballot){.error = fo->ret[i],
					      .data = op->buf[i],
					      .len = op->len[i]};
	}
	return n;
}

static int blkverify_mismatch(struct fs *fs, struct read_op *op,
			      const struct vote_ballot *b)
{
	ssize_t at =
		vote_first_difference(b[0].data, b[0].len, b[1].data, b[1].len);

	fprintf(stderr,
		"quorum: offset=%lld bytes=%zu contents mismatch at offset "
		"%lld\n",
		(long long)op->off, op->size, (long long)(op->off + at));
	atomic_store(&fs->fatal, true);
	return -EIO;
}

static int answer_whole(struct fanout *fo, struct read_op *op,
			const struct vote_result *vr, const int *map,
			const char *path, struct fs_read *r)
{
	int w = map[vr->winner];

	for (int k = 0; k < fo->view->voters && !vr->unanimous; k++) {
		if (!vr->loser[k])
			continue;
		report_read(fo->fs, fo->view, map[k], path, op->off, op->size,
			    0);
		if (fo->view->rewrite_corrupted)
			rewrite_child(op, fo->view, map[k], op->buf[w],
				      op->len[w], op->off);
	}
	if (answer_new(r, op, 1))
		return -ENOMEM;
	answer_add(r, ((struct read_answer *)r->owner)->buf[w], op->len[w]);
	return 0;
}

/* rewrite-corrupted after a per-block vote: repair each bad range. */
static void rewrite_blocks(struct read_op *op, const struct child_view *v,
			   const struct fs_read *r,
			   const struct vote_blocks_result *vb, const int *map,
			   int n)
{
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

		if (vb->bad[k] && vb->bad_start[k] < end)
			rewrite_child(op, v, map[k], answer + vb->bad_start[k],
				      end - vb->bad_start[k],
				      op->off + vb->bad_start[k]);
	}
	free(answer);
}

/* Beyond QEMU: vote each block, when the whole request found no quorum. */
static int answer_blocks(struct fanout *fo, struct read_op *op,
			 const struct vote_ballot *b, int n, const int *map,
			 const char *path, struct fs_read *r)
{
	size_t nblocks = (op->size + FS_VOTE_BLOCK - 1) / FS_VOTE_BLOCK;
	struct vote_blocks_result vb;
	struct read_answer *a;
	int *winner, ret;

	winner = malloc((nblocks ? nblocks : 1) * sizeof(*winner));
	if (!winner)
		return -ENOMEM;
	ret = vote_blocks(b, n, fo->view->threshold, FS_VOTE_BLOCK, winner,
			  &vb);
	if (ret || (ret = answer_new(r, op, (int)nblocks + 1)))
		goto out;
	a = r->owner;
	for (size_t blk = 0; blk * FS_VOTE_BLOCK < vb.len; blk++) {
		size_t off = blk * FS_VOTE_BLOCK;
		size_t len = vb.len - off < FS_VOTE_BLOCK ? vb.len - off
							  : FS_VOTE_BLOCK;

		answer_add(r, a->buf[map[winner[blk]]] + off, len);
	}
	for (int k = 0; k < n; k++) {
		if (!vb.bad[k])
			continue;
		report_read(fo->fs, fo->view, map[k], path,
			    op->off + vb.bad_start[k],
			    vb.bad_end[k] - vb.bad_start[k], 0);
	}
	if (fo->view->rewrite_corrupted)
		rewrite_blocks(op, fo->view, r, &vb, map, n);
out:
	free(winner);
	return ret;
}

static int read_quorum(struct fanout *fo, struct read_op *op, struct fs_read *r)
{
	struct vote_ballot b[CHILDREN_MAX];
	int map[CHILDREN_MAX], errors[CHILDREN_MAX], n, ret;
	struct vote_result vr;
	char *path = NULL;

	read_voters(fo, op);
	n = read_ballots(fo, op, b, map);
	ret = vote_whole(b, n, fo->view->threshold, &vr);
	for (int k = 0; k < n; k++)
		errors[k] = b[k].error;
	if (refused_by_all(errors, n))
		return ret; /* e.g. EINVAL for QEMU's O_DIRECT probe */
	if (!vr.unanimous || vr.successes < n)
		path = node_path(fo->fs, op->file->node);
	for (int k = 0; k < n; k++)
		if (b[k].error)
			report_read(fo->fs, fo->view, map[k], path, op->off,
				    op->size, b[k].error);
	if (!ret)
		ret = answer_whole(fo, op, &vr, map, path, r);
	else if (vr.successes >= fo->view->threshold && fo->view->blkverify)
		ret = blkverify_mismatch(fo->fs, op, b);
	else if (vr.successes >= fo->view->threshold)
		ret = answer_blocks(fo, op, b, n, map, path, r);
	if (ret && ret != -ENOMEM)
		event_log_quorum_failure(fo->fs->log, path ? path : "", op->off,
					 op->size);
	free(path);
	return ret;
}

/* read-pattern=fifo: the first voting child that answers; no vote. */
static int read_fifo(struct fanout *fo, struct read_op *op, struct fs_read *r)
{
	int ret = -EIO;

	for (int i = 0; i < fo->view->n; i++) {
		char *path;

		if (!fo->view->votes[i])
			continue;
		ret = read_child(op, fo->view, i);
		if (!ret) {
			if (answer_new(r, op, 1))
				return -ENOMEM;
			answer_add(r, ((struct read_answer *)r->owner)->buf[i],
				   op->len[i]);
			return 0;
		}
		path = node_path(fo->fs, op->file->node);
		report_read(fo->fs, fo->view, i, path, op->off, op->size, ret);
		free(path);
	}
	return ret; /* the last child's error, as QEMU's fifo does */
}

static int read_voted(struct read_op *op, const struct child_view *view,
		      struct fs_read *r)
{
	struct fanout fo = {.fs = op->fs, .view = view, .arg = op};

	memset(r, 0, sizeof(*r));
	op->view = view;
	if (view->read_pattern == READ_PATTERN_FIFO)
		return read_fifo(&fo, op, r);
	return read_quorum(&fo, op, r);
}

int read_voted_locked(struct fs *fs, const struct child_view *view,
		      struct fs_file *f, off_t off, size_t size,
		      struct fs_read *r)
{
	struct read_op op = {.fs = fs, .file = f, .off = off, .size = size};
	int ret = read_voted(&op, view, r);

	for (int i = 0; i < CHILDREN_MAX; i++)
		fs_buf_put(fs, op.buf[i], size);
	return ret;
}

static bool same_as_answer(const struct fs_read *r, const char *buf, size_t len)
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
static void check_late(struct read_op *op, const struct fs_read *r)
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
			path = node_path(op->fs, op->file->node);
		report_read(op->fs, v, i, path, op->off, op->size, ret);
		if (!ret && v->rewrite_corrupted && r->iovcnt == 1)
			rewrite_child(op, v, i, r->iov[0].iov_base, r->len,
				      op->off);
	}
	free(path);
}

static void read_late_end(struct read_late *late, const struct fs_read *r)
{
	struct read_op *op = &late->op;

	check_late(op, r);
	range_unlock(&op->file->node->ranges, &late->claim);
	for (int i = 0; i < CHILDREN_MAX; i++)
		fs_buf_put(op->fs, op->buf[i], op->size);
	children_view_put(op->view);
	if (late->held)
		file_put(op->fs, op->file);
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
 * fs_read_release(), so they vote on the same bytes the others did.
 */
int fs_read(struct fs *fs, struct fs_file *f, off_t off, size_t size,
	    struct fs_read *r)
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
	late->op = (struct read_op){
		.fs = fs, .file = f, .off = off, .size = size, .early = true};
	ret = read_voted(&late->op, children_view_get(fs->set), r);
	if (!ret && any_late(&late->op)) {
		atomic_fetch_add(&f->refs, 1);
		late->held = true;
		((struct read_answer *)r->owner)->late = late;
		return 0;
	}
	read_late_end(late, ret ? NULL : r);
	return ret;
}

/* ---- write ---- */

struct write_op {
	struct fs_file *file;
	const char *buf;
	size_t size;
	off_t off;
};

static int write_full(int fd, bool direct, const char *buf, size_t size,
		      off_t off)
{
	size_t done = 0;

	while (done < size) {
		ssize_t r = pwrite(fd, buf + done, size - done, off + done);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		done += r;
		/* An O_DIRECT write stops short when space runs out; going
		 * on from an unaligned offset would say EINVAL instead. */
		if (r == 0 || (direct && done < size))
			return -ENOSPC;
	}
	return 0;
}

/* Every child, voting or syncing, writes the range at once. */
static void write_children(struct fanout *fo, struct write_op *op)
{
	struct child_io io[CHILDREN_MAX];
	int fd;

	for (int i = 0; i < fo->view->n; i++) {
		io[i] = (struct child_io){.fd = -1};
		fo->ret[i] = file_fd(fo->fs, op->file, fo->view, i, &fd);
		if (!fo->ret[i])
			io[i] = (struct child_io){
				.fd = fd,
				.child = fo->view->child[i],
				.write = true,
				.buf = (void *)op->buf,
				.len = op->size,
				.off = op->off,
				.cached = inline_worthwhile(
					op->file, &op->file->no_inline_write,
					child_slot(fo->view->child[i]))};
	}
	child_io_run(fo->fs->pool, io, fo->view->n, fo->fs->timeout_ms);
	for (int i = 0; i < fo->view->n; i++) {
		size_t done = io[i].ret < 0 ? 0 : (size_t)io[i].ret;

		if (io[i].fd >= 0)
			note_refused(&op->file->no_inline_write, &io[i],
				     child_slot(fo->view->child[i]));
		if (io[i].fd < 0 || done == op->size)
			continue;
		fo->ret[i] =
			io[i].ret < 0
				? io[i].ret
				: write_full(io[i].fd, op->file->direct,
					     op->buf + done, op->size - done,
					     op->off + done);
		/* A short O_DIRECT write ran out of space (see write_full). */
		if (done > 0 && op->file->direct)
			fo->ret[i] = -ENOSPC;
	}
}

ssize_t fs_write(struct fs *fs, struct fs_file *f, const void *buf, size_t size,
		 off_t off)
{
	const struct child_view *view = children_view_get(fs->set);
	struct write_op op = {.file = f, .buf = buf, .size = size, .off = off};
	struct fanout fo = {.fs = fs, .view = view, .arg = &op};
	struct range_claim claim;
	char *copy = NULL;
	ssize_t ret;

	if (f->direct && (uintptr_t)buf % FS_ALIGN) {
		copy = fs_buf_get(fs, size);
		if (!copy) {
			ret = -ENOMEM;
			goto out;
		}
		memcpy(copy, buf, size);
		op.buf = copy;
	}
	lock_for_change(f->node, &claim, off, off + size);
	fs_announce_write(fs, f->node, off, size);
	write_children(&fo, &op);
	ret = fanout_tally(&fo, "write", f->node, off, size);
	if (!ret) {
		grow_hint(f->node, off + size);
		ret = size;
	}
	range_unlock(&f->node->ranges, &claim);
out:
	fs_buf_put(fs, copy, size);
	children_view_put(view);
	return ret;
}

/* ---- fallocate, fsync, flush ---- */

struct fd_op {
	struct fs_file *file;
	int (*call)(int fd, const struct fd_op *op);
	int mode;
	off_t off, len;
};

static void fd_body(struct fanout *fo, int i)
{
	struct fd_op *op = fo->arg;
	int fd;

	fo->ret[i] = file_fd(fo->fs, op->file, fo->view, i, &fd);
	if (!fo->ret[i])
		fo->ret[i] = op->call(fd, op);
}

static int fd_run(struct fs *fs, struct fd_op *op, const char *type)
{
	const struct child_view *view = children_view_get(fs->set);
	struct fanout fo = {.fs = fs, .view = view, .body = fd_body, .arg = op};
	int ret;

	/* Closing a file opened for reading changes nothing on any child. */
	fo.probe = (op->file->flags & O_ACCMODE) == O_RDONLY;
	fanout_run(&fo);
	ret = fanout_tally(&fo, type, op->file->node, op->off, op->len);
	children_view_put(view);
	return ret;
}

static int call_fallocate(int fd, const struct fd_op *op)
{
	return errno_of(fallocate(fd, op->mode, op->off, op->len));
}

int fs_fallocate(struct fs *fs, struct fs_file *f, int mode, off_t off,
		 off_t len)
{
	struct fd_op op = {.file = f,
			   .call = call_fallocate,
			   .mode = mode,
			   .off = off,
			   .len = len};
	struct range_claim claim;
	int ret;

	if (mode & FALLOC_FL_KEEP_SIZE)
		range_lock(&f->node->ranges, &claim, off, off + len, true);
	else
		lock_for_change(f->node, &claim, off, off + len);
	fs_announce_write(fs, f->node, off, len);
	ret = fd_run(fs, &op, "write");
	if (!ret && !(mode & FALLOC_FL_KEEP_SIZE))
		grow_hint(f->node, off + len);
	range_unlock(&f->node->ranges, &claim);
	return ret;
}

/* On the ring like reads and writes, so that io-timeout bounds it too. */
int fs_fsync(struct fs *fs, struct fs_file *f, bool datasync)
{
	const struct child_view *view = children_view_get(fs->set);
	struct fanout fo = {.fs = fs, .view = view};
	struct child_io io[CHILDREN_MAX];
	int ret, fd;

	for (int i = 0; i < view->n; i++) {
		io[i] = (struct child_io){.fd = -1};
		fo.ret[i] = file_fd(fs, f, view, i, &fd);
		if (!fo.ret[i])
			io[i] = (struct child_io){
				.fd = fd,
				.child = view->child[i],
				.sync = datasync ? CHILD_IO_FDATASYNC
						 : CHILD_IO_FSYNC};
	}
	child_io_run(fs->pool, io, view->n, fs->timeout_ms);
	for (int i = 0; i < view->n; i++)
		if (io[i].fd >= 0)
			fo.ret[i] = io[i].ret < 0 ? io[i].ret : 0;
	ret = fanout_tally(&fo, "flush", f->node, 0, 0);
	children_view_put(view);
	return ret;
}

/* close() of a duplicate reports what the child's close would (NFS). */
static int call_flush(int fd, const struct fd_op *op)
{
	int dup_fd = dup(fd);

	(void)op;
	if (dup_fd < 0)
		return -errno;
	return errno_of(close(dup_fd));
}

int fs_flush(struct fs *fs, struct fs_file *f)
{
	struct fd_op op = {.file = f, .call = call_flush};

	return fd_run(fs, &op, "flush");
}

/* ---- SEEK_DATA / SEEK_HOLE ---- */

/*
 * Data is wherever any voting child has data, so SEEK_DATA is the
 * smallest answer, and a hole starts only where every child has one:
 * SEEK_HOLE moves forward until all children agree on the same offset.
 */
static off_t seek_voters(struct fs *fs, const struct fs_file *f,
			 const struct child_view *v, off_t off, int whence,
			 bool *all_same)
{
	off_t best = -ENXIO;

	*all_same = true;
	for (int i = 0; i < v->n; i++) {
		off_t r;
		int fd;

		if (!v->votes[i] || file_fd(fs, f, v, i, &fd))
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

off_t lseek_voted_locked(struct fs *fs, const struct child_view *view,
			 struct fs_file *f, off_t off, int whence)
{
	bool same;
	off_t r = seek_voters(fs, f, view, off, whence, &same);

	for (int round = 0; whence == SEEK_HOLE && r >= 0 && round < 1024;
	     round++) {
		off_t next = seek_voters(fs, f, view, r, SEEK_HOLE, &same);

		if (same || next < 0)
			break;
		r = next;
	}
	return r;
}

off_t fs_lseek(struct fs *fs, struct fs_file *f, off_t off, int whence)
{
	const struct child_view *view = children_view_get(fs->set);
	struct range_claim claim;
	off_t r;

	range_lock(&f->node->ranges, &claim, off, FS_OFF_MAX, false);
	r = lseek_voted_locked(fs, view, f, off, whence);
	range_unlock(&f->node->ranges, &claim);
	children_view_put(view);
	return r;
}

struct node *fs_file_node(const struct fs_file *f)
{
	return f->node;
}
