/* Private to the config module: what config.c takes from sinks.c. */
#ifndef QFS_CONFIG_SINKS_I_H
#define QFS_CONFIG_SINKS_I_H

#include "config/config.h"

/*
 * events= and event-program= (sinks.c): 0, or -EINVAL with the reason
 * in err, or -ENOMEM. What it sets is freed by config_release().
 */
int config_check_sinks(const struct config_args *a, struct config *cfg,
		       char *err, size_t errlen);

#endif
