/*
 * systemd's readiness protocol (sd_notify(3)), without libsystemd: one
 * datagram of "KEY=VALUE" lines to the unix socket $NOTIFY_SOCKET
 * names. The protocol is small and stable, and a library dependency for
 * one sendto() is not worth it.
 */
#define _GNU_SOURCE
#include "daemon/daemon.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int daemon_notify(const char *state)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	size_t len;
	int fd, ret;

	if (!path || (path[0] != '/' && path[0] != '@'))
		return 1;
	len = strlen(path);
	if (len >= sizeof(sun.sun_path))
		return -ENAMETOOLONG;
	memcpy(sun.sun_path, path, len);
	if (path[0] == '@')
		sun.sun_path[0] = '\0'; /* an abstract name */
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	ret = sendto(fd, state, strlen(state), MSG_NOSIGNAL,
		     (struct sockaddr *)&sun,
		     offsetof(struct sockaddr_un, sun_path) + len) < 0
		      ? -errno
		      : 0;
	close(fd);
	return ret;
}
