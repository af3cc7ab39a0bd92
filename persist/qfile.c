/*
 * The quarantine's files in a child's .quorumfs/quarantine/ (see
 * persist_i.h for their format).
 */
#define _GNU_SOURCE
#include "persist/persist_i.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ID_DIGITS 20
/* A header holds a path of at most PATH_MAX bytes, escaped. */
#define HEADER_MAX (32 * 1024)

static const char *const why_names[] = {
	[QUARANTINE_REWRITE] = "rewrite",
	[QUARANTINE_SCRUB] = "scrub",
	[QUARANTINE_RESYNC] = "resync",
	[QUARANTINE_SETTLE] = "settle",
};

const char *quarantine_why_name(enum quarantine_why why)
{
	return why_names[why];
}

void qfile_entry_clear(struct qfile_entry *e)
{
	free(e->path);
	free(e->child);
	memset(e, 0, sizeof(*e));
}

static void name_of(uint64_t id, bool tmp, char *buf, size_t size)
{
	snprintf(buf, size, "%s/%0*llu%s", QUARANTINE_DIR, ID_DIGITS,
		 (unsigned long long)id, tmp ? ".tmp" : "");
}

char *qfile_header(const struct qfile_entry *e)
{
	struct json_object *o = json_object_new_object();
	char *text = NULL;

	json_object_object_add(o, "id", json_object_new_int64((int64_t)e->id));
	json_object_object_add(o, "child", json_object_new_string(e->child));
	json_object_object_add(o, "file", json_object_new_string(e->path));
	json_object_object_add(o, "offset",
			       json_object_new_int64((int64_t)e->off));
	json_object_object_add(o, "length",
			       json_object_new_int64((int64_t)e->len));
	json_object_object_add(o, "time", json_object_new_int64(e->time));
	json_object_object_add(o, "why",
			       json_object_new_string(why_names[e->why]));
	json_object_object_add(o, "digest", json_object_new_string(e->digest));
	if (asprintf(&text, "%s\n",
		     json_object_to_json_string_ext(
			     o, JSON_C_TO_STRING_PLAIN |
					JSON_C_TO_STRING_NOSLASHESCAPE)) < 0)
		text = NULL;
	json_object_put(o);
	return text;
}

/* .quorumfs/quarantine, made durable when it is new. */
static int make_dirs(int root_fd)
{
	if (mkdirat(root_fd, PERSIST_DIR, 0700) == 0)
		child_sync_dir(root_fd, ".", false);
	else if (errno != EEXIST)
		return -errno;
	if (mkdirat(root_fd, QUARANTINE_DIR, 0700) == 0)
		return child_sync_dir(root_fd, PERSIST_DIR, false);
	return errno == EEXIST ? 0 : -errno;
}

static int write_full(int fd, const void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t r = write(fd, (const char *)buf + done, len - done);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		done += r;
	}
	return 0;
}

int qfile_write(int root_fd, uint64_t id, const char *header, const void *bytes,
		size_t len)
{
	char tmp[64], name[64];
	int fd = -1, ret = make_dirs(root_fd);

	name_of(id, true, tmp, sizeof(tmp));
	name_of(id, false, name, sizeof(name));
	if (ret)
		goto out;
	fd = openat(root_fd, tmp,
		    O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC,
		    0600);
	if (fd < 0) {
		ret = -errno;
		goto out;
	}
	ret = write_full(fd, header, strlen(header));
	if (!ret)
		ret = write_full(fd, bytes, len);
	if (!ret)
		ret = child_result(fsync(fd));
	if (!ret)
		ret = child_result(renameat(root_fd, tmp, root_fd, name));
	if (!ret)
		ret = child_sync_dir(root_fd, QUARANTINE_DIR, false);
	if (ret)
		unlinkat(root_fd, tmp, 0);
out:
	if (fd >= 0)
		close(fd);
	return ret;
}

int qfile_remove(int root_fd, const uint64_t *ids, size_t n)
{
	int ret = 0;
	char name[64];

	for (size_t i = 0; i < n; i++) {
		name_of(ids[i], false, name, sizeof(name));
		if (unlinkat(root_fd, name, 0) && errno != ENOENT && !ret)
			ret = -errno;
	}
	if (n)
		child_sync_dir(root_fd, QUARANTINE_DIR, false);
	return ret;
}

/* ---- reading ---- */

static int why_of(const char *s)
{
	for (size_t i = 0; s && i < sizeof(why_names) / sizeof(why_names[0]);
	     i++)
		if (strcmp(s, why_names[i]) == 0)
			return (int)i;
	return -1;
}

/* The header line of text into *e; -EINVAL when it is not one. */
static int parse_header(const char *text, struct qfile_entry *e)
{
	struct json_object *o = json_tokener_parse(text);
	const char *path = o ? persist_get_str(o, "file") : NULL;
	const char *child = o ? persist_get_str(o, "child") : NULL;
	const char *digest = o ? persist_get_str(o, "digest") : NULL;
	uint64_t t = 0;
	int why = o ? why_of(persist_get_str(o, "why")) : -1, ret = -EINVAL;

	memset(e, 0, sizeof(*e));
	if (!path || !child || !digest || strlen(digest) != 64 || why < 0 ||
	    !persist_get_u64(o, "id", &e->id) ||
	    !persist_get_u64(o, "offset", &e->off) ||
	    !persist_get_u64(o, "length", &e->len) ||
	    !persist_get_u64(o, "time", &t))
		goto out;
	e->path = strdup(path);
	e->child = strdup(child);
	e->time = (int64_t)t;
	e->why = why;
	memcpy(e->digest, digest, 65);
	ret = e->path && e->child ? 0 : -ENOMEM;
	if (ret)
		qfile_entry_clear(e);
out:
	json_object_put(o);
	return ret;
}

/* Open entry id; its header in *e and the offset of its bytes in *at. */
static int open_entry(int root_fd, uint64_t id, struct qfile_entry *e,
		      off_t *at)
{
	char name[64], *buf = malloc(HEADER_MAX + 1), *nl;
	int fd, ret;
	ssize_t got;

	name_of(id, false, name, sizeof(name));
	fd = openat(root_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	ret = fd < 0 ? -errno : buf ? 0 : -ENOMEM;
	if (ret)
		goto out;
	got = pread(fd, buf, HEADER_MAX, 0);
	ret = got < 0 ? -errno : 0;
	if (!ret) {
		buf[got < 0 ? 0 : (size_t)got] = '\0';
		nl = strchr(buf, '\n');
		ret = nl ? (*nl = '\0', parse_header(buf, e)) : -EINVAL;
		*at = nl ? nl - buf + 1 : 0;
	}
	if (!ret && e->id != id) {
		qfile_entry_clear(e);
		ret = -EINVAL;
	}
out:
	free(buf);
	if (ret && fd >= 0)
		close(fd);
	return ret ? ret : fd;
}

int qfile_read(int root_fd, uint64_t id, struct qfile_entry *e, void **bytes)
{
	off_t at = 0;
	int fd = open_entry(root_fd, id, e, &at), ret = 0;
	char *buf;
	ssize_t got;

	if (fd < 0)
		return fd;
	buf = malloc(e->len ? e->len : 1);
	if (!buf) {
		ret = -ENOMEM;
		goto out;
	}
	got = child_rw_full(fd, false, false, buf, e->len, at);
	ret = got < 0 ? (int)got : (uint64_t)got < e->len ? -EIO : 0;
	if (!ret)
		*bytes = buf;
	else
		free(buf);
out:
	if (ret)
		qfile_entry_clear(e);
	close(fd);
	return ret;
}

/* An entry's id from its file name; false for anything else (and a .tmp
 * a crash left, which is removed). */
static bool entry_name(int root_fd, const char *name, uint64_t *id)
{
	char *end;

	if (strlen(name) == ID_DIGITS + 4 &&
	    !strcmp(name + ID_DIGITS, ".tmp")) {
		char path[64];

		snprintf(path, sizeof(path), "%s/%s", QUARANTINE_DIR, name);
		unlinkat(root_fd, path, 0);
		return false;
	}
	if (strlen(name) != ID_DIGITS ||
	    strspn(name, "0123456789") != ID_DIGITS)
		return false;
	*id = strtoull(name, &end, 10);
	return true;
}

static int by_id(const void *a, const void *b)
{
	const struct qfile_entry *x = a, *y = b;

	return x->id < y->id ? -1 : x->id > y->id;
}

/* Add entry id's header to *out, growing it; unreadable entries are
 * skipped (a later scan may read them). */
static int scan_add(int root_fd, uint64_t id, struct qfile_entry **out,
		    size_t *n)
{
	struct qfile_entry e, *grown;
	off_t at;
	int fd = open_entry(root_fd, id, &e, &at);

	if (fd < 0)
		return fd == -ENOMEM ? fd : 0;
	close(fd);
	grown = realloc(*out, (*n + 1) * sizeof(**out));
	if (!grown) {
		qfile_entry_clear(&e);
		return -ENOMEM;
	}
	*out = grown;
	(*out)[(*n)++] = e;
	return 0;
}

int qfile_scan(int root_fd, struct qfile_entry **out, size_t *n)
{
	int dfd = openat(root_fd, QUARANTINE_DIR,
			 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	struct dirent *d;
	DIR *dir;
	int ret = 0;

	*out = NULL;
	*n = 0;
	if (dfd < 0)
		return -errno;
	dir = fdopendir(dfd);
	if (!dir) {
		close(dfd);
		return -errno;
	}
	while (!ret && (d = readdir(dir))) {
		uint64_t id;

		if (entry_name(root_fd, d->d_name, &id))
			ret = scan_add(root_fd, id, out, n);
	}
	closedir(dir);
	if (*n)
		qsort(*out, *n, sizeof(**out), by_id);
	return ret;
}
