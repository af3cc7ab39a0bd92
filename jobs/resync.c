/*
 * Resync: fill a syncing child with the voted content of the whole tree.
 *
 * The child is in every view from the moment it is added, as a
 * non-voting member, so every write from then on reaches it; writes to
 * files it does not have yet fail there with ENOENT and are ignored. The
 * copy walks the voted tree and, for each entry:
 *   - creates it on the child while holding its directory's range lock
 *     exclusively, after checking that the voters still have it (namespace
 *     changes hold that lock shared, so an unlink or rename cannot slip in
 *     between the check and the creation);
 *   - copies a file's data regions chunk by chunk, each chunk read with the
 *     vote and written while holding that byte range exclusively, so a live
 *     write to the same bytes is ordered before or after the copy, never
 *     overwritten by older copied data; holes stay holes;
 *   - under a whole-file claim, cuts the child's file to the voted size.
 * Every write that reaches the child after its file exists lands there
 * directly, and every chunk copied afterwards reflects the voters at that
 * moment, so the copy ends identical. Entries the child has but the voters
 * do not are removed. Then the child turns ok and votes.
 *
 * A failure on the child fails the child, never the mount.
 */
#define _GNU_SOURCE
#include "jobs/jobs_i.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define RESYNC_CHUNK CHILD_IO_MAX

/* One child's copy. Its fields are the job's identity and stop flag,
 * then the thread's own progress and copy state. */
struct resync {
	struct jobs *jobs;
	struct tree *tree;   /* jobs->tree */
	struct child *child; /* a reference */
	int slot;
	pthread_t thread;
	atomic_bool stop;
	struct resync *next; /* guarded by jobs->resync_lock */
	/* Only the resync thread touches the rest. */
	uint64_t bytes_done, bytes_total, files_done, files_total;
	uint64_t file_base; /* bytes of the files copied before this one */
	uint64_t copied;    /* bytes written to the child */
	bool catchup;	    /* a pass that only fills in missing entries */
	bool partial;	    /* may copy only what the record says it missed */
	/* Copying a returning child's regions: its file, read to keep what
	 * the copy overwrites in its quarantine; -1 otherwise. */
	int old_fd;
	struct timespec last_progress;
	char reason[256];
	struct tree_node *
		*linked; /* files with several names, already copied */
	size_t nlinked;
};

static int fail(struct resync *rs, int err, const char *what, const char *name)
{
	if (!rs->reason[0])
		snprintf(rs->reason, sizeof(rs->reason), "%s '%s': %s", what,
			 name, strerror(-err));
	return err;
}

/* Asked to stop, or the child left syncing (it failed, or was removed):
 * either way the copy is of no use any more. */
static bool stopping(struct resync *rs)
{
	return atomic_load(&rs->stop) ||
	       child_state(rs->child) != CHILD_SYNCING;
}

/* The data of a RESYNC_* event, starting with the child's name. */
static struct json_object *event_data(const struct resync *rs)
{
	struct json_object *d = json_object_new_object();

	json_object_object_add(d, "node-name",
			       json_object_new_string(child_name(rs->child)));
	return d;
}

static void add_count(struct json_object *d, const char *key, uint64_t n)
{
	json_object_object_add(d, key, json_object_new_int64(n));
}

static void progress(struct resync *rs, bool force)
{
	struct json_object *d;
	struct timespec now;

	child_set_progress(rs->child, rs->bytes_done, rs->bytes_total,
			   rs->files_done, rs->files_total);
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (!force && now.tv_sec - rs->last_progress.tv_sec < 1)
		return;
	rs->last_progress = now;
	d = event_data(rs);
	add_count(d, "bytes-done", rs->bytes_done);
	add_count(d, "bytes-total", rs->bytes_total);
	add_count(d, "files-done", rs->files_done);
	add_count(d, "files-total", rs->files_total);
	event_log_emit(rs->jobs->log, "RESYNC_PROGRESS", d);
}

/*
 * Move bytes-done forward. Files grow and shrink under a live copy, so the
 * offsets reached are not exact; the count only ever rises and never
 * passes the total before the end.
 */
static void advance(struct resync *rs, uint64_t done)
{
	if (done > rs->bytes_total)
		done = rs->bytes_total;
	if (done > rs->bytes_done)
		rs->bytes_done = done;
}

/* ---- counting what there is to copy ---- */

static int count_entry(struct walk *w, struct tree_node *dir, const char *name,
		       const struct tree_entry *e)
{
	struct resync *rs = w->arg;

	(void)dir;
	(void)name;
	rs->files_total++;
	if (S_ISREG(e->attr.st_mode))
		rs->bytes_total += e->attr.st_size;
	return 0;
}

static int count_unlisted(struct walk *w, struct tree_node *dir, int error)
{
	struct resync *rs = w->arg;
	char *path = tree_node_path(rs->tree, dir);
	int ret = fail(rs, error, "cannot list", path && *path ? path : "/");

	free(path);
	return ret;
}

/* An entry without a quorum is left alone: the vote decides it later. */
static int count_unvoted(struct walk *w, struct tree_node *dir,
			 const char *name, int error)
{
	(void)w;
	(void)dir;
	(void)name;
	(void)error;
	return 0;
}

static int count_tree(struct resync *rs)
{
	struct walk w = {.tree = rs->tree,
			 .entry = count_entry,
			 .unlisted = count_unlisted,
			 .unvoted = count_unvoted,
			 .stop = &rs->stop,
			 .arg = rs};

	return walk_tree(&w, tree_root(rs->tree));
}

/* ---- making the child's tree match ---- */

/* Remove what the child has in dir that the voted listing lacks. */
static int remove_extras(struct resync *rs, struct tree_node *dir, int dfd,
			 const struct tree_dir *voted)
{
	struct tree *tree = rs->tree;
	struct dirent *de;
	int ret = 0, fd;
	DIR *d;

	fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	d = fd < 0 ? NULL : fdopendir(fd);
	if (!d) {
		ret = -errno;
		if (fd >= 0)
			close(fd);
		return ret;
	}
	while (!ret && (de = readdir(d))) {
		bool keep = !strcmp(de->d_name, ".") ||
			    !strcmp(de->d_name, "..") ||
			    (dir == tree_root(tree) &&
			     tree_reserved_name(TREE_ROOT_INO, de->d_name));
		const char *name;
		struct stat st;

		for (size_t i = 0;
		     !keep && tree_dir_entry(voted, i, &name, &st); i++)
			keep = strcmp(name, de->d_name) == 0;
		if (!keep)
			ret = remove_tree(dfd, de->d_name);
	}
	closedir(d);
	return ret;
}

static bool already_linked(struct resync *rs, struct tree_node *n)
{
	for (size_t i = 0; i < rs->nlinked; i++)
		if (rs->linked[i] == n)
			return true;
	return false;
}

static void remember_linked(struct resync *rs, struct tree_node *n)
{
	struct tree_node **grown =
		realloc(rs->linked, (rs->nlinked + 1) * sizeof(*grown));

	if (!grown)
		return; /* a later name becomes a copy, not a link */
	rs->linked = grown;
	rs->linked[rs->nlinked++] = n;
	tree_node_ref(rs->tree, n);
}

/* Truncate the child's existing file under the file's whole range, so
 * it keeps its inode (open handles stay valid) and starts empty. */
static int empty_file(struct tree_node *n, int dfd, const char *name)
{
	struct range_claim claim;
	int fd, ret;

	fd = openat(dfd, name, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	range_lock(tree_node_ranges(n), &claim, 0, RANGE_END, true);
	ret = child_result(ftruncate(fd, 0));
	range_unlock(tree_node_ranges(n), &claim);
	close(fd);
	return ret;
}

/* Another name of a file copied already: link it, unless it is one. */
static int link_entry(struct resync *rs, struct tree_node *n, int dfd,
		      const char *name, const struct stat *have, bool exists)
{
	int fd = tree_node_fd(rs->tree, n, rs->slot);
	struct stat st;
	char proc[64];

	if (fd < 0)
		return fd;
	if (exists && fstat(fd, &st) == 0 && st.st_ino == have->st_ino &&
	    st.st_dev == have->st_dev)
		return 0;
	if (exists)
		remove_tree(dfd, name);
	child_proc_path(fd, proc);
	return child_result(
		linkat(AT_FDCWD, proc, dfd, name, AT_SYMLINK_FOLLOW));
}

static int make_entry(struct resync *rs, int dfd, const char *name,
		      const struct tree_entry *e)
{
	mode_t mode = e->attr.st_mode;
	char target[PATH_MAX + 1];
	ssize_t len;
	int fd;

	if (S_ISDIR(mode))
		return child_result(mkdirat(dfd, name, mode & 07777));
	if (S_ISREG(mode)) {
		fd = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
			    mode & 07777);
		return fd < 0 ? -errno : child_result(close(fd));
	}
	if (S_ISLNK(mode)) {
		len = tree_readlink(rs->tree, e->ino, target,
				    sizeof(target) - 1);
		if (len < 0)
			return (int)len;
		target[len] = '\0';
		return child_result(symlinkat(target, dfd, name));
	}
	return child_result(mknodat(dfd, name, mode, e->attr.st_rdev));
}

enum placed_how {
	PLACED_MADE,   /* created, or an existing one kept and emptied */
	PLACED_THERE,  /* a dirty-directory pass found it in place */
	PLACED_LINKED, /* another name of a file placed already */
};

/*
 * Make name on the child an entry of the voted type. A directory or
 * regular file the child already has keeps its inode; anything else is
 * replaced. Returns an enum placed_how, or -errno.
 */
static int create_entry(struct resync *rs, int dfd, const char *name,
			const struct tree_entry *e)
{
	struct tree_node *n = tree_node(rs->tree, e->ino);
	mode_t type = e->attr.st_mode & S_IFMT;
	struct stat have;
	bool exists = fstatat(dfd, name, &have, AT_SYMLINK_NOFOLLOW) == 0;
	bool same = exists && (have.st_mode & S_IFMT) == type;
	bool shared = S_ISREG(type) && e->attr.st_nlink > 1;
	int ret;

	if (rs->catchup && same)
		return PLACED_THERE;
	if (shared && already_linked(rs, n)) {
		ret = link_entry(rs, n, dfd, name, &have, exists);
		return ret ? ret : PLACED_LINKED;
	}
	if (same && S_ISDIR(type))
		ret = 0;
	else if (same && S_ISREG(type))
		ret = empty_file(n, dfd, name);
	else {
		if (exists)
			remove_tree(dfd, name);
		ret = make_entry(rs, dfd, name, e);
	}
	return ret ? ret : PLACED_MADE;
}

/*
 * Write the voted bytes to the child through the ring, under io-timeout:
 * the copy holds the chunk's range exclusively, so a child that hangs
 * here would hold every caller of those bytes.
 */
static int write_out(struct resync *rs, int out, const struct tree_answer *r,
		     off_t off)
{
	for (int k = 0; k < r->iovcnt; k++) {
		struct child_io io = {.fd = out,
				      .write = true,
				      .child = rs->child,
				      .buf = r->iov[k].iov_base,
				      .len = r->iov[k].iov_len,
				      .off = off};

		child_io_run(rs->jobs->pool, &io, 1, rs->jobs->timeout_ms);
		if (io.ret == -ETIMEDOUT)
			snprintf(rs->reason, sizeof(rs->reason),
				 "did not answer a resync write within %d ms",
				 rs->jobs->timeout_ms);
		if (io.ret < 0)
			return io.ret;
		if ((size_t)io.ret < io.len) {
			ssize_t more = child_rw_full(
				out, true, false, (char *)io.buf + io.ret,
				io.len - io.ret, off + io.ret);

			if (more < 0)
				return (int)more;
			if ((size_t)more < io.len - io.ret)
				return -ENOSPC;
		}
		off += io.len;
		rs->copied += io.len;
	}
	return 0;
}

/* The child's bytes at off, read under io-timeout into *old (len bytes
 * at most): how many, or -errno. A read given up on keeps the buffer
 * (*old is then NULL). */
static ssize_t read_old(struct resync *rs, char **old, size_t len, off_t off)
{
	struct child_io io = {.fd = rs->old_fd,
			      .child = rs->child,
			      .buf = *old,
			      .own_buf = true,
			      .len = len,
			      .off = off};
	ssize_t more;

	child_io_run(rs->jobs->pool, &io, 1, rs->jobs->timeout_ms);
	if (io.orphaned)
		*old = NULL;
	if (io.ret < 0 || (size_t)io.ret == len)
		return io.ret;
	more = child_rw_full(rs->old_fd, false, false, *old + io.ret,
			     len - io.ret, off + io.ret);
	return more < 0 ? more : io.ret + more;
}

/* A returning child's bytes at off are about to become the voted ones
 * (r): what differs goes to its quarantine first. */
static int save_old(struct resync *rs, const struct child_view *view,
		    struct tree_node *n, const struct tree_answer *r, off_t off)
{
	char *old = malloc(r->len), *won = malloc(r->len), *path = NULL;
	ssize_t got = old && won ? read_old(rs, &old, r->len, off) : -ENOMEM;
	size_t pos = 0;
	int i = 0, ret = got < 0 ? (int)got : 0;

	while (i < view->n && view->child[i] != rs->child)
		i++;
	for (int k = 0; !ret && k < r->iovcnt; k++) {
		memcpy(won + pos, r->iov[k].iov_base, r->iov[k].iov_len);
		pos += r->iov[k].iov_len;
	}
	if (!ret && i < view->n && (path = tree_node_path(rs->tree, n)))
		ret = quarantine_save(
			rs->jobs->quarantine, view, i,
			&(struct quarantine_bytes){.path = path,
						   .off = off,
						   .old = old,
						   .old_len = (size_t)got,
						   .new = won,
						   .new_len = r->len,
						   .why = QUARANTINE_RESYNC});
	else if (!ret)
		ret = -ENOMEM;
	free(path);
	free(old);
	free(won);
	return ret;
}

static bool to_witness(const struct resync *rs)
{
	return child_kind(rs->child) == CHILD_WITNESS;
}

/*
 * A witness takes the digests of the voted data of [off, end), in whole
 * blocks and holes included (its list may hold old digests there), each
 * chunk under an exclusive claim like a data chunk.
 */
static int witness_copy(struct resync *rs, struct tree_file *f, int out,
			off_t off, off_t end)
{
	struct tree_node *n = tree_file_node(f);
	const struct child_view *view;
	struct range_claim claim;
	ssize_t got = RESYNC_CHUNK;

	off = off / CHILD_WITNESS_BLOCK * CHILD_WITNESS_BLOCK;
	while (got == RESYNC_CHUNK && off < end && !stopping(rs)) {
		view = children_view_get(rs->jobs->set);
		range_lock(tree_node_ranges(n), &claim, off, off + RESYNC_CHUNK,
			   true);
		got = tree_witness_fill(rs->tree, view, f, out, off,
					RESYNC_CHUNK);
		range_unlock(tree_node_ranges(n), &claim);
		children_view_put(view);
		if (got > 0)
			rs->copied += (uint64_t)got / 128;
		off += RESYNC_CHUNK;
		advance(rs, rs->file_base + off);
		progress(rs, false);
	}
	if (got < 0)
		return (int)got;
	return stopping(rs) ? -ECANCELED : 0;
}

/* Copy one chunk of data at off (a data region of the voters). */
static int copy_chunk(struct resync *rs, struct tree_file *f, int out,
		      off_t off, off_t len)
{
	const struct child_view *view = children_view_get(rs->jobs->set);
	struct tree_node *n = tree_file_node(f);
	struct range_claim claim;
	struct tree_answer r;
	int ret;

	range_lock(tree_node_ranges(n), &claim, off, off + len, true);
	ret = tree_read_locked(rs->tree, view, f, off, len, &r);
	if (!ret && r.len && rs->old_fd >= 0 && rs->jobs->quarantine)
		ret = save_old(rs, view, n, &r, off);
	if (!ret && r.len)
		ret = write_out(rs, out, &r, off);
	range_unlock(tree_node_ranges(n), &claim);
	tree_answer_release(&r);
	children_view_put(view);
	return ret;
}

/* Give the child's file the voted size, with every write held off; then
 * put it on the child's disk: the child is about to vote, and a power cut
 * of it must not take back what the copy wrote. */
static int finish_file(struct resync *rs, struct tree_file *f, int out)
{
	const struct child_view *view = children_view_get(rs->jobs->set);
	struct tree_node *n = tree_file_node(f);
	struct range_claim claim;
	struct stat st;
	int ret;

	range_lock(tree_node_ranges(n), &claim, 0, RANGE_END, true);
	ret = tree_attr_vote(rs->tree, view, n, &st);
	if (!ret && to_witness(rs))
		ret = tree_witness_finish(out, st.st_size);
	else if (!ret)
		ret = child_result(ftruncate(out, st.st_size));
	range_unlock(tree_node_ranges(n), &claim);
	children_view_put(view);
	return ret ? ret : child_result(fsync(out));
}

/* Copy the voters' data regions inside [off, end). */
static int copy_data(struct resync *rs, struct tree_file *f, int out, off_t off,
		     off_t end)
{
	const struct child_view *view;
	off_t data, hole;
	int ret = 0;

	if (to_witness(rs))
		return witness_copy(rs, f, out, off, end);
	while (!ret && off < end && !stopping(rs)) {
		view = children_view_get(rs->jobs->set);
		data = tree_lseek_locked(rs->tree, view, f, off, SEEK_DATA);
		hole = data < 0 ? data
				: tree_lseek_locked(rs->tree, view, f, data,
						    SEEK_HOLE);
		children_view_put(view);
		if (data == -ENXIO || data >= end)
			break;
		if (data < 0 || hole < 0)
			return (int)(data < 0 ? data : hole);
		if (hole > end)
			hole = end;
		if (hole > data + RESYNC_CHUNK)
			hole = data + RESYNC_CHUNK;
		ret = copy_chunk(rs, f, out, data, hole - data);
		advance(rs, rs->file_base + hole);
		progress(rs, false);
		off = hole;
	}
	return ret ? ret : stopping(rs) ? -ECANCELED : 0;
}

/* Copy the voted data of e into the child's file behind handle. */
static int copy_file(struct resync *rs, const struct tree_entry *e, int handle)
{
	struct tree_file *f;
	char proc[64];
	int out, ret;

	ret = tree_open(rs->tree, e->ino, O_RDONLY, &f);
	if (ret)
		return ret;
	child_proc_path(handle, proc);
	out = open(proc, (to_witness(rs) ? O_RDWR : O_WRONLY) | O_CLOEXEC);
	if (out < 0) {
		ret = -errno;
	} else {
		ret = copy_data(rs, f, out, 0, RANGE_END);
		if (!ret)
			ret = finish_file(rs, f, out);
		close(out);
	}
	tree_release(rs->tree, f);
	rs->file_base += e->attr.st_size;
	advance(rs, rs->file_base);
	return ret;
}

static int copy_xattrs(struct resync *rs, uint64_t ino, const char *proc)
{
	char *list = NULL, *value = NULL;
	ssize_t len, vlen;
	int ret = 0;

	len = tree_listxattr(rs->tree, ino, NULL, 0);
	if (len <= 0)
		return len < 0 && len != -ENOTSUP ? (int)len : 0;
	list = malloc(len);
	value = malloc(XATTR_SIZE_MAX);
	if (!list || !value) {
		ret = -ENOMEM;
		goto out;
	}
	len = tree_listxattr(rs->tree, ino, list, len);
	for (ssize_t i = 0; !ret && len > 0 && i < len;
	     i += strlen(list + i) + 1) {
		vlen = tree_getxattr(rs->tree, ino, list + i, value,
				     XATTR_SIZE_MAX);
		if (vlen >= 0)
			ret = child_result(
				setxattr(proc, list + i, value, vlen, 0));
	}
out:
	free(list);
	free(value);
	return ret;
}

/*
 * Owner, mode, xattrs and times of the entry behind handle; last, as
 * writing changes the times. Through the handle, not the name: the file
 * may be renamed meanwhile.
 */
static int copy_metadata(struct resync *rs, int handle, uint64_t ino,
			 const struct stat *st)
{
	struct timespec ts[2] = {st->st_atim, st->st_mtim};
	bool link = S_ISLNK(st->st_mode);
	char proc[64];
	int ret;

	child_proc_path(handle, proc);
	ret = child_result(fchownat(handle, "", st->st_uid, st->st_gid,
				    AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
	if (!ret && !link)
		ret = child_result(chmod(proc, st->st_mode & 07777));
	if (!ret && !link)
		ret = copy_xattrs(rs, ino, proc);
	if (!ret)
		ret = child_result(utimensat(
			handle, "", ts, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
	return ret;
}

static void resync_finish(struct resync *rs, int ret)
{
	struct json_object *d;

	if (!ret && stopping(rs))
		ret = -ECANCELED; /* it failed while its copy ended */
	if (ret == -ECANCELED)
		return; /* failed, removed or unmounting: nothing to report */
	if (ret) {
		jobs_fail_child(rs->jobs, rs->child,
				rs->reason[0] ? rs->reason : strerror(-ret));
		return;
	}
	rs->bytes_done = rs->bytes_total;
	rs->files_done = rs->files_total;
	progress(rs, true);
	d = event_data(rs);
	add_count(d, "bytes", rs->copied);
	add_count(d, "files", rs->files_done);
	event_log_emit(rs->jobs->log, "RESYNC_COMPLETED", d);
	/* In step on disk before it votes: a crash from here on must not
	 * find it behind and copy it all again, nor find it ahead. */
	if (rs->jobs->record)
		record_promoted(rs->jobs->record, rs->jobs->set, rs->child);
	children_set_state(rs->jobs->set, rs->child, CHILD_OK,
			   "resync completed");
}

/* An entry made on the child while its directory was held. */
struct placed {
	struct tree_entry e;
	int handle; /* O_PATH handle of the child's entry */
	enum placed_how how;
};

static int copy_dir(struct resync *rs, struct tree_node *dir);

/* Place one listed entry; 0 when it is gone since the listing. */
static int place_entry(struct resync *rs, struct tree_node *dir, int dfd,
		       const char *name, struct placed *p)
{
	struct tree *tree = rs->tree;
	int ret = tree_lookup(tree, tree_node_ino(tree, dir), name, &p->e);

	if (ret == -ENOENT)
		return 0;
	if (ret)
		return fail(rs, ret, "cannot look up", name);
	ret = create_entry(rs, dfd, name, &p->e);
	if (ret >= 0) {
		p->how = ret;
		p->handle = openat(dfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
		ret = p->handle < 0 ? -errno : 1;
	}
	if (ret == 1) {
		struct tree_node *n = tree_node(tree, p->e.ino);

		tree_node_adopt_fd(tree, n, rs->slot, p->handle);
		if (p->how == PLACED_MADE && S_ISREG(p->e.attr.st_mode) &&
		    p->e.attr.st_nlink > 1)
			remember_linked(rs, n);
		return 1;
	}
	tree_forget(tree, p->e.ino, 1);
	return fail(rs, ret, "cannot create", name);
}

/*
 * Make the child's directory hold exactly the voted names, all at once:
 * namespace changes hold the directory shared, so while we hold it
 * exclusively nothing moves. Afterwards every change in this directory
 * reaches the child too. Contents are copied later, through the handles.
 */
static int complete_dir(struct resync *rs, struct tree_node *dir, int dfd,
			struct placed **out, size_t *count)
{
	struct tree *tree = rs->tree;
	struct range_claim claim;
	struct tree_dir *voted;
	struct placed *p = NULL;
	const char *name;
	struct stat st;
	size_t n = 0;
	int ret;

	range_lock(tree_node_ranges(dir), &claim, 0, RANGE_END, true);
	ret = tree_opendir(tree, tree_node_ino(tree, dir), &voted);
	if (ret)
		goto out;
	ret = remove_extras(rs, dir, dfd, voted);
	for (size_t i = 0; !ret && tree_dir_entry(voted, i, &name, &st); i++) {
		struct placed *grown;

		if (!strcmp(name, ".") || !strcmp(name, ".."))
			continue;
		grown = realloc(p, (n + 1) * sizeof(*p));
		if (!grown) {
			ret = -ENOMEM;
			break;
		}
		p = grown;
		ret = place_entry(rs, dir, dfd, name, &p[n]);
		n += ret == 1;
		ret = ret < 0 ? ret : 0;
	}
	tree_releasedir(voted);
out:
	range_unlock(tree_node_ranges(dir), &claim);
	*out = p;
	*count = n;
	return ret;
}

static int copy_content(struct resync *rs, struct placed *p)
{
	struct tree_node *n = tree_node(rs->tree, p->e.ino);
	int ret = 0;

	if (S_ISDIR(p->e.attr.st_mode)) {
		ret = copy_dir(rs, n);
		/* A dirty-directory pass leaves a directory's own metadata
		 * alone when it was already in place. */
		if (ret || p->how == PLACED_THERE)
			return ret;
	} else if (p->how != PLACED_MADE) {
		return 0;
	} else if (S_ISREG(p->e.attr.st_mode)) {
		ret = copy_file(rs, &p->e, p->handle);
	}
	return ret ? ret : copy_metadata(rs, p->handle, p->e.ino, &p->e.attr);
}

static int copy_dir(struct resync *rs, struct tree_node *dir)
{
	int dfd = tree_node_fd(rs->tree, dir, rs->slot), ret;
	struct placed *p;
	size_t n;

	if (dfd < 0)
		return dfd;
	ret = complete_dir(rs, dir, dfd, &p, &n);
	for (size_t i = 0; i < n; i++) {
		int r = ret ? 0 : copy_content(rs, &p[i]);

		if (r == -ENOENT)
			r = 0; /* removed while copied: nothing to keep */
		if (r && r != -ECANCELED)
			fail(rs, r, "cannot copy", "an entry");
		ret = ret ? ret : r;
		if (stopping(rs))
			ret = -ECANCELED;
		close(p[i].handle);
		tree_forget(rs->tree, p[i].e.ino, 1);
		rs->files_done += !rs->catchup;
		progress(rs, false);
	}
	free(p);
	/* The child is about to vote: a power cut of it must not take back
	 * the names placed here. */
	if (!ret) {
		ret = child_sync_dir(dfd, ".", false);
		if (ret)
			fail(rs, ret, "cannot fsync", "a directory");
	}
	return ret;
}

static int copy_root_metadata(struct resync *rs)
{
	int fd = tree_node_fd(rs->tree, tree_root(rs->tree), rs->slot);
	struct stat st;
	int ret;

	if (fd < 0)
		return fd;
	ret = tree_getattr(rs->tree, TREE_ROOT_INO, &st);
	return ret ? ret : copy_metadata(rs, fd, TREE_ROOT_INO, &st);
}

/* Directories a live change could not complete on the child (a rename
 * from a directory not copied yet): complete them again. */
static int copy_dirty(struct resync *rs)
{
	struct tree_node *dir;
	int ret = 0;

	rs->catchup = true;
	while (!ret && (dir = tree_take_incomplete(rs->tree, rs->slot))) {
		if (tree_node_fd(rs->tree, dir, rs->slot) >= 0)
			ret = copy_dir(rs, dir);
		tree_node_unref(rs->tree, dir);
	}
	return ret;
}

/*
 * The child votes once no directory is dirty. The check and the switch
 * happen with every namespace change held off, so none can fail on the
 * child in between.
 */
static int copy_tree_finish(struct resync *rs)
{
	int ret = 0;

	while (!ret) {
		ret = copy_dirty(rs);
		if (ret)
			break;
		tree_barrier_raise(rs->tree);
		if (!tree_has_incomplete(rs->tree, rs->slot)) {
			ret = copy_root_metadata(rs);
			resync_finish(rs, ret);
			tree_barrier_lower(rs->tree);
			return ret;
		}
		tree_barrier_lower(rs->tree);
	}
	resync_finish(rs, ret);
	return ret;
}

static int copy_tree(struct resync *rs)
{
	int ret = copy_dir(rs, tree_root(rs->tree));

	if (ret) {
		resync_finish(rs, ret);
		return ret;
	}
	return copy_tree_finish(rs);
}

/* ---- copying only what a returning child missed ---- */

/* The regions one file was written in while the child was away. */
static int copy_regions(struct resync *rs, const struct persist_file *pf,
			const struct tree_entry *e)
{
	int handle =
		tree_node_fd(rs->tree, tree_node(rs->tree, e->ino), rs->slot);
	struct tree_file *f;
	char proc[64];
	int out, ret;

	if (handle < 0 || !S_ISREG(e->attr.st_mode))
		return -ENOENT; /* not a plain data change: copy the tree */
	ret = tree_open(rs->tree, e->ino, O_RDONLY, &f);
	if (ret)
		return ret;
	child_proc_path(handle, proc);
	out = open(proc, (to_witness(rs) ? O_RDWR : O_WRONLY) | O_CLOEXEC);
	rs->old_fd = open(proc, O_RDONLY | O_CLOEXEC);
	ret = out < 0 || rs->old_fd < 0 ? -errno : 0;
	for (int k = 0; !ret && k < pf->nregions; k++)
		ret = copy_data(rs, f, out, pf->region[k] * PERSIST_REGION,
				(pf->region[k] + 1) * PERSIST_REGION);
	if (rs->old_fd >= 0)
		close(rs->old_fd);
	rs->old_fd = -1;
	if (!ret)
		ret = finish_file(rs, f, out);
	if (!ret)
		ret = copy_metadata(rs, handle, e->ino, &e->attr);
	if (out >= 0)
		close(out);
	tree_release(rs->tree, f);
	return ret;
}

/*
 * A child that returns after missing only writes to known files: copy
 * those regions, then finish like a whole-tree copy.
 */
static int copy_missed(struct resync *rs, const struct persist_missed *m)
{
	int ret = 0;

	rs->files_total = m->nfiles;
	for (int i = 0; i < m->nfiles; i++)
		rs->bytes_total += m->file[i].nregions * PERSIST_REGION;
	for (int i = 0; i < m->nfiles && !ret; i++) {
		struct tree_entry e;

		ret = walk_lookup_path(rs->tree, m->file[i].path, &e);
		if (ret == -ENOENT)
			return ret;
		if (!ret) {
			ret = copy_regions(rs, &m->file[i], &e);
			tree_forget(rs->tree, e.ino, 1);
		}
		rs->files_done++;
		rs->file_base += m->file[i].nregions * PERSIST_REGION;
		advance(rs, rs->file_base);
		progress(rs, false);
		if (stopping(rs))
			ret = -ECANCELED;
	}
	return ret;
}

/* Only the missed regions when the record can tell them and the copy
 * goes through; -ENOENT when the whole tree has to be copied. */
static int try_missed(struct resync *rs)
{
	struct persist_missed m;
	int ret;

	if (!rs->jobs->record || !rs->partial)
		return -ENOENT;
	record_missed(rs->jobs->record, rs->jobs->set, rs->child, &m);
	ret = m.tree ? -ENOENT : copy_missed(rs, &m);
	persist_missed_free(&m);
	/* Anything unexpected (a file turned directory...): the whole tree
	 * settles it, and fails the child if its device is at fault. */
	if (ret && ret != -ECANCELED) {
		rs->files_done = rs->files_total = 0;
		rs->bytes_done = rs->bytes_total = rs->file_base = 0;
		rs->reason[0] = '\0';
		return ret;
	}
	if (!ret)
		ret = copy_tree_finish(rs);
	else
		resync_finish(rs, ret);
	return ret;
}

/* ---- the job ---- */

static void *resync_thread(void *arg)
{
	struct resync *rs = arg;
	int ret;

	if (try_missed(rs) != -ENOENT)
		return NULL;
	ret = count_tree(rs);
	progress(rs, true);
	if (ret)
		resync_finish(rs, ret);
	else
		copy_tree(rs);
	return NULL;
}

static void resync_free(struct resync *rs)
{
	for (size_t i = 0; i < rs->nlinked; i++)
		tree_node_unref(rs->tree, rs->linked[i]);
	free(rs->linked);
	child_put(rs->child);
	free(rs);
}

/* Take c's job out of the list, or NULL. */
static struct resync *resync_take(struct jobs *jobs, struct child *c)
{
	struct resync **pp, *rs = NULL;

	pthread_mutex_lock(&jobs->resync_lock);
	for (pp = &jobs->resyncs; *pp; pp = &(*pp)->next) {
		if (c == NULL || (*pp)->child == c) {
			rs = *pp;
			*pp = rs->next;
			break;
		}
	}
	pthread_mutex_unlock(&jobs->resync_lock);
	return rs;
}

void resync_stop(struct jobs *jobs, struct child *c)
{
	struct resync *rs;

	while ((rs = resync_take(jobs, c))) {
		atomic_store(&rs->stop, true);
		pthread_join(rs->thread, NULL);
		tree_forget_incomplete(jobs->tree, rs->slot);
		resync_free(rs);
		if (c)
			break;
	}
}

int resync_start(struct jobs *jobs, struct child *c, bool partial)
{
	struct resync *rs;
	int ret;

	resync_stop(jobs, c); /* a finished or running earlier job */
	rs = calloc(1, sizeof(*rs));
	if (!rs)
		return -ENOMEM;
	rs->jobs = jobs;
	rs->tree = jobs->tree;
	rs->child = c;
	rs->slot = child_slot(c);
	rs->partial = partial;
	rs->old_fd = -1;
	child_get(c);
	atomic_init(&rs->stop, false);
	ret = -pthread_create(&rs->thread, NULL, resync_thread, rs);
	if (ret) {
		resync_free(rs);
		return ret;
	}
	pthread_setname_np(rs->thread, "qfs-resync");
	pthread_mutex_lock(&jobs->resync_lock);
	rs->next = jobs->resyncs;
	jobs->resyncs = rs;
	pthread_mutex_unlock(&jobs->resync_lock);
	return 0;
}
