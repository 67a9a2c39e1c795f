"""A teacher agent for environments with a Box observation and a MultiDiscrete action of equal
choices per dimension (PADS' teacher: a policy over per-bin multipliers, trained online while the
learner trains). It knows no environment; :func:`run_episode` drives any through the Gymnasium API.

The policy is an MLP (128-128, ReLU) with, per bin, a softmax over the multiplier choices, and a
value head. After every environment step it learns from that one transition (s, a, r, s'):

* ``ppo`` (default): advantage A = r + gamma V(s') - V(s) (actor-critic; V(s') = 0 at the end),
  clipped surrogate with the probability ratio of the current policy to an old policy that is
  refreshed every ``refresh_every`` updates. The ratio is taken per bin and the surrogate
  averaged over bins (a product of 29 per-bin ratios would leave the clip range at once). The
  critic regresses r + gamma V(s') (target detached).
* ``reinforce``: -(r - b) log pi(a|s) with b a moving average of the rewards.

The teacher only needs observations, actions and rewards: :func:`run_episode` drives any
Gymnasium environment with it through ``reset``/``step``.
"""

from __future__ import annotations

from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field


class TeacherSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["ppo", "reinforce", "none"] = Field(
        "ppo", description="none: no teacher, the distribution stays at its initial value (a baseline)")
    hidden: tuple[int, ...] = Field((128, 128), min_length=1)
    lr: float = Field(0.01, gt=0, description="Adam learning rate of the policy")
    gamma: float = Field(0.99, ge=0, le=1)
    clip: float = Field(0.2, gt=0, description="PPO ratio clip")
    refresh_every: int = Field(5, ge=1, description="PPO: updates between old-policy refreshes")
    value_weight: float = Field(1.0, ge=0, description="weight of the critic's loss")
    baseline_decay: float = Field(0.9, ge=0, lt=1, description="REINFORCE: moving-average baseline decay")


class PolicyNet(nn.Module):
    """Observation -> (logits per bin and choice, state value)."""

    def __init__(self, obs_dim: int, bins: int, choices: int, hidden: tuple[int, ...] = (128, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.actor = nn.Linear(width, bins * choices)
        self.critic = nn.Linear(width, 1)
        self.bins, self.choices = bins, choices

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(obs)
        return self.actor(h).view(-1, self.bins, self.choices), self.critic(h)[:, 0]


def _log_probs(logits: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """log pi(a_i | s) per bin: (batch, bins)."""
    return torch.log_softmax(logits, -1).gather(-1, action.unsqueeze(-1)).squeeze(-1)


class Teacher:
    """Acts on observations of a :class:`~reprlab.envs.SamplingTeacherEnv` and
    learns from each transition. Its whole state (policy, old policy, optimizer, sampling
    generator, counters) is in :meth:`state_dict`."""

    def __init__(self, obs_dim: int, bins: int, choices: int, settings: TeacherSettings | None = None,
                 seed: int = 0) -> None:
        self.settings = s = settings or TeacherSettings()
        if s.algorithm == "none":
            raise ValueError("a teacher with algorithm 'none' cannot act")
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.policy = PolicyNet(obs_dim, bins, choices, s.hidden)
        torch.random.set_rng_state(torch_state)
        self.old_policy = PolicyNet(obs_dim, bins, choices, s.hidden)
        self.old_policy.load_state_dict(self.policy.state_dict())
        self.old_policy.requires_grad_(False)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=s.lr)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self.updates = 0
        self.baseline = 0.0

    @staticmethod
    def _obs(obs) -> torch.Tensor:
        return torch.as_tensor(np.asarray(obs), dtype=torch.float32).reshape(1, -1)

    @torch.no_grad()
    def act(self, obs, deterministic: bool = False) -> np.ndarray:
        logits, _ = self.policy(self._obs(obs))
        if deterministic:
            return logits[0].argmax(-1).numpy()
        return torch.multinomial(torch.softmax(logits[0], -1), 1, generator=self.generator)[:, 0].numpy()

    @torch.no_grad()
    def probabilities(self, obs) -> np.ndarray:
        """pi(. | s) per bin: (bins, choices)."""
        return torch.softmax(self.policy(self._obs(obs))[0][0], -1).numpy()

    def update(self, obs, action, reward: float, next_obs, terminated: bool) -> dict[str, float]:
        """One learning step on the transition (s, a, r, s')."""
        s = self.settings
        o, o2 = self._obs(obs), self._obs(next_obs)
        a = torch.as_tensor(np.asarray(action), dtype=torch.long).reshape(1, -1)
        logits, value = self.policy(o)
        logp = _log_probs(logits, a)
        with torch.no_grad():
            next_value = torch.zeros(1) if terminated else self.policy(o2)[1]
            target = reward + s.gamma * next_value
            advantage = target - value
        if s.algorithm == "ppo":
            with torch.no_grad():
                old_logp = _log_probs(self.old_policy(o)[0], a)
            ratio = (logp - old_logp).exp()
            surrogate = torch.min(ratio * advantage[:, None], ratio.clamp(1 - s.clip, 1 + s.clip) * advantage[:, None])
            policy_loss = -surrogate.mean()
            value_loss = (target - value).pow(2).mean()
            loss = policy_loss + s.value_weight * value_loss
            logs = {"ratio": ratio.mean().item()}
        else:
            self.baseline = s.baseline_decay * self.baseline + (1 - s.baseline_decay) * float(reward)
            advantage = torch.full((1,), float(reward) - self.baseline)
            policy_loss = -(advantage[:, None] * logp).sum(1).mean()
            value_loss = torch.zeros(())
            loss = policy_loss
            logs = {}
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.updates += 1
        if s.algorithm == "ppo" and self.updates % s.refresh_every == 0:
            self.old_policy.load_state_dict(self.policy.state_dict())
        return {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
                "advantage": advantage.mean().item(), "value": value.mean().item(), **logs}

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict(), "old_policy": self.old_policy.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "updates": self.updates, "baseline": self.baseline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.old_policy.load_state_dict(state["old_policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.updates, self.baseline = int(state["updates"]), float(state["baseline"])


def teacher_for(env: gym.Env, settings: TeacherSettings | None = None, seed: int = 0) -> Teacher:
    """A teacher sized for ``env``'s spaces (a Box observation, a MultiDiscrete action)."""
    if not isinstance(env.action_space, gym.spaces.MultiDiscrete) or len(set(env.action_space.nvec)) != 1:
        raise TypeError("the teacher needs a MultiDiscrete action space with the same choices per bin")
    return Teacher(int(np.prod(env.observation_space.shape)), len(env.action_space.nvec),
                   int(env.action_space.nvec[0]), settings, seed)


def run_episode(env: gym.Env, teacher: Teacher, *, seed: int | None = None, max_steps: int | None = None,
                learn: bool = True) -> list[dict[str, float]]:
    """Drive ``env`` with ``teacher`` through the Gymnasium API until it terminates (or
    ``max_steps``); returns one record per step (reward and the teacher's update logs)."""
    obs, _ = env.reset(seed=seed)
    records: list[dict[str, float]] = []
    while max_steps is None or len(records) < max_steps:
        action = teacher.act(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        logs = teacher.update(obs, action, reward, next_obs, terminated) if learn else {}
        records.append({"reward": float(reward), **logs})
        obs = next_obs
        if terminated or truncated:
            break
    return records
