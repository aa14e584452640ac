"""Environments and wrappers registered under the ``rl_manager/`` namespace (imported as ``rl_manager.envs``)."""
