"""The ``pyro-vae`` command line: one module per subcommand in ``pyro_vae.commands``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

from pyro_vae.errors import UserError, file_system_error, out_of_memory

# name -> module in pyro_vae.commands defining ``add_arguments(parser)`` and ``run(args) -> int``
COMMANDS = {
    "train": "train",
    "components": "components",
    "resume": "resume",
    "evaluate": "evaluate",
    "compare": "compare",
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (naming the command and where help is), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="pyro-vae", description="Variational autoencoders as Pyro programs: train, evaluate, compare.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        mod = importlib.import_module(f"pyro_vae.commands.{module}")
        sp = sub.add_parser(name, help=mod.__doc__.splitlines()[0], description=mod.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)  # keep the paragraphs
        mod.add_arguments(sp)
        sp.set_defaults(_run=mod.run)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    p = parser()
    args, unknown = p.parse_known_args(argv)
    if unknown:  # said by the subcommand's parser, so the hint points to its own --help
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    args._argv = list(sys.argv[1:] if argv is None else argv)  # what a report says reproduces it
    try:
        return args._run(args)
    except (UserError, OSError) as err:
        if isinstance(err, OSError):  # one error path for the file system: permission, read-only, disk full...
            err = file_system_error(err)
        if _is_rank_zero():  # under torchrun every rank raises the same error: say it once
            print(f"pyro-vae: error: {err}", file=sys.stderr)
        return err.exit_code
    except (MemoryError, RuntimeError) as err:  # a config asking for more memory than there is: one line too
        oom = out_of_memory(err)
        if oom is None:
            raise
        if _is_rank_zero():
            print(f"pyro-vae: error: {oom}", file=sys.stderr)
        return oom.exit_code
    except KeyboardInterrupt:
        if _is_rank_zero():
            print("pyro-vae: interrupted", file=sys.stderr)
        return 130


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


if __name__ == "__main__":
    sys.exit(main())
