"""Managers: turn (snapshot, menu) into a proposed decision."""

from __future__ import annotations

from rl_manager.managers.base import Manager, Proposal
from rl_manager.managers.keep_best import KeepBestManager
from rl_manager.managers.kl_adaptive import KLAdaptiveManager
from rl_manager.managers.lagrangian import LagrangianManager
from rl_manager.managers.llm import LLMManager
from rl_manager.managers.none import NoneManager
from rl_manager.managers.rule import RuleManager
from rl_manager.managers.supervised_rule import SupervisedRuleManager

#: managers that can be built by name without further configuration
MANAGERS: dict[str, type[Manager]] = {
    "rule": RuleManager,
    "none": NoneManager,
    "llm": LLMManager,
    "kl_adaptive": KLAdaptiveManager,
    "lagrangian": LagrangianManager,
    "keep_best": KeepBestManager,
    "supervised_rule": SupervisedRuleManager,
}


def make_manager(name: str) -> Manager:
    """Build a manager by name (``llm`` reads its endpoint from ``RL_MANAGER_*`` settings).

    :raises ValueError: for an unknown name.
    """
    try:
        return MANAGERS[name]()
    except KeyError:
        raise ValueError(f"unknown manager {name!r}; choose from {sorted(MANAGERS)}") from None


__all__ = [
    "MANAGERS",
    "KLAdaptiveManager",
    "KeepBestManager",
    "LLMManager",
    "LagrangianManager",
    "Manager",
    "NoneManager",
    "Proposal",
    "RuleManager",
    "SupervisedRuleManager",
    "make_manager",
]
