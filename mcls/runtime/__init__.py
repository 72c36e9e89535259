"""Where code runs: device, mixed precision, memory format, torchrun processes, progress bars."""
