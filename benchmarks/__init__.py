"""sketchmine benchmark suite.

    python -m benchmarks                 # full suite (~5-8 min on a 2-core CPU box)
    python -m benchmarks --quick         # smoke run for CI (< 1 min)
    python -m benchmarks --json out.json # also write the figures as JSON

Everything is measured side by side in one invocation: the bare batched forward pass
over the same DataLoader, `sketchmine.mine`, the Deep-Visualization-Toolbox-style
one-image-at-a-time loop, and peak memory / time at 1x and 4x the images (each in a
fresh subprocess). See benchmarks/mine_vs_forward.py and benchmarks/RESULTS.md.
"""
