"""The model: offline backbone weights, backbone + task heads, checkpoints that rebuild their model."""
