/*
 * Paths of the command line: resolving them, and judging where one lies
 * with respect to another by device and inode.
 */
#define _GNU_SOURCE
#include "config/config.h"
#include "config/config_i.h"

#include <limits.h>
#include <string.h>
#include <sys/stat.h>

bool same_inode(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/*
 * True if the directory `inner` (an absolute, resolved path) is `outer`
 * or lies beneath it, judged by device and inode of each ancestor so that
 * bind mounts and symlinked spellings are caught too.
 */
bool path_within(const char *inner, const struct stat *outer)
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

int resolve_dir(const char *what, const char *path, char **out, struct stat *st,
		char *err, size_t errlen)
{
	char *real = realpath(path, NULL);

	if (!real)
		return config_fail(err, errlen, "%s '%s' cannot be used: %s",
				   what, path, strerror(errno));
	if (stat(real, st) != 0 || !S_ISDIR(st->st_mode)) {
		free(real);
		return config_fail(err, errlen, "%s '%s' is not a directory",
				   what, path);
	}
	*out = real;
	return 0;
}
