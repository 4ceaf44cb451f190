#include <stdio.h>

#include "px_cmd.h"

int px_cmd_check(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fputs("dbtrust check: not implemented yet\n", stderr);
    return 2;
}
