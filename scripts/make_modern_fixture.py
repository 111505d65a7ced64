#!/usr/bin/env python3
"""Reference forward pass of the modern GPT (arch = "modern") in PyTorch, for
tests/modern_parity.rs.

Written from the papers and nanochat's description, independently of mlx-gpt's code:
    x = rms_norm(wte[idx])                                   (no position table)
    per block:  x = x + c_proj(attn(rms_norm(x)));  x = x + mlp(rms_norm(x))
      attn: q, k, v = x Wq, x Wk, x Wv (n_head, n_kv_head, n_kv_head heads of hs)
            q, k = rms_norm per head (QK-norm), then rotary: for positions t and pairs
            (x1, x2) = (first half, second half) of each head, angle t * base^(-2i/hs),
            (x1, x2) -> (x1 cos + x2 sin, -x1 sin + x2 cos)   (nanochat's direction)
            causal softmax attention scaled 1/sqrt(hs); grouped-query through
            PyTorch's own enable_gqa
      mlp:  relu(x W_fc)^2 W_proj
    logits = cap * tanh((rms_norm(x) W_headᵀ) / cap), cap = 15
rms_norm(x) = x / sqrt(mean(x^2) + 1e-5), no parameters, no biases anywhere.
Every weight is drawn N(0, 0.5) (the output projections too, which the real
initialisation zeroes), so every path shows in the logits.

Run from the repository root with torch and safetensors installed:
    python3 scripts/make_modern_fixture.py
Writes tests/fixtures/modern_tiny/ (config.json, model.safetensors in mlx-gpt's layout,
expected.json with the token ids, logits and loss), about 130 KB, committed so CI needs
no PyTorch.
"""
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = "tests/fixtures/modern_tiny"
V, T_MAX, L, NH, NKV, C = 50, 16, 2, 4, 2, 32
HS = C // NH
BASE, CAP, EPS = 10000.0, 15.0, 1e-5


def rms_norm(x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)


def rotary(x, start):
    # x: (B, heads, T, hs)
    t = x.shape[2]
    inv_freq = 1.0 / (BASE ** (torch.arange(0, HS, 2, dtype=torch.float64) / HS))
    angles = torch.outer(torch.arange(start, start + t, dtype=torch.float64), inv_freq)
    cos, sin = angles.cos().float(), angles.sin().float()
    x1, x2 = x[..., : HS // 2], x[..., HS // 2 :]
    return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], dim=-1)


def forward(w, idx):
    b, t = idx.shape
    x = rms_norm(w["wte"][idx])
    for i in range(L):
        p = lambda n: w[f"h.{i}.{n}"]
        h = rms_norm(x)
        q = (h @ p("wq")).view(b, t, NH, HS).transpose(1, 2)
        k = (h @ p("wk")).view(b, t, NKV, HS).transpose(1, 2)
        v = (h @ p("wv")).view(b, t, NKV, HS).transpose(1, 2)
        q, k = rotary(rms_norm(q), 0), rotary(rms_norm(k), 0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + y.transpose(1, 2).reshape(b, t, C) @ p("attn_proj")
        h = rms_norm(x)
        x = x + F.relu(h @ p("fc")).square() @ p("mlp_proj")
    logits = rms_norm(x) @ w["lm_head"].T
    return CAP * torch.tanh(logits / CAP)


def main():
    torch.manual_seed(0)
    g = lambda *shape: torch.randn(*shape) * 0.5
    w = {"wte": g(V, C), "lm_head": g(V, C)}
    for i in range(L):
        w[f"h.{i}.wq"], w[f"h.{i}.wk"], w[f"h.{i}.wv"] = g(C, NH * HS), g(C, NKV * HS), g(C, NKV * HS)
        w[f"h.{i}.attn_proj"], w[f"h.{i}.fc"], w[f"h.{i}.mlp_proj"] = g(C, C), g(C, 4 * C), g(4 * C, C)
    idx = torch.randint(0, V, (2, 12))
    targets = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        logits = forward(w, idx)
        loss = F.cross_entropy(logits.view(-1, V), targets.view(-1))

    # mlx-gpt's layout: dense weights (in, out), q|k|v side by side in c_attn.
    tensors = {"transformer.wte.weight": w["wte"], "lm_head.weight": w["lm_head"]}
    for i in range(L):
        pre = f"transformer.h.{i}."
        tensors[pre + "attn.c_attn.weight"] = torch.cat([w[f"h.{i}.wq"], w[f"h.{i}.wk"], w[f"h.{i}.wv"]], 1)
        tensors[pre + "attn.c_proj.weight"] = w[f"h.{i}.attn_proj"]
        tensors[pre + "mlp.c_fc.weight"] = w[f"h.{i}.fc"]
        tensors[pre + "mlp.c_proj.weight"] = w[f"h.{i}.mlp_proj"]
    os.makedirs(OUT, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, f"{OUT}/model.safetensors", metadata={"format": "pt"})
    config = {
        "model_type": "mlx_gpt_modern", "vocab_size": V, "n_positions": T_MAX, "n_embd": C, "n_layer": L,
        "n_head": NH, "n_kv_head": NKV, "rope_theta": BASE, "logit_softcap": CAP, "activation_function": "relu2",
        "layer_norm_epsilon": EPS, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "tie_word_embeddings": False, "bias": False,
    }
    with open(f"{OUT}/config.json", "w") as f:
        json.dump(config, f, indent=1)
    expected = {
        "torch": torch.__version__,
        "idx": idx.tolist(),
        "targets": targets.tolist(),
        "logits": [round(x, 7) for x in logits.flatten().tolist()],
        "logits_shape": list(logits.shape),
        "loss": loss.item(),
    }
    with open(f"{OUT}/expected.json", "w") as f:
        json.dump(expected, f)
    print(f"wrote {OUT}: loss {loss.item():.6f}")


if __name__ == "__main__":
    main()
