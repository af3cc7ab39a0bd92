/*
 * What the copies serve beyond names: links, attributes' values,
 * listings, statfs, and open files read from the child as they are.
 */
#define _GNU_SOURCE
#include "copies/copies_i.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A value call (link, attribute, list of attributes) of size bytes;
 * the answer's length, copied to buf when size > 0. */
static ssize_t value_call(struct copies *cp, uint64_t ino, enum call_kind kind,
			  const char *name, void *buf, size_t size)
{
	struct child_request *rq;
	struct call *c;
	ssize_t len;
	int ret;

	rq = node_call(cp, copies_node(ino), kind, &ret);
	if (!rq)
		return ret;
	c = rq->arg;
	c->size = size;
	if (name)
		snprintf(c->name, sizeof(c->name), "%s", name);
	len = call_run(cp, rq);
	if (!len)
		len = c->len;
	if (len > 0 && size)
		memcpy(buf, c->buf, (size_t)len);
	child_request_put(rq);
	return len;
}

ssize_t copies_readlink(struct copies *cp, uint64_t ino, char *buf, size_t size)
{
	if (ino == COPIES_TOP_INO || !S_ISLNK(copies_node(ino)->type))
		return -EINVAL;
	return value_call(cp, ino, CALL_READLINK, NULL, buf, size);
}

ssize_t copies_getxattr(struct copies *cp, uint64_t ino, const char *name,
			void *buf, size_t size)
{
	if (ino == COPIES_TOP_INO)
		return -ENODATA;
	if (strlen(name) > NAME_MAX)
		return -ERANGE;
	return value_call(cp, ino, CALL_GETXATTR, name, buf, size);
}

ssize_t copies_listxattr(struct copies *cp, uint64_t ino, char *buf,
			 size_t size)
{
	if (ino == COPIES_TOP_INO)
		return 0;
	return value_call(cp, ino, CALL_LISTXATTR, NULL, buf, size);
}

int copies_statfs(struct copies *cp, uint64_t ino, struct statvfs *st)
{
	struct child_request *rq;
	int ret;

	rq = node_call(cp, copies_node(ino), CALL_STATFS, &ret);
	if (!rq)
		return ret;
	ret = call_run(cp, rq);
	if (!ret)
		*st = ((struct call *)rq->arg)->vfs;
	child_request_put(rq);
	return ret;
}

int copies_open(struct copies *cp, uint64_t ino, int flags,
		struct copies_file **out)
{
	struct cnode *n = copies_node(ino);
	struct copies_file *f = NULL;
	struct child_request *rq;
	struct call *c;
	int ret;

	if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC))
		return -EROFS;
	if (ino == COPIES_TOP_INO || !S_ISREG(n->type))
		return ino == COPIES_TOP_INO || S_ISDIR(n->type) ? -EISDIR
								 : -ENXIO;
	rq = node_call(cp, n, CALL_OPEN, &ret);
	if (!rq)
		return ret;
	c = rq->arg;
	ret = call_run(cp, rq);
	if (!ret &&
	    (!(f = calloc(1, sizeof(*f))) || !(f->cname = strdup(n->cname))))
		ret = -ENOMEM;
	if (!ret) {
		f->fd = c->newfd;
		c->newfd = -1;
		f->child = n->child;
		*out = f;
		f = NULL;
	}
	if (f)
		free(f);
	child_request_put(rq);
	return ret;
}

void copies_release(struct copies_file *f)
{
	if (!f)
		return;
	close(f->fd);
	free(f->cname);
	free(f);
}

/* A call on an open file, with its handle copied. */
static struct child_request *file_call(struct copies *cp,
				       const struct copies_file *f,
				       enum call_kind kind, int *err)
{
	const struct child *child = f->child;
	struct child_request *rq = call_new(cp, f->cname, &child, err);
	struct call *c;

	if (!rq)
		return NULL;
	c = rq->arg;
	c->kind = kind;
	c->fd = dup(f->fd);
	if (c->fd < 0) {
		*err = -errno;
		child_request_put(rq);
		return NULL;
	}
	return rq;
}

ssize_t copies_read(struct copies *cp, struct copies_file *f, void *buf,
		    size_t size, off_t off)
{
	struct child_request *rq;
	struct call *c;
	ssize_t ret;
	int err;

	rq = file_call(cp, f, CALL_READ, &err);
	if (!rq)
		return err;
	c = rq->arg;
	c->size = size;
	c->off = off;
	err = call_run(cp, rq);
	ret = err ? err : c->len;
	if (ret > 0)
		memcpy(buf, c->buf, (size_t)ret);
	child_request_put(rq);
	return ret;
}

off_t copies_lseek(struct copies *cp, struct copies_file *f, off_t off,
		   int whence)
{
	struct child_request *rq;
	struct call *c;
	off_t ret;
	int err;

	rq = file_call(cp, f, CALL_LSEEK, &err);
	if (!rq)
		return err;
	c = rq->arg;
	c->off = off;
	c->whence = whence;
	err = call_run(cp, rq);
	ret = err ? err : c->pos;
	child_request_put(rq);
	return ret;
}

static int dir_add(struct copies_dir *d, const char *name, ino_t ino)
{
	struct copies_entry *e = realloc(d->entry, (d->n + 1) * sizeof(*e));

	if (!e)
		return -ENOMEM;
	d->entry = e;
	e = &d->entry[d->n];
	*e = (struct copies_entry){
		.name = strdup(name), .type = S_IFDIR, .ino = ino};
	if (!e->name)
		return -ENOMEM;
	d->n++;
	return 0;
}

/* .children: one directory for each data member, each numbered as its
 * root is (copies.c's attr_of). */
static int list_top(struct copies *cp, struct copies_dir *d)
{
	struct child *members[CHILDREN_MAX];
	char names[CHILDREN_MAX][NAME_MAX + 1];
	int n = copies_names(cp->set, members, names), ret;

	ret = dir_add(d, ".", copies_ino(CHILDREN_MAX, 0));
	if (!ret)
		ret = dir_add(d, "..", TREE_ROOT_INO);
	for (int i = 0; i < n; i++) {
		if (!ret && names[i][0])
			ret = dir_add(d, names[i],
				      copies_ino(child_slot(members[i]), 0));
		child_put(members[i]);
	}
	return ret;
}

int copies_opendir(struct copies *cp, uint64_t ino, struct copies_dir **out)
{
	struct copies_dir *d = calloc(1, sizeof(*d));
	struct child_request *rq = NULL;
	struct cnode *n = copies_node(ino);
	int ret;

	if (!d)
		return -ENOMEM;
	if (ino == COPIES_TOP_INO) {
		ret = list_top(cp, d);
		goto out;
	}
	ret = S_ISDIR(n->type) ? 0 : -ENOTDIR;
	if (!ret)
		rq = node_call(cp, n, CALL_LIST, &ret);
	if (rq)
		ret = call_run(cp, rq);
	if (!ret) {
		*d = ((struct call *)rq->arg)->list;
		((struct call *)rq->arg)->list = (struct copies_dir){0};
		for (size_t i = 0; i < d->n; i++)
			d->entry[i].ino = copies_ino(n->slot, d->entry[i].ino);
	}
out:
	child_request_put(rq);
	if (ret) {
		copies_releasedir(d);
		return ret;
	}
	*out = d;
	return 0;
}

bool copies_dir_entry(const void *dir, size_t i, const char **name,
		      struct stat *st)
{
	const struct copies_dir *d = dir;

	if (i >= d->n)
		return false;
	*name = d->entry[i].name;
	*st = (struct stat){0};
	st->st_mode = d->entry[i].type;
	st->st_ino = d->entry[i].ino;
	return true;
}

void copies_releasedir(struct copies_dir *d)
{
	if (!d)
		return;
	copies_dir_free(d);
	free(d);
}
