"""Training: one loop (`loop.py`) that every stage plugs into with a model, batches and a loss.

    loop.py        THE loop: accumulation, clipping, AMP, eval, checkpoints + exact resume, budgets
    optim.py       AdamW with weight-decay groups; warmup + cosine/linear/constant schedules
    state.py       checkpoints: model + optimizer + RNG + data position, written atomically
    dist.py        torchrun: DDP (gloo on CPU, nccl on GPU) or FSDP, rank-0 helpers
    progress.py    metrics.jsonl, the loss-curve PNG, the progress bar, MFU
    pretrain.py    the next-token stage over token shards, and the data pipeline in front of it

Stages (pretrain, sft, finetune, reward, ppo, dpo) build a `Stage` and call `train()`; they never
copy the loop. Knows nothing of HTTP or the CLI.
"""
