#!/usr/bin/env bash
# The baby recipe (nanoGPT's README CPU command) trained by nanoGPT's own train.py and by
# mlx-gpt, 4 seeds each, at two learning rates, every final model scored by the exact val
# loss (every window) with both evaluators: mlx-gpt's `eval` and nanoGPT's model.py
# (scripts/nanogpt_exact_loss.py). Results in docs/training.md.
#
#   scripts/compare_nanogpt.sh NANOGPT_CHECKOUT [DATA_DIR] [WORK_DIR]
#
# DATA_DIR: a prepared shakespeare_char (default datasets/shakespeare_char); mlx-gpt from
# target/release (cargo build --release -p mlx-gpt-cli). nanoGPT's train.py seeds with
# torch.manual_seed(1337 + seed_offset); to vary it without editing nanoGPT, it is run
# through a wrapper that shifts that seed. Prints one line per run:
#   impl lr min_lr seed  exact-by-mlx-gpt  exact-by-nanoGPT
set -euo pipefail
nanogpt=$(cd "$1" && pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
data=$(cd "${2:-$repo/datasets/shakespeare_char}" && pwd)
work=${3:-/tmp/mlx-gpt-compare-nanogpt}
mlx=$repo/target/release/mlx-gpt
seeds=${SEEDS:-"1337 1 2 3"}  # LRS (default "2e-3 1e-3") and SEEDS choose the runs
mkdir -p "$work/nanogpt/data/shakespeare_char"
# nanoGPT reads ./configurator.py, ./config/ and ./data/<dataset>/ from its working folder.
cp -r "$nanogpt"/{train.py,model.py,configurator.py,config} "$work/nanogpt/"
ln -sf "$data/train.bin" "$data/val.bin" "$work/nanogpt/data/shakespeare_char/"
python3 -c "import pickle,sys; pickle.dump({'vocab_size': 65}, open(sys.argv[1], 'wb'))" \
  "$work/nanogpt/data/shakespeare_char/meta.pkl"
baby=(--eval_iters=20 --log_interval=500 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4
  --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0)
exact_mlx() { # hf-or-run-dir
  "$mlx" eval baby_shakespeare_char --data_dir "$(dirname "$data")" --init_from "$1" \
    --out_dir "$work/eval-scratch" --eval_iters 1 | sed -n 's/^exact val loss \([0-9.]*\).*/\1/p'
}
exact_torch() { # hf-dir
  python3 "$repo/scripts/nanogpt_exact_loss.py" --nanogpt "$nanogpt" --data "$data" --hf "$1" \
    | sed -n 's/^exact val loss \([0-9.]*\).*/\1/p'
}
# A run already finished in WORK_DIR (its final checkpoint there) is scored, not redone.
for lr in ${LRS:-2e-3 1e-3}; do
  min_lr=$(python3 -c "print($lr / 10)")
  for seed in $seeds; do
    out=$work/nanogpt-$lr-$seed
    grep -q "^iter 2000:" "$out.log" 2>/dev/null || (cd "$work/nanogpt" && python3 -c "
import runpy, sys, torch
seed = int(sys.argv[1]); manual_seed = torch.manual_seed
torch.manual_seed = lambda s: manual_seed(s - 1337 + seed)
sys.argv = ['train.py'] + sys.argv[2:]
runpy.run_path('train.py', run_name='__main__')
" "$seed" config/train_shakespeare_char.py --device=cpu --compile=False "${baby[@]}" \
      --learning_rate=$lr --min_lr=$min_lr --always_save_checkpoint=True --out_dir="$out" >"$out.log" 2>&1)
    python3 "$repo/scripts/nanogpt_exact_loss.py" --nanogpt "$nanogpt" --data "$data" \
      --ckpt "$out/ckpt.pt" --to-hf "$out/hf" >/dev/null
    echo "nanoGPT $lr $min_lr $seed $(exact_mlx "$out/hf") $(exact_torch "$out/hf")"
    run=$work/mlx-gpt-$lr-$seed
    last=$run/checkpoints/iter-0002000
    if [ ! -d "$last" ]; then
      rm -rf "$run"
      "$mlx" train baby_shakespeare_char --data_dir "$(dirname "$data")" --seed "$seed" \
        --learning_rate $lr --min_lr $min_lr --always_save_checkpoint true --eval_full false \
        --out_dir "$run" >"$run.log" 2>&1
    fi
    echo "mlx-gpt $lr $min_lr $seed $(exact_mlx "$last") $(exact_torch "$last")"
  done
done
