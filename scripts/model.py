#!/usr/bin/env python3
"""Model files for the bench's `model` group: the safetensors layout (8-byte little-endian
header length, a JSON header naming each tensor's dtype, shape and byte range, then the
tensors), and a loader that mmaps one and reads tensors as a model loader does.

  model.py make PATH --size BYTES [--seed N]
      a transformer-shaped file of about BYTES: an embedding, then layers of attention
      (q, k, v, o: d x d) and MLP (gate, up, down: d x 11d/4) matrices and two norms, F16.
  model.py load PATH [--fraction F --seed N]
      mmaps PATH and reads every byte of the tensors: all of them in file order, or (with
      --fraction) that fraction of them picked at random (holding that fraction of the
      bytes, within 1%), in random order. Prints one JSON
      line: tensors, bytes read, seconds, and a CRC of what was read (equal CRCs: equal
      bytes, so a mount's load can be checked against the same load of a pulled file).
"""
import argparse
import json
import math
import mmap
import os
import random
import struct
import sys
import time
import zlib


def layout(size):
    """(name, shape) of each tensor of a model of about `size` bytes of F16."""
    # About 16 layers of 12.25 d^2 elements (24.5 d^2 bytes) each, d a multiple of 64.
    d = max(64, int(math.sqrt(size / (16 * 24.5))) // 64 * 64)
    ff = d * 11 // 4
    tensors = [("model.embed_tokens.weight", (8 * d, d))]
    used = 8 * d * d * 2
    per_layer = (4 * d * d + 3 * d * ff + 2 * d) * 2
    layer = 0
    while used + per_layer <= size or layer == 0:
        p = f"model.layers.{layer}."
        tensors += [(p + "input_layernorm.weight", (d,))]
        tensors += [(p + f"self_attn.{x}_proj.weight", (d, d)) for x in "qkvo"]
        tensors += [(p + "post_attention_layernorm.weight", (d,))]
        tensors += [(p + "mlp.gate_proj.weight", (ff, d)), (p + "mlp.up_proj.weight", (ff, d)),
                    (p + "mlp.down_proj.weight", (d, ff))]
        used += per_layer
        layer += 1
    return tensors


def make(path, size, seed):
    header, at = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in layout(size):
        n = math.prod(shape) * 2
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [at, at + n]}
        at += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # tensors 8-byte aligned, as safetensors writes them
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        # Random bytes (incompressible, every tensor different), 1 MiB at a time.
        left = at
        while left:
            n = min(left, 1 << 20)
            f.write(rng.randbytes(n))
            left -= n


def pick(tensors, fraction, rng):
    """`fraction` of the tensors at random, in random order; drawn again (up to 1,000 times)
    until they also hold that fraction of the bytes within 1%, so that one large tensor
    drawn or missed does not make the run a different workload."""
    k = max(1, round(len(tensors) * fraction))
    total = sum(e - b for b, e in tensors)
    for _ in range(1000):
        picked = rng.sample(tensors, k)
        if abs(sum(e - b for b, e in picked) / total - fraction) <= 0.01:
            break
    return picked


def load(path, fraction, seed):
    t0 = time.monotonic()
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    try:
        (n,) = struct.unpack("<Q", mm[:8])
        if n > len(mm) - 8:
            sys.exit(f"model.py: {path}: header length {n} past the end of the file")
        header = json.loads(mm[8:8 + n])
        base = 8 + n
        tensors = sorted((v["data_offsets"] for k, v in header.items() if k != "__metadata__"))
        if fraction is not None:
            tensors = pick(tensors, fraction, random.Random(seed))
        crc, read = 0, 0
        view = memoryview(mm)
        for b, e in tensors:
            crc = zlib.crc32(view[base + b:base + e], crc)
            read += e - b
        view.release()
    finally:
        mm.close()
    print(json.dumps({"tensors": len(tensors), "bytes": read, "file": os.path.getsize(path),
                      "seconds": round(time.monotonic() - t0, 6), "crc": crc}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("path")
    m.add_argument("--size", type=int, required=True)
    m.add_argument("--seed", type=int, default=1)
    lo = sub.add_parser("load")
    lo.add_argument("path")
    lo.add_argument("--fraction", type=float)
    lo.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.cmd == "make":
        make(a.path, a.size, a.seed)
    else:
        load(a.path, a.fraction, a.seed)


if __name__ == "__main__":
    main()
