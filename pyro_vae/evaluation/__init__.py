"""Honest numbers about a trained VAE: IWAE, exact linear-Gaussian answers, gaps, gradient variance."""
