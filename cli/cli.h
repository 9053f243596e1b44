/* cli — the `duet` command. Each subcommand lives in its own cmd_<name>.c
 * and defines `int duet_cmd_<name>(int argc, char **argv)` (argv[0] is the
 * subcommand name). main.c lists the subcommands that are linked in. */
#ifndef DUET_CLI_H
#define DUET_CLI_H

int duet_cmd_generate(int argc, char **argv);
int duet_cmd_tokenize(int argc, char **argv);
int duet_cmd_mkmodel(int argc, char **argv);
int duet_cmd_serve(int argc, char **argv);
int duet_cmd_node(int argc, char **argv);
int duet_cmd_run(int argc, char **argv);
int duet_cmd_chaos(int argc, char **argv);
int duet_cmd_profile(int argc, char **argv);
int duet_cmd_plan(int argc, char **argv);
int duet_cmd_simulate(int argc, char **argv);
int duet_cmd_bench(int argc, char **argv);
int duet_cmd_trace(int argc, char **argv);

#endif
