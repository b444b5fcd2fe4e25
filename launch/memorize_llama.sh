#!/usr/bin/env bash
# Submit the memorization experiment for a Llama 3.1 size on one of the machines:
#   export LLAMA_70B_DIR=/path/to/Llama-3.1-70B    # config.json, *.safetensors, tokenizer.json
#   launch/memorize_llama.sh 70B frontier [--set experiment.epochs=4 ...]
# It runs `python -m axon memorize axon/configs/memorize_<size>.yaml` through the machine's
# sbatch script on the GPU count below; the layout is the performance model's pick for that
# machine (layout: auto, layout_machine set here). Results land in runs/memorize_<size>/.
set -euo pipefail
size=${1:?usage: launch/memorize_llama.sh 8B|70B|405B perlmutter|frontier|alps [--set KEY=VALUE ...]}
machine=${2:?usage: launch/memorize_llama.sh 8B|70B|405B perlmutter|frontier|alps [--set KEY=VALUE ...]}
shift 2
case "$size" in
  8B) gpus=32 ;; 70B) gpus=128 ;; 405B) gpus=512 ;;
  *) echo "memorize_llama.sh: size must be 8B, 70B or 405B, got $size" >&2; exit 2 ;;
esac
case "$machine" in
  perlmutter|alps) per_node=4 ;; frontier) per_node=8 ;;
  *) echo "memorize_llama.sh: machine must be perlmutter, frontier or alps, got $machine" >&2; exit 2 ;;
esac
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
config="$here/../axon/configs/memorize_$(echo "$size" | tr 'B' 'b').yaml"
AXON_COMMAND=memorize CONFIG="$config" sbatch --nodes=$((gpus / per_node)) --time=12:00:00 \
    --job-name="memorize-$size" "$here/$machine.sbatch" --set layout_machine="$machine" "$@"
