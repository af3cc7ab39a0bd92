/*
 * daemon: the process around the mount, as mount(8), fstab and systemd
 * see it.
 *
 * Readiness that is true. Started without -f, quorumfs detaches, and the
 * process that was started exits only once the mount serves (status 0),
 * or once the detached daemon gave up (status 1, its reason already on
 * the terminal). libfuse's fuse_daemonize() lets the parent go at the
 * fork, before anything is started, so `mount -a` and a Type=forking
 * unit said yes to a mount that could still fail. Under systemd with
 * Type=notify (NOTIFY_SOCKET set), READY=1 is sent at the same moment.
 *
 * Functions are called from main's thread only.
 */
#ifndef QFS_DAEMON_H
#define QFS_DAEMON_H

/*
 * Fork. The parent waits until the child calls daemon_ready() or ends,
 * then exits 0 or 1: it never returns. The child returns 0, in a new
 * session. Returns -errno when no fork happened. Call before any thread
 * starts (fork() keeps only the calling thread).
 */
int daemon_detach(void);

/*
 * The mount serves: the parent waiting in daemon_detach() exits 0, the
 * detached daemon's stdin and stdout go to /dev/null and its stderr to
 * syslog (daemon_syslog_start; /dev/null if that fails), and systemd
 * hears READY=1. In the foreground only the latter. Call once.
 */
void daemon_ready(void);

/*
 * Send what the daemon prints on stderr to syslog (facility daemon,
 * ident quorumfs, priority warning) from now on, line by line, through a
 * pipe a thread reads (syslog.c). The pipe never blocks a writer.
 * Returns 0 or -errno (stderr unchanged).
 */
int daemon_syslog_start(void);

/*
 * A message of the daemon's own: to syslog at priority once stderr goes
 * there, else "quorumfs: ..." on stderr.
 */
void daemon_say(int priority, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Before exit: stderr's last lines reach syslog, the thread ends. */
void daemon_finish(void);

/*
 * Send state ("READY=1", "STOPPING=1", "STATUS=...") to the socket
 * $NOTIFY_SOCKET names (sd_notify(3)'s protocol: one datagram; a name
 * starting with '@' is abstract). Returns 0 once sent, 1 when there is
 * no such socket (not under systemd), or -errno.
 */
int daemon_notify(const char *state);

#endif
