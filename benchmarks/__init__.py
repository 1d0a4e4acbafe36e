"""pyro_vae's benchmark suite: its training loop against hand-written PyTorch and Pyro's plain SVI, timed side by side."""
