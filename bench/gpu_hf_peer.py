#!/usr/bin/env python3
"""HF transformers peer figure for bench/gpu-check.sh: greedy decode tokens/s
of the same mkmodel 'mixtral-8l' checkpoint bench_gpu measures, in bf16 on
the GPU, at batch 1, 64 and 256 (16-token random prompts, then --steps
decode steps with the KV cache, timed with torch.cuda.synchronize around
each stretch; median of 3 stretches, as bench_gpu does).

usage: gpu_hf_peer.py MODEL_DIR [--steps N] [--table FILE]
"""
import argparse
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--table", default=None)
    ap.add_argument("--batches", default="1,64,256")
    a = ap.parse_args()
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except Exception as e:  # noqa: BLE001
        print(f"HF peer skipped: {e}")
        return 0
    if not torch.cuda.is_available():
        print("HF peer skipped: no CUDA device")
        return 0
    t0 = time.time()
    model = None
    for kw in ({"dtype": torch.bfloat16, "device_map": "cuda"},
               {"torch_dtype": torch.bfloat16, "device_map": "cuda"},
               {"torch_dtype": torch.bfloat16}):
        try:
            model = AutoModelForCausalLM.from_pretrained(a.model_dir, **kw)
            break
        except (TypeError, ValueError, ImportError) as e:  # older/newer keyword names
            print(f"HF: from_pretrained({list(kw)}) failed: {e}")
    if model is None:
        print("HF peer skipped: cannot load the checkpoint")
        return 1
    model = model.cuda()
    model.eval()
    print(f"HF: loaded in {time.time() - t0:.1f} s on {torch.cuda.get_device_name(0)}")
    vocab = model.config.vocab_size
    rows = []
    g = torch.Generator(device="cpu").manual_seed(1)
    for b in [int(x) for x in a.batches.split(",")]:
        ids = torch.randint(0, vocab - 1, (b, 16), generator=g).cuda()
        with torch.inference_mode():
            out = model(input_ids=ids, use_cache=True)
            past = out.past_key_values
            tok = out.logits[:, -1, :].argmax(-1, keepdim=True)
            rates = []
            n = max(1, a.steps // 3)
            for _ in range(3):
                torch.cuda.synchronize()
                s0 = time.time()
                for _ in range(n):
                    out = model(input_ids=tok, past_key_values=past, use_cache=True)
                    past = out.past_key_values
                    tok = out.logits[:, -1, :].argmax(-1, keepdim=True)
                torch.cuda.synchronize()
                rates.append(b * n / (time.time() - s0))
        r = statistics.median(rates)
        print(f"  HF decode batch {b:3d}: {r:.1f} tok/s")
        rows.append(f"HF transformers decode b{b:<4d} {r:8.1f} tok/s  (peer, same checkpoint)")
        del past, out
        torch.cuda.empty_cache()
    if a.table:
        with open(a.table, "a") as f:
            for r in rows:
                f.write(r + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
