/* config — Hugging Face config.json for the MoE architectures duet runs
 * (mixtral, qwen2_moe, qwen3_moe, olmoe) into duet_config_t.
 *
 * Differences across architectures and transformers versions that matter:
 * rope_theta is top level (transformers 4) or under rope_parameters (5);
 * head_dim may be absent or null (hidden / heads); the expert count is
 * num_local_experts (mixtral) or num_experts; the expert width is
 * intermediate_size (mixtral, olmoe) or moe_intermediate_size (qwen); qwen
 * models may make some layers dense (decoder_sparse_step, mlp_only_layers).
 * Every error names the file and the key. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model/model.h"

#define CONFIG_MAX_BYTES (16u << 20)
#define CONFIG_MAX_DIM (1 << 20)
#define CONFIG_MAX_LAYERS 4096
#define CONFIG_MAX_EXPERTS 65536

typedef struct parser {
    json_t *root;
    const char *name;
} parser_t;

/* A key that is absent or JSON null. */
static bool is_absent(const json_t *v)
{
    return v == NULL || json_is_null(v);
}

/* Integer key in [lo, hi]. Absent/null: *out = def if has_def, else error. */
static duet_status_t get_int(const parser_t *p, const json_t *obj, const char *key, bool has_def,
                             int def, int lo, int hi, int *out)
{
    json_t *v = json_object_get(obj, key);
    if (is_absent(v)) {
        if (!has_def)
            return duet_errorf(DUET_ERR_INVALID, "%s: key '%s' is missing", p->name, key);
        *out = def;
        return DUET_OK;
    }
    json_int_t x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) < 1e15) {
        x = (json_int_t)json_real_value(v);
    } else {
        return duet_errorf(DUET_ERR_INVALID, "%s: key '%s' must be an integer", p->name, key);
    }
    if (x < lo || x > hi)
        return duet_errorf(DUET_ERR_INVALID, "%s: key '%s' is %lld, outside [%d, %d]", p->name, key,
                           (long long)x, lo, hi);
    *out = (int)x;
    return DUET_OK;
}

static duet_status_t get_bool(const parser_t *p, const json_t *obj, const char *key, bool def,
                              bool *out)
{
    json_t *v = json_object_get(obj, key);
    if (is_absent(v)) {
        *out = def;
        return DUET_OK;
    }
    if (!json_is_boolean(v))
        return duet_errorf(DUET_ERR_INVALID, "%s: key '%s' must be true or false", p->name, key);
    *out = json_is_true(v);
    return DUET_OK;
}

/* Positive finite number. */
static duet_status_t get_num(const parser_t *p, const json_t *obj, const char *key,
                             const char *what, double def, double *out, bool *found)
{
    json_t *v = json_object_get(obj, key);
    if (found)
        *found = !is_absent(v);
    if (is_absent(v)) {
        *out = def;
        return DUET_OK;
    }
    if (!json_is_number(v))
        return duet_errorf(DUET_ERR_INVALID, "%s: key '%s' must be a number", p->name, what);
    double x = json_number_value(v);
    if (!(x > 0) || !isfinite(x))
        return duet_errorf(DUET_ERR_INVALID, "%s: key '%s' must be a positive number", p->name,
                           what);
    *out = x;
    return DUET_OK;
}

static duet_status_t check_rope_scaling(const parser_t *p, const json_t *rs, const char *key)
{
    if (is_absent(rs))
        return DUET_OK;
    if (!json_is_object(rs))
        return duet_errorf(DUET_ERR_INVALID, "%s: key '%s' must be an object", p->name, key);
    json_t *t = json_object_get(rs, "rope_type");
    if (is_absent(t))
        t = json_object_get(rs, "type");
    if (is_absent(t))
        return DUET_OK;
    if (!json_is_string(t))
        return duet_errorf(DUET_ERR_INVALID, "%s: key '%s.rope_type' must be a string", p->name,
                           key);
    if (strcmp(json_string_value(t), "default") != 0)
        return duet_errorf(DUET_ERR_UNSUPPORTED,
                           "%s: key '%s.rope_type': RoPE scaling '%s' is not supported (only "
                           "'default')",
                           p->name, key, json_string_value(t));
    return DUET_OK;
}

static duet_status_t parse_eos(const parser_t *p, duet_config_t *c)
{
    json_t *v = json_object_get(p->root, "eos_token_id");
    c->n_eos = 0;
    if (is_absent(v))
        return DUET_OK;
    if (json_is_integer(v)) {
        json_int_t x = json_integer_value(v);
        if (x < 0 || x >= c->vocab)
            /* transformers only warns about this; the id can never be sampled */
            DUET_LOG_W("model",
                       "%s: key 'eos_token_id' is %lld, outside the vocabulary (%d): ignored",
                       p->name, (long long)x, c->vocab);
        else
            c->eos_ids[c->n_eos++] = (int)x;
        return DUET_OK;
    }
    if (!json_is_array(v))
        return duet_errorf(DUET_ERR_INVALID,
                           "%s: key 'eos_token_id' must be an integer or a list of integers",
                           p->name);
    if (json_array_size(v) > DUET_MAX_EOS)
        return duet_errorf(DUET_ERR_INVALID, "%s: key 'eos_token_id' has %zu ids, at most %d",
                           p->name, json_array_size(v), DUET_MAX_EOS);
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e)
    {
        if (!json_is_integer(e) || json_integer_value(e) < 0)
            return duet_errorf(DUET_ERR_INVALID,
                               "%s: key 'eos_token_id[%zu]' must be a non-negative integer",
                               p->name, i);
        if (json_integer_value(e) >= c->vocab)
            DUET_LOG_W("model",
                       "%s: key 'eos_token_id[%zu]' is %lld, outside the vocabulary (%d): ignored",
                       p->name, i, (long long)json_integer_value(e), c->vocab);
        else
            c->eos_ids[c->n_eos++] = (int)json_integer_value(e);
    }
    return DUET_OK;
}

static duet_status_t parse_sparse_layers(const parser_t *p, duet_config_t *c)
{
    duet_status_t st;
    c->sparse_layer = duet_calloc((size_t)c->n_layers, sizeof(bool));
    if (!c->sparse_layer)
        return duet_errorf(DUET_ERR_NOMEM, "%s: out of memory", p->name);
    int step = 1;
    if (c->arch == DUET_ARCH_QWEN2_MOE || c->arch == DUET_ARCH_QWEN3_MOE) {
        if ((st = get_int(p, p->root, "decoder_sparse_step", true, 1, 1, CONFIG_MAX_LAYERS, &step)))
            return st;
    }
    for (int l = 0; l < c->n_layers; l++)
        c->sparse_layer[l] = ((l + 1) % step) == 0;
    json_t *mlp_only = json_object_get(p->root, "mlp_only_layers");
    if (!is_absent(mlp_only)) {
        if (!json_is_array(mlp_only))
            return duet_errorf(DUET_ERR_INVALID, "%s: key 'mlp_only_layers' must be a list",
                               p->name);
        size_t i;
        json_t *e;
        json_array_foreach(mlp_only, i, e)
        {
            if (!json_is_integer(e) || json_integer_value(e) < 0 ||
                json_integer_value(e) >= c->n_layers)
                return duet_errorf(DUET_ERR_INVALID,
                                   "%s: key 'mlp_only_layers[%zu]' must be a layer index below %d",
                                   p->name, i, c->n_layers);
            c->sparse_layer[json_integer_value(e)] = false;
        }
    }
    bool any_dense = false;
    for (int l = 0; l < c->n_layers; l++)
        any_dense |= !c->sparse_layer[l];
    if (any_dense && c->dense_dim <= 0)
        return duet_errorf(DUET_ERR_INVALID,
                           "%s: key 'intermediate_size' is needed: some layers are dense "
                           "(decoder_sparse_step / mlp_only_layers)",
                           p->name);
    return DUET_OK;
}

static duet_status_t parse(const parser_t *p, duet_config_t *c)
{
    duet_status_t st;
    json_t *root = p->root;
    if (!json_is_object(root))
        return duet_errorf(DUET_ERR_INVALID, "%s: not a JSON object", p->name);

    json_t *mt = json_object_get(root, "model_type");
    if (is_absent(mt))
        return duet_errorf(DUET_ERR_INVALID, "%s: key 'model_type' is missing", p->name);
    if (!json_is_string(mt))
        return duet_errorf(DUET_ERR_INVALID, "%s: key 'model_type' must be a string", p->name);
    const char *mts = json_string_value(mt);
    if (!strcmp(mts, "mixtral"))
        c->arch = DUET_ARCH_MIXTRAL;
    else if (!strcmp(mts, "qwen2_moe"))
        c->arch = DUET_ARCH_QWEN2_MOE;
    else if (!strcmp(mts, "qwen3_moe"))
        c->arch = DUET_ARCH_QWEN3_MOE;
    else if (!strcmp(mts, "olmoe"))
        c->arch = DUET_ARCH_OLMOE;
    else
        return duet_errorf(DUET_ERR_UNSUPPORTED,
                           "%s: key 'model_type': '%s' is not supported (mixtral, qwen2_moe, "
                           "qwen3_moe, olmoe)",
                           p->name, mts);
    snprintf(c->model_type, sizeof(c->model_type), "%s", mts);
    bool qwen = c->arch == DUET_ARCH_QWEN2_MOE || c->arch == DUET_ARCH_QWEN3_MOE;

    json_t *act = json_object_get(root, "hidden_act");
    if (!is_absent(act) && (!json_is_string(act) || strcmp(json_string_value(act), "silu")))
        return duet_errorf(DUET_ERR_UNSUPPORTED, "%s: key 'hidden_act': only \"silu\" is supported",
                           p->name);

    if ((st = get_int(p, root, "hidden_size", false, 0, 1, CONFIG_MAX_DIM, &c->hidden)) ||
        (st =
             get_int(p, root, "num_hidden_layers", false, 0, 1, CONFIG_MAX_LAYERS, &c->n_layers)) ||
        (st = get_int(p, root, "num_attention_heads", false, 0, 1, CONFIG_MAX_DIM, &c->n_heads)) ||
        (st = get_int(p, root, "num_key_value_heads", true, c->n_heads, 1, CONFIG_MAX_DIM,
                      &c->n_kv_heads)) ||
        (st = get_int(p, root, "vocab_size", false, 0, 1, 1 << 28, &c->vocab)) ||
        (st = get_int(p, root, "max_position_embeddings", true, 4096, 1, 1 << 28, &c->max_pos)))
        return st;
    if (c->n_heads % c->n_kv_heads)
        return duet_errorf(DUET_ERR_INVALID,
                           "%s: key 'num_key_value_heads' (%d) does not divide "
                           "num_attention_heads (%d)",
                           p->name, c->n_kv_heads, c->n_heads);

    json_t *hd = json_object_get(root, "head_dim");
    if (is_absent(hd)) {
        if (c->hidden % c->n_heads)
            return duet_errorf(DUET_ERR_INVALID,
                               "%s: key 'head_dim' is absent and hidden_size (%d) is not a "
                               "multiple of num_attention_heads (%d)",
                               p->name, c->hidden, c->n_heads);
        c->head_dim = c->hidden / c->n_heads;
    } else if ((st = get_int(p, root, "head_dim", false, 0, 1, CONFIG_MAX_DIM, &c->head_dim))) {
        return st;
    }
    if (c->arch == DUET_ARCH_OLMOE && c->head_dim * c->n_heads != c->hidden)
        /* HF sizes OLMoE's q/k norms from hidden_size, so other head dims cannot load */
        return duet_errorf(DUET_ERR_UNSUPPORTED,
                           "%s: key 'head_dim': olmoe needs head_dim = hidden_size / "
                           "num_attention_heads (%d), not %d",
                           p->name, c->hidden / c->n_heads, c->head_dim);
    if (c->head_dim % 2)
        return duet_errorf(DUET_ERR_INVALID, "%s: key 'head_dim' (%d) must be even for RoPE",
                           p->name, c->head_dim);

    /* experts */
    const char *ek = !is_absent(json_object_get(root, "num_local_experts")) ? "num_local_experts"
                                                                            : "num_experts";
    if (is_absent(json_object_get(root, ek)))
        return duet_errorf(DUET_ERR_INVALID,
                           "%s: key 'num_local_experts' or 'num_experts' is missing (is this a "
                           "MoE model?)",
                           p->name);
    if ((st = get_int(p, root, ek, false, 0, 1, CONFIG_MAX_EXPERTS, &c->n_experts)) ||
        (st = get_int(p, root, "num_experts_per_tok", false, 0, 1, c->n_experts, &c->top_k)))
        return st;
    if (qwen) {
        if ((st = get_int(p, root, "moe_intermediate_size", false, 0, 1, CONFIG_MAX_DIM,
                          &c->expert_dim)) ||
            (st = get_int(p, root, "intermediate_size", true, 0, 0, CONFIG_MAX_DIM, &c->dense_dim)))
            return st;
    } else {
        if ((st = get_int(p, root, "intermediate_size", false, 0, 1, CONFIG_MAX_DIM,
                          &c->expert_dim)))
            return st;
        c->dense_dim = 0;
    }
    c->shared_dim = 0;
    if (c->arch == DUET_ARCH_QWEN2_MOE &&
        (st = get_int(p, root, "shared_expert_intermediate_size", true, 0, 0, CONFIG_MAX_DIM,
                      &c->shared_dim)))
        return st;

    /* routing and attention variants */
    if (c->arch == DUET_ARCH_MIXTRAL) {
        c->norm_topk_prob = true; /* Mixtral always renormalises the top-k softmax */
    } else if ((st = get_bool(p, root, "norm_topk_prob", false, &c->norm_topk_prob))) {
        return st;
    }
    c->qk_norm = c->arch == DUET_ARCH_QWEN3_MOE ? DUET_QK_NORM_HEAD
                 : c->arch == DUET_ARCH_OLMOE   ? DUET_QK_NORM_FULL
                                                : DUET_QK_NORM_NONE;
    if (c->arch == DUET_ARCH_QWEN2_MOE) {
        if ((st = get_bool(p, root, "qkv_bias", true, &c->qkv_bias)))
            return st;
    } else {
        /* attention_bias would also give o_proj a bias, which duet_layer_weights_t lacks */
        bool ab;
        if ((st = get_bool(p, root, "attention_bias", false, &ab)))
            return st;
        if (ab)
            return duet_errorf(DUET_ERR_UNSUPPORTED,
                               "%s: key 'attention_bias': attention biases are not supported "
                               "for %s",
                               p->name, mts);
        c->qkv_bias = false;
    }
    json_t *clip = json_object_get(root, "clip_qkv");
    if (!is_absent(clip))
        return duet_errorf(DUET_ERR_UNSUPPORTED, "%s: key 'clip_qkv' is not supported", p->name);
    if ((st = get_bool(p, root, "tie_word_embeddings", false, &c->tie_embeddings)))
        return st;

    double eps_def = c->arch == DUET_ARCH_MIXTRAL || c->arch == DUET_ARCH_OLMOE ? 1e-5 : 1e-6;
    double eps;
    if ((st = get_num(p, root, "rms_norm_eps", "rms_norm_eps", eps_def, &eps, NULL)))
        return st;
    c->rms_eps = (float)eps;

    /* RoPE: transformers 5 writes rope_parameters.rope_theta, older versions a
     * top-level rope_theta (with an optional rope_scaling). */
    double theta_def = c->arch == DUET_ARCH_MIXTRAL ? 1e6 : 1e4;
    double theta = theta_def;
    bool found = false;
    json_t *rp = json_object_get(root, "rope_parameters");
    if (!is_absent(rp)) {
        if (!json_is_object(rp))
            return duet_errorf(DUET_ERR_INVALID, "%s: key 'rope_parameters' must be an object",
                               p->name);
        if ((st = check_rope_scaling(p, rp, "rope_parameters")) ||
            (st = get_num(p, rp, "rope_theta", "rope_parameters.rope_theta", theta_def, &theta,
                          &found)))
            return st;
    }
    if (!found && (st = get_num(p, root, "rope_theta", "rope_theta", theta_def, &theta, NULL)))
        return st;
    if ((st = check_rope_scaling(p, json_object_get(root, "rope_scaling"), "rope_scaling")))
        return st;
    c->rope_theta = (float)theta;

    json_t *sw = json_object_get(root, "sliding_window");
    bool use_sw = c->arch == DUET_ARCH_MIXTRAL;
    if (qwen && (st = get_bool(p, root, "use_sliding_window", false, &use_sw)))
        return st;
    if (use_sw && !is_absent(sw) && json_is_integer(sw) && json_integer_value(sw) < c->max_pos)
        DUET_LOG_W("model", "%s: sliding_window %lld is ignored (full attention is used)", p->name,
                   (long long)json_integer_value(sw));

    json_t *bos = json_object_get(root, "bos_token_id");
    c->bos_id = -1;
    if (!is_absent(bos)) {
        if (!json_is_integer(bos) || json_integer_value(bos) < 0 ||
            json_integer_value(bos) >= c->vocab)
            return duet_errorf(DUET_ERR_INVALID,
                               "%s: key 'bos_token_id' must be a token id below %d", p->name,
                               c->vocab);
        c->bos_id = (int)json_integer_value(bos);
    }
    if ((st = parse_eos(p, c)))
        return st;
    return parse_sparse_layers(p, c);
}

duet_status_t duet_config_parse(const char *json, size_t len, const char *name, duet_config_t *out)
{
    if (!name)
        name = "config.json";
    json_error_t jerr;
    parser_t p = {.name = name};
    p.root = json_loadb(json, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    if (!p.root)
        return duet_errorf(DUET_ERR_INVALID, "%s: malformed JSON at line %d, column %d: %s", name,
                           jerr.line, jerr.column, jerr.text);
    duet_config_t c = {0};
    duet_status_t st = parse(&p, &c);
    json_decref(p.root);
    if (st) {
        duet_config_cleanup(&c);
        return st;
    }
    *out = c;
    return DUET_OK;
}

duet_status_t duet_config_load(const char *path, duet_config_t *out)
{
    char *text = NULL;
    size_t len = 0;
    duet_status_t st = duet_file_read_all(path, CONFIG_MAX_BYTES, &text, &len);
    if (st)
        return st;
    st = duet_config_parse(text, len, path, out);
    duet_free(text);
    return st;
}

void duet_config_cleanup(duet_config_t *cfg)
{
    if (!cfg)
        return;
    duet_free(cfg->sparse_layer);
    cfg->sparse_layer = NULL;
}
