/* duet serve — serve a model over the OpenAI-compatible HTTP API.
 *
 * With no arguments it serves the bundled demo model on 127.0.0.1:8000
 * through a local disaggregated deployment in this process: one attention
 * shard and one expert shard holding every expert, as separate actors, with
 * m = 2 micro-batches (gateway/engine_pipe.h). --topology FILE serves that
 * file's deployment (all its nodes in this process); --engine local serves
 * on the single-process engine instead (gateway/engine_local.h). */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "cli/pipe_topo.h"
#include "gateway/engine_local.h"
#include "gateway/engine_pipe.h"
#include "gateway/gateway.h"
#include "model/backend.h"
#include "model/model.h"
#include "model/tokenizer.h"

static int sig_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    char c = (char)sig;
    ssize_t w = write(sig_pipe[1], &c, 1); /* async-signal-safe */
    (void)w;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: duet serve [options]\n\n"
            "Serve a model over an OpenAI-compatible HTTP API:\n"
            "  POST /v1/completions, POST /v1/chat/completions (stream or not),\n"
            "  GET /v1/models, GET /health, GET /metrics (Prometheus).\n\n"
            "options:\n"
            "  --model DIR        Hugging Face model directory\n"
            "                     (default: the bundled models/" DUET_CLI_DEFAULT_MODEL ")\n"
            "  --host ADDR        IPv4 address to bind (default 127.0.0.1)\n"
            "  --port N           TCP port (default 8000; 0 picks a free one)\n"
            "  --topology FILE    serve this deployment file's pipeline (all its nodes in\n"
            "                     this process; --model overrides its model)\n"
            "  --node NAME        with --topology: run only node NAME of the file here\n"
            "                     (the one with the scheduler); the other nodes run as\n"
            "                     `duet node FILE --node N` processes, found at the\n"
            "                     file's addresses, and may die and restart while it serves\n"
            "  --engine KIND      'pipeline' (default: attention and expert shards as\n"
            "                     separate actors; without --topology 1 attention shard,\n"
            "                     1 expert shard, m = 2) or 'local' (the single-process\n"
            "                     engine; not with --topology)\n"
            "  --model-name NAME  name served in /v1/models and accepted in requests\n"
            "                     (default: the model directory's name)\n"
            "  --api-key KEY      require 'Authorization: Bearer KEY' on /v1/*\n"
            "  --threads N        compute threads (per shard with the pipeline; default 2,\n"
            "                     or the topology file's)\n"
            "  --max-body BYTES   largest request body accepted (default 1048576)\n"
            "  --timeout S        close a connection idle for S seconds (default 60)\n"
            "  --request-timeout S  end a request running longer than S seconds with an\n"
            "                     error (default 3600)\n"
            "  --max-connections N  connections served at once (default 1000)\n"
            "  -h, --help         show this help\n\n"
            "It prints 'duet: serving MODEL on http://HOST:PORT' once ready and runs until\n"
            "SIGINT or SIGTERM.\n");
}

/* The pipeline engine for `cfg` (a topology file's), or by default one
 * attention shard and one expert shard with every expert of the model, m = 2
 * (as examples/topologies/single.yaml). Waits until it can serve. */
static int start_pipeline(const duet_pipe_config_t *cfg, const char *model_dir, int threads,
                          const char *name, duet_gw_engine_t **eng)
{
    duet_pipe_config_t c;
    int *experts = NULL;
    const int *rows[1];
    int n_rows[1];
    int rc = -1;
    if (cfg) {
        c = *cfg;
    } else {
        char path[4200];
        duet_config_t mc;
        snprintf(path, sizeof(path), "%s/config.json", model_dir);
        if (duet_config_load(path, &mc)) {
            fprintf(stderr, "duet serve: %s\n", duet_error());
            return -1;
        }
        int ne = mc.n_experts;
        duet_config_cleanup(&mc);
        experts = duet_calloc((size_t)(ne > 0 ? ne : 1), sizeof(int));
        if (!experts) {
            fprintf(stderr, "duet serve: out of memory\n");
            return -1;
        }
        for (int e = 0; e < ne; e++)
            experts[e] = e;
        rows[0] = experts;
        n_rows[0] = ne;
        c = (duet_pipe_config_t){.model_dir = model_dir,
                                 .n_attention = 1,
                                 .n_expert_shards = 1,
                                 .shard_experts = rows,
                                 .shard_n_experts = n_rows,
                                 .micro_batches = 2,
                                 .provider = "shm",
                                 .control = DUET_PIPE_CONTROL_INPROC,
                                 .threads = threads};
    }
    fprintf(stderr, "duet serve: bringing up %d attention and %d expert shard(s), m = %d\n",
            c.n_attention, c.n_expert_shards, c.micro_batches);
    duet_gw_pipe_opts_t po = {.model_name = name};
    if (duet_gw_pipe_create(&c, &po, eng)) {
        fprintf(stderr, "duet serve: %s\n", duet_error());
        goto out;
    }
    if (!duet_gw_pipe_wait_ready(*eng, 60000)) {
        fprintf(stderr, "duet serve: the deployment was not ready within 60 s\n");
        duet_gw_pipe_destroy(eng);
        goto out;
    }
    rc = 0;
out:
    duet_free(experts);
    return rc;
}

static int parse_long(const char *flag, const char *v, long lo, long hi, long *out)
{
    char *end = NULL;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || !end || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "duet serve: %s expects a whole number from %ld to %ld, not '%s'\n", flag,
                lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

int duet_cmd_serve(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'},   {"host", required_argument, NULL, 'H'},
        {"port", required_argument, NULL, 'p'},    {"model-name", required_argument, NULL, 'n'},
        {"api-key", required_argument, NULL, 'k'}, {"threads", required_argument, NULL, 't'},
        {"max-body", required_argument, NULL, 'b'}, {"topology", required_argument, NULL, 'T'},
        {"engine", required_argument, NULL, 'e'},   {"help", no_argument, NULL, 'h'},
        {"timeout", required_argument, NULL, 'o'},  {"request-timeout", required_argument, NULL, 'r'},
        {"max-connections", required_argument, NULL, 'c'},
        {"node", required_argument, NULL, 'N'},
        {NULL, 0, NULL, 0},
    };
    const char *model_dir = NULL, *host = "127.0.0.1", *model_name = NULL, *api_key = NULL;
    const char *topo_path = NULL, *only_node = NULL;
    long port = 8000, threads = 2, max_body = 1 << 20;
    long conn_timeout = 60, request_timeout = 3600, max_conns = 1000;
    bool threads_set = false, use_local = false;
    char model_buf[4096];
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 'H': host = optarg; break;
        case 'n': model_name = optarg; break;
        case 'k': api_key = optarg; break;
        case 'T': topo_path = optarg; break;
        case 'N': only_node = optarg; break;
        case 'e':
            if (!strcmp(optarg, "local"))
                use_local = true;
            else if (!strcmp(optarg, "pipeline"))
                use_local = false;
            else {
                fprintf(stderr, "duet serve: --engine expects 'pipeline' or 'local', not '%s'\n",
                        optarg);
                return 2;
            }
            break;
        case 'p':
            if (parse_long("--port", optarg, 0, 65535, &port))
                return 2;
            break;
        case 't':
            if (parse_long("--threads", optarg, 1, 1024, &threads))
                return 2;
            threads_set = true;
            break;
        case 'b':
            if (parse_long("--max-body", optarg, 1024, 1L << 30, &max_body))
                return 2;
            break;
        case 'o':
            if (parse_long("--timeout", optarg, 1, 86400, &conn_timeout))
                return 2;
            break;
        case 'r':
            if (parse_long("--request-timeout", optarg, 1, 7 * 86400, &request_timeout))
                return 2;
            break;
        case 'c':
            if (parse_long("--max-connections", optarg, 1, 100000, &max_conns))
                return 2;
            break;
        case 'h': usage(stdout); return 0;
        case ':':
            fprintf(stderr, "duet serve: %s needs a value\n", argv[optind - 1]);
            return 2;
        default:
            fprintf(stderr, "duet serve: unknown option '%s' (see duet serve --help)\n",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "duet serve: unexpected argument '%s' (see duet serve --help)\n",
                argv[optind]);
        return 2;
    }
    if (only_node && !topo_path) {
        fprintf(stderr, "duet serve: --node needs --topology\n");
        return 2;
    }
    if (use_local && topo_path) {
        fprintf(stderr, "duet serve: --engine local serves no --topology\n");
        return 2;
    }
    duet__topo_pipe_t tp;
    memset(&tp, 0, sizeof(tp));
    if (topo_path) {
        if (duet__topo_pipe_init(&tp, "serve", topo_path, model_dir, only_node != NULL))
            return 1;
        if (only_node) { /* the other nodes run as `duet node` processes */
            int ni = duet_topology_node_find(tp.topo, only_node);
            if (ni < 0 || ni != tp.cfg.scheduler_node) {
                fprintf(stderr,
                        "duet serve: --node %s: %s; the node serving must be the one with the "
                        "scheduler (%s)\n",
                        only_node, ni < 0 ? "no such node in the file" : "the scheduler is not there",
                        tp.cfg.node_names && tp.cfg.n_nodes > tp.cfg.scheduler_node
                            ? tp.cfg.node_names[tp.cfg.scheduler_node]
                            : "?");
                duet__topo_pipe_cleanup(&tp);
                return 2;
            }
            tp.cfg.only_node = only_node;
            duet__topo_node_malloc(&tp, only_node);
        }
        if (!tp.cfg.model_dir) {
            fprintf(stderr, "duet serve: %s names no model; give --model\n", topo_path);
            duet__topo_pipe_cleanup(&tp);
            return 1;
        }
        model_dir = tp.cfg.model_dir;
        if (threads_set)
            tp.cfg.threads = (int)threads;
    }
    if (!model_dir) {
        model_dir = duet_cli_default_model(model_buf, sizeof(model_buf));
        if (!model_dir) {
            fprintf(stderr, "duet serve: no --model given and the bundled models/" DUET_CLI_DEFAULT_MODEL
                            " was not found\n");
            return 1;
        }
    }
    if (!model_name) {
        const char *slash = strrchr(model_dir, '/');
        while (slash && !slash[1] && slash > model_dir) { /* trailing slash */
            const char *p = slash - 1;
            while (p > model_dir && *p != '/')
                p--;
            slash = *p == '/' ? p : NULL;
        }
        model_name = slash ? slash + 1 : model_dir;
    }
    char name_buf[256];
    snprintf(name_buf, sizeof(name_buf), "%s", model_name);
    char *trail = strchr(name_buf, '/');
    if (trail)
        *trail = 0;

    /* Compute workers spin a while after each job (DUET_CPU_SPIN_US) to
     * wake fast; when the compute threads of all shards already fill the
     * cores, the spinning only takes the CPU from the other shards and from
     * the HTTP threads that must write each token out (on 2 cores it cost
     * bench_load 40 % of its throughput and pushed the gateway's emit p99
     * past 1 ms), so it is turned off then unless the environment sets it. */
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    long compute = use_local       ? threads
                   : topo_path     ? (long)(tp.cfg.threads > 0 ? tp.cfg.threads : 1) *
                                     (long)(tp.cfg.n_attention + tp.cfg.n_expert_shards)
                                   : threads * 2;
    if (ncpu > 0 && compute >= ncpu && !getenv("DUET_CPU_SPIN_US")) {
        setenv("DUET_CPU_SPIN_US", "0", 0);
        fprintf(stderr,
                "duet serve: %ld compute threads on %ld cores: workers do not spin "
                "(DUET_CPU_SPIN_US=0; set it to choose)\n",
                compute, ncpu);
    }

    if (pipe(sig_pipe) != 0) {
        perror("duet serve: pipe");
        duet__topo_pipe_cleanup(&tp);
        return 1;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc = 1;
    duet_tokenizer_t *tok = NULL;
    duet_backend_t *be = NULL;
    duet_model_t *model = NULL;
    duet_gw_engine_t *eng = NULL;
    duet_gateway_t *gw = NULL;
    char tok_path[4200];
    snprintf(tok_path, sizeof(tok_path), "%s/tokenizer.json", model_dir);
    if (duet_tokenizer_load(tok_path, &tok)) {
        fprintf(stderr, "duet serve: %s\n", duet_error());
        goto out;
    }
    if (use_local) {
        duet_backend_opts_t bo = {.n_threads = (int)threads};
        if (duet_backend_open("cpu", &bo, &be)) {
            fprintf(stderr, "duet serve: %s\n", duet_error());
            goto out;
        }
        duet_load_opts_t lo = {.role = DUET_ROLE_FULL, .prefault = true,
                               .progress = duet_cli_progress,
                               .progress_arg = (void *)"loading model"};
        if (duet_model_load(model_dir, &lo, &model)) {
            fprintf(stderr, "duet serve: %s\n", duet_error());
            goto out;
        }
        duet_gw_local_opts_t glo = {.model_name = name_buf};
        if (duet_gw_local_create(be, model, NULL, &glo, &eng)) {
            fprintf(stderr, "duet serve: %s\n", duet_error());
            goto out;
        }
    } else if (start_pipeline(topo_path ? &tp.cfg : NULL, model_dir, (int)threads, name_buf,
                              &eng)) {
        goto out;
    }
    duet_gateway_opts_t go = {.host = host,
                              .port = (uint16_t)port,
                              .api_key = api_key,
                              .model_name = name_buf,
                              .model_dir = model_dir,
                              .max_body_bytes = (size_t)max_body,
                              .conn_timeout_s = (unsigned)conn_timeout,
                              .request_timeout_s = (unsigned)request_timeout,
                              .max_connections = (unsigned)max_conns};
    if (duet_gateway_create(&go, eng, tok, &gw)) {
        fprintf(stderr, "duet serve: %s\n", duet_error());
        goto out;
    }
    printf("duet: serving %s on http://%s:%u\n", name_buf, host, (unsigned)duet_gateway_port(gw));
    fflush(stdout);
    char ch;
    while (read(sig_pipe[0], &ch, 1) < 0 && errno == EINTR)
        ;
    fprintf(stderr, "duet serve: shutting down\n");
    rc = 0;
out:
    duet_gateway_destroy(&gw);
    if (use_local)
        duet_gw_local_destroy(&eng);
    else
        duet_gw_pipe_destroy(&eng);
    duet__topo_pipe_cleanup(&tp);
    duet_model_destroy(&model);
    duet_backend_close(&be);
    duet_tokenizer_destroy(&tok);
    close(sig_pipe[0]);
    close(sig_pipe[1]);
    return rc;
}
