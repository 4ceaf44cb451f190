#include <stdio.h>

#include "px_cmd.h"

int px_cmd_bundle(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fputs("dbtrust bundle: not implemented yet\n", stderr);
    return 2;
}
