/*
 * The .quorumfs/ record: state file and intent log (see persist.h).
 */
#define _GNU_SOURCE
#include "persist/persist.h"
#include "persist/persist_i.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define STATE_NAME PERSIST_DIR "/state"
#define STATE_TMP PERSIST_DIR "/state.tmp"
#define LOG_NAME PERSIST_DIR "/intent"
#define FINDINGS_NAME PERSIST_DIR "/findings"
#define FINDINGS_TMP PERSIST_DIR "/findings.tmp"
#define STATE_MAX (256 * 1024)

static int fail(char *err, size_t errlen, int ret, const char *why)
{
	snprintf(err, errlen, "%s", why);
	return ret;
}

void persist_new_id(char id[PERSIST_ID_LEN + 1])
{
	unsigned char raw[PERSIST_ID_LEN / 2];
	size_t got = 0;

	while (got < sizeof(raw)) {
		ssize_t r = getrandom(raw + got, sizeof(raw) - got, 0);

		if (r > 0)
			got += r;
	}
	for (size_t i = 0; i < sizeof(raw); i++)
		sprintf(id + 2 * i, "%02x", raw[i]);
}

void persist_clear(struct persist_state *st)
{
	for (int i = 0; i < st->n; i++) {
		free(st->member[i].name);
		free(st->member[i].path);
		free(st->member[i].failed);
	}
	memset(st, 0, sizeof(*st));
}

int persist_add_member(struct persist_state *st, const char *id,
		       const char *name, const char *path, enum child_kind kind)
{
	struct persist_member *m;

	if (st->n == CHILDREN_MAX)
		return -ENOSPC;
	m = &st->member[st->n];
	m->failed = NULL;
	m->kind = kind;
	snprintf(m->id, sizeof(m->id), "%s", id);
	m->name = strdup(name);
	m->path = strdup(path);
	if (!m->name || !m->path) {
		free(m->name);
		free(m->path);
		return -ENOMEM;
	}
	st->n++;
	return 0;
}

void persist_remove_member(struct persist_state *st, const char *id)
{
	for (int i = 0; i < st->n; i++) {
		if (strcmp(st->member[i].id, id))
			continue;
		free(st->member[i].name);
		free(st->member[i].path);
		free(st->member[i].failed);
		memmove(&st->member[i], &st->member[i + 1],
			(st->n - i - 1) * sizeof(st->member[0]));
		st->n--;
		return;
	}
}

int persist_set_failed(struct persist_state *st, const char *id,
		       const char *reason)
{
	char *copy = reason ? strdup(reason) : NULL;

	if (reason && !copy)
		return -ENOMEM;
	for (int i = 0; i < st->n; i++) {
		if (strcmp(st->member[i].id, id) == 0) {
			free(st->member[i].failed);
			st->member[i].failed = copy;
			return 0;
		}
	}
	free(copy);
	return -ENOENT;
}

const struct persist_member *persist_member(const struct persist_state *st,
					    const char *id)
{
	for (int i = 0; i < st->n; i++)
		if (strcmp(st->member[i].id, id) == 0)
			return &st->member[i];
	return NULL;
}

int persist_copy(struct persist_state *dst, const struct persist_state *src)
{
	*dst = *src;
	dst->n = 0;
	for (int i = 0; i < src->n; i++) {
		const struct persist_member *m = &src->member[i];

		if (persist_add_member(dst, m->id, m->name, m->path, m->kind) ||
		    persist_set_failed(dst, m->id, m->failed)) {
			persist_clear(dst);
			return -ENOMEM;
		}
	}
	return 0;
}

/* ---- reading the state ---- */

static int read_small(int root_fd, const char *name, char **out)
{
	int fd = openat(root_fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	char *buf = NULL;
	ssize_t len;
	int ret = 0;

	if (fd < 0)
		return -errno;
	buf = malloc(STATE_MAX + 1);
	if (!buf) {
		ret = -ENOMEM;
		goto out;
	}
	len = pread(fd, buf, STATE_MAX, 0);
	if (len < 0) {
		ret = -errno;
		goto out;
	}
	buf[len] = '\0';
	*out = buf;
	buf = NULL;
out:
	free(buf);
	close(fd);
	return ret;
}

static bool get_id(struct json_object *o, const char *key, char *id)
{
	struct json_object *v;
	const char *s;

	if (!json_object_object_get_ex(o, key, &v) ||
	    !json_object_is_type(v, json_type_string))
		return false;
	s = json_object_get_string(v);
	if (strlen(s) != PERSIST_ID_LEN ||
	    strspn(s, "0123456789abcdef") != PERSIST_ID_LEN)
		return false;
	memcpy(id, s, PERSIST_ID_LEN + 1);
	return true;
}

/* Shared with qfile.c (persist_i.h). */
bool persist_get_u64(struct json_object *o, const char *key, uint64_t *out)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) ||
	    !json_object_is_type(v, json_type_int) ||
	    json_object_get_int64(v) < 0)
		return false;
	*out = (uint64_t)json_object_get_int64(v);
	return true;
}

const char *persist_get_str(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) ||
	    !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

/* A member's kind from its record word; none is a data child. */
static enum child_kind kind_of(const char *word)
{
	if (word && !strcmp(word, "replication"))
		return CHILD_REPLICATION;
	if (word && !strcmp(word, "witness"))
		return CHILD_WITNESS;
	return CHILD_DATA;
}

static int parse_members(struct json_object *o, struct persist_state *st)
{
	struct json_object *list;

	if (!json_object_object_get_ex(o, "members", &list) ||
	    !json_object_is_type(list, json_type_array) ||
	    json_object_array_length(list) > CHILDREN_MAX)
		return -EINVAL;
	for (size_t i = 0; i < json_object_array_length(list); i++) {
		struct json_object *m = json_object_array_get_idx(list, i);
		const char *name = persist_get_str(m, "name"),
			   *path = persist_get_str(m, "path"),
			   *kind = persist_get_str(m, "kind");
		char id[PERSIST_ID_LEN + 1];

		if (!get_id(m, "child", id) || !name || !path ||
		    (kind && strcmp(kind, "data") &&
		     strcmp(kind, "replication") && strcmp(kind, "witness")))
			return -EINVAL;
		if (persist_add_member(st, id, name, path, kind_of(kind)) ||
		    persist_set_failed(st, id, persist_get_str(m, "failed")))
			return -ENOMEM;
	}
	return 0;
}

/* Optional: a record older than the rules has none (threshold 0). */
static void parse_rules(struct json_object *o, struct persist_rules *r)
{
	struct json_object *rules, *v;
	const char *pattern;
	uint64_t threshold = 0;

	if (!json_object_object_get_ex(o, "rules", &rules) ||
	    !persist_get_u64(rules, "threshold", &threshold) || threshold < 1 ||
	    threshold > CHILDREN_MAX)
		return;
	pattern = persist_get_str(rules, "read-pattern");
	r->threshold = (int)threshold;
	r->read_pattern = pattern && strcmp(pattern, "fifo") == 0
				  ? READ_PATTERN_FIFO
				  : READ_PATTERN_QUORUM;
	r->rewrite_corrupted =
		json_object_object_get_ex(rules, "rewrite-corrupted", &v) &&
		json_object_get_boolean(v);
}

/* A tri-state of a policy: -1 when absent (the mount's rule). */
static int parse_tri(struct json_object *p, const char *key, const char *on)
{
	struct json_object *v;

	if (!json_object_object_get_ex(p, key, &v) ||
	    json_object_is_type(v, json_type_null))
		return -1;
	if (json_object_is_type(v, json_type_boolean))
		return json_object_get_boolean(v);
	return strcmp(json_object_get_string(v), on) == 0;
}

/* Optional too: a record older than policies has none. One that does
 * not parse is left out, never guessed at. */
static void parse_policies(struct json_object *o, struct persist_state *st)
{
	struct json_object *list;
	size_t n;

	if (!json_object_object_get_ex(o, "policies", &list) ||
	    !json_object_is_type(list, json_type_array))
		return;
	n = json_object_array_length(list);
	for (size_t i = 0; i < n && st->npolicies < PERSIST_POLICY_MAX; i++) {
		struct json_object *p = json_object_array_get_idx(list, i);
		struct persist_policy *out = &st->policy[st->npolicies];
		const char *dir = persist_get_str(p, "dir");
		uint64_t threshold = 0;

		if (!dir || !*dir || strlen(dir) > PERSIST_POLICY_DIR_MAX ||
		    !persist_get_u64(p, "threshold", &threshold) ||
		    threshold < 1 || threshold > CHILDREN_MAX)
			continue;
		snprintf(out->dir, sizeof(out->dir), "%s", dir);
		out->threshold = (int)threshold;
		out->read_pattern = parse_tri(p, "read-pattern", "fifo");
		out->rewrite_corrupted =
			parse_tri(p, "rewrite-corrupted", "on");
		st->npolicies++;
	}
}

static int parse_state(struct json_object *o, struct persist_state *st)
{
	struct json_object *v;
	uint64_t format = 0;

	if (!persist_get_u64(o, "format", &format) || format != 1)
		return -EINVAL;
	if (!get_id(o, "set", st->set) || !get_id(o, "child", st->child) ||
	    !persist_get_u64(o, "generation", &st->generation) ||
	    !persist_get_u64(o, "log-since", &st->log_since) ||
	    !json_object_object_get_ex(o, "clean", &v) ||
	    !json_object_is_type(v, json_type_boolean))
		return -EINVAL;
	st->clean = json_object_get_boolean(v);
	parse_rules(o, &st->rules);
	parse_policies(o, st);
	return parse_members(o, st);
}

int persist_load(int root_fd, struct persist_state *st, char *err,
		 size_t errlen)
{
	struct json_object *o;
	char *text = NULL;
	int ret;

	memset(st, 0, sizeof(*st));
	ret = read_small(root_fd, STATE_NAME, &text);
	if (ret == -ENOENT)
		return ret;
	if (ret)
		return fail(err, errlen, ret, strerror(-ret));
	o = json_tokener_parse(text);
	free(text);
	if (!o)
		return fail(err, errlen, -EINVAL, "not valid JSON");
	ret = parse_state(o, st);
	json_object_put(o);
	if (ret) {
		persist_clear(st);
		return fail(err, errlen, ret, "missing or malformed fields");
	}
	return 0;
}

/* ---- writing the state ---- */

static struct json_object *rules_json(const struct persist_rules *r)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "threshold",
			       json_object_new_int(r->threshold));
	json_object_object_add(
		o, "read-pattern",
		json_object_new_string(r->read_pattern == READ_PATTERN_FIFO
					       ? "fifo"
					       : "quorum"));
	json_object_object_add(o, "rewrite-corrupted",
			       json_object_new_boolean(r->rewrite_corrupted));
	return o;
}

struct json_object *persist_policy_json(const struct persist_policy *p)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "dir", json_object_new_string(p->dir));
	json_object_object_add(o, "threshold",
			       json_object_new_int(p->threshold));
	json_object_object_add(
		o, "read-pattern",
		p->read_pattern < 0
			? NULL
			: json_object_new_string(
				  p->read_pattern == READ_PATTERN_FIFO
					  ? "fifo"
					  : "quorum"));
	json_object_object_add(
		o, "rewrite-corrupted",
		p->rewrite_corrupted < 0
			? NULL
			: json_object_new_boolean(p->rewrite_corrupted));
	return o;
}

static struct json_object *state_json(const struct persist_state *st)
{
	struct json_object *o = json_object_new_object();
	struct json_object *list = json_object_new_array();

	json_object_object_add(o, "format", json_object_new_int(1));
	json_object_object_add(o, "set", json_object_new_string(st->set));
	json_object_object_add(o, "child", json_object_new_string(st->child));
	json_object_object_add(o, "generation",
			       json_object_new_int64((int64_t)st->generation));
	json_object_object_add(o, "log-since",
			       json_object_new_int64((int64_t)st->log_since));
	json_object_object_add(o, "clean", json_object_new_boolean(st->clean));
	for (int i = 0; i < st->n; i++) {
		struct json_object *m = json_object_new_object();

		json_object_object_add(
			m, "child", json_object_new_string(st->member[i].id));
		json_object_object_add(
			m, "name", json_object_new_string(st->member[i].name));
		json_object_object_add(
			m, "path", json_object_new_string(st->member[i].path));
		if (st->member[i].failed)
			json_object_object_add(
				m, "failed",
				json_object_new_string(st->member[i].failed));
		if (st->member[i].kind != CHILD_DATA)
			json_object_object_add(
				m, "kind",
				json_object_new_string(
					child_kind_name(st->member[i].kind)));
		json_object_array_add(list, m);
	}
	json_object_object_add(o, "members", list);
	if (st->rules.threshold)
		json_object_object_add(o, "rules", rules_json(&st->rules));
	if (st->npolicies) {
		list = json_object_new_array();
		for (int i = 0; i < st->npolicies; i++)
			json_object_array_add(
				list, persist_policy_json(&st->policy[i]));
		json_object_object_add(o, "policies", list);
	}
	return o;
}

static int sync_dir(int root_fd)
{
	return child_sync_dir(root_fd, PERSIST_DIR, false);
}

static int write_all(int fd, const char *text)
{
	size_t len = strlen(text), done = 0;

	while (done < len) {
		ssize_t r = write(fd, text + done, len - done);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		done += r;
	}
	return 0;
}

/* .quorumfs, made durable in the child's root when it is new: a power
 * cut must not take the directory with the record written into it. */
static int make_dir(int root_fd)
{
	if (mkdirat(root_fd, PERSIST_DIR, 0700))
		return errno == EEXIST ? 0 : -errno;
	return child_sync_dir(root_fd, ".", false);
}

char *persist_state_text(const struct persist_state *st)
{
	struct json_object *o = state_json(st);
	char *text = NULL;

	if (asprintf(&text, "%s\n",
		     json_object_to_json_string_ext(
			     o, JSON_C_TO_STRING_PRETTY |
					JSON_C_TO_STRING_NOSLASHESCAPE)) < 0)
		text = NULL;
	json_object_put(o);
	return text;
}

/* Replace name with text whole, durably: tmp written, synced, renamed. */
static int replace_file(int root_fd, const char *tmp, const char *name,
			const char *text)
{
	int fd = -1, ret = make_dir(root_fd);

	if (ret)
		goto out;
	fd = openat(root_fd, tmp,
		    O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC,
		    0600);
	if (fd < 0) {
		ret = -errno;
		goto out;
	}
	ret = write_all(fd, text);
	if (!ret)
		ret = child_result(fsync(fd));
	if (!ret)
		ret = child_result(renameat(root_fd, tmp, root_fd, name));
	if (!ret)
		ret = sync_dir(root_fd);
out:
	if (fd >= 0)
		close(fd);
	return ret;
}

int persist_save_text(int root_fd, const char *text)
{
	return replace_file(root_fd, STATE_TMP, STATE_NAME, text);
}

int persist_save_findings(int root_fd, const char *text)
{
	return strlen(text) > STATE_MAX ? -EFBIG
					: replace_file(root_fd, FINDINGS_TMP,
						       FINDINGS_NAME, text);
}

int persist_load_findings(int root_fd, char **text)
{
	return read_small(root_fd, FINDINGS_NAME, text);
}

int persist_save(int root_fd, const struct persist_state *st)
{
	char *text = persist_state_text(st);
	int ret = text ? persist_save_text(root_fd, text) : -ENOMEM;

	free(text);
	return ret;
}

/* ---- the intent log ---- */

int persist_log_append(int root_fd, const char *line)
{
	int fd = openat(root_fd, LOG_NAME,
			O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
	int ret = 0;

	if (fd < 0 && errno == ENOENT) {
		/* The file's creation must survive a crash as its lines do. */
		ret = make_dir(root_fd);
		fd = ret ? -1
			 : openat(root_fd, LOG_NAME,
				  O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW |
					  O_CLOEXEC,
				  0600);
		if (fd >= 0)
			ret = sync_dir(root_fd);
	}
	if (fd < 0)
		return ret ? ret : -errno;
	if (!ret)
		ret = write_all(fd, line);
	if (!ret)
		ret = child_result(fdatasync(fd));
	close(fd);
	return ret;
}

int persist_log_reset(int root_fd)
{
	int fd = openat(root_fd, LOG_NAME,
			O_WRONLY | O_TRUNC | O_NOFOLLOW | O_CLOEXEC);
	int ret;

	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	ret = child_result(fsync(fd));
	close(fd);
	return ret;
}

void persist_missed_free(struct persist_missed *m)
{
	for (int i = 0; i < m->nfiles; i++) {
		free(m->file[i].path);
		free(m->file[i].region);
		free(m->file[i].was);
	}
	free(m->file);
	for (int i = 0; i < m->nentries; i++) {
		free(m->entry[i].path);
		free(m->entry[i].was);
	}
	free(m->entry);
	memset(m, 0, sizeof(*m));
}

static struct persist_file *missed_file(struct persist_missed *m,
					const char *path)
{
	struct persist_file *f;

	for (int i = 0; i < m->nfiles; i++)
		if (strcmp(m->file[i].path, path) == 0)
			return &m->file[i];
	f = realloc(m->file, (m->nfiles + 1) * sizeof(*f));
	if (!f)
		return NULL;
	m->file = f;
	f = &m->file[m->nfiles];
	*f = (struct persist_file){.path = strdup(path)};
	if (!f->path)
		return NULL;
	m->nfiles++;
	return f;
}

static int missed_region(struct persist_missed *m, const char *path,
			 int64_t region)
{
	struct persist_file *f = missed_file(m, path);
	int64_t *r;

	if (!f)
		return -ENOMEM;
	for (int i = 0; i < f->nregions; i++)
		if (f->region[i] == region)
			return 0;
	r = realloc(f->region, (f->nregions + 1) * sizeof(*r));
	if (!r)
		return -ENOMEM;
	f->region = r;
	f->region[f->nregions++] = region;
	return 0;
}

static int missed_entry(struct persist_missed *m, const char *path,
			bool listing)
{
	struct persist_entry *e;

	for (int i = 0; i < m->nentries; i++)
		if (m->entry[i].listing == listing &&
		    strcmp(m->entry[i].path, path) == 0)
			return 0;
	e = realloc(m->entry, (m->nentries + 1) * sizeof(*e));
	if (!e)
		return -ENOMEM;
	m->entry = e;
	e = &m->entry[m->nentries];
	*e = (struct persist_entry){.path = strdup(path), .listing = listing};
	if (!e->path)
		return -ENOMEM;
	m->nentries++;
	return 0;
}

/* path, or a path below it: rewritten as below to, keeping the old one
 * in *was (the rename may not have reached the children: settling tries
 * both). */
static bool below(const char *path, const char *dir)
{
	size_t len = strlen(dir);

	return !strncmp(path, dir, len) && (!path[len] || path[len] == '/');
}

static int move_path(char **path, char **was, const char *from, const char *to,
		     bool exchange)
{
	char *moved;

	if (exchange && below(*path, to)) {
		const char *swap = from;

		from = to;
		to = swap;
	} else if (!below(*path, from)) {
		return 0;
	}
	if (asprintf(&moved, "%s%s", to, *path + strlen(from)) < 0)
		return -ENOMEM;
	free(*was);
	*was = *path;
	*path = moved;
	return 0;
}

static int missed_move(struct persist_missed *m, const char *from,
		       const char *to, bool exchange)
{
	int ret = 0;

	for (int i = 0; !ret && i < m->nfiles; i++)
		ret = move_path(&m->file[i].path, &m->file[i].was, from, to,
				exchange);
	for (int i = 0; !ret && i < m->nentries; i++)
		ret = move_path(&m->entry[i].path, &m->entry[i].was, from, to,
				exchange);
	return ret;
}

/* One line of the log; a line that does not parse is -EINVAL. */
static int missed_line(struct persist_missed *m, const char *line,
		       uint64_t since)
{
	struct json_object *o = json_tokener_parse(line), *v;
	const char *path;
	uint64_t g, region;
	int ret = 0;

	if (!o || !persist_get_u64(o, "g", &g)) {
		ret = -EINVAL;
		goto out;
	}
	if (g < since)
		goto out;
	if (json_object_object_get_ex(o, "tree", &v)) {
		m->tree = true; /* the files are still collected: settle() */
		goto out;
	}
	if ((path = persist_get_str(o, "mv"))) {
		ret = persist_get_str(o, "to")
			      ? missed_move(
					m, path, persist_get_str(o, "to"),
					json_object_object_get_ex(o, "x", &v))
			      : -EINVAL;
		goto out;
	}
	if ((path = persist_get_str(o, "d")) ||
	    (path = persist_get_str(o, "e"))) {
		ret = missed_entry(m, path, persist_get_str(o, "d") != NULL);
		goto out;
	}
	path = persist_get_str(o, "p");
	if (!path || !persist_get_u64(o, "r", &region))
		ret = -EINVAL;
	else
		ret = missed_region(m, path, (int64_t)region);
out:
	json_object_put(o);
	return ret;
}

int persist_log_missed(int root_fd, uint64_t since, struct persist_missed *m)
{
	FILE *f = NULL;
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	int fd, ret = 0;

	memset(m, 0, sizeof(*m));
	fd = openat(root_fd, LOG_NAME, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	f = fdopen(fd, "r");
	if (!f) {
		close(fd);
		return -ENOMEM;
	}
	while (!ret && (len = getline(&line, &cap, f)) > 0) {
		/* A crash may tear the last line; its change never began. */
		if (line[len - 1] != '\n')
			break;
		ret = missed_line(m, line, since);
	}
	free(line);
	fclose(f);
	if (ret)
		persist_missed_free(m);
	return ret;
}
