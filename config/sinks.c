/*
 * Where events go besides the log file: -o events=syslog, and
 * -o event-program=PATH (with event-program-timeout=S). The program
 * must be an absolute path to an executable file now, so that a typo is
 * reported on the terminal rather than on every event later.
 */
#define _GNU_SOURCE
#include "config/sinks_i.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int refuse(char *err, size_t errlen, const char *what)
{
	snprintf(err, errlen, "%s", what);
	return -EINVAL;
}

static int check_program(const char *path, char *err, size_t errlen)
{
	struct stat st;

	if (path[0] != '/') {
		snprintf(err, errlen,
			 "event-program=%s must be an absolute path", path);
		return -EINVAL;
	}
	if (stat(path, &st) || !S_ISREG(st.st_mode) || access(path, X_OK)) {
		snprintf(err, errlen,
			 "event-program=%s is not an executable file", path);
		return -EINVAL;
	}
	return 0;
}

int config_check_sinks(const struct config_args *a, struct config *cfg,
		       char *err, size_t errlen)
{
	char *end;
	long t = CONFIG_DEFAULT_EVENT_PROGRAM_TIMEOUT;
	int ret;

	if (a->events && strcmp(a->events, "syslog") != 0)
		return refuse(err, errlen,
			      "events= takes syslog (the file is log=PATH)");
	cfg->events_syslog = a->events != NULL;
	if (a->event_program_timeout) {
		t = strtol(a->event_program_timeout, &end, 10);
		if (!*a->event_program_timeout || *end || t < 1 ||
		    t > CONFIG_MAX_EVENT_PROGRAM_TIMEOUT) {
			snprintf(err, errlen,
				 "event-program-timeout=%s must be 1..%d "
				 "seconds",
				 a->event_program_timeout,
				 CONFIG_MAX_EVENT_PROGRAM_TIMEOUT);
			return -EINVAL;
		}
	}
	cfg->event_program_timeout_ms = (int)t * 1000;
	if (!a->event_program)
		return 0;
	ret = check_program(a->event_program, err, errlen);
	if (ret)
		return ret;
	cfg->event_program = strdup(a->event_program);
	return cfg->event_program ? 0 : -ENOMEM;
}
