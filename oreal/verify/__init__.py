"""Exact, bounded and isolated math answer verification (built on Math-Verify)."""
from ..extract import DEFAULT_FINISH_MARKERS, Limits, boxed_answers, graded_part
from .verifier import (EXTRACT_MODES, STATUSES, Verdict, Verifier, VerifierConfig, count_statuses, default_verifier,
                       verify)

__all__ = ["DEFAULT_FINISH_MARKERS", "EXTRACT_MODES", "STATUSES", "Limits", "Verdict", "Verifier",
           "VerifierConfig", "boxed_answers", "count_statuses", "default_verifier", "graded_part", "verify"]
from .judge import JudgeConfig, LLMJudge  # noqa: E402
from .reward import RewardError, RewardFunction  # noqa: E402
from .adapters import COMBINE, StepState, TRLRewards, VerlReward, as_reward, load_function, reward_kind  # noqa: E402

__all__ += ["COMBINE", "JudgeConfig", "LLMJudge", "RewardError", "RewardFunction", "StepState", "TRLRewards",
            "VerlReward", "as_reward", "load_function", "reward_kind"]
