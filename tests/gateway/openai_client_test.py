#!/usr/bin/env python3
"""The official `openai` Python client against a duet gateway.

The server is tests/gateway/fake_server. Without --model it is the gateway
in front of a deterministic fake engine (token k after prompt id p is
p + 1 + k, plus seed % 5 when temperature > 0), so exact outputs are known.
With --model DIR it serves that real model through the single-process
engine; the checks that depend on the fake's rule are then replaced by
--reference FILE (the model's reference.json: greedy continuations computed
by Hugging Face transformers), which the served text must equal.

Exit 0 on success, 1 on a failed check, 77 (skip) when the openai package is
missing.
"""
import argparse
import json
import subprocess
import sys
import time
import urllib.request

try:
    import openai
except ImportError:
    print("openai_client_test: the 'openai' package is not installed (pip install openai); skipping")
    sys.exit(77)


def bytes_to_unicode():
    """GPT-2's byte <-> printable code point table (ByteLevel decoding)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Vocab:
    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            tj = json.load(f)
        self.by_id = {i: t for t, i in tj["model"]["vocab"].items()}
        self.special = set()
        for a in tj.get("added_tokens", []):
            self.by_id[a["id"]] = a["content"]
            if a.get("special"):
                self.special.add(a["id"])
        self.ids = {t: i for i, t in self.by_id.items()}
        self.size = max(self.by_id) + 1
        self.b2u = bytes_to_unicode()

    def decode(self, ids):
        out = bytearray()
        for i in ids:
            if i in self.special:
                continue
            out += bytes(self.b2u[ch] for ch in self.by_id[i])
        return out.decode("utf-8", errors="replace")


def fake_tokens(last, n, temperature=0.0, seed=0, vocab=1024, eos=0):
    out = []
    off = seed % 5 if temperature > 0 else 0
    for k in range(n):
        t = (last + 1 + k + off) % vocab
        out.append(t)
        if t == eos:
            break
    return out


FAILS = []


def check(cond, what):
    if cond:
        print(f"ok   {what}")
    else:
        print(f"FAIL {what}")
        FAILS.append(what)


def metric(base, name):
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def err_body(e):
    b = e.body if isinstance(e.body, dict) else {}
    return b.get("error", b)


def expect_error(fn, cls, status, param, what):
    try:
        fn()
    except cls as e:
        body = err_body(e)
        ok = e.status_code == status and body.get("param") == param and \
            body.get("type") and body.get("message")
        check(ok, f"{what}: {status} param={param!r} (got {e.status_code} {body})")
        return
    except Exception as e:  # noqa: BLE001 - report any other failure as such
        check(False, f"{what}: raised {type(e).__name__}: {e}")
        return
    check(False, f"{what}: no error raised")


NO_EOS = {"ignore_eos": True}  # vLLM's extension: exact token counts on a real model


def run(client, base, vocab, exact, reference):
    # models
    models = client.models.list()
    check(len(models.data) == 1, "models.list names one model")
    model = models.data[0].id
    ctx = int((models.data[0].model_extra or {}).get("max_model_len", 0))
    check(ctx > 16, f"models.list reports max_model_len ({ctx})")

    if reference:
        with open(reference, encoding="utf-8") as f:
            ref = json.load(f)
        fair = [g for g in ref["greedy"] if g["min_margin"] >= 1e-3]
        for g in fair:
            r = client.completions.create(model=model, prompt=g["prompt"],
                                          max_tokens=len(g["greedy"]), temperature=0)
            check(r.choices[0].text == g["text"], f"greedy of {g['prompt']!r} equals HF's")
            check(r.usage.prompt_tokens == len(g["prompt_ids"]), "prompt tokenized as HF does")
            r2 = client.completions.create(model=model, prompt=g["prompt_ids"],
                                           max_tokens=len(g["greedy"]), temperature=0)
            check(r2.choices[0].text == g["text"], "same from the token-id prompt")
        check(len(fair) > 0, "reference has prompts to compare")

    # completions, not streamed, token-id prompt
    r = client.completions.create(model=model, prompt=[600], max_tokens=5, temperature=0,
                                  extra_body=NO_EOS)
    if exact:
        check(r.choices[0].text == vocab.decode(fake_tokens(600, 5)), "completion text (token ids)")
    check(r.choices[0].finish_reason == "length", "completion finish_reason length")
    check((r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (1, 5, 6),
          f"completion usage {r.usage}")
    check(r.id.startswith("cmpl-") and r.object == "text_completion", "completion id/object")

    # the same, streamed, with usage
    chunks = list(client.completions.create(model=model, prompt=[600], max_tokens=5,
                                            temperature=0, stream=True, extra_body=NO_EOS,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    check(text == r.choices[0].text, "streamed completion text equals non-streamed")
    check(len({c.id for c in chunks}) == 1, "one id on every chunk")
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    check(finals == ["length"], f"stream finish reasons {finals}")
    check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
          and chunks[-1].usage.prompt_tokens == 1, "stream usage chunk")

    # string prompt
    r = client.completions.create(model=model, prompt="def main():", max_tokens=3, temperature=0,
                                  extra_body=NO_EOS)
    check(r.usage.completion_tokens == 3 and r.usage.prompt_tokens >= 1, "string prompt usage")

    # chat, not streamed and streamed
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hello"}]
    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=4, temperature=0,
                                       extra_body=NO_EOS)
    check(r.object == "chat.completion" and r.id.startswith("chatcmpl-"), "chat id/object")
    check(r.choices[0].message.role == "assistant", "chat message role")
    if exact:
        # ChatML prompt ends in "assistant\n": the last prompt token is "\n" (Ċ)
        last = vocab.ids["Ċ"]
        check(r.choices[0].message.content == vocab.decode(fake_tokens(last, 4)), "chat content")
    check(r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4, "chat usage")
    stream = client.chat.completions.create(model=model, messages=msgs, max_tokens=4,
                                            temperature=0, stream=True, extra_body=NO_EOS,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    check(chunks[0].choices[0].delta.role == "assistant", "first chat delta carries the role")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check(text == r.choices[0].message.content, "streamed chat equals non-streamed")
    check(chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens, "chat stream usage")

    # n > 1 with a seed
    r = client.completions.create(model=model, prompt=[600], max_tokens=3, temperature=0.8,
                                  seed=10, n=3, extra_body=NO_EOS)
    check(sorted(c.index for c in r.choices) == [0, 1, 2], "n=3 gives three choices")
    if exact:
        for c in r.choices:
            want = vocab.decode(fake_tokens(600, 3, 0.8, 10 + c.index))
            check(c.text == want, f"choice {c.index} text")
    check(r.usage.completion_tokens == 9, "n=3 usage")

    # stop strings (text cut before the stop, finish_reason stop)
    full = client.completions.create(model=model, prompt=[600], max_tokens=12, temperature=0,
                                     extra_body=NO_EOS)
    full_text = full.choices[0].text
    stop = full_text[len(full_text) // 2: len(full_text) // 2 + 3]
    r = client.completions.create(model=model, prompt=[600], max_tokens=12, temperature=0,
                                  stop=["@@never@@", stop], extra_body=NO_EOS)
    check(r.choices[0].text == full_text[:full_text.find(stop)] and
          r.choices[0].finish_reason == "stop", f"stop string {stop!r}")
    chunks = list(client.completions.create(model=model, prompt=[600], max_tokens=12,
                                            temperature=0, stop=stop, stream=True,
                                            extra_body=NO_EOS))
    check("".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text,
          "streamed stop string")

    # bad requests
    expect_error(lambda: client.completions.create(model=model, prompt="x", max_tokens=-1),
                 openai.BadRequestError, 400, "max_tokens", "negative max_tokens")
    expect_error(lambda: client.completions.create(model=model, prompt="x", temperature=-2),
                 openai.BadRequestError, 400, "temperature", "negative temperature")
    expect_error(lambda: client.chat.completions.create(model=model, messages=[]),
                 openai.BadRequestError, 400, "messages", "empty messages")
    expect_error(lambda: client.completions.create(model="no-such-model", prompt="x"),
                 openai.NotFoundError, 404, "model", "unknown model")
    expect_error(lambda: client.completions.create(model=model, prompt=[600] * (ctx + 1)),
                 openai.BadRequestError, 400, "prompt", "prompt longer than the context")
    bad = openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0, timeout=30)
    expect_error(lambda: bad.models.list(), openai.AuthenticationError, 401, None, "wrong API key")

    # cancel on disconnect: close a stream early, the engine request ends
    before = metric(base, "duet_gateway_disconnect_cancels_total")
    s = client.completions.create(model=model, prompt=[600], max_tokens=min(2000, ctx - 8),
                                  stream=True, extra_body=NO_EOS)
    next(iter(s))
    next(iter(s))
    s.close()
    deadline = time.time() + 10
    while time.time() < deadline:
        if metric(base, "duet_gateway_disconnect_cancels_total") == before + 1 and \
                metric(base, "vllm:num_requests_running") == 0:
            break
        time.sleep(0.05)
    check(metric(base, "duet_gateway_disconnect_cancels_total") == before + 1,
          "disconnect canceled the request")
    check(metric(base, "vllm:num_requests_running") == 0 and
          metric(base, "vllm:kv_cache_usage_perc") == 0, "KV freed after the disconnect")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True, help="fake_server binary")
    ap.add_argument("--tokenizer", help="tokenizer.json for the fake engine")
    ap.add_argument("--model", help="serve this model directory on the real engine")
    ap.add_argument("--reference", help="the model's reference.json (with --model)")
    args = ap.parse_args()
    if not args.tokenizer and not args.model:
        ap.error("--tokenizer or --model is required")
    key = "sk-duet-test"
    cmd = [args.server, "--api-key", key]
    if args.model:
        cmd += ["--model", args.model]
        tok = args.model + "/tokenizer.json"
    else:
        cmd += ["--tokenizer", args.tokenizer, "--token-delay-ms", "2"]
        tok = args.tokenizer
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith("LISTENING "):
            print(f"server did not start: {line!r}")
            return 1
        port = int(line.split()[1])
        base = f"http://127.0.0.1:{port}"
        client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=30)
        run(client, base, Vocab(tok), not args.model, args.reference)
    finally:
        proc.terminate()
        try:
            rc = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "killed"
        check(rc == 0, f"server exited cleanly ({rc})")
    print(f"{len(FAILS)} failed" if FAILS else "all passed")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
