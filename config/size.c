/*
 * Sizes on the command line and in control commands (layer-limit=,
 * quarantine-limit=, repair's range).
 */
#include "config/config_i.h"

#include <errno.h>
#include <stdlib.h>

bool config_parse_size(const char *s, unsigned long long *out)
{
	char *end;
	unsigned long long v;
	int shift = 0;

	if (!s || !*s || *s == '-')
		return false;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (*end && end[1] == '\0')
		shift = *end == 'K'   ? 10
			: *end == 'M' ? 20
			: *end == 'G' ? 30
			: *end == 'T' ? 40
				      : -1;
	if (errno || shift < 0 || (*end && !shift) || v > (~0ULL >> shift))
		return false;
	*out = v << shift;
	return true;
}
