"""pyro_vae: the variational autoencoder as a probabilistic program in Pyro."""

from pyro_vae.build import build_vae
from pyro_vae.config import Config
from pyro_vae.config import load as load_config
from pyro_vae.config import validate as validate_config
from pyro_vae.data import Dataset, load_data
from pyro_vae.model import VAE
from pyro_vae.runs.run import Run, load_run, train_run

__all__ = ["VAE", "build_vae", "Config", "load_config", "validate_config", "Dataset", "load_data",
           "Run", "load_run", "train_run"]
__version__ = "0.1.0"
