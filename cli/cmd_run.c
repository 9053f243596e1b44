/* duet run TOPOLOGY — start a whole deployment on this host: this process
 * runs the scheduler's node and starts `duet node` for every other node of
 * the file (or, with --single-process, runs every node here over inproc).
 * With --prompt-ids it generates one continuation through the deployment,
 * prints it and stops; otherwise it runs until SIGINT or SIGTERM. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/pipe_topo.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: duet run TOPOLOGY [--single-process] [-m DIR]\n"
               "                [--prompt-ids IDS [--max-tokens N]] [--trace FILE]\n"
               "\n"
               "Start every node of the deployment file TOPOLOGY on this host: one process\n"
               "per node (this one runs the scheduler's node), or all nodes in this process\n"
               "with --single-process. Runs until SIGINT/SIGTERM, or, with --prompt-ids,\n"
               "generates one greedy continuation through the deployment and prints its ids.\n"
               "\n"
               "options:\n"
               "  --single-process   every node in this process (inproc control plane)\n"
               "  -m, --model DIR    model directory instead of the file's\n"
               "  --prompt-ids IDS   comma-separated prompt token ids to generate from\n"
               "  --max-tokens N     tokens to generate (default 16)\n"
               "  --trace FILE       write a Chrome/Perfetto trace JSON of the pipeline at exit\n"
               "                     (every node's actors, merged into FILE)\n"
               "  -h, --help         this help\n");
}

static int parse_ids(const char *s, int32_t *ids, int cap)
{
    int n = 0;
    while (*s && n < cap) {
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (errno || end == s || v < 0 || v > INT32_MAX || (*end && *end != ','))
            return -1;
        ids[n++] = (int32_t)v;
        s = *end ? end + 1 : end;
    }
    return n;
}

int duet_cmd_run(int argc, char **argv)
{
    enum { O_SINGLE = 256, O_PROMPT_IDS, O_MAX_TOKENS, O_TRACE };
    static const struct option longopts[] = {
        {"single-process", no_argument, NULL, O_SINGLE},
        {"model", required_argument, NULL, 'm'},
        {"prompt-ids", required_argument, NULL, O_PROMPT_IDS},
        {"max-tokens", required_argument, NULL, O_MAX_TOKENS},
        {"trace", required_argument, NULL, O_TRACE},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *model = NULL, *prompt_s = NULL, *trace = NULL;
    bool single = false;
    long max_tokens = 16;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:h", longopts, NULL)) != -1) {
        switch (c) {
        case O_SINGLE: single = true; break;
        case 'm': model = optarg; break;
        case O_PROMPT_IDS: prompt_s = optarg; break;
        case O_TRACE: trace = optarg; break;
        case O_MAX_TOKENS:
            max_tokens = strtol(optarg, NULL, 10);
            if (max_tokens < 1 || max_tokens > 1 << 20) {
                fprintf(stderr, "duet run: --max-tokens wants a positive integer\n");
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 2;
    }
    int32_t prompt[4096];
    int n_prompt = 0;
    if (prompt_s && (n_prompt = parse_ids(prompt_s, prompt, 4096)) < 1) {
        fprintf(stderr, "duet run: --prompt-ids wants comma-separated token ids\n");
        return 2;
    }
    const char *path = argv[optind];
    duet__topo_pipe_t tp;
    if (duet__topo_pipe_init(&tp, "run", path, model, !single))
        return 2;
    if (tp.cfg.control != DUET_PIPE_CONTROL_IPC)
        single = true; /* a one-node deployment on inproc: nothing to fork */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    tp.cfg.trace_path = trace;
    pid_t kids[256];
    int n_kids = 0, rc = 1;
    duet_pipe_t *p = NULL;
    if (!single) {
        const char *mine = tp.names[tp.cfg.scheduler_node];
        for (int i = 0; i < tp.cfg.n_nodes && n_kids < 256; i++) {
            if (!strcmp(tp.names[i], mine))
                continue;
            pid_t pid = fork();
            if (pid == 0) {
                sigprocmask(SIG_UNBLOCK, &set, NULL);
                const char *av[12] = {"duet", "node", path, "--node", tp.names[i], NULL};
                int ac = 5;
                if (model) {
                    av[ac++] = "--model";
                    av[ac++] = model;
                }
                if (trace) {
                    av[ac++] = "--trace";
                    av[ac++] = trace;
                }
                av[ac] = NULL;
                execv("/proc/self/exe", (char *const *)av);
                fprintf(stderr, "duet run: exec for node %s: %s\n", tp.names[i], strerror(errno));
                _exit(127);
            }
            if (pid < 0) {
                fprintf(stderr, "duet run: fork: %s\n", strerror(errno));
                goto out;
            }
            kids[n_kids++] = pid;
        }
        tp.cfg.only_node = mine;
    }
    if (duet_pipe_create(&tp.cfg, &p)) {
        fprintf(stderr, "duet run: %s: %s\n", path, duet_error());
        goto out;
    }
    if (n_prompt) {
        int32_t *gen = calloc((size_t)max_tokens, sizeof(int32_t));
        char err[256] = "";
        bool done = false;
        int32_t n = 0;
        if (gen && !duet_pipe_submit(p, 1, prompt, n_prompt, (int32_t)max_tokens, -1) &&
            !duet_pipe_wait(p, 1, (int32_t)max_tokens, 120000)) {
            n = duet_pipe_result(p, 1, gen, (int32_t)max_tokens, &done, err, sizeof(err));
        } else {
            snprintf(err, sizeof(err), "%s", duet_error());
        }
        if (err[0]) {
            fprintf(stderr, "duet run: %s\n", err);
        } else {
            for (int32_t i = 0; i < n; i++)
                printf("%s%d", i ? "," : "", gen[i]);
            printf("\n");
            rc = 0;
        }
        free(gen);
    } else {
        fprintf(stderr, "duet run: %s up (%d processes); SIGINT or SIGTERM stops it\n", path,
                n_kids + 1);
        int sig = 0;
        sigwait(&set, &sig);
        rc = 0;
    }
out:
    duet_pipe_destroy(&p);
    for (int k = 0; k < n_kids; k++)
        kill(kids[k], SIGTERM);
    for (int k = 0; k < n_kids; k++) {
        int ws = 0;
        if (waitpid(kids[k], &ws, 0) == kids[k] && !(WIFEXITED(ws) && WEXITSTATUS(ws) == 0))
            rc = rc ? rc : 1;
    }
    if (trace && !single) { /* every node wrote TRACE.<node>: merge them */
        char(*parts)[1024] = calloc((size_t)tp.cfg.n_nodes + 1, sizeof(*parts));
        const char **pp = calloc((size_t)tp.cfg.n_nodes + 1, sizeof(char *));
        if (parts && pp) {
            for (int i = 0; i < tp.cfg.n_nodes; i++) {
                snprintf(parts[i], sizeof(parts[i]), "%s.%s", trace, tp.names[i]);
                pp[i] = parts[i];
            }
            if (duet_pipe_trace_merge(trace, pp, tp.cfg.n_nodes)) {
                fprintf(stderr, "duet run: %s\n", duet_error());
                rc = rc ? rc : 1;
            } else {
                for (int i = 0; i < tp.cfg.n_nodes; i++)
                    unlink(parts[i]);
            }
        }
        free(parts);
        free(pp);
    }
    duet__topo_pipe_cleanup(&tp);
    return rc;
}
