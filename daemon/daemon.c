/*
 * Detaching with a readiness that is true (daemon.h): the parent waits
 * on a pipe for one byte the child writes once it serves; an end of file
 * without that byte means the child gave up or died.
 */
#define _GNU_SOURCE
#include "daemon/daemon.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* The write end the child signals readiness on; -1 in the foreground. */
static int ready_fd = -1;

/* The parent: wait for the child's word and exit with it. */
static void wait_for_child(int fd)
{
	char byte;
	ssize_t n;

	do
		n = read(fd, &byte, 1);
	while (n < 0 && errno == EINTR);
	_exit(n == 1 ? 0 : 1);
}

int daemon_detach(void)
{
	int fds[2];
	pid_t pid;

	if (pipe2(fds, O_CLOEXEC))
		return -errno;
	pid = fork();
	if (pid < 0) {
		int ret = -errno;

		close(fds[0]);
		close(fds[1]);
		return ret;
	}
	if (pid > 0) {
		close(fds[1]);
		wait_for_child(fds[0]);
	}
	close(fds[0]);
	ready_fd = fds[1];
	setsid();
	return 0;
}

/* stdin and stdout to /dev/null, stderr to syslog: nobody reads the
 * terminal any more. */
static void detach_stdio(void)
{
	int fd = open("/dev/null", O_RDWR | O_CLOEXEC);

	fflush(stdout);
	if (fd >= 0) {
		dup2(fd, STDIN_FILENO);
		dup2(fd, STDOUT_FILENO);
	}
	if (daemon_syslog_start() && fd >= 0)
		dup2(fd, STDERR_FILENO);
	if (fd >= 0)
		close(fd);
}

void daemon_ready(void)
{
	char byte = 1;

	if (ready_fd >= 0) {
		detach_stdio();
		if (write(ready_fd, &byte, 1) < 0)
			perror("quorumfs: telling the parent");
		close(ready_fd);
		ready_fd = -1;
	}
	daemon_notify("READY=1");
}
