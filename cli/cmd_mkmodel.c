/* duet mkmodel — write a random-weight Hugging Face checkpoint of any shape
 * (model/mkmodel.h does the work; this file parses flags and shows
 * progress). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "model/mkmodel.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: duet mkmodel --out DIR [options]\n"
            "\n"
            "Write a random-weight checkpoint in Hugging Face layout into DIR (created if\n"
            "missing; existing files of the same names are overwritten): config.json,\n"
            "generation_config.json, model.safetensors (or model-0000k-of-0000n.safetensors\n"
            "shards plus model.safetensors.index.json), and a byte-level BPE tokenizer.json\n"
            "(256 byte tokens, merges up to the vocabulary size, <|endoftext|> as the last id,\n"
            "which is also bos and eos). Weights are approximately normal with standard\n"
            "deviation 0.02, norm weights 1. The tensors depend only on the shape and the seed,\n"
            "not on --shards. Tensors are written as they are generated, so memory use stays\n"
            "small whatever the model size.\n"
            "\n"
            "options (other flags override the preset's values, in any order):\n"
            "  --out DIR          output directory (required)\n"
            "  --preset NAME      tiny (default): mixtral, hidden 64, 2 layers, 4 heads / 2 KV\n"
            "                       heads, 8 experts top-2, expert width 128, vocab 512, bf16\n"
            "                     bench: mixtral, hidden 1024, 12 layers, 16 heads / 4 KV heads,\n"
            "                       8 experts top-2, expert width 2816, vocab 32000, bf16\n"
            "                       (about 1 B parameters, 2 GB)\n"
            "  --arch NAME        mixtral | qwen2_moe | qwen3_moe | olmoe (default mixtral);\n"
            "                     qwen2_moe adds q/k/v biases and a shared expert, qwen3_moe\n"
            "                     per-head q/k norms, olmoe q/k norms over the projection\n"
            "  --hidden N         hidden size\n"
            "  --layers N         number of layers\n"
            "  --heads N          attention heads\n"
            "  --kv-heads N       key/value heads (must divide --heads)\n"
            "  --head-dim N       head dimension (default hidden / heads)\n"
            "  --experts N        routed experts per layer\n"
            "  --top-k N          experts per token\n"
            "  --expert-dim N     width of one expert's FFN\n"
            "  --shared-dim N     qwen2_moe shared expert width (default 2 x expert width)\n"
            "  --vocab N          vocabulary size (at least 257)\n"
            "  --max-pos N        max_position_embeddings (default 4096; tiny 1024)\n"
            "  --rope-theta X     RoPE base (default 1000000)\n"
            "  --dtype T          bf16 | f16 | f32 (default bf16)\n"
            "  --tie              tie the LM head to the embeddings (no lm_head.weight)\n"
            "  --seed S           random seed (default 1)\n"
            "  --shards N         split the weights into N safetensors files (default 1)\n"
            "  --quiet            no progress on stderr (shown only when stderr is a terminal)\n"
            "  -h, --help         this help\n");
}

typedef struct prog {
    int last_pct;
} prog_t;

static void show_progress(void *arg, size_t done, size_t total)
{
    prog_t *p = arg;
    int pct = total ? (int)(100.0 * (double)done / (double)total) : 100;
    if (pct == p->last_pct)
        return;
    p->last_pct = pct;
    fprintf(stderr, "\rwriting weights: %3d%% (%.1f of %.1f MB)", pct, (double)done / 1e6,
            (double)total / 1e6);
    if (done >= total)
        fputc('\n', stderr);
    fflush(stderr);
}

/* Library details already start with "mkmodel: " where they have no path. */
static void report(void)
{
    const char *e = duet_error();
    if (!strncmp(e, "mkmodel: ", 9))
        fprintf(stderr, "duet %s\n", e);
    else
        fprintf(stderr, "duet mkmodel: %s\n", e);
}

static int parse_int(const char *flag, const char *s, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v <= 0 || v > (1L << 30)) {
        fprintf(stderr, "duet mkmodel: %s wants a positive integer, not '%s'\n", flag, s);
        return -1;
    }
    *out = (int)v;
    return 0;
}

enum {
    OPT_OUT = 256,
    OPT_PRESET,
    OPT_ARCH,
    OPT_HIDDEN,
    OPT_LAYERS,
    OPT_HEADS,
    OPT_KV_HEADS,
    OPT_HEAD_DIM,
    OPT_EXPERTS,
    OPT_TOP_K,
    OPT_EXPERT_DIM,
    OPT_SHARED_DIM,
    OPT_VOCAB,
    OPT_MAX_POS,
    OPT_ROPE_THETA,
    OPT_DTYPE,
    OPT_TIE,
    OPT_SEED,
    OPT_SHARDS,
    OPT_QUIET,
};

int duet_cmd_mkmodel(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"out", required_argument, NULL, OPT_OUT},
        {"preset", required_argument, NULL, OPT_PRESET},
        {"arch", required_argument, NULL, OPT_ARCH},
        {"hidden", required_argument, NULL, OPT_HIDDEN},
        {"layers", required_argument, NULL, OPT_LAYERS},
        {"heads", required_argument, NULL, OPT_HEADS},
        {"kv-heads", required_argument, NULL, OPT_KV_HEADS},
        {"head-dim", required_argument, NULL, OPT_HEAD_DIM},
        {"experts", required_argument, NULL, OPT_EXPERTS},
        {"top-k", required_argument, NULL, OPT_TOP_K},
        {"expert-dim", required_argument, NULL, OPT_EXPERT_DIM},
        {"shared-dim", required_argument, NULL, OPT_SHARED_DIM},
        {"vocab", required_argument, NULL, OPT_VOCAB},
        {"max-pos", required_argument, NULL, OPT_MAX_POS},
        {"rope-theta", required_argument, NULL, OPT_ROPE_THETA},
        {"dtype", required_argument, NULL, OPT_DTYPE},
        {"tie", no_argument, NULL, OPT_TIE},
        {"seed", required_argument, NULL, OPT_SEED},
        {"shards", required_argument, NULL, OPT_SHARDS},
        {"quiet", no_argument, NULL, OPT_QUIET},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    /* Two passes: the preset first, then every other flag over it, so the
     * order on the command line does not matter. */
    const char *preset = "tiny", *out = NULL;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        if (c == 'h') {
            usage(stdout);
            return 0;
        }
        if (c == '?' || c == ':') {
            fprintf(stderr, "duet mkmodel: unknown option or missing value: %s\n",
                    argv[optind - 1]);
            usage(stderr);
            return 2;
        }
        if (c == OPT_PRESET)
            preset = optarg;
        else if (c == OPT_OUT)
            out = optarg;
    }
    if (optind < argc) {
        fprintf(stderr, "duet mkmodel: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!out) {
        fprintf(stderr, "duet mkmodel: --out DIR is required (see --help)\n");
        return 2;
    }
    duet_mkmodel_opts_t o;
    if (duet_mkmodel_preset(preset, &o)) {
        report();
        return 2;
    }
    bool quiet = false;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        int rc = 0;
        switch (c) {
        case OPT_ARCH:
            if (!strcmp(optarg, "mixtral"))
                o.arch = DUET_ARCH_MIXTRAL;
            else if (!strcmp(optarg, "qwen2_moe"))
                o.arch = DUET_ARCH_QWEN2_MOE;
            else if (!strcmp(optarg, "qwen3_moe"))
                o.arch = DUET_ARCH_QWEN3_MOE;
            else if (!strcmp(optarg, "olmoe"))
                o.arch = DUET_ARCH_OLMOE;
            else {
                fprintf(stderr,
                        "duet mkmodel: --arch must be mixtral, qwen2_moe, qwen3_moe or olmoe\n");
                return 2;
            }
            break;
        case OPT_HIDDEN: rc = parse_int("--hidden", optarg, &o.hidden); break;
        case OPT_LAYERS: rc = parse_int("--layers", optarg, &o.n_layers); break;
        case OPT_HEADS: rc = parse_int("--heads", optarg, &o.n_heads); break;
        case OPT_KV_HEADS: rc = parse_int("--kv-heads", optarg, &o.n_kv_heads); break;
        case OPT_HEAD_DIM: rc = parse_int("--head-dim", optarg, &o.head_dim); break;
        case OPT_EXPERTS: rc = parse_int("--experts", optarg, &o.n_experts); break;
        case OPT_TOP_K: rc = parse_int("--top-k", optarg, &o.top_k); break;
        case OPT_EXPERT_DIM: rc = parse_int("--expert-dim", optarg, &o.expert_dim); break;
        case OPT_SHARED_DIM: rc = parse_int("--shared-dim", optarg, &o.shared_dim); break;
        case OPT_VOCAB: rc = parse_int("--vocab", optarg, &o.vocab); break;
        case OPT_MAX_POS: rc = parse_int("--max-pos", optarg, &o.max_pos); break;
        case OPT_SHARDS: rc = parse_int("--shards", optarg, &o.shards); break;
        case OPT_ROPE_THETA: {
            char *end;
            o.rope_theta = strtof(optarg, &end);
            if (end == optarg || *end || !(o.rope_theta > 0)) {
                fprintf(stderr, "duet mkmodel: --rope-theta wants a positive number\n");
                return 2;
            }
            break;
        }
        case OPT_SEED: {
            char *end;
            errno = 0;
            o.seed = strtoull(optarg, &end, 0);
            if (errno || end == optarg || *end) {
                fprintf(stderr, "duet mkmodel: --seed wants an integer\n");
                return 2;
            }
            break;
        }
        case OPT_DTYPE:
            if (!strcmp(optarg, "bf16"))
                o.dtype = DUET_DTYPE_BF16;
            else if (!strcmp(optarg, "f16"))
                o.dtype = DUET_DTYPE_F16;
            else if (!strcmp(optarg, "f32"))
                o.dtype = DUET_DTYPE_F32;
            else {
                fprintf(stderr, "duet mkmodel: --dtype must be bf16, f16 or f32\n");
                return 2;
            }
            break;
        case OPT_TIE: o.tie_embeddings = true; break;
        case OPT_QUIET: quiet = true; break;
        default: break;
        }
        if (rc)
            return 2;
    }
    if (duet_mkmodel_check(&o)) {
        report();
        return 2;
    }
    prog_t prog = {.last_pct = -1};
    if (!quiet && isatty(STDERR_FILENO)) {
        o.progress = show_progress;
        o.progress_arg = &prog;
    }
    uint64_t params = duet_mkmodel_params(&o), bytes = duet_mkmodel_bytes(&o);
    if (duet_mkmodel_write(out, &o)) {
        report();
        return 1;
    }
    printf("wrote %s: %.1f M parameters, %.1f MB of weights in %d file%s\n", out,
           (double)params / 1e6, (double)bytes / 1e6, o.shards, o.shards > 1 ? "s" : "");
    return 0;
}
