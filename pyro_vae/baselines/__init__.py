"""Baselines beside the VAE: exact EM where the posterior is tractable, variational EM, and SVI on the same models.

* :mod:`.ppca` -- closed-form probabilistic PCA and exact EM for pPCA and factor analysis;
* :mod:`.export` -- a fitted linear-Gaussian model written as an ordinary run directory;
* :mod:`.gmm` -- a Gaussian mixture by exact EM, enumerated SVI and amortized score-function SVI;
* :mod:`.variational_em` -- variational EM with per-point q_n against joint amortized SVI;
* :mod:`.methods` -- all of them as ``pyro-vae compare`` methods.
"""
