/*
 * Rules: parsing, matching, and the control that keeps the current set.
 *
 * Locking. c->lock (a rwlock) guards c->rules and c->stamp: operations
 * match under the read lock, a reload swaps both under the write lock.
 * c->reload_lock serializes reloads, so a changed file is parsed once and
 * not by every thread that noticed. Order: reload_lock, then lock. No
 * lock is held while an operation stalls or runs.
 *
 * Freshness. Every consultation stat()s the rules file and compares its
 * identity with the one last loaded. The file is read through one open
 * descriptor and stamped with that descriptor's fstat(), so the stamp
 * always describes the text that was parsed. A file that fails to parse is
 * stamped too (so it is not re-read on every operation) and the previous
 * rules stay in force; the reason goes to stderr.
 */
#define _GNU_SOURCE
#include "faults.h"

#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Largest rules file and rule line accepted; tests write a few lines. */
#define RULES_FILE_MAX (1 << 20)
#define RULE_LINE_MAX 4096

enum fault_action {
	ACTION_ERROR,
	ACTION_HANG,
	ACTION_FLIP,
	ACTION_POWERCUT,
};

struct fault_rule {
	enum fault_action action;
	int error;    /* ACTION_ERROR: a positive errno */
	long hang_ms; /* ACTION_HANG: < 0 means until the rule is removed */
	uint64_t ops; /* bit (1 << enum fault_op) per operation matched */
	char *glob;   /* fnmatch() pattern; NULL matches every path */
	bool ranged;  /* only operations overlapping [start, end) match */
	off_t start;
	off_t end;
};

struct fault_rules {
	int n;
	struct fault_rule rule[];
};

/* What identifies one version of the rules file. */
struct stamp {
	bool exists;
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime;
	struct timespec ctime;
};

struct fault_control {
	char *path; /* NULL: no rules file, never any rule */
	pthread_mutex_t reload_lock;
	pthread_rwlock_t lock;
	struct fault_rules *rules; /* guarded by lock; NULL: no rules */
	struct stamp stamp;	   /* guarded by lock */
};

static const char *const op_names[FAULT_OP_COUNT] = {
	[FAULT_GETATTR] = "getattr",	 [FAULT_READLINK] = "readlink",
	[FAULT_MKNOD] = "mknod",	 [FAULT_MKDIR] = "mkdir",
	[FAULT_UNLINK] = "unlink",	 [FAULT_RMDIR] = "rmdir",
	[FAULT_SYMLINK] = "symlink",	 [FAULT_RENAME] = "rename",
	[FAULT_LINK] = "link",		 [FAULT_CHMOD] = "chmod",
	[FAULT_CHOWN] = "chown",	 [FAULT_TRUNCATE] = "truncate",
	[FAULT_OPEN] = "open",		 [FAULT_READ] = "read",
	[FAULT_WRITE] = "write",	 [FAULT_STATFS] = "statfs",
	[FAULT_FLUSH] = "flush",	 [FAULT_FSYNC] = "fsync",
	[FAULT_SETXATTR] = "setxattr",	 [FAULT_GETXATTR] = "getxattr",
	[FAULT_LISTXATTR] = "listxattr", [FAULT_REMOVEXATTR] = "removexattr",
	[FAULT_OPENDIR] = "opendir",	 [FAULT_READDIR] = "readdir",
	[FAULT_FSYNCDIR] = "fsyncdir",	 [FAULT_CREATE] = "create",
	[FAULT_UTIMENS] = "utimens",	 [FAULT_FALLOCATE] = "fallocate",
	[FAULT_LSEEK] = "lseek",
};

#define OP_BIT(op) (UINT64_C(1) << (op))
#define ALL_OPS (OP_BIT(FAULT_OP_COUNT) - 1)
#define RANGED_OPS                                                             \
	(OP_BIT(FAULT_READ) | OP_BIT(FAULT_WRITE) | OP_BIT(FAULT_FALLOCATE))

/* The errnos a rule may name; a number is accepted as well. */
static const struct {
	const char *name;
	int value;
} errno_names[] = {
	/* clang-format off */
	{"EPERM", EPERM},	 {"ENOENT", ENOENT},	 {"EINTR", EINTR},
	{"EIO", EIO},		 {"ENXIO", ENXIO},	 {"EBADF", EBADF},
	{"EAGAIN", EAGAIN},	 {"ENOMEM", ENOMEM},	 {"EACCES", EACCES},
	{"EBUSY", EBUSY},	 {"EEXIST", EEXIST},	 {"EXDEV", EXDEV},
	{"ENODEV", ENODEV},	 {"ENOTDIR", ENOTDIR},	 {"EISDIR", EISDIR},
	{"EINVAL", EINVAL},	 {"ENFILE", ENFILE},	 {"EMFILE", EMFILE},
	{"EFBIG", EFBIG},	 {"ENOSPC", ENOSPC},	 {"ESPIPE", ESPIPE},
	{"EROFS", EROFS},	 {"EMLINK", EMLINK},	 {"ERANGE", ERANGE},
	{"ENAMETOOLONG", ENAMETOOLONG},			 {"ENOSYS", ENOSYS},
	{"ENOTEMPTY", ENOTEMPTY},			 {"ELOOP", ELOOP},
	{"ENODATA", ENODATA},	 {"EOVERFLOW", EOVERFLOW},
	{"EOPNOTSUPP", EOPNOTSUPP},			 {"ENOTSUP", ENOTSUP},
	{"ETIMEDOUT", ETIMEDOUT},			 {"ESTALE", ESTALE},
	{"EDQUOT", EDQUOT},	 {"ENOTCONN", ENOTCONN}, {"ECANCELED", ECANCELED},
	{"EREMOTEIO", EREMOTEIO},			 {"ENOLINK", ENOLINK},
	/* clang-format on */
};

/* ---- parsing ---- */

static int fail(char *err, size_t errlen, int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t errlen, int line, const char *fmt, ...)
{
	va_list ap;
	int n;

	n = snprintf(err, errlen, "line %d: ", line);
	if (n < 0 || (size_t)n >= errlen)
		return -EINVAL;
	va_start(ap, fmt);
	vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

/* A whole decimal number with an optional K, M or G (binary) suffix. */
static bool parse_size(const char *s, off_t *out)
{
	unsigned long long v, mult = 1;
	char *end;

	if (*s < '0' || *s > '9')
		return false;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return false;
	if (*end == 'k' || *end == 'K')
		mult = 1ULL << 10;
	else if (*end == 'M')
		mult = 1ULL << 20;
	else if (*end == 'G')
		mult = 1ULL << 30;
	if (mult > 1)
		end++;
	if (*end || v > (unsigned long long)INT64_MAX / mult)
		return false;
	*out = (off_t)(v * mult);
	return true;
}

static bool parse_errno(const char *s, int *out)
{
	off_t v;

	for (size_t i = 0; i < sizeof(errno_names) / sizeof(errno_names[0]);
	     i++) {
		if (strcmp(s, errno_names[i].name) == 0) {
			*out = errno_names[i].value;
			return true;
		}
	}
	if (!parse_size(s, &v) || v < 1 || v > 4095)
		return false;
	*out = (int)v;
	return true;
}

static bool parse_ops(char *list, uint64_t *out)
{
	char *save = NULL;

	*out = 0;
	for (char *w = strtok_r(list, ",", &save); w;
	     w = strtok_r(NULL, ",", &save)) {
		int op;

		if (strcmp(w, "any") == 0) {
			*out |= ALL_OPS;
			continue;
		}
		for (op = 0; op < FAULT_OP_COUNT; op++)
			if (strcmp(w, op_names[op]) == 0)
				break;
		if (op == FAULT_OP_COUNT)
			return false;
		*out |= OP_BIT(op);
	}
	return *out != 0;
}

static int parse_action(const char *w, struct fault_rule *r, int line,
			char *err, size_t errlen)
{
	off_t ms;

	if (strncmp(w, "error=", 6) == 0) {
		r->action = ACTION_ERROR;
		if (!parse_errno(w + 6, &r->error))
			return fail(err, errlen, line,
				    "unknown errno '%s' (a name such as EIO, "
				    "or a number)",
				    w + 6);
	} else if (strcmp(w, "hang") == 0) {
		r->action = ACTION_HANG;
		r->hang_ms = -1;
	} else if (strncmp(w, "hang=", 5) == 0) {
		r->action = ACTION_HANG;
		if (!parse_size(w + 5, &ms) || ms > LONG_MAX)
			return fail(err, errlen, line,
				    "hang= needs milliseconds, not '%s'",
				    w + 5);
		r->hang_ms = (long)ms;
	} else if (strcmp(w, "flip") == 0) {
		r->action = ACTION_FLIP;
	} else if (strcmp(w, "powercut") == 0) {
		r->action = ACTION_POWERCUT;
	} else {
		return fail(err, errlen, line,
			    "a rule starts with error=ERRNO, hang, hang=MS, "
			    "flip or powercut, not '%s'",
			    w);
	}
	return 0;
}

/* Everything after the action: op=, path=, offset=, length=. */
static int parse_selector(char *w, struct fault_rule *r, bool *seen_op,
			  off_t *length, int line, char *err, size_t errlen)
{
	char *value = strchr(w, '=');

	if (!value || value == w || !value[1])
		return fail(err, errlen, line, "expected KEY=VALUE, not '%s'",
			    w);
	*value++ = '\0';
	if (strcmp(w, "op") == 0 && !*seen_op) {
		*seen_op = true;
		if (!parse_ops(value, &r->ops))
			return fail(err, errlen, line, "unknown op in '%s'",
				    value);
	} else if (strcmp(w, "path") == 0 && !r->glob) {
		r->glob = strdup(value);
		if (!r->glob)
			return -ENOMEM;
	} else if (strcmp(w, "offset") == 0 && !r->ranged) {
		r->ranged = true;
		if (!parse_size(value, &r->start))
			return fail(err, errlen, line, "bad offset '%s'",
				    value);
	} else if (strcmp(w, "length") == 0 && *length < 0) {
		if (!parse_size(value, length) || *length == 0)
			return fail(err, errlen, line, "bad length '%s'",
				    value);
	} else {
		return fail(err, errlen, line, "unknown or repeated key '%s'",
			    w);
	}
	return 0;
}

/* Defaults and combinations, once the whole line is read. */
static int check_rule(struct fault_rule *r, bool seen_op, off_t length,
		      int line, char *err, size_t errlen)
{
	if (length >= 0)
		r->ranged = true;
	if (!seen_op)
		r->ops = r->action == ACTION_FLIP ? OP_BIT(FAULT_READ)
			 : r->ranged		  ? RANGED_OPS
						  : ALL_OPS;
	if (r->action == ACTION_FLIP && r->ops != OP_BIT(FAULT_READ))
		return fail(err, errlen, line, "flip applies to op=read only");
	if (r->ranged && (r->ops & ~RANGED_OPS))
		return fail(err, errlen, line,
			    "offset= and length= apply to read, write and "
			    "fallocate only");
	r->end = INT64_MAX;
	if (length >= 0) {
		if (length > INT64_MAX - r->start)
			return fail(err, errlen, line,
				    "offset + length is too large");
		r->end = r->start + length;
	}
	return 0;
}

/* Parse one rule from line (modified in place); *r is zeroed by caller. */
static int parse_rule(char *text, struct fault_rule *r, int line, char *err,
		      size_t errlen)
{
	char *save = NULL, *w = strtok_r(text, " \t", &save);
	bool seen_op = false;
	off_t length = -1;
	int ret;

	ret = parse_action(w, r, line, err, errlen);
	while (!ret && (w = strtok_r(NULL, " \t", &save)))
		ret = parse_selector(w, r, &seen_op, &length, line, err,
				     errlen);
	if (!ret)
		ret = check_rule(r, seen_op, length, line, err, errlen);
	return ret;
}

void fault_rules_free(struct fault_rules *rules)
{
	if (!rules)
		return;
	for (int i = 0; i < rules->n; i++)
		free(rules->rule[i].glob);
	free(rules);
}

/* A line with only blanks, or a comment. */
static bool is_blank(const char *s)
{
	s += strspn(s, " \t\r");
	return *s == '\0' || *s == '#';
}

int fault_rules_parse(const char *text, size_t len, struct fault_rules **out,
		      char *err, size_t errlen)
{
	struct fault_rules *rules = NULL;
	char line[RULE_LINE_MAX];
	int lineno = 0, max = 0, ret = 0;
	size_t pos = 0;

	snprintf(err, errlen, "%s", "");
	if (memchr(text, '\0', len))
		return fail(err, errlen, 1, "the rules contain a NUL byte");
	while (pos < len && !ret) {
		const char *nl = memchr(text + pos, '\n', len - pos);
		size_t n = nl ? (size_t)(nl - (text + pos)) : len - pos;

		lineno++;
		if (n >= sizeof(line)) {
			ret = fail(err, errlen, lineno, "the line is too long");
			break;
		}
		memcpy(line, text + pos, n);
		line[n] = '\0';
		pos += n + 1;
		if (n && line[n - 1] == '\r')
			line[n - 1] = '\0';
		if (is_blank(line))
			continue;
		if (!rules || rules->n == max) {
			size_t each = sizeof(rules->rule[0]);
			struct fault_rules *grown;

			max = max ? 2 * max : 8;
			grown = realloc(rules,
					sizeof(*rules) + (size_t)max * each);
			if (!grown) {
				ret = -ENOMEM;
				break;
			}
			if (!rules)
				grown->n = 0;
			rules = grown;
		}
		memset(&rules->rule[rules->n], 0, sizeof(rules->rule[0]));
		ret = parse_rule(line, &rules->rule[rules->n], lineno, err,
				 errlen);
		rules->n++; /* counted even on failure: its glob is freed */
	}
	if (ret) {
		fault_rules_free(rules);
		if (ret == -ENOMEM)
			snprintf(err, errlen, "out of memory");
		return ret;
	}
	*out = rules;
	return 0;
}

/* ---- matching ---- */

static bool path_matches(const struct fault_rule *r, const char *path)
{
	return path && fnmatch(r->glob, path, 0) == 0;
}

static bool rule_matches(const struct fault_rule *r,
			 const struct fault_request *req)
{
	if (!(r->ops & OP_BIT(req->op)))
		return false;
	if (r->glob && !path_matches(r, req->path ? req->path : "") &&
	    !path_matches(r, req->path2))
		return false;
	if (!r->ranged)
		return true;
	return req->ranged && req->len > 0 && req->off < r->end &&
	       r->start - req->off < (off_t)req->len;
}

/*
 * How much longer (ms) the request must stall, having waited elapsed ms:
 * the longest remaining matching hang, HANG_STEP_MS for one that lasts
 * until removed, 0 when none is left.
 */
static long hang_remaining(const struct fault_rules *rules,
			   const struct fault_request *req, long elapsed)
{
	long wait = 0;

	for (int i = 0; rules && i < rules->n; i++) {
		const struct fault_rule *r = &rules->rule[i];
		long left;

		if (r->action != ACTION_HANG || !rule_matches(r, req))
			continue;
		left = r->hang_ms < 0 ? HANG_STEP_MS : r->hang_ms - elapsed;
		if (left > wait)
			wait = left;
	}
	return wait;
}

static bool any_cut(const struct fault_rules *rules,
		    const struct fault_request *req)
{
	for (int i = 0; rules && i < rules->n; i++)
		if (rules->rule[i].action == ACTION_POWERCUT &&
		    rule_matches(&rules->rule[i], req))
			return true;
	return false;
}

static int first_error(const struct fault_rules *rules,
		       const struct fault_request *req)
{
	for (int i = 0; rules && i < rules->n; i++)
		if (rules->rule[i].action == ACTION_ERROR &&
		    rule_matches(&rules->rule[i], req))
			return rules->rule[i].error;
	return 0;
}

/* ---- the control: the rules file and the set in force ---- */

static void stamp_of(const struct stat *st, struct stamp *s)
{
	s->exists = true;
	s->dev = st->st_dev;
	s->ino = st->st_ino;
	s->size = st->st_size;
	s->mtime = st->st_mtim;
	s->ctime = st->st_ctim;
}

static bool stamp_equal(const struct stamp *a, const struct stamp *b)
{
	if (a->exists != b->exists)
		return false;
	return !a->exists ||
	       (a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
		a->mtime.tv_sec == b->mtime.tv_sec &&
		a->mtime.tv_nsec == b->mtime.tv_nsec &&
		a->ctime.tv_sec == b->ctime.tv_sec &&
		a->ctime.tv_nsec == b->ctime.tv_nsec);
}

/* Read the open rules file whole into a new buffer; *len its size. */
static int read_all(int fd, off_t size, char **text, size_t *len)
{
	char *buf;
	size_t got = 0;

	if (size > RULES_FILE_MAX)
		return -EFBIG;
	buf = malloc((size_t)size + 1);
	if (!buf)
		return -ENOMEM;
	while (got < (size_t)size) {
		ssize_t n = read(fd, buf + got, (size_t)size - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break; /* shrank since fstat(): parse what is there */
		got += (size_t)n;
	}
	*text = buf;
	*len = got;
	return 0;
}

/*
 * Load the file as it is now into *rules and *stamp. A missing file means
 * no rules. Returns 0, or -errno with the reason printed; then *rules is
 * NULL and *stamp still describes the file, so it is not retried until it
 * changes.
 */
static int load_rules(const char *path, struct fault_rules **rules,
		      struct stamp *stamp)
{
	char err[256], *text = NULL;
	struct stat st;
	size_t len = 0;
	int fd, ret;

	*rules = NULL;
	memset(stamp, 0, sizeof(*stamp));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	if (fstat(fd, &st)) {
		ret = -errno;
		goto out_close;
	}
	stamp_of(&st, stamp);
	ret = read_all(fd, st.st_size, &text, &len);
	if (ret)
		goto out_close;
	ret = fault_rules_parse(text, len, rules, err, sizeof(err));
	if (ret)
		fprintf(stderr, "faultfs: %s: %s; keeping the previous rules\n",
			path, err);
	free(text);
out_close:
	close(fd);
	if (ret && ret != -EINVAL)
		fprintf(stderr, "faultfs: %s: %s\n", path, strerror(-ret));
	return ret;
}

/* Bring c->rules up to date with the file. Call with no lock held. */
static void control_refresh(struct fault_control *c)
{
	struct fault_rules *rules, *old;
	struct stamp now = {0};
	struct stat st;
	bool same;

	if (!c->path)
		return;
	if (stat(c->path, &st) == 0)
		stamp_of(&st, &now);
	pthread_rwlock_rdlock(&c->lock);
	same = stamp_equal(&now, &c->stamp);
	pthread_rwlock_unlock(&c->lock);
	if (same)
		return;

	pthread_mutex_lock(&c->reload_lock);
	if (load_rules(c->path, &rules, &now) == 0) {
		pthread_rwlock_wrlock(&c->lock);
		old = c->rules;
		c->rules = rules;
		c->stamp = now;
		pthread_rwlock_unlock(&c->lock);
		fault_rules_free(old);
	} else {
		pthread_rwlock_wrlock(&c->lock);
		c->stamp = now;
		pthread_rwlock_unlock(&c->lock);
	}
	pthread_mutex_unlock(&c->reload_lock);
}

struct fault_control *fault_control_new(const char *path)
{
	struct fault_control *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	if (path && !(c->path = strdup(path))) {
		free(c);
		return NULL;
	}
	pthread_mutex_init(&c->reload_lock, NULL);
	pthread_rwlock_init(&c->lock, NULL);
	return c;
}

void fault_control_free(struct fault_control *c)
{
	if (!c)
		return;
	fault_rules_free(c->rules);
	pthread_rwlock_destroy(&c->lock);
	pthread_mutex_destroy(&c->reload_lock);
	free(c->path);
	free(c);
}

static long elapsed_ms(const struct timespec *since)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (long)(((long long)(now.tv_sec - since->tv_sec) * 1000000000LL +
		       (now.tv_nsec - since->tv_nsec)) /
		      1000000);
}

int fault_control_before(struct fault_control *c,
			 const struct fault_request *req, bool (*abandon)(void),
			 bool *cut)
{
	struct timespec start;
	int error = 0;

	*cut = false;
	clock_gettime(CLOCK_MONOTONIC, &start);
	/* Sleep in short steps and look again, so that removing the rule,
	 * interrupting the caller or unmounting ends the stall promptly: a
	 * caller the kernel cannot wake is a D-state process. */
	for (;;) {
		long wait;

		control_refresh(c);
		pthread_rwlock_rdlock(&c->lock);
		wait = hang_remaining(c->rules, req, elapsed_ms(&start));
		pthread_rwlock_unlock(&c->lock);
		if (wait <= 0)
			break;
		if (abandon())
			return -EINTR;
		if (wait > HANG_STEP_MS)
			wait = HANG_STEP_MS;
		nanosleep(&(struct timespec){.tv_nsec = wait * 1000000L}, NULL);
	}
	pthread_rwlock_rdlock(&c->lock);
	*cut = any_cut(c->rules, req);
	if (!*cut)
		error = first_error(c->rules, req);
	pthread_rwlock_unlock(&c->lock);
	return -error;
}

void fault_control_after_read(struct fault_control *c,
			      const struct fault_request *req, char *buf,
			      size_t n)
{
	struct fault_request done = *req;
	const struct fault_rules *rules;

	done.len = n;
	pthread_rwlock_rdlock(&c->lock);
	rules = c->rules;
	for (int i = 0; rules && i < rules->n; i++) {
		const struct fault_rule *r = &rules->rule[i];
		off_t from, to;

		if (r->action != ACTION_FLIP || !rule_matches(r, &done))
			continue;
		from = r->start > done.off ? r->start : done.off;
		to = r->end - done.off < (off_t)n ? r->end
						  : done.off + (off_t)n;
		for (off_t p = from; p < to; p++)
			buf[p - done.off] ^= (char)0xff;
	}
	pthread_rwlock_unlock(&c->lock);
}
