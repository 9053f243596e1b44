/* fake_server — the gateway in front of the fake engine, as a program, so
 * that outside clients (the official openai Python client, curl) can be
 * tested against it before the real pipeline is wired in.
 *
 *   fake_server --tokenizer FILE [--port N] [--api-key K] [--model NAME]
 *               [--chat-style chatml|inst] [--model-dir DIR] [--max-context N] [--first-delay-ms N]
 * [--token-delay-ms N]
 *
 * Prints "LISTENING <port>" on stdout once serving, then runs until SIGINT
 * or SIGTERM. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_engine.h"
#include "gateway/gateway.h"

int main(int argc, char **argv)
{
    /* block the signals before any thread starts so only sigwait sees them */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    const char *tok_path = NULL;
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
        else if (!strcmp(a, "--model"))
            fo.model_name = v;
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
    if (!tok_path) {
        fprintf(stderr, "fake_server: --tokenizer FILE is required\n");
        return 2;
    }
    duet_tokenizer_t *tok = NULL;
    duet_gw_engine_t *eng = NULL;
    duet_gateway_t *gw = NULL;
    int rc = 1;
    if (duet_tokenizer_load(tok_path, &tok)) {
        fprintf(stderr, "fake_server: %s\n", duet_error());
        return 1;
    }
    fo.vocab = (uint32_t)duet_tokenizer_vocab_size(tok);
    if (fake_engine_create(&fo, &eng)) {
        fprintf(stderr, "fake_server: %s\n", duet_error());
        goto out_tok;
    }
    if (duet_gateway_create(&go, eng, tok, &gw)) {
        fprintf(stderr, "fake_server: %s\n", duet_error());
        goto out_eng;
    }
    printf("LISTENING %u\n", (unsigned)duet_gateway_port(gw));
    fflush(stdout);
    int sig;
    sigwait(&set, &sig);
    duet_gateway_destroy(&gw);
    rc = 0;
out_eng:
    fake_engine_destroy(&eng);
out_tok:
    duet_tokenizer_destroy(&tok);
    return rc;
}
