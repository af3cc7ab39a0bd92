/*
 * The copies' nodes and names: .children, each member's directory under
 * it, and the entries the kernel looked up beneath them. A node is kept
 * once per entry of a child (its device and inode), so a name looked up
 * again, or a hard link, gets the same id, as on any file system.
 */
#define _GNU_SOURCE
#include "copies/copies_i.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

bool copies_is_top(uint64_t parent, const char *name)
{
	return parent == TREE_ROOT_INO && strcmp(name, TREE_CHILDREN_DIR) == 0;
}

int copies_new(struct child_set *set, struct pool *pool,
	       const struct watchdog *wd, uid_t owner, gid_t group,
	       struct copies **out)
{
	struct copies *cp = calloc(1, sizeof(*cp));

	if (!cp)
		return -ENOMEM;
	cp->set = set;
	cp->pool = pool;
	cp->wd = wd;
	cp->owner = owner;
	cp->group = group;
	clock_gettime(CLOCK_REALTIME, &cp->made);
	pthread_mutex_init(&cp->lock, NULL);
	*out = cp;
	return 0;
}

static void node_free(struct cnode *n)
{
	if (n->fd >= 0)
		close(n->fd);
	free(n->cname);
	free(n);
}

void copies_free(struct copies *cp)
{
	if (!cp)
		return;
	for (size_t i = 0; i < COPIES_HASH; i++)
		while (cp->hash[i]) {
			struct cnode *n = cp->hash[i];

			cp->hash[i] = n->next;
			node_free(n);
		}
	pthread_mutex_destroy(&cp->lock);
	free(cp);
}

ino_t copies_ino(int slot, ino_t ino)
{
	const uint64_t low = (1ULL << 56) - 1;

	return ((uint64_t)(slot + 1) << 56) | ((uint64_t)ino & low);
}

struct cnode *copies_node(uint64_t ino)
{
	return (struct cnode *)(uintptr_t)(ino & ~COPIES_INO_TAG);
}

static uint64_t node_id(const struct cnode *n)
{
	return (uint64_t)(uintptr_t)n | COPIES_INO_TAG;
}

static size_t bucket(const struct child *child, dev_t dev, ino_t ino)
{
	uint64_t h = (uint64_t)(uintptr_t)child ^ (uint64_t)dev * 31 ^
		     (uint64_t)ino * 0x9e3779b97f4a7c15ULL;

	return (size_t)(h >> 24) % COPIES_HASH;
}

/*
 * The node of the entry n describes, with one more lookup: the one
 * already known, or n itself, which the table then owns. Returns the
 * node; n is freed if another one was found.
 */
static struct cnode *node_adopt(struct copies *cp, struct cnode *n)
{
	size_t b = bucket(n->child, n->dev, n->ino);
	struct cnode *found;

	pthread_mutex_lock(&cp->lock);
	for (found = cp->hash[b]; found; found = found->next)
		if (found->child == n->child && found->dev == n->dev &&
		    found->ino == n->ino && found->type == n->type &&
		    strcmp(found->cname, n->cname) == 0)
			break;
	if (!found) {
		n->next = cp->hash[b];
		cp->hash[b] = n;
		found = n;
		n = NULL;
	}
	found->lookups++;
	pthread_mutex_unlock(&cp->lock);
	if (n)
		node_free(n);
	return found;
}

void copies_forget(struct copies *cp, uint64_t ino, uint64_t nlookup)
{
	struct cnode *n = copies_node(ino), **p;

	if (ino == COPIES_TOP_INO)
		return;
	pthread_mutex_lock(&cp->lock);
	n->lookups -= nlookup < n->lookups ? nlookup : n->lookups;
	if (n->lookups == 0) {
		p = &cp->hash[bucket(n->child, n->dev, n->ino)];
		while (*p != n)
			p = &(*p)->next;
		*p = n->next;
	} else {
		n = NULL;
	}
	pthread_mutex_unlock(&cp->lock);
	if (n)
		node_free(n);
}

static bool plain_name(const char *name)
{
	return *name && !strchr(name, '/') && strcmp(name, ".") != 0 &&
	       strcmp(name, "..") != 0;
}

/* A child named by its path (the default) shows as the path's last
 * component; a name already shown gets ~SLOT after it. */
int copies_names(struct child_set *set, struct child **members,
		 char names[][NAME_MAX + 1])
{
	int n = children_members(set, members);

	for (int i = 0; i < n; i++) {
		const char *name = child_name(members[i]);
		const char *slash = strrchr(child_path(members[i]), '/');

		names[i][0] = '\0';
		if (child_kind(members[i]) != CHILD_DATA)
			continue;
		if (!plain_name(name))
			name = slash && plain_name(slash + 1) ? slash + 1 : "";
		snprintf(names[i], NAME_MAX + 1, "%s", name);
		for (int j = 0; j < i && names[i][0]; j++)
			if (strcmp(names[j], names[i]) == 0) {
				snprintf(names[i], NAME_MAX + 1, "%.200s~%d",
					 name, child_slot(members[i]));
				break;
			}
	}
	return n;
}

/* The view name's member: its name (the caller frees it), or NULL. */
static char *member_named(struct child_set *set, const char *name)
{
	struct child *members[CHILDREN_MAX];
	char names[CHILDREN_MAX][NAME_MAX + 1];
	int n = copies_names(set, members, names);
	char *found = NULL;

	for (int i = 0; i < n; i++) {
		if (!found && names[i][0] && strcmp(names[i], name) == 0)
			found = strdup(child_name(members[i]));
		child_put(members[i]);
	}
	return found;
}

/* The attributes as the child has them, but for the inode number: a
 * child's root is number 0 of its slot, as .children lists it. */
static void attr_of(const struct cnode *n, const struct stat *st,
		    struct stat *out)
{
	*out = *st;
	out->st_ino = copies_ino(n->slot, n->root ? 0 : st->st_ino);
}

static void entry_of(const struct cnode *n, const struct stat *st,
		     struct tree_entry *e)
{
	e->ino = node_id(n);
	attr_of(n, st, &e->attr);
}

/* A node for what a lookup call found (taking its handle). */
static int node_from(struct copies *cp, const struct child *child,
		     const char *cname, struct call *c, struct tree_entry *e)
{
	struct cnode *n = calloc(1, sizeof(*n));

	if (!n || !(n->cname = strdup(cname))) {
		free(n);
		return -ENOMEM;
	}
	n->child = child;
	n->slot = child_slot(child);
	n->root = c->kind == CALL_STAT;
	n->dev = c->st.st_dev;
	n->ino = c->st.st_ino;
	n->type = c->st.st_mode & S_IFMT;
	n->fd = c->newfd;
	c->newfd = -1;
	entry_of(node_adopt(cp, n), &c->st, e);
	return 0;
}

/* MOUNTPOINT/.children/NAME: a member's root. A member removed in
 * between is not there. */
static int lookup_member(struct copies *cp, const char *name,
			 struct tree_entry *e)
{
	char *cname = member_named(cp->set, name);
	const struct child *child = NULL;
	struct child_request *rq;
	int ret = -ENOENT;

	if (!cname)
		return ret;
	rq = call_new(cp, cname, &child, &ret);
	if (rq) {
		((struct call *)rq->arg)->kind = CALL_STAT;
		ret = call_run(cp, rq);
		if (!ret)
			ret = node_from(cp, child, cname, rq->arg, e);
		child_request_put(rq);
	}
	free(cname);
	return ret == -ESTALE ? -ENOENT : ret;
}

static int lookup_in(struct copies *cp, struct cnode *p, const char *name,
		     struct tree_entry *e)
{
	struct child_request *rq;
	struct call *c;
	int ret;

	if (!S_ISDIR(p->type))
		return -ENOTDIR;
	if (!plain_name(name) || strlen(name) > NAME_MAX ||
	    (p->root && tree_reserved_name(TREE_ROOT_INO, name)))
		return -ENOENT;
	rq = node_call(cp, p, CALL_LOOKUP, &ret);
	if (!rq)
		return ret;
	c = rq->arg;
	snprintf(c->name, sizeof(c->name), "%s", name);
	ret = call_run(cp, rq);
	if (!ret)
		ret = node_from(cp, p->child, p->cname, c, e);
	child_request_put(rq);
	return ret;
}

static void top_attr(const struct copies *cp, struct stat *st)
{
	*st = (struct stat){0};
	st->st_ino = copies_ino(CHILDREN_MAX, 0);
	st->st_mode = S_IFDIR | 0555;
	st->st_nlink = 2;
	st->st_uid = cp->owner;
	st->st_gid = cp->group;
	st->st_blksize = 4096;
	st->st_mtim = st->st_ctim = st->st_atim = cp->made;
}

int copies_lookup(struct copies *cp, uint64_t parent, const char *name,
		  struct tree_entry *e)
{
	if (copies_is_top(parent, name)) {
		e->ino = COPIES_TOP_INO;
		top_attr(cp, &e->attr);
		return 0;
	}
	if (parent == COPIES_TOP_INO)
		return lookup_member(cp, name, e);
	return lookup_in(cp, copies_node(parent), name, e);
}

int copies_getattr(struct copies *cp, uint64_t ino, struct stat *st)
{
	struct cnode *n = copies_node(ino);
	struct child_request *rq;
	int ret;

	if (ino == COPIES_TOP_INO) {
		top_attr(cp, st);
		return 0;
	}
	rq = node_call(cp, n, CALL_STAT, &ret);
	if (!rq)
		return ret;
	ret = call_run(cp, rq);
	if (!ret)
		attr_of(n, &((struct call *)rq->arg)->st, st);
	child_request_put(rq);
	return ret;
}

void copies_status(struct child_set *set, struct json_object *children)
{
	struct child *members[CHILDREN_MAX];
	char names[CHILDREN_MAX][NAME_MAX + 1];
	int n = copies_names(set, members, names);
	size_t len = json_object_array_length(children);

	for (size_t k = 0; k < len; k++) {
		struct json_object *o = json_object_array_get_idx(children, k);
		struct json_object *name, *view = NULL;
		char path[NAME_MAX + 32];

		if (!json_object_object_get_ex(o, "name", &name))
			continue;
		for (int i = 0; i < n && !view; i++)
			if (names[i][0] &&
			    strcmp(child_name(members[i]),
				   json_object_get_string(name)) == 0) {
				snprintf(path, sizeof(path), "%s/%.255s",
					 TREE_CHILDREN_DIR, names[i]);
				view = json_object_new_string(path);
			}
		json_object_object_add(o, "view", view);
	}
	for (int i = 0; i < n; i++)
		child_put(members[i]);
}
