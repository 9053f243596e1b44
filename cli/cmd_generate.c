/* duet generate — load a model, encode a prompt, run the single-process
 * engine (model/forward.h) and stream the continuation as it is produced,
 * or print one JSON object with ids, text and timings (--json). */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "model/backend.h"
#include "model/forward.h"
#include "model/model.h"
#include "model/sampling.h"
#include "model/tokenizer.h"


static void usage(FILE *f)
{
    fprintf(f, "usage: duet generate [--model DIR] (--prompt TEXT | --prompt-ids IDS) [options]\n"
               "\n"
               "Generate a continuation of a prompt with a Hugging Face MoE checkpoint (mixtral,\n"
               "qwen2_moe, qwen3_moe, olmoe) in this process, on the CPU backend. The text is\n"
               "written to stdout as it is generated; generation stops at an end-of-sequence\n"
               "token or after --max-tokens tokens. Sampling is greedy unless --temperature > 0.\n"
               "\n"
               "options:\n"
               "  -m, --model DIR    model directory (config.json, safetensors, tokenizer.json);\n"
               "                     default: the bundled models/" DUET_CLI_DEFAULT_MODEL "\n"
               "  -p, --prompt TEXT  prompt text, encoded with DIR/tokenizer.json\n"
               "  --prompt-ids IDS   prompt as comma-separated token ids (e.g. 1,2,3) instead\n"
               "  --max-tokens N     most tokens to generate (default 128)\n"
               "  --temperature T    sampling temperature; 0 = greedy (default 0)\n"
               "  --top-k K          sample among the K most likely tokens; 0 = off (default 0)\n"
               "  --top-p P          nucleus sampling mass in (0, 1]; 1 = off (default 1)\n"
               "  --seed S           random seed; a token depends only on (seed, position)\n"
               "                     and the logits, so a rerun gives the same text (default 0)\n"
               "  --threads N        CPU threads including the main one (default: all CPUs)\n"
               "  --precision P      fp32 (default: exact f32 activations, matches HF's float32)\n"
               "                     or bf16: activations rounded to bf16 for bf16-weight GEMMs\n"
               "                     of 4+ rows (the prompt's prefill; decode of one sequence\n"
               "                     stays exact), with AVX512-BF16 dot products; where the CPU\n"
               "                     lacks them, a notice and fp32. Default from the\n"
               "                     environment's DUET_PRECISION, else fp32\n"
               "  --json             print one JSON object instead of streaming: prompt_ids, ids,\n"
               "                     text, finish_reason (eos|length) and timings (load_ms,\n"
               "                     prefill_ms, prefill_tokens_per_s, decode_ms,\n"
               "                     decode_tokens_per_s, precision)\n"
               "  --rope-freq MODE   checkpoint (default): RoPE frequencies rounded to the\n"
               "                     weights' dtype, as HF has them in a model cast to bf16;\n"
               "                     f32: as a fresh float32 load computes them\n"
               "  --ignore-eos       keep generating past end-of-sequence tokens\n"
               "  --stats            print timings to stderr after streaming\n"
               "  --topology FILE    generate through the deployment FILE (attention and expert\n"
               "                     shards as actors, in this process); the model is the\n"
               "                     file's unless --model is given\n"
               "  --trace FILE       with --topology: write a Chrome/Perfetto trace JSON of\n"
               "                     the pipeline (open it in ui.perfetto.dev)\n"
               "  -h, --help         this help\n");
}

static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "duet generate: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(run 'duet generate --help' for the options)\n");
    va_end(ap);
    return 2;
}

static bool parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static bool parse_float(const char *s, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !isfinite(v))
        return false;
    *out = v;
    return true;
}

/* "1,2,3" -> ids; error detail names the bad element. */
static duet_status_t parse_ids(const char *s, int32_t **ids_out, int32_t *n_out)
{
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    int32_t *ids = duet_calloc(cap, sizeof(int32_t));
    if (!ids)
        return duet_errorf(DUET_ERR_NOMEM, "out of memory");
    int32_t n = 0;
    const char *p = s;
    for (;;) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (errno || end == p || v < 0 || v > INT32_MAX || (*end && *end != ',')) {
            duet_free(ids);
            return duet_errorf(DUET_ERR_INVALID,
                               "--prompt-ids: element %d ('%.*s') is not a token id", n + 1,
                               (int)strcspn(p, ","), p);
        }
        ids[n++] = (int32_t)v;
        if (!*end)
            break;
        p = end + 1;
    }
    *ids_out = ids;
    *n_out = n;
    return DUET_OK;
}

typedef struct gen_opts {
    const char *model;
    const char *prompt;
    const char *prompt_ids;
    long max_tokens;
    duet_sampling_params_t sp;
    long threads;
    int precision; /* DUET_PRECISION_* */
    bool json;
    bool ignore_eos;
    duet_rope_freq_t rope_freq;
    bool stats;
    const char *topology;
    const char *trace;
} gen_opts_t;

/* cmd_generate_topo.c */
int duet__topology_model_dir(const char *path, char *buf, size_t cap);
int duet__generate_topology(const char *path, const char *model_dir, const int32_t *prompt,
                            int32_t n_prompt, int32_t max_tokens, int32_t eos,
                            const duet_sampling_params_t *sp, int threads, const char *trace,
                            int32_t *gen, int32_t *n_gen, double *secs);

static bool is_eos(const duet_config_t *cfg, int32_t eos_tok, int32_t id)
{
    for (int i = 0; i < cfg->n_eos; i++)
        if (cfg->eos_ids[i] == id)
            return true;
    return cfg->n_eos == 0 && eos_tok >= 0 && id == eos_tok;
}

/* --topology: the whole continuation through the deployment, then printed
 * as the engine path prints it. */
static int run_topology(const gen_opts_t *o, const duet_config_t *cfg, duet_tokenizer_t *tok,
                        duet_detok_t *detok, const int32_t *prompt, int32_t n_prompt,
                        double load_ms)
{
    int32_t eos = -1;
    if (!o->ignore_eos)
        eos = cfg->n_eos > 0 ? cfg->eos_ids[0] : (tok ? duet_tokenizer_eos(tok) : -1);
    int32_t *gen = duet_calloc((size_t)o->max_tokens + 1, sizeof(int32_t));
    int32_t n_gen = 0;
    double secs = 0;
    if (!gen)
        return 1;
    if (duet__generate_topology(o->topology, o->model, prompt, n_prompt, (int32_t)o->max_tokens,
                                eos, &o->sp, (int)o->threads, o->trace, gen, &n_gen, &secs)) {
        duet_free(gen);
        return 1;
    }
    const char *finish = "length";
    if (n_gen > 0 && eos >= 0 && is_eos(cfg, eos, gen[n_gen - 1])) {
        n_gen--;
        finish = "eos";
    }
    duet_buf_t text = {0};
    for (int32_t i = 0; i < n_gen; i++) {
        if (detok) {
            const char *piece;
            size_t plen;
            if (duet_detok_push(detok, gen[i], &piece, &plen))
                break;
            if (o->json)
                duet_buf_append(&text, piece, plen);
            else
                fwrite(piece, 1, plen, stdout);
        } else if (!o->json) {
            printf("%s%d", i ? "," : "", gen[i]);
        }
    }
    if (detok) {
        const char *piece;
        size_t plen;
        if (!duet_detok_flush(detok, &piece, &plen) && plen) {
            if (o->json)
                duet_buf_append(&text, piece, plen);
            else
                fwrite(piece, 1, plen, stdout);
        }
    }
    if (o->json) {
        json_t *j = json_object(), *pids = json_array(), *ids = json_array(), *tm = json_object();
        for (int32_t i = 0; i < n_prompt; i++)
            json_array_append_new(pids, json_integer(prompt[i]));
        for (int32_t i = 0; i < n_gen; i++)
            json_array_append_new(ids, json_integer(gen[i]));
        json_object_set_new(j, "model", json_string(o->model));
        json_object_set_new(j, "topology", json_string(o->topology));
        json_object_set_new(j, "prompt_ids", pids);
        json_object_set_new(j, "ids", ids);
        json_object_set_new(j, "text", tok ? json_stringn(text.data ? (const char *)text.data : "",
                                                          text.len)
                                           : json_null());
        json_object_set_new(j, "finish_reason", json_string(finish));
        json_object_set_new(tm, "load_ms", json_real(load_ms));
        json_object_set_new(tm, "generate_ms", json_real(secs * 1e3));
        json_object_set_new(tm, "precision", json_string(duet_precision_name(o->precision)));
        json_object_set_new(j, "timings", tm);
        char *s = json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII);
        if (s)
            printf("%s\n", s);
        free(s);
        json_decref(j);
    } else {
        printf("\n");
        if (o->stats)
            fprintf(stderr, "[load %.0f ms | %d tokens through %s in %.0f ms | %s]\n", load_ms,
                    n_gen, o->topology, secs * 1e3, finish);
    }
    fflush(stdout);
    duet_buf_cleanup(&text);
    duet_free(gen);
    return 0;
}

static int run(const gen_opts_t *o)
{
    int rc = 1;
    duet_status_t st;
    duet_model_t *m = NULL;
    duet_tokenizer_t *tok = NULL;
    duet_detok_t *detok = NULL;
    duet_backend_t *be = NULL;
    duet_engine_t *eng = NULL;
    int32_t *prompt = NULL, *gen = NULL;
    int32_t n_prompt = 0, n_gen = 0;
    const char *finish = "length";
    duet_buf_t text = {0};

    double t0 = duet_now_s();
    if ((st = duet_model_load(o->model, NULL, &m))) {
        fprintf(stderr, "duet generate: %s\n", duet_error());
        goto out;
    }
    double load_ms = (duet_now_s() - t0) * 1e3;
    char tpath[PATH_MAX];
    snprintf(tpath, sizeof(tpath), "%s/tokenizer.json", o->model);
    if (access(tpath, R_OK) == 0 && (st = duet_tokenizer_load(o->model, &tok))) {
        fprintf(stderr, "duet generate: %s\n", duet_error());
        goto out;
    }
    if (o->prompt) {
        if (!tok) {
            fprintf(stderr, "duet generate: %s has no tokenizer.json; use --prompt-ids\n",
                    o->model);
            goto out;
        }
        size_t n = 0;
        if ((st = duet_tokenizer_encode(tok, o->prompt, strlen(o->prompt), true, &prompt, &n))) {
            fprintf(stderr, "duet generate: encoding the prompt: %s\n", duet_error());
            goto out;
        }
        n_prompt = (int32_t)n;
    } else if ((st = parse_ids(o->prompt_ids, &prompt, &n_prompt))) {
        fprintf(stderr, "duet generate: %s\n", duet_error());
        rc = 2;
        goto out;
    }
    const duet_config_t *cfg = &m->cfg;
    if (n_prompt == 0) {
        fprintf(stderr, "duet generate: the prompt encodes to no tokens\n");
        rc = 2;
        goto out;
    }
    for (int32_t i = 0; i < n_prompt; i++)
        if (prompt[i] >= cfg->vocab) {
            fprintf(stderr,
                    "duet generate: prompt token %d is id %d, outside the vocabulary of %d\n", i,
                    prompt[i], cfg->vocab);
            rc = 2;
            goto out;
        }
    int64_t max_len = (int64_t)n_prompt + o->max_tokens;
    if (cfg->max_pos > 0 && max_len > cfg->max_pos) {
        fprintf(stderr,
                "duet generate: prompt (%d tokens) + --max-tokens (%ld) exceeds the model's %d "
                "positions (max_position_embeddings)\n",
                n_prompt, o->max_tokens, cfg->max_pos);
        rc = 2;
        goto out;
    }
    if (tok && (st = duet_detok_create(tok, true, &detok))) {
        fprintf(stderr, "duet generate: %s\n", duet_error());
        goto out;
    }
    if (o->topology) {
        rc = run_topology(o, cfg, tok, detok, prompt, n_prompt, load_ms);
        goto out;
    }
    duet_backend_opts_t bo = {.n_threads = (int)o->threads,
                              .precision = (duet_backend_precision_t)o->precision};
    if ((st = duet_backend_open("cpu", &bo, &be))) {
        fprintf(stderr, "duet generate: %s\n", duet_error());
        goto out;
    }
    duet_engine_opts_t eo = {0};
    eo.fwd.max_tokens = (int32_t)DUET_MIN((int64_t)512, (int64_t)n_prompt);
    eo.fwd.max_seqs = 1;
    eo.fwd.max_logits = 1;
    eo.fwd.rope_freq = o->rope_freq;
    eo.kv.block_size = 16;
    eo.kv.max_seqs = 1;
    eo.kv.max_seq_len = (int32_t)max_len;
    eo.kv.n_blocks = (int32_t)((max_len + 15) / 16);
    if ((st = duet_engine_create(be, m, &eo, &eng))) {
        fprintf(stderr, "duet generate: %s\n", duet_error());
        goto out;
    }
    gen = duet_calloc((size_t)o->max_tokens + 1, sizeof(int32_t));
    if (!gen) {
        fprintf(stderr, "duet generate: out of memory\n");
        goto out;
    }
    int32_t seq;
    if ((st = duet_kvcache_seq_open(duet_engine_kv(eng), &seq)))
        goto err_step;

    /* prefill, in chunks of the engine's micro-batch size */
    double tp = duet_now_s();
    int32_t tok_id = -1;
    for (int32_t done = 0; done < n_prompt;) {
        int32_t take = DUET_MIN(eo.fwd.max_tokens, n_prompt - done);
        bool last = done + take == n_prompt;
        duet_seq_input_t in = {seq, take, prompt + done,
                               last ? DUET_LOGITS_LAST : DUET_LOGITS_NONE};
        if ((st = duet_engine_step(eng, 1, &in, NULL, NULL)))
            goto err_step;
        done += take;
    }
    double prefill_s = duet_now_s() - tp;
    double td = duet_now_s();
    int32_t decode_steps = 0;
    while (n_gen < o->max_tokens) {
        if ((st = duet_engine_sample(eng, &o->sp, &tok_id)))
            goto err_step;
        if (!o->ignore_eos && is_eos(cfg, tok ? duet_tokenizer_eos(tok) : -1, tok_id)) {
            finish = "eos";
            break;
        }
        gen[n_gen++] = tok_id;
        if (detok) {
            const char *piece;
            size_t plen;
            if ((st = duet_detok_push(detok, tok_id, &piece, &plen)))
                goto err_step;
            if (o->json)
                duet_buf_append(&text, piece, plen);
            else if (plen) {
                fwrite(piece, 1, plen, stdout);
                fflush(stdout);
            }
        } else if (!o->json) {
            printf("%s%d", n_gen > 1 ? "," : "", tok_id);
            fflush(stdout);
        }
        if (n_gen == o->max_tokens)
            break;
        duet_seq_input_t in = {seq, 1, &tok_id, DUET_LOGITS_LAST};
        if ((st = duet_engine_step(eng, 1, &in, NULL, NULL)))
            goto err_step;
        decode_steps++;
    }
    double decode_s = duet_now_s() - td;
    if (detok) {
        const char *piece;
        size_t plen;
        if (!duet_detok_flush(detok, &piece, &plen) && plen) {
            if (o->json)
                duet_buf_append(&text, piece, plen);
            else
                fwrite(piece, 1, plen, stdout);
        }
    }
    double prefill_tps = prefill_s > 0 ? n_prompt / prefill_s : 0;
    double decode_tps = decode_s > 0 && decode_steps > 0 ? decode_steps / decode_s : 0;
    if (o->json) {
        json_t *j = json_object(), *pids = json_array(), *ids = json_array(), *tm = json_object();
        for (int32_t i = 0; i < n_prompt; i++)
            json_array_append_new(pids, json_integer(prompt[i]));
        for (int32_t i = 0; i < n_gen; i++)
            json_array_append_new(ids, json_integer(gen[i]));
        json_object_set_new(j, "model", json_string(o->model));
        json_object_set_new(j, "prompt_ids", pids);
        json_object_set_new(j, "ids", ids);
        if (tok)
            json_object_set_new(j, "text",
                                json_stringn(text.data ? (const char *)text.data : "", text.len));
        else
            json_object_set_new(j, "text", json_null());
        json_object_set_new(j, "finish_reason", json_string(finish));
        json_object_set_new(tm, "load_ms", json_real(load_ms));
        json_object_set_new(tm, "prefill_ms", json_real(prefill_s * 1e3));
        json_object_set_new(tm, "prefill_tokens_per_s", json_real(prefill_tps));
        json_object_set_new(tm, "decode_ms", json_real(decode_s * 1e3));
        json_object_set_new(tm, "decode_tokens_per_s", json_real(decode_tps));
        json_object_set_new(
            tm, "threads",
            json_integer(o->threads > 0 ? o->threads : sysconf(_SC_NPROCESSORS_ONLN)));
        json_object_set_new(tm, "precision", json_string(duet_precision_name(o->precision)));
        json_object_set_new(j, "timings", tm);
        char *s = json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII);
        if (s)
            printf("%s\n", s);
        free(s);
        json_decref(j);
    } else {
        printf("\n");
        if (o->stats)
            fprintf(stderr,
                    "[load %.0f ms | prefill %d tokens %.1f tokens/s | decode %d tokens %.1f "
                    "tokens/s | %s]\n",
                    load_ms, n_prompt, prefill_tps, n_gen, decode_tps, finish);
    }
    fflush(stdout);
    rc = 0;
    goto out;

err_step:
    fprintf(stderr, "duet generate: %s\n", duet_error());
out:
    duet_buf_cleanup(&text);
    duet_free(gen);
    duet_free(prompt);
    duet_engine_destroy(&eng);
    duet_backend_close(&be);
    duet_detok_destroy(&detok);
    duet_tokenizer_destroy(&tok);
    duet_model_destroy(&m);
    return rc;
}

int duet_cmd_generate(int argc, char **argv)
{
    enum {
        O_PROMPT_IDS = 256,
        O_MAX_TOKENS,
        O_TEMP,
        O_TOP_P,
        O_TOP_K,
        O_SEED,
        O_THREADS,
        O_JSON,
        O_IGNORE_EOS,
        O_STATS,
        O_ROPE_FREQ,
        O_TOPOLOGY,
        O_TRACE,
        O_PRECISION
    };
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'},
        {"prompt", required_argument, NULL, 'p'},
        {"prompt-ids", required_argument, NULL, O_PROMPT_IDS},
        {"max-tokens", required_argument, NULL, O_MAX_TOKENS},
        {"temperature", required_argument, NULL, O_TEMP},
        {"top-p", required_argument, NULL, O_TOP_P},
        {"top-k", required_argument, NULL, O_TOP_K},
        {"seed", required_argument, NULL, O_SEED},
        {"threads", required_argument, NULL, O_THREADS},
        {"json", no_argument, NULL, O_JSON},
        {"ignore-eos", no_argument, NULL, O_IGNORE_EOS},
        {"stats", no_argument, NULL, O_STATS},
        {"rope-freq", required_argument, NULL, O_ROPE_FREQ},
        {"topology", required_argument, NULL, O_TOPOLOGY},
        {"trace", required_argument, NULL, O_TRACE},
        {"precision", required_argument, NULL, O_PRECISION},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    gen_opts_t o = {.max_tokens = 128, .sp = {0.0f, 0, 1.0f, 0}, .threads = 0};
    char model_buf[PATH_MAX];
    long v;
    int c;
    const char *penv = getenv("DUET_PRECISION");
    if (penv && *penv) {
        int p = duet_precision_parse(penv);
        if (p < 0)
            return fail("DUET_PRECISION='%s' in the environment: want fp32 or bf16", penv);
        o.precision = p;
    }
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:p:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': o.model = optarg; break;
        case 'p': o.prompt = optarg; break;
        case O_PROMPT_IDS: o.prompt_ids = optarg; break;
        case O_MAX_TOKENS:
            if (!parse_long(optarg, 1, 1 << 24, &o.max_tokens))
                return fail("--max-tokens wants a positive integer, not '%s'", optarg);
            break;
        case O_TEMP:
            if (!parse_float(optarg, &o.sp.temperature) || o.sp.temperature < 0)
                return fail("--temperature wants a number >= 0, not '%s'", optarg);
            break;
        case O_TOP_P:
            if (!parse_float(optarg, &o.sp.top_p) || o.sp.top_p <= 0 || o.sp.top_p > 1)
                return fail("--top-p wants a number in (0, 1], not '%s'", optarg);
            break;
        case O_TOP_K:
            if (!parse_long(optarg, 0, INT32_MAX, &v))
                return fail("--top-k wants an integer >= 0, not '%s'", optarg);
            o.sp.top_k = (int32_t)v;
            break;
        case O_SEED: {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end || optarg[0] == '-')
                return fail("--seed wants a non-negative integer, not '%s'", optarg);
            o.sp.seed = s;
            break;
        }
        case O_THREADS:
            if (!parse_long(optarg, 1, 1024, &o.threads))
                return fail("--threads wants an integer in 1..1024, not '%s'", optarg);
            break;
        case O_JSON: o.json = true; break;
        case O_IGNORE_EOS: o.ignore_eos = true; break;
        case O_STATS: o.stats = true; break;
        case O_ROPE_FREQ:
            if (!strcmp(optarg, "checkpoint"))
                o.rope_freq = DUET_ROPE_FREQ_CHECKPOINT;
            else if (!strcmp(optarg, "f32"))
                o.rope_freq = DUET_ROPE_FREQ_F32;
            else
                return fail("--rope-freq wants 'checkpoint' or 'f32', not '%s'", optarg);
            break;
        case O_TOPOLOGY: o.topology = optarg; break;
        case O_TRACE: o.trace = optarg; break;
        case O_PRECISION:
            o.precision = duet_precision_parse(optarg);
            if (o.precision < 0)
                return fail("--precision wants fp32 or bf16, not '%s'", optarg);
            /* the flag wins over the environment, also for --topology's backends */
            if (setenv("DUET_PRECISION", duet_precision_name(o.precision), 1) != 0)
                return fail("cannot set DUET_PRECISION: %s", strerror(errno));
            break;
        case 'h': usage(stdout); return 0;
        case ':': return fail("option '%s' needs a value", argv[optind - 1]);
        default: return fail("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return fail("unexpected argument '%s' (quote the prompt: --prompt \"...\")", argv[optind]);
    if (!o.prompt == !o.prompt_ids)
        return fail("%s", o.prompt ? "give --prompt or --prompt-ids, not both"
                                   : "give a prompt: --prompt TEXT or --prompt-ids 1,2,3");
    if (o.trace && !o.topology)
        return fail("%s", "--trace traces a deployment: give --topology FILE");
    if (!o.model && o.topology) {
        if (duet__topology_model_dir(o.topology, model_buf, sizeof(model_buf)))
            return 2;
        o.model = model_buf;
    }
    if (!o.model) {
        const char *d = duet_cli_default_model(model_buf, sizeof(model_buf));
        if (!d)
            return fail("%s", "no --model given and the bundled models/" DUET_CLI_DEFAULT_MODEL
                              " was not found next to the executable");
        char *real = realpath(d, NULL);
        if (real) {
            snprintf(model_buf, sizeof(model_buf), "%s", real);
            free(real);
        }
        o.model = model_buf;
    }
    return run(&o);
}
