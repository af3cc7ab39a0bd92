/*
 * The quarantine at runtime (persist.h): what each child holds, in
 * memory for the status and `quarantine list`, and the bounded reads and
 * writes of its files (qfile.c).
 *
 * The lock guards the memory only; no file is touched under it. A save
 * takes its id and its room (dropping the oldest entries) under the
 * lock, writes outside it, and enters the entry once it is on the disk.
 */
#define _GNU_SOURCE
#include "persist/persist_i.h"

#include <errno.h>
#include <json-c/json.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "events/events.h"

/* What one child holds, oldest first. */
struct qchild {
	struct child *child; /* a reference, or NULL: slot unused */
	struct qfile_entry *e;
	size_t n;
	uint64_t bytes;	   /* saved */
	uint64_t reserved; /* room taken by saves under way */
};

struct quarantine {
	pthread_mutex_t lock;
	unsigned long long limit;
	struct event_log *log;
	struct pool *pool;
	struct watchdog *wd;
	uint64_t next_id; /* guarded by lock */
	struct qchild slot[CHILDREN_MAX];
};

int quarantine_new(unsigned long long limit, struct event_log *log,
		   struct pool *pool, struct watchdog *wd,
		   struct quarantine **out)
{
	struct quarantine *q = calloc(1, sizeof(*q));

	if (!q)
		return -ENOMEM;
	pthread_mutex_init(&q->lock, NULL);
	q->limit = limit;
	q->log = log;
	q->pool = pool;
	q->wd = wd;
	q->next_id = 1;
	*out = q;
	return 0;
}

static void qchild_clear(struct qchild *s)
{
	for (size_t k = 0; k < s->n; k++)
		qfile_entry_clear(&s->e[k]);
	free(s->e);
	if (s->child)
		child_put(s->child);
	memset(s, 0, sizeof(*s));
}

void quarantine_free(struct quarantine *q)
{
	if (!q)
		return;
	for (int i = 0; i < CHILDREN_MAX; i++)
		qchild_clear(&q->slot[i]);
	pthread_mutex_destroy(&q->lock);
	free(q);
}

/* ---- bounded file operations ---- */

enum qop { Q_SAVE, Q_SCAN, Q_READ, Q_REMOVE };

/* One operation on one child of a view; a part given up on at io-timeout
 * may still use it, so the request owns it. */
struct qio {
	enum qop op;
	int only; /* the view index acted on */
	uint64_t id;
	char *header;
	void *bytes;
	size_t len;
	uint64_t *ids; /* to remove (a save: first) */
	size_t nids;
	struct qfile_entry *found; /* a scan's */
	size_t nfound;
	struct qfile_entry entry; /* a read's */
};

static int qio_body(struct child_request *rq, int i)
{
	struct qio *io = rq->arg;
	int root = child_root_fd(rq->view->child[i]), ret;

	if (i != io->only)
		return 0;
	switch (io->op) {
	case Q_SAVE:
		qfile_remove(root, io->ids, io->nids);
		return qfile_write(root, io->id, io->header, io->bytes,
				   io->len);
	case Q_SCAN:
		ret = qfile_scan(root, &io->found, &io->nfound);
		return ret == -ENOENT ? 0 : ret;
	case Q_READ:
		ret = qfile_read(root, io->id, &io->entry, &io->bytes);
		if (!ret)
			io->len = io->entry.len;
		return ret;
	case Q_REMOVE:
		return qfile_remove(root, io->ids, io->nids);
	}
	return -EINVAL;
}

static void qio_release(struct child_request *rq)
{
	struct qio *io = rq->arg;

	free(io->header);
	free(io->bytes);
	free(io->ids);
	for (size_t k = 0; k < io->nfound; k++)
		qfile_entry_clear(&io->found[k]);
	free(io->found);
	qfile_entry_clear(&io->entry);
}

static struct child_request *qio_new(const struct child_view *v, int i,
				     enum qop op)
{
	struct child_request *rq =
		child_request_new(v, sizeof(struct qio), qio_release);

	if (rq) {
		((struct qio *)rq->arg)->op = op;
		((struct qio *)rq->arg)->only = i;
	}
	return rq;
}

/* Run rq, bounded; the child's answer (-ETIMEDOUT when given up on, and
 * the watchdog told: it fails the child). No lock may be held. */
static int qio_run(struct quarantine *q, struct child_request *rq)
{
	int i = ((struct qio *)rq->arg)->only;

	child_request_run(rq, q->pool, q->wd, qio_body);
	if (rq->late)
		watchdog_report(q->wd, rq);
	return rq->ret[i];
}

static int view_index(const struct child_view *v, const struct child *c)
{
	for (int i = 0; i < v->n; i++)
		if (v->child[i] == c)
			return i;
	return -1;
}

/* ---- knowing the children ---- */

static uint64_t sum_bytes(const struct qfile_entry *e, size_t n)
{
	uint64_t bytes = 0;

	for (size_t k = 0; k < n; k++)
		bytes += e[k].len;
	return bytes;
}

/* s now knows c with the entries found (taken over). q->lock held. */
static void qchild_take(struct quarantine *q, struct qchild *s, struct child *c,
			struct qio *io)
{
	/* Saves under way keep their room: a rescan may run beside them. */
	uint64_t reserved = s->child == c ? s->reserved : 0;

	qchild_clear(s);
	child_get(c);
	s->child = c;
	s->reserved = reserved;
	s->e = io->found;
	s->n = io->nfound;
	s->bytes = sum_bytes(s->e, s->n);
	io->found = NULL;
	io->nfound = 0;
	for (size_t k = 0; k < s->n; k++)
		if (s->e[k].id >= q->next_id)
			q->next_id = s->e[k].id + 1;
}

/* Read view v's child i's entries; false when they cannot be read. */
static bool attach_view(struct quarantine *q, const struct child_view *v, int i)
{
	struct child *c = v->child[i];
	struct child_request *rq = qio_new(v, i, Q_SCAN);
	bool ok = rq && qio_run(q, rq) == 0;

	if (ok) {
		pthread_mutex_lock(&q->lock);
		qchild_take(q, &q->slot[child_slot(c)], c, rq->arg);
		pthread_mutex_unlock(&q->lock);
	}
	if (rq)
		child_request_put(rq);
	return ok;
}

void quarantine_attach(struct quarantine *q, struct child_set *set,
		       struct child *c)
{
	const struct child_view *v;
	int i;

	if (!q || child_kind(c) != CHILD_DATA)
		return;
	v = children_view_get(set);
	i = view_index(v, c);
	if (i >= 0)
		attach_view(q, v, i);
	children_view_put(v);
}

void quarantine_detach(struct quarantine *q, struct child *c)
{
	if (!q)
		return;
	pthread_mutex_lock(&q->lock);
	if (q->slot[child_slot(c)].child == c)
		qchild_clear(&q->slot[child_slot(c)]);
	pthread_mutex_unlock(&q->lock);
}

/* ---- saving ---- */

/* The blocks of old where new differs, from the first that does to the
 * last: false when none does. Bytes past new's end are removed by the
 * overwrite (a copy cut to the voted size), so they differ; a block past
 * old's end holds nothing to save. */
static bool differing(const char *old, size_t old_len, const char *new,
		      size_t new_len, size_t *start, size_t *end)
{
	size_t same = old_len < new_len ? old_len : new_len;
	size_t s = 0, e = old_len;

	while (s < old_len) {
		size_t stop = old_len - s < QUARANTINE_BLOCK
				      ? old_len
				      : s + QUARANTINE_BLOCK;

		if (stop > same || memcmp(old + s, new + s, stop - s))
			break;
		s = stop;
	}
	if (s >= old_len)
		return false;
	while (e > s) {
		size_t b = (e - 1) / QUARANTINE_BLOCK * QUARANTINE_BLOCK;

		if (b < s || e > same || memcmp(old + b, new + b, e - b))
			break;
		e = b;
	}
	*start = s;
	*end = e;
	return true;
}

static void sha256_hex(const void *data, size_t len, char out[65])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;

	if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL))
		mdlen = 0;
	for (unsigned int k = 0; k < mdlen && k < 32; k++)
		sprintf(out + 2 * k, "%02x", md[k]);
	out[2 * (mdlen < 32 ? mdlen : 32)] = '\0';
}

/* The oldest entries of s that must go for len more bytes, moved out of
 * s into io->ids. q->lock held. */
static int make_room(struct quarantine *q, struct qchild *s, uint64_t len,
		     struct qio *io, uint64_t *dropped)
{
	size_t k = 0;

	*dropped = s->bytes;
	while (k < s->n && s->bytes + s->reserved + len > q->limit)
		s->bytes -= s->e[k++].len;
	*dropped -= s->bytes;
	if (!k)
		return 0;
	io->ids = malloc(k * sizeof(*io->ids));
	if (!io->ids) {
		s->bytes += sum_bytes(s->e, k);
		return -ENOMEM;
	}
	for (size_t j = 0; j < k; j++) {
		io->ids[j] = s->e[j].id;
		qfile_entry_clear(&s->e[j]);
	}
	io->nids = k;
	memmove(s->e, s->e + k, (s->n - k) * sizeof(*s->e));
	s->n -= k;
	return 0;
}

static void log_dropped(struct quarantine *q, const char *child,
			const struct qio *io, uint64_t bytes)
{
	struct json_object *d = json_object_new_object();
	struct json_object *ids = json_object_new_array();

	for (size_t k = 0; k < io->nids; k++)
		json_object_array_add(
			ids, json_object_new_int64((int64_t)io->ids[k]));
	json_object_object_add(d, "node-name", json_object_new_string(child));
	json_object_object_add(d, "entries",
			       json_object_new_int64((int64_t)io->nids));
	json_object_object_add(d, "bytes",
			       json_object_new_int64((int64_t)bytes));
	json_object_object_add(d, "ids", ids);
	json_object_object_add(d, "limit",
			       json_object_new_int64((int64_t)q->limit));
	event_log_emit(q->log, "QUARANTINE_DROPPED", d);
}

/* Enter e into s in id order. q->lock held. */
static int qchild_insert(struct qchild *s, struct qfile_entry *e)
{
	struct qfile_entry *grown = realloc(s->e, (s->n + 1) * sizeof(*s->e));
	size_t k;

	if (!grown)
		return -ENOMEM;
	s->e = grown;
	for (k = s->n; k > 0 && s->e[k - 1].id >= e->id; k--) {
		if (s->e[k - 1].id == e->id)
			return 0; /* a rescan found it on the disk already */
	}
	for (k = s->n; k > 0 && s->e[k - 1].id > e->id; k--)
		s->e[k] = s->e[k - 1];
	s->e[k] = *e;
	s->n++;
	s->bytes += e->len;
	memset(e, 0, sizeof(*e));
	return 0;
}

/* The entry b makes (its differing blocks), the bytes copied into io:
 * 0, 1 when nothing differs, or -ENOMEM. */
static int save_prepare(const struct quarantine_bytes *b, struct child *c,
			struct qfile_entry *e, struct qio *io)
{
	size_t start, end, won;

	if (!differing(b->old, b->old_len, b->new, b->new_len, &start, &end))
		return 1;
	won = start >= b->new_len ? 0
	      : end < b->new_len  ? end - start
				  : b->new_len - start;
	e->path = strdup(b->path ? b->path : "");
	e->child = strdup(child_name(c));
	e->off = (uint64_t)b->off + start;
	e->len = end - start;
	e->time = (int64_t)time(NULL);
	e->why = b->why;
	sha256_hex(won ? (const char *)b->new + start : "", won, e->digest);
	io->bytes = malloc(e->len);
	if (!e->path || !e->child || !io->bytes)
		return -ENOMEM;
	memcpy(io->bytes, (const char *)b->old + start, e->len);
	io->len = e->len;
	return 0;
}

/* Take e's id and its room in s (dropping the oldest entries): 0, or
 * -EIO when the child's entries could not be read (its ids unknown). */
static int save_reserve(struct quarantine *q, const struct child_view *v, int i,
			struct qfile_entry *e, struct qio *io)
{
	struct child *c = v->child[i];
	struct qchild *s = &q->slot[child_slot(c)];
	uint64_t dropped = 0;
	bool known;
	int ret = -EIO;

	pthread_mutex_lock(&q->lock);
	known = s->child == c;
	pthread_mutex_unlock(&q->lock);
	if (!known && !attach_view(q, v, i))
		return -EIO;
	pthread_mutex_lock(&q->lock);
	if (s->child == c) {
		e->id = io->id = q->next_id++;
		ret = make_room(q, s, e->len, io, &dropped);
		if (!ret)
			s->reserved += e->len;
	}
	pthread_mutex_unlock(&q->lock);
	if (!ret && io->nids)
		log_dropped(q, child_name(c), io, dropped);
	return ret;
}

unsigned long long quarantine_capacity(const struct quarantine *q)
{
	return q ? q->limit : 0;
}

int quarantine_save(struct quarantine *q, const struct child_view *v, int i,
		    const struct quarantine_bytes *b)
{
	struct child *c = v->child[i];
	struct qfile_entry e = {0};
	struct child_request *rq;
	struct qchild *s;
	struct qio *io;
	int ret;

	if (!q || !q->limit)
		return 0;
	s = &q->slot[child_slot(c)];
	rq = qio_new(v, i, Q_SAVE);
	if (!rq)
		return -ENOMEM;
	io = rq->arg;
	ret = save_prepare(b, c, &e, io);
	if (ret == 0 && e.len > q->limit)
		ret = -EFBIG;
	if (ret == 0)
		ret = save_reserve(q, v, i, &e, io);
	if (ret)
		goto out;
	io->header = qfile_header(&e);
	ret = io->header ? qio_run(q, rq) : -ENOMEM;
	pthread_mutex_lock(&q->lock);
	s->reserved -= e.len;
	if (!ret && s->child == c)
		ret = qchild_insert(s, &e);
	pthread_mutex_unlock(&q->lock);
out:
	qfile_entry_clear(&e);
	child_request_put(rq);
	return ret == 1 ? 0 : ret;
}

/* ---- what an operator sees and does ---- */

static struct json_object *entry_json(const struct qfile_entry *e)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "id", json_object_new_int64((int64_t)e->id));
	json_object_object_add(o, "child", json_object_new_string(e->child));
	json_object_object_add(o, "file", json_object_new_string(e->path));
	json_object_object_add(o, "offset",
			       json_object_new_int64((int64_t)e->off));
	json_object_object_add(o, "length",
			       json_object_new_int64((int64_t)e->len));
	json_object_object_add(o, "time", json_object_new_int64(e->time));
	json_object_object_add(
		o, "why", json_object_new_string(quarantine_why_name(e->why)));
	json_object_object_add(o, "digest", json_object_new_string(e->digest));
	return o;
}

static int by_json_id(const void *a, const void *b)
{
	struct json_object *x = *(struct json_object *const *)a;
	struct json_object *y = *(struct json_object *const *)b;
	struct json_object *u, *w;
	int64_t i, j;

	json_object_object_get_ex(x, "id", &u);
	json_object_object_get_ex(y, "id", &w);
	i = json_object_get_int64(u);
	j = json_object_get_int64(w);
	return i < j ? -1 : i > j;
}

struct json_object *quarantine_list(struct quarantine *q)
{
	struct json_object *a = json_object_new_array();

	if (!q)
		return a;
	pthread_mutex_lock(&q->lock);
	for (int i = 0; i < CHILDREN_MAX; i++)
		for (size_t k = 0; k < q->slot[i].n; k++)
			json_object_array_add(a, entry_json(&q->slot[i].e[k]));
	pthread_mutex_unlock(&q->lock);
	json_object_array_sort(a, by_json_id);
	return a;
}

static int by_entry_id(const void *a, const void *b)
{
	const struct qfile_entry *x = *(const struct qfile_entry *const *)a;
	const struct qfile_entry *y = *(const struct qfile_entry *const *)b;

	return x->id < y->id ? -1 : x->id > y->id;
}

struct json_object *quarantine_recent(struct quarantine *q, size_t n)
{
	struct json_object *a = json_object_new_array();
	const struct qfile_entry **pick;
	size_t got = 0;

	if (!q || !n || !(pick = calloc(CHILDREN_MAX * n, sizeof(*pick))))
		return a;
	pthread_mutex_lock(&q->lock);
	/* Each child's newest n hold the set's newest n. */
	for (int i = 0; i < CHILDREN_MAX; i++)
		for (size_t k = q->slot[i].n > n ? q->slot[i].n - n : 0;
		     k < q->slot[i].n; k++)
			pick[got++] = &q->slot[i].e[k];
	qsort(pick, got, sizeof(*pick), by_entry_id);
	for (size_t k = got > n ? got - n : 0; k < got; k++)
		json_object_array_add(a, entry_json(pick[k]));
	pthread_mutex_unlock(&q->lock);
	free(pick);
	return a;
}

/* The slot of the child named name; -1 when none is known. q->lock
 * held. */
static int slot_named(struct quarantine *q, const char *name)
{
	for (int i = 0; i < CHILDREN_MAX; i++)
		if (q->slot[i].child &&
		    strcmp(child_name(q->slot[i].child), name) == 0)
			return i;
	return -1;
}

void quarantine_status(struct quarantine *q, struct json_object *children)
{
	for (size_t k = 0; k < json_object_array_length(children); k++) {
		struct json_object *c = json_object_array_get_idx(children, k);
		struct json_object *o = json_object_new_object(), *name;
		uint64_t n = 0, bytes = 0;
		int i;

		if (q && json_object_object_get_ex(c, "name", &name)) {
			pthread_mutex_lock(&q->lock);
			i = slot_named(q, json_object_get_string(name));
			n = i < 0 ? 0 : q->slot[i].n;
			bytes = i < 0 ? 0 : q->slot[i].bytes;
			pthread_mutex_unlock(&q->lock);
		}
		json_object_object_add(o, "entries",
				       json_object_new_int64((int64_t)n));
		json_object_object_add(o, "bytes",
				       json_object_new_int64((int64_t)bytes));
		json_object_object_add(
			o, "limit",
			json_object_new_int64(q ? (int64_t)q->limit : 0));
		json_object_object_add(c, "quarantine", o);
	}
}

/* The child holding entry id, with a reference; NULL when none does. */
static struct child *holder(struct quarantine *q, uint64_t id)
{
	struct child *c = NULL;

	pthread_mutex_lock(&q->lock);
	for (int i = 0; !c && i < CHILDREN_MAX; i++)
		for (size_t k = 0; !c && k < q->slot[i].n; k++)
			if (q->slot[i].e[k].id == id)
				c = q->slot[i].child;
	if (c)
		child_get(c);
	pthread_mutex_unlock(&q->lock);
	return c;
}

static int fail(char *err, size_t errlen, int ret, const char *fmt,
		unsigned long long id, const char *name)
{
	snprintf(err, errlen, fmt, id, name);
	return ret;
}

int quarantine_fetch(struct quarantine *q, struct child_set *set, uint64_t id,
		     char **path, uint64_t *off, void **bytes, size_t *len,
		     char *err, size_t errlen)
{
	struct child *c = q ? holder(q, id) : NULL;
	const struct child_view *v;
	struct child_request *rq = NULL;
	struct qio *io;
	int i, ret;

	if (!c)
		return fail(err, errlen, -ENOENT,
			    "no quarantine entry has id %llu%s", id, "");
	v = children_view_get(set);
	i = view_index(v, c);
	ret = i < 0			     ? fail(err, errlen, -EIO,
						    "entry %llu is on child '%s', which is failed "
									     "or removed: resync it first",
						    id, child_name(c))
	      : (rq = qio_new(v, i, Q_READ)) ? 0
					     : -ENOMEM;
	if (!ret) {
		io = rq->arg;
		io->id = id;
		ret = qio_run(q, rq);
		if (ret)
			fail(err, errlen, ret,
			     "cannot read entry %llu from child '%s'", id,
			     child_name(c));
	}
	if (!ret) {
		*path = io->entry.path;
		io->entry.path = NULL;
		*off = io->entry.off;
		*bytes = io->bytes;
		*len = io->len;
		io->bytes = NULL;
	}
	if (rq)
		child_request_put(rq);
	children_view_put(v);
	child_put(c);
	return ret;
}

/* Take the entries to purge out of memory into ids[slot]. */
static int purge_take(struct quarantine *q, uint64_t id, uint64_t **ids,
		      size_t *n)
{
	int found = 0;

	for (int i = 0; i < CHILDREN_MAX; i++) {
		struct qchild *s = &q->slot[i];
		size_t keep = 0;

		ids[i] = malloc((s->n ? s->n : 1) * sizeof(**ids));
		n[i] = 0;
		if (!ids[i])
			continue;
		for (size_t k = 0; k < s->n; k++) {
			if (id && s->e[k].id != id) {
				s->e[keep++] = s->e[k];
				continue;
			}
			ids[i][n[i]++] = s->e[k].id;
			s->bytes -= s->e[k].len;
			qfile_entry_clear(&s->e[k]);
			found++;
		}
		s->n = keep;
	}
	return found;
}

int quarantine_purge(struct quarantine *q, struct child_set *set, uint64_t id,
		     char *err, size_t errlen)
{
	uint64_t *ids[CHILDREN_MAX];
	size_t n[CHILDREN_MAX];
	const struct child_view *v;
	int found;

	if (!q)
		return fail(err, errlen, -ENOENT,
			    "no quarantine entry has id %llu%s", id, "");
	v = children_view_get(set);
	pthread_mutex_lock(&q->lock);
	found = purge_take(q, id, ids, n);
	pthread_mutex_unlock(&q->lock);
	for (int i = 0; i < v->n; i++) {
		int slot = child_slot(v->child[i]);
		struct child_request *rq =
			n[slot] ? qio_new(v, i, Q_REMOVE) : NULL;

		if (rq) {
			((struct qio *)rq->arg)->ids = ids[slot];
			((struct qio *)rq->arg)->nids = n[slot];
			ids[slot] = NULL;
			qio_run(q, rq);
			child_request_put(rq);
		}
	}
	for (int i = 0; i < CHILDREN_MAX; i++)
		free(ids[i]);
	children_view_put(v);
	if (id && !found)
		return fail(err, errlen, -ENOENT,
			    "no quarantine entry has id %llu%s", id, "");
	return 0;
}
