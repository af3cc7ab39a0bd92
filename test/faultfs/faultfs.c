/*
 * faultfs: a pass-through FUSE file system that fails, stalls or corrupts
 * chosen operations on command. The test suite mounts it as one of
 * quorumfs's children, so quorumfs itself needs no test hooks.
 *
 *   faultfs -f [-o control=RULES_FILE] [-o FUSE-OPTS] BACKING_DIR MOUNTPOINT
 *   faultfs --check-rules RULES_FILE
 *
 * Every operation is done on the same path under BACKING_DIR, through a
 * handle of that directory opened before mounting (never through the
 * mount, so there is no recursion). Before it runs, the operation consults
 * the rules in RULES_FILE (faults.h): a matching rule can stall it (for a
 * time, or until the rule is removed), fail it with an errno, or, for a
 * read, invert bytes of the data returned while the backing file stays
 * as it was; or cut the power, after which every operation fails with
 * EIO. The file is re-read whenever it changes; an empty or missing file
 * means pure pass-through. README.md has the rule syntax.
 *
 * With -o powercut every change not yet durable (by fsync, fdatasync or
 * fsyncdir) can be undone, through the journal of powercut.h, and the cut
 * undoes it first: BACKING_DIR is left as a disk would be after a power
 * cut. Changes to files and names go through the journal then; the rest
 * is as above.
 * --check-rules parses a rules file, prints the first error and exits 1,
 * or exits 0: the test helper validates every rule set with it before
 * putting it in force.
 *
 * Kernel caching is off (attribute, entry and negative timeouts 0, direct
 * I/O for every file) so that a rule applies to the very next operation,
 * a flipped read never lingers in the page cache, and changes made to
 * BACKING_DIR behind the mount's back show at once. Buffers handed to the
 * backing file system are 4 KiB aligned, so files opened with O_DIRECT
 * work on backing file systems that demand alignment; an unaligned
 * O_DIRECT request gets the backing file system's own EINVAL.
 *
 * Found with libfuse 3.14 (the high-level API):
 *  - its fuse_file_info has no field for FOPEN_PARALLEL_DIRECT_WRITES, so
 *    the kernel serializes writes to one file: a stalled write holds up
 *    later writes to the same file (as a hung disk would), not others;
 *  - the multi-threaded loop starts at most 10 workers unless told
 *    otherwise, and stalled operations occupy theirs; faultfs asks for
 *    max_threads=64 (a later -o max_threads= overrides);
 *  - with nullpath_ok set it computes no path at all for operations on
 *    open files (read, write, fsync...), so rules could not match them:
 *    it stays off. hard_remove is on: an open file that is unlinked keeps
 *    working through its handle (no .fuse_hidden files appear in the
 *    backing directory); its operations then carry a NULL path, and only
 *    rules without path= (or with path=*) match them. But fstat() of such
 *    a file fails with ESTALE: the kernel sends no handle with a stat
 *    and libfuse has no path left to give;
 *  - the 3.14.0 loop warns "Ignoring invalid max threads value
 *    4294967295" for its own default of max_idle_threads; faultfs passes
 *    max_idle_threads explicitly, which silences it.
 */
#define FUSE_USE_VERSION 314
#define _GNU_SOURCE

#include <fuse.h>
#include <fuse_lowlevel.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "faults.h"
#include "powercut.h"

/* Alignment of every data buffer: the largest logical block size in use. */
#define BUF_ALIGN 4096
#define DEFAULT_THREADS "-omax_threads=64,max_idle_threads=64"

struct faultfs {
	int backing_fd; /* O_PATH handle of BACKING_DIR */
	char *backing;	/* its absolute path, for the xattr calls */
	struct fault_control *control;
	struct powercut *pc; /* -o powercut: the undo journal, else NULL */
	atomic_bool dead;    /* the power was cut: every operation fails */
};

static struct faultfs *state(void)
{
	return fuse_get_context()->private_data;
}

static int errno_of(int r)
{
	return r < 0 ? -errno : 0;
}

/* The backing path relative to backing_fd: "/a/b" -> "a/b", "/" -> ".". */
static const char *rel(const char *path)
{
	return path[1] ? path + 1 : ".";
}

/* A stall ends when the caller was interrupted or the mount goes away. */
static bool abandoned(void)
{
	struct fuse *f = fuse_get_context()->fuse;

	return fuse_interrupted() || fuse_session_exited(fuse_get_session(f));
}

/* Without -o powercut every change was durable at once: nothing to undo,
 * the disk just stops. */
static void power_cut(struct faultfs *ffs)
{
	if (ffs->pc)
		powercut_cut(ffs->pc);
	if (!atomic_exchange(&ffs->dead, true) && !ffs->pc)
		fprintf(stderr, "faultfs: power cut: without -o powercut "
				"there is nothing to undo\n");
}

/* Every operation asks first: a dead disk, the graveyard, the rules. */
static int consult(const struct fault_request *req)
{
	struct faultfs *ffs = state();
	bool cut;
	int ret;

	if (atomic_load(&ffs->dead))
		return -EIO;
	if (ffs->pc &&
	    (powercut_hides(req->path) || powercut_hides(req->path2)))
		return -ENOENT;
	ret = fault_control_before(ffs->control, req, abandoned, &cut);
	if (cut) {
		power_cut(ffs);
		return -EIO;
	}
	return ret;
}

static int check(enum fault_op op, const char *path, const char *path2)
{
	struct fault_request req = {.op = op, .path = path, .path2 = path2};

	return consult(&req);
}

static int check_range(enum fault_op op, const char *path, off_t off,
		       size_t len)
{
	struct fault_request req = {
		.op = op, .path = path, .ranged = true, .off = off, .len = len};

	return consult(&req);
}

static int full_path(const char *path, char **out)
{
	return asprintf(out, "%s%s", state()->backing, path) < 0 ? -ENOMEM : 0;
}

/* ---- attributes and names ---- */

static int ff_getattr(const char *path, struct stat *st,
		      struct fuse_file_info *fi)
{
	int ret = check(FAULT_GETATTR, path, NULL);

	if (ret)
		return ret;
	if (fi)
		return errno_of(fstat((int)fi->fh, st));
	return errno_of(fstatat(state()->backing_fd, rel(path), st,
				AT_SYMLINK_NOFOLLOW));
}

static int ff_readlink(const char *path, char *buf, size_t size)
{
	int ret = check(FAULT_READLINK, path, NULL);
	ssize_t n;

	if (ret)
		return ret;
	n = readlinkat(state()->backing_fd, rel(path), buf, size - 1);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	return 0;
}

/* Changes of names go through the journal in power-cut mode. */

static int ff_mknod(const char *path, mode_t mode, dev_t rdev)
{
	int ret = check(FAULT_MKNOD, path, NULL);
	struct faultfs *ffs = state();

	if (ret)
		return ret;
	if (ffs->pc)
		return powercut_mknod(ffs->pc, path, mode, rdev);
	return errno_of(mknodat(ffs->backing_fd, rel(path), mode, rdev));
}

static int ff_mkdir(const char *path, mode_t mode)
{
	int ret = check(FAULT_MKDIR, path, NULL);
	struct faultfs *ffs = state();

	if (ret)
		return ret;
	if (ffs->pc)
		return powercut_mkdir(ffs->pc, path, mode);
	return errno_of(mkdirat(ffs->backing_fd, rel(path), mode));
}

static int ff_unlink(const char *path)
{
	int ret = check(FAULT_UNLINK, path, NULL);
	struct faultfs *ffs = state();

	if (ret)
		return ret;
	if (ffs->pc)
		return powercut_unlink(ffs->pc, path);
	return errno_of(unlinkat(ffs->backing_fd, rel(path), 0));
}

static int ff_rmdir(const char *path)
{
	int ret = check(FAULT_RMDIR, path, NULL);
	struct faultfs *ffs = state();

	if (ret)
		return ret;
	if (ffs->pc)
		return powercut_rmdir(ffs->pc, path);
	return errno_of(unlinkat(ffs->backing_fd, rel(path), AT_REMOVEDIR));
}

static int ff_symlink(const char *target, const char *path)
{
	int ret = check(FAULT_SYMLINK, path, NULL);
	struct faultfs *ffs = state();

	if (ret)
		return ret;
	if (ffs->pc)
		return powercut_symlink(ffs->pc, target, path);
	return errno_of(symlinkat(target, ffs->backing_fd, rel(path)));
}

static int ff_rename(const char *from, const char *to, unsigned int flags)
{
	int ret = check(FAULT_RENAME, from, to);
	struct faultfs *ffs = state();
	int dfd = ffs->backing_fd;

	if (ret)
		return ret;
	if (ffs->pc)
		return powercut_rename(ffs->pc, from, to, flags);
	return errno_of(renameat2(dfd, rel(from), dfd, rel(to), flags));
}

static int ff_link(const char *from, const char *to)
{
	int ret = check(FAULT_LINK, from, to);
	struct faultfs *ffs = state();
	int dfd = ffs->backing_fd;

	if (ret)
		return ret;
	if (ffs->pc)
		return powercut_link(ffs->pc, from, to);
	return errno_of(linkat(dfd, rel(from), dfd, rel(to), 0));
}

static int ff_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	int ret = check(FAULT_CHMOD, path, NULL);

	if (ret)
		return ret;
	if (fi)
		return errno_of(fchmod((int)fi->fh, mode));
	return errno_of(fchmodat(state()->backing_fd, rel(path), mode, 0));
}

static int ff_chown(const char *path, uid_t uid, gid_t gid,
		    struct fuse_file_info *fi)
{
	int ret = check(FAULT_CHOWN, path, NULL);

	if (ret)
		return ret;
	if (fi)
		return errno_of(fchown((int)fi->fh, uid, gid));
	return errno_of(fchownat(state()->backing_fd, rel(path), uid, gid,
				 AT_SYMLINK_NOFOLLOW));
}

static int truncate_fd(int fd, off_t size)
{
	struct powercut *pc = state()->pc;

	return pc ? powercut_truncate(pc, fd, size)
		  : errno_of(ftruncate(fd, size));
}

static int ff_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	int ret = check(FAULT_TRUNCATE, path, NULL);
	int fd;

	if (ret)
		return ret;
	if (fi)
		return truncate_fd((int)fi->fh, size);
	fd = openat(state()->backing_fd, rel(path),
		    O_WRONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ret = truncate_fd(fd, size);
	close(fd);
	return ret;
}

static int ff_utimens(const char *path, const struct timespec tv[2],
		      struct fuse_file_info *fi)
{
	int ret = check(FAULT_UTIMENS, path, NULL);

	if (ret)
		return ret;
	if (fi)
		return errno_of(futimens((int)fi->fh, tv));
	return errno_of(utimensat(state()->backing_fd, rel(path), tv,
				  AT_SYMLINK_NOFOLLOW));
}

static int ff_statfs(const char *path, struct statvfs *st)
{
	int ret = check(FAULT_STATFS, path, NULL);

	if (ret)
		return ret;
	return errno_of(fstatvfs(state()->backing_fd, st));
}

/* ---- files ---- */

/* The kernel asks for O_TRUNC with the open (atomic_o_trunc); in
 * power-cut mode the journal does the truncation, to copy first. */
static int ff_open(const char *path, struct fuse_file_info *fi)
{
	int ret = check(FAULT_OPEN, path, NULL);
	struct faultfs *ffs = state();
	bool trunc = ffs->pc && (fi->flags & O_TRUNC);
	int fd;

	if (ret)
		return ret;
	fd = openat(ffs->backing_fd, rel(path),
		    (trunc ? fi->flags & ~O_TRUNC : fi->flags) | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (trunc && (ret = powercut_open_trunc(ffs->pc, fd))) {
		close(fd);
		return ret;
	}
	fi->fh = (uint64_t)fd;
	return 0;
}

static int ff_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	int ret = check(FAULT_CREATE, path, NULL);
	struct faultfs *ffs = state();
	int fd;

	if (ret)
		return ret;
	if (ffs->pc)
		fd = powercut_create(ffs->pc, path, fi->flags, mode);
	else
		fd = openat(ffs->backing_fd, rel(path),
			    fi->flags | O_CREAT | O_CLOEXEC, mode);
	if (fd < 0)
		return ffs->pc ? fd : -errno;
	fi->fh = (uint64_t)fd;
	return 0;
}

/* Reads land in an aligned buffer of our own, which libfuse frees after
 * the reply: its own buffer would not suit O_DIRECT, and a flip must
 * never reach the backing file. */
static int ff_read_buf(const char *path, struct fuse_bufvec **bufp, size_t size,
		       off_t off, struct fuse_file_info *fi)
{
	struct fault_request req = {.op = FAULT_READ,
				    .path = path,
				    .ranged = true,
				    .off = off,
				    .len = size};
	struct fuse_bufvec *bv;
	void *mem = NULL;
	ssize_t n;
	int ret;

	ret = consult(&req);
	if (ret)
		return ret;
	ret = -posix_memalign(&mem, BUF_ALIGN, size ? size : 1);
	if (ret)
		return ret;
	n = pread((int)fi->fh, mem, size, off);
	bv = n < 0 ? NULL : malloc(sizeof(*bv));
	if (!bv) {
		ret = n < 0 ? -errno : -ENOMEM;
		free(mem);
		return ret;
	}
	fault_control_after_read(state()->control, &req, mem, (size_t)n);
	*bv = (struct fuse_bufvec)FUSE_BUFVEC_INIT((size_t)n);
	bv->buf[0].mem = mem;
	*bufp = bv;
	return 0;
}

static ssize_t write_fd(struct fuse_file_info *fi, const void *buf, size_t n,
			off_t off)
{
	struct powercut *pc = state()->pc;
	ssize_t r;

	/* fi->flags are the write's own here (RWF_DSYNC shows as O_DSYNC). */
	if (pc)
		return powercut_write(pc, (int)fi->fh, buf, n, off, fi->flags);
	r = pwrite((int)fi->fh, buf, n, off);
	return r < 0 ? -errno : r;
}

static int ff_write_buf(const char *path, struct fuse_bufvec *src, off_t off,
			struct fuse_file_info *fi)
{
	size_t size = fuse_buf_size(src);
	struct fuse_bufvec dst = FUSE_BUFVEC_INIT(size);
	void *mem = NULL;
	ssize_t n;
	int ret;

	ret = check_range(FAULT_WRITE, path, off, size);
	if (ret)
		return ret;
	ret = -posix_memalign(&mem, BUF_ALIGN, size ? size : 1);
	if (ret)
		return ret;
	dst.buf[0].mem = mem;
	n = fuse_buf_copy(&dst, src, 0); /* a negative errno on failure */
	if (n >= 0)
		n = write_fd(fi, mem, (size_t)n, off);
	ret = (int)n;
	free(mem);
	return ret;
}

static int ff_flush(const char *path, struct fuse_file_info *fi)
{
	int ret;

	/* After a cut, close() succeeds: callers can let go of handles. */
	if (atomic_load(&state()->dead))
		return 0;
	ret = check(FAULT_FLUSH, path, NULL);
	if (ret)
		return ret;
	/* close() of a duplicate flushes the way close() of the caller's
	 * descriptor would (NFS writes back here), and keeps fi->fh open. */
	return errno_of(close(dup((int)fi->fh)));
}

static int ff_release(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	close((int)fi->fh);
	return 0;
}

static int ff_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	int ret = check(FAULT_FSYNC, path, NULL);
	struct powercut *pc = state()->pc;
	int fd = (int)fi->fh;

	if (ret)
		return ret;
	if (pc)
		return powercut_fsync(pc, fd, datasync);
	return errno_of(datasync ? fdatasync(fd) : fsync(fd));
}

static int ff_fallocate(const char *path, int mode, off_t off, off_t len,
			struct fuse_file_info *fi)
{
	int ret = check_range(FAULT_FALLOCATE, path, off, (size_t)len);
	struct powercut *pc = state()->pc;

	if (ret)
		return ret;
	if (pc)
		return powercut_fallocate(pc, (int)fi->fh, mode, off, len);
	return errno_of(fallocate((int)fi->fh, mode, off, len));
}

static off_t ff_lseek(const char *path, off_t off, int whence,
		      struct fuse_file_info *fi)
{
	int ret = check(FAULT_LSEEK, path, NULL);
	off_t pos;

	if (ret)
		return ret;
	pos = lseek((int)fi->fh, off, whence);
	return pos < 0 ? -errno : pos;
}

/* ---- extended attributes (no *at() calls for these before Linux 6.13) */

static int ff_setxattr(const char *path, const char *name, const char *value,
		       size_t size, int flags)
{
	int ret = check(FAULT_SETXATTR, path, NULL);
	char *full = NULL;

	if (!ret)
		ret = full_path(path, &full);
	if (!ret)
		ret = errno_of(lsetxattr(full, name, value, size, flags));
	free(full);
	return ret;
}

static int ff_getxattr(const char *path, const char *name, char *value,
		       size_t size)
{
	int ret = check(FAULT_GETXATTR, path, NULL);
	char *full = NULL;
	ssize_t n;

	if (!ret)
		ret = full_path(path, &full);
	if (ret)
		return ret;
	n = lgetxattr(full, name, value, size);
	ret = n < 0 ? -errno : (int)n;
	free(full);
	return ret;
}

static int ff_listxattr(const char *path, char *list, size_t size)
{
	int ret = check(FAULT_LISTXATTR, path, NULL);
	char *full = NULL;
	ssize_t n;

	if (!ret)
		ret = full_path(path, &full);
	if (ret)
		return ret;
	n = llistxattr(full, list, size);
	ret = n < 0 ? -errno : (int)n;
	free(full);
	return ret;
}

static int ff_removexattr(const char *path, const char *name)
{
	int ret = check(FAULT_REMOVEXATTR, path, NULL);
	char *full = NULL;

	if (!ret)
		ret = full_path(path, &full);
	if (!ret)
		ret = errno_of(lremovexattr(full, name));
	free(full);
	return ret;
}

/* ---- directories: fi->fh holds a DIR * ---- */

static int ff_opendir(const char *path, struct fuse_file_info *fi)
{
	int ret = check(FAULT_OPENDIR, path, NULL);
	DIR *dp;
	int fd;

	if (ret)
		return ret;
	fd = openat(state()->backing_fd, rel(path),
		    O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	dp = fdopendir(fd);
	if (!dp) {
		ret = -errno;
		close(fd);
		return ret;
	}
	fi->fh = (uintptr_t)dp;
	return 0;
}

/* Whole listings, offsets left to libfuse: it calls again with offset 0
 * only when the caller starts over (rewinddir). */
static int ff_readdir(const char *path, void *buf, fuse_fill_dir_t filler,
		      off_t off, struct fuse_file_info *fi,
		      enum fuse_readdir_flags flags)
{
	int ret = check(FAULT_READDIR, path, NULL);
	bool top = state()->pc && !path[1]; /* where the graveyard is */
	DIR *dp = (DIR *)(uintptr_t)fi->fh;
	struct dirent *d;

	(void)off;
	(void)flags;
	if (ret)
		return ret;
	rewinddir(dp);
	for (;;) {
		struct stat st = {0};

		errno = 0;
		d = readdir(dp);
		if (!d)
			return -errno;
		if (top && strcmp(d->d_name, POWERCUT_GRAVEYARD) == 0)
			continue;
		st.st_ino = d->d_ino;
		st.st_mode = (mode_t)DTTOIF(d->d_type);
		if (filler(buf, d->d_name, &st, 0, 0))
			return -ENOMEM;
	}
}

static int ff_releasedir(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	closedir((DIR *)(uintptr_t)fi->fh);
	return 0;
}

static int ff_fsyncdir(const char *path, int datasync,
		       struct fuse_file_info *fi)
{
	int ret = check(FAULT_FSYNCDIR, path, NULL);
	int fd = dirfd((DIR *)(uintptr_t)fi->fh);
	struct powercut *pc = state()->pc;

	if (ret)
		return ret;
	if (pc)
		return powercut_fsyncdir(pc, fd, datasync);
	return errno_of(datasync ? fdatasync(fd) : fsync(fd));
}

static void *ff_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	(void)conn;
	cfg->use_ino = 1;
	cfg->hard_remove = 1;
	/* Paths for operations on open files too: rules match on them.
	 * libfuse still hands NULL for a file unlinked while open. */
	cfg->nullpath_ok = 0;
	cfg->entry_timeout = 0;
	cfg->attr_timeout = 0;
	cfg->negative_timeout = 0;
	cfg->direct_io = 1;
	return fuse_get_context()->private_data;
}

static const struct fuse_operations ff_ops = {
	.init = ff_init,
	.getattr = ff_getattr,
	.readlink = ff_readlink,
	.mknod = ff_mknod,
	.mkdir = ff_mkdir,
	.unlink = ff_unlink,
	.rmdir = ff_rmdir,
	.symlink = ff_symlink,
	.rename = ff_rename,
	.link = ff_link,
	.chmod = ff_chmod,
	.chown = ff_chown,
	.truncate = ff_truncate,
	.utimens = ff_utimens,
	.statfs = ff_statfs,
	.open = ff_open,
	.create = ff_create,
	.read_buf = ff_read_buf,
	.write_buf = ff_write_buf,
	.flush = ff_flush,
	.release = ff_release,
	.fsync = ff_fsync,
	.fallocate = ff_fallocate,
	.lseek = ff_lseek,
	.setxattr = ff_setxattr,
	.getxattr = ff_getxattr,
	.listxattr = ff_listxattr,
	.removexattr = ff_removexattr,
	.opendir = ff_opendir,
	.readdir = ff_readdir,
	.releasedir = ff_releasedir,
	.fsyncdir = ff_fsyncdir,
};

/* ---- command line ---- */

struct options {
	char *control; /* fuse_opt_parse() allocates it */
	const char *backing;
	int powercut;
	int show_help;
};

/* clang-format off */
#define OPTION(t, p) {t, offsetof(struct options, p), 1}
/* clang-format on */
static const struct fuse_opt option_spec[] = {
	OPTION("control=%s", control),
	OPTION("powercut", powercut),
	OPTION("-h", show_help),
	OPTION("--help", show_help),
	FUSE_OPT_END,
};

/* The first non-option argument is BACKING_DIR; libfuse keeps the rest. */
static int take_backing(void *data, const char *arg, int key,
			struct fuse_args *outargs)
{
	struct options *o = data;

	(void)outargs;
	if (key == FUSE_OPT_KEY_NONOPT && !o->backing) {
		o->backing = arg;
		return 0;
	}
	return 1;
}

static void usage(const char *prog)
{
	printf("usage: %s [-f] [-o control=RULES_FILE] [-o powercut] "
	       "[-o FUSE-OPTIONS] BACKING_DIR MOUNTPOINT\n"
	       "       %s --check-rules RULES_FILE\n\n"
	       "faultfs options:\n"
	       "    -o control=PATH   rules file, re-read whenever it "
	       "changes\n"
	       "                      (see test/faultfs/README.md)\n"
	       "    -o powercut       keep what is not yet durable undoable, "
	       "so that\n"
	       "                      a powercut rule loses it\n\n",
	       prog, prog);
}

/* --check-rules: 0 when the file parses, else 1 with the reason. */
static int check_rules_file(const char *path)
{
	struct fault_rules *rules = NULL;
	char err[256], *text = NULL;
	size_t len = 0;
	FILE *f = fopen(path, "r");
	int ret;

	if (!f) {
		fprintf(stderr, "faultfs: %s: %s\n", path, strerror(errno));
		return 1;
	}
	ret = getdelim(&text, &len, '\0', f) < 0 && ferror(f) ? -EIO : 0;
	fclose(f);
	if (!ret) {
		/* getdelim stops at a NUL byte; the parser refuses those */
		len = text ? strlen(text) : 0;
		ret = fault_rules_parse(text ? text : "", len, &rules, err,
					sizeof(err));
	} else {
		snprintf(err, sizeof(err), "cannot read the file");
	}
	if (ret)
		fprintf(stderr, "faultfs: %s: %s\n", path, err);
	fault_rules_free(rules);
	free(text);
	return ret ? 1 : 0;
}

/* An absolute spelling of path, which need not exist (the rules file). */
static char *absolute(const char *path)
{
	char cwd[PATH_MAX], *out;

	if (path[0] == '/')
		return strdup(path);
	if (!getcwd(cwd, sizeof(cwd)))
		return NULL;
	return asprintf(&out, "%s/%s", cwd, path) < 0 ? NULL : out;
}

/* The backing directory, the rules and the journal; -1 when one fails
 * (said on stderr). control: the rules file's absolute path, or NULL. */
static int open_state(struct faultfs *ffs, const struct options *o,
		      const char *control)
{
	int ret;

	ffs->backing = realpath(o->backing, NULL);
	if (ffs->backing)
		ffs->backing_fd =
			open(ffs->backing, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (ffs->backing_fd < 0) {
		fprintf(stderr, "faultfs: %s: %s\n", o->backing,
			strerror(errno));
		return -1;
	}
	ffs->control = fault_control_new(control);
	if (!ffs->control || (o->control && !control)) {
		fprintf(stderr, "faultfs: out of memory\n");
		return -1;
	}
	ret = o->powercut ? powercut_new(ffs->backing_fd, &ffs->pc) : 0;
	if (ret) {
		fprintf(stderr, "faultfs: %s/%s: %s\n", ffs->backing,
			POWERCUT_GRAVEYARD, strerror(-ret));
		return -1;
	}
	return 0;
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct faultfs ffs = {.backing_fd = -1};
	struct options o = {0};
	char *control = NULL;
	int ret = 1;

	if (argc == 3 && strcmp(argv[1], "--check-rules") == 0)
		return check_rules_file(argv[2]);
	if (fuse_opt_parse(&args, &o, option_spec, take_backing) ||
	    fuse_opt_insert_arg(&args, 1, DEFAULT_THREADS))
		goto out;
	if (o.show_help) {
		usage(argv[0]);
		fuse_opt_add_arg(&args, "--help");
		args.argv[0][0] = '\0';
		ret = fuse_main(args.argc, args.argv, &ff_ops, NULL);
		goto out;
	}
	if (!o.backing) {
		usage(argv[0]);
		fprintf(stderr, "faultfs: no BACKING_DIR was given\n");
		goto out;
	}
	control = o.control ? absolute(o.control) : NULL;
	if (open_state(&ffs, &o, control))
		goto out;
	/* Modes arrive with the caller's umask applied by the kernel; ours
	 * must not mask them a second time. */
	umask(0);
	ret = fuse_main(args.argc, args.argv, &ff_ops, &ffs);
out:
	/* After an unmount: a clean shutdown, every change is kept. */
	powercut_free(ffs.pc);
	fault_control_free(ffs.control);
	free(control);
	free(o.control);
	if (ffs.backing_fd >= 0)
		close(ffs.backing_fd);
	free(ffs.backing);
	fuse_opt_free_args(&args);
	return ret;
}
