"""The ``ppvae`` command over run folders.

``cli`` parses arguments (the only module that does); ``config`` is the typed run
configuration; ``rundir`` knows every file of a run folder and writes each one
atomically; ``train``, ``evaluate``, ``bdmc``, ``score``, ``sample``, ``figures`` (with
``evaluation_figures``), ``report`` and ``demo`` do the work of the commands, and
``summaries`` words an evaluation the same way for all of them. The library
(:mod:`ppvae` and its data, readers and plots) never imports this package.
"""

__all__: list[str] = []
