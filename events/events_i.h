/* Private to the events module: the sinks beside the file (sinks.c). */
#ifndef QFS_EVENTS_I_H
#define QFS_EVENTS_I_H

#include "events/events.h"

/* syslog and the event program, fed by the writer thread. */
struct event_forward;

/* NULL in *out when s asks for neither. Returns 0 or -errno. */
int event_forward_start(const struct event_sinks *s,
			struct event_forward **out);

/* One line ("json\n"): to syslog at once, to the program's queue (a
 * copy; dropped and counted when full). Never blocks on the program.
 * The writer thread only; f may be NULL. */
void event_forward_line(struct event_forward *f, const char *line);

/* Run what is queued, stop the runner, free f (NULL accepted). */
void event_forward_stop(struct event_forward *f);

/* false when f runs no program. */
bool event_forward_stats(struct event_forward *f,
			 struct event_program_stats *st);

#endif
