"""Environments and wrappers registered under the ``rl_manager/`` namespace (imported as ``rl_manager.envs``).

Importing this package registers Gymnasium-Robotics and every ``rl_manager/`` id; see
``envs/README.md`` for the list, the cost terms and their calibration.
"""

from rl_manager.envs.registration import NAMESPACE, register_all, registered_ids, resolve_env_id

register_all()

__all__ = ["NAMESPACE", "register_all", "registered_ids", "resolve_env_id"]
