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
#include "tree/tree_i.h"

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

#define RESYNC_CHUNK (1024 * 1024)

struct resync {
	struct fs *fs;
	struct child *child; /* a reference */
	int slot;
	pthread_t thread;
	atomic_bool stop;
	struct resync *next; /* guarded by fs->resync_lock */
	/* Only the resync thread touches the rest. */
	uint64_t bytes_done, bytes_total, files_done, files_total;
	uint64_t file_base; /* bytes of the files copied before this one */
	uint64_t created;   /* entries made in the current pass */
	bool catchup;	    /* a pass that only fills in missing entries */
	bool partial;	    /* may copy only what the record says it missed */
	struct timespec last_progress;
	char reason[256];
	struct node **linked; /* files with several names, already copied */
	size_t nlinked;
};

static int errno_of(int r)
{
	return r < 0 ? -errno : 0;
}

static int fail(struct resync *rs, int err, const char *what, const char *name)
{
	if (!rs->reason[0])
		snprintf(rs->reason, sizeof(rs->reason), "%s '%s': %s", what,
			 name, strerror(-err));
	return err;
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
	event_log_emit(rs->fs->log, "RESYNC_PROGRESS", d);
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

/* ---- walking the voted tree ---- */

typedef int entry_fn(struct resync *rs, struct node *dir, const char *name,
		     const struct fs_entry *e);

/* Call fn for every entry of the voted listing of dir. */
static int walk_dir(struct resync *rs, struct node *dir, entry_fn *fn)
{
	struct fs *fs = rs->fs;
	struct fs_dir *d;
	const char *name;
	struct stat st;
	int ret = fs_opendir(fs, node_ino(fs, dir), &d);

	if (ret)
		return fail(rs, ret, "cannot list",
			    dir->name ? dir->name : "/");
	for (size_t i = 0; !ret && fs_dir_entry(d, i, &name, &st); i++) {
		struct fs_entry e;

		if (atomic_load(&rs->stop))
			ret = -ECANCELED;
		else if (!strcmp(name, ".") || !strcmp(name, ".."))
			continue;
		else if (fs_lookup(fs, node_ino(fs, dir), name, &e) == 0) {
			ret = fn(rs, dir, name, &e);
			fs_forget(fs, e.ino, 1);
		}
		/* An entry gone since the listing needs no copy. */
	}
	fs_releasedir(d);
	return ret;
}

static int count_entry(struct resync *rs, struct node *dir, const char *name,
		       const struct fs_entry *e)
{
	(void)dir;
	(void)name;
	rs->files_total++;
	if (S_ISREG(e->attr.st_mode))
		rs->bytes_total += e->attr.st_size;
	if (S_ISDIR(e->attr.st_mode))
		return walk_dir(rs, node_get(rs->fs, e->ino), count_entry);
	return 0;
}

/* ---- making the child's tree match ---- */

static int remove_tree(int dfd, const char *name);

static int remove_dir_contents(int fd)
{
	struct dirent *de;
	int ret = 0;
	DIR *d = fdopendir(fd);

	if (!d) {
		close(fd);
		return -errno;
	}
	while (!ret && (de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			ret = remove_tree(dirfd(d), de->d_name);
	closedir(d);
	return ret;
}

static int remove_tree(int dfd, const char *name)
{
	int fd;

	if (unlinkat(dfd, name, 0) == 0 || errno == ENOENT)
		return 0;
	if (errno != EISDIR && errno != EPERM)
		return -errno;
	fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (remove_dir_contents(fd))
		return -errno;
	return errno_of(unlinkat(dfd, name, AT_REMOVEDIR));
}

/* Remove what the child has in dir that the voted listing lacks. */
static int remove_extras(struct resync *rs, struct node *dir, int dfd,
			 const struct fs_dir *voted)
{
	struct fs *fs = rs->fs;
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
			    (dir == &fs->root &&
			     fs_reserved_name(FS_ROOT_INO, de->d_name));
		const char *name;
		struct stat st;

		for (size_t i = 0; !keep && fs_dir_entry(voted, i, &name, &st);
		     i++)
			keep = strcmp(name, de->d_name) == 0;
		if (!keep)
			ret = remove_tree(dfd, de->d_name);
	}
	closedir(d);
	return ret;
}

static bool already_linked(struct resync *rs, struct node *n)
{
	for (size_t i = 0; i < rs->nlinked; i++)
		if (rs->linked[i] == n)
			return true;
	return false;
}

static void remember_linked(struct resync *rs, struct node *n)
{
	struct node **grown =
		realloc(rs->linked, (rs->nlinked + 1) * sizeof(*grown));

	if (!grown)
		return; /* a later name becomes a copy, not a link */
	rs->linked = grown;
	rs->linked[rs->nlinked++] = n;
	node_ref(rs->fs, n);
}

/* Truncate the child's existing file under the file's whole range, so
 * it keeps its inode (open handles stay valid) and starts empty. */
static int empty_file(struct node *n, int dfd, const char *name)
{
	struct range_claim claim;
	int fd, ret;

	fd = openat(dfd, name, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	range_lock(&n->ranges, &claim, 0, FS_OFF_MAX, true);
	ret = errno_of(ftruncate(fd, 0));
	range_unlock(&n->ranges, &claim);
	close(fd);
	return ret;
}

/* Another name of a file copied already: link it, unless it is one. */
static int link_entry(struct resync *rs, struct node *n, int dfd,
		      const char *name, const struct stat *have, bool exists)
{
	int fd = node_fd(rs->fs, n, rs->slot);
	struct stat st;
	char proc[64];

	if (fd < 0)
		return fd;
	if (exists && fstat(fd, &st) == 0 && st.st_ino == have->st_ino &&
	    st.st_dev == have->st_dev)
		return 0;
	if (exists)
		remove_tree(dfd, name);
	fd_proc_path(fd, proc);
	return errno_of(linkat(AT_FDCWD, proc, dfd, name, AT_SYMLINK_FOLLOW));
}

static int make_entry(struct resync *rs, int dfd, const char *name,
		      const struct fs_entry *e)
{
	mode_t mode = e->attr.st_mode;
	char target[PATH_MAX + 1];
	ssize_t len;
	int fd;

	if (S_ISDIR(mode))
		return errno_of(mkdirat(dfd, name, mode & 07777));
	if (S_ISREG(mode)) {
		fd = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
			    mode & 07777);
		return fd < 0 ? -errno : errno_of(close(fd));
	}
	if (S_ISLNK(mode)) {
		len = fs_readlink(rs->fs, e->ino, target, sizeof(target) - 1);
		if (len < 0)
			return (int)len;
		target[len] = '\0';
		return errno_of(symlinkat(target, dfd, name));
	}
	return errno_of(mknodat(dfd, name, mode, e->attr.st_rdev));
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
			const struct fs_entry *e)
{
	struct node *n = node_get(rs->fs, e->ino);
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
static int write_out(struct resync *rs, int out, const struct fs_read *r,
		     off_t off)
{
	for (int k = 0; k < r->iovcnt; k++) {
		struct child_io io = {.fd = out,
				      .write = true,
				      .child = rs->child,
				      .buf = r->iov[k].iov_base,
				      .len = r->iov[k].iov_len,
				      .off = off};

		child_io_run(rs->fs->pool, &io, 1, rs->fs->timeout_ms);
		if (io.ret == -ETIMEDOUT)
			snprintf(rs->reason, sizeof(rs->reason),
				 "did not answer a resync write within %d ms",
				 rs->fs->timeout_ms);
		if (io.ret < 0)
			return io.ret;
		if ((size_t)io.ret < io.len &&
		    pwrite(out, (char *)io.buf + io.ret, io.len - io.ret,
			   off + io.ret) != (ssize_t)(io.len - io.ret))
			return errno ? -errno : -ENOSPC;
		off += io.len;
	}
	return 0;
}

/* Copy one chunk of data at off (a data region of the voters). */
static int copy_chunk(struct resync *rs, struct fs_file *f, int out, off_t off,
		      off_t len)
{
	const struct child_view *view = children_view_get(rs->fs->set);
	struct node *n = fs_file_node(f);
	struct range_claim claim;
	struct fs_read r;
	int ret;

	range_lock(&n->ranges, &claim, off, off + len, true);
	ret = read_voted_locked(rs->fs, view, f, off, len, &r);
	if (!ret && r.len)
		ret = write_out(rs, out, &r, off);
	range_unlock(&n->ranges, &claim);
	fs_read_release(&r);
	children_view_put(view);
	return ret;
}

/* Give the child's file the voted size, with every write held off. */
static int finish_file(struct resync *rs, struct fs_file *f, int out)
{
	const struct child_view *view = children_view_get(rs->fs->set);
	struct node *n = fs_file_node(f);
	struct range_claim claim;
	struct stat st;
	int ret;

	range_lock(&n->ranges, &claim, 0, FS_OFF_MAX, true);
	ret = attr_vote(rs->fs, view, n, &st);
	if (!ret)
		ret = errno_of(ftruncate(out, st.st_size));
	range_unlock(&n->ranges, &claim);
	children_view_put(view);
	return ret;
}

/* Copy the voters' data regions inside [off, end). */
static int copy_data(struct resync *rs, struct fs_file *f, int out, off_t off,
		     off_t end)
{
	const struct child_view *view;
	off_t data, hole;
	int ret = 0;

	while (!ret && off < end && !atomic_load(&rs->stop)) {
		view = children_view_get(rs->fs->set);
		data = lseek_voted_locked(rs->fs, view, f, off, SEEK_DATA);
		hole = data < 0 ? data
				: lseek_voted_locked(rs->fs, view, f, data,
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
	return ret ? ret : atomic_load(&rs->stop) ? -ECANCELED : 0;
}

/* Copy the voted data of e into the child's file behind handle. */
static int copy_file(struct resync *rs, const struct fs_entry *e, int handle)
{
	struct fs_file *f;
	char proc[64];
	int out, ret;

	ret = fs_open(rs->fs, e->ino, O_RDONLY, &f);
	if (ret)
		return ret;
	fd_proc_path(handle, proc);
	out = open(proc, O_WRONLY | O_CLOEXEC);
	if (out < 0) {
		ret = -errno;
	} else {
		ret = copy_data(rs, f, out, 0, FS_OFF_MAX);
		if (!ret)
			ret = finish_file(rs, f, out);
		close(out);
	}
	fs_release(rs->fs, f);
	rs->file_base += e->attr.st_size;
	advance(rs, rs->file_base);
	return ret;
}

static int copy_xattrs(struct resync *rs, uint64_t ino, const char *proc)
{
	char *list = NULL, *value = NULL;
	ssize_t len, vlen;
	int ret = 0;

	len = fs_listxattr(rs->fs, ino, NULL, 0);
	if (len <= 0)
		return len < 0 && len != -ENOTSUP ? (int)len : 0;
	list = malloc(len);
	value = malloc(XATTR_SIZE_MAX);
	if (!list || !value) {
		ret = -ENOMEM;
		goto out;
	}
	len = fs_listxattr(rs->fs, ino, list, len);
	for (ssize_t i = 0; !ret && len > 0 && i < len;
	     i += strlen(list + i) + 1) {
		vlen = fs_getxattr(rs->fs, ino, list + i, value,
				   XATTR_SIZE_MAX);
		if (vlen >= 0)
			ret = errno_of(
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

	fd_proc_path(handle, proc);
	ret = errno_of(fchownat(handle, "", st->st_uid, st->st_gid,
				AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
	if (!ret && !link)
		ret = errno_of(chmod(proc, st->st_mode & 07777));
	if (!ret && !link)
		ret = copy_xattrs(rs, ino, proc);
	if (!ret)
		ret = errno_of(utimensat(handle, "", ts,
					 AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW));
	return ret;
}

static void resync_finish(struct resync *rs, int ret)
{
	struct json_object *d;

	if (ret == -ECANCELED)
		return; /* removed or unmounting: nothing to report */
	if (ret) {
		children_set_state(rs->fs->set, rs->child, CHILD_FAILED,
				   rs->reason[0] ? rs->reason : strerror(-ret));
		return;
	}
	rs->bytes_done = rs->bytes_total;
	rs->files_done = rs->files_total;
	progress(rs, true);
	d = event_data(rs);
	add_count(d, "bytes", rs->bytes_done);
	add_count(d, "files", rs->files_done);
	event_log_emit(rs->fs->log, "RESYNC_COMPLETED", d);
	/* In step on disk before it votes: a crash from here on must not
	 * find it behind and copy it all again, nor find it ahead. */
	if (rs->fs->record)
		record_promoted(rs->fs->record, rs->fs->set, rs->child);
	children_set_state(rs->fs->set, rs->child, CHILD_OK,
			   "resync completed");
}

/* An entry made on the child while its directory was held. */
struct placed {
	struct fs_entry e;
	int handle; /* O_PATH handle of the child's entry */
	enum placed_how how;
};

static int copy_dir(struct resync *rs, struct node *dir);

/* Place one listed entry; 0 when it is gone since the listing. */
static int place_entry(struct resync *rs, struct node *dir, int dfd,
		       const char *name, struct placed *p)
{
	struct fs *fs = rs->fs;
	int ret = fs_lookup(fs, node_ino(fs, dir), name, &p->e);

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
		struct node *n = node_get(fs, p->e.ino);

		node_adopt_fd(fs, n, rs->slot, p->handle);
		if (p->how == PLACED_MADE && S_ISREG(p->e.attr.st_mode) &&
		    p->e.attr.st_nlink > 1)
			remember_linked(rs, n);
		return 1;
	}
	fs_forget(fs, p->e.ino, 1);
	return fail(rs, ret, "cannot create", name);
}

/*
 * Make the child's directory hold exactly the voted names, all at once:
 * namespace changes hold the directory shared, so while we hold it
 * exclusively nothing moves. Afterwards every change in this directory
 * reaches the child too. Contents are copied later, through the handles.
 */
static int complete_dir(struct resync *rs, struct node *dir, int dfd,
			struct placed **out, size_t *count)
{
	struct fs *fs = rs->fs;
	struct range_claim claim;
	struct fs_dir *voted;
	struct placed *p = NULL;
	const char *name;
	struct stat st;
	size_t n = 0;
	int ret;

	range_lock(&dir->ranges, &claim, 0, FS_OFF_MAX, true);
	ret = fs_opendir(fs, node_ino(fs, dir), &voted);
	if (ret)
		goto out;
	ret = remove_extras(rs, dir, dfd, voted);
	for (size_t i = 0; !ret && fs_dir_entry(voted, i, &name, &st); i++) {
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
	fs_releasedir(voted);
out:
	range_unlock(&dir->ranges, &claim);
	*out = p;
	*count = n;
	return ret;
}

static int copy_content(struct resync *rs, struct placed *p)
{
	struct node *n = node_get(rs->fs, p->e.ino);
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

static int copy_dir(struct resync *rs, struct node *dir)
{
	int dfd = node_fd(rs->fs, dir, rs->slot), ret;
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
		if (atomic_load(&rs->stop))
			ret = -ECANCELED;
		close(p[i].handle);
		fs_forget(rs->fs, p[i].e.ino, 1);
		rs->files_done += !rs->catchup;
		progress(rs, false);
	}
	free(p);
	return ret;
}

static int copy_root_metadata(struct resync *rs)
{
	int fd = node_fd(rs->fs, &rs->fs->root, rs->slot);
	struct stat st;
	int ret;

	if (fd < 0)
		return fd;
	ret = fs_getattr(rs->fs, FS_ROOT_INO, &st);
	return ret ? ret : copy_metadata(rs, fd, FS_ROOT_INO, &st);
}

/* Directories a live change could not complete on the child (a rename
 * from a directory not copied yet): complete them again. */
static int copy_dirty(struct resync *rs)
{
	struct node *dir;
	int ret = 0;

	rs->catchup = true;
	while (!ret && (dir = resync_take_dirty(rs->fs, rs->slot))) {
		if (node_fd(rs->fs, dir, rs->slot) >= 0)
			ret = copy_dir(rs, dir);
		node_unref(rs->fs, dir);
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
		pthread_rwlock_wrlock(&rs->fs->ns_barrier);
		if (!resync_has_dirty(rs->fs, rs->slot)) {
			ret = copy_root_metadata(rs);
			resync_finish(rs, ret);
			pthread_rwlock_unlock(&rs->fs->ns_barrier);
			return ret;
		}
		pthread_rwlock_unlock(&rs->fs->ns_barrier);
	}
	resync_finish(rs, ret);
	return ret;
}

static int copy_tree(struct resync *rs)
{
	int ret = copy_dir(rs, &rs->fs->root);

	if (ret) {
		resync_finish(rs, ret);
		return ret;
	}
	return copy_tree_finish(rs);
}

/* ---- copying only what a returning child missed ---- */

/* Resolve a path of the mount, one voted lookup per component. */
static int lookup_path(struct fs *fs, const char *path, struct fs_entry *e)
{
	char *copy = strdup(path), *save = NULL, *name;
	uint64_t dir = FS_ROOT_INO;
	int ret = copy ? 0 : -ENOMEM;

	e->ino = FS_ROOT_INO;
	for (name = copy ? strtok_r(copy, "/", &save) : NULL; name && !ret;
	     name = strtok_r(NULL, "/", &save)) {
		ret = fs_lookup(fs, dir, name, e);
		if (dir != FS_ROOT_INO)
			fs_forget(fs, dir, 1);
		dir = e->ino;
	}
	if (ret && dir != FS_ROOT_INO)
		fs_forget(fs, dir, 1);
	free(copy);
	return ret;
}

/* The regions one file was written in while the child was away. */
static int copy_regions(struct resync *rs, const struct persist_file *pf,
			const struct fs_entry *e)
{
	int handle = node_fd(rs->fs, node_get(rs->fs, e->ino), rs->slot);
	struct fs_file *f;
	char proc[64];
	int out, ret;

	if (handle < 0 || !S_ISREG(e->attr.st_mode))
		return -ENOENT; /* not a plain data change: copy the tree */
	ret = fs_open(rs->fs, e->ino, O_RDONLY, &f);
	if (ret)
		return ret;
	fd_proc_path(handle, proc);
	out = open(proc, O_WRONLY | O_CLOEXEC);
	ret = out < 0 ? -errno : 0;
	for (int k = 0; !ret && k < pf->nregions; k++)
		ret = copy_data(rs, f, out, pf->region[k] * PERSIST_REGION,
				(pf->region[k] + 1) * PERSIST_REGION);
	if (!ret)
		ret = finish_file(rs, f, out);
	if (!ret)
		ret = copy_metadata(rs, handle, e->ino, &e->attr);
	if (out >= 0)
		close(out);
	fs_release(rs->fs, f);
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
		struct fs_entry e;

		ret = lookup_path(rs->fs, m->file[i].path, &e);
		if (ret == -ENOENT)
			return ret;
		if (!ret) {
			ret = copy_regions(rs, &m->file[i], &e);
			fs_forget(rs->fs, e.ino, 1);
		}
		rs->files_done++;
		rs->file_base += m->file[i].nregions * PERSIST_REGION;
		advance(rs, rs->file_base);
		progress(rs, false);
		if (atomic_load(&rs->stop))
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

	if (!rs->fs->record || !rs->partial)
		return -ENOENT;
	record_missed(rs->fs->record, rs->fs->set, rs->child, &m);
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
	ret = walk_dir(rs, &rs->fs->root, count_entry);
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
		node_unref(rs->fs, rs->linked[i]);
	free(rs->linked);
	child_put(rs->child);
	free(rs);
}

/* Take c's job out of the list, or NULL. */
static struct resync *resync_take(struct fs *fs, struct child *c)
{
	struct resync **pp, *rs = NULL;

	pthread_mutex_lock(&fs->resync_lock);
	for (pp = &fs->resyncs; *pp; pp = &(*pp)->next) {
		if (c == NULL || (*pp)->child == c) {
			rs = *pp;
			*pp = rs->next;
			break;
		}
	}
	pthread_mutex_unlock(&fs->resync_lock);
	return rs;
}

void resync_stop(struct fs *fs, struct child *c)
{
	struct resync *rs;

	while ((rs = resync_take(fs, c))) {
		atomic_store(&rs->stop, true);
		pthread_join(rs->thread, NULL);
		resync_forget_dirty(fs, rs->slot);
		resync_free(rs);
		if (c)
			break;
	}
}

int resync_start(struct fs *fs, struct child *c, bool partial)
{
	struct resync *rs;
	int ret;

	resync_stop(fs, c); /* a finished or running earlier job */
	rs = calloc(1, sizeof(*rs));
	if (!rs)
		return -ENOMEM;
	rs->fs = fs;
	rs->child = c;
	rs->slot = child_slot(c);
	rs->partial = partial;
	child_get(c);
	atomic_init(&rs->stop, false);
	ret = -pthread_create(&rs->thread, NULL, resync_thread, rs);
	if (ret) {
		resync_free(rs);
		return ret;
	}
	pthread_setname_np(rs->thread, "qfs-resync");
	pthread_mutex_lock(&fs->resync_lock);
	rs->next = fs->resyncs;
	fs->resyncs = rs;
	pthread_mutex_unlock(&fs->resync_lock);
	return 0;
}

/* ---- directories a live change left incomplete on a syncing child ---- */

struct dirty_dir {
	struct node *dir; /* a reference */
	struct dirty_dir *next;
};

void resync_mark_dirty(struct fs *fs, int slot, struct node *dir)
{
	struct dirty_dir *d = malloc(sizeof(*d));

	if (!d)
		return; /* the child turns ok incomplete: lookups report it */
	node_ref(fs, dir);
	d->dir = dir;
	pthread_mutex_lock(&fs->resync_lock);
	d->next = fs->dirty[slot];
	fs->dirty[slot] = d;
	pthread_mutex_unlock(&fs->resync_lock);
}

struct node *resync_take_dirty(struct fs *fs, int slot)
{
	struct dirty_dir *d;
	struct node *dir = NULL;

	pthread_mutex_lock(&fs->resync_lock);
	d = fs->dirty[slot];
	if (d)
		fs->dirty[slot] = d->next;
	pthread_mutex_unlock(&fs->resync_lock);
	if (d) {
		dir = d->dir;
		free(d);
	}
	return dir;
}

bool resync_has_dirty(struct fs *fs, int slot)
{
	bool dirty;

	pthread_mutex_lock(&fs->resync_lock);
	dirty = fs->dirty[slot] != NULL;
	pthread_mutex_unlock(&fs->resync_lock);
	return dirty;
}

void resync_forget_dirty(struct fs *fs, int slot)
{
	struct node *dir;

	while ((dir = resync_take_dirty(fs, slot)))
		node_unref(fs, dir);
}
