"""nanoGPT state dicts <-> Hugging Face GPT-2 layout (what mlx-gpt reads and writes), for
the scripts that compare mlx-gpt with nanoGPT's own code. Needs numpy and torch only.

Hugging Face layout: names under `transformer.`, the four projections (c_attn, c_proj of
attention, c_fc, c_proj of the MLP) stored as Conv1D's (in, out) - nanoGPT's Linear
weights transposed - and no lm_head (tied to wte). A model without biases (nanoGPT's
default) is written with zero biases and `"bias": false` in config.json, as mlx-gpt does.
"""
import json
import os

import numpy as np
import torch

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def save_hf(state_dict, cfg, out):
    """Write nanoGPT's `state_dict` (of a GPTConfig `cfg`) to folder `out`."""
    os.makedirs(out, exist_ok=True)
    tensors = {}
    for k, v in state_dict.items():
        k = k.removeprefix("_orig_mod.")  # a torch.compile'd model's names
        if k == "lm_head.weight":
            continue
        v = v.detach().float().cpu()
        if k.endswith(CONV1D):
            v = v.t()
        tensors[k] = v.contiguous().numpy()
        if not cfg.bias and k.endswith(".weight") and not k.endswith(("wte.weight", "wpe.weight")):
            tensors[k[: -len("weight")] + "bias"] = np.zeros(v.shape[-1], dtype=np.float32)
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for k in sorted(tensors):
        b = tensors[k].astype("<f4").tobytes()
        header[k] = {"dtype": "F32", "shape": list(tensors[k].shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))
    config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size, "n_ctx": cfg.block_size, "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None,
        "activation_function": "gelu", "layer_norm_epsilon": 1e-5, "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout, "initializer_range": 0.02,
        "scale_attn_weights": True, "tie_word_embeddings": True, "bias": cfg.bias,
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def load_hf(folder, GPT, GPTConfig):
    """A nanoGPT `GPT` (its classes passed in) holding the weights of an HF-layout folder."""
    with open(os.path.join(folder, "config.json")) as f:
        c = json.load(f)
    bias = c.get("bias", True)
    cfg = GPTConfig(block_size=c["n_positions"], vocab_size=c["vocab_size"], n_layer=c["n_layer"],
                    n_head=c["n_head"], n_embd=c["n_embd"], dropout=0.0, bias=bias)
    with open(os.path.join(folder, "model.safetensors"), "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    body = raw[8 + n:]
    sd = {}
    for k, meta in header.items():
        if k == "__metadata__":
            continue
        assert meta["dtype"] == "F32", f"{k}: {meta['dtype']}"
        a, b = meta["data_offsets"]
        t = torch.from_numpy(np.frombuffer(body[a:b], dtype="<f4").reshape(meta["shape"]).copy())
        if k.endswith(CONV1D):
            t = t.t().contiguous()
        if not bias and k.endswith(".bias"):
            assert not t.any(), f"{k}: a model without biases has non-zero {k}"
            continue
        sd[k] = t
    model = GPT(cfg)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not m.endswith(".attn.bias")]  # nanoGPT's causal-mask buffer
    assert not missing and not unexpected, (missing, unexpected)
    return model
