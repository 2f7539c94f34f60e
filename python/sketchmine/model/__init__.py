"""Models and backends: loading (torch, TorchScript, ONNX, the zoo), the forward pass with
taps on the chosen layers, cutting a network at a layer, receptive fields.
"""
