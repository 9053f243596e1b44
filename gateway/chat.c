/* chat — chat templates (see chat.h). */
#include "gateway/chat.h"

#include <stdio.h>
#include <string.h>

const char *duet_gw_chat_style_name(duet_gw_chat_style_t style)
{
    switch (style) {
    case DUET_GW_CHAT_CHATML: return "chatml";
    case DUET_GW_CHAT_INST: return "inst";
    default: return "auto";
    }
}

duet_gw_chat_style_t duet_gw_chat_detect(const duet_tokenizer_t *tok, const char *dir)
{
    if (dir) {
        char path[4096];
        char *data = NULL;
        size_t len = 0;
        snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
        if (duet_file_read_all(path, 64u << 20, &data, &len) == DUET_OK) {
            /* A substring test is enough: these markers only appear in the
             * chat_template (or as added-token contents, which agree). */
            duet_gw_chat_style_t s = DUET_GW_CHAT_AUTO;
            if (strstr(data, "<|im_start|>"))
                s = DUET_GW_CHAT_CHATML;
            else if (strstr(data, "[INST]"))
                s = DUET_GW_CHAT_INST;
            duet_free(data);
            if (s != DUET_GW_CHAT_AUTO)
                return s;
        } else {
            duet_error_clear(); /* no tokenizer_config.json is normal */
        }
    }
    if (tok) {
        if (duet_tokenizer_token_id(tok, "<|im_start|>") >= 0)
            return DUET_GW_CHAT_CHATML;
        if (duet_tokenizer_token_id(tok, "[INST]") >= 0)
            return DUET_GW_CHAT_INST;
    }
    return DUET_GW_CHAT_CHATML;
}

static const char *role_name(duet_gw_role_t r)
{
    switch (r) {
    case DUET_GW_ROLE_SYSTEM: return "system";
    case DUET_GW_ROLE_ASSISTANT: return "assistant";
    default: return "user";
    }
}

static duet_status_t render_chatml(const duet_gw_message_t *msgs, size_t n, duet_buf_t *out)
{
    for (size_t i = 0; i < n; i++) {
        if (duet_buf_printf(out, "<|im_start|>%s\n", role_name(msgs[i].role)) ||
            duet_buf_append(out, msgs[i].content, msgs[i].content_len) ||
            duet_buf_printf(out, "<|im_end|>\n"))
            return DUET_ERR_NOMEM;
    }
    return duet_buf_printf(out, "<|im_start|>assistant\n");
}

static duet_status_t render_inst(const duet_gw_message_t *msgs, size_t n, const char *bos,
                                 const char *eos, duet_buf_t *out)
{
    if (bos && duet_buf_printf(out, "%s", bos))
        return DUET_ERR_NOMEM;
    const duet_gw_message_t *pending_system = NULL;
    for (size_t i = 0; i < n; i++) {
        const duet_gw_message_t *m = &msgs[i];
        if (m->role == DUET_GW_ROLE_SYSTEM) {
            pending_system = m;
            continue;
        }
        if (m->role == DUET_GW_ROLE_USER) {
            if (duet_buf_printf(out, "[INST] "))
                return DUET_ERR_NOMEM;
            if (pending_system) {
                if (duet_buf_append(out, pending_system->content, pending_system->content_len) ||
                    duet_buf_printf(out, "\n\n"))
                    return DUET_ERR_NOMEM;
                pending_system = NULL;
            }
            if (duet_buf_append(out, m->content, m->content_len) ||
                duet_buf_printf(out, " [/INST]"))
                return DUET_ERR_NOMEM;
        } else {
            if (duet_buf_append(out, m->content, m->content_len) ||
                (eos && duet_buf_printf(out, "%s", eos)))
                return DUET_ERR_NOMEM;
        }
    }
    if (pending_system) { /* a trailing system message: ask with it alone */
        if (duet_buf_printf(out, "[INST] ") ||
            duet_buf_append(out, pending_system->content, pending_system->content_len) ||
            duet_buf_printf(out, " [/INST]"))
            return DUET_ERR_NOMEM;
    }
    return DUET_OK;
}

duet_status_t duet_gw_chat_render(duet_gw_chat_style_t style, const duet_gw_message_t *msgs,
                                  size_t n, const char *bos, const char *eos, duet_buf_t *out)
{
    duet_status_t st = style == DUET_GW_CHAT_INST ? render_inst(msgs, n, bos, eos, out)
                                                  : render_chatml(msgs, n, out);
    if (st)
        return duet_errorf(DUET_ERR_NOMEM, "rendering the chat template: out of memory");
    return DUET_OK;
}
