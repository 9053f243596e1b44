#!/usr/bin/env python3
"""End-to-end test of `duet serve` on the bundled demo model, as a user runs it.

Starts `duet serve --port 0`, waits for its "serving ... on http://H:P" line, then
checks over HTTP (stdlib only) against HF transformers' greedy references in
models/pycoder-moe/reference.json: greedy completions of every reference prompt equal
HF's text, streaming yields the same text (through urllib, curl and the official
`openai` client), /health, /v1/models and a 400 naming the bad field; a prompt longer
than the context is a 400 naming `prompt`; stop strings cut the text where HF's text
has them; n > 1 gives n choices; usage counts the prompt and generated tokens; chat
completions stream and not; while a request runs the KV usage on /metrics is what the
cache holds (more than 0, less than the reservation); a streamed request whose client
disconnects is canceled (its KV blocks freed, visible in /metrics); a second server
with --api-key and --timeout answers 401 without the key and hangs up on a stalled
request; finally SIGTERM must shut it down with exit status 0. (The openai checks are
skipped, said so, when the package is missing.)

usage: serve_test.py DUET MODELS_DIR [EXTRA DUET SERVE ARGS...]
(extra args, e.g. --topology FILE or --engine local, go to `duet serve`)
"""
import json
import http.client
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

try:
    import openai
except ImportError:
    openai = None

duet, models, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
ref = json.load(open(f"{models}/pycoder-moe/reference.json"))
fails = []


def start(args):
    p = subprocess.Popen([duet, "serve", "--model", f"{models}/pycoder-moe", "--port", "0"] + args,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    mm = re.match(r"duet: serving (\S+) on (http://[0-9.]+:[0-9]+)", line)
    if not mm:
        p.kill()
        print(f"FAIL: unexpected first line {line!r}; stderr: {p.stderr.read()[-2000:]}")
        sys.exit(1)
    return p, mm.group(1), mm.group(2)


proc, name, base = start(extra)


def post(path, body, timeout=120, headers=None, url=None):
    req = urllib.request.Request((url or base) + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def error_of(body):
    try:
        e = json.loads(body)["error"]
        return e if isinstance(e.get("message"), str) and e["message"] else None
    except (ValueError, KeyError, TypeError):
        return None


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        return "hung"


try:
    with urllib.request.urlopen(base + "/health", timeout=10) as r:
        if r.status != 200:
            fails.append(f"/health returned {r.status}")
    with urllib.request.urlopen(base + "/v1/models", timeout=10) as r:
        ids = [d["id"] for d in json.load(r)["data"]]
        if name not in ids:
            fails.append(f"/v1/models lists {ids}, not {name}")

    for g in ref["greedy"]:
        n = len(g["greedy"])
        st, body = post("/v1/completions", {"model": name, "prompt": g["prompt"],
                                             "max_tokens": n, "temperature": 0})
        if st != 200:
            fails.append(f"completion of {g['prompt']!r}: HTTP {st}: {body[:300]}")
            continue
        d = json.loads(body)
        text = d["choices"][0]["text"]
        if text != g["text"]:
            fails.append(f"prompt {g['prompt']!r}: text {text!r} != HF's {g['text']!r}")
        u = d["usage"]
        if u["prompt_tokens"] != len(g["prompt_ids"]) or u["completion_tokens"] != n:
            fails.append(f"prompt {g['prompt']!r}: usage {u}, want {len(g['prompt_ids'])} + {n}")

    g = ref["greedy"][0]
    st, body = post("/v1/completions", {"model": name, "prompt": g["prompt"], "stream": True,
                                        "max_tokens": len(g["greedy"]), "temperature": 0})
    chunks = [l[6:] for l in body.split("\n") if l.startswith("data: ")]
    if st != 200 or not chunks or chunks[-1] != "[DONE]":
        fails.append(f"stream: HTTP {st}, last event {chunks[-1:]!r}")
    else:
        streamed = "".join(json.loads(c)["choices"][0]["text"] for c in chunks[:-1])
        if streamed != g["text"]:
            fails.append(f"stream text {streamed!r} != HF's {g['text']!r}")

    st, body = post("/v1/completions", {"model": name, "prompt": "x", "max_tokens": -3})
    if st != 400 or json.loads(body)["error"].get("param") != "max_tokens":
        fails.append(f"max_tokens -3: HTTP {st} {body[:200]}")

    # curl, streamed: the same text
    if shutil.which("curl"):
        body = json.dumps({"model": name, "prompt": g["prompt"], "stream": True,
                           "max_tokens": len(g["greedy"]), "temperature": 0})
        out = subprocess.run(["curl", "-sS", "-N", "--max-time", "120", base + "/v1/completions",
                              "-H", "Content-Type: application/json", "-d", body],
                             capture_output=True, text=True)
        ev = [l[6:] for l in out.stdout.split("\n") if l.startswith("data: ")]
        if out.returncode != 0 or not ev or ev[-1] != "[DONE]":
            fails.append(f"curl stream: rc {out.returncode}, {out.stderr[:200]} {ev[-1:]!r}")
        else:
            txt = "".join(json.loads(c)["choices"][0]["text"] for c in ev[:-1])
            if txt != g["text"]:
                fails.append(f"curl stream text {txt!r} != HF's {g['text']!r}")
    else:
        fails.append("curl is not installed (scripts/setup installs it)")

    # a prompt longer than the context: 400 naming the prompt
    with urllib.request.urlopen(base + "/v1/models", timeout=10) as r:
        ctx = json.load(r)["data"][0]["max_model_len"]
    st, body = post("/v1/completions", {"model": name, "prompt": [5] * (ctx + 1), "max_tokens": 1})
    e = error_of(body)
    if st != 400 or not e or e.get("param") != "prompt" or str(ctx) not in e["message"]:
        fails.append(f"prompt of {ctx + 1} tokens: HTTP {st} {body[:300]}")
    st, body = post("/v1/completions", {"model": name, "prompt": [5] * (ctx - 2), "max_tokens": 5})
    e = error_of(body)
    if st != 400 or not e or e.get("param") != "max_tokens":
        fails.append(f"prompt {ctx - 2} + max_tokens 5 > {ctx}: HTTP {st} {body[:300]}")

    # stop strings cut HF's greedy text before the first occurrence; usage
    # still counts the tokens generated up to it
    g2 = next((x for x in ref["greedy"] if len(x["text"]) > 20), g)
    stop_s = g2["text"][10:13]
    want = g2["text"][:g2["text"].index(stop_s)]
    st, body = post("/v1/completions", {"model": name, "prompt": g2["prompt"], "temperature": 0,
                                        "max_tokens": len(g2["greedy"]), "stop": [stop_s, "@@@"]})
    if st != 200:
        fails.append(f"stop {stop_s!r}: HTTP {st} {body[:200]}")
    else:
        d = json.loads(body)
        c = d["choices"][0]
        if c["text"] != want or c["finish_reason"] != "stop":
            fails.append(f"stop {stop_s!r}: text {c['text']!r} ({c['finish_reason']}), want {want!r}")
        u = d["usage"]
        if not (1 <= u["completion_tokens"] < len(g2["greedy"])) or \
                u["prompt_tokens"] != len(g2["prompt_ids"]) or \
                u["total_tokens"] != u["prompt_tokens"] + u["completion_tokens"]:
            fails.append(f"stop {stop_s!r}: usage {u}")

    # n > 1: n choices, each with max_tokens tokens, counted in usage
    st, body = post("/v1/completions", {"model": name, "prompt": g["prompt"], "n": 3,
                                        "max_tokens": 8, "temperature": 0.9, "seed": 5,
                                        "ignore_eos": True})
    if st != 200:
        fails.append(f"n=3: HTTP {st} {body[:200]}")
    else:
        d = json.loads(body)
        idx = sorted(c["index"] for c in d["choices"])
        if idx != [0, 1, 2] or d["usage"]["completion_tokens"] != 24 or \
                d["usage"]["prompt_tokens"] != len(g["prompt_ids"]):
            fails.append(f"n=3: indices {idx}, usage {d['usage']}")

    if openai is None:
        print("serve_test: the 'openai' package is not installed; its checks are skipped")
    else:
        cl = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
        r = cl.completions.create(model=name, prompt=g["prompt"], max_tokens=len(g["greedy"]),
                                  temperature=0)
        if r.choices[0].text != g["text"] or r.choices[0].finish_reason != "length" or \
                r.usage.completion_tokens != len(g["greedy"]):
            fails.append(f"openai completion: {r.choices[0].text!r} {r.usage}")
        parts, usage = [], None
        for ch in cl.completions.create(model=name, prompt=g["prompt"], temperature=0,
                                        max_tokens=len(g["greedy"]), stream=True,
                                        stream_options={"include_usage": True}):
            if ch.choices:
                parts.append(ch.choices[0].text)
            if ch.usage:
                usage = ch.usage
        if "".join(parts) != g["text"] or not usage or \
                usage.prompt_tokens != len(g["prompt_ids"]) or \
                usage.completion_tokens != len(g["greedy"]):
            fails.append(f"openai stream: {''.join(parts)!r}, usage {usage}")
        msgs = [{"role": "system", "content": "You write Python."},
                {"role": "user", "content": "A function that adds two numbers."}]
        r = cl.chat.completions.create(model=name, messages=msgs, max_tokens=12, temperature=0)
        c0 = r.choices[0]
        if c0.message.role != "assistant" or c0.finish_reason not in ("stop", "length") or \
                r.usage.completion_tokens < 1 or r.usage.completion_tokens > 12:
            fails.append(f"openai chat: {c0} {r.usage}")
        roles, text = [], []
        for ch in cl.chat.completions.create(model=name, messages=msgs, max_tokens=12,
                                             temperature=0, stream=True):
            for c in ch.choices:
                if c.delta.role:
                    roles.append(c.delta.role)
                if c.delta.content:
                    text.append(c.delta.content)
        if roles != ["assistant"] or "".join(text) != (c0.message.content or ""):
            fails.append(f"openai chat stream: roles {roles}, {''.join(text)!r} != "
                         f"{c0.message.content!r}")
        try:
            cl.completions.create(model="no-such-model", prompt="x", max_tokens=1)
            fails.append("openai: an unknown model was accepted")
        except openai.NotFoundError as ex:
            if "no-such-model" not in str(ex):
                fails.append(f"openai unknown model: {ex}")

    # cancel on disconnect: a long streamed request, dropped after its first
    # chunk, must leave nothing running and no KV in use
    def metric(name):
        with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
            for l in r.read().decode().split("\n"):
                if l.startswith(name + " ") or l.startswith(name + "{"):
                    return float(l.split()[-1])
        return None

    host, port = base[len("http://"):].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/v1/completions",
                 body=json.dumps({"model": name, "prompt": g["prompt"], "stream": True,
                                  "max_tokens": 400, "temperature": 0,
                                  "ignore_eos": True}),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    first = resp.read(6)
    if resp.status != 200 or not first.startswith(b"data: "):
        fails.append(f"cancel: HTTP {resp.status}, first line {first[:200]!r}")
    # while it runs: the KV in use is the cache's, not the reservation of
    # prompt + 400 tokens
    kv_now, used, reserved = metric("vllm:kv_cache_usage_perc"), metric("duet_kv_blocks_used"), \
        metric("duet_kv_blocks_reserved")
    if not kv_now or kv_now <= 0:
        fails.append(f"KV usage while a request runs: {kv_now}")
    if reserved is not None and (used is None or used >= reserved):
        fails.append(f"KV blocks in use {used} not below the reservation {reserved}")
    conn.sock.close()
    conn.close()
    running = kv = None
    for _ in range(200):
        time.sleep(0.05)
        running = metric("vllm:num_requests_running")
        kv = metric("vllm:kv_cache_usage_perc")
        if running == 0 and kv == 0:
            break
    if running != 0 or kv != 0:
        fails.append(f"cancel on disconnect: running {running}, KV usage {kv} (want 0, 0)")
    # the pipeline's per-actor counters, from the shards themselves
    if metric("duet_pipe_steps_total") is not None:
        with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        busy = {mm.group(1): float(mm.group(2)) for mm in re.finditer(
            r'^duet_actor_busy_seconds_total\{[^}]*actor="([^"]+)"\} (\S+)$', text, re.M)}
        up = re.findall(r'^duet_actor_up\{[^}]*actor="([^"]+)"\} 1$', text, re.M)
        if not any(a.startswith("attn/") for a in busy) or \
                not any(a.startswith("expert/") for a in busy) or \
                any(v <= 0 for v in busy.values()) or sorted(up) != sorted(busy):
            fails.append(f"per-actor metrics: busy {busy}, up {up}")
        if text.count("# TYPE duet_actor_busy_seconds_total ") != 1:
            fails.append("duet_actor_busy_seconds_total has more than one TYPE line")
    canceled = metric("duet_pipe_canceled_total")  # the pipeline engine's own count
    if canceled is not None and canceled < 1:
        fails.append(f"cancel on disconnect: the pipeline canceled {canceled} requests")
finally:
    rc = stop(proc)
    if rc != 0:
        fails.append(f"duet serve exited with {rc} after SIGTERM; stderr: {proc.stderr.read()[-1000:]}")

# --api-key and --timeout on a second server
proc2, name2, base2 = start(extra + ["--api-key", "sekrit", "--timeout", "2"])
try:
    body = {"model": name2, "prompt": "def f(", "max_tokens": 2}
    for hdr, want in (({}, 401), ({"Authorization": "Bearer wrong"}, 401),
                      ({"Authorization": "Bearer sekrit"}, 200)):
        st, b = post("/v1/completions", body, headers=hdr, url=base2)
        if st != want or (want == 401 and not error_of(b)):
            fails.append(f"--api-key, headers {hdr}: HTTP {st} {b[:200]}, want {want}")
    with urllib.request.urlopen(base2 + "/health", timeout=10) as r:  # no key needed
        if r.status != 200:
            fails.append(f"--api-key: /health {r.status}")
    if openai is not None:
        try:
            openai.OpenAI(base_url=base2 + "/v1", api_key="wrong", max_retries=0).models.list()
            fails.append("openai with a wrong key was let in")
        except openai.AuthenticationError:
            pass
        ids = [m.id for m in openai.OpenAI(base_url=base2 + "/v1", api_key="sekrit").models.list()]
        if ids != [name2]:
            fails.append(f"openai models with the key: {ids}")
    # a request that stalls half way is hung up on after --timeout
    h, p = base2[len("http://"):].split(":")
    s = socket.create_connection((h, int(p)), timeout=30)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sekrit\r\n"
              b"Content-Length: 50\r\n\r\n{")
    t0 = time.time()
    try:
        got = s.recv(1)
    except OSError:
        got = b""
    if got or time.time() - t0 > 15:
        fails.append(f"--timeout 2: stalled request got {got!r} after {time.time() - t0:.1f} s")
    s.close()
finally:
    rc = stop(proc2)
    if rc != 0:
        fails.append(f"second duet serve exited with {rc}")

for f in fails:
    print("FAIL:", f)
print(f"serve: {len(fails)} failure(s)")
sys.exit(1 if fails else 0)
