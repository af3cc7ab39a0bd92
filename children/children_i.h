/* Private to the children module: what children.c lends io.c. */
#ifndef QFS_CHILDREN_I_H
#define QFS_CHILDREN_I_H

#include "children/children.h"

/* Count c's parts that timed out and still run (delta +1 or -1). */
void child_orphan(struct child *c, int delta);

#endif
