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
/* Checked option values: the whole string a number within [lo, hi]; else
 * false after a message on stderr naming the command, the option, the
 * value and the range ("duet plan: --m '9x': expected a whole number in
 * 1..16"). */
bool duet_cli_num_opt(const char *cmd, const char *opt, const char *v, double lo, double hi,
                      double *out);
bool duet_cli_int_opt(const char *cmd, const char *opt, const char *v, long lo, long hi, int *out);

#endif
