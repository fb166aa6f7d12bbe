#!/usr/bin/env bash
# Pretrain on several nodes with SLURM: one torchrun per node, torchrun starts one process per GPU, and the nodes
# meet through torchrun's c10d rendezvous on the first node. Submit with `sbatch examples/slurm_pretrain.sh`.
#
# The run folder (--run.out_dir) and the data must be on a filesystem every node sees: each process writes its own
# shard of every checkpoint into it. Resubmitting the same script resumes from the newest complete checkpoint, on
# any number of nodes. SLURM sends SIGTERM before the time limit (--signal below): every process then saves at the
# same step and exits, and `--requeue` starts the job again, which resumes.
#
#SBATCH --job-name=plinth-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one torchrun per node
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@300            # SIGTERM 5 minutes before the limit: checkpoint and exit
#SBATCH --requeue
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

HEAD_NODE="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
GPUS_PER_NODE="${SLURM_GPUS_ON_NODE:-8}"

# srun starts the same command on every node; torchrun relays SIGTERM to its workers.
srun --kill-on-bad-exit=0 .venv/bin/torchrun \
  --nnodes "$SLURM_JOB_NUM_NODES" \
  --nproc-per-node "$GPUS_PER_NODE" \
  --rdzv-backend c10d \
  --rdzv-endpoint "$HEAD_NODE:29500" \
  --rdzv-id "$SLURM_JOB_ID" \
  -m plinth pretrain --config examples/pretrain_tiny.yaml \
    --model base --strategy fsdp --system.precision bf16 --system.compile on \
    --optim.batch_size 256 --run.out_dir runs/pretrain-multinode
