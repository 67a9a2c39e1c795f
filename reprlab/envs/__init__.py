"""Gymnasium environments around learners. Importing this package registers
``reprlab/SamplingTeacher-v0`` (PADS' learner-plus-sampling loop; its default learner is the cheap
:class:`VectorLearner`, ``gymnasium.make(ENV_ID, learner=..., settings=...)`` wraps another)."""

import gymnasium

from reprlab.envs.sampling_teacher import (
    Learner,
    SamplingTeacherEnv,
    TeacherEnvSettings,
    VectorLearner,
)
from reprlab.envs.teacher import Teacher, TeacherSettings, run_episode, teacher_for

ENV_ID = "reprlab/SamplingTeacher-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="reprlab.envs.sampling_teacher:SamplingTeacherEnv")

__all__ = [
    "ENV_ID",
    "Learner",
    "SamplingTeacherEnv",
    "Teacher",
    "TeacherEnvSettings",
    "TeacherSettings",
    "VectorLearner",
    "run_episode",
    "teacher_for",
]
