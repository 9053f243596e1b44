/* The request validator and the chat templates, without a server: what a
 * body becomes, and which field an error names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "gateway/chat.h"
#include "gateway/request.h"

static void parse_ok(duet_gw_kind_t kind, const char *body, duet_gw_request_t *req)
{
    duet_gw_error_t err;
    duet_status_t st = duet_gw_request_parse(kind, body, strlen(body), req, &err);
    if (st)
        fail_msg("'%s' refused: %s (param %s)", body, err.message, err.param);
}

static void parse_bad(duet_gw_kind_t kind, const char *body, int status, const char *param)
{
    duet_gw_request_t req;
    duet_gw_error_t err;
    duet_status_t st = duet_gw_request_parse(kind, body, strlen(body), &req, &err);
    duet_gw_request_cleanup(&req);
    if (st == DUET_OK)
        fail_msg("'%s' was accepted", body);
    assert_int_equal(err.http_status, status);
    if (strcmp(err.param, param) != 0)
        fail_msg("'%s': param '%s', expected '%s' (%s)", body, err.param, param, err.message);
    assert_true(strlen(err.message) > 0);
    assert_string_equal(err.type, "invalid_request_error");
}

static void test_defaults(void **state)
{
    (void)state;
    duet_gw_request_t r;
    parse_ok(DUET_GW_COMPLETION, "{\"prompt\":\"hello\"}", &r);
    assert_string_equal(r.prompt, "hello");
    assert_int_equal(r.prompt_len, 5);
    assert_null(r.prompt_ids);
    assert_null(r.model);
    assert_int_equal(r.max_tokens, -1);
    assert_true(r.temperature == 1.0 && r.top_p == 1.0);
    assert_int_equal(r.top_k, -1);
    assert_false(r.has_seed);
    assert_int_equal(r.n, 1);
    assert_false(r.stream);
    assert_int_equal(r.n_stop, 0);
    assert_true(r.skip_special);
    duet_gw_request_cleanup(&r);
}

static void test_fields(void **state)
{
    (void)state;
    duet_gw_request_t r;
    parse_ok(DUET_GW_COMPLETION,
             "{\"model\":\"m\",\"prompt\":[[5,6,7]],\"max_tokens\":12.0,\"temperature\":0,"
             "\"top_p\":0.5,\"top_k\":40,\"seed\":-1,\"n\":3,\"stop\":[\"a\",\"\",\"bc\"],"
             "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"logprobs\":null,"
             "\"echo\":false,\"best_of\":3,\"user\":\"x\",\"presence_penalty\":0}",
             &r);
    assert_string_equal(r.model, "m");
    assert_int_equal(r.n_prompt_ids, 3);
    assert_int_equal(r.prompt_ids[2], 7);
    assert_int_equal(r.max_tokens, 12);
    assert_true(r.temperature == 0.0 && r.top_p == 0.5);
    assert_int_equal(r.top_k, 40);
    assert_true(r.has_seed);
    assert_true(r.seed == UINT64_MAX);
    assert_int_equal(r.n, 3);
    assert_int_equal(r.n_stop, 2); /* the empty one is dropped */
    assert_string_equal(r.stop[1], "bc");
    assert_true(r.stream && r.include_usage);
    duet_gw_request_cleanup(&r);

    parse_ok(DUET_GW_COMPLETION, "{\"prompt\":[\"one\"],\"stop\":\"\\n\\n\"}", &r);
    assert_string_equal(r.prompt, "one");
    assert_int_equal(r.n_stop, 1);
    assert_string_equal(r.stop[0], "\n\n");
    duet_gw_request_cleanup(&r);
}

static void test_chat_fields(void **state)
{
    (void)state;
    duet_gw_request_t r;
    parse_ok(DUET_GW_CHAT,
             "{\"messages\":[{\"role\":\"developer\",\"content\":\"be brief\"},"
             "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
             "{\"type\":\"text\",\"text\":\"b\"}]},{\"role\":\"assistant\",\"content\":null}],"
             "\"max_tokens\":5,\"max_completion_tokens\":7}",
             &r);
    assert_int_equal(r.n_messages, 3);
    assert_int_equal(r.messages[0].role, DUET_GW_ROLE_SYSTEM);
    assert_string_equal(r.messages[1].content, "ab");
    assert_string_equal(r.messages[2].content, "");
    assert_int_equal(r.max_tokens, 7);
    duet_gw_request_cleanup(&r);
}

static void test_errors(void **state)
{
    (void)state;
    const duet_gw_kind_t C = DUET_GW_COMPLETION, H = DUET_GW_CHAT;
    parse_bad(C, "", 400, "");
    parse_bad(C, "{\"prompt\": \"x\"", 400, "");
    parse_bad(C, "[1]", 400, "");
    parse_bad(C, "{}", 400, "prompt");
    parse_bad(C, "{\"prompt\":null}", 400, "prompt");
    parse_bad(C, "{\"prompt\":7}", 400, "prompt");
    parse_bad(C, "{\"prompt\":[]}", 400, "prompt");
    parse_bad(C, "{\"prompt\":[1,-2]}", 400, "prompt");
    parse_bad(C, "{\"prompt\":[1,\"a\"]}", 400, "prompt");
    parse_bad(C, "{\"prompt\":[\"a\",\"b\"]}", 400, "prompt");
    parse_bad(C, "{\"prompt\":[[1],[-1]]}", 400, "prompt");
    parse_bad(C, "{\"prompt\":\"x\",\"model\":3}", 400, "model");
    parse_bad(C, "{\"prompt\":\"x\",\"max_tokens\":-1}", 400, "max_tokens");
    parse_bad(C, "{\"prompt\":\"x\",\"max_tokens\":0}", 400, "max_tokens");
    parse_bad(C, "{\"prompt\":\"x\",\"max_tokens\":1.5}", 400, "max_tokens");
    parse_bad(C, "{\"prompt\":\"x\",\"max_tokens\":\"9\"}", 400, "max_tokens");
    parse_bad(C, "{\"prompt\":\"x\",\"temperature\":-0.1}", 400, "temperature");
    parse_bad(C, "{\"prompt\":\"x\",\"temperature\":\"hot\"}", 400, "temperature");
    parse_bad(C, "{\"prompt\":\"x\",\"top_p\":0}", 400, "top_p");
    parse_bad(C, "{\"prompt\":\"x\",\"top_p\":1.5}", 400, "top_p");
    parse_bad(C, "{\"prompt\":\"x\",\"top_k\":-2}", 400, "top_k");
    parse_bad(C, "{\"prompt\":\"x\",\"seed\":1e30}", 400, "seed");
    parse_bad(C, "{\"prompt\":\"x\",\"n\":0}", 400, "n");
    parse_bad(C, "{\"prompt\":\"x\",\"n\":1000}", 400, "n");
    parse_bad(C, "{\"prompt\":\"x\",\"stream\":1}", 400, "stream");
    parse_bad(C, "{\"prompt\":\"x\",\"stop\":1}", 400, "stop");
    parse_bad(C, "{\"prompt\":\"x\",\"stop\":[\"a\",2]}", 400, "stop[1]");
    parse_bad(C, "{\"prompt\":\"x\",\"stream_options\":{\"include_usage\":true}}", 400,
              "stream_options");
    parse_bad(C, "{\"prompt\":\"x\",\"stream\":true,\"stream_options\":{\"include_usage\":1}}", 400,
              "stream_options.include_usage");
    parse_bad(C, "{\"prompt\":\"x\",\"logprobs\":2}", 400, "logprobs");
    parse_bad(C, "{\"prompt\":\"x\",\"echo\":true}", 400, "echo");
    parse_bad(C, "{\"prompt\":\"x\",\"best_of\":2}", 400, "best_of");
    parse_bad(C, "{\"prompt\":\"x\",\"frequency_penalty\":0.5}", 400, "frequency_penalty");
    parse_bad(H, "{}", 400, "messages");
    parse_bad(H, "{\"messages\":{}}", 400, "messages");
    parse_bad(H, "{\"messages\":[]}", 400, "messages");
    parse_bad(H, "{\"messages\":[3]}", 400, "messages[0]");
    parse_bad(H, "{\"messages\":[{\"content\":\"x\"}]}", 400, "messages[0].role");
    parse_bad(H, "{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}", 400,
              "messages[0].role");
    parse_bad(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\"}]}", 400,
              "messages[1].content");
    parse_bad(H, "{\"messages\":[{\"role\":\"user\",\"content\":7}]}", 400, "messages[0].content");
    parse_bad(H, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", 400,
              "messages[0].content[0].type");
    parse_bad(H,
              "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_completion_tokens\":-3}",
              400, "max_completion_tokens");
    parse_bad(H, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{}]}", 400,
              "tools");
}

static void render(duet_gw_chat_style_t style, const duet_gw_message_t *m, size_t n,
                   const char *expect)
{
    duet_buf_t b = {0};
    assert_int_equal(duet_gw_chat_render(style, m, n, "<s>", "</s>", &b), DUET_OK);
    assert_int_equal(duet_buf_append(&b, "", 1), DUET_OK);
    assert_string_equal((const char *)b.data, expect);
    duet_buf_cleanup(&b);
}

static void test_chat_templates(void **state)
{
    (void)state;
    duet_gw_message_t m[] = {
        {DUET_GW_ROLE_SYSTEM, "S", 1},
        {DUET_GW_ROLE_USER, "U1", 2},
        {DUET_GW_ROLE_ASSISTANT, "A1", 2},
        {DUET_GW_ROLE_USER, "U2", 2},
    };
    render(DUET_GW_CHAT_CHATML, m, 4,
           "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n"
           "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nU2<|im_end|>\n"
           "<|im_start|>assistant\n");
    render(DUET_GW_CHAT_INST, m, 4, "<s>[INST] S\n\nU1 [/INST]A1</s>[INST] U2 [/INST]");
    render(DUET_GW_CHAT_INST, m + 1, 1, "<s>[INST] U1 [/INST]");

    duet_tokenizer_t *tok = NULL;
    assert_int_equal(duet_tokenizer_load(DUET_FIXTURES "/qwen-style-tok/tokenizer.json", &tok),
                     DUET_OK);
    assert_int_equal(duet_gw_chat_detect(tok, NULL), DUET_GW_CHAT_CHATML);
    duet_tokenizer_destroy(&tok);
    assert_int_equal(duet_tokenizer_load(DUET_FIXTURES "/metaspace-tiny/tokenizer.json", &tok),
                     DUET_OK);
    /* no chat tokens, no tokenizer_config.json: the documented default */
    assert_int_equal(duet_gw_chat_detect(tok, NULL), DUET_GW_CHAT_CHATML);
    duet_tokenizer_destroy(&tok);

    /* tokenizer_config.json's chat_template decides when present */
    char dir[] = "/tmp/duet_gw_chat_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"chat_template\": \"{{ bos_token }}{% for m in messages %}[INST] {{ m.content }} "
          "[/INST]{% endfor %}\"}",
          f);
    fclose(f);
    assert_int_equal(duet_gw_chat_detect(NULL, dir), DUET_GW_CHAT_INST);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"chat_template\": \"{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}\"}",
          f);
    fclose(f);
    assert_int_equal(duet_gw_chat_detect(NULL, dir), DUET_GW_CHAT_CHATML);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),       cmocka_unit_test(test_fields),
        cmocka_unit_test(test_chat_fields),    cmocka_unit_test(test_errors),
        cmocka_unit_test(test_chat_templates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
