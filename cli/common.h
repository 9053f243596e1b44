/* cli/common — helpers shared by the duet subcommands. */
#ifndef DUET_CLI_COMMON_H
#define DUET_CLI_COMMON_H

#include <stdbool.h>
#include <stddef.h>

#define DUET_CLI_DEFAULT_MODEL "pycoder-moe"

/* The bundled demo model directory: next to the executable's tree, else the
 * source tree. Writes into buf and returns it, or NULL if none is found. */
const char *duet_cli_default_model(char *buf, size_t cap);
bool duet_cli_is_dir(const char *path);
/* A duet_load_opts_t progress callback that draws a one-line bar on stderr
 * when stderr is a terminal (arg: a label string). */
void duet_cli_progress(void *arg, size_t done, size_t total);

#endif
