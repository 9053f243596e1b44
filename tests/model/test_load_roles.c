/* test_load_roles — duet_model_load on every architecture's fixture and the
 * demo model (sharded), by role: FULL holds everything, ATTENTION everything
 * but the routed experts, EXPERT exactly the listed experts of every sparse
 * layer. Bad checkpoints (missing tensor, wrong shape, wrong dtype,
 * truncated file, malformed config.json) give errors naming file and
 * tensor. The fused expert layout is read as per-expert slices. And RSS: an
 * expert shard with 2 of 8 experts touches about a quarter of the expert
 * bytes. */
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "model/mkmodel.h"
#include "model/model.h"
#include "model/safetensors.h"

#define MIXTRAL_TINY DUET_FIXTURES "/mixtral-tiny"

#define TMPDIR_PREFIX "duet-test-load"
#include "tmpdir_util.h"

static duet_model_t *load(const char *dir, duet_role_t role, const int *experts, int n)
{
    duet_load_opts_t o = {.role = role, .experts = experts, .n_experts = n};
    duet_model_t *m = NULL;
    duet_status_t st = duet_model_load(dir, &o, &m);
    if (st)
        fail_msg("%s: %s", dir, duet_error());
    assert_non_null(m);
    assert_int_equal(m->role, role);
    return m;
}

static void assert_shape2(const duet_tensor_t *t, int64_t d0, int64_t d1)
{
    assert_non_null(t->data);
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->shape[0], d0);
    assert_int_equal(t->shape[1], d1);
}

static void assert_shape1(const duet_tensor_t *t, int64_t d0)
{
    assert_non_null(t->data);
    assert_int_equal(t->ndim, 1);
    assert_int_equal(t->shape[0], d0);
}

static size_t expert_bytes(const duet_expert_weights_t *x)
{
    return x->gate.nbytes + x->up.nbytes + x->down.nbytes;
}

/* Sum of every tensor's bytes in a checkpoint directory. */
static size_t checkpoint_bytes(const char *dir)
{
    duet_checkpoint_t *ck = NULL;
    assert_int_equal(duet_checkpoint_open(dir, &ck), DUET_OK);
    size_t total = 0;
    for (size_t f = 0; f < duet_checkpoint_file_count(ck); f++) {
        const duet_safetensors_t *st = duet_checkpoint_file(ck, f);
        for (size_t i = 0; i < duet_safetensors_count(st); i++)
            total += duet_safetensors_tensor_at(st, i)->nbytes;
    }
    duet_checkpoint_destroy(&ck);
    return total;
}

static void test_mixtral_full(void **state)
{
    (void)state;
    duet_model_t *m = load(MIXTRAL_TINY, DUET_ROLE_FULL, NULL, 0);
    const duet_config_t *c = &m->cfg;
    assert_int_equal(c->hidden, 128);
    assert_shape2(&m->embed, 1024, 128);
    assert_shape2(&m->lm_head, 1024, 128);
    assert_ptr_not_equal(m->lm_head.data, m->embed.data);
    assert_shape1(&m->final_norm, 128);
    for (int l = 0; l < c->n_layers; l++) {
        const duet_layer_weights_t *w = &m->layers[l];
        assert_shape1(&w->attn_norm, 128);
        assert_shape1(&w->ffn_norm, 128);
        assert_shape2(&w->wq, 128, 128);
        assert_shape2(&w->wk, 32, 128);
        assert_shape2(&w->wv, 32, 128);
        assert_shape2(&w->wo, 128, 128);
        assert_null(w->bq.data);
        assert_null(w->q_norm.data);
        assert_shape2(&w->router, 8, 128);
        assert_null(w->shared.gate.data);
        assert_null(w->dense.gate.data);
        for (int e = 0; e < 8; e++) {
            assert_true(m->holds_expert[e]);
            assert_shape2(&w->experts[e].gate, 256, 128);
            assert_shape2(&w->experts[e].up, 256, 128);
            assert_shape2(&w->experts[e].down, 128, 256);
            assert_int_equal(w->experts[e].gate.dtype, DUET_DTYPE_BF16);
        }
    }
    /* w1 is gate, w3 is up, w2 is down: compare against the file */
    duet_checkpoint_t *ck = NULL;
    duet_tensor_t t;
    assert_int_equal(duet_checkpoint_open(MIXTRAL_TINY, &ck), DUET_OK);
    assert_int_equal(
        duet_checkpoint_get(ck, "model.layers.1.block_sparse_moe.experts.6.w3.weight", &t, NULL),
        DUET_OK);
    assert_memory_equal(t.data, m->layers[1].experts[6].up.data, t.nbytes);
    assert_int_equal(
        duet_checkpoint_get(ck, "model.layers.1.block_sparse_moe.experts.6.w2.weight", &t, NULL),
        DUET_OK);
    assert_memory_equal(t.data, m->layers[1].experts[6].down.data, t.nbytes);
    duet_checkpoint_destroy(&ck);
    assert_int_equal(m->held_bytes, checkpoint_bytes(MIXTRAL_TINY));
    duet_model_destroy(&m);
    assert_null(m);
    duet_model_destroy(&m);
}

static void test_pycoder_sharded(void **state)
{
    (void)state;
    duet_load_opts_t o = {.role = DUET_ROLE_FULL, .prefault = true};
    duet_model_t *m = NULL;
    if (duet_model_load(DUET_MODELS "/pycoder-moe", &o, &m))
        fail_msg("%s", duet_error());
    assert_int_equal(m->cfg.n_layers, 4);
    assert_int_equal(m->cfg.head_dim, 32); /* head_dim: null */
    assert_shape2(&m->embed, 4096, 256);
    assert_shape2(&m->layers[3].experts[7].down, 256, 384);
    assert_int_equal(m->held_bytes, 24662528); /* the index's total_size */
    duet_model_destroy(&m);
}

static void test_attention_role(void **state)
{
    (void)state;
    duet_model_t *full = load(MIXTRAL_TINY, DUET_ROLE_FULL, NULL, 0);
    duet_model_t *m = load(MIXTRAL_TINY, DUET_ROLE_ATTENTION, NULL, 0);
    size_t experts = 0;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        assert_non_null(m->layers[l].wq.data);
        assert_non_null(m->layers[l].router.data);
        for (int e = 0; e < 8; e++) {
            assert_false(m->holds_expert[e]);
            assert_null(m->layers[l].experts[e].gate.data);
            assert_null(m->layers[l].experts[e].up.data);
            assert_null(m->layers[l].experts[e].down.data);
            experts += expert_bytes(&full->layers[l].experts[e]);
        }
    }
    assert_non_null(m->embed.data);
    assert_non_null(m->lm_head.data);
    assert_non_null(m->final_norm.data);
    assert_int_equal(m->held_bytes, full->held_bytes - experts);
    duet_model_destroy(&m);
    duet_model_destroy(&full);
}

static void test_expert_role(void **state)
{
    (void)state;
    const int held[2] = {5, 2};
    duet_model_t *full = load(MIXTRAL_TINY, DUET_ROLE_FULL, NULL, 0);
    duet_model_t *m = load(MIXTRAL_TINY, DUET_ROLE_EXPERT, held, 2);
    size_t want = 0;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const duet_layer_weights_t *w = &m->layers[l];
        assert_null(w->wq.data);
        assert_null(w->router.data);
        assert_null(w->attn_norm.data);
        for (int e = 0; e < 8; e++) {
            bool h = e == 2 || e == 5;
            assert_int_equal(m->holds_expert[e], h);
            assert_int_equal(w->experts[e].gate.data != NULL, h);
            assert_int_equal(w->experts[e].up.data != NULL, h);
            assert_int_equal(w->experts[e].down.data != NULL, h);
            if (h) {
                assert_memory_equal(w->experts[e].gate.data, full->layers[l].experts[e].gate.data,
                                    w->experts[e].gate.nbytes);
                want += expert_bytes(&w->experts[e]);
            }
        }
    }
    assert_null(m->embed.data);
    assert_null(m->lm_head.data);
    assert_null(m->final_norm.data);
    assert_int_equal(m->held_bytes, want);
    /* exactly a quarter of the expert bytes */
    size_t all = 0;
    for (int l = 0; l < full->cfg.n_layers; l++)
        for (int e = 0; e < 8; e++)
            all += expert_bytes(&full->layers[l].experts[e]);
    assert_int_equal(m->held_bytes * 4, all);
    duet_model_destroy(&m);
    duet_model_destroy(&full);
}

static void test_role_errors(void **state)
{
    (void)state;
    static const struct {
        int ids[3];
        int n;
        const char *mention;
    } cases[] = {
        {{8}, 1, "expert 8"},
        {{-1}, 1, "expert -1"},
        {{3, 1, 3}, 3, "expert 3 is listed twice"},
        {{0}, 0, "list of experts"},
    };
    for (size_t i = 0; i < DUET_ARRAY_LEN(cases); i++) {
        duet_load_opts_t o = {
            .role = DUET_ROLE_EXPERT, .experts = cases[i].ids, .n_experts = cases[i].n};
        duet_model_t *m = NULL;
        assert_int_equal(duet_model_load(MIXTRAL_TINY, &o, &m), DUET_ERR_INVALID);
        assert_null(m);
        assert_detail("mixtral-tiny", cases[i].mention, NULL);
    }
    duet_load_opts_t o = {.role = (duet_role_t)7};
    duet_model_t *m = NULL;
    assert_int_equal(duet_model_load(MIXTRAL_TINY, &o, &m), DUET_ERR_INVALID);
    assert_int_equal(duet_model_load("/nonexistent/duet-model", NULL, &m), DUET_ERR_IO);
    assert_detail("/nonexistent/duet-model/config.json", NULL);
    assert_null(m);
}

static void test_qwen2_moe(void **state)
{
    (void)state;
    duet_model_t *m = load(DUET_FIXTURES "/qwen2moe-tiny", DUET_ROLE_FULL, NULL, 0);
    assert_int_equal(m->cfg.arch, DUET_ARCH_QWEN2_MOE);
    for (int l = 0; l < 2; l++) {
        const duet_layer_weights_t *w = &m->layers[l];
        assert_shape1(&w->bq, 64);
        assert_shape1(&w->bk, 32);
        assert_shape1(&w->bv, 32);
        assert_shape2(&w->shared.gate, 48, 64);
        assert_shape2(&w->shared.up, 48, 64);
        assert_shape2(&w->shared.down, 64, 48);
        assert_shape2(&w->shared_gate, 1, 64);
        assert_shape2(&w->experts[7].gate, 32, 64);
        assert_shape2(&w->experts[7].down, 64, 32);
        assert_null(w->q_norm.data);
    }
    assert_ptr_not_equal(m->lm_head.data, m->embed.data);
    assert_int_equal(m->held_bytes, checkpoint_bytes(DUET_FIXTURES "/qwen2moe-tiny"));
    duet_model_destroy(&m);
    /* the attention role holds the shared expert, the expert role does not */
    m = load(DUET_FIXTURES "/qwen2moe-tiny", DUET_ROLE_ATTENTION, NULL, 0);
    assert_non_null(m->layers[1].shared.down.data);
    assert_non_null(m->layers[1].shared_gate.data);
    assert_null(m->layers[1].experts[0].gate.data);
    duet_model_destroy(&m);
    const int one = 3;
    m = load(DUET_FIXTURES "/qwen2moe-tiny", DUET_ROLE_EXPERT, &one, 1);
    assert_null(m->layers[1].shared.down.data);
    assert_null(m->layers[1].bq.data);
    assert_non_null(m->layers[1].experts[3].up.data);
    assert_null(m->layers[1].experts[2].up.data);
    duet_model_destroy(&m);
}

static void test_qwen3_moe(void **state)
{
    (void)state;
    duet_model_t *m = load(DUET_FIXTURES "/qwen3moe-tiny", DUET_ROLE_FULL, NULL, 0);
    assert_int_equal(m->cfg.arch, DUET_ARCH_QWEN3_MOE);
    assert_int_equal(m->cfg.head_dim, 32);
    const duet_layer_weights_t *w0 = &m->layers[0], *w1 = &m->layers[1];
    assert_shape2(&w0->wq, 128, 64); /* 4 heads x 32 */
    assert_shape2(&w0->wk, 64, 64);
    assert_shape2(&w0->wo, 64, 128);
    assert_shape1(&w0->q_norm, 32);
    assert_shape1(&w0->k_norm, 32);
    assert_null(w0->bq.data);
    assert_shape2(&w0->router, 8, 64);
    assert_shape2(&w0->experts[0].gate, 32, 64);
    /* layer 1 is dense (mlp_only_layers [1]) */
    assert_false(m->cfg.sparse_layer[1]);
    assert_null(w1->router.data);
    assert_null(w1->experts[0].gate.data);
    assert_shape2(&w1->dense.gate, 96, 64);
    assert_shape2(&w1->dense.up, 96, 64);
    assert_shape2(&w1->dense.down, 64, 96);
    assert_int_equal(m->held_bytes, checkpoint_bytes(DUET_FIXTURES "/qwen3moe-tiny"));
    duet_model_destroy(&m);
    const int two[2] = {0, 7};
    m = load(DUET_FIXTURES "/qwen3moe-tiny", DUET_ROLE_EXPERT, two, 2);
    assert_non_null(m->layers[0].experts[7].down.data);
    assert_null(m->layers[1].dense.gate.data);
    assert_null(m->layers[1].experts[7].down.data);
    duet_model_destroy(&m);
}

static void test_olmoe(void **state)
{
    (void)state;
    duet_model_t *m = load(DUET_FIXTURES "/olmoe-tiny", DUET_ROLE_FULL, NULL, 0);
    assert_int_equal(m->cfg.arch, DUET_ARCH_OLMOE);
    assert_shape1(&m->layers[1].q_norm, 64); /* over the whole projection */
    assert_shape1(&m->layers[1].k_norm, 32);
    assert_shape2(&m->layers[1].experts[4].up, 32, 64);
    assert_true(m->cfg.tie_embeddings);
    assert_ptr_equal(m->lm_head.data, m->embed.data); /* tied: no lm_head.weight in the file */
    assert_int_equal(m->held_bytes, checkpoint_bytes(DUET_FIXTURES "/olmoe-tiny"));
    duet_model_destroy(&m);
}

/* ---- bad checkpoints ------------------------------------------------------ */

typedef struct edit {
    const char *skip;   /* leave this tensor out */
    const char *name;   /* change this tensor ... */
    duet_dtype_t dtype; /* ... to this dtype */
    int ndim;           /* ... and, if ndim > 0, this shape (data zero) */
    int64_t shape[2];
} edit_t;

static void copy_text(const char *from, const char *to)
{
    char *text;
    size_t len;
    assert_int_equal(duet_file_read_all(from, 1 << 20, &text, &len), DUET_OK);
    FILE *f = fopen(to, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    fclose(f);
    duet_free(text);
}

/* dir = mixtral-tiny with one edit. */
static void make_edited(const char *dir, const edit_t *ed)
{
    char path[256];
    mkdir(dir, 0755);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    copy_text(MIXTRAL_TINY "/config.json", path);
    duet_safetensors_t *src = NULL;
    assert_int_equal(duet_safetensors_open(MIXTRAL_TINY "/model.safetensors", &src), DUET_OK);
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    duet_safetensors_writer_t *w = NULL;
    assert_int_equal(duet_safetensors_writer_create(path, &w), DUET_OK);
    size_t n = duet_safetensors_count(src);
    for (size_t i = 0; i < n; i++) {
        const char *name = duet_safetensors_name_at(src, i);
        const duet_tensor_t *t = duet_safetensors_tensor_at(src, i);
        if (ed->skip && !strcmp(name, ed->skip))
            continue;
        if (ed->name && !strcmp(name, ed->name))
            assert_int_equal(duet_safetensors_writer_add(w, name, ed->dtype,
                                                         ed->ndim ? ed->ndim : t->ndim,
                                                         ed->ndim ? ed->shape : t->shape),
                             DUET_OK);
        else
            assert_int_equal(duet_safetensors_writer_add(w, name, t->dtype, t->ndim, t->shape),
                             DUET_OK);
    }
    for (size_t i = 0; i < n; i++) {
        const char *name = duet_safetensors_name_at(src, i);
        const duet_tensor_t *t = duet_safetensors_tensor_at(src, i);
        if (ed->skip && !strcmp(name, ed->skip))
            continue;
        if (ed->name && !strcmp(name, ed->name) && ed->ndim) {
            size_t nb = duet_dtype_size(ed->dtype);
            for (int d = 0; d < ed->ndim; d++)
                nb *= (size_t)ed->shape[d];
            void *z = calloc(1, nb);
            assert_int_equal(duet_safetensors_writer_write(w, z, nb), DUET_OK);
            free(z);
        } else {
            assert_int_equal(duet_safetensors_writer_write(w, t->data, t->nbytes), DUET_OK);
        }
    }
    assert_int_equal(duet_safetensors_writer_finish(&w), DUET_OK);
    duet_safetensors_destroy(&src);
}

static void test_bad_checkpoints(void **state)
{
    (void)state;
    char dir[128];
    duet_model_t *m = NULL;
    const char *k1 = "model.layers.1.self_attn.k_proj.weight";

    snprintf(dir, sizeof(dir), "%s/missing", tmpdir);
    make_edited(dir, &(edit_t){.skip = k1});
    assert_int_equal(duet_model_load(dir, NULL, &m), DUET_ERR_NOT_FOUND);
    assert_detail(dir, "model.safetensors", k1, "missing", NULL);
    assert_null(m);

    snprintf(dir, sizeof(dir), "%s/shape", tmpdir);
    make_edited(dir,
                &(edit_t){.name = k1, .dtype = DUET_DTYPE_BF16, .ndim = 2, .shape = {16, 128}});
    assert_int_equal(duet_model_load(dir, NULL, &m), DUET_ERR_INVALID);
    assert_detail(dir, "model.safetensors", k1, "shape [16, 128], expected [32, 128]", NULL);

    const char *e5 = "model.layers.0.block_sparse_moe.experts.5.w2.weight";
    snprintf(dir, sizeof(dir), "%s/eshape", tmpdir);
    make_edited(dir,
                &(edit_t){.name = e5, .dtype = DUET_DTYPE_F32, .ndim = 2, .shape = {256, 128}});
    assert_int_equal(duet_model_load(dir, NULL, &m), DUET_ERR_INVALID);
    assert_detail(dir, e5, "shape [256, 128], expected [128, 256]", NULL);
    /* an expert shard that does not hold expert 5 never looks at it */
    const int others[2] = {0, 1};
    m = load(dir, DUET_ROLE_EXPERT, others, 2);
    duet_model_destroy(&m);
    const int five = 5;
    duet_load_opts_t o5 = {.role = DUET_ROLE_EXPERT, .experts = &five, .n_experts = 1};
    assert_int_equal(duet_model_load(dir, &o5, &m), DUET_ERR_INVALID);
    assert_detail(e5, NULL);

    snprintf(dir, sizeof(dir), "%s/dtype", tmpdir);
    make_edited(dir, &(edit_t){.name = k1, .dtype = DUET_DTYPE_I16});
    assert_int_equal(duet_model_load(dir, NULL, &m), DUET_ERR_INVALID);
    assert_detail(dir, k1, "dtype I16", NULL);

    /* F32 instead of BF16 (same shape) is fine: dtypes are per tensor */
    snprintf(dir, sizeof(dir), "%s/f32", tmpdir);
    make_edited(dir, &(edit_t){.name = k1, .dtype = DUET_DTYPE_F32, .ndim = 2, .shape = {32, 128}});
    m = load(dir, DUET_ROLE_FULL, NULL, 0);
    assert_int_equal(m->layers[1].wk.dtype, DUET_DTYPE_F32);
    duet_model_destroy(&m);

    /* no embeddings: only an expert shard can load it */
    snprintf(dir, sizeof(dir), "%s/noembed", tmpdir);
    make_edited(dir, &(edit_t){.skip = "model.embed_tokens.weight"});
    assert_int_equal(duet_model_load(dir, NULL, &m), DUET_ERR_NOT_FOUND);
    assert_detail("model.embed_tokens.weight", NULL);
    m = load(dir, DUET_ROLE_EXPERT, others, 2);
    duet_model_destroy(&m);

    /* truncated safetensors */
    char path[256];
    snprintf(dir, sizeof(dir), "%s/trunc", tmpdir);
    make_edited(dir, &(edit_t){0});
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_int_equal(truncate(path, sb.st_size - 100), 0);
    assert_int_equal(duet_model_load(dir, NULL, &m), DUET_ERR_RANGE);
    assert_detail(path, "past the end", NULL);

    /* malformed config.json */
    snprintf(dir, sizeof(dir), "%s/cfg", tmpdir);
    make_edited(dir, &(edit_t){0});
    m = load(dir, DUET_ROLE_FULL, NULL, 0);
    duet_model_destroy(&m);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    FILE *f = fopen(path, "wb");
    fputs("{\"model_type\": \"mixtral\", \"hidden_size\": 128,,}", f);
    fclose(f);
    assert_int_equal(duet_model_load(dir, NULL, &m), DUET_ERR_INVALID);
    assert_detail(path, "malformed JSON", NULL);
    /* config and weights disagree */
    f = fopen(path, "wb");
    fputs("{\"model_type\": \"mixtral\", \"hidden_size\": 64, \"num_hidden_layers\": 2,"
          " \"num_attention_heads\": 8, \"num_key_value_heads\": 2, \"vocab_size\": 1024,"
          " \"num_local_experts\": 8, \"num_experts_per_tok\": 2, \"intermediate_size\": 256}",
          f);
    fclose(f);
    assert_int_equal(duet_model_load(dir, NULL, &m), DUET_ERR_INVALID);
    assert_detail("model.embed_tokens.weight", "expected [1024, 64]", NULL);
    assert_null(m);
}

/* qwen2moe-tiny rewritten with transformers 5's fused in-memory expert
 * layout: each expert must read back as the same bytes. */
static void test_fused_experts(void **state)
{
    (void)state;
    const char *src_dir = DUET_FIXTURES "/qwen2moe-tiny";
    char dir[128], path[256];
    snprintf(dir, sizeof(dir), "%s/fused", tmpdir);
    mkdir(dir, 0755);
    snprintf(path, sizeof(path), "%s/config.json", dir);
    copy_text(DUET_FIXTURES "/qwen2moe-tiny/config.json", path);
    duet_model_t *ref = load(src_dir, DUET_ROLE_FULL, NULL, 0);
    const duet_config_t *c = &ref->cfg;
    duet_safetensors_t *src = NULL;
    snprintf(path, sizeof(path), "%s/model.safetensors", src_dir);
    assert_int_equal(duet_safetensors_open(path, &src), DUET_OK);
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    duet_safetensors_writer_t *w = NULL;
    assert_int_equal(duet_safetensors_writer_create(path, &w), DUET_OK);
    size_t n = duet_safetensors_count(src);
    for (size_t i = 0; i < n; i++) {
        const char *name = duet_safetensors_name_at(src, i);
        if (strstr(name, ".mlp.experts."))
            continue;
        const duet_tensor_t *t = duet_safetensors_tensor_at(src, i);
        assert_int_equal(duet_safetensors_writer_add(w, name, t->dtype, t->ndim, t->shape),
                         DUET_OK);
    }
    for (int l = 0; l < c->n_layers; l++) {
        char name[128];
        int64_t gu[3] = {c->n_experts, 2 * c->expert_dim, c->hidden};
        int64_t dn[3] = {c->n_experts, c->hidden, c->expert_dim};
        snprintf(name, sizeof(name), "model.layers.%d.mlp.experts.gate_up_proj", l);
        assert_int_equal(duet_safetensors_writer_add(w, name, DUET_DTYPE_BF16, 3, gu), DUET_OK);
        snprintf(name, sizeof(name), "model.layers.%d.mlp.experts.down_proj", l);
        assert_int_equal(duet_safetensors_writer_add(w, name, DUET_DTYPE_BF16, 3, dn), DUET_OK);
    }
    for (size_t i = 0; i < n; i++) {
        const char *name = duet_safetensors_name_at(src, i);
        if (strstr(name, ".mlp.experts."))
            continue;
        const duet_tensor_t *t = duet_safetensors_tensor_at(src, i);
        assert_int_equal(duet_safetensors_writer_write(w, t->data, t->nbytes), DUET_OK);
    }
    for (int l = 0; l < c->n_layers; l++) {
        for (int e = 0; e < c->n_experts; e++) {
            const duet_expert_weights_t *x = &ref->layers[l].experts[e];
            assert_int_equal(duet_safetensors_writer_write(w, x->gate.data, x->gate.nbytes),
                             DUET_OK);
            assert_int_equal(duet_safetensors_writer_write(w, x->up.data, x->up.nbytes), DUET_OK);
        }
        for (int e = 0; e < c->n_experts; e++) {
            const duet_expert_weights_t *x = &ref->layers[l].experts[e];
            assert_int_equal(duet_safetensors_writer_write(w, x->down.data, x->down.nbytes),
                             DUET_OK);
        }
    }
    assert_int_equal(duet_safetensors_writer_finish(&w), DUET_OK);
    duet_safetensors_destroy(&src);

    duet_model_t *m = load(dir, DUET_ROLE_FULL, NULL, 0);
    assert_int_equal(m->held_bytes, ref->held_bytes);
    for (int l = 0; l < c->n_layers; l++)
        for (int e = 0; e < c->n_experts; e++) {
            const duet_expert_weights_t *x = &m->layers[l].experts[e],
                                        *y = &ref->layers[l].experts[e];
            assert_shape2(&x->gate, c->expert_dim, c->hidden);
            assert_shape2(&x->down, c->hidden, c->expert_dim);
            assert_memory_equal(x->gate.data, y->gate.data, y->gate.nbytes);
            assert_memory_equal(x->up.data, y->up.data, y->up.nbytes);
            assert_memory_equal(x->down.data, y->down.data, y->down.nbytes);
        }
    duet_model_destroy(&m);
    const int six = 6;
    m = load(dir, DUET_ROLE_EXPERT, &six, 1);
    assert_null(m->layers[0].experts[5].gate.data);
    assert_memory_equal(m->layers[0].experts[6].up.data, ref->layers[0].experts[6].up.data,
                        ref->layers[0].experts[6].up.nbytes);
    size_t all = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int e = 0; e < c->n_experts; e++)
            all += expert_bytes(&ref->layers[l].experts[e]);
    assert_int_equal(m->held_bytes * 8, all);
    duet_model_destroy(&m);
    duet_model_destroy(&ref);
}

/* ---- mkmodel ---------------------------------------------------------------- */

/* Every architecture, sharded or not, loads back with the shapes asked for;
 * the tensors depend on the seed and not on the sharding; norms are 1. */
static void test_mkmodel_roundtrip(void **state)
{
    (void)state;
    static const duet_arch_t archs[] = {DUET_ARCH_MIXTRAL, DUET_ARCH_QWEN2_MOE, DUET_ARCH_QWEN3_MOE,
                                        DUET_ARCH_OLMOE};
    static const duet_dtype_t dts[] = {DUET_DTYPE_BF16, DUET_DTYPE_F16, DUET_DTYPE_F32,
                                       DUET_DTYPE_BF16};
    for (size_t i = 0; i < DUET_ARRAY_LEN(archs); i++) {
        duet_mkmodel_opts_t o;
        assert_int_equal(duet_mkmodel_preset("tiny", &o), DUET_OK);
        o.arch = archs[i];
        o.dtype = dts[i];
        o.vocab = 300;
        o.n_experts = 4;
        o.top_k = 2;
        o.tie_embeddings = i == 3;
        if (archs[i] == DUET_ARCH_QWEN3_MOE)
            o.head_dim = 32;
        char one[128], sharded[128];
        snprintf(one, sizeof(one), "%s/mk%zu-1", tmpdir, i);
        snprintf(sharded, sizeof(sharded), "%s/mk%zu-3", tmpdir, i);
        if (duet_mkmodel_write(one, &o))
            fail_msg("%s", duet_error());
        o.shards = 3;
        if (duet_mkmodel_write(sharded, &o))
            fail_msg("%s", duet_error());
        duet_model_t *a = load(one, DUET_ROLE_FULL, NULL, 0);
        duet_model_t *b = load(sharded, DUET_ROLE_FULL, NULL, 0);
        duet_checkpoint_t *ck = NULL;
        assert_int_equal(duet_checkpoint_open(sharded, &ck), DUET_OK);
        assert_int_equal(duet_checkpoint_file_count(ck), 3);
        duet_checkpoint_destroy(&ck);
        assert_int_equal(a->cfg.arch, archs[i]);
        assert_int_equal(a->cfg.n_experts, 4);
        assert_int_equal(a->cfg.vocab, 300);
        assert_int_equal(a->cfg.eos_ids[0], 299);
        assert_int_equal(a->held_bytes, duet_mkmodel_bytes(&o));
        assert_int_equal(a->held_bytes, duet_mkmodel_params(&o) * duet_dtype_size(o.dtype));
        assert_int_equal(b->held_bytes, a->held_bytes);
        assert_int_equal(a->embed.dtype, dts[i]);
        assert_int_equal(a->lm_head.data == a->embed.data, o.tie_embeddings);
        assert_int_equal(a->cfg.head_dim, archs[i] == DUET_ARCH_QWEN3_MOE ? 32 : 16);
        assert_int_equal(a->cfg.shared_dim, archs[i] == DUET_ARCH_QWEN2_MOE ? 256 : 0);
        const duet_expert_weights_t *x = &a->layers[1].experts[3], *y = &b->layers[1].experts[3];
        assert_memory_equal(x->down.data, y->down.data, x->down.nbytes);
        assert_memory_equal(a->embed.data, b->embed.data, a->embed.nbytes);
        /* different tensors get different values */
        assert_memory_not_equal(x->gate.data, x->up.data, x->gate.nbytes);
        /* norm weights are exactly 1, weights small and not all equal */
        double sum = 0, sum2 = 0;
        int64_t n = duet_tensor_numel(&x->gate);
        for (int64_t k = 0; k < n; k++) {
            float v = dts[i] == DUET_DTYPE_F32 ? ((const float *)x->gate.data)[k]
                      : dts[i] == DUET_DTYPE_F16
                          ? duet_f16_to_f32(((const uint16_t *)x->gate.data)[k])
                          : duet_bf16_to_f32(((const uint16_t *)x->gate.data)[k]);
            sum += v;
            sum2 += (double)v * v;
        }
        double sd = sqrt(sum2 / (double)n - (sum / (double)n) * (sum / (double)n));
        assert_true(fabs(sum / (double)n) < 0.002);
        assert_true(sd > 0.018 && sd < 0.022);
        const void *norm = a->layers[0].attn_norm.data;
        float one_v = dts[i] == DUET_DTYPE_F32   ? ((const float *)norm)[5]
                      : dts[i] == DUET_DTYPE_F16 ? duet_f16_to_f32(((const uint16_t *)norm)[5])
                                                 : duet_bf16_to_f32(((const uint16_t *)norm)[5]);
        assert_float_equal(one_v, 1.0f, 0);
        duet_model_destroy(&a);
        duet_model_destroy(&b);
        /* the tokenizer has exactly `vocab` ids, the special one last */
        char path[256], *text;
        size_t len;
        snprintf(path, sizeof(path), "%s/tokenizer.json", one);
        assert_int_equal(duet_file_read_all(path, 1 << 24, &text, &len), DUET_OK);
        assert_non_null(strstr(text, "\"<|endoftext|>\": 299"));
        assert_non_null(strstr(text, "\"type\": \"ByteLevel\""));
        duet_free(text);
    }
    duet_mkmodel_opts_t o;
    assert_int_equal(duet_mkmodel_preset("bench", &o), DUET_OK);
    assert_true(duet_mkmodel_params(&o) > 900000000ull && duet_mkmodel_params(&o) < 1100000000ull);
    assert_int_equal(duet_mkmodel_preset("huge", &o), DUET_ERR_NOT_FOUND);
    o.n_kv_heads = 3;
    assert_int_equal(duet_mkmodel_check(&o), DUET_ERR_INVALID);
    assert_detail("kv-heads", NULL);
}

/* ---- RSS ------------------------------------------------------------------ */

static void on_progress(void *arg, size_t done, size_t total)
{
    size_t *p = arg;
    assert_true(done >= p[1] && done <= total);
    p[0]++;
    p[1] = done;
    p[2] = total;
}

static void test_expert_shard_rss(void **state)
{
    (void)state;
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/rss", tmpdir);
    /* 4 layers x 8 experts x 3 x 512 x 1024 x bf16 = 100.7 MB of experts */
    duet_mkmodel_opts_t o;
    assert_int_equal(duet_mkmodel_preset("tiny", &o), DUET_OK);
    o.hidden = 512;
    o.n_layers = 4;
    o.n_heads = 8;
    o.n_kv_heads = 2;
    o.expert_dim = 1024;
    o.vocab = 1024;
    if (duet_mkmodel_write(dir, &o))
        fail_msg("%s", duet_error());
    const size_t expert_total = (size_t)4 * 8 * 3 * 512 * 1024 * 2;

    const int held[2] = {1, 6};
    size_t prog[3] = {0, 0, 0}; /* calls, last done, last total */
    duet_load_opts_t lo = {.role = DUET_ROLE_EXPERT,
                           .experts = held,
                           .n_experts = 2,
                           .prefault = true,
                           .progress = on_progress,
                           .progress_arg = prog};
    double before = (double)duet_rss_bytes();
    duet_model_t *m = NULL;
    if (duet_model_load(dir, &lo, &m))
        fail_msg("%s", duet_error());
    double after = (double)duet_rss_bytes();
    double frac = (after - before) / (double)expert_total;
    print_message("expert shard (2 of 8 experts): RSS +%.1f MB = %.3f of %.1f MB of experts "
                  "(held %.1f MB)\n",
                  (after - before) / 1e6, frac, (double)expert_total / 1e6,
                  (double)m->held_bytes / 1e6);
    assert_int_equal(m->held_bytes * 4, expert_total);
    assert_true(frac >= 0.20 && frac <= 0.32);
    assert_true(prog[0] > 0);
    assert_int_equal(prog[1], m->held_bytes);
    assert_int_equal(prog[2], m->held_bytes);
    duet_model_destroy(&m);

    /* the attention shard touches no expert pages */
    lo = (duet_load_opts_t){.role = DUET_ROLE_ATTENTION, .prefault = true};
    before = (double)duet_rss_bytes();
    if (duet_model_load(dir, &lo, &m))
        fail_msg("%s", duet_error());
    after = (double)duet_rss_bytes();
    print_message("attention shard: RSS +%.1f MB (held %.1f MB)\n", (after - before) / 1e6,
                  (double)m->held_bytes / 1e6);
    assert_true(after - before < (double)(m->held_bytes + expert_total / 20));
    duet_model_destroy(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixtral_full),      cmocka_unit_test(test_pycoder_sharded),
        cmocka_unit_test(test_attention_role),    cmocka_unit_test(test_expert_role),
        cmocka_unit_test(test_role_errors),       cmocka_unit_test(test_qwen2_moe),
        cmocka_unit_test(test_qwen3_moe),         cmocka_unit_test(test_olmoe),
        cmocka_unit_test(test_bad_checkpoints),   cmocka_unit_test(test_fused_experts),
        cmocka_unit_test(test_mkmodel_roundtrip), cmocka_unit_test(test_expert_shard_rss),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
