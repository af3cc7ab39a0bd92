/*
 * The daemon's own messages once it detached: stderr becomes a pipe
 * whose lines a thread (qfs-syslog) sends to syslog, so that what any
 * module prints (a failing event log, libfuse's complaints) reaches the
 * journal instead of /dev/null. The pipe does not block its writers: a
 * syslog that cannot keep up loses lines, never stalls a request.
 */
#define _GNU_SOURCE
#include "daemon/daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

static pthread_t reader;
static bool forwarding;

/* One line to syslog, without the "quorumfs: " syslog's ident repeats. */
static void send_line(char *line)
{
	const char *text = line;

	if (strncmp(text, "quorumfs: ", 10) == 0)
		text += 10;
	if (*text)
		syslog(LOG_WARNING, "%s", text);
}

static void *reader_main(void *arg)
{
	int fd = (int)(intptr_t)arg;
	char buf[4096];
	size_t used = 0;
	ssize_t n;

	pthread_setname_np(pthread_self(), "qfs-syslog");
	while ((n = read(fd, buf + used, sizeof(buf) - 1 - used)) != 0) {
		char *start = buf, *nl;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break;
		used += n;
		buf[used] = '\0';
		while ((nl = strchr(start, '\n'))) {
			*nl = '\0';
			send_line(start);
			start = nl + 1;
		}
		used -= start - buf;
		memmove(buf, start, used);
		if (used == sizeof(buf) - 1) { /* a line longer than buf */
			send_line(buf);
			used = 0;
		}
	}
	close(fd);
	return NULL;
}

int daemon_syslog_start(void)
{
	int fds[2];

	openlog("quorumfs", LOG_PID | LOG_NDELAY, LOG_DAEMON);
	if (pipe2(fds, O_CLOEXEC))
		return -errno;
	fcntl(fds[1], F_SETFL, O_NONBLOCK);
	if (pthread_create(&reader, NULL, reader_main,
			   (void *)(intptr_t)fds[0])) {
		close(fds[0]);
		close(fds[1]);
		return -EAGAIN;
	}
	fflush(stderr);
	dup2(fds[1], STDERR_FILENO);
	close(fds[1]);
	forwarding = true;
	return 0;
}

void daemon_finish(void)
{
	int fd;

	if (!forwarding)
		return;
	/* The pipe's last writer goes: the reader sends what is left and
	 * ends. */
	fflush(stderr);
	fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		dup2(fd, STDERR_FILENO);
		close(fd);
	}
	pthread_join(reader, NULL);
	forwarding = false;
	closelog();
}

void daemon_say(int priority, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	if (forwarding) {
		vsyslog(priority, fmt, ap);
	} else {
		fputs("quorumfs: ", stderr);
		vfprintf(stderr, fmt, ap);
		fputc('\n', stderr);
	}
	va_end(ap);
}
