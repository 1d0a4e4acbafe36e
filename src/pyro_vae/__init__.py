"""pyro_vae: the variational autoencoder as a probabilistic program in Pyro."""

from .build import build_vae
from .config import Config, load as load_config, validate as validate_config
from .data import Dataset, load_data
from .model import VAE
from .runs import Run, load_run, train_run

__all__ = ["VAE", "build_vae", "Config", "load_config", "validate_config", "Dataset", "load_data",
           "Run", "load_run", "train_run"]
__version__ = "0.1.0"
