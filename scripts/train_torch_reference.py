#!/usr/bin/env python3
"""Train the same baby GPT as `mlx-gpt train baby_shakespeare_char` in PyTorch, from the
same prepared token files, with nanoGPT's recipe (AdamW with grouped decay, warmup +
cosine schedule, clipping, random batches), to compare final losses across seeds.

    python3 scripts/train_torch_reference.py --data datasets/shakespeare_char --seed 1337

Prints the val/train loss at iteration 2000 over 20 batches (the preset's eval_iters) and
over 200 batches. Uses the model of scripts/bench_torch.py.
"""
import argparse
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import GPT  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--data", required=True)
ap.add_argument("--seed", type=int, default=1337)
ap.add_argument("--iters", type=int, default=2000)
ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (the preset's learning_rate)")
ap.add_argument("--min-lr", type=float, default=1e-4)
ap.add_argument("--warmup", type=int, default=100)
a = ap.parse_args()

B, T, L, H, C, V = 12, 64, 4, 4, 128, 65
lr, min_lr, warmup, decay = a.lr, a.min_lr, a.warmup, a.iters
torch.manual_seed(a.seed)
train = np.memmap(os.path.join(a.data, "train.bin"), dtype=np.uint16, mode="r")
val = np.memmap(os.path.join(a.data, "val.bin"), dtype=np.uint16, mode="r")


def batch(data):
    ix = torch.randint(len(data) - T, (B,))
    x = torch.stack([torch.from_numpy(data[i:i + T].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + T].astype(np.int64)) for i in ix])
    return x, y


def get_lr(it):
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay:
        return min_lr
    r = (it - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * r)) * (lr - min_lr)


model = GPT(V, T, L, H, C, 0.0, False)
params = list(model.parameters())
opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                        lr=lr, betas=(0.9, 0.99))


@torch.no_grad()
def estimate(n):
    model.eval()
    out = {}
    for name, data in [("train", train), ("val", val)]:
        out[name] = sum(model(*batch(data)).item() for _ in range(n)) / n
    model.train()
    return out


model.train()
for it in range(a.iters):
    for g in opt.param_groups:
        g["lr"] = get_lr(it)
    loss = model(*batch(train))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
e20, e200 = estimate(20), estimate(200)
print(f"lr {lr:g} min_lr {min_lr:g} warmup {warmup} seed {a.seed}: iter {a.iters}: 20 batches train {e20['train']:.4f} val {e20['val']:.4f}; "
      f"200 batches train {e200['train']:.4f} val {e200['val']:.4f}")
