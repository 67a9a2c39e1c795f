"""The PADS learner-plus-sampling loop as a Gymnasium environment (spec: PADS, CVPR 2020).

``reset`` (re)starts a learner and validates it; ``step(action)`` applies one multiplier per
distance bin to the negative-sampling distribution, trains the learner ``iterations_per_step``
iterations under it, validates, and returns the new state, the reward (the sign of the change of
the reward metric), ``terminated`` (the learner's training budget is spent) and ``truncated``
(never: the episode is the training run).

Observation layout (float32, see :meth:`SamplingTeacherEnv.layout`), with m state metrics:

* ``history``: the validation metrics of the last ``history`` teacher steps, oldest first
  (``history x m``; at reset every slot holds the initial validation);
* ``averages``: running means of the metrics over the last w steps for each w in ``windows``;
* ``distribution``: the current distribution over the bins;
* ``progress``: the fraction of the learner's training budget done.

With the spec's settings (m = 7, 20 steps, 4 windows, 29 bins) that is 7 x 24 + 29 + 1 = 198.
Any object with ``reset``/``train``/``validate``/``progress`` (:class:`Learner`) can be wrapped;
:class:`VectorLearner` is a cheap one on synthetic vectors (the default of
``gymnasium.make("reprlab/SamplingTeacher-v0")``); the ``pads`` method wraps a platform learner.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Literal, Protocol

import gymnasium as gym
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from reprlab.platform.dml.binned_sampling import bin_centres, bin_edges, initial_distribution, update_distribution

#: Upper bound of each metric a state may hold (embeddings are unit vectors: distances <= 2).
METRIC_BOUNDS: dict[str, float] = {
    **{f"recall@{k}": 1.0 for k in (1, 2, 4, 8, 16, 32)},
    "nmi": 1.0,
    "f1": 1.0,
    "p@1": 1.0,
    "map@r": 1.0,
    "intra_distance": 2.0,
    "inter_distance": 2.0,
}
SPEC_METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "intra_distance", "inter_distance", "nmi")


class TeacherEnvSettings(BaseModel):
    """Sampling distribution, action and state of the environment (PADS' values by default)."""

    model_config = ConfigDict(extra="forbid")

    bins: int = Field(29, ge=2, description="distance bins (support points = bins + 1)")
    support_low: float = Field(0.1, ge=0, description="lowest support point")
    support_high: float = Field(1.4, gt=0, description="highest support point")
    init_low: float = Field(0.3, ge=0, description="initial mass on bins with centre in [init_low, init_high]")
    init_high: float = Field(0.7, gt=0)
    init_floor: float = Field(1e-10, ge=0, description="initial weight of the other bins (before normalizing)")
    multipliers: tuple[float, ...] = Field((0.8, 1.0, 1.25), min_length=2, description="one action per multiplier")
    clip_low: float = Field(1e-25, gt=0)
    clip_high: float = Field(1e25, gt=0)
    out_of_range: Literal["drop", "merge"] = Field(
        "drop", description="distances outside the support: never drawn, or merged into the end bins")
    self_regularization: bool = Field(
        True, description="the anchor's own class may be drawn as a negative (reference default)")
    iterations_per_step: int = Field(30, ge=1, description="M: learner iterations per teacher step")
    history: int = Field(20, ge=1, description="teacher steps of validation metrics in the state")
    windows: tuple[int, ...] = Field((2, 8, 16, 32), description="running-average windows (teacher steps)")
    state_metrics: tuple[str, ...] = Field(SPEC_METRICS, min_length=1)
    reward_metrics: tuple[str, ...] = Field(
        ("recall@1",), min_length=1, description="reward: sign of the change of their mean")

    @model_validator(mode="after")
    def _consistent(self) -> TeacherEnvSettings:
        if self.support_high <= self.support_low:
            raise ValueError(f"support_high ({self.support_high}) must exceed support_low ({self.support_low})")
        if 1.0 not in self.multipliers:
            raise ValueError(f"multipliers {list(self.multipliers)} need 1.0 (the 'keep' action)")
        if any(m <= 0 for m in self.multipliers):
            raise ValueError(f"multipliers {list(self.multipliers)} must be positive")
        if any(w < 1 for w in self.windows):
            raise ValueError(f"windows {list(self.windows)} must be >= 1")
        unknown = [m for m in (*self.state_metrics, *self.reward_metrics) if m not in METRIC_BOUNDS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {sorted(METRIC_BOUNDS)}")
        centres = bin_centres(bin_edges(self.support_low, self.support_high, self.bins))
        if not ((centres >= self.init_low) & (centres <= self.init_high)).any():
            raise ValueError(f"no bin centre lies in [init_low, init_high] = [{self.init_low}, {self.init_high}]")
        return self

    @property
    def edges(self) -> np.ndarray:
        return bin_edges(self.support_low, self.support_high, self.bins)

    def initial(self) -> np.ndarray:
        return initial_distribution(self.edges, self.init_low, self.init_high, self.init_floor)

    @property
    def keep_action(self) -> int:
        return self.multipliers.index(1.0)

    @property
    def observation_size(self) -> int:
        m = len(self.state_metrics)
        return m * (self.history + len(self.windows)) + self.bins + 1


class Learner(Protocol):
    """What the environment trains. ``train`` returns logs with at least ``loss``; ``validate``
    returns at least the state and reward metrics; ``progress`` is in [0, 1]."""

    def reset(self, seed: int | None) -> None: ...

    def train(self, iterations: int, distribution: np.ndarray) -> dict[str, float]: ...

    def validate(self) -> dict[str, float]: ...

    @property
    def progress(self) -> float: ...


class SamplingTeacherEnv(gym.Env):
    """PADS' teacher environment around a :class:`Learner` (see the module docstring)."""

    metadata = {"render_modes": []}

    def __init__(self, learner: Learner | None = None, settings: TeacherEnvSettings | dict | None = None,
                 reset_learner: bool = True) -> None:
        """``reset_learner=False``: ``reset`` validates but does not restart the learner (a
        platform run whose learner was just built or restored from a checkpoint)."""
        self.settings = settings if isinstance(settings, TeacherEnvSettings) else TeacherEnvSettings(**(settings or {}))
        self.learner = learner if learner is not None else VectorLearner()
        self.reset_learner = reset_learner
        s = self.settings
        self.multipliers = np.asarray(s.multipliers, np.float64)
        self.action_space = gym.spaces.MultiDiscrete([len(s.multipliers)] * s.bins)
        slots = s.history + len(s.windows)
        metric_high = np.array([METRIC_BOUNDS[m] for m in s.state_metrics], np.float32)
        high = np.concatenate([np.tile(metric_high, slots), np.ones(s.bins + 1, np.float32)])
        self.observation_space = gym.spaces.Box(np.zeros_like(high), high, dtype=np.float32)
        self.distribution = s.initial()
        self._metrics: deque[np.ndarray] = deque(maxlen=max(s.history, *s.windows))
        self._reward_value = float("nan")
        self.steps = 0

    # ---- layout -----------------------------------------------------------------------------
    def layout(self) -> dict[str, slice]:
        s = self.settings
        m = len(s.state_metrics)
        a, b = m * s.history, m * (s.history + len(s.windows))
        return {"history": slice(0, a), "averages": slice(a, b), "distribution": slice(b, b + s.bins),
                "progress": slice(b + s.bins, b + s.bins + 1)}

    def _observe(self) -> np.ndarray:
        s = self.settings
        past = np.stack(self._metrics)  # oldest first
        history = past[-s.history:]
        averages = np.stack([past[-w:].mean(0) for w in s.windows])
        progress = np.clip([self.learner.progress], 0.0, 1.0)
        obs = np.concatenate([history.ravel(), averages.ravel(), self.distribution, progress]).astype(np.float32)
        return np.clip(obs, self.observation_space.low, self.observation_space.high)

    def _record(self, metrics: dict[str, float]) -> tuple[np.ndarray, float]:
        s = self.settings
        missing = [k for k in (*s.state_metrics, *s.reward_metrics) if k not in metrics]
        if missing:
            raise KeyError(f"the learner's validation lacks {missing}")
        row = np.array([metrics[k] for k in s.state_metrics], np.float64)
        return row, float(np.mean([metrics[k] for k in s.reward_metrics]))

    # ---- Gymnasium API ------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if self.reset_learner:
            self.learner.reset(seed)
        self.distribution = self.settings.initial()
        metrics = self.learner.validate()
        row, self._reward_value = self._record(metrics)
        self._metrics.clear()
        self._metrics.extend([row] * self._metrics.maxlen)
        self.steps = 0
        return self._observe(), {"metrics": metrics, "distribution": self.distribution.copy()}

    def step(self, action):
        action = np.asarray(action, np.int64)
        if action.shape != (self.settings.bins,) or not self.action_space.contains(action):
            raise ValueError(f"action must be {self.settings.bins} ints in [0, {len(self.multipliers) - 1}], "
                             f"got shape {action.shape}")
        s = self.settings
        self.distribution = update_distribution(self.distribution, action, self.multipliers, (s.clip_low, s.clip_high))
        logs = self.learner.train(s.iterations_per_step, self.distribution)
        metrics = self.learner.validate()
        row, value = self._record(metrics)
        reward = float(np.sign(value - self._reward_value))
        self._reward_value = value
        self._metrics.append(row)
        self.steps += 1
        terminated = bool(self.learner.progress >= 1.0)
        info = {"metrics": metrics, "train": logs, "distribution": self.distribution.copy(), "reward_value": value}
        return self._observe(), reward, terminated, False, info

    # ---- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the episode (the learner's state is its owner's)."""
        return {"distribution": self.distribution.tolist(), "metrics": [r.tolist() for r in self._metrics],
                "reward_value": self._reward_value, "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.distribution = np.asarray(state["distribution"], np.float64)
        self._metrics.clear()
        self._metrics.extend(np.asarray(r, np.float64) for r in state["metrics"])
        self._reward_value = float(state["reward_value"])
        self.steps = int(state["steps"])


class VectorLearner:
    """A cheap, real learner: an MLP embeds synthetic class-structured vectors (class centroids
    plus shared nuisance directions plus noise) and trains with the margin loss on PADS'
    binned-distribution triplets. Validation: a per-class hold-out. Deterministic given the seed."""

    def __init__(self, classes: int = 16, per_class: int = 24, dim: int = 32, embed_dim: int = 16,
                 hidden: int = 64, classes_per_batch: int = 8, samples_per_class: int = 4,
                 budget: int = 200, lr: float = 1e-2, holdout: float = 0.25, settings: TeacherEnvSettings | None = None,
                 seed: int = 0) -> None:
        self.shape = (classes, per_class, dim, embed_dim, hidden)
        self.batch = (classes_per_batch, samples_per_class)
        self.budget, self.lr, self.holdout = budget, lr, holdout
        self.settings = settings or TeacherEnvSettings()
        self.reset(seed)

    def reset(self, seed: int | None) -> None:
        import torch

        from reprlab.platform.dml import MarginLoss

        classes, per_class, dim, embed_dim, hidden = self.shape
        rng = np.random.default_rng(0 if seed is None else seed)
        centres = rng.normal(size=(classes, dim))
        nuisance = rng.normal(size=(4, dim)) * 2.0
        x = (np.repeat(centres, per_class, 0) + rng.normal(size=(classes * per_class, 4)) @ nuisance
             + rng.normal(scale=1.5, size=(classes * per_class, dim)))
        y = np.repeat(np.arange(classes), per_class)
        val = (np.arange(classes * per_class) % per_class) < int(round(self.holdout * per_class))
        self.x_train, self.y_train = torch.tensor(x[~val], dtype=torch.float32), torch.tensor(y[~val])
        self.by_class = np.arange(len(self.y_train)).reshape(classes, -1)  # train rows, one row per class
        self.x_val, self.y_val = x[val].astype(np.float32), y[val]
        self.generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        self.rng = np.random.default_rng(rng.integers(2**31))
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(int(rng.integers(2**31)))
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, embed_dim))
        torch.random.set_rng_state(torch_state)
        self.criterion = MarginLoss(classes, beta=1.2)
        self.optimizer = torch.optim.Adam([*self.net.parameters(), *self.criterion.parameters()], lr=self.lr)
        self.iterations = 0

    @property
    def progress(self) -> float:
        return min(1.0, self.iterations / self.budget)

    def _embed(self, x):
        import torch.nn.functional as F

        return F.normalize(self.net(x), dim=1)

    def train(self, iterations: int, distribution: np.ndarray) -> dict[str, float]:
        from reprlab.platform.dml.binned_sampling import binned_triplets

        p, m = self.batch
        classes, per_class = self.by_class.shape
        losses = []
        for _ in range(iterations):
            chosen = self.rng.choice(classes, p, replace=False)
            picks = np.argsort(self.rng.random((p, per_class)), axis=1)[:, :m]  # m distinct per class
            idx = np.take_along_axis(self.by_class[chosen], picks, 1).ravel()
            emb, labels = self._embed(self.x_train[idx]), self.y_train[idx]
            triplets = binned_triplets(emb, labels, distribution, self.settings.edges, self.generator,
                                       self_regularization=self.settings.self_regularization,
                                       out_of_range=self.settings.out_of_range)
            loss = self.criterion(emb, labels, triplets)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
            self.iterations += 1
        return {"loss": float(np.mean(losses)) if losses else 0.0}

    def validate(self) -> dict[str, float]:
        import torch

        from reprlab.platform.eval.retrieval import class_distances, compute_metrics

        with torch.no_grad():
            emb = self._embed(torch.from_numpy(self.x_val)).numpy()
        metrics = compute_metrics(emb, self.y_val, kmeans_niter=5, use_gpu=False)
        return {**metrics, **class_distances(emb, self.y_val)}
