/* duet serve — serve a model over the OpenAI-compatible HTTP API.
 *
 * With no arguments it serves the bundled demo model on 127.0.0.1:8000.
 * The model runs in this process on the single-process engine (continuous
 * batching, chunked prefill) behind the gateway's engine interface; the
 * disaggregated deployment plugs in behind the same interface. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "gateway/engine_local.h"
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
            "  --model-name NAME  name served in /v1/models and accepted in requests\n"
            "                     (default: the model directory's name)\n"
            "  --api-key KEY      require 'Authorization: Bearer KEY' on /v1/*\n"
            "  --threads N        compute threads (default 2)\n"
            "  --max-body BYTES   largest request body accepted (default 1048576)\n"
            "  -h, --help         show this help\n\n"
            "It prints 'duet: serving MODEL on http://HOST:PORT' once ready and runs until\n"
            "SIGINT or SIGTERM.\n");
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
        {"max-body", required_argument, NULL, 'b'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *model_dir = NULL, *host = "127.0.0.1", *model_name = NULL, *api_key = NULL;
    long port = 8000, threads = 2, max_body = 1 << 20;
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
        case 'p':
            if (parse_long("--port", optarg, 0, 65535, &port))
                return 2;
            break;
        case 't':
            if (parse_long("--threads", optarg, 1, 1024, &threads))
                return 2;
            break;
        case 'b':
            if (parse_long("--max-body", optarg, 1024, 1L << 30, &max_body))
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

    if (pipe(sig_pipe) != 0) {
        perror("duet serve: pipe");
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
    duet_backend_opts_t bo = {.n_threads = (int)threads};
    if (duet_backend_open("cpu", &bo, &be)) {
        fprintf(stderr, "duet serve: %s\n", duet_error());
        goto out;
    }
    duet_load_opts_t lo = {.role = DUET_ROLE_FULL, .prefault = true,
                           .progress = duet_cli_progress, .progress_arg = (void *)"loading model"};
    if (duet_model_load(model_dir, &lo, &model)) {
        fprintf(stderr, "duet serve: %s\n", duet_error());
        goto out;
    }
    duet_gw_local_opts_t glo = {.model_name = name_buf};
    if (duet_gw_local_create(be, model, NULL, &glo, &eng)) {
        fprintf(stderr, "duet serve: %s\n", duet_error());
        goto out;
    }
    duet_gateway_opts_t go = {.host = host,
                              .port = (uint16_t)port,
                              .api_key = api_key,
                              .model_name = name_buf,
                              .model_dir = model_dir,
                              .max_body_bytes = (size_t)max_body};
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
    duet_gw_local_destroy(&eng);
    duet_model_destroy(&model);
    duet_backend_close(&be);
    duet_tokenizer_destroy(&tok);
    close(sig_pipe[0]);
    close(sig_pipe[1]);
    return rc;
}
