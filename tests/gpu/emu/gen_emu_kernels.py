#!/usr/bin/env python3
"""CUDA emulator (tests only): turn gpu/kernels.cu into host C++ by
rewriting every `kernel<<<grid, block, smem, stream>>>(args);` into
`emu_launch(grid, block, [=] { kernel(args); });` (the launch's error is
then what cudaGetLastError reports). usage: gen_emu_kernels.py IN OUT"""
import re
import sys

src = open(sys.argv[1]).read()
out = []
i = 0
pat = re.compile(r"([A-Za-z_][A-Za-z_0-9]*(?:<[^<>;]*>)?)\s*<<<(.*?)>>>\s*\(", re.S)
while True:
    m = pat.search(src, i)
    if not m:
        out.append(src[i:])
        break
    out.append(src[i:m.start()])
    name, cfg = m.group(1), m.group(2)
    parts = [p.strip() for p in cfg.split(",")]
    # the config holds no nested commas in kernels.cu: grid, block, smem, stream
    if len(parts) != 4:
        sys.exit(f"gen_emu_kernels: cannot parse launch config '{cfg}'")
    depth, j = 1, m.end()
    while depth:
        c = src[j]
        depth += c == "("
        depth -= c == ")"
        j += 1
    args = src[m.end():j - 1]
    out.append(f"emu_launch_status = emu_launch(dim3({parts[0]}), dim3({parts[1]}), [=] {{ {name}({args}); }})")
    i = j
text = "".join(out)
text = text.replace("cudaGetLastError()", "emu_take_status()")
hdr = ('#include "emu_device.h"\n'
       "static cudaError_t emu_launch_status = cudaSuccess;\n"
       "static cudaError_t emu_take_status() { cudaError_t e = emu_launch_status; "
       "emu_launch_status = cudaSuccess; return e; }\n")
open(sys.argv[2], "w").write(hdr + text)
