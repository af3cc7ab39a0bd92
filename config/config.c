/*
 * Command-line validation. Each check_* step either passes or writes the
 * one sentence that explains the failure; config_from_args() runs them in
 * the order an operator would fix things: paths first, then numbers, then
 * combinations.
 */
#define _GNU_SOURCE
#include "config/config.h"
#include "config/config_i.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ctype.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "config/sinks_i.h"
/* Child i of cfg from path, once resolved: distinct from the others and
 * apart from the mountpoint. */
static int add_child(struct config *cfg, const char *what, const char *path,
		     const struct config_args *a, struct stat *st,
		     const struct stat *mnt, char *err, size_t errlen)
{
	const char *mnt_path = a->path[a->npaths - 1];
	int i = cfg->children.n, ret;
	char *real;

	ret = resolve_dir(what, path, &real, &st[i], err, errlen);
	if (ret)
		return ret;
	cfg->children.path[i] = real;
	cfg->children.n++;
	for (int j = 0; j < i; j++)
		if (same_inode(&st[i], &st[j]))
			return config_fail(err, errlen,
					   "child '%s' is the same directory "
					   "as child '%s'",
					   path, a->path[j]);
	if (path_within(cfg->mountpoint, &st[i]))
		return config_fail(err, errlen,
				   "child '%s' contains the mountpoint '%s'",
				   path, mnt_path);
	if (path_within(real, mnt))
		return config_fail(err, errlen,
				   "child '%s' lies inside the mountpoint "
				   "'%s'",
				   path, mnt_path);
	return 0;
}

/* -o witness=PATH: one more child, of kind witness, after the others. */
static int check_witness(const struct config_args *a, struct config *cfg,
			 struct stat *st, const struct stat *mnt, char *err,
			 size_t errlen)
{
	if (a->witness_twice)
		return config_fail(err, errlen,
				   "witness= is given twice: a set takes one "
				   "witness on the command line (add more "
				   "with 'add PATH mode=witness')");
	if (!a->witness)
		return 0;
	if (cfg->children.n == CHILDREN_MAX)
		return config_fail(err, errlen,
				   "at most %d children are supported",
				   CHILDREN_MAX);
	cfg->children.kind[cfg->children.n] = CHILD_WITNESS;
	return add_child(cfg, "witness", a->witness, a, st, mnt, err, errlen);
}

static int check_paths(const struct config_args *a, struct config *cfg,
		       char *err, size_t errlen)
{
	struct stat st[CHILDREN_MAX], mnt;
	int n = a->npaths - 1;
	int ret;

	if (a->too_many_paths)
		return config_fail(err, errlen,
				   "at most %d children are supported",
				   CHILDREN_MAX);
	if (a->witness && a->npaths == 1)
		return config_fail(err, errlen,
				   "the witness '%s' cannot be the only child: "
				   "a witness holds digests, not data; give at "
				   "least one data child",
				   a->witness);
	if (a->npaths < 2)
		return config_fail(err, errlen,
				   a->npaths ? "no child directories were given"
					     : "no mountpoint was given");
	ret = resolve_dir("mountpoint", a->path[n], &cfg->mountpoint, &mnt, err,
			  errlen);
	for (int i = 0; i < n && !ret; i++)
		ret = add_child(cfg, "child", a->path[i], a, st, &mnt, err,
				errlen);
	if (!ret)
		ret = check_witness(a, cfg, st, &mnt, err, errlen);
	return ret;
}

static int parse_uring(const char *word, enum config_uring *out)
{
	static const char *const names[] = {
		[CONFIG_URING_OFF] = "off",
		[CONFIG_URING_AUTO] = "auto",
		[CONFIG_URING_ON] = "on",
	};

	for (int i = 0; i < 3; i++)
		if (strcmp(word, names[i]) == 0) {
			*out = (enum config_uring)i;
			return 0;
		}
	return -EINVAL;
}
static int check_numbers(const struct config_args *a, struct config *cfg,
			 char *err, size_t errlen)
{
	struct children_config *cc = &cfg->children;

	/* The bound is the set's membership, known once the children's
	 * records are read (config_resolve_rules). */
	cc->threshold = 0;
	cfg->threshold_given = a->threshold != NULL;
	if (a->threshold &&
	    !parse_int(a->threshold, 1, CHILDREN_MAX, &cc->threshold))
		return config_fail(
			err, errlen,
			"threshold=%s is invalid: it must be a whole "
			"number from 1 to %d (the number of children)",
			a->threshold, cc->n);
	cfg->threads = CONFIG_DEFAULT_THREADS;
	if (a->threads &&
	    !parse_int(a->threads, 1, CONFIG_MAX_THREADS, &cfg->threads))
		return config_fail(
			err, errlen,
			"threads=%s is invalid: it must be a whole number "
			"from 1 to %d",
			a->threads, CONFIG_MAX_THREADS);
	cfg->io_timeout_ms = CONFIG_DEFAULT_IO_TIMEOUT * 1000;
	if (a->io_timeout && !parse_int(a->io_timeout, 0, CONFIG_MAX_IO_TIMEOUT,
					&cfg->io_timeout_ms))
		return config_fail(
			err, errlen,
			"io-timeout=%s is invalid: it must be a whole "
			"number of seconds from 0 (no timeout) to %d",
			a->io_timeout, CONFIG_MAX_IO_TIMEOUT);
	if (a->io_timeout)
		cfg->io_timeout_ms *= 1000;
	cfg->scrub_rate = CONFIG_DEFAULT_SCRUB_RATE;
	if (a->scrub_rate && !parse_int(a->scrub_rate, 0, CONFIG_MAX_SCRUB_RATE,
					&cfg->scrub_rate))
		return config_fail(
			err, errlen,
			"scrub-rate=%s is invalid: it must be a whole "
			"number of MiB/s from 0 (unlimited) to %d",
			a->scrub_rate, CONFIG_MAX_SCRUB_RATE);
	return 0;
}

static int check_modes(const struct config_args *a, struct config *cfg,
		       char *err, size_t errlen)
{
	struct children_config *cc = &cfg->children;

	cc->read_pattern = READ_PATTERN_QUORUM;
	cfg->read_pattern_given = a->read_pattern != NULL;
	cfg->rewrite_given = a->rewrite_corrupted;
	if (a->read_pattern && strcmp(a->read_pattern, "fifo") == 0)
		cc->read_pattern = READ_PATTERN_FIFO;
	else if (a->read_pattern && strcmp(a->read_pattern, "quorum") != 0)
		return config_fail(
			err, errlen,
			"read-pattern=%s is invalid: it must be quorum or "
			"fifo",
			a->read_pattern);
	if (a->uring && parse_uring(a->uring, &cfg->uring))
		return config_fail(err, errlen,
				   "uring=%s is invalid: it must be auto, on "
				   "or off",
				   a->uring);
	cc->rewrite_corrupted = a->rewrite_corrupted;
	cc->blkverify = a->blkverify;
	if (!a->blkverify)
		return 0;
	if (cc->n != 2 || (cfg->threshold_given && cc->threshold != 2))
		return config_fail(err, errlen,
				   "blkverify can only be set with exactly two "
				   "children and threshold=2");
	if (a->rewrite_corrupted)
		return config_fail(err, errlen,
				   "blkverify cannot be combined with "
				   "rewrite-corrupted");
	if (cc->read_pattern == READ_PATTERN_FIFO)
		return config_fail(err, errlen,
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
		return config_fail(err, errlen, "log= needs a file path");
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
		return config_fail(err, errlen,
				   "log=%s cannot be used: its directory: %s",
				   a->log, strerror(errno));
	if (asprintf(&cfg->log_path, "%s/%s", real,
		     slash ? strrchr(a->log, '/') + 1 : a->log) < 0)
		cfg->log_path = NULL;
	free(real);
	return cfg->log_path ? 0 : -ENOMEM;
}

/* Where an unprivileged user's sockets go. */
static int socket_dir(char *buf, size_t size)
{
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	int n;

	if (geteuid() == 0)
		n = snprintf(buf, size, "/run/quorumfs");
	else if (xdg && xdg[0] == '/')
		n = snprintf(buf, size, "%s/quorumfs", xdg);
	else
		n = snprintf(buf, size, "/tmp/quorumfs-%u",
			     (unsigned)geteuid());
	return n < 0 || (size_t)n >= size ? -ENAMETOOLONG : n;
}

/* The mountpoint as one file name (see config_default_socket). */
static void escape_name(const char *mountpoint, char *out, size_t size)
{
	size_t n = 0;

	for (const char *p = mountpoint + 1; *p && n + 4 < size; p++) {
		unsigned char c = *p;

		if (c == '/')
			out[n++] = '-';
		else if (isalnum(c) || c == '.' || c == '_')
			out[n++] = c;
		else
			n += snprintf(out + n, size - n, "%%%02X", c);
	}
	out[n] = '\0';
}

int config_default_socket(const char *mountpoint, char *buf, size_t size)
{
	struct sockaddr_un sun;
	char dir[sizeof(sun.sun_path)], name[4 * PATH_MAX];
	uint64_t h = 14695981039346656037ULL; /* FNV-1a */
	int n;

	if (socket_dir(dir, sizeof(dir)) < 0)
		return -ENAMETOOLONG;
	escape_name(mountpoint, name, sizeof(name));
	n = snprintf(buf, size, "%s/%s.sock", dir, *name ? name : "root");
	if (n >= 0 && (size_t)n < size && (size_t)n < sizeof(sun.sun_path))
		return 0;
	for (const char *p = mountpoint; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ULL;
	n = snprintf(buf, size, "%s/mnt-%016llx.sock", dir,
		     (unsigned long long)h);
	return n < 0 || (size_t)n >= size || (size_t)n >= sizeof(sun.sun_path)
		       ? -ENAMETOOLONG
		       : 0;
}

static int check_sync_from(const struct config_args *a, struct config *cfg,
			   char *err, size_t errlen)
{
	char *real;

	cfg->sync_from = -1;
	if (!a->sync_from)
		return 0;
	real = realpath(a->sync_from, NULL);
	for (int i = 0; real && i < cfg->children.n; i++)
		if (strcmp(real, cfg->children.path[i]) == 0)
			cfg->sync_from = i;
	free(real);
	if (cfg->sync_from >= 0 &&
	    cfg->children.kind[cfg->sync_from] == CHILD_WITNESS)
		return config_fail(
			err, errlen,
			"sync-from=%s names the witness, which holds "
			"digests, not data",
			a->sync_from);
	if (cfg->sync_from >= 0)
		return 0;
	return config_fail(
		err, errlen,
		"sync-from=%s is not one of the children on the command "
		"line",
		a->sync_from);
}

static int check_socket(const struct config_args *a, struct config *cfg,
			char *err, size_t errlen)
{
	struct sockaddr_un sun;
	char path[sizeof(sun.sun_path)];

	if (a->control_socket && strcmp(a->control_socket, "none") == 0)
		return 0;
	if (!a->control_socket) {
		if (config_default_socket(cfg->mountpoint, path, sizeof(path)))
			return config_fail(
				err, errlen,
				"no default control socket fits a socket "
				"address; give control-socket=PATH or none");
	} else if (a->control_socket[0] != '/' ||
		   strlen(a->control_socket) >= sizeof(sun.sun_path)) {
		return config_fail(
			err, errlen,
			"control-socket=%s must be an absolute path of at "
			"most %zu bytes, or none",
			a->control_socket, sizeof(sun.sun_path) - 1);
	} else {
		snprintf(path, sizeof(path), "%s", a->control_socket);
	}
	cfg->control_socket = strdup(path);
	return cfg->control_socket ? 0 : -ENOMEM;
}

int config_resolve_rules(const struct config *cfg, struct children_config *cc,
			 const struct children_config *recorded, char *err,
			 size_t errlen)
{
	bool from_record = recorded && recorded->threshold > 0 &&
			   recorded->threshold <= cc->n;

	if (!cfg->threshold_given)
		cc->threshold =
			from_record ? recorded->threshold : cc->n / 2 + 1;
	else if (cc->threshold > cc->n)
		return config_fail(
			err, errlen,
			"threshold=%d is invalid: it must be a whole "
			"number from 1 to %d (the number of children)",
			cc->threshold, cc->n);
	if (!cfg->read_pattern_given && from_record)
		cc->read_pattern = recorded->read_pattern;
	if (!cfg->rewrite_given && from_record && !cc->blkverify)
		cc->rewrite_corrupted = recorded->rewrite_corrupted;
	return 0;
}

/* quarantine-limit=SIZE: 0 turns the quarantine off; otherwise an
 * entry (at most one repaired chunk) must fit. */
static int check_quarantine(const struct config_args *a, struct config *cfg,
			    char *err, size_t errlen)
{
	unsigned long long v = CONFIG_DEFAULT_QUARANTINE_LIMIT;

	if (a->quarantine_limit &&
	    (!config_parse_size(a->quarantine_limit, &v) ||
	     (v && v < CONFIG_MIN_QUARANTINE_LIMIT)))
		return config_fail(
			err, errlen,
			"quarantine-limit=%s is invalid: it must be 0 (off) "
			"or a size of at least 1M, such as 512M or 2G",
			a->quarantine_limit);
	cfg->quarantine_limit = v;
	return 0;
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
	if (!ret)
		ret = check_socket(args, cfg, err, errlen);
	if (!ret)
		ret = check_sync_from(args, cfg, err, errlen);
	if (!ret)
		ret = check_secondary(args, cfg, err, errlen);
	if (!ret)
		ret = config_check_sinks(args, cfg, err, errlen);
	if (!ret)
		ret = check_quarantine(args, cfg, err, errlen);
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
	free(cfg->control_socket);
	free(cfg->event_program);
	free(cfg->mountpoint);
	release_secondary(&cfg->secondary);
	memset(cfg, 0, sizeof(*cfg));
}

/* Lexically inside dir (or equal to it), for paths under the mount that
 * must not be resolved: that would ask this very daemon. */
static bool lexically_within(const char *path, const char *dir)
{
	size_t n = strlen(dir);

	return strncmp(path, dir, n) == 0 &&
	       (path[n] == '\0' || path[n] == '/');
}

static bool parent_within(const char *path, const struct stat *outer)
{
	char parent[PATH_MAX];
	char *slash;

	snprintf(parent, sizeof(parent), "%s", path);
	slash = strrchr(parent, '/');
	if (!slash)
		return false;
	slash[slash == parent ? 1 : 0] = '\0';
	return path_within(parent, outer);
}

int config_check_new_child(const char *path, const char *mountpoint,
			   const struct stat *mount_st, const int *roots,
			   int nroots, char **real, char *err, size_t errlen)
{
	struct stat st, other;
	char *resolved;

	snprintf(err, errlen, "%s", "");
	if (lexically_within(path, mountpoint)) {
		config_fail(err, errlen, "'%s' lies inside the mountpoint",
			    path);
		return -EINVAL;
	}
	resolved = realpath(path, NULL);
	if (!resolved || stat(resolved, &st)) {
		int e = errno;

		free(resolved);
		config_fail(err, errlen, "'%s' cannot be used: %s", path,
			    strerror(e));
		return -e;
	}
	if (!S_ISDIR(st.st_mode)) {
		config_fail(err, errlen, "'%s' is not a directory", path);
		free(resolved);
		return -ENOTDIR;
	}
	for (int i = 0; i < nroots; i++) {
		if (fstat(roots[i], &other) == 0 && same_inode(&st, &other)) {
			config_fail(err, errlen, "'%s' is already a child",
				    path);
			free(resolved);
			return -EEXIST;
		}
	}
	/* Never stat the live mountpoint itself: that asks this daemon. */
	if (lexically_within(resolved, mountpoint) ||
	    parent_within(mountpoint, &st) || same_inode(&st, mount_st)) {
		config_fail(err, errlen, "'%s' contains or is the mountpoint",
			    path);
		free(resolved);
		return -EINVAL;
	}
	*real = resolved;
	return 0;
}
