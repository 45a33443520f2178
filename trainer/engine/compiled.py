"""``trainer.fit(torch.compile(model))``: train the original module with its compiled forward.

``torch.compile`` returns a wrapper (``OptimizedModule``) whose own state dict prefixes every key
with ``_orig_mod.``. As in Lightning, the Trainer unwraps it: hooks, ``self.log``, checkpoints and
the strategy see the user's original module (plain keys, so checkpoints move freely between
compiled and uncompiled runs), while the module's ``forward`` is, for the duration of the call,
the compiled one -- ``self(x)`` inside ``training_step`` runs the compiled graph (and still does
after fit, as in Lightning; ``del module.forward`` goes back to eager).
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch

_PREFIX = "_orig_mod."


def is_compiled(model: Any) -> bool:
    if "torch._dynamo" not in sys.modules:  # nothing was compiled (and importing dynamo costs time)
        return False
    from torch._dynamo.eval_frame import OptimizedModule

    return isinstance(model, OptimizedModule)


def from_compiled(model: Any) -> Any:
    """The module inside a ``torch.compile`` wrapper, with its forward replaced by the compiled one
    (as Lightning does, it stays compiled afterwards). Anything else is returned as it is."""
    if not isinstance(model, torch.nn.Module) or not is_compiled(model):
        return model
    wrapper: Any = model  # torch.compile's OptimizedModule: _orig_mod and dynamo_ctx are its attributes
    module = wrapper._orig_mod
    # the compile settings (backend, mode, options) live in the wrapper's context: apply them to the
    # class's forward bound to the module (never to a forward compiled by an earlier call), so hooks
    # around forward still run in eager code
    module.forward = wrapper.dynamo_ctx(type(module).forward.__get__(module))
    return module


def strip_compile_prefix(state_dict: dict[str, Any], own_keys: Any) -> dict[str, Any]:
    """A state dict saved from a compiled wrapper (``_orig_mod.`` keys) for a plain module."""
    if state_dict and all(k.startswith(_PREFIX) for k in state_dict) and not any(k.startswith(_PREFIX)
                                                                                 for k in own_keys):
        return {k[len(_PREFIX):]: v for k, v in state_dict.items()}
    return state_dict
