"""Performance and accuracy benchmarks of ppvae against hand-written PyTorch references.

Run with ``python -m bench.run`` (``make bench``); see ``bench/README.md``. Not part of the
test suite.
"""

__all__: list[str] = []
