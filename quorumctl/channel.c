/*
 * Finding a mount and asking its daemon: the control socket first (it
 * works while the mount itself waits on a hung child), MOUNTPOINT/.control
 * when no socket answers there.
 */
#define _GNU_SOURCE
#include "quorumctl/quorumctl.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <mntent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "config/config.h"

/* How long a reply may take: a remove drains for up to 30 s. */
#define REPLY_TIMEOUT_S 120
#define REPLY_MAX (16 * 1024 * 1024)

/* mountinfo writes blanks, tabs, newlines and backslashes as \ooo. */
static char *unescape(const char *s)
{
	char *out = malloc(strlen(s) + 1), *o = out;

	while (out && *s) {
		if (s[0] == '\\' && s[1] >= '0' && s[1] <= '3' && s[2] &&
		    s[3]) {
			*o++ = (char)((s[1] - '0') * 64 + (s[2] - '0') * 8 +
				      (s[3] - '0'));
			s += 4;
		} else {
			*o++ = *s++;
		}
	}
	if (out)
		*o = '\0';
	return out;
}

/* Fields of one mountinfo line: its mountpoint, type and source. */
static bool parse_line(char *line, char **mnt, char **type, char **source)
{
	char *right = strstr(line, " - "), *save = NULL, *f;
	int i = 0;

	if (!right)
		return false;
	*right = '\0';
	for (f = strtok_r(line, " ", &save); f && i < 4; i++)
		f = strtok_r(NULL, " ", &save);
	*mnt = f;
	*type = strtok_r(right + 3, " ", &save);
	*source = strtok_r(NULL, " ", &save);
	return *mnt && *type && *source;
}

/* The quorumfs mounts: n of them into *out, or -1. */
static int read_mountinfo(struct qctl_mount **out)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char *line = NULL, *mnt, *type, *source;
	size_t cap = 0;
	int n = 0;

	*out = NULL;
	if (!f)
		return -1;
	while (getline(&line, &cap, f) > 0) {
		struct qctl_mount *grown;

		line[strcspn(line, "\n")] = '\0';
		if (!parse_line(line, &mnt, &type, &source) ||
		    strcmp(type, "fuse.quorumfs") != 0)
			continue;
		grown = realloc(*out, (n + 1) * sizeof(**out));
		if (!grown)
			break;
		*out = grown;
		(*out)[n].mountpoint = unescape(mnt);
		(*out)[n].source = unescape(source);
		(*out)[n].socket = NULL;
		n++;
	}
	free(line);
	fclose(f);
	return n;
}

/* path made absolute, with no "." or ".." or repeated '/', lexically:
 * nothing is looked up, so a hung mount cannot hold us. */
static char *normalise(const char *path)
{
	char cwd[PATH_MAX], *in, *out, *save = NULL;
	size_t n = 0;

	if (path[0] != '/' && !getcwd(cwd, sizeof(cwd)))
		return NULL;
	if (asprintf(&in, "%s/%s", path[0] == '/' ? "" : cwd, path) < 0)
		return NULL;
	out = calloc(1, strlen(in) + 2);
	for (char *w = strtok_r(in, "/", &save); out && w;
	     w = strtok_r(NULL, "/", &save)) {
		if (strcmp(w, ".") == 0)
			continue;
		if (strcmp(w, "..") == 0) {
			while (n > 0 && out[--n] != '/')
				;
			out[n] = '\0';
			continue;
		}
		n += sprintf(out + n, "/%s", w);
	}
	if (out && n == 0)
		strcpy(out, "/");
	free(in);
	return out;
}

/* control-socket= of the fstab line for mountpoint, or NULL. */
static char *fstab_socket(const char *mountpoint)
{
	FILE *f = setmntent("/etc/fstab", "re");
	struct mntent *e;
	char *found = NULL, *opt;

	while (f && !found && (e = getmntent(f)))
		if (strcmp(e->mnt_type, "fuse.quorumfs") == 0 &&
		    strcmp(e->mnt_dir, mountpoint) == 0 &&
		    (opt = hasmntopt(e, "control-socket=")))
			found = strndup(opt + 15, strcspn(opt + 15, ","));
	if (f)
		endmntent(f);
	return found;
}

static char *socket_for(const char *mountpoint, const struct qctl_opts *o)
{
	char buf[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char *s;

	if (o->socket)
		return strdup(o->socket);
	s = fstab_socket(mountpoint);
	if (s && strcmp(s, "none") == 0) {
		free(s);
		return NULL;
	}
	if (s)
		return s;
	return config_default_socket(mountpoint, buf, sizeof(buf)) == 0
		       ? strdup(buf)
		       : NULL;
}

void qctl_mount_release(struct qctl_mount *m)
{
	free(m->mountpoint);
	free(m->source);
	free(m->socket);
}

static void release_all(struct qctl_mount *all, int n)
{
	for (int i = 0; i < n; i++)
		qctl_mount_release(&all[i]);
	free(all);
}

int qctl_all_mounts(const struct qctl_opts *o, struct qctl_mount **out)
{
	int n = read_mountinfo(out);

	if (n < 0) {
		qctl_error("cannot read /proc/self/mountinfo: %s",
			   strerror(errno));
		return -1;
	}
	for (int i = 0; i < n; i++)
		(*out)[i].socket = socket_for((*out)[i].mountpoint, o);
	return n;
}

/* The mount whose mountpoint is path, moved out of all[] into *m. */
static bool take(struct qctl_mount *all, int n, const char *path,
		 struct qctl_mount *m)
{
	for (int i = n - 1; path && i >= 0; i--)
		if (strcmp(all[i].mountpoint, path) == 0) {
			*m = all[i];
			all[i] = (struct qctl_mount){0};
			return true;
		}
	return false;
}

int qctl_find_mount(const char *path, const struct qctl_opts *o,
		    struct qctl_mount *m)
{
	struct qctl_mount *all;
	char *norm = normalise(path), *real = NULL;
	int n = read_mountinfo(&all);
	bool found = take(all, n, norm, m);

	/* Through a symlink: only then may the path be looked up. */
	if (!found && !o->socket)
		found = take(all, n, real = realpath(path, NULL), m);
	if (!found && o->socket) {
		*m = (struct qctl_mount){.mountpoint = norm, .source = NULL};
		norm = NULL;
		found = true;
	}
	release_all(all, n);
	free(norm);
	free(real);
	if (!found)
		return qctl_error("%s is not a quorumfs mount", path);
	m->socket = socket_for(m->mountpoint, o);
	return QCTL_OK;
}

/* ---- the socket ---- */

/* Connect to path: the fd, or -errno. */
static int connect_socket(const char *path)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	struct timeval tv = {.tv_sec = REPLY_TIMEOUT_S};
	int fd;

	if (strlen(path) >= sizeof(sun.sun_path))
		return -ENAMETOOLONG;
	strcpy(sun.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0)
		return fd;
	close(fd);
	return -errno;
}

/* Everything fd has until its end, NUL-terminated; NULL and errno on
 * failure. */
static char *read_all(int fd)
{
	size_t n = 0, cap = 0;
	char *buf = NULL, *grown;
	ssize_t r;

	for (;;) {
		if (cap - n < 4096) {
			if (cap >= REPLY_MAX) {
				errno = EFBIG;
				break;
			}
			cap = cap ? cap * 2 : 8192;
			grown = realloc(buf, cap);
			if (!grown)
				break;
			buf = grown;
		}
		r = read(fd, buf + n, cap - n - 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			break;
		if (r == 0) {
			buf[n] = '\0';
			return buf;
		}
		n += r;
	}
	free(buf);
	return NULL;
}

/*
 * One request over the socket: the reply text, or NULL with *err the
 * errno. *err is ECONNREFUSED or ENOENT when no daemon listens there,
 * which sends the caller to .control.
 */
static char *socket_request(const char *path, const char *request, int *err)
{
	int fd = connect_socket(path);
	char *reply = NULL;

	if (fd < 0) {
		*err = -fd;
		return NULL;
	}
	errno = 0;
	if (dprintf(fd, "%s\n", request) < 0 || shutdown(fd, SHUT_WR) < 0 ||
	    !(reply = read_all(fd)))
		*err = errno ? errno : EIO;
	close(fd);
	return reply;
}

static struct json_object *parse_reply(const char *text, const char *from)
{
	struct json_object *o = text ? json_tokener_parse(text) : NULL;

	if (text && !o)
		qctl_error("the reply from %s is not JSON", from);
	return o;
}

/* ---- .control ---- */

static char *control_path(const struct qctl_mount *m)
{
	char *p = NULL;

	return asprintf(&p, "%s/.control", m->mountpoint) < 0 ? NULL : p;
}

static char *control_read(const struct qctl_mount *m)
{
	char *path = control_path(m), *text = NULL;
	int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;

	if (fd >= 0) {
		text = read_all(fd);
		close(fd);
	}
	if (!text)
		qctl_error("cannot read %s: %s", path ? path : ".control",
			   strerror(errno));
	free(path);
	return text;
}

/* Whether to fall back to .control after the socket failed with err. */
static bool no_daemon_there(int err)
{
	return err == ENOENT || err == ECONNREFUSED || err == ENOTSOCK ||
	       err == ENAMETOOLONG;
}

/* request (a read: status, heal-info or quarantine list) through the socket, or
 * through .control when fallback and no daemon listens there. */
static struct json_object *ask(const struct qctl_mount *m, const char *request,
			       bool fallback)
{
	struct json_object *o;
	char *text = NULL;
	int err = ENOENT;

	if (m->socket)
		text = socket_request(m->socket, request, &err);
	if (!text && (!no_daemon_there(err) || !fallback)) {
		qctl_error("%s: %s%s", m->socket ? m->socket : m->mountpoint,
			   strerror(err),
			   fallback ? "" : " (this needs the control socket)");
		return NULL;
	}
	if (!text)
		text = control_read(m);
	o = parse_reply(text, m->socket && text ? m->socket : ".control");
	free(text);
	return o;
}

struct json_object *qctl_status(const struct qctl_mount *m)
{
	return ask(m, "status", true);
}

struct json_object *qctl_heal_info(const struct qctl_mount *m)
{
	return ask(m, "heal-info", false);
}

struct json_object *qctl_quarantine_list(const struct qctl_mount *m)
{
	return ask(m, "quarantine list", false);
}

/* The reply .control's refusal stands for: errno, and the reason the
 * status keeps when it is this command's. */
static struct json_object *refusal(const struct qctl_mount *m,
				   const char *command, int err)
{
	struct json_object *r = json_object_new_object();
	struct json_object *status = qctl_status(m);
	struct json_object *last = qctl_get(status, "last-control-error");
	const char *reason = strerror(err);

	if (last && strcmp(qctl_str(last, "command"), command) == 0)
		reason = qctl_str(last, "reason");
	json_object_object_add(r, "ok", json_object_new_boolean(false));
	json_object_object_add(r, "errno", json_object_new_int(err));
	json_object_object_add(r, "error",
			       json_object_new_string(strerror(err)));
	json_object_object_add(r, "reason", json_object_new_string(reason));
	json_object_put(status);
	return r;
}

static struct json_object *control_write(const struct qctl_mount *m,
					 const char *command)
{
	char *path = control_path(m);
	int fd = path ? open(path, O_WRONLY | O_CLOEXEC) : -1, err = 0;

	if (fd < 0) {
		qctl_error("cannot open %s: %s", path ? path : ".control",
			   strerror(errno));
		free(path);
		return NULL;
	}
	free(path);
	if (write(fd, command, strlen(command)) < 0)
		err = errno;
	close(fd);
	if (err)
		return refusal(m, command, err);
	return json_tokener_parse("{\"ok\":true}");
}

struct json_object *qctl_command(const struct qctl_mount *m,
				 const char *command)
{
	struct json_object *o;
	char *text = NULL;
	int err = 0;

	if (m->socket)
		text = socket_request(m->socket, command, &err);
	if (!text && m->socket && !no_daemon_there(err)) {
		qctl_error("%s: %s", m->socket, strerror(err));
		return NULL;
	}
	if (!text)
		return control_write(m, command);
	o = parse_reply(text, m->socket);
	free(text);
	return o;
}
