/* chat — render chat messages into one prompt text with the model's chat
 * template, for the simple templates MoE checkpoints ship:
 *
 *   ChatML (Qwen, many fine-tunes):
 *     <|im_start|>system\n...<|im_end|>\n<|im_start|>user\n...<|im_end|>\n
 *     <|im_start|>assistant\n
 *   INST (Mixtral / Mistral / Llama-2):
 *     <s>[INST] {system}\n\n{user} [/INST]{assistant}</s>[INST] {user} [/INST]
 *     (a system message is folded into the next user turn, since Mixtral's
 *     template has no system role)
 *
 * Detection: DIR/tokenizer_config.json's "chat_template" naming
 * "<|im_start|>" or "[INST]" decides; else a tokenizer with an
 * "<|im_start|>" token is ChatML and one with "[INST]" is INST. Otherwise
 * the documented default is ChatML written as plain text: it is the most
 * widely understood layout, and a model without chat tokens (such as the
 * bundled code model) just sees it as text. */
#ifndef DUET_GATEWAY_CHAT_H
#define DUET_GATEWAY_CHAT_H

#include "base/base.h"
#include "gateway/request.h"
#include "model/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum duet_gw_chat_style {
    DUET_GW_CHAT_AUTO = 0, /* detect (see above) */
    DUET_GW_CHAT_CHATML = 1,
    DUET_GW_CHAT_INST = 2,
} duet_gw_chat_style_t;

DUET_API const char *duet_gw_chat_style_name(duet_gw_chat_style_t style);
/* Pick a style for `tok` (may be NULL) and model directory `dir` (may be NULL). */
DUET_API duet_gw_chat_style_t duet_gw_chat_detect(const duet_tokenizer_t *tok, const char *dir);
/* Append the rendered prompt to *out. `bos`/`eos` are the token strings used
 * by the INST style (NULL: left out). */
DUET_API duet_status_t duet_gw_chat_render(duet_gw_chat_style_t style,
                                           const duet_gw_message_t *msgs, size_t n, const char *bos,
                                           const char *eos, duet_buf_t *out);

#ifdef __cplusplus
}
#endif
#endif /* DUET_GATEWAY_CHAT_H */
