#!/usr/bin/env python3
"""End-to-end test of `duet serve` on the bundled demo model, as a user runs it.

Starts `duet serve --port 0`, waits for its "serving ... on http://H:P" line, then
checks over HTTP (stdlib only) against HF transformers' greedy references in
models/pycoder-moe/reference.json: greedy completions of every reference prompt equal
HF's text, streaming yields the same text, /health, /v1/models and a 400 naming the
bad field; a streamed request whose client disconnects is canceled (its KV blocks
freed, visible in /metrics); finally SIGTERM must shut it down with exit status 0.

usage: serve_test.py DUET MODELS_DIR [EXTRA DUET SERVE ARGS...]
(extra args, e.g. --topology FILE or --engine local, go to `duet serve`)
"""
import json
import http.client
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

duet, models, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
ref = json.load(open(f"{models}/pycoder-moe/reference.json"))
fails = []

proc = subprocess.Popen([duet, "serve", "--model", f"{models}/pycoder-moe", "--port", "0"] + extra,
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
line = proc.stdout.readline()
m = re.match(r"duet: serving (\S+) on (http://[0-9.]+:[0-9]+)", line)
if not m:
    proc.kill()
    print(f"FAIL: unexpected first line {line!r}; stderr: {proc.stderr.read()[-2000:]}")
    sys.exit(1)
name, base = m.group(1), m.group(2)


def post(path, body, timeout=120):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


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
    canceled = metric("duet_pipe_canceled_total")  # the pipeline engine's own count
    if canceled is not None and canceled < 1:
        fails.append(f"cancel on disconnect: the pipeline canceled {canceled} requests")
finally:
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = "hung"
    if rc != 0:
        fails.append(f"duet serve exited with {rc} after SIGTERM; stderr: {proc.stderr.read()[-1000:]}")

for f in fails:
    print("FAIL:", f)
print(f"serve: {len(fails)} failure(s)")
sys.exit(1 if fails else 0)
