#!/usr/bin/env python3
"""kill -9 of shard node processes while 32 streaming requests run through the gateway.

The deployment (models/pycoder-moe): node ctl (gateway, scheduler, router) is
`duet serve --topology FILE --node ctl`; nodes a0, a1 (attention shards) and e0..e2
(expert shards, every expert on two of them) are `duet node FILE --node N` processes,
over ZeroMQ ipc and the shm data plane. First 32 greedy streaming requests run without
faults (the reference); then the same 32 again while e1 (an expert shard with replicas)
is killed -9 and started again 400 ms later, and then a0 (an attention shard) likewise.
Every stream must end with [DONE] and a finish_reason, with exactly the reference's
text; after the streams /metrics must show no KV block in use. Prints the longest gap
in the token streams (with and without faults).

usage: serve_kill.py DUET MODELS_DIR
"""
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

duet, models = sys.argv[1], sys.argv[2]
tag = f"fsk-{os.getpid()}"
yaml = f"/tmp/duet-{tag}.yaml"
NODES = ["ctl", "a0", "a1", "e0", "e1", "e2"]
N_REQ, MAX_TOKENS = 32, 96  # long enough that the streams outlast the first kill and its 0.4 s restart
fails = []


def write_topology():
    with open(yaml, "w") as f:
        f.write(f"version: 1\nname: {tag}\nmodel: {models}/pycoder-moe\n"
                "pipeline:\n  micro_batches: 2\n  token_budget: 128\n"
                "kv_cache:\n  blocks: 1024\n  block_size: 16\n"
                "transport:\n  control: ipc\n  data: shm\nnodes:\n")
        for n in NODES:
            f.write(f"  - name: {n}\n    address: ipc:///tmp/duet-{tag}-{n}.sock\n")
        f.write("actors:\n"
                "  - kind: scheduler\n    node: ctl\n  - kind: router\n    node: ctl\n"
                "  - kind: attention\n    node: a0\n  - kind: attention\n    node: a1\n")
        for s in range(3):  # expert e on shard e % 3 and on the next one
            ex = sorted({e for e in range(8) if e % 3 == s or (e % 3 + 1) % 3 == s})
            f.write(f"  - kind: expert\n    node: e{s}\n    experts: {ex}\n")


procs = {}


def start_node(n):
    procs[n] = subprocess.Popen([duet, "node", yaml, "--node", n], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)


def cleanup():
    for p in procs.values():
        if p.poll() is None:
            p.kill()
            p.wait()
    for n in NODES:
        try:
            os.unlink(f"/tmp/duet-{tag}-{n}.sock")
        except OSError:
            pass
    try:
        os.unlink(yaml)
    except OSError:
        pass


def stream(host, port, name, i, out, progress):
    """One streaming completion; out[i] = (text, finish_reason, done, gap_s, error)."""
    prompt = f"def f{i}(x):\n    return x * {i} +"
    body = json.dumps({"model": name, "prompt": prompt, "max_tokens": MAX_TOKENS,
                       "temperature": 0, "stream": True, "ignore_eos": True})
    text, finish, done, gap, last, err = "", None, False, 0.0, time.monotonic(), None
    try:
        c = http.client.HTTPConnection(host, port, timeout=60)
        c.request("POST", "/v1/completions", body=body,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            now = time.monotonic()
            gap, last = max(gap, now - last), now
            d = line[6:]
            if d == "[DONE]":
                done = True
                break
            ev = json.loads(d)
            if "error" in ev:
                raise RuntimeError(f"error event {ev['error']}")
            ch = ev["choices"][0]
            text += ch.get("text") or ""
            finish = ch.get("finish_reason") or finish
            progress[0] += 1
        c.close()
    except Exception as e:  # noqa: BLE001 - reported as a failure
        err = repr(e)
    out[i] = (text, finish, done, gap, err)


def run_all(host, port, name, killer=None):
    out, progress, th = [None] * N_REQ, [0], []
    for i in range(N_REQ):
        t = threading.Thread(target=stream, args=(host, port, name, i, out, progress))
        t.start()
        th.append(t)
    if killer:
        killer(progress)
    for t in th:
        t.join(timeout=120)
    return out


def kill_restart(node, wait_progress, progress, log):
    deadline = time.monotonic() + 60
    while progress[0] < wait_progress and time.monotonic() < deadline:
        time.sleep(0.005)
    if progress[0] >= N_REQ * MAX_TOKENS - N_REQ:
        fails.append(f"the streams were over before the kill of {node}")
    procs[node].send_signal(signal.SIGKILL)
    procs[node].wait()
    log.append(f"kill -9 {node} after {progress[0]} streamed tokens")
    time.sleep(0.4)
    start_node(node)


def metric(host, port, name):
    c = http.client.HTTPConnection(host, port, timeout=10)
    c.request("GET", "/metrics")
    body = c.getresponse().read().decode()
    c.close()
    m = re.search(r"^" + name + r"(?:\{[^}]*\})?\s+([0-9.e+]+)", body, re.M)
    return float(m.group(1)) if m else None


write_topology()
serve = None
rc = 1
try:
    for n in NODES[1:]:
        start_node(n)
    serve_log = open(os.environ.get("SERVE_KILL_LOG", os.devnull), "w")
    serve = subprocess.Popen([duet, "serve", "--topology", yaml, "--node", "ctl", "--port", "0"],
                             stdout=subprocess.PIPE, stderr=serve_log, text=True)
    line = serve.stdout.readline()
    mm = re.match(r"duet: serving (\S+) on http://([0-9.]+):([0-9]+)", line)
    if not mm:
        serve.kill()
        print(f"FAIL: duet serve said {line!r} (SERVE_KILL_LOG=FILE keeps its stderr)")
        sys.exit(1)
    name, host, port = mm.group(1), mm.group(2), int(mm.group(3))

    ref = run_all(host, port, name)
    for i, (text, finish, done, gap, err) in enumerate(ref):
        if err or not done or not finish:
            fails.append(f"fault-free request {i}: done {done}, finish {finish}, error {err}")
    ref_gap = max(r[3] for r in ref)

    log = []
    total = N_REQ * MAX_TOKENS

    def killer(progress):
        kill_restart("e1", total // 8, progress, log)
        kill_restart("a0", total // 2, progress, log)

    got = run_all(host, port, name, killer)
    for i, (r, g) in enumerate(zip(ref, got)):
        if g is None:
            fails.append(f"request {i}: no answer (hung)")
            continue
        text, finish, done, gap, err = g
        if err or not done or not finish:
            fails.append(f"request {i}: done {done}, finish {finish}, error {err}")
        elif text != r[0]:
            fails.append(f"request {i}: text {text!r} != fault-free {r[0]!r}")
    gap = max((g[3] for g in got if g), default=0)
    time.sleep(0.5)
    kv = metric(host, port, "duet_kv_blocks_used")
    if kv is None:
        print("note: /metrics has no duet_kv_blocks_used; KV not checked")
    elif kv != 0:
        fails.append(f"after the streams /metrics shows {kv} KV blocks in use")
    print("; ".join(log))
    print(f"{N_REQ} streams x {MAX_TOKENS} tokens: completed "
          f"{sum(1 for g in got if g and g[2] and not g[4])}, longest token gap "
          f"{gap * 1000:.0f} ms (fault-free {ref_gap * 1000:.0f} ms), KV blocks after: {kv}")
    serve.send_signal(signal.SIGTERM)
    try:
        src = serve.wait(timeout=30)
    except subprocess.TimeoutExpired:
        serve.kill()
        src = "hung on SIGTERM"
    if src != 0:
        fails.append(f"duet serve exit status {src}")
    rc = 0 if not fails else 1
finally:
    if serve and serve.poll() is None:
        serve.kill()
    cleanup()
for f in fails[:20]:
    print("FAIL:", f)
print("ok" if rc == 0 else f"FAILED ({len(fails)} problems)")
sys.exit(rc)
