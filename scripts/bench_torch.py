#!/usr/bin/env python3
"""PyTorch reference for `mlx-gpt bench train`: the same GPT and the same training step
(forward, backward, clip to norm 1.0, AdamW with nanoGPT's parameter groups), timed the
same way (median of timed steps after warm-up), on the CPU, float32.

Written for this repository: a plain PyTorch GPT-2-style model with nanoGPT's shapes
(pre-LN blocks, fused qkv, exact GELU, tied head, causal scaled-dot-product attention).

    python3 scripts/bench_torch.py --n-layer 4 --n-head 4 --n-embd 128 --block-size 64 --batch-size 12
prints one JSON line: {"median_ms": ..., "min_ms": ..., "max_ms": ..., "times_ms": [...], "threads": ...}.
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, c, nh, dropout, bias):
        super().__init__()
        self.nh = nh
        self.ln_1 = nn.LayerNorm(c, bias=bias)
        self.c_attn = nn.Linear(c, 3 * c, bias=bias)
        self.attn_proj = nn.Linear(c, c, bias=bias)
        self.ln_2 = nn.LayerNorm(c, bias=bias)
        self.c_fc = nn.Linear(c, 4 * c, bias=bias)
        self.mlp_proj = nn.Linear(4 * c, c, bias=bias)
        self.dropout = dropout

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.nh, c // self.nh).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        x = x + F.dropout(self.attn_proj(y), self.dropout, self.training)
        h = F.gelu(self.c_fc(self.ln_2(x)))
        return x + F.dropout(self.mlp_proj(h), self.dropout, self.training)


class GPT(nn.Module):
    def __init__(self, vocab, block, n_layer, nh, c, dropout, bias):
        super().__init__()
        self.wte = nn.Embedding(vocab, c)
        self.wpe = nn.Embedding(block, c)
        self.h = nn.ModuleList(Block(c, nh, dropout, bias) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(c, bias=bias)
        self.dropout = dropout
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = F.dropout(self.wte(idx) + self.wpe(torch.arange(t)), self.dropout, self.training)
        for blk in self.h:
            x = blk(x)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def main():
    ap = argparse.ArgumentParser()
    for k, d in [("n-layer", 4), ("n-head", 4), ("n-embd", 128), ("block-size", 64), ("batch-size", 12),
                 ("vocab-size", 65), ("iters", 30), ("warmup", 5), ("threads", 0)]:
        ap.add_argument(f"--{k}", type=int, default=d)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--generate", action="store_true", help="time nanoGPT-style generation instead of a step")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--bias", action="store_true")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(1337)
    model = GPT(a.vocab_size, a.block_size, a.n_layer, a.n_head, a.n_embd, a.dropout, a.bias)
    if a.generate:
        # nanoGPT's generate: crop to block_size, full forward, last position, top-k, sample.
        model.eval()
        idx = torch.randint(a.vocab_size, (1, a.prompt_len))
        with torch.no_grad():
            for n, timed in [(2, False), (a.new_tokens, True)]:
                t0 = time.perf_counter()
                for _ in range(n):
                    ctx = idx[:, -a.block_size:]
                    x = model.wte(ctx) + model.wpe(torch.arange(ctx.shape[1]))
                    for blk in model.h:
                        x = blk(x)
                    logits = (model.ln_f(x[:, -1, :]) @ model.wte.weight.t()) / 1.0
                    v, _ = torch.topk(logits, 200)
                    logits[logits < v[:, [-1]]] = -float("inf")
                    nxt = torch.multinomial(F.softmax(logits, dim=-1), 1)
                    idx = torch.cat((idx, nxt), dim=1)
                if timed:
                    dt = time.perf_counter() - t0
        print(json.dumps({"tokens_per_s": a.new_tokens / dt, "threads": torch.get_num_threads(), "torch": torch.__version__}))
        return
    model.train()
    params = list(model.parameters())
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.99), eps=1e-8)
    times = []
    for i in range(a.warmup + a.iters):
        x = torch.randint(a.vocab_size, (a.batch_size, a.block_size))
        y = torch.randint(a.vocab_size, (a.batch_size, a.block_size))
        t0 = time.perf_counter()
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    print(json.dumps({"median_ms": times[len(times) // 2] * 1e3, "min_ms": times[0] * 1e3, "max_ms": times[-1] * 1e3,
                      "times_ms": [t * 1e3 for t in times],
                      "threads": torch.get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
