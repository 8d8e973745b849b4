"""``python -m ppvae``: the ``ppvae`` command, also as torchrun's ``-m ppvae`` target."""

import sys

from ppvae.app.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
