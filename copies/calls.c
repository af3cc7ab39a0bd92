/*
 * The calls to one child, each a struct child_request of one part under
 * a view of that child alone (children_view_one): bounded by io-timeout,
 * drained by a removal, its late part reported to the watchdog as any
 * request's. The part works only on its own argument (struct call): a
 * copy of the handle and buffers it owns, so a part that outlives the
 * caller's wait touches nothing the caller frees.
 */
#define _GNU_SOURCE
#include "copies/copies_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "tree/tree.h"

void copies_dir_free(struct copies_dir *d)
{
	for (size_t i = 0; i < d->n; i++)
		free(d->entry[i].name);
	free(d->entry);
	*d = (struct copies_dir){0};
}

static void call_release(struct child_request *rq)
{
	struct call *c = rq->arg;

	if (c->fd >= 0)
		close(c->fd);
	if (c->newfd >= 0)
		close(c->newfd);
	free(c->buf);
	copies_dir_free(&c->list);
}

struct child_request *call_new(struct copies *cp, const char *cname,
			       const struct child **child, int *err)
{
	const struct child_view *v = children_view_one(cp->set, cname);
	struct child_request *rq = NULL;
	struct call *c;

	*err = -ESTALE;
	if (v && (!*child || v->child[0] == *child)) {
		*err = -ENOMEM;
		rq = child_request_new(v, sizeof(*c), call_release);
	}
	if (rq) {
		*child = v->child[0];
		c = rq->arg;
		c->fd = c->newfd = -1;
	}
	children_view_put(v);
	return rq;
}

/* The handle the call works on: its own copy, or the child's root. */
static int call_fd(const struct child_request *rq)
{
	const struct call *c = rq->arg;

	return c->fd >= 0 ? c->fd : child_root_fd(rq->view->child[0]);
}

static int body_lookup(struct call *c, int fd)
{
	int ret;

	c->newfd = openat(fd, c->name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (c->newfd < 0)
		return -errno;
	ret = child_result(fstat(c->newfd, &c->st));
	if (ret) {
		close(c->newfd);
		c->newfd = -1;
	}
	return ret;
}

/* A value: a link's target, an attribute or the list of them. A
 * symlink's attributes through /proc would be the /proc link's own. */
static int body_value(struct call *c, int fd)
{
	char proc[64];

	if (c->size && !(c->buf = malloc(c->size)))
		return -ENOMEM;
	if (c->kind == CALL_READLINK)
		c->len = readlinkat(fd, "", c->buf, c->size);
	else if (c->link)
		c->len = c->kind == CALL_LISTXATTR ? 0 : (errno = ENODATA, -1);
	else {
		child_proc_path(fd, proc);
		c->len = c->kind == CALL_LISTXATTR
				 ? listxattr(proc, c->buf, c->size)
				 : getxattr(proc, c->name, c->buf, c->size);
	}
	return c->len < 0 ? -errno : 0;
}

/* The file itself, for reading: the kernel resolved its name, and the
 * /proc link is one O_NOFOLLOW would refuse. */
static int body_open(struct call *c, int fd)
{
	char proc[64];

	child_proc_path(fd, proc);
	c->newfd = open(proc, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	return c->newfd < 0 ? -errno : 0;
}

static int body_read(struct call *c, int fd)
{
	if (c->size && !(c->buf = malloc(c->size)))
		return -ENOMEM;
	c->len = child_rw_full(fd, false, false, c->buf, c->size, c->off);
	return c->len < 0 ? (int)c->len : 0;
}

static int body_list(struct call *c, int fd)
{
	int dfd = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC), ret = 0;
	struct dirent *de;
	DIR *d;

	if (dfd < 0 || !(d = fdopendir(dfd))) {
		ret = -errno;
		if (dfd >= 0)
			close(dfd);
		return ret;
	}
	errno = 0;
	while (!ret && (de = readdir(d))) {
		struct copies_entry *e;

		if (c->root && tree_reserved_name(TREE_ROOT_INO, de->d_name))
			continue;
		if (c->list.n == c->list.cap) {
			size_t cap = c->list.cap ? 2 * c->list.cap : 32;

			e = realloc(c->list.entry, cap * sizeof(*e));
			if (!e) {
				ret = -ENOMEM;
				break;
			}
			c->list.entry = e;
			c->list.cap = cap;
		}
		e = &c->list.entry[c->list.n];
		*e = (struct copies_entry){.name = strdup(de->d_name),
					   .type = DTTOIF(de->d_type),
					   .ino = de->d_ino};
		ret = e->name ? 0 : -ENOMEM;
		c->list.n += e->name != NULL;
	}
	if (!ret && errno)
		ret = -errno;
	closedir(d);
	return ret;
}

static int call_body(struct child_request *rq, int i)
{
	struct call *c = rq->arg;
	int fd = call_fd(rq);

	(void)i;
	switch (c->kind) {
	case CALL_STAT:
		return child_result(fstat(fd, &c->st));
	case CALL_LOOKUP:
		return body_lookup(c, fd);
	case CALL_READLINK:
	case CALL_GETXATTR:
	case CALL_LISTXATTR:
		return body_value(c, fd);
	case CALL_OPEN:
		return body_open(c, fd);
	case CALL_READ:
		return body_read(c, fd);
	case CALL_LSEEK:
		c->pos = lseek(fd, c->off, c->whence);
		return c->pos < 0 ? -errno : 0;
	case CALL_LIST:
		return body_list(c, fd);
	case CALL_STATFS:
		return child_result(fstatvfs(fd, &c->vfs));
	}
	return -EINVAL;
}

int call_run(struct copies *cp, struct child_request *rq)
{
	child_request_run(rq, cp->pool, cp->wd, call_body);
	if (rq->late)
		watchdog_report(cp->wd, rq);
	return rq->ret[0];
}

struct child_request *node_call(struct copies *cp, const struct cnode *n,
				enum call_kind kind, int *err)
{
	const struct child *child = n->child;
	struct child_request *rq = call_new(cp, n->cname, &child, err);
	struct call *c;

	if (!rq)
		return NULL;
	c = rq->arg;
	c->kind = kind;
	c->link = S_ISLNK(n->type);
	c->root = n->root;
	if (n->fd >= 0 && (c->fd = dup(n->fd)) < 0) {
		*err = -errno;
		child_request_put(rq);
		return NULL;
	}
	return rq;
}
