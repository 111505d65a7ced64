#!/usr/bin/env python3
"""Reference HellaSwag scores for tests/hellaswag.rs, computed by Hugging Face transformers.

Builds a small random GPT-2 with GPT-2's vocabulary (2 layers, 16 wide, context 64, seed
0), saves it to tests/fixtures/hellaswag_tiny/model/, and scores the examples of
tests/fixtures/hellaswag_tiny/examples.jsonl (made up, in HellaSwag's format) the way
llm.c's and build-nanogpt's evaluators do: tokens of the context, then of " " + ending;
the summed log-likelihood of the ending's tokens under GPT2LMHeadModel, and its mean per
token. Writes expected.json: per example the four sums, token counts, and both
predictions. The tokenizer is GPT-2's BPE from ../shared/tokenizers/gpt2 (or
$MLX_GPT_SHARED/tokenizers/gpt2, or target/test-data/...).

    python3 scripts/make_hellaswag_fixture.py
"""
import json
import os

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FIX = os.path.join(ROOT, "tests", "fixtures", "hellaswag_tiny")
candidates = [os.environ.get("MLX_GPT_SHARED", ""), os.path.join(ROOT, "..", "shared"),
              os.path.join(ROOT, "target", "test-data")]
bpe = next(os.path.join(c, "tokenizers", "gpt2") for c in candidates
           if c and os.path.isfile(os.path.join(c, "tokenizers", "gpt2", "encoder.json")))
# GPT-2's byte-level BPE (OpenAI's files), as transformers' GPT-2 tokenizer builds it.
tok = Tokenizer(models.BPE.from_file(os.path.join(bpe, "encoder.json"), os.path.join(bpe, "vocab.bpe")))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()


def encode(text):
    return tok.encode(text).ids

torch.manual_seed(0)
config = GPT2Config(vocab_size=50257, n_positions=64, n_embd=16, n_layer=2, n_head=2,
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
model = GPT2LMHeadModel(config).eval()
model.save_pretrained(os.path.join(FIX, "model"), safe_serialization=True)

out = []
with open(os.path.join(FIX, "examples.jsonl")) as f:
    examples = [json.loads(line) for line in f if line.strip()]
with torch.no_grad():
    for ex in examples:
        ctx = encode(ex["ctx"])
        sums, counts = [], []
        for end in ex["endings"]:
            end_ids = encode(" " + end)
            ids = torch.tensor([ctx + end_ids])
            logp = F.log_softmax(model(ids).logits[0, :-1].double(), dim=-1)
            targets = ids[0, 1:]
            picked = logp[torch.arange(len(targets)), targets][-len(end_ids):]
            sums.append(picked.sum().item())
            counts.append(len(end_ids))
        means = [s / n for s, n in zip(sums, counts)]
        out.append({"log_likelihood": sums, "tokens": counts,
                    "pred": max(range(4), key=lambda k: sums[k]),
                    "pred_norm": max(range(4), key=lambda k: means[k]), "label": ex["label"]})
with open(os.path.join(FIX, "expected.json"), "w") as f:
    json.dump({"made_by": "scripts/make_hellaswag_fixture.py", "examples": out}, f, indent=1)
print(f"scored {len(out)} examples; acc {sum(o['pred'] == o['label'] for o in out)}/{len(out)}")
