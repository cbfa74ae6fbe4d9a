/* `llmgate keys|tenants|usage ...`: key, tenant and usage management from the
 * command line, talking to Redis directly (synchronous hiredis) through the
 * same scripts the admin HTTP API runs. */
#ifndef LLMGATE_GATEWAY_CLI_H
#define LLMGATE_GATEWAY_CLI_H

#include <stdbool.h>

/* Whether argv[1] names a CLI subcommand. */
bool cli_is_command(const char *name);
/* Runs the subcommand argv[0] ("keys", "tenants", "usage") with its arguments;
 * returns the process exit status (0 ok, 1 failed, 2 usage error). */
int cli_main(int argc, char **argv);

#endif
