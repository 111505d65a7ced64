#!/usr/bin/env python3
"""Does mlx-lm run what `mlx-gpt export` writes? Loads an exported directory with mlx-lm's
own loader (its `nanochat` model) and compares its logits with the PyTorch reference of
tests/fixtures/modern_tiny (scripts/make_modern_fixture.py).

    cargo run --release -p mlx-gpt-cli -- export --model tests/fixtures/modern_tiny --to /tmp/modern-mlx-lm
    python3 scripts/check_mlx_lm_export.py /tmp/modern-mlx-lm

Needs `pip install "mlx[cpu]" mlx-lm` (Linux) or `pip install mlx-lm` (macOS). Prints the
largest logit difference and exits 1 above 1e-4.
"""
import json
import pathlib
import sys

import mlx.core as mx
from mlx_lm.utils import load_model

exported = pathlib.Path(sys.argv[1])
fixture = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/modern_tiny/expected.json"
expected = json.loads(fixture.read_text())

model, config = load_model(exported)
logits = model(mx.array(expected["idx"]))
want = mx.array(expected["logits"]).reshape(expected["logits_shape"])
diff = mx.abs(logits - want).max().item()
import mlx_lm

print(f"mlx-lm {mlx_lm.__version__} (mlx {mx.__version__}), model_type {config['model_type']}: "
      f"max |logit difference| against PyTorch {diff:.2e}")
sys.exit(0 if diff < 1e-4 else 1)
