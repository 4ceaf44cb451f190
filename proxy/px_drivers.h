/* The protocol drivers there are; only the code that picks one per listener includes this. */
#ifndef PX_DRIVERS_H
#define PX_DRIVERS_H

#include "px_driver.h"

extern const struct px_driver px_pg_driver; /* px_pg.c */
extern const struct px_driver px_my_driver; /* px_mysql.c */

#endif
