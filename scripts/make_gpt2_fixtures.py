#!/usr/bin/env python3
"""Reference outputs for mlx-gpt's model parity tests, computed by Hugging Face transformers.

Two directions:
  1. HF -> mlx-gpt: build a small random GPT-2 with transformers, save it as a HF directory
     (tests/fixtures/gpt2_tiny_hf/) with the logits and loss it computes for fixed tokens
     (expected.json). tests/hf_parity.rs loads the directory in mlx-gpt and must match.
  2. mlx-gpt -> HF: load the directory mlx-gpt wrote (tests/fixtures/gpt2_tiny_mlx/, made by
     `MLX_GPT_WRITE_FIXTURES=1 cargo test -p mlx-gpt-model --test hf_parity`) with
     GPT2LMHeadModel.from_pretrained and record its logits for fixed tokens (expected.json).

Run from the repository root with torch and transformers installed:
    python3 scripts/make_gpt2_fixtures.py
Outputs are small (well under 1 MB) and committed, so CI needs no PyTorch.
"""
import json
import os
import sys

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")


def tokens(seed, vocab, batch, length):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g)


def record(model, seq, path, extra):
    model.eval()
    idx, targets = seq[:, :-1], seq[:, 1:]
    with torch.no_grad():
        logits = model(idx).logits  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
    out = {
        "idx": idx.tolist(),
        "targets": targets.tolist(),
        "logits": logits.flatten().tolist(),
        "logits_shape": list(logits.shape),
        "loss": loss.item(),
        "torch": torch.__version__,
        **extra,
    }
    with open(path, "w") as f:
        json.dump(out, f)
    print(f"wrote {path}: loss {loss.item():.6f}")


def hf_to_mlx():
    torch.manual_seed(1234)
    config = GPT2Config(
        vocab_size=96, n_positions=32, n_embd=32, n_layer=2, n_head=4,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config)
    # HF initialises biases to 0 and LayerNorm gains to 1; randomise every tensor so the
    # test sees each one.
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    out = os.path.join(ROOT, "gpt2_tiny_hf")
    model.save_pretrained(out, safe_serialization=True)
    record(model, tokens(7, config.vocab_size, 2, 17), os.path.join(out, "expected.json"),
           {"direction": "transformers model -> mlx-gpt"})


def mlx_to_hf():
    d = os.path.join(ROOT, "gpt2_tiny_mlx")
    if not os.path.exists(os.path.join(d, "model.safetensors")):
        sys.exit(f"{d} is missing: run MLX_GPT_WRITE_FIXTURES=1 cargo test -p mlx-gpt-model --test hf_parity first")
    model = GPT2LMHeadModel.from_pretrained(d)
    record(model, tokens(8, model.config.vocab_size, 2, 17), os.path.join(d, "expected.json"),
           {"direction": "mlx-gpt model -> transformers"})


if __name__ == "__main__":
    hf_to_mlx()
    mlx_to_hf()
