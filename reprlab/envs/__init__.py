"""Gymnasium environments around learners. Importing this package registers
``reprlab/SamplingTeacher-v0`` (PADS' learner-plus-sampling loop; its default learner is the cheap
:class:`VectorLearner`, ``gymnasium.make(ENV_ID, learner=..., settings=...)`` wraps another).
The agent that drives it (PPO / REINFORCE) is :mod:`reprlab.platform.rl.teacher`."""

import gymnasium

from reprlab.envs.sampling_teacher import (
    Learner,
    SamplingTeacherEnv,
    TeacherEnvSettings,
    VectorLearner,
)

ENV_ID = "reprlab/SamplingTeacher-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="reprlab.envs.sampling_teacher:SamplingTeacherEnv")

__all__ = [
    "ENV_ID",
    "Learner",
    "SamplingTeacherEnv",
    "TeacherEnvSettings",
    "VectorLearner",
]
