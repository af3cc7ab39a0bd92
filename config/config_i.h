/* Private to the config module: what config.c and command.c share. */
#ifndef QFS_CONFIG_I_H
#define QFS_CONFIG_I_H

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

/* Write the reason into err and return -EINVAL. */
static inline int config_fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

/* Parse a whole decimal number in [min, max]; false on anything else. */
static inline bool parse_int(const char *s, long min, long max, int *out)
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

struct stat;

/* A size in bytes: digits with an optional K, M, G or T (powers of
 * 1024); false on anything else (size.c). */
bool config_parse_size(const char *s, unsigned long long *out);

/* ---- paths.c ---- */

bool same_inode(const struct stat *a, const struct stat *b);
/* Whether the directory inner (absolute, resolved) is outer or lies
 * beneath it, ancestor by ancestor, so that bind mounts and symlinked
 * spellings are caught. */
bool path_within(const char *inner, const struct stat *outer);
/* The resolved directory path (caller frees) and its stat, or -EINVAL
 * with "WHAT 'PATH' ..." in err. */
int resolve_dir(const char *what, const char *path, char **out, struct stat *st,
		char *err, size_t errlen);

/* ---- secondary.c ---- */

struct config_args;
struct config;
struct config_secondary;
/* The secondary's options into cfg->secondary (untouched when this is
 * no secondary); -EINVAL with the reason in err. */
int check_secondary(const struct config_args *a, struct config *cfg, char *err,
		    size_t errlen);
void release_secondary(struct config_secondary *s);

#endif
