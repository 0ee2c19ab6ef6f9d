"""Model wrappers: what certification samples is ``classifier(wrapper(x + noise))``.

A wrapper maps inputs to inputs of the same shape in front of a classifier
(a denoiser, a fixed preprocessing). The smoothed classifier is then that of
the composition, and Cohen et al.'s guarantee holds unchanged: the wrapper
is part of the base classifier. A wrapper lives in a workdir of its own
(``model.json`` with ``"wrapper": KIND``, and an orbax checkpoint of its
variables), read by the one loader (`jaxsmooth.loader.load_model`), and is
a registered kind::

    wrappers.register(wrappers.WrapperKind(name="affine", build=build_affine))

where ``build(info) -> models.Model`` gives, from the wrapper's model.json,
its pure ``apply(params, model_state, x, *, train) -> (y, model_state)``
(y: the shape of x) and the structure of its variables (arrays or
`jax.ShapeDtypeStruct` leaves) that the checkpoint is read into. The package
registers one kind, ``denoiser`` (DnCNN, `dncnn.py`; docs/denoised.md), in
`jaxsmooth.models`; the identity is "no wrapper".
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from jaxsmooth.errors import UserError

WRAPPER_KEY = "wrapper"  # the model.json entry that makes a workdir a wrapper's, naming its kind


@dataclasses.dataclass(frozen=True)
class WrapperKind:
    """One kind of wrapper.

    Attributes:
      name: the kind, as a wrapper workdir's model.json names it (``"wrapper": name``).
      build: ``(info) -> models.Model``: its apply and variable structure from model.json (module docstring).
      reference: the paper or source it follows.
    """

    name: str
    build: Callable[[Mapping[str, Any]], Any]
    reference: str = ""


REGISTRY: dict[str, WrapperKind] = {}


def register(kind: WrapperKind) -> WrapperKind:
    """Adds `kind` to `REGISTRY` (replacing one of the same name); returns it."""
    if not kind.name or not kind.name.isidentifier():
        raise ValueError(f"a wrapper kind is named by an identifier, got {kind.name!r}")
    REGISTRY[kind.name] = kind
    return kind


def get(name: str, field: str = "wrapper") -> WrapperKind:
    """The registered kind `name`, or a `UserError` naming `field` and the kinds there are."""
    if name not in REGISTRY:
        known = ", ".join(REGISTRY) or "none registered"
        raise UserError(field, f"unknown wrapper kind {name!r}; known: {known}")
    return REGISTRY[name]


@dataclasses.dataclass(frozen=True)
class Wrapped:
    """``apply`` of ``classifier(wrapper(x))``: variables ``{"wrapper": ..., "classifier": ...}`` for both trees.

    Frozen and made of two hashable applies, so equal compositions hash
    equally and a jitted function of one compiles once.
    """

    wrapper: Callable
    classifier: Callable

    def __call__(self, params, model_state, x, *, train: bool):
        y, wrapper_state = self.wrapper(params["wrapper"], model_state["wrapper"], x, train=train)
        logits, classifier_state = self.classifier(params["classifier"], model_state["classifier"], y, train=train)
        return logits, {"wrapper": wrapper_state, "classifier": classifier_state}


def wrap(wrapper, classifier):
    """The `models.Model` of ``classifier(wrapper(x))`` from the two `models.Model`s."""
    from jaxsmooth import models

    return models.Model(Wrapped(wrapper.apply, classifier.apply),
                        {"wrapper": wrapper.params, "classifier": classifier.params},
                        {"wrapper": wrapper.model_state, "classifier": classifier.model_state})
