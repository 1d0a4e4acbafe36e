"""One module per ``pyro-vae`` subcommand, each with ``add_arguments(parser)`` and ``run(args)``."""
