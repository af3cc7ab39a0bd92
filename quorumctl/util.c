/*
 * Small helpers: messages, members of the daemon's JSON with defaults,
 * and numbers as an operator reads them.
 */
#define _GNU_SOURCE
#include "quorumctl/quorumctl.h"

#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

int qctl_error(const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fputs("quorumctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return QCTL_ERROR;
}

struct json_object *qctl_get(struct json_object *o, const char *key)
{
	struct json_object *v = NULL;

	if (o && json_object_is_type(o, json_type_object))
		json_object_object_get_ex(o, key, &v);
	return v;
}

int64_t qctl_int(struct json_object *o, const char *key)
{
	return json_object_get_int64(qctl_get(o, key));
}

const char *qctl_str(struct json_object *o, const char *key)
{
	struct json_object *v = qctl_get(o, key);

	return v && json_object_is_type(v, json_type_string)
		       ? json_object_get_string(v)
		       : "";
}

bool qctl_bool(struct json_object *o, const char *key)
{
	return json_object_get_boolean(qctl_get(o, key));
}

const char *qctl_bytes(char *buf, size_t size, double bytes)
{
	static const char *const units[] = {"B",   "KiB", "MiB",
					    "GiB", "TiB", "PiB"};
	int u = 0;

	while (bytes >= 1024 && u < 5) {
		bytes /= 1024;
		u++;
	}
	snprintf(buf, size, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
	return buf;
}

const char *qctl_duration(char *buf, size_t size, double seconds)
{
	long s;

	if (seconds < 0 || !isfinite(seconds)) {
		snprintf(buf, size, "-");
		return buf;
	}
	s = lround(seconds);
	if (s >= 3600)
		snprintf(buf, size, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60,
			 s % 60);
	else
		snprintf(buf, size, "%ld:%02ld", s / 60, s % 60);
	return buf;
}

const char *qctl_time(char *buf, size_t size, int64_t seconds)
{
	time_t t = (time_t)seconds;
	struct tm tm;

	if (!localtime_r(&t, &tm) ||
	    !strftime(buf, size, "%Y-%m-%d %H:%M:%S", &tm))
		snprintf(buf, size, "%lld", (long long)seconds);
	return buf;
}

double qctl_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

void qctl_sleep(double seconds)
{
	struct timespec ts = {
		.tv_sec = (time_t)seconds,
		.tv_nsec = (long)((seconds - (time_t)seconds) * 1e9)};

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}
