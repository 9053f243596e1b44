/* duet run TOPOLOGY — start a whole deployment on this host: this process
 * runs the scheduler's node and starts `duet node` for every other node of
 * the file (or, with --single-process, runs every node here over inproc).
 * With --prompt-ids it generates one continuation through the deployment,
 * prints it and stops; otherwise it runs until SIGINT or SIGTERM.
 *
 * It watches its node processes: one that ends while the deployment runs
 * is reported (node, pid, exit status or signal) and, with --restart N,
 * started again (at most N times over the run); otherwise the deployment is
 * shut down (the other nodes get SIGTERM, then SIGKILL after a grace
 * period) and duet run exits with status 3. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
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
               "  --restart N        start a node process that died again, at most N times in\n"
               "                     all (default 0: a node that dies shuts the deployment down\n"
               "                     and duet run exits with status 3)\n"
               "  -h, --help         this help\n"
               "\n"
               "exit status: 0 done (or stopped by a signal), 1 failed, 2 bad usage,\n"
               "3 a node process died and was not restarted\n");
}

#define RUN_NODE_DIED 3
#define RUN_GRACE_MS 10000

/* The node processes this one started. */
typedef struct kids {
    pid_t pid[256];
    const char *name[256];
    int n;
    int restarts_left, restarts;
    bool died; /* a node process ended and was not restarted */
    const char *path, *model, *trace;
    sigset_t sigs; /* blocked here, unblocked in the children */
} kids_t;

static pid_t kid_start(kids_t *k, const char *node)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        /* a node must not outlive duet run (killed with SIGKILL, say): it
         * gets SIGTERM then, and stops as on any SIGTERM */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(0);
        sigprocmask(SIG_UNBLOCK, &k->sigs, NULL);
        const char *av[12] = {"duet", "node", k->path, "--node", node, NULL};
        int ac = 5;
        if (k->model) {
            av[ac++] = "--model";
            av[ac++] = k->model;
        }
        if (k->trace) {
            av[ac++] = "--trace";
            av[ac++] = k->trace;
        }
        av[ac] = NULL;
        execv("/proc/self/exe", (char *const *)av);
        fprintf(stderr, "duet run: exec for node %s: %s\n", node, strerror(errno));
        _exit(127);
    }
    if (pid < 0)
        fprintf(stderr, "duet run: fork for node %s: %s\n", node, strerror(errno));
    return pid;
}

static void describe_status(int ws, char *buf, size_t cap)
{
    if (WIFEXITED(ws))
        snprintf(buf, cap, "exited with status %d", WEXITSTATUS(ws));
    else if (WIFSIGNALED(ws))
        snprintf(buf, cap, "was killed by signal %d (%s)%s", WTERMSIG(ws), strsignal(WTERMSIG(ws)),
                 WCOREDUMP(ws) ? ", core dumped" : "");
    else
        snprintf(buf, cap, "stopped (status 0x%x)", ws);
}

/* Reap node processes that ended. Each is reported; with restarts left it
 * is started again. Returns false when one died for good (the deployment
 * must go down). */
static bool kids_check(kids_t *k)
{
    bool ok = true;
    for (int i = 0; i < k->n; i++) {
        if (k->pid[i] <= 0)
            continue;
        int ws = 0;
        pid_t r = waitpid(k->pid[i], &ws, WNOHANG);
        if (r != k->pid[i])
            continue;
        char how[128];
        describe_status(ws, how, sizeof(how));
        if (k->restarts_left > 0) {
            k->restarts_left--;
            k->restarts++;
            fprintf(stderr, "duet run: node %s (pid %d) %s; restarting it (restart %d)\n",
                    k->name[i], (int)k->pid[i], how, k->restarts);
            k->pid[i] = kid_start(k, k->name[i]);
            if (k->pid[i] > 0)
                continue;
        } else {
            fprintf(stderr, "duet run: node %s (pid %d) %s; shutting the deployment down\n",
                    k->name[i], (int)k->pid[i], how);
            k->pid[i] = 0;
        }
        ok = false;
    }
    k->died |= !ok;
    return ok;
}

static bool kids_poll(void *user)
{
    return kids_check(user);
}

/* SIGTERM to every node process still running, then wait for them, with
 * SIGKILL for those still there after RUN_GRACE_MS. False if one ended
 * other than with status 0 (a node killed here at the deadline counts). */
static bool kids_stop(kids_t *k)
{
    bool clean = true;
    for (int i = 0; i < k->n; i++)
        if (k->pid[i] > 0)
            kill(k->pid[i], SIGTERM);
    uint64_t deadline = duet_now_ns() + (uint64_t)RUN_GRACE_MS * 1000000ull;
    for (;;) {
        int left = 0;
        for (int i = 0; i < k->n; i++) {
            if (k->pid[i] <= 0)
                continue;
            int ws = 0;
            pid_t r = waitpid(k->pid[i], &ws, WNOHANG);
            if (r == k->pid[i] || (r < 0 && errno == ECHILD)) {
                if (r == k->pid[i] && !(WIFEXITED(ws) && WEXITSTATUS(ws) == 0)) {
                    char how[128];
                    describe_status(ws, how, sizeof(how));
                    fprintf(stderr, "duet run: node %s (pid %d) %s at shutdown\n", k->name[i],
                            (int)k->pid[i], how);
                    clean = false;
                }
                k->pid[i] = 0;
                continue;
            }
            left++;
        }
        if (!left)
            return clean;
        if (duet_now_ns() >= deadline) {
            for (int i = 0; i < k->n; i++)
                if (k->pid[i] > 0) {
                    fprintf(stderr,
                            "duet run: node %s (pid %d) still running %d ms after SIGTERM; "
                            "SIGKILL\n",
                            k->name[i], (int)k->pid[i], RUN_GRACE_MS);
                    kill(k->pid[i], SIGKILL);
                    waitpid(k->pid[i], NULL, 0);
                    k->pid[i] = 0;
                }
            return false;
        }
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
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
    enum { O_SINGLE = 256, O_PROMPT_IDS, O_MAX_TOKENS, O_TRACE, O_RESTART };
    static const struct option longopts[] = {
        {"single-process", no_argument, NULL, O_SINGLE},
        {"model", required_argument, NULL, 'm'},
        {"prompt-ids", required_argument, NULL, O_PROMPT_IDS},
        {"max-tokens", required_argument, NULL, O_MAX_TOKENS},
        {"trace", required_argument, NULL, O_TRACE},
        {"restart", required_argument, NULL, O_RESTART},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *model = NULL, *prompt_s = NULL, *trace = NULL;
    bool single = false;
    long max_tokens = 16, restarts = 0;
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
        case O_RESTART: {
            char *end;
            restarts = strtol(optarg, &end, 10);
            if (*end || end == optarg || restarts < 0 || restarts > 1000000) {
                fprintf(stderr, "duet run: --restart wants a count >= 0\n");
                return 2;
            }
            break;
        }
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
    /* before any thread starts: the signals are taken with sigtimedwait */
    kids_t kids = {.restarts_left = (int)restarts, .path = path, .model = model, .trace = trace};
    sigemptyset(&kids.sigs);
    sigaddset(&kids.sigs, SIGINT);
    sigaddset(&kids.sigs, SIGTERM);
    sigaddset(&kids.sigs, SIGCHLD);
    pthread_sigmask(SIG_BLOCK, &kids.sigs, NULL);

    tp.cfg.trace_path = trace;
    int rc = 1;
    duet_pipe_t *p = NULL;
    if (!single) {
        const char *mine = tp.names[tp.cfg.scheduler_node];
        for (int i = 0; i < tp.cfg.n_nodes && kids.n < 256; i++) {
            if (!strcmp(tp.names[i], mine))
                continue;
            pid_t pid = kid_start(&kids, tp.names[i]);
            if (pid < 0)
                goto out;
            kids.name[kids.n] = tp.names[i];
            kids.pid[kids.n++] = pid;
        }
        tp.cfg.only_node = mine;
    }
    if (!single) { /* a node that dies during the start is restarted (or ends it) */
        tp.cfg.start_poll = kids_poll;
        tp.cfg.start_poll_user = &kids;
    }
    if (duet_pipe_create(&tp.cfg, &p)) {
        fprintf(stderr, "duet run: %s: %s\n", path, duet_error());
        if (!single && (!kids_check(&kids) || kids.died))
            rc = RUN_NODE_DIED;
        goto out;
    }
    if (n_prompt) {
        int32_t *gen = calloc((size_t)max_tokens, sizeof(int32_t));
        char err[256] = "";
        bool done = false;
        int32_t n = 0;
        if (!gen || duet_pipe_submit(p, 1, prompt, n_prompt, (int32_t)max_tokens, -1)) {
            snprintf(err, sizeof(err), "%s", gen ? duet_error() : "out of memory");
        } else {
            /* wait in short slices, watching the node processes in between */
            uint64_t deadline = duet_now_ns() + 120000ull * 1000000ull;
            for (;;) {
                duet_status_t st = duet_pipe_wait(p, 1, (int32_t)max_tokens, 100);
                if (st == DUET_OK)
                    break;
                if (st != DUET_ERR_TIMEOUT || duet_now_ns() >= deadline) {
                    snprintf(err, sizeof(err), "%s", duet_error());
                    break;
                }
                if (!kids_check(&kids)) {
                    rc = RUN_NODE_DIED;
                    break;
                }
            }
            if (!err[0])
                n = duet_pipe_result(p, 1, gen, (int32_t)max_tokens, &done, err, sizeof(err));
        }
        if (rc == RUN_NODE_DIED) {
            /* reported by kids_check */
        } else if (err[0]) {
            fprintf(stderr, "duet run: %s\n", err);
            rc = kids_check(&kids) ? 1 : RUN_NODE_DIED;
        } else {
            for (int32_t i = 0; i < n; i++)
                printf("%s%d", i ? "," : "", gen[i]);
            printf("\n");
            rc = 0;
        }
        free(gen);
    } else {
        fprintf(stderr, "duet run: %s up (%d processes); SIGINT or SIGTERM stops it\n", path,
                kids.n + 1);
        for (;;) {
            struct timespec ts = {0, 200 * 1000000L};
            int sig = sigtimedwait(&kids.sigs, NULL, &ts);
            if (sig == SIGINT || sig == SIGTERM) {
                rc = 0;
                break;
            }
            if (!kids_check(&kids)) {
                rc = RUN_NODE_DIED;
                break;
            }
        }
    }
out:
    if (rc == RUN_NODE_DIED)
        fprintf(stderr, "duet run: stopping the other nodes\n");
    duet_pipe_destroy(&p);
    if (!kids_stop(&kids) && rc == 0)
        rc = 1;
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
