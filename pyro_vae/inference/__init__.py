"""Objectives and engines: each objective's Pyro form beside its fused form, and which one a run takes.

- :mod:`.kl` -- closed-form or Monte Carlo KL(q(z|x) || p(z)), and which one each site uses;
- :mod:`.elbo` -- the ELBO (``TraceMeanField_ELBO`` / ``Trace_ELBO``) and its fused twin;
- :mod:`.renyi` -- the Renyi / IWAE bound and its fused twin;
- :mod:`.score_function` -- the ELBO with the score-function gradient;
- :mod:`.path_gradients` -- sticking-the-landing (ELBO) and doubly reparameterized (IWAE) gradients;
- :mod:`.rws` -- reweighted wake-sleep and wake-sleep, minibatched (fused only: Pyro's form is not minibatched);
- :mod:`.objectives` -- ``inference.objective`` -> the Pyro loss and the fused loss;
- :mod:`.engine` -- the engine a run trains with (fused or Pyro, compiled or not) and its optimizer.
"""
