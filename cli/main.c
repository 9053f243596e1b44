/* duet — command-line entry point: dispatches to the subcommands that are
 * built into this binary. A subcommand that is not linked in does not show
 * in --help (its symbol is weak and NULL). */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

#pragma weak duet_cmd_generate
#pragma weak duet_cmd_tokenize
#pragma weak duet_cmd_mkmodel
#pragma weak duet_cmd_serve
#pragma weak duet_cmd_node
#pragma weak duet_cmd_run
#pragma weak duet_cmd_chaos
#pragma weak duet_cmd_profile
#pragma weak duet_cmd_plan
#pragma weak duet_cmd_simulate
#pragma weak duet_cmd_bench
#pragma weak duet_cmd_trace

typedef struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} command_t;

static const command_t *commands(size_t *n)
{
    static command_t table[] = {
        {"serve", NULL, "serve a model over an OpenAI-compatible HTTP API"},
        {"generate", NULL, "generate text from a prompt (single process)"},
        {"tokenize", NULL, "encode text to token ids, or decode ids to text"},
        {"mkmodel", NULL, "write a random-weight HF-format checkpoint"},
        {"run", NULL, "launch a deployment from a topology file"},
        {"node", NULL, "run one node (process) of a deployment"},
        {"chaos", NULL, "run a workload under a fault plan and check it"},
        {"profile", NULL, "measure the performance model on this host"},
        {"plan", NULL, "choose a deployment (the paper's Algorithm 1)"},
        {"simulate", NULL, "discrete-event simulation of a deployment"},
        {"bench", NULL, "benchmarks"},
        {"trace", NULL, "show a pipeline trace"},
    };
    table[0].fn = duet_cmd_serve;
    table[1].fn = duet_cmd_generate;
    table[2].fn = duet_cmd_tokenize;
    table[3].fn = duet_cmd_mkmodel;
    table[4].fn = duet_cmd_run;
    table[5].fn = duet_cmd_node;
    table[6].fn = duet_cmd_chaos;
    table[7].fn = duet_cmd_profile;
    table[8].fn = duet_cmd_plan;
    table[9].fn = duet_cmd_simulate;
    table[10].fn = duet_cmd_bench;
    table[11].fn = duet_cmd_trace;
    *n = sizeof(table) / sizeof(table[0]);
    return table;
}

static void usage(FILE *f)
{
    size_t n;
    const command_t *cmds = commands(&n);
    fprintf(f, "usage: duet <command> [options]\n\n"
               "duet serves Mixture-of-Experts models with disaggregated expert parallelism.\n\n"
               "commands:\n");
    for (size_t i = 0; i < n; i++)
        if (cmds[i].fn)
            fprintf(f, "  %-10s %s\n", cmds[i].name, cmds[i].summary);
    fprintf(f, "\nrun 'duet <command> --help' for a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("duet 0.1.0\n");
        return 0;
    }
    size_t n;
    const command_t *cmds = commands(&n);
    for (size_t i = 0; i < n; i++)
        if (cmds[i].fn && !strcmp(cmds[i].name, argv[1]))
            return cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "duet: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
