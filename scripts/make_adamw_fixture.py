#!/usr/bin/env python3
"""Reference AdamW updates from torch.optim.AdamW, grouped as nanoGPT's configure_optimizers
does (weight decay on >= 2-D parameters only), for crates/mlx-gpt-train's optimizer test.

Run from the repository root with torch installed:  python3 scripts/make_adamw_fixture.py
Writes tests/fixtures/adamw.json (a few KB), committed so CI needs no PyTorch.
"""
import json
import os

import torch

torch.manual_seed(0)
params = {
    "h.0.attn.c_attn.weight": torch.randn(3, 4),  # 2-D: decayed
    "wte.weight": torch.randn(5, 3),               # 2-D: decayed
    "h.0.attn.c_attn.bias": torch.randn(4),        # 1-D: not decayed
    "ln_f.weight": torch.randn(3),                 # 1-D: not decayed
}
initial = {k: v.clone() for k, v in params.items()}
tensors = {k: torch.nn.Parameter(v) for k, v in params.items()}
decay = [p for p in tensors.values() if p.dim() >= 2]
no_decay = [p for p in tensors.values() if p.dim() < 2]
betas, eps, wd = (0.9, 0.95), 1e-8, 0.1
opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=1e-3, betas=betas, eps=eps)
lrs = [1e-3, 6e-4, 2e-3, 1e-4]
steps = []
for lr in lrs:
    for g in opt.param_groups:
        g["lr"] = lr
    grads = {k: torch.randn_like(v) for k, v in tensors.items()}
    for k, p in tensors.items():
        p.grad = grads[k].clone()
    opt.step()
    steps.append({
        "lr": lr,
        "grads": {k: g.flatten().tolist() for k, g in grads.items()},
        "params": {k: p.detach().flatten().tolist() for k, p in tensors.items()},
    })

out = {
    "torch": torch.__version__,
    "betas": betas, "eps": eps, "weight_decay": wd,
    "shapes": {k: list(v.shape) for k, v in initial.items()},
    "initial": {k: v.flatten().tolist() for k, v in initial.items()},
    "steps": steps,
}
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "adamw.json")
with open(path, "w") as f:
    json.dump(out, f)
print(f"wrote {path}")
