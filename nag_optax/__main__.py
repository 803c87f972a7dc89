"""Command line: ``python -m nag_optax launch -n 2 -d 4 python train.py``.

``launch`` runs a command as several JAX processes with CPU devices on
127.0.0.1 (see :func:`nag_optax.parallel.launch_local`). Signals sent to it
reach every process, and it ends them all before it exits.
"""

import sys
from collections.abc import Sequence

from nag_optax.parallel import _multiprocess


def main(argv: Sequence[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] != "launch":
    given = f"unknown command {argv[0]!r}" if argv else "no command given"
    print(
      f"error: {given}; usage: python -m nag_optax launch [-n PROCESSES] "
      "[-d DEVICES] [-t TIMEOUT] [-g GRACE] command ...",
      file=sys.stderr,
    )
    return 2
  return _multiprocess.main(argv[1:])


if __name__ == "__main__":
  raise SystemExit(main())
