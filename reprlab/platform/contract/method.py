"""The method contract: what a method gives the platform, and the registry methods join.

A method receives a :class:`~reprlab.platform.contract.context.Context` (device, rank, world size, data,
config) and provides what it trains, what batches it wants, ``train_step``, boundary hooks,
``evaluate`` and its whole state. The platform owns the loop, DDP, checkpoints, reports and errors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn as nn

from reprlab.platform.core.config import METRIC_KEYS, MethodConfig
from reprlab.platform.core.errors import ConfigError
from reprlab.platform.core.registry import METHODS

if TYPE_CHECKING:
    from reprlab.platform.core.config import ExperimentConfig
    from reprlab.platform.contract.context import Context
    from reprlab.platform.contract.frozen import FrozenModel



def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method selectable as ``method.name: <cls.name>``."""
    return METHODS.register(cls.name)(cls)


def unwrap(obj: Any) -> Any:
    return obj.module if isinstance(obj, nn.parallel.DistributedDataParallel) else obj


class Method(ABC):
    """Base of every method. Subclasses set ``name``, ``description`` and ``Config``."""

    name: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type[MethodConfig]]

    # What the run's summary reports: ``eval.selection_metric`` defaults to ``selection_metric``
    # (on val), ``best_test`` is the epoch with the best test ``headline_metric``; metrics named in
    # ``lower_is_better`` are minimized (losses, distances). Retrieval metrics by default.
    selection_metric: ClassVar[str] = "map@r"
    headline_metric: ClassVar[str] = "recall@1"
    lower_is_better: ClassVar[frozenset[str]] = frozenset()
    # ``train.grad_accumulation > 1`` needs a method whose ``train_step`` runs its networks through
    # ``ctx.micro_batched`` and calls the ``backward`` it returns; the config check refuses others
    supports_accumulation: ClassVar[bool] = False
    # How a global batch is drawn and split over the workers: ``class_balanced`` (P classes x M
    # images, whole classes per worker: P must divide by the worker count) or ``plain``
    # (``data.batch_size`` samples, near-equal shares: any batch of one sample per worker or more)
    batching: ClassVar[Literal["class_balanced", "plain"]] = "plain"

    @classmethod
    def requirements(cls, cfg: ExperimentConfig) -> frozenset[str]:
        """What the method needs from the data set under ``cfg`` (capabilities of
        :mod:`reprlab.platform.data.catalog`: ``labels``, ``factor_pairs``, ``paired``, ``dense``,
        ...); a data set lacking one is a config error before Ray starts."""
        return frozenset()

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg.method

    @classmethod
    def metric_names(cls, cfg: ExperimentConfig) -> tuple[str, ...]:
        """The metrics ``evaluate`` returns under ``cfg`` (selection and sweep metrics are checked
        against them before Ray starts)."""
        return METRIC_KEYS

    @classmethod
    def frozen_model(cls, cfg: ExperimentConfig, attributes: dict[str, Any]) -> FrozenModel:
        """The trained network of a finished run of this method, frozen, for methods that build on
        it (IIN interprets its hidden representation). ``attributes``: the checkpoint's
        ``state_dict()["attributes"]``."""
        raise ConfigError(f"method {cls.name} does not export a frozen model to build on")

    # ---- what it trains and on what -------------------------------------------------------
    @abstractmethod
    def build(self) -> None:
        """Create networks (through ``ctx.prepare``), criteria, optimizers and schedulers."""

    @abstractmethod
    def batches(self, epoch: int) -> Iterable[Any]:
        """The batches of one epoch for this rank, on the right device."""

    @abstractmethod
    def train_step(self, batch: Any) -> dict[str, float]:
        """One optimization step; returns scalar logs (``loss`` must be among them)."""

    # ---- hooks for controllers (re-clustering, a teacher's action, schedules) --------------
    def on_epoch_start(self, epoch: int) -> None:  # noqa: B027 (optional hook)
        pass

    def on_epoch_end(self, epoch: int) -> None:  # noqa: B027
        pass

    def on_iteration_end(self, iteration: int) -> None:  # noqa: B027
        pass

    @abstractmethod
    def evaluate(self, split: str) -> dict[str, float]:
        """Flat metrics on an evaluation split (``val`` or ``test``); same on every rank."""

    def epoch_metrics(self) -> dict[str, float]:
        """Values describing the method's state after an epoch (e.g. cluster sizes), recorded as
        ``method/<name>`` in the metrics table and on the dashboard."""
        return {}

    def step_records(self) -> list[dict[str, Any]]:
        """Records of finer-grained events since the last call (e.g. each teacher step of PADS:
        reward, action statistics, distribution), kept in the epoch's row of the metrics table
        as the list column ``steps``. Values: numbers or lists of numbers."""
        return []

    def steps_per_epoch(self) -> int:
        """How many times one epoch calls ``train_step`` (default: the epoch's iterations; a
        method whose step covers several iterations, like an environment step, says so)."""
        return self.ctx.iterations_per_epoch()

    def images_per_step(self) -> int:
        """Images one ``train_step`` consumes on this rank (throughput telemetry)."""
        return 0

    # ---- state ---------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        """State beyond the attributes collected automatically (e.g. cluster assignments)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:  # noqa: B027
        pass

    def state_dict(self) -> dict[str, Any]:
        """Every module, optimizer, scheduler and generator attribute, plus ``extra_state()``."""
        state: dict[str, Any] = {}
        for key, obj in vars(self).items():
            obj = unwrap(obj)
            if isinstance(obj, (nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)):
                state[key] = obj.state_dict()
            elif isinstance(obj, torch.Generator):
                state[key] = obj.get_state()
            elif isinstance(obj, np.random.Generator):
                state[key] = obj.bit_generator.state
        return {"attributes": state, "extra": self.extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        attrs = state["attributes"]
        for key, obj in vars(self).items():
            if key not in attrs:
                continue
            obj = unwrap(obj)
            if isinstance(obj, torch.Generator):
                obj.set_state(attrs[key])
            elif isinstance(obj, np.random.Generator):
                obj.bit_generator.state = attrs[key]
            else:
                obj.load_state_dict(attrs[key])
        self.load_extra_state(state.get("extra", {}))
