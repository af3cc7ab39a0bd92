/*
 * The operator's channel: a unix socket beside the mount.
 *
 * `.control` is a file of the mount, so reaching it takes a lookup in the
 * mount's root, and the kernel holds a directory's lock for as long as a
 * request on it is pending. The socket passes through no directory of
 * the mount: the status can be read and a hung child removed while the
 * mount itself waits. The operator's tool speaks it; so does
 *
 *     echo status | socat - UNIX-CONNECT:/run/quorumfs/mnt-q.sock
 *
 * Protocol: one request per connection, one line (at most
 * CONFIG_COMMAND_MAX bytes, ended by a newline or by closing the write
 * side): `status`, `heal-info`, `quarantine list`, or any control
 * command. One reply, then the server closes: for the three reads the
 * JSON document; for a command
 * one JSON line,
 * {"ok":true} or {"ok":false,"errno":N,"error":"strerror text",
 * "reason":"why"}. Only root and the mounting user may connect (the
 * socket is 0600 and the peer's credentials are checked).
 *
 * A thread (qfs-control) accepts; each connection is served by a thread
 * of its own, so a long command (a remove that drains) does not hold up
 * a status read. A client that sends nothing is dropped after a few
 * seconds.
 */
#define _GNU_SOURCE
#include "control/control_i.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* How long a client may take to send its request. */
#define CLIENT_TIMEOUT_S 10

struct control_socket {
	struct control *ctl;
	char *path;
	int listen_fd;
	int wake[2]; /* a byte on wake[1] ends the accept loop */
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t idle;
	int clients; /* guarded by lock: connection threads running */
};

struct client {
	struct control_socket *cs;
	int fd;
};

/* Root and the mounting user only. */
static bool peer_allowed(int fd)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len))
		return false;
	return cred.uid == 0 || cred.uid == geteuid();
}

/* The request: bytes up to a newline or the end; its length or -1. */
static ssize_t read_request(int fd, char *buf, size_t size)
{
	size_t n = 0;

	while (n < size) {
		ssize_t r = read(fd, buf + n, size - n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		if (r == 0 || memchr(buf + n, '\n', r)) {
			n += r;
			break;
		}
		n += r;
	}
	return n;
}

static void write_all(int fd, const char *text)
{
	size_t len = strlen(text);

	while (len > 0) {
		ssize_t r = send(fd, text, len, MSG_NOSIGNAL);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return; /* the client left */
		text += r;
		len -= r;
	}
}

static char *command_reply(int ret, const char *reason)
{
	struct json_object *o = json_object_new_object();
	char *text;

	json_object_object_add(o, "ok", json_object_new_boolean(ret == 0));
	if (ret) {
		json_object_object_add(o, "errno", json_object_new_int(-ret));
		json_object_object_add(o, "error",
				       json_object_new_string(strerror(-ret)));
		json_object_object_add(o, "reason",
				       json_object_new_string(reason));
	}
	text = NULL;
	if (asprintf(&text, "%s\n",
		     json_object_to_json_string_ext(
			     o, JSON_C_TO_STRING_PLAIN |
					JSON_C_TO_STRING_NOSLASHESCAPE)) < 0)
		text = NULL;
	json_object_put(o);
	return text;
}

/* The request is word alone (a status or heal-info read). */
static bool is_request(const char *buf, size_t len, const char *word)
{
	while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == ' '))
		len--;
	return len == strlen(word) && memcmp(buf, word, len) == 0;
}

static void serve_client(struct control_socket *cs, int fd)
{
	char buf[CONFIG_COMMAND_MAX + 1], reason[256] = "";
	char *reply = NULL;
	ssize_t len;
	int ret;

	if (!peer_allowed(fd))
		return;
	len = read_request(fd, buf, sizeof(buf));
	if (len < 0)
		return;
	if (is_request(buf, len, "status") ||
	    is_request(buf, len, "heal-info") ||
	    is_request(buf, len, "quarantine list")) {
		reply = is_request(buf, len, "status") ? control_status(cs->ctl)
			: is_request(buf, len, "heal-info")
				? control_heal_info(cs->ctl)
				: control_quarantine_list(cs->ctl);
		if (reply) {
			write_all(fd, reply);
			write_all(fd, "\n");
		}
	} else {
		ret = control_run(cs->ctl, buf, len, reason, sizeof(reason));
		reply = command_reply(ret, reason);
		if (reply)
			write_all(fd, reply);
	}
	free(reply);
}

static void *client_thread(void *arg)
{
	struct client *c = arg;
	struct control_socket *cs = c->cs;

	serve_client(cs, c->fd);
	close(c->fd);
	free(c);
	pthread_mutex_lock(&cs->lock);
	if (--cs->clients == 0)
		pthread_cond_broadcast(&cs->idle);
	pthread_mutex_unlock(&cs->lock);
	return NULL;
}

static void start_client(struct control_socket *cs, int fd)
{
	struct timeval tv = {.tv_sec = CLIENT_TIMEOUT_S};
	struct client *c = malloc(sizeof(*c));
	pthread_attr_t attr;
	pthread_t t;

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (!c) {
		close(fd);
		return;
	}
	*c = (struct client){.cs = cs, .fd = fd};
	pthread_mutex_lock(&cs->lock);
	cs->clients++;
	pthread_mutex_unlock(&cs->lock);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&t, &attr, client_thread, c) == 0) {
		pthread_setname_np(t, "qfs-control");
	} else {
		c->fd = -1;
		close(fd);
		client_thread(c); /* counts it off */
	}
	pthread_attr_destroy(&attr);
}

static void *accept_thread(void *arg)
{
	struct control_socket *cs = arg;
	struct pollfd p[2] = {{.fd = cs->listen_fd, .events = POLLIN},
			      {.fd = cs->wake[0], .events = POLLIN}};

	for (;;) {
		int fd;

		if (poll(p, 2, -1) < 0 && errno != EINTR)
			break;
		if (p[1].revents)
			break;
		if (!(p[0].revents & POLLIN))
			continue;
		fd = accept4(cs->listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0)
			start_client(cs, fd);
	}
	return NULL;
}

/* A socket left by a daemon that died is taken over; one that answers
 * belongs to a live mount and is refused. */
static int claim_path(const char *path, char *err, size_t errlen)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	struct stat st;
	int fd, live;

	if (lstat(path, &st))
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISSOCK(st.st_mode)) {
		snprintf(err, errlen,
			 "control socket %s exists and is not a "
			 "socket",
			 path);
		return -EEXIST;
	}
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	live = fd >= 0 &&
	       connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0;
	if (fd >= 0)
		close(fd);
	if (live) {
		snprintf(err, errlen,
			 "control socket %s is in use by another "
			 "mount",
			 path);
		return -EADDRINUSE;
	}
	return unlink(path) ? -errno : 0;
}

/* The socket's directory, made 0755 (root) or 0700 when missing. */
static int make_parent(const char *path)
{
	char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char *slash;

	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		return 0;
	*slash = '\0';
	if (mkdir(dir, geteuid() == 0 ? 0755 : 0700) && errno != EEXIST)
		return -errno;
	return 0;
}

static int bind_listen(const char *path, char *err, size_t errlen)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	int fd, ret = make_parent(path);

	if (!ret)
		ret = claim_path(path, err, errlen);
	if (ret)
		return ret;
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) ||
	    chmod(path, 0600) || listen(fd, 16)) {
		ret = -errno;
		close(fd);
		unlink(path);
		return ret;
	}
	return fd;
}

int control_socket_start(struct control *ctl, const char *path,
			 struct control_socket **out, char *err, size_t errlen)
{
	struct control_socket *cs = calloc(1, sizeof(*cs));
	int ret = -ENOMEM;

	if (!cs || !(cs->path = strdup(path)))
		goto fail;
	cs->ctl = ctl;
	cs->wake[0] = cs->wake[1] = -1;
	pthread_mutex_init(&cs->lock, NULL);
	pthread_cond_init(&cs->idle, NULL);
	cs->listen_fd = ret = bind_listen(path, err, errlen);
	if (ret < 0)
		goto fail;
	ret = pipe2(cs->wake, O_CLOEXEC) ? -errno : 0;
	if (!ret)
		ret = -pthread_create(&cs->thread, NULL, accept_thread, cs);
	if (ret)
		goto fail;
	pthread_setname_np(cs->thread, "qfs-control");
	*out = cs;
	return 0;
fail:
	if (!err[0])
		snprintf(err, errlen, "control socket %s: %s", path,
			 strerror(-ret));
	if (cs && cs->listen_fd > 0) {
		close(cs->listen_fd);
		unlink(path);
	}
	if (cs && cs->wake[0] >= 0) {
		close(cs->wake[0]);
		close(cs->wake[1]);
	}
	if (cs)
		free(cs->path);
	free(cs);
	return ret;
}

void control_socket_stop(struct control_socket *cs)
{
	if (!cs)
		return;
	if (write(cs->wake[1], "x", 1) != 1)
		pthread_cancel(cs->thread); /* cannot happen: a fresh pipe */
	pthread_join(cs->thread, NULL);
	close(cs->listen_fd);
	unlink(cs->path);
	pthread_mutex_lock(&cs->lock);
	while (cs->clients > 0)
		pthread_cond_wait(&cs->idle, &cs->lock);
	pthread_mutex_unlock(&cs->lock);
	close(cs->wake[0]);
	close(cs->wake[1]);
	pthread_cond_destroy(&cs->idle);
	pthread_mutex_destroy(&cs->lock);
	free(cs->path);
	free(cs);
}
