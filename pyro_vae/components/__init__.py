"""The swappable parts of the VAE, each kind in its own registry: priors, guides, likelihoods, decoders.

A component is an ``nn.Module`` returning a Pyro distribution (or, for a decoder, its parameters);
its keyword-only constructor arguments are its config keys.
"""
