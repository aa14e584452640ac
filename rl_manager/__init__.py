"""rl_manager: a bounded, LLM-supervised training manager for RL runs."""

__version__ = "0.1.0"
