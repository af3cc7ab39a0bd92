/*
 * The sinks beside the event file: syslog, and a program run for each
 * event (events.h, struct event_sinks).
 *
 * The writer thread hands every line here. syslog(3) takes it at once
 * (a datagram to /dev/log; a full socket drops it rather than wait). The
 * program gets a copy on a bounded queue that a runner thread of its
 * own (qfs-evprog) empties, one run at a time in order: posix_spawn, the
 * line on the program's stdin, a wait bounded by the timeout (a pidfd
 * polled), SIGKILL past it. A full queue drops the event and counts it,
 * so a slow or hung program never holds up the writer, let alone I/O.
 */
#define _GNU_SOURCE
#include "events/events_i.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

struct event_forward {
	bool syslog;
	char *program, *mountpoint; /* NULL: no program */
	int timeout_ms;
	pthread_t runner;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	/* Guarded by lock: the queue of lines, oldest at head. */
	char *queue[EVENT_PROGRAM_QUEUE];
	size_t head, count;
	bool stopping;
	int64_t drain_end_ms; /* once stopping: no run starts after it */
	struct event_program_stats stats;
};

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The event's name in a line, into buf ("?" when it has none). */
static const char *event_name(const char *line, char *buf, size_t size)
{
	const char *p = strstr(line, "\"event\":\"");
	size_t n = p ? strcspn(p + 9, "\"") : 0;

	if (!p || n == 0 || n >= size)
		return "?";
	memcpy(buf, p + 9, n);
	buf[n] = '\0';
	return buf;
}

/* Failures are errors, reports of a bad copy warnings, the rest news. */
static int priority_of(const char *name)
{
	if (strcmp(name, "QUORUM_FAILURE") == 0)
		return LOG_ERR;
	if (strcmp(name, "QUORUM_REPORT_BAD") == 0 ||
	    strcmp(name, "CHILD_STATE_CHANGED") == 0 ||
	    strcmp(name, "SCRUB_MISMATCH") == 0 ||
	    strcmp(name, "CONTROL_ERROR") == 0)
		return LOG_WARNING;
	return LOG_INFO;
}

/* Wait for pid at most timeout_ms (< 0: for ever): its status, or -1
 * once it was killed for taking longer. */
static int wait_bounded(pid_t pid, int timeout_ms)
{
	int fd = (int)syscall(SYS_pidfd_open, pid, 0), status = 0;
	struct pollfd p = {.fd = fd, .events = POLLIN};
	int r = 1;

	if (fd >= 0) {
		do
			r = poll(&p, 1, timeout_ms);
		while (r < 0 && errno == EINTR);
		close(fd);
	}
	if (r == 0)
		kill(pid, SIGKILL);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	return r == 0 ? -1 : status;
}

/* Start the program with its stdin on a pipe, its stdout on /dev/null
 * and its stderr the daemon's (syslog, once detached): its pid, or
 * -errno. */
static pid_t spawn(struct event_forward *f, const char *name, int *in)
{
	char *argv[] = {f->program, (char *)name, f->mountpoint, NULL};
	posix_spawn_file_actions_t fa;
	int fds[2], r;
	pid_t pid;

	if (pipe2(fds, O_CLOEXEC))
		return -errno;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, fds[0], 0);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	r = posix_spawn(&pid, f->program, &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(fds[0]);
	if (r) {
		close(fds[1]);
		return -r;
	}
	*in = fds[1];
	return pid;
}

/* One run for line, bounded by timeout_ms; the counts under lock. */
static void run_program(struct event_forward *f, const char *line,
			int timeout_ms)
{
	char buf[64];
	int in = -1, status = 1;
	pid_t pid = spawn(f, event_name(line, buf, sizeof(buf)), &in);
	ssize_t n;

	if (pid > 0) {
		/* A line is far below a pipe's 64 KiB: this never waits. A
		 * program that does not read it is its own business. */
		fcntl(in, F_SETFL, O_NONBLOCK);
		n = write(in, line, strlen(line));
		(void)n;
		close(in);
		status = wait_bounded(pid, timeout_ms);
	}
	pthread_mutex_lock(&f->lock);
	f->stats.runs += pid > 0;
	f->stats.timed_out += status == -1;
	f->stats.failed += status != 0 && status != -1;
	pthread_mutex_unlock(&f->lock);
}

/*
 * The next line to run and its time, under f->lock; NULL when the
 * runner is to end. Once stopping, what is queued runs until the drain
 * ends (one timeout after the stop), and the rest is dropped.
 */
static char *next_line(struct event_forward *f, int *timeout_ms)
{
	char *line;
	int64_t left;

	while (!f->count && !f->stopping)
		pthread_cond_wait(&f->wake, &f->lock);
	left = f->drain_end_ms - now_ms();
	if (!f->count || (f->stopping && left <= 0))
		return NULL;
	line = f->queue[f->head];
	f->head = (f->head + 1) % EVENT_PROGRAM_QUEUE;
	f->count--;
	*timeout_ms =
		f->stopping && left < f->timeout_ms ? (int)left : f->timeout_ms;
	return line;
}

static void *runner_main(void *arg)
{
	struct event_forward *f = arg;
	int timeout_ms;
	char *line;

	pthread_setname_np(pthread_self(), "qfs-evprog");
	pthread_mutex_lock(&f->lock);
	while ((line = next_line(f, &timeout_ms))) {
		pthread_mutex_unlock(&f->lock);
		run_program(f, line, timeout_ms);
		free(line);
		pthread_mutex_lock(&f->lock);
	}
	f->stats.dropped += f->count; /* forward_free frees them */
	pthread_mutex_unlock(&f->lock);
	return NULL;
}

static void forward_free(struct event_forward *f)
{
	for (size_t i = 0; i < f->count; i++)
		free(f->queue[(f->head + i) % EVENT_PROGRAM_QUEUE]);
	pthread_cond_destroy(&f->wake);
	pthread_mutex_destroy(&f->lock);
	free(f->program);
	free(f->mountpoint);
	free(f);
}

int event_forward_start(const struct event_sinks *s, struct event_forward **out)
{
	struct event_forward *f;
	int r;

	*out = NULL;
	if (!s->syslog && !s->program)
		return 0;
	f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	pthread_mutex_init(&f->lock, NULL);
	pthread_cond_init(&f->wake, NULL);
	f->syslog = s->syslog;
	f->timeout_ms = s->timeout_ms;
	f->program = s->program ? strdup(s->program) : NULL;
	f->mountpoint = strdup(s->mountpoint ? s->mountpoint : "");
	r = (s->program && !f->program) || !f->mountpoint ? -ENOMEM : 0;
	if (!r && f->program)
		r = -pthread_create(&f->runner, NULL, runner_main, f);
	if (r) {
		free(f->program);
		f->program = NULL; /* no runner to join */
		forward_free(f);
		return r;
	}
	*out = f;
	return 0;
}

void event_forward_line(struct event_forward *f, const char *line)
{
	char buf[64], *copy;

	if (!f)
		return;
	if (f->syslog) {
		const char *name = event_name(line, buf, sizeof(buf));

		syslog(LOG_DAEMON | priority_of(name), "event %.*s",
		       (int)strcspn(line, "\n"), line);
	}
	if (!f->program)
		return;
	copy = strdup(line);
	pthread_mutex_lock(&f->lock);
	if (copy && f->count < EVENT_PROGRAM_QUEUE) {
		f->queue[(f->head + f->count++) % EVENT_PROGRAM_QUEUE] = copy;
		copy = NULL;
		pthread_cond_signal(&f->wake);
	} else {
		f->stats.dropped++;
	}
	pthread_mutex_unlock(&f->lock);
	free(copy);
}

void event_forward_stop(struct event_forward *f)
{
	if (!f)
		return;
	if (f->program) {
		pthread_mutex_lock(&f->lock);
		f->stopping = true;
		f->drain_end_ms = now_ms() + f->timeout_ms;
		pthread_cond_signal(&f->wake);
		pthread_mutex_unlock(&f->lock);
		pthread_join(f->runner, NULL);
	}
	forward_free(f);
}

bool event_forward_stats(struct event_forward *f,
			 struct event_program_stats *st)
{
	if (!f || !f->program)
		return false;
	pthread_mutex_lock(&f->lock);
	*st = f->stats;
	pthread_mutex_unlock(&f->lock);
	return true;
}
