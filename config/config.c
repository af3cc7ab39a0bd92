/*
 * Command-line validation. Each check_* step either passes or writes the
 * one sentence that explains the failure; config_from_args() runs them in
 * the order an operator would fix things: paths first, then numbers, then
 * combinations.
 */
#define _GNU_SOURCE
#include "config/config.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

/* Parse a whole decimal number in [min, max]; false on anything else. */
static bool parse_int(const char *s, long min, long max, int *out)
{
	char *end;
	long v;

	if (!s || !*s)
		return false;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || v < min || v > max)
		return false;
	*out = (int)v;
	return true;
}

static bool same_inode(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/*
 * True if the directory `inner` (an absolute, resolved path) is `outer`
 * or lies beneath it, judged by device and inode of each ancestor so that
 * bind mounts and symlinked spellings are caught too.
 */
static bool path_within(const char *inner, const struct stat *outer)
{
	char buf[PATH_MAX];
	struct stat st;

	snprintf(buf, sizeof(buf), "%s", inner);
	for (;;) {
		char *slash;

		if (stat(buf, &st) == 0 && same_inode(&st, outer))
			return true;
		slash = strrchr(buf, '/');
		if (!slash || buf[1] == '\0')
			return false;
		if (slash == buf)
			slash[1] = '\0';
		else
			*slash = '\0';
	}
}

static int resolve_dir(const char *what, const char *path, char **out,
		       struct stat *st, char *err, size_t errlen)
{
	char *real = realpath(path, NULL);

	if (!real)
		return fail(err, errlen, "%s '%s' cannot be used: %s", what,
			    path, strerror(errno));
	if (stat(real, st) != 0 || !S_ISDIR(st->st_mode)) {
		free(real);
		return fail(err, errlen, "%s '%s' is not a directory", what,
			    path);
	}
	*out = real;
	return 0;
}

static int check_paths(const struct config_args *a, struct config *cfg,
		       char *err, size_t errlen)
{
	struct stat st[CHILDREN_MAX], mnt;
	int n = a->npaths - 1;
	int ret;

	if (a->too_many_paths)
		return fail(err, errlen, "at most %d children are supported",
			    CHILDREN_MAX);
	if (a->npaths < 2)
		return fail(err, errlen,
			    a->npaths ? "no child directories were given"
				      : "no mountpoint was given");
	ret = resolve_dir("mountpoint", a->path[n], &cfg->mountpoint, &mnt, err,
			  errlen);
	if (ret)
		return ret;
	for (int i = 0; i < n; i++) {
		char *real;

		ret = resolve_dir("child", a->path[i], &real, &st[i], err,
				  errlen);
		if (ret)
			return ret;
		cfg->children.path[i] = real;
		cfg->children.n++;
		for (int j = 0; j < i; j++)
			if (same_inode(&st[i], &st[j]))
				return fail(err, errlen,
					    "child '%s' is the same directory "
					    "as child '%s'",
					    a->path[i], a->path[j]);
		if (path_within(cfg->mountpoint, &st[i]))
			return fail(err, errlen,
				    "child '%s' contains the mountpoint '%s'",
				    a->path[i], a->path[n]);
		if (path_within(real, &mnt))
			return fail(err, errlen,
				    "child '%s' lies inside the mountpoint "
				    "'%s'",
				    a->path[i], a->path[n]);
	}
	return 0;
}

static int check_numbers(const struct config_args *a, struct config *cfg,
			 char *err, size_t errlen)
{
	struct children_config *cc = &cfg->children;

	cc->threshold = cc->n / 2 + 1;
	if (a->threshold && !parse_int(a->threshold, 1, cc->n, &cc->threshold))
		return fail(err, errlen,
			    "threshold=%s is invalid: it must be a whole "
			    "number from 1 to %d (the number of children)",
			    a->threshold, cc->n);
	cfg->threads = CONFIG_DEFAULT_THREADS;
	if (a->threads &&
	    !parse_int(a->threads, 1, CONFIG_MAX_THREADS, &cfg->threads))
		return fail(err, errlen,
			    "threads=%s is invalid: it must be a whole number "
			    "from 1 to %d",
			    a->threads, CONFIG_MAX_THREADS);
	return 0;
}

static int check_modes(const struct config_args *a, struct config *cfg,
		       char *err, size_t errlen)
{
	struct children_config *cc = &cfg->children;

	cc->read_pattern = READ_PATTERN_QUORUM;
	if (a->read_pattern && strcmp(a->read_pattern, "fifo") == 0)
		cc->read_pattern = READ_PATTERN_FIFO;
	else if (a->read_pattern && strcmp(a->read_pattern, "quorum") != 0)
		return fail(err, errlen,
			    "read-pattern=%s is invalid: it must be quorum or "
			    "fifo",
			    a->read_pattern);
	cc->rewrite_corrupted = a->rewrite_corrupted;
	cc->blkverify = a->blkverify;
	if (!a->blkverify)
		return 0;
	if (cc->n != 2 || cc->threshold != 2)
		return fail(err, errlen,
			    "blkverify can only be set with exactly two "
			    "children and threshold=2");
	if (a->rewrite_corrupted)
		return fail(err, errlen,
			    "blkverify cannot be combined with "
			    "rewrite-corrupted");
	if (cc->read_pattern == READ_PATTERN_FIFO)
		return fail(err, errlen,
			    "blkverify cannot be combined with "
			    "read-pattern=fifo");
	return 0;
}

static int check_log(const struct config_args *a, struct config *cfg, char *err,
		     size_t errlen)
{
	char *dir, *slash, *real;

	if (!a->log)
		return 0;
	if (!*a->log)
		return fail(err, errlen, "log= needs a file path");
	/* The file may not exist yet; its directory must. */
	dir = strdup(a->log);
	if (!dir)
		return -ENOMEM;
	slash = strrchr(dir, '/');
	if (slash)
		slash[slash == dir ? 1 : 0] = '\0';
	real = realpath(slash ? dir : ".", NULL);
	free(dir);
	if (!real)
		return fail(err, errlen,
			    "log=%s cannot be used: its directory: %s", a->log,
			    strerror(errno));
	if (asprintf(&cfg->log_path, "%s/%s", real,
		     slash ? strrchr(a->log, '/') + 1 : a->log) < 0)
		cfg->log_path = NULL;
	free(real);
	return cfg->log_path ? 0 : -ENOMEM;
}

int config_from_args(const struct config_args *args, struct config *cfg,
		     char *err, size_t errlen)
{
	int ret;

	memset(cfg, 0, sizeof(*cfg));
	ret = check_paths(args, cfg, err, errlen);
	if (!ret)
		ret = check_numbers(args, cfg, err, errlen);
	if (!ret)
		ret = check_modes(args, cfg, err, errlen);
	if (!ret)
		ret = check_log(args, cfg, err, errlen);
	if (ret == -ENOMEM)
		snprintf(err, errlen, "out of memory");
	if (ret)
		config_release(cfg);
	return ret;
}

void config_release(struct config *cfg)
{
	for (int i = 0; i < cfg->children.n; i++)
		free((char *)cfg->children.path[i]);
	free(cfg->log_path);
	free(cfg->mountpoint);
	memset(cfg, 0, sizeof(*cfg));
}
