"""Pyro programs that are methods of a ``PyroModule``, under either of Pyro's parameter modes.

Pyro has two ways of holding the parameters of a ``PyroModule``
(``pyro.settings.get("module_local_params")``):

* the default, global mode: while a module's Pyro context is active, reading a parameter
  issues ``pyro.param`` (or ``pyro.module`` for a plain ``nn.Module`` child) and registers
  the tensor in Pyro's global param store. ``pyro.infer.SVI`` finds the parameters to step
  through those statements (``poutine.trace(param_only=True)``) and ``pyro.optim`` names
  them through the store, so this is the mode of Pyro's classic SVI idiom;
* module-local mode: parameters stay in their modules and are trained with ``torch.optim``
  over ``module.parameters()``. Two models built in one process never share a parameter
  by name. Pyro's ``SVI`` does not work in it (its ``pyro.optim`` needs the store).

ppvae sets neither mode globally. Its own entry points (training, estimators, the models'
tools such as ``sample``) run inside :func:`local_params`, so they never read or write the
global store; ``model`` and ``guide`` methods decorated with :func:`program` run inside the
owning module's Pyro context, so that under the global mode every parameter they read is
registered and ``pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam(...), elbo)`` trains
all of them. :class:`ProgramModule` creates its Pyro context in module-local mode, the
only mode in which Pyro gives the context the parameter cache module-local mode needs, so
that a module built under either mode can later be used under either.

References
----------
Pyro's ``pyro/nn/module.py`` (``PyroModule``, ``_Context``) and ``pyro/infer/svi.py``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pyro
import torch
from pyro.nn import PyroModule
from pyro.poutine.runtime import _PYRO_STACK
from pyro.poutine.trace_messenger import TraceMessenger
from torch import nn

__all__ = [
    "ProgramModule",
    "local_params",
    "local_params_method",
    "program",
    "LOCAL_SVI_REFUSAL",
    "STORE_COLLISION",
    "store_names",
    "ParamModeError",
]

F = TypeVar("F", bound=Callable[..., Any])

LOCAL_SVI_REFUSAL = (
    "pyro.infer.SVI steps pyro.optim optimizers over Pyro's global param store, but "
    "pyro.settings module_local_params=True keeps parameters in their modules: run SVI with "
    "module_local_params=False (Pyro's default), or train with ppvae.fit or a torch.optim "
    "optimizer over vae.parameters()"
)


class ParamModeError(Exception):
    """Pyro's parameter mode does not allow the call (the message says what to do instead).

    Deliberately neither a ``ValueError`` nor a ``RuntimeError``: Pyro's trace handler
    appends a table of trace shapes to those, and this message is one line.
    """


def local_params() -> contextlib.AbstractContextManager[None]:
    """Run a block with Pyro's module-local parameters, restoring the caller's mode after."""
    return pyro.settings.context(module_local_params=True)


def local_params_method(method: F) -> F:
    """Decorate a method (or function) to run under :func:`local_params`."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with local_params():
            return method(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _param_capture_active() -> bool:
    # pyro.infer.SVI.step wraps the objective in poutine.trace(param_only=True) to collect
    # the parameters it steps; nothing else in ppvae does.
    return any(isinstance(h, TraceMessenger) and h.param_only for h in _PYRO_STACK)


STORE_COLLISION = (
    "Pyro's global param store holds another tensor under {name!r}, a parameter name of "
    "this {cls} (a model of the same structure was trained with SVI in this process), so "
    "SVI would step that tensor instead: call pyro.clear_param_store() before training "
    "this model with SVI, or train it with ppvae.fit"
)


def store_names(root: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name in Pyro's param store, tensor) for each parameter a program of ``root`` reads.

    ``PyroModule.__getattr__`` names a parameter of a ``PyroModule`` at path P ``P.name``
    (a ``PyroParam`` without its ``_unconstrained`` suffix, its store value being the
    unconstrained tensor), and a parameter of a plain ``nn.Module`` child c ``P.c$$$rest``
    (``pyro.module``).
    """
    for path, module in root.named_modules():
        if not isinstance(module, PyroModule):
            continue
        for name, tensor in module.named_parameters(recurse=False):
            base = name.removesuffix("_unconstrained")
            yield (f"{path}.{base}" if path else base), tensor
        for child_name, child in module.named_children():
            if isinstance(child, PyroModule):
                continue
            prefix = f"{path}.{child_name}" if path else child_name
            for name, tensor in child.named_parameters():
                yield f"{prefix}$$${name}", tensor


def _check_store(root: nn.Module) -> None:
    """Raise :class:`ParamModeError` if the store holds other tensors under ``root``'s names.

    Under the global mode Pyro keys parameters by name: a second model of the same structure
    would read (for ``PyroParam`` s, adopt) the first one's tensors, and SVI would train
    those. Checked before the program runs, so nothing is adopted.
    """
    store = pyro.get_param_store()
    for name, tensor in store_names(root):
        if name in store:
            held = store[name]
            held = held.unconstrained() if hasattr(held, "unconstrained") else held
            if held is not tensor:
                raise ParamModeError(STORE_COLLISION.format(name=name, cls=type(root).__name__))


def program(method: F) -> F:
    """Decorate a ``model``/``guide`` method of a ``PyroModule`` (see the module doc).

    Under the global mode the method runs inside the module's Pyro context, so every
    parameter it reads is registered in the param store (Pyro's ``SVI`` finds them there).
    Under module-local mode it runs as it is; if ``pyro.infer.SVI`` is collecting
    parameters then, it raises :class:`ParamModeError` with :data:`LOCAL_SVI_REFUSAL`, since
    ``pyro.optim`` cannot step parameters outside the store. Under SVI in the global mode,
    a store holding other tensors under this module's parameter names (another model of
    the same structure trained before) raises :class:`ParamModeError` as well, before
    anything is read from it.
    """

    @functools.wraps(method)
    def wrapper(self: PyroModule, *args: Any, **kwargs: Any) -> Any:
        if pyro.settings.get("module_local_params"):
            if _param_capture_active():
                raise ParamModeError(LOCAL_SVI_REFUSAL)
            return method(self, *args, **kwargs)
        if _param_capture_active():
            _check_store(self)
        with self._pyro_context:
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class ProgramModule(PyroModule):
    """A ``PyroModule`` usable under both parameter modes, whichever was on when it was built.

    Pyro gives a module's context its module-local parameter cache only when that mode is on
    at construction; building the context inside :func:`local_params` always gives it one.
    (The cache is unused under the global mode.) Sub-``PyroModule`` s assigned as
    attributes share their parent's context, so the root's is the one that matters.
    """

    def __init__(self, name: str = "") -> None:
        with local_params():
            super().__init__(name)
