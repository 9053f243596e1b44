/* fake_server — the gateway in front of the fake engine, as a program, so
 * that outside clients (the official openai Python client, curl) can be
 * tested against it before the real pipeline is wired in.
 *
 *   fake_server (--tokenizer FILE | --model DIR) [--port N] [--api-key K]
 *               [--model-name NAME]
 *               [--chat-style chatml|inst] [--model-dir DIR] [--max-context N] [--first-delay-ms N]
 * [--token-delay-ms N]
 *
 * With --model DIR (builds with the CPU backend only) it serves that real
 * Hugging Face model directory through the single-process engine
 * (gateway/engine_local.h) instead of the fake: the tokenizer and chat
 * template then come from DIR.
 *
 * Prints "LISTENING <port>" on stdout once serving, then runs until SIGINT
 * or SIGTERM. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fake_engine.h"
#include "gateway/engine_local.h"
#include "gateway/gateway.h"

static int g_sig_pipe[2];

static void on_signal(int sig)
{
    char c = (char)sig;
    ssize_t w = write(g_sig_pipe[1], &c, 1); /* async-signal-safe */
    (void)w;
}

int main(int argc, char **argv)
{
    /* Libraries start threads before main (OpenBLAS does), so a signal may
     * land on any thread: a handler (process-wide) writes to a pipe that
     * main waits on. */
    if (pipe(g_sig_pipe) != 0)
        return 1;
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    const char *tok_path = NULL;
    const char *model_dir = NULL;
    char tok_buf[4096];
    duet_gateway_opts_t go = {.request_timeout_s = 120};
    fake_engine_opts_t fo = {.max_context = 256, .eos_id = 0, .ready = true};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "fake_server: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "--tokenizer"))
            tok_path = v;
        else if (!strcmp(a, "--port"))
            go.port = (uint16_t)atoi(v);
        else if (!strcmp(a, "--api-key"))
            go.api_key = v;
        else if (!strcmp(a, "--model-name"))
            fo.model_name = v;
        else if (!strcmp(a, "--model"))
            model_dir = v;
        else if (!strcmp(a, "--chat-style"))
            go.chat_style = !strcmp(v, "inst") ? DUET_GW_CHAT_INST : DUET_GW_CHAT_CHATML;
        else if (!strcmp(a, "--model-dir"))
            go.model_dir = v;
        else if (!strcmp(a, "--max-context"))
            fo.max_context = (uint32_t)atoi(v);
        else if (!strcmp(a, "--first-delay-ms"))
            fo.first_delay_ms = (unsigned)atoi(v);
        else if (!strcmp(a, "--token-delay-ms"))
            fo.token_delay_ms = (unsigned)atoi(v);
        else {
            fprintf(stderr, "fake_server: unknown option %s\n", a);
            return 2;
        }
    }
    if (model_dir) {
        if (!tok_path) {
            snprintf(tok_buf, sizeof(tok_buf), "%s/tokenizer.json", model_dir);
            tok_path = tok_buf;
        }
        if (!go.model_dir)
            go.model_dir = model_dir;
        if (!fo.model_name) { /* serve it under its directory's name */
            const char *slash = strrchr(model_dir, '/');
            fo.model_name = slash && slash[1] ? slash + 1 : model_dir;
        }
    }
    if (!tok_path) {
        fprintf(stderr, "fake_server: --tokenizer FILE or --model DIR is required\n");
        return 2;
    }
    duet_tokenizer_t *tok = NULL;
    duet_gw_engine_t *eng = NULL;
    duet_gateway_t *gw = NULL;
    duet_backend_t *be = NULL;
    duet_model_t *model = NULL;
    int rc = 1;
    if (duet_tokenizer_load(tok_path, &tok)) {
        fprintf(stderr, "fake_server: %s\n", duet_error());
        return 1;
    }
    if (model_dir) {
#ifdef DUET_GW_WITH_CPU
        duet_backend_opts_t bo = {.n_threads = 2};
        duet_gw_local_opts_t lo = {.model_name = fo.model_name};
        if (duet_backend_open("cpu", &bo, &be) || duet_model_load(model_dir, NULL, &model) ||
            duet_gw_local_create(be, model, NULL, &lo, &eng)) {
            fprintf(stderr, "fake_server: %s: %s\n", model_dir, duet_error());
            goto out_eng;
        }
#else
        fprintf(stderr, "fake_server: built without the CPU backend; --model is unavailable\n");
        goto out_tok;
#endif
    } else {
        fo.vocab = (uint32_t)duet_tokenizer_vocab_size(tok);
        if (fake_engine_create(&fo, &eng)) {
            fprintf(stderr, "fake_server: %s\n", duet_error());
            goto out_tok;
        }
    }
    if (duet_gateway_create(&go, eng, tok, &gw)) {
        fprintf(stderr, "fake_server: %s\n", duet_error());
        goto out_eng;
    }
    printf("LISTENING %u\n", (unsigned)duet_gateway_port(gw));
    fflush(stdout);
    char c;
    while (read(g_sig_pipe[0], &c, 1) < 0 && errno == EINTR)
        ;
    duet_gateway_destroy(&gw);
    rc = 0;
out_eng:
    if (model_dir) {
        duet_gw_local_destroy(&eng);
        duet_model_destroy(&model);
#ifdef DUET_GW_WITH_CPU
        duet_backend_close(&be);
#endif
    } else {
        fake_engine_destroy(&eng);
    }
out_tok:
    duet_tokenizer_destroy(&tok);
    return rc;
}
