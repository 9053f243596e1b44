/* test_config — config.json parsing: the variants of each architecture and
 * transformers version, and that every bad input names the file and key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "model/model.h"

static duet_status_t parse(const char *json, duet_config_t *c)
{
    return duet_config_parse(json, strlen(json), "test/config.json", c);
}

/* The detail of the last error contains every one of the NULL-terminated
 * strings. */
static void assert_detail(const char *first, ...)
{
    const char *d = duet_error();
    va_list ap;
    va_start(ap, first);
    for (const char *s = first; s; s = va_arg(ap, const char *)) {
        if (!strstr(d, s))
            fail_msg("error detail \"%s\" does not mention \"%s\"", d, s);
    }
    va_end(ap);
}

static void test_mixtral_v5(void **state)
{
    (void)state;
    duet_config_t c;
    assert_int_equal(
        parse("{\"model_type\": \"mixtral\", \"hidden_size\": 128,"
              " \"num_hidden_layers\": 3, \"num_attention_heads\": 8,"
              " \"num_key_value_heads\": 2, \"head_dim\": null, \"vocab_size\": 1024,"
              " \"num_local_experts\": 8, \"num_experts_per_tok\": 2,"
              " \"intermediate_size\": 256, \"rms_norm_eps\": 1e-05,"
              " \"rope_parameters\": {\"rope_theta\": 1000000.0, \"rope_type\": \"default\"},"
              " \"max_position_embeddings\": 512, \"tie_word_embeddings\": false,"
              " \"bos_token_id\": 1, \"eos_token_id\": 2, \"sliding_window\": null}",
              &c),
        DUET_OK);
    assert_int_equal(c.arch, DUET_ARCH_MIXTRAL);
    assert_string_equal(c.model_type, "mixtral");
    assert_int_equal(c.hidden, 128);
    assert_int_equal(c.n_layers, 3);
    assert_int_equal(c.n_heads, 8);
    assert_int_equal(c.n_kv_heads, 2);
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.vocab, 1024);
    assert_int_equal(c.n_experts, 8);
    assert_int_equal(c.top_k, 2);
    assert_int_equal(c.expert_dim, 256);
    assert_int_equal(c.shared_dim, 0);
    assert_true(c.norm_topk_prob);
    assert_false(c.qkv_bias);
    assert_int_equal(c.qk_norm, DUET_QK_NORM_NONE);
    assert_false(c.tie_embeddings);
    assert_float_equal(c.rms_eps, 1e-5f, 1e-12);
    assert_float_equal(c.rope_theta, 1e6f, 1e-3);
    assert_int_equal(c.max_pos, 512);
    assert_int_equal(c.bos_id, 1);
    assert_int_equal(c.n_eos, 1);
    assert_int_equal(c.eos_ids[0], 2);
    for (int l = 0; l < 3; l++)
        assert_true(c.sparse_layer[l]);
    duet_config_cleanup(&c);
    assert_null(c.sparse_layer);
}

/* transformers 4 style: top-level rope_theta, no head_dim key, eos list,
 * num_experts instead of num_local_experts, tied embeddings. */
static void test_mixtral_v4(void **state)
{
    (void)state;
    duet_config_t c;
    assert_int_equal(parse("{\"model_type\": \"mixtral\", \"hidden_size\": 64,"
                           " \"num_hidden_layers\": 1, \"num_attention_heads\": 4,"
                           " \"vocab_size\": 300, \"num_experts\": 4, \"num_experts_per_tok\": 1,"
                           " \"intermediate_size\": 32, \"rope_theta\": 500000,"
                           " \"tie_word_embeddings\": true, \"bos_token_id\": null,"
                           " \"eos_token_id\": [7, 9, 11]}",
                           &c),
                     DUET_OK);
    assert_int_equal(c.n_kv_heads, 4); /* defaults to num_attention_heads */
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.n_experts, 4);
    assert_int_equal(c.top_k, 1);
    assert_float_equal(c.rope_theta, 500000.0f, 1e-3);
    assert_true(c.tie_embeddings);
    assert_int_equal(c.bos_id, -1);
    assert_int_equal(c.n_eos, 3);
    assert_int_equal(c.eos_ids[0], 7);
    assert_int_equal(c.eos_ids[2], 11);
    assert_float_equal(c.rms_eps, 1e-5f, 1e-12); /* mixtral default */
    duet_config_cleanup(&c);
}

static void test_qwen2_moe(void **state)
{
    (void)state;
    duet_config_t c;
    assert_int_equal(
        parse("{\"model_type\": \"qwen2_moe\", \"hidden_size\": 64,"
              " \"num_hidden_layers\": 6, \"num_attention_heads\": 4,"
              " \"num_key_value_heads\": 2, \"vocab_size\": 288,"
              " \"num_experts\": 8, \"num_experts_per_tok\": 2,"
              " \"moe_intermediate_size\": 32, \"intermediate_size\": 96,"
              " \"shared_expert_intermediate_size\": 48,"
              " \"decoder_sparse_step\": 2, \"mlp_only_layers\": [3],"
              " \"norm_topk_prob\": false, \"qkv_bias\": true,"
              " \"rope_parameters\": {\"rope_theta\": 10000.0, \"rope_type\": \"default\"},"
              " \"sliding_window\": 0, \"use_sliding_window\": false,"
              " \"eos_token_id\": null}",
              &c),
        DUET_OK);
    assert_int_equal(c.arch, DUET_ARCH_QWEN2_MOE);
    assert_int_equal(c.expert_dim, 32);
    assert_int_equal(c.dense_dim, 96);
    assert_int_equal(c.shared_dim, 48);
    assert_false(c.norm_topk_prob);
    assert_true(c.qkv_bias);
    assert_int_equal(c.qk_norm, DUET_QK_NORM_NONE);
    assert_int_equal(c.n_eos, 0);
    assert_float_equal(c.rms_eps, 1e-6f, 1e-12);
    /* step 2: layers 1, 3, 5 sparse; mlp_only_layers makes 3 dense */
    bool want[6] = {false, true, false, false, false, true};
    for (int l = 0; l < 6; l++)
        assert_int_equal(c.sparse_layer[l], want[l]);
    duet_config_cleanup(&c);
}

static void test_qwen3_moe(void **state)
{
    (void)state;
    duet_config_t c;
    assert_int_equal(parse("{\"model_type\": \"qwen3_moe\", \"hidden_size\": 64,"
                           " \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
                           " \"num_key_value_heads\": 2, \"head_dim\": 32, \"vocab_size\": 288,"
                           " \"num_local_experts\": 8, \"num_experts_per_tok\": 2,"
                           " \"moe_intermediate_size\": 32, \"intermediate_size\": 96,"
                           " \"norm_topk_prob\": true, \"attention_bias\": false,"
                           " \"rope_theta\": 1000000.0, \"mlp_only_layers\": [1]}",
                           &c),
                     DUET_OK);
    assert_int_equal(c.arch, DUET_ARCH_QWEN3_MOE);
    assert_int_equal(c.head_dim, 32); /* not hidden / heads */
    assert_true(c.norm_topk_prob);
    assert_false(c.qkv_bias);
    assert_int_equal(c.qk_norm, DUET_QK_NORM_HEAD);
    assert_int_equal(c.shared_dim, 0);
    assert_true(c.sparse_layer[0]);
    assert_false(c.sparse_layer[1]);
    assert_int_equal(c.dense_dim, 96);
    duet_config_cleanup(&c);
}

static void test_olmoe(void **state)
{
    (void)state;
    duet_config_t c;
    assert_int_equal(parse("{\"model_type\": \"olmoe\", \"hidden_size\": 64,"
                           " \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
                           " \"num_key_value_heads\": 4, \"vocab_size\": 288,"
                           " \"num_experts\": 8, \"num_experts_per_tok\": 2,"
                           " \"intermediate_size\": 32, \"clip_qkv\": null,"
                           " \"rope_parameters\": {\"rope_theta\": 10000.0},"
                           " \"eos_token_id\": 50279}",
                           &c),
                     DUET_OK);
    assert_int_equal(c.arch, DUET_ARCH_OLMOE);
    assert_int_equal(c.expert_dim, 32);
    assert_int_equal(c.qk_norm, DUET_QK_NORM_FULL);
    assert_false(c.norm_topk_prob);
    assert_false(c.tie_embeddings);
    assert_int_equal(c.n_eos, 0); /* out-of-vocabulary eos is dropped, as HF only warns */
    assert_true(c.sparse_layer[0] && c.sparse_layer[1]);
    duet_config_cleanup(&c);
}

static void test_fixture_files(void **state)
{
    (void)state;
    static const struct {
        const char *path;
        duet_arch_t arch;
        int head_dim;
    } files[] = {
        {DUET_FIXTURES "/mixtral-tiny/config.json", DUET_ARCH_MIXTRAL, 16},
        {DUET_MODELS "/pycoder-moe/config.json", DUET_ARCH_MIXTRAL, 32},
        {DUET_FIXTURES "/qwen2moe-tiny/config.json", DUET_ARCH_QWEN2_MOE, 16},
        {DUET_FIXTURES "/qwen3moe-tiny/config.json", DUET_ARCH_QWEN3_MOE, 32},
        {DUET_FIXTURES "/olmoe-tiny/config.json", DUET_ARCH_OLMOE, 16},
    };
    for (size_t i = 0; i < DUET_ARRAY_LEN(files); i++) {
        duet_config_t c;
        duet_status_t st = duet_config_load(files[i].path, &c);
        if (st)
            fail_msg("%s: %s", files[i].path, duet_error());
        assert_int_equal(c.arch, files[i].arch);
        assert_int_equal(c.head_dim, files[i].head_dim);
        duet_config_cleanup(&c);
    }
    duet_config_t c;
    assert_int_equal(duet_config_load(DUET_FIXTURES "/olmoe-tiny/config.json", &c), DUET_OK);
    assert_true(c.tie_embeddings);
    duet_config_cleanup(&c);
    assert_int_equal(duet_config_load(DUET_FIXTURES "/qwen2moe-tiny/config.json", &c), DUET_OK);
    assert_int_equal(c.shared_dim, 48);
    assert_true(c.qkv_bias);
    duet_config_cleanup(&c);
}

#define BASE                                                                                       \
    "\"hidden_size\": 64, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"                   \
    " \"vocab_size\": 300, \"num_experts_per_tok\": 2, \"intermediate_size\": 32"

static void test_errors(void **state)
{
    (void)state;
    static const struct {
        const char *json;
        duet_status_t st;
        const char *mention; /* besides the file name */
    } cases[] = {
        {"{\"model_type\": \"mixtral\", ", DUET_ERR_INVALID, "malformed JSON"},
        {"[1, 2]", DUET_ERR_INVALID, "not a JSON object"},
        {"{" BASE ", \"num_local_experts\": 8}", DUET_ERR_INVALID, "'model_type'"},
        {"{\"model_type\": \"llama\", " BASE ", \"num_local_experts\": 8}", DUET_ERR_UNSUPPORTED,
         "'model_type'"},
        {"{\"model_type\": \"mixtral\", \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
         " \"vocab_size\": 300, \"num_experts_per_tok\": 2, \"intermediate_size\": 32,"
         " \"num_local_experts\": 8}",
         DUET_ERR_INVALID, "'hidden_size'"},
        {"{\"model_type\": \"mixtral\", \"hidden_size\": \"64\", \"num_hidden_layers\": 2,"
         " \"num_attention_heads\": 4, \"vocab_size\": 300, \"num_experts_per_tok\": 2,"
         " \"intermediate_size\": 32, \"num_local_experts\": 8}",
         DUET_ERR_INVALID, "'hidden_size'"},
        {"{\"model_type\": \"mixtral\", " BASE "}", DUET_ERR_INVALID, "'num_experts'"},
        {"{\"model_type\": \"mixtral\", " BASE ", \"num_local_experts\": 1}", DUET_ERR_INVALID,
         "'num_experts_per_tok'"},
        {"{\"model_type\": \"mixtral\", " BASE ", \"num_local_experts\": 8,"
         " \"num_key_value_heads\": 3}",
         DUET_ERR_INVALID, "'num_key_value_heads'"},
        {"{\"model_type\": \"mixtral\", \"hidden_size\": 66, \"num_hidden_layers\": 2,"
         " \"num_attention_heads\": 4, \"vocab_size\": 300, \"num_experts_per_tok\": 2,"
         " \"intermediate_size\": 32, \"num_local_experts\": 8}",
         DUET_ERR_INVALID, "'head_dim'"},
        {"{\"model_type\": \"mixtral\", " BASE ", \"num_local_experts\": 8,"
         " \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4}}",
         DUET_ERR_UNSUPPORTED, "yarn"},
        {"{\"model_type\": \"mixtral\", " BASE ", \"num_local_experts\": 8,"
         " \"rope_parameters\": {\"rope_theta\": -1}}",
         DUET_ERR_INVALID, "rope_parameters.rope_theta"},
        {"{\"model_type\": \"mixtral\", " BASE ", \"num_local_experts\": 8,"
         " \"eos_token_id\": \"x\"}",
         DUET_ERR_INVALID, "'eos_token_id'"},
        {"{\"model_type\": \"mixtral\", " BASE ", \"num_local_experts\": 8,"
         " \"eos_token_id\": [1, 2, 3, 4, 5, 6, 7, 8, 9]}",
         DUET_ERR_INVALID, "'eos_token_id'"},
        {"{\"model_type\": \"mixtral\", " BASE ", \"num_local_experts\": 8,"
         " \"hidden_act\": \"gelu\"}",
         DUET_ERR_UNSUPPORTED, "'hidden_act'"},
        {"{\"model_type\": \"mixtral\", " BASE ", \"num_local_experts\": 8,"
         " \"tie_word_embeddings\": 1}",
         DUET_ERR_INVALID, "'tie_word_embeddings'"},
        {"{\"model_type\": \"qwen2_moe\", " BASE ", \"num_experts\": 8}", DUET_ERR_INVALID,
         "'moe_intermediate_size'"},
        {"{\"model_type\": \"qwen2_moe\", " BASE ", \"num_experts\": 8,"
         " \"moe_intermediate_size\": 16, \"mlp_only_layers\": [2]}",
         DUET_ERR_INVALID, "'mlp_only_layers[0]'"},
        {"{\"model_type\": \"qwen3_moe\", \"hidden_size\": 64, \"num_hidden_layers\": 2,"
         " \"num_attention_heads\": 4, \"vocab_size\": 300, \"num_experts_per_tok\": 2,"
         " \"num_experts\": 8, \"moe_intermediate_size\": 16, \"mlp_only_layers\": [0]}",
         DUET_ERR_INVALID, "'intermediate_size'"},
        {"{\"model_type\": \"olmoe\", " BASE ", \"num_experts\": 8, \"head_dim\": 32}",
         DUET_ERR_UNSUPPORTED, "'head_dim'"},
        {"{\"model_type\": \"olmoe\", " BASE ", \"num_experts\": 8, \"clip_qkv\": 8.0}",
         DUET_ERR_UNSUPPORTED, "'clip_qkv'"},
        {"{\"model_type\": \"mixtral\", " BASE ", \"num_local_experts\": 8,"
         " \"attention_bias\": true}",
         DUET_ERR_UNSUPPORTED, "'attention_bias'"},
        {"{\"model_type\": \"mixtral\", " BASE ", \"num_local_experts\": 8,"
         " \"model_type\": \"mixtral\"}",
         DUET_ERR_INVALID, "duplicate"},
    };
    for (size_t i = 0; i < DUET_ARRAY_LEN(cases); i++) {
        duet_config_t c;
        memset(&c, 0x5a, sizeof(c));
        duet_error_clear();
        duet_status_t st = parse(cases[i].json, &c);
        if (st != cases[i].st)
            fail_msg("case %zu: status %s, want %s (%s)", i, duet_status_str(st),
                     duet_status_str(cases[i].st), duet_error());
        assert_detail("test/config.json", cases[i].mention, NULL);
        assert_true(c.hidden == 0x5a5a5a5a); /* output untouched on failure */
    }
}

static void test_load_errors(void **state)
{
    (void)state;
    duet_config_t c;
    assert_int_equal(duet_config_load("/nonexistent/duet/config.json", &c), DUET_ERR_IO);
    assert_detail("/nonexistent/duet/config.json", NULL);
    assert_int_equal(duet_config_load(DUET_FIXTURES "/mixtral-tiny/model.safetensors", &c),
                     DUET_ERR_INVALID);
    assert_detail("mixtral-tiny/model.safetensors", "malformed JSON", NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mixtral_v5), cmocka_unit_test(test_mixtral_v4),
        cmocka_unit_test(test_qwen2_moe),  cmocka_unit_test(test_qwen3_moe),
        cmocka_unit_test(test_olmoe),      cmocka_unit_test(test_fixture_files),
        cmocka_unit_test(test_errors),     cmocka_unit_test(test_load_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
