"""Hugging Face transformers' cached generation, the reference of `mlx-gpt bench generate`.

Loads a GPT-2 folder (the weights mlx-gpt's benchmark just saved, so both run the same
model), generates greedily with the KV cache (`use_cache=True`, exactly `--new-tokens`
tokens per prompt; several equally long prompts run as one batch), and prints one JSON
line: new tokens per second over all prompts, each prompt's tokens, and the versions.
Run by the benchmark under the Python that has torch (MLX_GPT_TORCH_PYTHON).
"""
import argparse
import json
import time

import torch
from transformers import GPT2LMHeadModel
import transformers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--prompts", required=True,
                    help="token ids, comma-separated; prompts (equally long) separated by ';'")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model = GPT2LMHeadModel.from_pretrained(a.model_dir, torch_dtype=torch.float32).eval()
    prompt = torch.tensor([[int(t) for t in p.split(",")] for p in a.prompts.split(";")])
    eos = model.config.eos_token_id

    def run(n):
        with torch.no_grad():
            return model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                                  pad_token_id=eos, attention_mask=torch.ones_like(prompt))

    run(2)  # warm-up
    t0 = time.perf_counter()
    out = run(a.new_tokens)
    dt = time.perf_counter() - t0
    new = out[:, prompt.shape[1]:].tolist()
    print(json.dumps({"tokens_per_s": sum(map(len, new)) / dt, "tokens": new, "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "transformers": transformers.__version__}))


if __name__ == "__main__":
    main()
