/* The subcommands besides running the proxy: `dbtrust check`, `dbtrust bundle` and
 * `dbtrust wait`. Each takes
 * its own argv (argv[0] is the subcommand's name) and returns the process exit status. */
#ifndef PX_CMD_H
#define PX_CMD_H

int px_cmd_check(int argc, char **argv);
int px_cmd_bundle(int argc, char **argv);
int px_cmd_wait(int argc, char **argv);

#endif
