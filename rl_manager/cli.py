"""``rl-manager``: one console script; each subcommand is a ``python -m rl_manager.<tool>`` main.

::

    rl-manager train --env PlanarReacher --recipe conservative   # = python -m rl_manager.train ...
    rl-manager audit show runs/x                                  # = python -m rl_manager.audit show runs/x
    rl-manager llm pull                                           # = python -m rl_manager.models pull
"""

from __future__ import annotations

import importlib
import sys

#: subcommand -> module whose ``main`` it runs
COMMANDS: dict[str, str] = {
    "train": "rl_manager.train",
    "compare": "rl_manager.compare",
    "audit": "rl_manager.audit",
    "decide": "rl_manager.decide",
    "bench": "rl_manager.bench_decisions",
    "schema": "rl_manager.schema",
    "llm": "rl_manager.models",
}

USAGE = (
    "usage: rl-manager {"
    + ",".join(COMMANDS)
    + "} [ARGS ...]\n\n"
    + "\n".join(f"  {name:<8} python -m {module}" for name, module in COMMANDS.items())
)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``rl-manager COMMAND ARGS`` to ``rl_manager.<tool>.main(ARGS)``.

    :return: the tool's exit status (2 for an unknown command).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"rl-manager: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command])
    if command == "schema":  # takes no arguments
        module.main()
        return 0
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
