#!/usr/bin/env bash
# The tiny ShapesWorld CapRL run, stage by stage: models -> reader SFT -> captioner SFT -> GRPO -> eval.
# Each stage is skipped when its export already exists; delete runs/shapes/<stage> to redo it.
set -euo pipefail
cd "$(dirname "$0")/../.."
lc="${LIT_CAPRL:-.venv/bin/lit-caprl}"

[ -d runs/models/qwen2_5_vl-tiny ] || "$lc" make-tiny --family qwen2_5_vl --size tiny --out runs/models/qwen2_5_vl-tiny
[ -d runs/models/qwen2-mini ] || "$lc" make-tiny --family qwen2 --size mini --out runs/models/qwen2-mini
for stage in reader_sft captioner_sft grpo; do
  if [ -d "runs/shapes/$stage/export" ]; then
    echo "== $stage: export exists, skipped"
  else
    echo "== $stage"
    start=$SECONDS
    "$lc" fit -c "experiments/shapes/$stage.yaml" --trainer.enable_progress_bar=false
    echo "== $stage took $((SECONDS - start)) s"
  fi
done
echo "== eval (300 held-out scenes, 3 seeds)"
"$lc" eval --data runs/data/shapes/val.jsonl --n 300 \
  --reader runs/shapes/reader_sft/export --policy runs/shapes/captioner_sft/export --out runs/shapes/eval_sft.json
"$lc" eval --data runs/data/shapes/val.jsonl --n 300 \
  --reader runs/shapes/reader_sft/export --policy runs/shapes/grpo/export --out runs/shapes/eval_grpo.json
