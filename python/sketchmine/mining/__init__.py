"""The mining pass: `mine` resolves its inputs, the loop streams batches through the
accumulators and checkpoints them, torch.distributed merges ranks.
"""
