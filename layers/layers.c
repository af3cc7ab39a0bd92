/*
 * The layer store (layers.h): the state file and the epoch switch, the
 * entries and their journal, the objects and their cluster maps.
 *
 * Durability, with sync on: an entry change is appended to the journal
 * and fdatasync'd before it is applied in memory (so before its user
 * changes anything below it); an object's clusters are held only after
 * their data was fdatasync'd, and the map byte that says so is
 * fdatasync'd too. The state file is replaced by rename, after which its
 * directory is fsync'd: an epoch switch is all or nothing.
 */
#define _GNU_SOURCE
#include "layers/layers.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define STATE_DIR ".qfslayer"
#define STATE_FILE ".qfslayer/state"
#define STATE_TMP ".qfslayer/state.tmp"

/* One object: its data file, its map file and the map in memory. */
struct lobj {
	int data, map; /* -1 until opened */
	uint8_t *bits;
	uint64_t nbytes; /* of bits */
	uint64_t held;	 /* bits set */
};

struct layer {
	char *dir;
	int dirfd, epfd, ofd, journal;
	char role[8];
	unsigned int cluster;
	bool sync;
	struct layer_state st;
	struct layer_entry *e;
	int n, ecap;
	struct lobj *obj; /* by id, cap of them; obj[0] unused */
	uint64_t cap;
	uint64_t next; /* the next new object's id; ids below may exist */
	uint64_t held; /* clusters, over every object */
};

static int fail(char *err, size_t errlen, int ret, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return ret;
}

static int result(int r)
{
	return r < 0 ? -errno : 0;
}

/* ---- the state file ---- */

static int write_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t w = write(fd, buf, len);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		buf += w;
		len -= (size_t)w;
	}
	return 0;
}

static char *state_text(const struct layer *l, const struct layer_state *st)
{
	struct json_object *o = json_object_new_object();
	char *text;

	json_object_object_add(o, "format", json_object_new_int(1));
	json_object_object_add(o, "set", json_object_new_string(st->set));
	json_object_object_add(o, "role", json_object_new_string(l->role));
	json_object_object_add(o, "cluster", json_object_new_int(l->cluster));
	json_object_object_add(o, "epoch", json_object_new_int64(st->epoch));
	json_object_object_add(o, "stage", json_object_new_int(st->stage));
	json_object_object_add(o, "clean", json_object_new_boolean(st->clean));
	if (st->failed_over)
		json_object_object_add(o, "failed-over",
				       json_object_new_boolean(1));
	text = strdup(json_object_to_json_string(o));
	json_object_put(o);
	return text;
}

int layer_set_state(struct layer *l, const struct layer_state *st)
{
	char *text = state_text(l, st);
	int fd = -1, ret = -ENOMEM;

	if (!text)
		goto out;
	fd = openat(l->dirfd, STATE_TMP,
		    O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	ret = fd < 0 ? -errno : write_all(fd, text, strlen(text));
	if (!ret && l->sync)
		ret = result(fsync(fd));
	if (!ret)
		ret = result(
			renameat(l->dirfd, STATE_TMP, l->dirfd, STATE_FILE));
	if (!ret && l->sync) {
		int sd = openat(l->dirfd, STATE_DIR, O_RDONLY | O_DIRECTORY);

		ret = sd < 0 ? -errno : result(fsync(sd));
		if (sd >= 0)
			close(sd);
	}
	if (!ret)
		l->st = *st;
out:
	if (fd >= 0)
		close(fd);
	free(text);
	return ret;
}

void layer_get_state(const struct layer *l, struct layer_state *st)
{
	*st = l->st;
}

static const char *get_str(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) ||
	    !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

static int64_t get_int(struct json_object *o, const char *key, int64_t def)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) ||
	    !json_object_is_type(v, json_type_int))
		return def;
	return json_object_get_int64(v);
}

static bool get_bool(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) &&
	       json_object_get_boolean(v);
}

/* Fill l->st from the state object o; -EINVAL with a reason. */
static int parse_state(struct layer *l, struct json_object *o, const char *path,
		       char *err, size_t errlen)
{
	const char *role = o ? get_str(o, "role") : NULL;
	const char *set = o ? get_str(o, "set") : NULL;

	if (!role || !set || get_int(o, "epoch", -1) < 0)
		return fail(err, errlen, -EINVAL, "%s is not a layer's state",
			    path);
	if (strcmp(role, l->role) || get_int(o, "cluster", 0) != l->cluster)
		return fail(err, errlen, -EINVAL,
			    "%s holds the %s layer of cluster %" PRId64
			    ", not the %s layer of cluster %u",
			    l->dir, role, get_int(o, "cluster", 0), l->role,
			    l->cluster);
	snprintf(l->st.set, sizeof(l->st.set), "%s", set);
	l->st.epoch = (uint64_t)get_int(o, "epoch", 0);
	l->st.stage = (int)get_int(o, "stage", 0);
	l->st.clean = get_bool(o, "clean");
	l->st.failed_over = get_bool(o, "failed-over");
	return 0;
}

/* Read the state; none yet: a fresh one, written. */
static int load_state(struct layer *l, char *err, size_t errlen)
{
	struct json_object *o;
	char path[4096];
	int ret;

	snprintf(path, sizeof(path), "%s/%s", l->dir, STATE_FILE);
	if (faccessat(l->dirfd, STATE_FILE, F_OK, 0)) {
		if (mkdirat(l->dirfd, STATE_DIR, 0755) && errno != EEXIST)
			return fail(err, errlen, -errno, "%s: %s", path,
				    strerror(errno));
		return layer_set_state(l, &(struct layer_state){0});
	}
	o = json_object_from_file(path);
	ret = parse_state(l, o, path, err, errlen);
	json_object_put(o);
	return ret;
}

/* ---- entries in memory ---- */

static void entry_clear(struct layer_entry *e)
{
	/* The layer's own copies: the const is for its callers. */
	free((char *)e->path);
	free((char *)e->lower);
	free((char *)e->target);
	memset(e, 0, sizeof(*e));
}

/* A deep copy of src into dst (cleared first); -ENOMEM leaves it empty. */
static int entry_copy(struct layer_entry *dst, const struct layer_entry *src)
{
	*dst = *src;
	dst->path = strdup(src->path);
	dst->lower = src->lower ? strdup(src->lower) : NULL;
	dst->target = src->target ? strdup(src->target) : NULL;
	if (!dst->path || (src->lower && !dst->lower) ||
	    (src->target && !dst->target)) {
		entry_clear(dst);
		return -ENOMEM;
	}
	return 0;
}

static int find_index(const struct layer *l, const char *path)
{
	for (int i = 0; i < l->n; i++)
		if (strcmp(l->e[i].path, path) == 0)
			return i;
	return -1;
}

const struct layer_entry *layer_find(const struct layer *l, const char *path)
{
	int i = find_index(l, path);

	return i < 0 ? NULL : &l->e[i];
}

static int apply_put(struct layer *l, const struct layer_entry *e)
{
	struct layer_entry copy;
	int i = find_index(l, e->path);

	if (entry_copy(&copy, e))
		return -ENOMEM;
	if (i >= 0) {
		entry_clear(&l->e[i]);
		l->e[i] = copy;
		return 0;
	}
	if (l->n == l->ecap) {
		int cap = l->ecap ? 2 * l->ecap : 16;
		struct layer_entry *grown = realloc(l->e, cap * sizeof(*grown));

		if (!grown) {
			entry_clear(&copy);
			return -ENOMEM;
		}
		l->e = grown;
		l->ecap = cap;
	}
	l->e[l->n++] = copy;
	return 0;
}

static void apply_drop(struct layer *l, const char *path)
{
	int i = find_index(l, path);

	if (i < 0)
		return;
	entry_clear(&l->e[i]);
	l->e[i] = l->e[--l->n];
}

/* path is below, or is, dir. */
static bool within(const char *path, const char *dir)
{
	size_t n = strlen(dir);

	if (!n)
		return true;
	return strncmp(path, dir, n) == 0 && (!path[n] || path[n] == '/');
}

/* A rename replaces what was at `to`: its entries go first. */
static int apply_move(struct layer *l, const char *from, const char *to)
{
	size_t n = strlen(from);

	for (int i = 0; i < l->n; i++)
		if (within(l->e[i].path, to) && !within(l->e[i].path, from))
			apply_drop(l, l->e[i--].path);
	for (int i = 0; i < l->n; i++) {
		char *moved;

		if (!within(l->e[i].path, from))
			continue;
		if (asprintf(&moved, "%s%s", to, l->e[i].path + n) < 0)
			return -ENOMEM;
		free((char *)l->e[i].path);
		l->e[i].path = moved;
	}
	return 0;
}

static int apply_move_lower(struct layer *l, const char *from, const char *to)
{
	size_t n = strlen(from);

	for (int i = 0; i < l->n; i++) {
		char *moved;

		if (!l->e[i].lower || !within(l->e[i].lower, from))
			continue;
		if (asprintf(&moved, "%s%s", to, l->e[i].lower + n) < 0)
			return -ENOMEM;
		free((char *)l->e[i].lower);
		l->e[i].lower = moved;
	}
	return 0;
}

int layer_each(const struct layer *l,
	       int (*fn)(void *arg, const struct layer_entry *e), void *arg)
{
	for (int i = 0; i < l->n; i++) {
		int r = fn(arg, &l->e[i]);

		if (r)
			return r;
	}
	return 0;
}

int layer_entries(const struct layer *l)
{
	return l->n;
}

/* ---- the journal ---- */

static struct json_object *meta_json(const struct layer_meta *m)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "mode", json_object_new_int64(m->mode));
	json_object_object_add(o, "uid", json_object_new_int64(m->uid));
	json_object_object_add(o, "gid", json_object_new_int64(m->gid));
	json_object_object_add(o, "as", json_object_new_int64(m->atime.tv_sec));
	json_object_object_add(o, "an",
			       json_object_new_int64(m->atime.tv_nsec));
	json_object_object_add(o, "ms", json_object_new_int64(m->mtime.tv_sec));
	json_object_object_add(o, "mn",
			       json_object_new_int64(m->mtime.tv_nsec));
	return o;
}

static struct json_object *entry_json(const struct layer_entry *e)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "p", json_object_new_string(e->path));
	if (e->absent)
		json_object_object_add(o, "absent", json_object_new_boolean(1));
	if (e->lower)
		json_object_object_add(o, "lower",
				       json_object_new_string(e->lower));
	if (e->obj)
		json_object_object_add(o, "obj",
				       json_object_new_int64((int64_t)e->obj));
	if (e->has_size)
		json_object_object_add(o, "size",
				       json_object_new_int64((int64_t)e->size));
	if (e->has_meta)
		json_object_object_add(o, "meta", meta_json(&e->meta));
	if (e->target)
		json_object_object_add(o, "target",
				       json_object_new_string(e->target));
	return o;
}

/* Append o (consumed) as one line, durable with sync on. */
static int journal(struct layer *l, struct json_object *o)
{
	char *line = NULL;
	int ret;

	if (asprintf(&line, "%s\n", json_object_to_json_string(o)) < 0)
		line = NULL;
	json_object_put(o);
	if (!line)
		return -ENOMEM;
	ret = write_all(l->journal, line, strlen(line));
	if (!ret && l->sync)
		ret = result(fdatasync(l->journal));
	free(line);
	return ret;
}

int layer_put(struct layer *l, const struct layer_entry *e)
{
	struct json_object *o = json_object_new_object();
	int ret;

	json_object_object_add(o, "put", entry_json(e));
	ret = journal(l, o);
	return ret ? ret : apply_put(l, e);
}

int layer_drop(struct layer *l, const char *path)
{
	struct json_object *o = json_object_new_object();
	int ret;

	if (find_index(l, path) < 0)
		return 0;
	json_object_object_add(o, "drop", json_object_new_string(path));
	ret = journal(l, o);
	if (!ret)
		apply_drop(l, path);
	return ret;
}

int layer_move_lower(struct layer *l, const char *from, const char *to)
{
	struct json_object *o = json_object_new_object();
	int ret;

	json_object_object_add(o, "lmv", json_object_new_string(from));
	json_object_object_add(o, "to", json_object_new_string(to));
	ret = journal(l, o);
	return ret ? ret : apply_move_lower(l, from, to);
}

int layer_move(struct layer *l, const char *from, const char *to)
{
	struct json_object *o = json_object_new_object();
	int ret;

	json_object_object_add(o, "mv", json_object_new_string(from));
	json_object_object_add(o, "to", json_object_new_string(to));
	ret = journal(l, o);
	return ret ? ret : apply_move(l, from, to);
}

/* ---- replaying the journal ---- */

static void parse_meta(struct json_object *o, struct layer_meta *m)
{
	m->mode = (mode_t)get_int(o, "mode", 0);
	m->uid = (uid_t)get_int(o, "uid", 0);
	m->gid = (gid_t)get_int(o, "gid", 0);
	m->atime.tv_sec = get_int(o, "as", 0);
	m->atime.tv_nsec = get_int(o, "an", 0);
	m->mtime.tv_sec = get_int(o, "ms", 0);
	m->mtime.tv_nsec = get_int(o, "mn", 0);
}

/* e borrows o's strings: apply it before o is freed. */
static int parse_entry(struct json_object *o, struct layer_entry *e)
{
	struct json_object *m;

	memset(e, 0, sizeof(*e));
	e->path = get_str(o, "p");
	if (!e->path)
		return -EINVAL;
	e->absent = get_bool(o, "absent");
	e->lower = get_str(o, "lower");
	e->target = get_str(o, "target");
	e->obj = (uint64_t)get_int(o, "obj", 0);
	e->has_size = get_int(o, "size", -1) >= 0;
	e->size = e->has_size ? (uint64_t)get_int(o, "size", 0) : 0;
	e->has_meta = json_object_object_get_ex(o, "meta", &m);
	if (e->has_meta)
		parse_meta(m, &e->meta);
	return 0;
}

static int replay_line(struct layer *l, const char *line)
{
	struct json_object *o = json_tokener_parse(line), *v;
	struct layer_entry e;
	int ret = -EINVAL;

	if (json_object_object_get_ex(o, "put", &v) && !parse_entry(v, &e)) {
		ret = apply_put(l, &e);
		if (!ret && e.obj >= l->next)
			l->next = e.obj + 1;
	} else if (get_str(o, "drop")) {
		apply_drop(l, get_str(o, "drop"));
		ret = 0;
	} else if (get_str(o, "mv") && get_str(o, "to")) {
		ret = apply_move(l, get_str(o, "mv"), get_str(o, "to"));
	} else if (get_str(o, "lmv") && get_str(o, "to")) {
		ret = apply_move_lower(l, get_str(o, "lmv"), get_str(o, "to"));
	}
	json_object_put(o);
	return ret;
}

/* Every complete line of the journal; a torn last line (a crash while
 * appending it) is cut off, since its change never happened. */
static int replay(struct layer *l)
{
	FILE *f = fdopen(dup(l->journal), "r");
	char *line = NULL;
	size_t cap = 0;
	off_t good = 0;
	ssize_t len;
	int ret = 0;

	if (!f)
		return -errno;
	rewind(f);
	while (!ret && (len = getline(&line, &cap, f)) > 0) {
		if (line[len - 1] != '\n')
			break;
		ret = replay_line(l, line);
		if (!ret)
			good += len;
	}
	free(line);
	fclose(f);
	if (!ret && ftruncate(l->journal, good))
		ret = -errno;
	return ret;
}

/* ---- epochs ---- */

static void epoch_name(char *buf, size_t size, uint64_t epoch)
{
	snprintf(buf, size, "E%" PRIu64, epoch);
}

/* Open (making it) E<epoch>/, its o/ and its journal into *fds. */
static int open_epoch(struct layer *l, uint64_t epoch, int fds[3])
{
	char name[32];
	int ret = 0;

	epoch_name(name, sizeof(name), epoch);
	fds[0] = fds[1] = fds[2] = -1;
	if (mkdirat(l->dirfd, name, 0755) && errno != EEXIST)
		return -errno;
	fds[0] = openat(l->dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fds[0] >= 0 && mkdirat(fds[0], "o", 0755) && errno != EEXIST)
		ret = -errno;
	if (fds[0] >= 0 && !ret)
		fds[1] =
			openat(fds[0], "o", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fds[1] >= 0)
		fds[2] = openat(fds[0], "journal",
				O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (!ret && (fds[0] < 0 || fds[1] < 0 || fds[2] < 0))
		ret = -errno;
	if (!ret && l->sync && (fsync(fds[0]) || fsync(l->dirfd)))
		ret = -errno;
	for (int i = 0; ret && i < 3; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	return ret;
}

static void close_epoch(struct layer *l)
{
	for (uint64_t i = 1; i < l->cap; i++) {
		if (l->obj[i].data >= 0)
			close(l->obj[i].data);
		if (l->obj[i].map >= 0)
			close(l->obj[i].map);
		free(l->obj[i].bits);
	}
	free(l->obj);
	l->obj = NULL;
	l->cap = 0;
	l->next = 1;
	l->held = 0;
	for (int i = 0; i < l->n; i++)
		entry_clear(&l->e[i]);
	l->n = 0;
	if (l->journal >= 0)
		close(l->journal);
	if (l->ofd >= 0)
		close(l->ofd);
	if (l->epfd >= 0)
		close(l->epfd);
	l->journal = l->ofd = l->epfd = -1;
}

/* The highest object id in o/, so new ones never reuse an id. */
static uint64_t scan_objects(int ofd)
{
	DIR *d = fdopendir(dup(ofd));
	struct dirent *de;
	uint64_t top = 0;

	if (d) /* the duplicate shares the position of an earlier read */
		rewinddir(d);
	while (d && (de = readdir(d)))
		if (de->d_name[0] >= '1' && de->d_name[0] <= '9' &&
		    strtoull(de->d_name, NULL, 10) > top)
			top = strtoull(de->d_name, NULL, 10);
	if (d)
		closedir(d);
	return top;
}

static int use_epoch(struct layer *l, int fds[3])
{
	uint64_t top;

	l->epfd = fds[0];
	l->ofd = fds[1];
	l->journal = fds[2];
	top = scan_objects(l->ofd);
	l->next = top + 1;
	return replay(l);
}

static void remove_tree(int parent, const char *name);

int layer_switch(struct layer *l, uint64_t epoch)
{
	struct layer_state st = l->st;
	char name[32];
	int fds[3], ret;

	/* Left by a switch that never reached its state file: not ours. */
	epoch_name(name, sizeof(name), epoch);
	remove_tree(l->dirfd, name);
	ret = open_epoch(l, epoch, fds);
	if (ret)
		return ret;
	st.epoch = epoch;
	ret = layer_set_state(l, &st);
	if (ret) {
		for (int i = 0; i < 3; i++)
			close(fds[i]);
		return ret;
	}
	close_epoch(l);
	return use_epoch(l, fds);
}

/* Remove dir name below parent and everything in it. */
static void remove_tree(int parent, const char *name)
{
	int fd = openat(parent, name,
			O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	DIR *d = fd < 0 ? NULL : fdopendir(fd);
	struct dirent *de;

	if (fd >= 0 && !d)
		close(fd);
	while (d && (de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (unlinkat(dirfd(d), de->d_name, 0) && errno == EISDIR)
			remove_tree(dirfd(d), de->d_name);
	}
	if (d)
		closedir(d);
	unlinkat(parent, name, AT_REMOVEDIR);
}

/* The epoch a directory name E<n> gives, or false for other names. */
static bool epoch_of(const char *name, uint64_t *epoch)
{
	char *end;

	if (name[0] != 'E' || name[1] < '0' || name[1] > '9')
		return false;
	errno = 0;
	*epoch = strtoull(name + 1, &end, 10);
	return !errno && *end == '\0';
}

void layer_gc(struct layer *l, uint64_t below)
{
	/* A description of its own: another thread may read the layer's. */
	int fd = openat(l->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd < 0 ? NULL : fdopendir(fd);
	char names[64][32];
	struct dirent *de;
	uint64_t epoch;
	int n = 0;

	if (fd >= 0 && !d)
		close(fd);
	while (d && (de = readdir(d)) && n < 64)
		if (epoch_of(de->d_name, &epoch) && epoch < below &&
		    strlen(de->d_name) < sizeof(names[0]))
			snprintf(names[n++], sizeof(names[0]), "%s",
				 de->d_name);
	if (d)
		closedir(d);
	for (int i = 0; i < n; i++)
		remove_tree(l->dirfd, names[i]);
}

/* ---- objects ---- */

/* Room for object id in l->obj. */
static int room_for(struct layer *l, uint64_t id)
{
	static const struct lobj none = {.data = -1, .map = -1};
	uint64_t cap = 2 * id + 16;
	struct lobj *grown;

	if (id < l->cap)
		return 0;
	grown = realloc(l->obj, cap * sizeof(*grown));
	if (!grown)
		return -ENOMEM;
	for (uint64_t i = l->cap; i < cap; i++)
		grown[i] = none;
	l->obj = grown;
	l->cap = cap;
	return 0;
}

/* Object id, its files open and its map read; NULL with errno set. */
static struct lobj *object(struct layer *l, uint64_t id, bool create)
{
	char name[32];
	struct lobj *o;
	struct stat st;
	int flags = O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0);

	if (!id || id >= l->next) {
		errno = ENOENT;
		return NULL;
	}
	if (room_for(l, id)) {
		errno = ENOMEM;
		return NULL;
	}
	o = &l->obj[id];
	if (o->data >= 0)
		return o;
	snprintf(name, sizeof(name), "%" PRIu64, id);
	o->data = openat(l->ofd, name, flags, 0644);
	snprintf(name, sizeof(name), "%" PRIu64 ".map", id);
	o->map = o->data < 0 ? -1 : openat(l->ofd, name, flags, 0644);
	if (o->map < 0 || fstat(o->map, &st))
		goto fail;
	o->nbytes = (uint64_t)st.st_size;
	o->bits = calloc(1, o->nbytes + 1);
	if (!o->bits ||
	    pread(o->map, o->bits, o->nbytes, 0) != (ssize_t)o->nbytes)
		goto fail;
	for (uint64_t b = 0; b < o->nbytes; b++)
		o->held += (uint64_t)__builtin_popcount(o->bits[b]);
	l->held += o->held;
	return o;
fail:
	if (o->data >= 0)
		close(o->data);
	if (o->map >= 0)
		close(o->map);
	free(o->bits);
	*o = (struct lobj){.data = -1, .map = -1};
	return NULL;
}

int layer_obj_new(struct layer *l, uint64_t *id)
{
	uint64_t next = l->next++;

	if (!object(l, next, true))
		return -errno;
	/* The files' names must survive a crash before an entry names them. */
	if (l->sync && fsync(l->ofd))
		return -errno;
	*id = next;
	return 0;
}

bool layer_obj_has(const struct layer *l, uint64_t id, uint64_t k)
{
	const struct lobj *o;

	if (!id || id >= l->next)
		return false;
	o = id < l->cap ? &l->obj[id] : NULL;
	if (!o || o->data < 0)
		o = object((struct layer *)l, id, false);
	return o && k / 8 < o->nbytes && (o->bits[k / 8] & (1u << (k % 8)));
}

int layer_obj_read(struct layer *l, uint64_t id, void *buf, size_t len,
		   off_t off)
{
	struct lobj *o = object(l, id, false);
	size_t done = 0;

	if (!o)
		return -errno;
	while (done < len) {
		ssize_t r = pread(o->data, (char *)buf + done, len - done,
				  off + (off_t)done);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0) { /* past its end: a hole */
			memset((char *)buf + done, 0, len - done);
			break;
		}
		done += (size_t)r;
	}
	return 0;
}

int layer_obj_write(struct layer *l, uint64_t id, const void *buf, size_t len,
		    off_t off)
{
	struct lobj *o = object(l, id, false);
	size_t done = 0;

	if (!o)
		return -errno;
	while (done < len) {
		ssize_t w = pwrite(o->data, (const char *)buf + done,
				   len - done, off + (off_t)done);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		done += (size_t)w;
	}
	return 0;
}

int layer_obj_zero(struct layer *l, uint64_t id, off_t off, size_t len)
{
	struct lobj *o = object(l, id, false);
	struct stat st;

	if (!o || fstat(o->data, &st))
		return -errno;
	if (off >= st.st_size)
		return 0; /* past the end: already zeros */
	if (fallocate(o->data, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off,
		      (off_t)len) == 0)
		return 0;
	{
		char *zeros = calloc(1, len);
		int ret = zeros ? layer_obj_write(l, id, zeros, len, off)
				: -ENOMEM;

		free(zeros);
		return ret;
	}
}

int layer_obj_sync(struct layer *l, uint64_t id)
{
	struct lobj *o = object(l, id, false);

	if (!o)
		return -errno;
	return l->sync && fdatasync(o->data) ? -errno : 0;
}

/* Set bits [first, first + n) of o; the map bytes they fall in, in *lo
 * and *hi, for writing back. */
static int set_bits(struct lobj *o, uint64_t first, uint64_t n, uint64_t *lo,
		    uint64_t *hi, uint64_t *added)
{
	uint64_t need = (first + n + 7) / 8;

	if (need > o->nbytes) {
		uint8_t *grown = realloc(o->bits, need);

		if (!grown)
			return -ENOMEM;
		memset(grown + o->nbytes, 0, need - o->nbytes);
		o->bits = grown;
		o->nbytes = need;
	}
	*added = 0;
	for (uint64_t k = first; k < first + n; k++) {
		if (o->bits[k / 8] & (1u << (k % 8)))
			continue;
		o->bits[k / 8] |= (uint8_t)(1u << (k % 8));
		(*added)++;
	}
	*lo = first / 8;
	*hi = need;
	return 0;
}

int layer_obj_hold(struct layer *l, uint64_t id, uint64_t first, uint64_t n)
{
	struct lobj *o = object(l, id, false);
	uint64_t lo, hi, added;
	ssize_t w;
	int ret;

	if (!o)
		return -errno;
	if (l->sync && fdatasync(o->data))
		return -errno;
	ret = set_bits(o, first, n, &lo, &hi, &added);
	if (ret)
		return ret;
	w = pwrite(o->map, o->bits + lo, hi - lo, (off_t)lo);
	if (w != (ssize_t)(hi - lo))
		return w < 0 ? -errno : -EIO;
	if (l->sync && fdatasync(o->map))
		return -errno;
	o->held += added;
	l->held += added;
	return 0;
}

uint64_t layer_clusters(const struct layer *l)
{
	return l->held;
}

unsigned int layer_cluster_bytes(const struct layer *l)
{
	return l->cluster;
}

const char *layer_dir(const struct layer *l)
{
	return l->dir;
}

/* ---- opening and closing ---- */

static struct layer *layer_new(const char *dir, const char *role,
			       unsigned int cluster, bool sync)
{
	struct layer *l = calloc(1, sizeof(*l));

	if (!l)
		return NULL;
	l->dir = strdup(dir);
	l->dirfd = l->epfd = l->ofd = l->journal = -1;
	snprintf(l->role, sizeof(l->role), "%s", role);
	l->cluster = cluster;
	l->sync = sync;
	l->next = 1;
	if (!l->dir) {
		free(l);
		return NULL;
	}
	return l;
}

int layer_open(const char *dir, const char *role, unsigned int cluster,
	       bool sync, struct layer **out, char *err, size_t errlen)
{
	struct layer *l = layer_new(dir, role, cluster, sync);
	int fds[3], ret;

	if (!l)
		return fail(err, errlen, -ENOMEM, "out of memory");
	l->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	ret = l->dirfd < 0 ? fail(err, errlen, -errno, "%s: %s", dir,
				  strerror(errno))
			   : load_state(l, err, errlen);
	if (!ret) {
		ret = open_epoch(l, l->st.epoch, fds);
		if (ret)
			fail(err, errlen, ret, "%s: %s", dir, strerror(-ret));
	}
	if (!ret && (ret = use_epoch(l, fds)))
		fail(err, errlen, ret, "%s: its journal cannot be read: %s",
		     dir, strerror(-ret));
	if (ret) {
		layer_close(l, false);
		return ret;
	}
	*out = l;
	return 0;
}

void layer_close(struct layer *l, bool clean)
{
	struct layer_state st;

	if (!l)
		return;
	if (l->dirfd >= 0 && l->st.clean != clean) {
		st = l->st;
		st.clean = clean;
		layer_set_state(l, &st);
	}
	close_epoch(l);
	if (l->dirfd >= 0)
		close(l->dirfd);
	free(l->e);
	free(l->dir);
	free(l);
}
