"""PADS: binned negative sampling, the teacher environment, the teacher, and the method on Ray."""

from __future__ import annotations

import gymnasium
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from reprlab.envs import ENV_ID, SamplingTeacherEnv, TeacherEnvSettings, VectorLearner
from reprlab.platform.core.config import load_config
from reprlab.platform.rl.teacher import Teacher, TeacherSettings, run_episode
from reprlab.platform.dml.binned_sampling import (
    bin_centres,
    bin_edges,
    bin_index,
    binned_triplets,
    initial_distribution,
    negative_mass,
    update_distribution,
)

EDGES = bin_edges(0.1, 1.4, 29)
CENTRES = bin_centres(EDGES)


# ---- the sampler ----------------------------------------------------------------------------------
def _star(distances: list[float], anchors: int = 3000) -> tuple[torch.Tensor, torch.Tensor]:
    """``anchors`` copies of class 0 at the origin and one sample of each other class at the given
    distances along orthogonal axes (so only the anchor-negative distances matter)."""
    dim = len(distances) + 1
    emb = torch.zeros(anchors + len(distances), dim)
    for i, d in enumerate(distances):
        emb[anchors + i, i] = d
    labels = torch.cat([torch.zeros(anchors, dtype=torch.long), torch.arange(1, len(distances) + 1)])
    return emb, labels


def test_negatives_are_drawn_in_proportion_to_bin_mass_and_empty_bins_never():
    w = np.zeros(29)
    bins = np.digitize([0.35, 0.55, 0.95], EDGES) - 1
    w[bins[0]], w[bins[1]] = 0.2, 0.8  # the third bin has zero mass
    emb, labels = _star([CENTRES[b] for b in bins])
    a, p, n = binned_triplets(emb, labels, w, EDGES, torch.Generator().manual_seed(0))
    assert len(a) == 3000  # every class-0 anchor; single samples have no positive
    assert bool((labels[p] == labels[a]).all()) and bool((p != a).all())
    counts = np.bincount(labels[n].numpy(), minlength=4)[1:] / len(n)
    assert counts[2] == 0
    assert counts[:2] == pytest.approx([0.2, 0.8], abs=0.03)


def test_negative_mass_is_the_bin_weight_and_zero_for_the_own_class():
    emb, labels = _star([CENTRES[3], CENTRES[10]], anchors=2)
    w = np.arange(1, 30, dtype=np.float64)
    mass = negative_mass(torch.cdist(emb, emb), labels[:, None] == labels[None, :], w, EDGES)
    assert mass[0, 2].item() == pytest.approx(w[3]) and mass[0, 3].item() == pytest.approx(w[10])
    assert mass[0, 1].item() == 0 and mass[0, 0].item() == 0


def test_out_of_range_distances_are_dropped_or_merged():
    d = torch.tensor([0.05, 0.1, 0.5, 1.39, 1.4, 2.0])
    dropped = bin_index(d, torch.tensor(EDGES, dtype=torch.float32), "drop").tolist()
    assert dropped[0] == -1 and dropped[-2:] == [-1, -1]  # below OR beyond the support
    assert dropped[1] == 0 and dropped[3] == 28
    merged = bin_index(d, torch.tensor(EDGES, dtype=torch.float32), "merge").tolist()
    assert merged[0] == 0 and merged[-1] == 28 and merged[-2] == 28

    # a negative beyond the support is never drawn with "drop", and drawn through the last bin with "merge"
    emb, labels = _star([CENTRES[14], 1.8], anchors=500)
    w = np.full(29, 1.0)
    for mode, beyond in (("drop", 0.0), ("merge", 0.5)):
        a, _, n = binned_triplets(emb, labels, w, EDGES, torch.Generator().manual_seed(1), out_of_range=mode)
        share = float((labels[n] == 2).float().mean())
        assert share == pytest.approx(beyond, abs=0.07), mode


def test_self_regularization_lets_the_own_class_be_drawn():
    emb, labels = _star([CENTRES[5]], anchors=200)
    emb[:200, -1] = torch.linspace(0.0, 1.0, 200)  # spread the anchors' class over the bins
    w = np.ones(29)
    _, _, n = binned_triplets(emb, labels, w, EDGES, torch.Generator().manual_seed(0), self_regularization=True)
    assert bool((labels[n] == 0).any())
    _, _, n = binned_triplets(emb, labels, w, EDGES, torch.Generator().manual_seed(0), self_regularization=False)
    assert bool((labels[n] != 0).all())


def test_initial_distribution_puts_mass_on_the_middle_bins():
    d = initial_distribution(EDGES, 0.3, 0.7)
    inside = (CENTRES >= 0.3) & (CENTRES <= 0.7)
    assert d.sum() == pytest.approx(1.0)
    assert d[inside] == pytest.approx(np.full(inside.sum(), 1 / inside.sum()), rel=1e-6)
    assert (d[~inside] < 1e-9).all() and (d[~inside] > 0).all()


def test_action_multiplies_clips_and_renormalizes():
    mult = np.array([0.8, 1.0, 1.25])
    w = update_distribution(np.array([0.5, 0.5]), np.array([2, 0]), mult)
    assert w == pytest.approx(np.array([0.625, 0.4]) / 1.025)
    w = np.array([1e-24, 1.0 - 1e-24])
    for _ in range(50):  # keep shrinking the first bin: it stops at the clip, the sum stays 1
        w = update_distribution(w, np.array([0, 1]), mult, clip=(1e-25, 1e25))
    assert w[0] == pytest.approx(1e-25, rel=1e-6) and w.sum() == pytest.approx(1.0)
    w = update_distribution(np.array([1.0, 1.0]), np.array([2, 2]), mult, clip=(1e-25, 1.0))
    assert w == pytest.approx([0.5, 0.5])  # both clipped at the upper bound


# ---- the environment ----------------------------------------------------------------------------------
def _env(**settings) -> SamplingTeacherEnv:
    s = TeacherEnvSettings(iterations_per_step=2, **settings)
    return SamplingTeacherEnv(VectorLearner(budget=12, settings=s), s)


def test_environment_passes_gymnasiums_checker():
    env = _env()
    check_env(env, skip_render_check=True)
    assert env.observation_space.shape == (198,)
    assert isinstance(env.action_space, gymnasium.spaces.MultiDiscrete)
    assert list(env.action_space.nvec) == [3] * 29


def test_state_layout():
    env = _env()
    obs, info = env.reset(seed=0)
    lay = env.layout()
    assert [lay[k].stop - lay[k].start for k in ("history", "averages", "distribution", "progress")] == [140, 28, 29, 1]
    first = np.array([info["metrics"][k] for k in env.settings.state_metrics], np.float32)
    assert obs[lay["history"]].reshape(20, 7) == pytest.approx(np.tile(first, (20, 1)), abs=1e-6)
    assert obs[lay["distribution"]] == pytest.approx(env.settings.initial().astype(np.float32))
    assert obs[lay["progress"]] == pytest.approx([0.0])

    rows = [first]
    for _ in range(3):
        obs, _, _, _, info = env.step(env.action_space.sample())
        rows.append(np.array([info["metrics"][k] for k in env.settings.state_metrics], np.float32))
    hist = obs[lay["history"]].reshape(20, 7)
    assert hist[-4:] == pytest.approx(np.stack(rows), abs=1e-6)  # newest last
    past = np.concatenate([np.tile(first, (28, 1)), np.stack(rows)])  # 32 slots: initial repeated
    assert obs[lay["averages"]].reshape(4, 7) == pytest.approx(np.stack([past[-w:].mean(0) for w in (2, 8, 16, 32)]), abs=1e-5)
    assert obs[lay["distribution"]] == pytest.approx(info["distribution"].astype(np.float32))
    assert obs[lay["progress"]] == pytest.approx([6 / 12])


class ScriptedLearner:
    """Validation metrics read from a list: to check the reward and termination."""

    def __init__(self, values: list[tuple[float, float]], budget: int) -> None:
        self.values, self.budget, self.calls, self.iterations = values, budget, 0, 0

    def reset(self, seed):
        self.calls, self.iterations = 0, 0

    @property
    def progress(self):
        return self.iterations / self.budget

    def train(self, iterations, distribution):
        self.iterations += iterations
        return {"loss": 1.0}

    def validate(self):
        r1, nmi = self.values[self.calls]
        self.calls += 1
        return {"recall@1": r1, "nmi": nmi}


def test_reward_is_the_sign_of_the_change_of_the_reward_metrics_and_the_episode_ends_with_the_budget():
    s = TeacherEnvSettings(iterations_per_step=5, state_metrics=("recall@1", "nmi"), reward_metrics=("recall@1", "nmi"))
    learner = ScriptedLearner([(0.5, 0.5), (0.6, 0.5), (0.6, 0.4), (0.7, 0.3), (0.7, 0.3)], budget=20)
    env = SamplingTeacherEnv(learner, s)
    env.reset(seed=0)
    keep = np.full(29, s.keep_action)
    out = [env.step(keep) for _ in range(4)]
    assert [o[1] for o in out] == [1.0, -1.0, 0.0, 0.0]
    assert [o[2] for o in out] == [False, False, False, True]
    assert out[-1][4]["distribution"] == pytest.approx(s.initial())  # "keep" leaves it unchanged
    with pytest.raises(ValueError, match="action must be 29 ints"):
        env.step(np.full(29, 3))


def test_settings_are_checked():
    with pytest.raises(ValueError, match="unknown metric"):
        TeacherEnvSettings(reward_metrics=("recall@3",))
    with pytest.raises(ValueError, match="need 1.0"):
        TeacherEnvSettings(multipliers=(0.5, 2.0))
    with pytest.raises(ValueError, match="no bin centre"):
        TeacherEnvSettings(init_low=1.5, init_high=1.6, support_high=1.4)


def test_any_gymnasium_agent_can_drive_the_registered_environment():
    env = gymnasium.make(ENV_ID, settings={"iterations_per_step": 3}, learner=VectorLearner(budget=9))
    obs, _ = env.reset(seed=3)
    env.action_space.seed(3)
    steps, terminated = 0, False
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs) and reward in (-1.0, 0.0, 1.0) and not truncated
        steps += 1
    assert steps == 3 and info["train"]["loss"] > 0
    assert not np.allclose(info["distribution"], TeacherEnvSettings().initial())


# ---- the teacher ------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["ppo", "reinforce"])
def test_teacher_learns_which_action_is_rewarded(algorithm):
    teacher = Teacher(10, 4, 3, TeacherSettings(algorithm=algorithm, lr=0.01, gamma=0.0), seed=0)
    obs = np.linspace(0, 1, 10)
    before = teacher.probabilities(obs)[0, 2]
    for _ in range(40):
        action = teacher.act(obs)
        reward = 1.0 if action[0] == 2 else -1.0  # "raise bin 0" is rewarded
        teacher.update(obs, action, reward, obs, terminated=False)
    assert before < 0.4 and teacher.probabilities(obs)[0, 2] > 0.85


def test_old_policy_is_refreshed_every_five_updates_and_state_round_trips():
    teacher = Teacher(6, 2, 3, TeacherSettings(refresh_every=5), seed=1)
    obs = np.ones(6)
    same = lambda: all(torch.equal(a, b) for a, b in zip(teacher.policy.state_dict().values(),  # noqa: E731
                                                           teacher.old_policy.state_dict().values(), strict=True))
    for i in range(1, 6):
        teacher.update(obs, teacher.act(obs), 1.0, obs, terminated=False)
        assert same() == (i == 5), i
    clone = Teacher(6, 2, 3, TeacherSettings(refresh_every=5), seed=99)
    clone.load_state_dict(teacher.state_dict())
    assert [clone.act(obs).tolist() for _ in range(5)] == [teacher.act(obs).tolist() for _ in range(5)]


def test_run_episode_drives_the_environment_with_the_teacher():
    env = _env()
    teacher = Teacher(198, 29, 3, seed=0)
    records = run_episode(env, teacher, seed=0)
    assert len(records) == 6 and teacher.updates == 6
    assert all(r["reward"] in (-1.0, 0.0, 1.0) for r in records)


# ---- the method on the platform ----------------------------------------------------------------------
def test_pads_needs_a_validation_split(tiny):
    from reprlab.platform.core.errors import ConfigError

    with pytest.raises(ConfigError, match="validation split"):
        load_config(None, tiny + ["method.name=pads", "data.validation.protocol=none"])


@pytest.mark.slow
def test_pads_runs_in_lock_step_on_two_ray_workers(ray_session, tiny, tmp_path):
    from reprlab.platform.run.driver import run_training

    cfg = load_config(None, tiny + ["method.name=pads", "scaling.num_workers=2", "method.iterations_per_step=2",
                                    "experiment.name=pads-lockstep"])
    run_training(cfg, tmp_path / "run")
    rows = pq.read_table(tmp_path / "run" / "metrics.parquet").to_pylist()
    steps = [s for r in rows[1:] for s in r["steps"]]
    assert len(steps) == 4 and [s["iteration"] for s in steps] == [2, 4, 6, 8]
    assert all(s["lockstep_diff"] == 0.0 for s in steps)
    assert all(len(s["distribution"]) == 29 and sum(s["distribution"]) == pytest.approx(1.0) for s in steps)
    assert all(s["reward"] in (-1.0, 0.0, 1.0) and sum(s["action_fractions"]) == pytest.approx(1.0) for s in steps)
    assert all("teacher/value" in s for s in steps)
    assert rows[-1]["method/teacher_steps"] == 4 and 0 < rows[-1]["method/distribution_entropy"] <= np.log(29)
    assert (tmp_path / "run" / "sampling_distribution.png").read_bytes()[:4] == b"\x89PNG"

    # the reward and the distribution's entropy reach the dashboard (Prometheus export)
    import time

    from conftest import METRICS_PORT
    from test_telemetry import _find, _scrape

    base = {"experiment": "pads-lockstep", "trial": "run", "method": "pads"}
    deadline, found = time.time() + 60, {}
    while time.time() < deadline:
        samples = _scrape(METRICS_PORT)
        found = {n: _find(samples, "ray_reprlab_method", name=n, **base) for n in ("reward_mean", "distribution_entropy")}
        if all(found.values()):
            break
        time.sleep(2)
    assert -1 <= found["reward_mean"][0] <= 1
    assert found["distribution_entropy"][0] == pytest.approx(rows[-1]["method/distribution_entropy"], rel=1e-6)


def test_epoch_validation_reuses_the_last_teacher_steps(tiny, tmp_path, monkeypatch):
    from reprlab.platform.dml.method import EmbeddingMethod
    from reprlab.platform.run.driver import run_training

    calls: list[str] = []
    original = EmbeddingMethod.evaluate_embeddings

    def counting(self, fn, split, **kw):
        calls.append(split)
        return original(self, fn, split, **kw)

    monkeypatch.setattr(EmbeddingMethod, "evaluate_embeddings", counting)
    cfg = load_config(None, tiny + ["method.name=pads", "scaling.num_workers=0", "method.iterations_per_step=3"])
    run_training(cfg, tmp_path / "run")
    # epoch 0: val + test; epoch 1: the reset validation, 2 teacher steps, test; epoch 2: 2 steps, test
    assert calls.count("val") == 1 + 1 + 2 * 2 and calls.count("test") == 3
    rows = pq.read_table(tmp_path / "run" / "metrics.parquet").to_pylist()
    for row in rows[1:]:
        last = row["steps"][-1]
        assert all(row[f"val/{k}"] == last[f"val/{k}"] for k in ("recall@1", "nmi", "map@r"))


def test_resumed_pads_run_continues_the_same_episode(tiny, tmp_path, capfd):
    # The state holds the training progress, so the interrupted run must have the same budget:
    # run it through, drop the checkpoints after epoch 1, and resume from there.
    import shutil

    from reprlab.platform.run.driver import run_training

    common = tiny + ["method.name=pads", "scaling.num_workers=0", "method.iterations_per_step=3",
                     "train.epochs=3", "checkpoint.keep=3"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    run_training(load_config(None, common), whole)
    run_training(load_config(None, common), part)
    state = torch.load(part / "checkpoints" / "epoch_0001" / "state.pt", weights_only=True)
    extra = state["method"]["extra"]
    assert {"policy", "old_policy", "optimizer"} <= set(extra["teacher"]) and len(extra["env"]["distribution"]) == 29
    for epoch in (2, 3):
        shutil.rmtree(part / "checkpoints" / f"epoch_000{epoch}")
    (part / "metrics.parquet").unlink()
    capfd.readouterr()
    run_training(load_config(None, common), part, resume=True)
    assert "resumed from the checkpoint of epoch 1" in capfd.readouterr().out
    a = [s for r in pq.read_table(whole / "metrics.parquet").to_pylist()[1:] for s in r["steps"]]
    b = [s for r in pq.read_table(part / "metrics.parquet").to_pylist()[1:] for s in r["steps"]]
    assert len(a) == len(b) == 6  # 4 iterations per epoch: steps of 3 and 1
    assert len({tuple(s["distribution"]) for s in a}) > 1  # the teacher moved the distribution
    for sa, sb in zip(a, b, strict=True):
        assert sb["iteration"] == sa["iteration"] and sb["reward"] == sa["reward"]
        assert sb["distribution"] == pytest.approx(sa["distribution"], rel=1e-6)
        assert sb["teacher/value"] == pytest.approx(sa["teacher/value"], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("preset", ["pads/cub", "pads/cars", "pads/sop"])
def test_paper_presets_start_from_the_reference_codes_distribution(preset):
    # CVPR2020_PADS (PADS_utilities.py, probmode 'uniform_low'): a uniform density on [0.3, 0.7]
    # evaluated at support[:-1] + 2/n_support (support = linspace(0.1, 1.4, 30)), clipped below at
    # 1e-15, normalized. Catches the presets falling back to the bin-centre window (bins 4-12) or
    # to the 1e-10 floor.
    from reprlab.platform.core.config import load_config

    m = load_config(preset, []).method
    settings = TeacherEnvSettings(**{k: getattr(m, k) for k in TeacherEnvSettings.model_fields})
    support = np.linspace(0.1, 1.4, 30)
    points = support[:-1] + 2 / 30
    reference = np.clip(((points >= 0.3) & (points <= 0.7)) / 0.4, 1e-15, 1)
    reference /= reference.sum()
    assert np.flatnonzero(reference > 1e-3).tolist() == list(range(3, 12))
    np.testing.assert_allclose(settings.initial(), reference, rtol=1e-9, atol=0)
    assert m.out_of_range == "merge", "the reference bins every distance (its out-of-range mask never fires)"
