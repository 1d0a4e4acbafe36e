"""Baselines beside the VAE: exact EM where the posterior is tractable, variational EM, and SVI on the same models.

* :mod:`.ppca` -- closed-form probabilistic PCA and exact EM for pPCA and factor analysis;
* :mod:`.export` -- a fitted linear-Gaussian model written as an ordinary run directory;
* :mod:`.gmm` -- a Gaussian mixture by exact EM, enumerated SVI and amortized score-function SVI;
* :mod:`.variational_em` -- variational EM with per-point q_n against joint amortized SVI;
* :mod:`.wake_sleep` -- wake-sleep and reweighted wake-sleep, minibatched;
* :mod:`.mcem` -- Monte Carlo EM: an HMC E-step on persistent per-point chains, an M-step on theta;
* :mod:`.semi_amortized` -- semi-amortized VI: the encoder's q refined per batch before the decoder's step;
* :mod:`.fitting` -- what those fits on the Trainer share (budget check, theta, the curve, the history);
* :mod:`.methods` -- all of them as ``pyro-vae compare`` methods.
"""
