#!/usr/bin/env python3
"""Reference Muon updates in PyTorch, for crates/mlx-gpt-train's Muon test.

Muon (Keller Jordan et al.; the optimizer of modded-nanogpt and nanochat) for a 2-D
weight W with gradient G:
    buf <- momentum * buf + (1 - momentum) * G            (momentum buffer, starts at 0)
    U   <- (1 - momentum) * G + momentum * buf            (Nesterov; plain: U = buf)
    O   <- Newton-Schulz(U): about the orthogonal factor of U's polar decomposition
    W   <- W * (1 - lr * weight_decay) - lr * sqrt(max(1, fan_out / fan_in)) * O
Newton-Schulz: X = U / (||U||_F + 1e-7) (transposed to be wide), then `steps` times
    A = X Xᵀ;  X = a X + (b A + c A A) X      with (a, b, c) = (3.4445, -4.7750, 2.0315).
mlx-gpt stores a dense layer's weight as (fan_in, fan_out) (Hugging Face's Conv1D), so
fan_out / fan_in is shape[1] / shape[0] here. Everything in float32.

Run from the repository root with torch installed:  python3 scripts/make_muon_fixture.py
Writes tests/fixtures/muon.json (about 50 KB), committed so CI needs no PyTorch.
"""
import json
import os

import torch

COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(u, steps):
    a, b, c = COEFFS
    x = u.clone()
    wide = x.shape[0] <= x.shape[1]
    if not wide:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        m = x @ x.T
        x = a * x + (b * m + c * (m @ m)) @ x
    return x if wide else x.T


def muon_step(w, g, buf, lr, momentum, nesterov, weight_decay, steps):
    buf.mul_(momentum).add_(g, alpha=1 - momentum)
    u = g * (1 - momentum) + buf * momentum if nesterov else buf.clone()
    o = newton_schulz(u, steps)
    scale = max(1.0, w.shape[1] / w.shape[0]) ** 0.5
    return w * (1 - lr * weight_decay) - lr * scale * o


torch.manual_seed(0)
shapes = {
    "h.0.attn.c_attn.weight": (8, 24),   # wide: fan_out 3x fan_in, scale sqrt(3)
    "h.0.mlp.c_proj.weight": (16, 4),    # tall: transposed inside Newton-Schulz, scale 1
    "h.0.attn.c_proj.weight": (6, 6),    # square
}
config = {"momentum": 0.95, "nesterov": True, "weight_decay": 0.01, "ns_steps": 5}
initial = {k: torch.randn(*s) for k, s in shapes.items()}
params = {k: v.clone() for k, v in initial.items()}
bufs = {k: torch.zeros(*s) for k, s in shapes.items()}
steps = []
for lr in [0.02, 0.01, 0.03]:
    grads = {k: torch.randn(*s) for k, s in shapes.items()}
    for k in shapes:
        params[k] = muon_step(params[k], grads[k], bufs[k], lr, config["momentum"], config["nesterov"],
                              config["weight_decay"], config["ns_steps"])
    steps.append({
        "lr": lr,
        "grads": {k: g.flatten().tolist() for k, g in grads.items()},
        "params": {k: p.flatten().tolist() for k, p in params.items()},
    })
# Newton-Schulz alone, and how far from orthogonal its result is (Muon's premise: the
# singular values end up near 1, roughly 0.7-1.2, not exactly 1).
probe = torch.randn(8, 24)
o = newton_schulz(probe, 5)
singular = torch.linalg.svdvals(o).tolist()

out = {
    "torch": torch.__version__,
    **config,
    "shapes": {k: list(s) for k, s in shapes.items()},
    "initial": {k: v.flatten().tolist() for k, v in initial.items()},
    "steps": steps,
    "probe": probe.flatten().tolist(),
    "probe_orthogonalized": o.flatten().tolist(),
    "probe_singular_values": singular,
}
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "muon.json")
with open(path, "w") as f:
    json.dump(out, f)
print(f"wrote {path}; Newton-Schulz singular values {min(singular):.3f}..{max(singular):.3f}")
