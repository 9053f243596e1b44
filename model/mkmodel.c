/* mkmodel — random-weight Hugging Face checkpoints (see mkmodel.h). The
 * tensor names and config keys are those transformers itself saves for each
 * architecture, so that duet_model_load and HF load the same files. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "model/mkmodel.h"
#include "model/safetensors.h"

enum init { INIT_NORMAL, INIT_ONES };

typedef struct plan_tensor {
    char name[112];
    int ndim;
    int64_t shape[2];
    enum init init;
    size_t nbytes;
} plan_tensor_t;

typedef struct plan {
    plan_tensor_t *t;
    size_t n, cap;
} plan_t;

duet_status_t duet_mkmodel_preset(const char *name, duet_mkmodel_opts_t *out)
{
    duet_mkmodel_opts_t o = {
        .arch = DUET_ARCH_MIXTRAL,
        .n_experts = 8,
        .top_k = 2,
        .dtype = DUET_DTYPE_BF16,
        .seed = 1,
        .shards = 1,
        .max_pos = 4096,
        .rope_theta = 1e6f,
    };
    if (!strcmp(name, "tiny")) {
        o.hidden = 64;
        o.n_layers = 2;
        o.n_heads = 4;
        o.n_kv_heads = 2;
        o.expert_dim = 128;
        o.vocab = 512;
        o.max_pos = 1024;
    } else if (!strcmp(name, "bench")) {
        o.hidden = 1024;
        o.n_layers = 12;
        o.n_heads = 16;
        o.n_kv_heads = 4;
        o.expert_dim = 2816;
        o.vocab = 32000;
    } else if (!strcmp(name, "mixtral-8l")) {
        /* Mixtral 8x7B's layer shape, 8 layers (~11.8 B parameters, 23.6 GB
         * bf16): the GPU benchmark's end-to-end model (bench/bench_gpu.c) */
        o.hidden = 4096;
        o.n_layers = 8;
        o.n_heads = 32;
        o.n_kv_heads = 8;
        o.expert_dim = 14336;
        o.vocab = 32000;
    } else {
        return duet_errorf(DUET_ERR_NOT_FOUND, "unknown preset '%s' (tiny, bench, mixtral-8l)",
                           name);
    }
    *out = o;
    return DUET_OK;
}

static int head_dim(const duet_mkmodel_opts_t *o)
{
    return o->head_dim > 0 ? o->head_dim : (o->n_heads > 0 ? o->hidden / o->n_heads : 0);
}

static int shared_dim(const duet_mkmodel_opts_t *o)
{
    if (o->arch != DUET_ARCH_QWEN2_MOE)
        return 0;
    return o->shared_dim > 0 ? o->shared_dim : 2 * o->expert_dim;
}

static size_t tensor_count(const duet_mkmodel_opts_t *o);

duet_status_t duet_mkmodel_check(const duet_mkmodel_opts_t *o)
{
    if (o->hidden <= 0 || o->n_layers <= 0 || o->n_heads <= 0 || o->n_kv_heads <= 0 ||
        o->n_experts <= 0 || o->top_k <= 0 || o->expert_dim <= 0 || o->vocab <= 0)
        return duet_errorf(DUET_ERR_INVALID, "mkmodel: every size must be positive");
    if (o->hidden > (1 << 20) || o->n_layers > 4096 || o->n_experts > 65536 ||
        o->expert_dim > (1 << 20) || o->vocab > (1 << 21) || o->n_heads > 4096)
        return duet_errorf(DUET_ERR_INVALID, "mkmodel: a size is unreasonably large");
    if (o->n_heads % o->n_kv_heads)
        return duet_errorf(DUET_ERR_INVALID, "mkmodel: --kv-heads %d does not divide --heads %d",
                           o->n_kv_heads, o->n_heads);
    if (o->head_dim <= 0 && o->hidden % o->n_heads)
        return duet_errorf(DUET_ERR_INVALID,
                           "mkmodel: --heads %d does not divide --hidden %d (give --head-dim)",
                           o->n_heads, o->hidden);
    if (o->arch == DUET_ARCH_OLMOE && head_dim(o) * o->n_heads != o->hidden)
        return duet_errorf(DUET_ERR_INVALID,
                           "mkmodel: olmoe needs head dim = hidden / heads (no --head-dim)");
    if (head_dim(o) % 2)
        return duet_errorf(DUET_ERR_INVALID, "mkmodel: head dim %d must be even", head_dim(o));
    if (o->top_k > o->n_experts)
        return duet_errorf(DUET_ERR_INVALID, "mkmodel: --top-k %d is more than --experts %d",
                           o->top_k, o->n_experts);
    if (o->vocab < 257)
        return duet_errorf(DUET_ERR_INVALID,
                           "mkmodel: --vocab %d is below 257 (256 byte tokens + <|endoftext|>)",
                           o->vocab);
    if (o->dtype != DUET_DTYPE_BF16 && o->dtype != DUET_DTYPE_F16 && o->dtype != DUET_DTYPE_F32)
        return duet_errorf(DUET_ERR_INVALID, "mkmodel: dtype must be bf16, f16 or f32");
    if (o->shards < 1 || o->shards > 9999)
        return duet_errorf(DUET_ERR_INVALID, "mkmodel: --shards must be in [1, 9999]");
    if (o->max_pos <= 0 || !(o->rope_theta > 0))
        return duet_errorf(DUET_ERR_INVALID, "mkmodel: max positions and rope theta must be > 0");
    size_t n = tensor_count(o);
    if ((size_t)o->shards > n)
        return duet_errorf(DUET_ERR_INVALID, "mkmodel: --shards %d is more than the %zu tensors",
                           o->shards, n);
    return DUET_OK;
}

static duet_status_t plan_add(plan_t *p, const duet_mkmodel_opts_t *o, enum init init, int ndim,
                              int64_t d0, int64_t d1, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));
static duet_status_t plan_add(plan_t *p, const duet_mkmodel_opts_t *o, enum init init, int ndim,
                              int64_t d0, int64_t d1, const char *fmt, ...)
{
    if (duet_vec_reserve((void **)&p->t, &p->cap, p->n + 1, sizeof(plan_tensor_t)))
        return duet_errorf(DUET_ERR_NOMEM, "mkmodel: out of memory");
    plan_tensor_t *t = &p->t[p->n++];
    memset(t, 0, sizeof(*t));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof(t->name), fmt, ap);
    va_end(ap);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = ndim > 1 ? d1 : 0;
    t->init = init;
    t->nbytes = duet_dtype_size(o->dtype) * (size_t)d0 * (size_t)(ndim > 1 ? d1 : 1);
    return DUET_OK;
}

static duet_status_t plan_mlp(plan_t *p, const duet_mkmodel_opts_t *o, int64_t dim, const char *pre,
                              const char *g, const char *u, const char *d)
{
    duet_status_t st;
    int64_t H = o->hidden;
    if ((st = plan_add(p, o, INIT_NORMAL, 2, dim, H, "%s%s.weight", pre, g)) ||
        (st = plan_add(p, o, INIT_NORMAL, 2, dim, H, "%s%s.weight", pre, u)) ||
        (st = plan_add(p, o, INIT_NORMAL, 2, H, dim, "%s%s.weight", pre, d)))
        return st;
    return DUET_OK;
}

/* Every tensor in file order: embeddings, layer by layer, final norm, head. */
static duet_status_t make_plan(const duet_mkmodel_opts_t *o, plan_t *p)
{
    duet_status_t st;
    int64_t H = o->hidden, hd = head_dim(o), Q = o->n_heads * hd, KV = o->n_kv_heads * hd;
    bool mixtral = o->arch == DUET_ARCH_MIXTRAL;
    if ((st = plan_add(p, o, INIT_NORMAL, 2, o->vocab, H, "model.embed_tokens.weight")))
        return st;
    for (int l = 0; l < o->n_layers; l++) {
        char a[64], pre[96];
        snprintf(a, sizeof(a), "model.layers.%d.self_attn", l);
        if ((st =
                 plan_add(p, o, INIT_ONES, 1, H, 0, "model.layers.%d.input_layernorm.weight", l)) ||
            (st = plan_add(p, o, INIT_NORMAL, 2, Q, H, "%s.q_proj.weight", a)) ||
            (st = plan_add(p, o, INIT_NORMAL, 2, KV, H, "%s.k_proj.weight", a)) ||
            (st = plan_add(p, o, INIT_NORMAL, 2, KV, H, "%s.v_proj.weight", a)) ||
            (st = plan_add(p, o, INIT_NORMAL, 2, H, Q, "%s.o_proj.weight", a)))
            return st;
        if (o->arch == DUET_ARCH_QWEN2_MOE &&
            ((st = plan_add(p, o, INIT_NORMAL, 1, Q, 0, "%s.q_proj.bias", a)) ||
             (st = plan_add(p, o, INIT_NORMAL, 1, KV, 0, "%s.k_proj.bias", a)) ||
             (st = plan_add(p, o, INIT_NORMAL, 1, KV, 0, "%s.v_proj.bias", a))))
            return st;
        if (o->arch == DUET_ARCH_QWEN3_MOE || o->arch == DUET_ARCH_OLMOE) {
            bool head = o->arch == DUET_ARCH_QWEN3_MOE;
            if ((st = plan_add(p, o, INIT_ONES, 1, head ? hd : Q, 0, "%s.q_norm.weight", a)) ||
                (st = plan_add(p, o, INIT_ONES, 1, head ? hd : KV, 0, "%s.k_norm.weight", a)))
                return st;
        }
        if ((st = plan_add(p, o, INIT_ONES, 1, H, 0,
                           "model.layers.%d.post_attention_layernorm.weight", l)))
            return st;
        const char *moe = mixtral ? "block_sparse_moe" : "mlp";
        if ((st = plan_add(p, o, INIT_NORMAL, 2, o->n_experts, H, "model.layers.%d.%s.gate.weight",
                           l, moe)))
            return st;
        if (shared_dim(o) > 0) {
            snprintf(pre, sizeof(pre), "model.layers.%d.mlp.shared_expert.", l);
            if ((st = plan_mlp(p, o, shared_dim(o), pre, "gate_proj", "up_proj", "down_proj")) ||
                (st = plan_add(p, o, INIT_NORMAL, 2, 1, H,
                               "model.layers.%d.mlp.shared_expert_gate.weight", l)))
                return st;
        }
        for (int e = 0; e < o->n_experts; e++) {
            snprintf(pre, sizeof(pre), "model.layers.%d.%s.experts.%d.", l, moe, e);
            if ((st = mixtral ? plan_mlp(p, o, o->expert_dim, pre, "w1", "w3", "w2")
                              : plan_mlp(p, o, o->expert_dim, pre, "gate_proj", "up_proj",
                                         "down_proj")))
                return st;
        }
    }
    if ((st = plan_add(p, o, INIT_ONES, 1, H, 0, "model.norm.weight")))
        return st;
    if (!o->tie_embeddings && (st = plan_add(p, o, INIT_NORMAL, 2, o->vocab, H, "lm_head.weight")))
        return st;
    return DUET_OK;
}

static size_t tensor_count(const duet_mkmodel_opts_t *o)
{
    plan_t p = {0};
    size_t n = make_plan(o, &p) ? 0 : p.n;
    duet_free(p.t);
    return n;
}

uint64_t duet_mkmodel_bytes(const duet_mkmodel_opts_t *o)
{
    plan_t p = {0};
    uint64_t total = 0;
    if (!duet_mkmodel_check(o) && !make_plan(o, &p))
        for (size_t i = 0; i < p.n; i++)
            total += p.t[i].nbytes;
    duet_free(p.t);
    return total;
}

uint64_t duet_mkmodel_params(const duet_mkmodel_opts_t *o)
{
    size_t es = duet_dtype_size(o->dtype);
    return es ? duet_mkmodel_bytes(o) / es : 0;
}

/* ---- random numbers (duet_splitmix64, base.h) ------------------------------ */

/* Approximately standard normal: the sum of four 16-bit uniforms
 * (Irwin-Hall, variance 4/12) rescaled. Cheap enough for 1e9 draws. */
static float approx_normal(uint64_t *s)
{
    uint64_t r = duet_splitmix64(s);
    uint32_t sum = (uint32_t)(r & 0xffff) + (uint32_t)((r >> 16) & 0xffff) +
                   (uint32_t)((r >> 32) & 0xffff) + (uint32_t)(r >> 48);
    /* mean 2 * 65535, sd sqrt(4/12) * 65536 */
    return ((float)sum - 131070.0f) * (1.7320508f / 65536.0f);
}

static void store(duet_dtype_t dt, void *dst, size_t i, float v)
{
    switch (dt) {
    case DUET_DTYPE_BF16: ((uint16_t *)dst)[i] = duet_f32_to_bf16(v); break;
    case DUET_DTYPE_F16: ((uint16_t *)dst)[i] = duet_f32_to_f16(v); break;
    default: ((float *)dst)[i] = v; break;
    }
}

/* ---- writing ------------------------------------------------------------- */

#define CHUNK_ELEMS ((size_t)1 << 18)

typedef struct progress {
    const duet_mkmodel_opts_t *o;
    size_t done, total;
} progress_t;

static duet_status_t write_tensor(duet_safetensors_writer_t *w, const duet_mkmodel_opts_t *o,
                                  const plan_tensor_t *t, void *chunk, progress_t *pr)
{
    size_t es = duet_dtype_size(o->dtype);
    size_t n = t->nbytes / es;
    uint64_t s = o->seed ^ duet_hash_bytes(t->name, strlen(t->name));
    for (size_t off = 0; off < n; off += CHUNK_ELEMS) {
        size_t k = DUET_MIN(CHUNK_ELEMS, n - off);
        for (size_t i = 0; i < k; i++)
            store(o->dtype, chunk, i, t->init == INIT_ONES ? 1.0f : 0.02f * approx_normal(&s));
        duet_status_t st = duet_safetensors_writer_write(w, chunk, k * es);
        if (st)
            return st;
        pr->done += k * es;
        if (o->progress)
            o->progress(o->progress_arg, pr->done, pr->total);
    }
    return DUET_OK;
}

static char *join(const char *dir, const char *name)
{
    duet_buf_t b = {0};
    if (duet_buf_printf(&b, "%s/%s", dir, name)) {
        duet_buf_cleanup(&b);
        return NULL;
    }
    return (char *)b.data;
}

static duet_status_t dump_json(json_t *j, const char *dir, const char *name)
{
    char *path = join(dir, name);
    if (!path)
        return duet_errorf(DUET_ERR_NOMEM, "mkmodel: out of memory");
    duet_status_t st = DUET_OK;
    if (json_dump_file(j, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII) != 0)
        st = duet_errorf(DUET_ERR_IO, "%s: cannot write", path);
    duet_free(path);
    return st;
}

static const char *dtype_torch(duet_dtype_t dt)
{
    return dt == DUET_DTYPE_BF16 ? "bfloat16" : dt == DUET_DTYPE_F16 ? "float16" : "float32";
}

static json_t *make_config(const duet_mkmodel_opts_t *o)
{
    static const char *const archs[] = {"MixtralForCausalLM", "Qwen2MoeForCausalLM",
                                        "Qwen3MoeForCausalLM", "OlmoeForCausalLM"};
    static const char *const types[] = {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe"};
    int eos = o->vocab - 1;
    bool qwen = o->arch == DUET_ARCH_QWEN2_MOE || o->arch == DUET_ARCH_QWEN3_MOE;
    json_t *c = json_object();
    if (!c)
        return NULL;
    json_object_set_new(c, "architectures", json_pack("[s]", archs[o->arch]));
    json_object_set_new(c, "model_type", json_string(types[o->arch]));
    json_object_set_new(c, "hidden_size", json_integer(o->hidden));
    json_object_set_new(c, "num_hidden_layers", json_integer(o->n_layers));
    json_object_set_new(c, "num_attention_heads", json_integer(o->n_heads));
    json_object_set_new(c, "num_key_value_heads", json_integer(o->n_kv_heads));
    /* always explicit: some HF attention classes break on "head_dim": null */
    json_object_set_new(c, "head_dim", json_integer(head_dim(o)));
    json_object_set_new(c, "vocab_size", json_integer(o->vocab));
    json_object_set_new(c, "max_position_embeddings", json_integer(o->max_pos));
    json_object_set_new(c, "hidden_act", json_string("silu"));
    json_object_set_new(c, "rms_norm_eps", json_real(qwen ? 1e-6 : 1e-5));
    json_object_set_new(
        c, "rope_parameters",
        json_pack("{s:f,s:s}", "rope_theta", (double)o->rope_theta, "rope_type", "default"));
    json_object_set_new(c, "num_experts_per_tok", json_integer(o->top_k));
    if (o->arch == DUET_ARCH_MIXTRAL) {
        json_object_set_new(c, "num_local_experts", json_integer(o->n_experts));
        json_object_set_new(c, "intermediate_size", json_integer(o->expert_dim));
        json_object_set_new(c, "sliding_window", json_null());
        json_object_set_new(c, "router_jitter_noise", json_real(0.0));
    } else {
        json_object_set_new(c, "num_experts", json_integer(o->n_experts));
    }
    if (qwen) {
        json_object_set_new(c, "moe_intermediate_size", json_integer(o->expert_dim));
        json_object_set_new(c, "intermediate_size", json_integer(4 * o->expert_dim));
        json_object_set_new(c, "decoder_sparse_step", json_integer(1));
        json_object_set_new(c, "mlp_only_layers", json_array());
        json_object_set_new(c, "use_sliding_window", json_false());
        json_object_set_new(c, "norm_topk_prob", json_boolean(o->arch == DUET_ARCH_QWEN3_MOE));
    }
    if (o->arch == DUET_ARCH_QWEN2_MOE) {
        json_object_set_new(c, "shared_expert_intermediate_size", json_integer(shared_dim(o)));
        json_object_set_new(c, "qkv_bias", json_true());
    }
    if (o->arch == DUET_ARCH_QWEN3_MOE)
        json_object_set_new(c, "attention_bias", json_false());
    if (o->arch == DUET_ARCH_OLMOE) {
        json_object_set_new(c, "intermediate_size", json_integer(o->expert_dim));
        json_object_set_new(c, "norm_topk_prob", json_false());
        json_object_set_new(c, "clip_qkv", json_null());
        json_object_set_new(c, "attention_bias", json_false());
    }
    json_object_set_new(c, "tie_word_embeddings", json_boolean(o->tie_embeddings));
    json_object_set_new(c, "bos_token_id", json_integer(eos));
    json_object_set_new(c, "eos_token_id", json_integer(eos));
    json_object_set_new(c, "pad_token_id", json_null());
    json_object_set_new(c, "initializer_range", json_real(0.02));
    json_object_set_new(c, "attention_dropout", json_real(0.0));
    json_object_set_new(c, "dtype", json_string(dtype_torch(o->dtype)));
    json_object_set_new(c, "use_cache", json_true());
    return c;
}

/* GPT-2's byte-to-unicode table: printable Latin-1 bytes map to themselves,
 * the others to U+0100 upwards. Also the id order of the 256 byte tokens. */
static void byte_unicode(uint32_t cp[256], uint8_t order[256])
{
    int n = 0, extra = 0;
    bool printable[256] = {false};
    for (int b = '!'; b <= '~'; b++)
        printable[b] = true;
    for (int b = 0xa1; b <= 0xac; b++)
        printable[b] = true;
    for (int b = 0xae; b <= 0xff; b++)
        printable[b] = true;
    for (int b = 0; b < 256; b++)
        if (printable[b]) {
            cp[b] = (uint32_t)b;
            order[n++] = (uint8_t)b;
        }
    for (int b = 0; b < 256; b++)
        if (!printable[b]) {
            cp[b] = 256u + (uint32_t)extra++;
            order[n++] = (uint8_t)b;
        }
}

static size_t utf8_put(char *s, uint32_t cp)
{
    if (cp < 0x80) {
        s[0] = (char)cp;
        return 1;
    }
    s[0] = (char)(0xc0 | (cp >> 6));
    s[1] = (char)(0x80 | (cp & 0x3f));
    return 2; /* the table only reaches U+0143 */
}

typedef struct tok {
    char s[48];
} tok_t;

duet_status_t duet_mkmodel_write_tokenizer(const char *path, int vocab)
{
    if (vocab < 257)
        return duet_errorf(DUET_ERR_INVALID, "%s: vocab %d is below 257", path, vocab);
    uint32_t cp[256];
    uint8_t order[256];
    byte_unicode(cp, order);
    duet_status_t st = DUET_OK;
    json_t *root = NULL, *vmap = NULL, *merges = NULL;
    tok_t *level = NULL, *next = NULL;
    size_t n_level = 0, n_next = 0;
    int n_merges = vocab - 257;
    if (!(root = json_object()) || !(vmap = json_object()) || !(merges = json_array()))
        goto nomem;
    int id = 0;
    for (int i = 0; i < 256; i++) {
        char s[4] = {0};
        utf8_put(s, cp[order[i]]);
        json_object_set_new(vmap, s, json_integer(id++));
    }
    /* Merges: "Ġ"/letter + letter, then those + letter, and so on, so every
     * merge joins two existing tokens into a new one (English-ish tokens). */
    static const char letters[] = "etaoinshrdlcumwfgypbvkjxqz";
    size_t nl = sizeof(letters) - 1;
    level = duet_calloc(nl + 1, sizeof(tok_t));
    if (!level)
        goto nomem;
    snprintf(level[0].s, sizeof(level[0].s), "\xc4\xa0"); /* Ġ: byte 0x20 */
    for (size_t i = 0; i < nl; i++)
        level[i + 1].s[0] = letters[i];
    n_level = nl + 1;
    while (id < 256 + n_merges) {
        size_t want = DUET_MIN(n_level * nl, (size_t)(256 + n_merges - id));
        next = duet_calloc(want, sizeof(tok_t));
        if (!next)
            goto nomem;
        n_next = 0;
        for (size_t a = 0; a < n_level && id < 256 + n_merges; a++) {
            if (strlen(level[a].s) + 2 > sizeof(level[a].s))
                continue;
            for (size_t b = 0; b < nl && id < 256 + n_merges; b++) {
                char right[2] = {letters[b], 0};
                tok_t *t = &next[n_next++];
                snprintf(t->s, sizeof(t->s), "%s%s", level[a].s, right);
                json_object_set_new(vmap, t->s, json_integer(id++));
                json_array_append_new(merges, json_pack("[s,s]", level[a].s, right));
            }
        }
        duet_free(level);
        level = next;
        n_level = n_next;
        next = NULL;
    }
    json_object_set_new(vmap, "<|endoftext|>", json_integer(id));
    json_t *model =
        json_pack("{s:s,s:n,s:n,s:n,s:n,s:b,s:b,s:b,s:o,s:o}", "type", "BPE", "dropout",
                  "unk_token", "continuing_subword_prefix", "end_of_word_suffix", "fuse_unk", 0,
                  "byte_fallback", 0, "ignore_merges", 0, "vocab", vmap, "merges", merges);
    vmap = merges = NULL;
    if (!model)
        goto nomem;
    json_object_set_new(root, "version", json_string("1.0"));
    json_object_set_new(root, "truncation", json_null());
    json_object_set_new(root, "padding", json_null());
    json_object_set_new(root, "added_tokens",
                        json_pack("[{s:i,s:s,s:b,s:b,s:b,s:b,s:b}]", "id", id, "content",
                                  "<|endoftext|>", "single_word", 0, "lstrip", 0, "rstrip", 0,
                                  "normalized", 0, "special", 1));
    json_object_set_new(root, "normalizer", json_null());
    json_object_set_new(root, "pre_tokenizer",
                        json_pack("{s:s,s:b,s:b,s:b}", "type", "ByteLevel", "add_prefix_space", 0,
                                  "trim_offsets", 1, "use_regex", 1));
    json_object_set_new(root, "post_processor",
                        json_pack("{s:s,s:b,s:b,s:b}", "type", "ByteLevel", "add_prefix_space", 1,
                                  "trim_offsets", 0, "use_regex", 1));
    json_object_set_new(root, "decoder",
                        json_pack("{s:s,s:b,s:b,s:b}", "type", "ByteLevel", "add_prefix_space", 1,
                                  "trim_offsets", 1, "use_regex", 1));
    json_object_set_new(root, "model", model);
    if (json_dump_file(root, path, JSON_INDENT(1) | JSON_PRESERVE_ORDER) != 0)
        st = duet_errorf(DUET_ERR_IO, "%s: cannot write", path);
    goto out;
nomem:
    st = duet_errorf(DUET_ERR_NOMEM, "%s: out of memory", path);
out:
    duet_free(level);
    duet_free(next);
    json_decref(vmap);
    json_decref(merges);
    json_decref(root);
    return st;
}

static duet_status_t write_shard(const char *path, const duet_mkmodel_opts_t *o, const plan_t *p,
                                 size_t first, size_t end, void *chunk, progress_t *pr)
{
    duet_safetensors_writer_t *w = NULL;
    duet_status_t st = duet_safetensors_writer_create(path, &w);
    if (st)
        return st;
    for (size_t i = first; i < end; i++) {
        const plan_tensor_t *t = &p->t[i];
        if ((st = duet_safetensors_writer_add(w, t->name, o->dtype, t->ndim, t->shape)))
            goto err;
    }
    for (size_t i = first; i < end; i++)
        if ((st = write_tensor(w, o, &p->t[i], chunk, pr)))
            goto err;
    return duet_safetensors_writer_finish(&w);
err:
    duet_safetensors_writer_destroy(&w);
    return st;
}

static duet_status_t write_weights(const char *dir, const duet_mkmodel_opts_t *o, const plan_t *p)
{
    duet_status_t st = DUET_OK;
    size_t total = 0;
    for (size_t i = 0; i < p->n; i++)
        total += p->t[i].nbytes;
    progress_t pr = {.o = o, .total = total};
    void *chunk = duet_malloc(CHUNK_ELEMS * 4);
    json_t *wm = NULL, *index = NULL;
    char *path = NULL;
    if (!chunk || !(wm = json_object()))
        goto nomem;
    int n_shards = o->shards; /* duet_mkmodel_check: at most one per tensor */
    if (n_shards == 1) {
        if (!(path = join(dir, "model.safetensors")))
            goto nomem;
        st = write_shard(path, o, p, 0, p->n, chunk, &pr);
        goto out;
    }
    /* Cut where the running total passes k/n of the bytes; every shard gets
     * at least one tensor. */
    size_t first = 0, acc = 0;
    for (int k = 0; k < n_shards; k++) {
        size_t end = first;
        size_t goal = (size_t)((double)total * (k + 1) / n_shards);
        size_t left_shards = (size_t)(n_shards - k - 1);
        while (end < p->n - left_shards &&
               (end == first || acc + p->t[end].nbytes <= goal || k == n_shards - 1)) {
            acc += p->t[end].nbytes;
            end++;
        }
        char name[64];
        snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", k + 1, n_shards);
        duet_free(path);
        if (!(path = join(dir, name)))
            goto nomem;
        if ((st = write_shard(path, o, p, first, end, chunk, &pr)))
            goto out;
        for (size_t i = first; i < end; i++)
            json_object_set_new(wm, p->t[i].name, json_string(name));
        first = end;
    }
    index = json_pack("{s:{s:I,s:I},s:O}", "metadata", "total_parameters",
                      (json_int_t)(total / duet_dtype_size(o->dtype)), "total_size",
                      (json_int_t)total, "weight_map", wm);
    if (!index)
        goto nomem;
    st = dump_json(index, dir, "model.safetensors.index.json");
    goto out;
nomem:
    st = duet_errorf(DUET_ERR_NOMEM, "mkmodel: out of memory");
out:
    duet_free(path);
    duet_free(chunk);
    json_decref(wm);
    json_decref(index);
    return st;
}

duet_status_t duet_mkmodel_write(const char *dir, const duet_mkmodel_opts_t *o)
{
    duet_status_t st;
    if ((st = duet_mkmodel_check(o)))
        return st;
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return duet_errorf(DUET_ERR_IO, "%s: cannot create directory: %s", dir, strerror(errno));
    plan_t p = {0};
    json_t *cfg = NULL, *gen = NULL;
    char *tok = NULL;
    if ((st = make_plan(o, &p)))
        goto out;
    if (!(cfg = make_config(o))) {
        st = duet_errorf(DUET_ERR_NOMEM, "mkmodel: out of memory");
        goto out;
    }
    if ((st = dump_json(cfg, dir, "config.json")))
        goto out;
    gen = json_pack("{s:i,s:i,s:b}", "bos_token_id", o->vocab - 1, "eos_token_id", o->vocab - 1,
                    "do_sample", 0);
    if (!gen) {
        st = duet_errorf(DUET_ERR_NOMEM, "mkmodel: out of memory");
        goto out;
    }
    if ((st = dump_json(gen, dir, "generation_config.json")))
        goto out;
    if (!(tok = join(dir, "tokenizer.json"))) {
        st = duet_errorf(DUET_ERR_NOMEM, "mkmodel: out of memory");
        goto out;
    }
    if ((st = duet_mkmodel_write_tokenizer(tok, o->vocab)))
        goto out;
    st = write_weights(dir, o, &p);
out:
    duet_free(tok);
    json_decref(cfg);
    json_decref(gen);
    duet_free(p.t);
    return st;
}
