#!/usr/bin/env python3
"""Record a short training run of nanoGPT's own model, step for step, for
tests/nanogpt_parity.rs to replay in mlx-gpt.

    python3 scripts/make_nanogpt_parity_fixture.py --nanogpt PATH/TO/nanoGPT \
        --data datasets/shakespeare_char --out tests/fixtures/nanogpt_parity

It imports `model.py` from a nanoGPT checkout given on the command line (never copied
into this repository) and runs the loop of nanoGPT's `train.py` as the README's CPU
command does (float32, no compile, no GradScaler in effect, dropout 0):

  - `GPT(GPTConfig(...))` under `torch.manual_seed(seed)`: nanoGPT's initialisation;
  - `model.configure_optimizers(weight_decay, lr, (beta1, beta2), 'cpu')`: its AdamW with
    decay on tensors of two or more dimensions only;
  - `get_lr` as train.py computes it (linear warmup to (it+1)/(warmup+1), cosine down to
    min_lr at lr_decay_iters), set on every parameter group before the step;
  - `gradient_accumulation_steps` micro-batches, each loss divided by their number before
    `backward()`; `clip_grad_norm_(model.parameters(), grad_clip)`; `optimizer.step()`;
    `zero_grad(set_to_none=True)`;
  - batches as train.py's `get_batch`: `torch.randint(len(data) - block_size, (B,))`.

It writes the initial weights in Hugging Face GPT-2 layout (`model.safetensors` with
Conv1D-shaped projections; without `--bias`, zero biases and `"bias": false` in
`config.json`), and
`run.json`: per step the learning rate, each micro-batch's offsets, the mean loss over the
micro-batches, and the gradient norm before clipping; and the weights after the last step
(`final/`).
"""
import argparse
import hashlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import torch

ap = argparse.ArgumentParser()
ap.add_argument("--nanogpt", required=True, help="a checkout of github.com/karpathy/nanoGPT")
ap.add_argument("--data", required=True, help="a prepared shakespeare_char folder (train.bin)")
ap.add_argument("--out", required=True)
ap.add_argument("--steps", type=int, default=200)
ap.add_argument("--n-layer", type=int, default=2)
ap.add_argument("--n-head", type=int, default=2)
ap.add_argument("--n-embd", type=int, default=64)
ap.add_argument("--block-size", type=int, default=32)
ap.add_argument("--batch-size", type=int, default=8)
ap.add_argument("--accum", type=int, default=2)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--min-lr", type=float, default=1e-4)
ap.add_argument("--warmup", type=int, default=10)
ap.add_argument("--weight-decay", type=float, default=0.1)
ap.add_argument("--beta1", type=float, default=0.9)
ap.add_argument("--beta2", type=float, default=0.99)
ap.add_argument("--grad-clip", type=float, default=1.0)
ap.add_argument("--seed", type=int, default=1337)
ap.add_argument("--bias", action="store_true", help="biases in Linear and LayerNorm layers (nanoGPT's default: none)")
a = ap.parse_args()

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.abspath(a.nanogpt))
from model import GPT, GPTConfig  # noqa: E402  (nanoGPT's model.py)
from nanogpt_hf import save_hf  # noqa: E402

torch.set_num_threads(max(1, os.cpu_count() or 1))
torch.manual_seed(a.seed)
train_path = os.path.join(a.data, "train.bin")
data = np.memmap(train_path, dtype=np.uint16, mode="r")
V = 65
cfg = GPTConfig(block_size=a.block_size, vocab_size=V, n_layer=a.n_layer, n_head=a.n_head,
                n_embd=a.n_embd, dropout=0.0, bias=a.bias)
model = GPT(cfg)
opt = model.configure_optimizers(a.weight_decay, a.lr, (a.beta1, a.beta2), "cpu")


def get_lr(it):
    # train.py's schedule, for lr_decay_iters = steps.
    if it < a.warmup:
        return a.lr * (it + 1) / (a.warmup + 1)
    if it > a.steps:
        return a.min_lr
    ratio = (it - a.warmup) / (a.steps - a.warmup)
    return a.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (a.lr - a.min_lr)


os.makedirs(a.out, exist_ok=True)
save_hf(model.state_dict(), cfg, a.out)

steps = []
T, B = a.block_size, a.batch_size
model.train()
for it in range(a.steps):
    lr = get_lr(it)
    for g in opt.param_groups:
        g["lr"] = lr
    offsets, loss_sum = [], 0.0
    for _ in range(a.accum):
        ix = torch.randint(len(data) - T, (B,))
        offsets.append([int(i) for i in ix])
        x = torch.stack([torch.from_numpy(data[i:i + T].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + T].astype(np.int64)) for i in ix])
        _, loss = model(x, y)
        loss = loss / a.accum
        loss_sum += loss.item()
        loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip) if a.grad_clip != 0.0 else None
    opt.step()
    opt.zero_grad(set_to_none=True)
    steps.append({"iter": it, "lr": lr, "offsets": offsets, "loss": loss_sum,
                  "grad_norm": float(norm) if norm is not None else None})
    if it % 20 == 0:
        print(f"iter {it}: loss {loss_sum:.4f}, grad norm {float(norm):.4f}, lr {lr:.2e}")

# The weights after the last step: small differences in the update (weight decay on a
# tensor that should have none, say) show there even when the loss cannot see them.
save_hf(model.state_dict(), cfg, os.path.join(a.out, "final"))

try:
    commit = subprocess.run(["git", "-C", a.nanogpt, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
except OSError:
    commit = ""
with open(train_path, "rb") as f:
    sha = hashlib.sha256(f.read()).hexdigest()
run = {
    "made_by": "scripts/make_nanogpt_parity_fixture.py",
    "nanogpt_commit": commit or None,
    "torch": torch.__version__,
    "train_bin_sha256": sha,
    "config": {"n_layer": a.n_layer, "n_head": a.n_head, "n_embd": a.n_embd, "block_size": T,
               "batch_size": B, "gradient_accumulation_steps": a.accum, "learning_rate": a.lr,
               "min_lr": a.min_lr, "warmup_iters": a.warmup, "lr_decay_iters": a.steps,
               "max_iters": a.steps, "weight_decay": a.weight_decay, "beta1": a.beta1,
               "beta2": a.beta2, "grad_clip": a.grad_clip, "seed": a.seed, "dropout": 0.0,
               "bias": a.bias},
    "steps": steps,
}
with open(os.path.join(a.out, "run.json"), "w") as f:
    json.dump(run, f, separators=(",", ":"))
print(f"wrote {a.out}: {len(steps)} steps, final loss {steps[-1]['loss']:.4f}")
