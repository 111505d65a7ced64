#!/usr/bin/env python3
"""The exact val loss of a model, computed by nanoGPT's own `model.py` in PyTorch: the same
windows as mlx-gpt's `eval` (every non-overlapping block_size window of val.bin, the last
one shorter, so every token after the first is predicted once), an independent check of
that evaluator. Optionally converts a nanoGPT checkpoint to Hugging Face layout first, so
`mlx-gpt eval --init_from DIR` can evaluate it too.

    python3 scripts/nanogpt_exact_loss.py --nanogpt CHECKOUT --data datasets/shakespeare_char \
        (--ckpt out/ckpt.pt [--to-hf DIR] | --hf DIR)

Prints `exact val loss X over N tokens`.
"""
import argparse
import os
import sys

import numpy as np
import torch

ap = argparse.ArgumentParser()
ap.add_argument("--nanogpt", required=True, help="a checkout of github.com/karpathy/nanoGPT")
ap.add_argument("--data", required=True, help="a prepared folder holding val.bin")
ap.add_argument("--ckpt", help="a nanoGPT ckpt.pt")
ap.add_argument("--to-hf", help="also write the checkpoint's weights here, Hugging Face layout")
ap.add_argument("--hf", help="a Hugging Face layout folder (an mlx-gpt checkpoint)")
ap.add_argument("--batch-size", type=int, default=12)
a = ap.parse_args()
if (a.ckpt is None) == (a.hf is None):
    sys.exit("give one of --ckpt and --hf")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.abspath(a.nanogpt))
from model import GPT, GPTConfig  # noqa: E402  (nanoGPT's model.py)
from nanogpt_hf import load_hf, save_hf  # noqa: E402

if a.ckpt:
    ckpt = torch.load(a.ckpt, map_location="cpu")
    cfg = GPTConfig(**ckpt["model_args"])
    model = GPT(cfg)
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    if a.to_hf:
        save_hf(model.state_dict(), cfg, a.to_hf)
else:
    model = load_hf(a.hf, GPT, GPTConfig)
model.eval()
T = model.config.block_size
val = np.fromfile(os.path.join(a.data, "val.bin"), dtype=np.uint16).astype(np.int64)
predicted = len(val) - 1
starts = list(range(0, predicted, T))
nats = 0.0
with torch.no_grad():
    for i in range(0, len(starts), a.batch_size):
        group = starts[i:i + a.batch_size]
        # Windows of one length per forward: the short last one goes alone.
        for length in sorted({min(T, predicted - s) for s in group}):
            rows = [s for s in group if min(T, predicted - s) == length]
            x = torch.from_numpy(np.stack([val[s:s + length] for s in rows]))
            y = torch.from_numpy(np.stack([val[s + 1:s + 1 + length] for s in rows]))
            _, loss = model(x, y)
            nats += loss.item() * x.numel()
print(f"exact val loss {nats / predicted:.4f} over {predicted} tokens")
