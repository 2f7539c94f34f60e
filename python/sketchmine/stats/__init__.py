"""Core ops and per-layer statistics of the mining pass: the compiled top-k and crop ops,
and the accumulators (top-k, class statistics, moments) behind one protocol.
"""
