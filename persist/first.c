/*
 * The first mount of a set: children without any record must hold the
 * same tree, or one of them must be named the source (sync-from=).
 *
 * Otherwise a directory of images mounted with two empty ones would show
 * an empty root (no name reaches a quorum), and the first resync would
 * delete the images. So the trees are compared by what can be compared
 * cheaply and still catches that: every entry's relative path, type and,
 * for regular files, size; file data is left to the votes and to scrub.
 * The walk is bounded: past FIRST_MAX entries a child counts as large
 * and only the entries seen are compared.
 */
#define _GNU_SOURCE
#include "persist/persist.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIRST_MAX 100000

/* One child's tree, as "type size path" lines, sorted. */
struct summary {
	char **line;
	size_t n, cap;
};

static int summary_add(struct summary *s, const char *path,
		       const struct stat *st)
{
	char *line, **grown;

	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 64;

		grown = realloc(s->line, cap * sizeof(*grown));
		if (!grown)
			return -ENOMEM;
		s->line = grown;
		s->cap = cap;
	}
	if (asprintf(&line, "%o %lld %s", (unsigned)(st->st_mode & S_IFMT),
		     S_ISREG(st->st_mode) ? (long long)st->st_size : 0LL,
		     path) < 0)
		return -ENOMEM;
	s->line[s->n++] = line;
	return 0;
}

static int walk(struct summary *s, int dfd, const char *prefix, bool top)
{
	DIR *d = fdopendir(dfd);
	struct dirent *de;
	int ret = 0;

	if (!d) {
		close(dfd);
		return -errno;
	}
	while (!ret && s->n < FIRST_MAX && (de = readdir(d))) {
		char *path = NULL;
		struct stat st;
		int fd;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") ||
		    (top && (!strcmp(de->d_name, PERSIST_DIR) ||
			     !strcmp(de->d_name, PERSIST_GRAVEYARD) ||
			     !strcmp(de->d_name, ".control") ||
			     !strcmp(de->d_name, ".children"))))
			continue;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) ||
		    asprintf(&path, "%s%s", prefix, de->d_name) < 0) {
			ret = errno ? -errno : -ENOMEM;
			break;
		}
		ret = summary_add(s, path, &st);
		if (!ret && S_ISDIR(st.st_mode)) {
			char *sub = NULL;

			fd = openat(dirfd(d), de->d_name,
				    O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
					    O_CLOEXEC);
			if (fd < 0 || asprintf(&sub, "%s/", path) < 0)
				ret = fd < 0 ? -errno : -ENOMEM;
			else
				ret = walk(s, fd, sub, false);
			free(sub);
		}
		free(path);
	}
	closedir(d);
	return ret;
}

static int by_line(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void summary_free(struct summary *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->line[i]);
	free(s->line);
}

static int summarize(const char *root, struct summary *s)
{
	int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int ret = fd < 0 ? -errno : walk(s, fd, "", true);

	if (!ret && s->n) /* an empty directory has no lines to sort */
		qsort(s->line, s->n, sizeof(*s->line), by_line);
	return ret;
}

static bool same(const struct summary *a, const struct summary *b)
{
	if (a->n != b->n)
		return false;
	for (size_t i = 0; i < a->n; i++)
		if (strcmp(a->line[i], b->line[i]))
			return false;
	return true;
}

/* "'/a' holds 2 entries (vm.img, ...)" for the refusal. */
static void describe(char *out, size_t size, const char *root,
		     const struct summary *s)
{
	const char *first =
		s->n ? strchr(strchr(s->line[0], ' ') + 1, ' ') + 1 : NULL;

	if (!s->n)
		snprintf(out, size, "'%s' is empty", root);
	else
		snprintf(out, size, "'%s' holds %zu entries (%s%s)", root, s->n,
			 first, s->n > 1 ? ", ..." : "");
}

int persist_first_check(const char *const *root, int n, char *err,
			size_t errlen)
{
	struct summary s[CHILDREN_MAX] = {{0}};
	char part[CHILDREN_MAX][256];
	int ret = 0, differ = 0;

	for (int i = 0; i < n && !ret; i++)
		ret = summarize(root[i], &s[i]);
	for (int i = 1; !ret && i < n; i++)
		differ += !same(&s[0], &s[i]);
	if (!ret && differ) {
		size_t at = 0;

		for (int i = 0; i < n; i++)
			describe(part[i], sizeof(part[i]), root[i], &s[i]);
		at = snprintf(err, errlen,
			      "the children differ and none has a .quorumfs "
			      "record:");
		for (int i = 0; i < n && at < errlen; i++)
			at += snprintf(err + at, errlen - at, "%s %s",
				       i ? ";" : "", part[i]);
		if (at < errlen)
			snprintf(err + at, errlen - at,
				 "; give -o sync-from=CHILD to fill the others "
				 "from one of them, or make them identical");
		ret = -EINVAL;
	} else if (ret) {
		snprintf(err, errlen, "cannot compare the children: %s",
			 strerror(-ret));
	}
	for (int i = 0; i < n; i++)
		summary_free(&s[i]);
	return ret;
}
