"""PADS: Policy-Adapted Sampling for Visual Similarity Learning (Roth, Milbich, Ommer, CVPR 2020).

The learner is the margin-loss embedding network; its negatives come from a distribution over
anchor-negative distance bins (:mod:`reprlab.platform.dml.binned_sampling`). The learner plus
sampling loop is the Gymnasium environment :class:`~reprlab.envs.SamplingTeacherEnv`: one
``train_step`` of this method is one environment step (M learner iterations, then validation on the
per-class hold-out). The teacher (:class:`~reprlab.platform.rl.teacher.Teacher`, PPO by default) chooses a
multiplier per bin from the environment's state and learns from the reward online.

With several Ray Train workers every rank steps its own copy of the environment in lock-step: the
learner's iterations are collective (gathered batch, DDP), validation metrics are identical on all
ranks, the teacher acts on rank 0 and its action is broadcast. Each step checks that every rank
holds the same distribution and reward (``lockstep_diff`` in the step records).
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from reprlab.envs.sampling_teacher import SamplingTeacherEnv, TeacherEnvSettings
from reprlab.platform.dml.binned_sampling import bin_centres, binned_triplets
from reprlab.platform.dml.method import EmbeddingMethod, MarginSettings
from reprlab.platform.core.errors import ConfigError, ReprlabError
from reprlab.platform.contract.method import register_method
from reprlab.platform.rl.teacher import Teacher, TeacherSettings

PLOT_FILE = "sampling_distribution.png"


class PADSConfig(TeacherEnvSettings, MarginSettings):
    name: Literal["pads"] = "pads"
    teacher: TeacherSettings = Field(default_factory=TeacherSettings)

    def check_against(self, cfg) -> None:
        if cfg.data.validation.protocol == "none":
            raise ConfigError("method.name=pads: the teacher's reward needs a validation split; "
                              "set data.validation.protocol to holdout (the paper's per-class hold-out)")


class _PlatformLearner:
    """The :class:`~reprlab.envs.Learner` the environment sees: trains the method's network on the
    batches the platform hands the current step, validates on the ``val`` split."""

    def __init__(self, method: PADS, total_iterations: int) -> None:
        self.method, self.total = method, total_iterations
        self.iterations = 0
        self._batches: Iterator = iter(())

    def feed(self, batches: Iterable) -> None:
        self._batches = iter(batches)

    def reset(self, seed: int | None) -> None:  # the platform builds/restores the network itself
        pass

    @property
    def progress(self) -> float:
        return min(1.0, self.iterations / self.total)

    def train(self, iterations: int, distribution: np.ndarray) -> dict[str, float]:
        sums: dict[str, float] = {}
        n = 0
        for batch in itertools.islice(self._batches, iterations):
            for k, v in self.method.learner_step(batch, distribution).items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
        self.iterations += n
        return {k: v / max(n, 1) for k, v in sums.items()} | {"iterations": float(n)}

    def validate(self) -> dict[str, float]:
        return self.method.validate()


@register_method
class PADS(EmbeddingMethod):
    name = "pads"
    description = "PADS (CVPR 2020): an RL teacher adapts the negative-sampling distribution (Gymnasium env)"
    Config = PADSConfig
    supports_accumulation = False  # the learner's iterations (learner_step) run the network directly

    def build(self) -> None:
        self.build_margin_learner()
        env_settings = TeacherEnvSettings(**{k: getattr(self.cfg, k) for k in TeacherEnvSettings.model_fields})
        self.edges = env_settings.edges
        total = self.ctx.cfg.train.epochs * self.ctx.iterations_per_epoch()
        self.learner = _PlatformLearner(self, total)
        self.env = SamplingTeacherEnv(self.learner, env_settings, reset_learner=False)
        self.agent = None
        if self.cfg.teacher.algorithm != "none":
            self.agent = Teacher(self.env.observation_space.shape[0], env_settings.bins, len(env_settings.multipliers),
                                 self.cfg.teacher, seed=self.ctx.seed(0x7EAC))
        self.obs: np.ndarray | None = None
        self.trace: list[list[float]] = []  # [iteration, *distribution] after every teacher step
        self.pending: list[dict[str, Any]] = []
        self._last_validation: tuple[int, dict[str, float]] | None = None

    # ---- the learner's iteration --------------------------------------------------------------
    def learner_step(self, batch, distribution: np.ndarray) -> dict[str, float]:
        x, y = batch
        emb = self.ctx.gather(self.net(x)["embed"])
        labels = self.ctx.gather(y)
        triplets = binned_triplets(emb, labels, distribution, self.edges, self.mining,
                                   self_regularization=self.cfg.self_regularization,
                                   out_of_range=self.cfg.out_of_range)
        loss = self.criterion(emb, labels, tuple(t.to(emb.device) for t in triplets))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "triplets": float(len(triplets[0]))}

    def validate(self) -> dict[str, float]:
        self.net.eval()
        try:
            metrics = self.evaluate_embeddings(self.embed_for_eval, "val", class_geometry=True)
        finally:
            self.net.train()
        self._last_validation = (self.learner.iterations, metrics)
        return metrics

    def evaluate(self, split: str) -> dict[str, float]:
        """The epoch's ``val`` metrics are the last teacher step's validation when the network has
        not trained since (the usual case: an epoch ends with a step), so it is not computed twice."""
        if split == "val" and self._last_validation and self._last_validation[0] == self.learner.iterations:
            return {k: v for k, v in self._last_validation[1].items() if k not in ("intra_distance", "inter_distance")}
        return super().evaluate(split)

    # ---- the platform loop: one train_step = one environment step -------------------------------
    def steps_per_epoch(self) -> int:
        return math.ceil(self.ctx.iterations_per_epoch() / self.cfg.iterations_per_step)

    def images_per_step(self) -> float:
        return super().images_per_step() * self.ctx.iterations_per_epoch() / self.steps_per_epoch()

    def batches(self, epoch: int) -> Iterable[Iterator]:
        batches = iter(super().batches(epoch))
        total, m = self.ctx.iterations_per_epoch(), self.cfg.iterations_per_step
        for start in range(0, total, m):
            yield itertools.islice(batches, min(m, total - start))

    def train_step(self, chunk) -> dict[str, float]:
        if self.obs is None:  # the episode starts with the run
            self.obs, _ = self.env.reset(seed=self.ctx.cfg.experiment.seed)
        self.learner.feed(chunk)
        if self.agent is None:
            action = np.full(self.cfg.bins, self.env.settings.keep_action)
        else:
            action = self.ctx.broadcast(self.agent.act(self.obs) if self.ctx.is_main else None)
        obs, reward, terminated, _, info = self.env.step(action)
        teacher_logs = {}
        if self.agent is not None and self.ctx.is_main:
            teacher_logs = self.agent.update(self.obs, action, reward, obs, terminated)
        self.obs = obs
        diff = self._lockstep_diff(reward, info["reward_value"])
        if diff > 1e-6:
            raise ReprlabError(f"pads: ranks diverged at iteration {self.learner.iterations} "
                               f"(distribution/reward differ by {diff:.3g})")
        self._record(action, reward, info, teacher_logs, diff)
        train = info["train"]
        return {"loss": train["loss"], "triplets": train.get("triplets", 0.0), "reward": reward,
                "reward_value": info["reward_value"]}

    def _lockstep_diff(self, reward: float, value: float) -> float:
        """Largest difference between ranks of what must agree after a teacher step: the
        network's weights (a fingerprint: they diverge if a rank skips or repeats an update),
        the distribution, the reward and its metric, the iteration count."""
        if self.ctx.world_size == 1:
            return 0.0
        mine = torch.cat([self.ctx.fingerprint(self.model),
                          torch.tensor([*self.env.distribution, reward, value, float(self.learner.iterations)],
                                       dtype=torch.float64)])
        return self.ctx.rank_spread(mine)

    def _record(self, action, reward: float, info: dict, teacher_logs: dict[str, float], diff: float) -> None:
        d = self.env.distribution
        counts = np.bincount(np.asarray(action), minlength=len(self.cfg.multipliers)) / len(action)
        centres = bin_centres(self.edges)
        record = {
            "iteration": float(self.learner.iterations),
            "reward": float(reward),
            "reward_value": float(info["reward_value"]),
            "entropy": distribution_entropy(d),
            "mean_distance": float((d * centres).sum()),
            "action_fractions": counts.tolist(),
            "distribution": d.tolist(),
            "lockstep_diff": diff,
            **{f"val/{k}": float(v) for k, v in info["metrics"].items()},
            **{f"teacher/{k}": float(v) for k, v in teacher_logs.items()},
        }
        self.pending.append(record)
        self.trace.append([record["iteration"], *d.tolist()])

    # ---- per-epoch outputs --------------------------------------------------------------------
    def on_epoch_end(self, epoch: int) -> None:
        self.scheduler.step()
        if self.ctx.is_main and self.trace:
            self.ctx.write_artifact(PLOT_FILE, distribution_heatmap(np.asarray(self.trace), self.edges))

    def step_records(self) -> list[dict[str, Any]]:
        records, self.pending = self.pending, []
        return records

    def epoch_metrics(self) -> dict[str, float]:
        d = self.env.distribution
        recent = [r["reward"] for r in self.pending]
        out = {"distribution_entropy": distribution_entropy(d),
               "distribution_mean_distance": float((d * bin_centres(self.edges)).sum()),
               "teacher_steps": float(self.env.steps)}
        if recent:
            out["reward_mean"] = float(np.mean(recent))
        return out

    # ---- state ----------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"env": self.env.state_dict(), "teacher": None if self.agent is None else self.agent.state_dict(),
                "obs": None if self.obs is None else self.obs.tolist(), "trace": self.trace,
                "learner_iterations": self.learner.iterations}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.env.load_state_dict(state["env"])
        if self.agent is not None and state.get("teacher") is not None:
            self.agent.load_state_dict(state["teacher"])
        self.obs = None if state["obs"] is None else np.asarray(state["obs"], np.float32)
        self.trace = [list(r) for r in state["trace"]]
        self.learner.iterations = int(state["learner_iterations"])


def distribution_entropy(d: np.ndarray) -> float:
    """Shannon entropy in nats (0 for a point mass, log(bins) for uniform)."""
    p = np.asarray(d, np.float64)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def distribution_heatmap(trace: np.ndarray, edges: np.ndarray) -> bytes:
    """PNG of the distribution over training: distance bins (y) x teacher steps (x), log10 scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iterations, probs = trace[:, 0], trace[:, 1:]
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=110)
    image = ax.imshow(np.log10(np.clip(probs.T, 1e-12, 1.0)), origin="lower", aspect="auto", cmap="viridis",
                      vmin=-12, vmax=0, extent=(0, len(iterations), edges[0], edges[-1]), interpolation="nearest")
    ticks = np.linspace(0, len(iterations) - 1, min(6, len(iterations))).astype(int)
    ax.set_xticks(ticks + 0.5, [f"{int(iterations[t])}" for t in ticks])
    ax.set_xlabel("learner iteration (one column per teacher step)")
    ax.set_ylabel("anchor-negative distance")
    ax.set_title("PADS sampling distribution")
    fig.colorbar(image, ax=ax, label="log10 probability")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
