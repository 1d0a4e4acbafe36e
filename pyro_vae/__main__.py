"""``python -m pyro_vae`` runs the CLI."""

import sys

from pyro_vae.cli import main

sys.exit(main())
