/*
 * Writes an operator asks for: putting a quarantine entry back
 * (`quarantine restore ID`), and making a file, or a range of it, what
 * one child holds (`repair FILE from=CHILD`, for blocks no version could
 * win). Both go through the tree's own write, a voted write to every
 * child like one of the mount's, so the set stays consistent: a child
 * that misses it is demoted and resynced as after any write.
 */
#define _GNU_SOURCE
#include "jobs/jobs_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* No "." or ".." component: the path names a file of the mount. */
static bool plain_path(const char *path)
{
	const char *p = path;

	while (*p) {
		size_t n;

		while (*p == '/')
			p++;
		n = strcspn(p, "/");
		if ((n == 1 && p[0] == '.') ||
		    (n == 2 && p[0] == '.' && p[1] == '.'))
			return false;
		p += n;
	}
	return *path != '\0';
}

/* Resolve path to a regular file of the mount, with one lookup the
 * caller forgets. */
static int lookup_file(struct jobs *jobs, const char *path,
		       struct tree_entry *e, char *err, size_t errlen)
{
	int ret;

	if (!plain_path(path)) {
		snprintf(err, errlen,
			 "'%s' is not a path of a file in the mount", path);
		return -EINVAL;
	}
	ret = walk_lookup_path(jobs->tree, path, e);
	if (ret) {
		snprintf(err, errlen, "no file '%s' in the mount: %s", path,
			 strerror(-ret));
		return ret;
	}
	if (!S_ISREG(e->attr.st_mode)) {
		if (e->ino != TREE_ROOT_INO)
			tree_forget(jobs->tree, e->ino, 1);
		snprintf(err, errlen, "'%s' is not a regular file", path);
		return -EINVAL;
	}
	return 0;
}

/* Write buf through the open file, in chunks the children take. */
static int write_through(struct jobs *jobs, struct tree_file *f,
			 const char *buf, size_t len, uint64_t off)
{
	for (size_t done = 0; done < len;) {
		size_t n =
			len - done < CHILD_IO_MAX ? len - done : CHILD_IO_MAX;
		ssize_t w = tree_write(jobs->tree, f, buf + done, n,
				       (off_t)(off + done), NULL);

		if (w < 0)
			return (int)w;
		done += n;
	}
	return 0;
}

int jobs_write_file(struct jobs *jobs, const char *path, uint64_t off,
		    const void *buf, size_t len, char *err, size_t errlen)
{
	struct tree_entry e;
	struct tree_file *f;
	int ret = lookup_file(jobs, path, &e, err, errlen);

	if (ret)
		return ret;
	ret = tree_open(jobs->tree, e.ino, O_WRONLY, &f);
	if (!ret) {
		ret = write_through(jobs, f, buf, len, off);
		if (!ret)
			ret = tree_fsync(jobs->tree, f, false);
		tree_release(jobs->tree, f);
	}
	if (ret)
		snprintf(err, errlen, "cannot write '%s' through the mount: %s",
			 path, strerror(-ret));
	tree_forget(jobs->tree, e.ino, 1);
	return ret;
}

/* ---- repair FILE from=CHILD ---- */

/* Read len bytes at off of c's copy (fd), bounded by io-timeout, into a
 * new buffer (*out, caller frees). */
static int read_source(struct jobs *jobs, struct child *c, int fd, uint64_t off,
		       size_t len, char **out)
{
	struct child_io io = {.fd = fd,
			      .child = c,
			      .buf = malloc(len ? len : 1),
			      .own_buf = true,
			      .len = len,
			      .off = (off_t)off};
	ssize_t more = 0;

	if (!io.buf)
		return -ENOMEM;
	child_io_run(jobs->pool, &io, 1, jobs->timeout_ms);
	if (io.orphaned)
		return -ETIMEDOUT; /* the ring frees the buffer */
	if (io.ret >= 0 && (size_t)io.ret < len)
		more = child_rw_full(fd, false, false, (char *)io.buf + io.ret,
				     len - io.ret, (off_t)off + io.ret);
	if (io.ret < 0 || more < 0 || (size_t)(io.ret + more) < len) {
		free(io.buf);
		return io.ret < 0 ? io.ret : more < 0 ? (int)more : -EIO;
	}
	*out = io.buf;
	return 0;
}

/* Copy c's bytes of [off, off + len) through the open file. */
static int copy_from(struct jobs *jobs, struct child *c, int fd,
		     struct tree_file *f, uint64_t off, uint64_t len)
{
	int ret = 0;

	for (uint64_t done = 0; !ret && done < len;) {
		size_t n =
			len - done < CHILD_IO_MAX ? len - done : CHILD_IO_MAX;
		char *buf = NULL;

		ret = read_source(jobs, c, fd, off + done, n, &buf);
		if (!ret)
			ret = write_through(jobs, f, buf, n, off + done);
		free(buf);
		done += n;
	}
	return ret;
}

/* c's own copy of e, open for reading, and its size; or -errno. */
static int open_source(struct jobs *jobs, struct child *c,
		       const struct tree_entry *e, off_t *size)
{
	int pfd = tree_node_fd(jobs->tree, tree_node(jobs->tree, e->ino),
			       child_slot(c));
	struct stat st;
	char proc[64];
	int fd;

	if (pfd < 0)
		return pfd;
	child_proc_path(pfd, proc);
	fd = open(proc, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st)) {
		close(fd);
		return -errno;
	}
	*size = st.st_size;
	return fd;
}

/* The range to copy, checked against the source's size. */
static int source_range(const char *path, struct child *c, off_t size,
			bool whole, uint64_t *off, uint64_t *len, char *err,
			size_t errlen)
{
	if (whole) {
		*off = 0;
		*len = (uint64_t)size;
		return 0;
	}
	if (*off > (uint64_t)size || *len > (uint64_t)size - *off) {
		snprintf(err, errlen,
			 "the range %llu+%llu lies past the end of '%s' on "
			 "child '%s' (%lld bytes)",
			 (unsigned long long)*off, (unsigned long long)*len,
			 path, child_name(c), (long long)size);
		return -EINVAL;
	}
	return 0;
}

/* The file's size becomes the source's (whole-file repair). */
static int set_size(struct jobs *jobs, const struct tree_entry *e,
		    struct tree_file *f, off_t size)
{
	struct stat attr = {.st_size = size}, st;

	return tree_setattr(jobs->tree, e->ino, f, &attr, TREE_SET_SIZE, &st);
}

static int repair_open(struct jobs *jobs, const char *path, struct child *c,
		       const struct tree_entry *e, bool whole, uint64_t off,
		       uint64_t len, char *err, size_t errlen)
{
	struct tree_file *f = NULL;
	off_t size = 0;
	int fd = open_source(jobs, c, e, &size), ret;

	if (fd < 0) {
		snprintf(err, errlen,
			 "child '%s' has no readable copy of "
			 "'%s': %s",
			 child_name(c), path, strerror(-fd));
		return fd;
	}
	ret = source_range(path, c, size, whole, &off, &len, err, errlen);
	if (!ret)
		ret = tree_open(jobs->tree, e->ino, O_WRONLY, &f);
	if (!ret && whole)
		ret = set_size(jobs, e, f, size);
	if (!ret)
		ret = copy_from(jobs, c, fd, f, off, len);
	if (!ret)
		ret = tree_fsync(jobs->tree, f, false);
	if (ret && !err[0])
		snprintf(err, errlen,
			 "cannot copy '%s' from child '%s' through the "
			 "mount: %s",
			 path, child_name(c), strerror(-ret));
	if (f)
		tree_release(jobs->tree, f);
	close(fd);
	return ret;
}

int jobs_repair_from(struct jobs *jobs, const char *path, struct child *c,
		     bool whole, uint64_t off, uint64_t len, char *err,
		     size_t errlen)
{
	struct tree_entry e;
	int ret;

	err[0] = '\0';
	if (child_kind(c) != CHILD_DATA || child_state(c) != CHILD_OK) {
		snprintf(err, errlen,
			 "child '%s' is not in step (%s): repair copies "
			 "only from a voting child",
			 child_name(c), child_state_name(child_state(c)));
		return -EINVAL;
	}
	ret = lookup_file(jobs, path, &e, err, errlen);
	if (ret)
		return ret;
	ret = repair_open(jobs, path, c, &e, whole, off, len, err, errlen);
	tree_forget(jobs->tree, e.ino, 1);
	return ret;
}
