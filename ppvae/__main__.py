"""``python -m ppvae``: the ``ppvae`` command, also torchrun's ``-m ppvae`` target.

The command lives in :mod:`ppvae.app.cli`, which the library itself never imports; this
entry point runs it as a script rather than importing it, so that the library's modules
keep that rule without exception.
"""

import runpy

__all__: list[str] = []

if __name__ == "__main__":
    runpy.run_module("ppvae.app.cli", run_name="__main__", alter_sys=True)
