"""An in-memory copy of training state (parameters, optimizer state, scheduler counters), restorable exactly.

``StateSnapshot(params, optimizers, objects)`` clones every parameter, every optimizer's per-parameter
state (Adam moments and step) and param-group settings (lr, weight decay, ...), and the plain and tensor
attributes of ``objects`` (an LR scheduler, a grad scaler). ``restore()`` copies them back in place, so
references held elsewhere (Megatron's main-param views, gradient buffers) stay valid, and drops optimizer
state that appeared after the snapshot. Costs one extra copy of parameters and optimizer state.
"""

from __future__ import annotations

import copy

import torch

_PLAIN = (int, float, bool, str, type(None), tuple)


def _clone(v):
    return v.detach().clone() if torch.is_tensor(v) else copy.deepcopy(v)


def _put(container: dict, key, saved) -> None:
    cur = container.get(key)
    if (
        torch.is_tensor(saved)
        and torch.is_tensor(cur)
        and cur.shape == saved.shape
        and cur.dtype == saved.dtype
    ):
        with torch.no_grad():
            cur.copy_(saved)
    else:
        container[key] = _clone(saved)


class StateSnapshot:
    def __init__(self, params, optimizers=(), objects=()):
        seen: set[int] = set()
        self._params = []
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                self._params.append((p, p.detach().clone()))
        self._optimizers = []
        for opt in optimizers:
            state = {p: {k: _clone(v) for k, v in st.items()} for p, st in opt.state.items()}
            groups = [{k: _clone(v) for k, v in g.items() if k != "params"} for g in opt.param_groups]
            self._optimizers.append((opt, state, groups))
        self._objects = []
        for obj in objects:
            attrs = {
                k: _clone(v) for k, v in vars(obj).items() if torch.is_tensor(v) or isinstance(v, _PLAIN)
            }
            self._objects.append((obj, attrs))

    def restore(self) -> None:
        with torch.no_grad():
            for p, saved in self._params:
                p.copy_(saved)
        for opt, state, groups in self._optimizers:
            for p in [p for p in opt.state if p not in state]:
                del opt.state[p]
            for p, saved in state.items():
                cur = opt.state[p]
                for k in [k for k in cur if k not in saved]:
                    del cur[k]
                for k, v in saved.items():
                    _put(cur, k, v)
            for g, saved in zip(opt.param_groups, groups, strict=True):
                for k, v in saved.items():
                    _put(g, k, v)
        for obj, attrs in self._objects:
            d = vars(obj)
            for k, v in attrs.items():
                _put(d, k, v)
