/* duet node TOPOLOGY --node NAME — run one node (process) of a deployment:
 * the actors the file places on NAME (attention shards, expert shards,
 * scheduler, router), talking to the other nodes over the file's control
 * transport and data plane. Runs until SIGINT or SIGTERM. */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/pipe_topo.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: duet node TOPOLOGY -n NAME [-m DIR] [--trace FILE]\n"
               "\n"
               "Run the actors that the deployment file TOPOLOGY places on node NAME, until\n"
               "SIGINT or SIGTERM. Start every node of the file (duet run does this on one\n"
               "host); they find each other at the file's addresses.\n"
               "\n"
               "options:\n"
               "  -n, --node NAME   the node to run (as named in the file)\n"
               "  -m, --model DIR   model directory instead of the file's\n"
               "  --trace FILE      write this node's actors' trace to FILE.NAME at exit\n"
               "  -h, --help        this help\n");
}

int duet_cmd_node(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"node", required_argument, NULL, 'n'},
        {"model", required_argument, NULL, 'm'},
        {"trace", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *node = NULL, *model = NULL, *trace = NULL;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":n:m:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'n': node = optarg; break;
        case 'm': model = optarg; break;
        case 't': trace = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc - 1 || !node) {
        usage(stderr);
        return 2;
    }
    const char *path = argv[optind];
    duet__topo_pipe_t tp;
    if (duet__topo_pipe_init(&tp, "node", path, model, true))
        return 2;
    if (duet_topology_node_find(tp.topo, node) < 0) {
        fprintf(stderr, "duet node: %s has no node '%s'\n", path, node);
        duet__topo_pipe_cleanup(&tp);
        return 2;
    }
    tp.cfg.only_node = node;
    tp.cfg.trace_path = trace;
    duet__topo_node_malloc(&tp, node);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* before any thread starts */
    duet_pipe_t *p = NULL;
    if (duet_pipe_create(&tp.cfg, &p)) {
        fprintf(stderr, "duet node %s: %s\n", node, duet_error());
        duet__topo_pipe_cleanup(&tp);
        return 1;
    }
    fprintf(stderr, "duet node %s: up\n", node);
    int sig = 0;
    sigwait(&set, &sig);
    duet_pipe_destroy(&p);
    duet__topo_pipe_cleanup(&tp);
    return 0;
}
