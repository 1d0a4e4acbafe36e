"""The training loop and what stands around it: checkpoint state, guards, stopping rules, data parallelism."""
