"""Exact, bounded and isolated math answer verification (built on Math-Verify)."""
from ..extract import DEFAULT_FINISH_MARKERS, Limits, boxed_answers, graded_part
from .verifier import (EXTRACT_MODES, STATUSES, Verdict, Verifier, VerifierConfig, count_statuses, default_verifier,
                       verify)

__all__ = ["DEFAULT_FINISH_MARKERS", "EXTRACT_MODES", "STATUSES", "Limits", "Verdict", "Verifier",
           "VerifierConfig", "boxed_answers", "count_statuses", "default_verifier", "graded_part", "verify"]
from .judge import JudgeConfig, LLMJudge  # noqa: E402
from .reward import RewardError, RewardFunction, as_reward  # noqa: E402

__all__ += ["JudgeConfig", "LLMJudge", "RewardError", "RewardFunction", "as_reward"]
