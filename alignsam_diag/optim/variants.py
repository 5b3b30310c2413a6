"""The SAM family described as plain data: what each variant is called, what it does in one line,
its hyper-parameters (reference default, valid range, help text) and whether it draws an
auxiliary batch.

This module imports neither torch nor the implementations, so the command line can build
``train``'s flags and help from it at start-up, and the README's optimizer table is checked
against it (tests/test_registry_docs.py). Each :class:`Variant` names the class that implements
it (``"sam:SAM"``: class ``SAM`` in :mod:`alignsam_diag.optim.sam`), imported on first use by
:meth:`Variant.load`; the class points back at its description (``SharpnessAware.variant``),
and validates and fills in its hyper-parameters from it (:meth:`Variant.resolve`).

A hyper-parameter's name is the symbol of that variant's paper: ``lam`` is Align-SAM's trade-off λ
and Friendly-SAM's averaging λ; ``alpha`` and ``k`` are GSAM's, LookSAM's or Lookbehind's own.
Adding a variant: describe it here, implement it in its own module, test it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

from ..errors import OptionError, UserError
from ..registry import Registry

if TYPE_CHECKING:
    from .base import SharpnessAware

Value = Union[bool, int, float]


@dataclass(frozen=True)
class Hyper:
    """One hyper-parameter: ``name`` (also the flag ``--name``, with ``-`` for ``_``), the
    reference ``default`` (its type is the parameter's: bool, int or float), a one-line ``help``,
    the valid range [``low``, ``high``] (None: open) and, for a boolean, the name of the switch
    that turns it off (``off``: ``fixed_alpha`` gives ``--adaptive-alpha/--fixed-alpha``)."""

    name: str
    default: Value
    help: str
    low: Optional[float] = None
    high: Optional[float] = None
    off: Optional[str] = None

    @property
    def kind(self) -> type:
        """bool, int or float: the type of :attr:`default`."""
        return type(self.default)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def off_flag(self) -> str:
        """A boolean's switch that turns it off: ``--`` + :attr:`off` (``--no-NAME`` without one)."""
        return "--" + (self.off or f"no_{self.name}").replace("_", "-")

    @property
    def shown_default(self) -> str:
        """The default as the command line spells it: ``0.05``, ``5``, or a boolean's switch."""
        if self.kind is bool:
            return self.flag if self.default else self.off_flag
        return f"{self.default:g}"

    def check(self, value: Any, high: Optional[float] = None) -> Value:
        """``value`` as this parameter takes it (an int for an integer parameter, a bool for a
        switch) if it lies in the range (``high`` narrows it, for a bound set by another
        parameter), else a one-line :class:`UserError` naming the flag."""
        if self.kind is bool:
            return bool(value)
        if self.kind is int:
            if isinstance(value, bool) or not float(value).is_integer():
                raise OptionError(self.name, value, "must be an integer.")
            value = int(value)
        low, high = self.low, self.high if high is None else high
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = (f"in [{low}, {high}]" if low is not None and high is not None else
                      f"at least {low}" if low is not None else f"at most {high}")
            raise OptionError(self.name, value, f"must be {bounds}.")
        return value


@dataclass
class Variant:
    """A SAM-family optimizer by name.

    summary: what it does, in one line (the README's optimizer table). hyper: its own
    hyper-parameters, in the order its paper gives them. implementation: ``"module:Class"`` within
    :mod:`alignsam_diag.optim`. needs_aux: whether a step asks the closure for the auxiliary
    batch. single_pass: whether a step is one forward/backward pass (fp16 with a GradScaler works
    only then).
    """

    name: str
    summary: str
    hyper: tuple[Hyper, ...]
    implementation: str
    needs_aux: bool = False
    single_pass: bool = False

    def defaults(self) -> dict[str, Value]:
        """Every hyper-parameter with its reference default, e.g. ``{"rho": 0.05, "lam": 2.0}``."""
        return {h.name: h.default for h in self.hyper}

    def param(self, name: str) -> Hyper:
        return next(h for h in self.hyper if h.name == name)

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Value]:
        """Every hyper-parameter: the ``given`` ones checked (:meth:`Hyper.check`), the others at
        their defaults. One the variant does not take is a :class:`UserError` listing its own."""
        unknown = sorted(set(given) - {h.name for h in self.hyper})
        if unknown:
            raise UserError(f"{self.name} does not take {_flags(unknown)}; its hyper-parameters are: "
                            f"{_flags([h.name for h in self.hyper])}.")
        return {h.name: h.check(given[h.name]) if h.name in given else h.default for h in self.hyper}

    def load(self) -> type[SharpnessAware]:
        """The implementing class (importing it, and torch, on first use)."""
        module, _, cls = self.implementation.partition(":")
        return getattr(importlib.import_module(f"{__package__}.{module}"), cls)


def _flags(names: list[str]) -> str:
    return ", ".join("--" + n.replace("_", "-") for n in names) or "none"


OPTIMIZERS: Registry[Variant] = Registry("optimizer")


def hyperparameters(name: str) -> dict[str, Value]:
    """The hyper-parameters of variant ``name`` and their reference defaults, e.g.
    ``{"rho": 0.05, "lam": 2.0}`` for ``align-sam``; ``{}`` for ``sgd``."""
    return OPTIMIZERS.get(name).defaults()


def takers() -> dict[str, list[tuple[Variant, Hyper]]]:
    """Every hyper-parameter name, with the variants that take it and their own description of
    it, in registry order (``train`` makes one flag of each name)."""
    found: dict[str, list[tuple[Variant, Hyper]]] = {}
    for name in OPTIMIZERS:
        variant = OPTIMIZERS.get(name)
        for h in variant.hyper:
            found.setdefault(h.name, []).append((variant, h))
    return found


def _describe(variant: Variant) -> None:
    OPTIMIZERS.register(variant.name)(variant)


# -- the family (DESIGN §5: defaults of the reference implementations) -----------------------

RHO = Hyper("rho", 0.05, "perturbation radius ρ", low=0.0)
ASAM_RHO = Hyper("rho", 0.5, "radius ρ in ASAM's normalised ball (about 10× SAM's)", low=0.0)
ETA = Hyper("eta", 0.01, "ASAM's η, keeps T = |θ| + η positive", low=0.0)
ALIGN_LAM = Hyper("lam", 2.0, "Align-SAM's trade-off λ between the train and the auxiliary term", low=0.0)

_describe(Variant(
    "sgd", "the base optimizer alone (SGD, or AdamW with --base adamw): one pass per step",
    hyper=(), implementation="base:Plain", single_pass=True))
_describe(Variant(
    "sam", "SAM (Foret et al. 2021): steps with ∇L(θ + ρ g/‖g‖)",
    hyper=(RHO,), implementation="sam:SAM"))
_describe(Variant(
    "asam", "Adaptive SAM (Kwon et al. 2021): SAM in the ball scaled by T = |θ| + η on weights",
    hyper=(ASAM_RHO, ETA), implementation="sam:ASAM"))
_describe(Variant(
    "align-sam", "Align-SAM (the paper's Algorithm 1): steps with ∇L(θ + ρ(λ ĝ_t − ĝ_a)), ĝ_a the "
    "auxiliary batch's normalised gradient at its own SAM point",
    hyper=(RHO, ALIGN_LAM), implementation="align:AlignSAM", needs_aux=True))
_describe(Variant(
    "align-asam", "Align-SAM with both perturbations in ASAM's ball",
    hyper=(ASAM_RHO, ALIGN_LAM, ETA), implementation="align:AlignASAM", needs_aux=True))
_describe(Variant(
    "gsam", "GSAM (Zhuang et al. 2022), surrogate-gap guided: steps with g_s − α g⊥; ρ follows the LR",
    hyper=(Hyper("rho", 0.05, "GSAM's ρ_max, the radius at the peak learning rate", low=0.0),
           Hyper("rho_min", 0.0, "GSAM's radius at learning rate 0 (at most --rho)", low=0.0),
           Hyper("alpha", 0.4, "GSAM's α, weight of the orthogonal correction (0 is SAM)", low=0.0, high=1.0)),
    implementation="gsam:GSAM"))
_describe(Variant(
    "fsam", "Friendly-SAM (Li et al. 2024): ascent along g − σ m, m a running average of gradients",
    hyper=(RHO,
           Hyper("sigma", 1.0, "Friendly-SAM's σ, how much of the gradient average to remove (0 is SAM)", low=0.0),
           Hyper("lam", 0.9, "Friendly-SAM's λ, decay of the gradient average", low=0.0, high=1.0)),
    implementation="averaged:FriendlySAM"))
_describe(Variant(
    "vasso", "VaSSO (Li & Giannakis 2023): ascent along a running average d of gradients",
    hyper=(RHO, Hyper("theta", 0.9, "VaSSO's θ, weight of the newest gradient (1 is SAM)", low=0.0, high=1.0)),
    implementation="averaged:VaSSO"))
_describe(Variant(
    "looksam", "LookSAM (Liu et al. 2022): SAM's extra pass every k steps, its orthogonal part reused "
    "in between",
    hyper=(RHO,
           Hyper("k", 5, "LookSAM's k: SAM's extra pass every k steps (1 is SAM)", low=1),
           Hyper("alpha", 0.7, "LookSAM's α, weight of the reused orthogonal part", low=0.0)),
    implementation="looksam:LookSAM"))
_describe(Variant(
    "lookbehind-sam", "Lookbehind-SAM (Mordido et al. 2024): k ascent steps, then the slow "
    "weights move α of the way to the fast ones (--adaptive-alpha: α per tensor)",
    hyper=(RHO,
           Hyper("k", 2, "Lookbehind-SAM's k, ascent steps per batch", low=1),
           Hyper("alpha", 0.5, "Lookbehind-SAM's α, step of the slow weights towards the fast ones",
                 low=0.0, high=1.0),
           Hyper("adaptive_alpha", False, "Lookbehind-SAM's α chosen per tensor from the first and last fast step",
                 off="fixed_alpha")),
    implementation="lookbehind:LookbehindSAM"))
