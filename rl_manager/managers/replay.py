"""The replay manager: proposes, at each evaluation, the replies recorded in an audit log.

Replaying a run's log through the guard re-judges every decision it took (``python -m
rl_manager.audit verify RUN_DIR``), and replaying it into a new run repeats its proposals.
"""

from __future__ import annotations

import os

from rl_manager.audit import read_audit
from rl_manager.managers.base import Manager, Proposal
from rl_manager.schema import ActionSpace, NoAction, TelemetrySnapshot


class ReplayManager(Manager):
    """Replays the raw replies of an audit log, by evaluation index and attempt order.

    :param path: an audit log or a run folder.
    :param proposer: replay only attempts of this proposer (default: the first proposer of each record).
    """

    name = "replay"

    def __init__(self, path: str | os.PathLike, proposer: str | None = None) -> None:
        self.replies: dict[int, list[str]] = {}
        for record in read_audit(path):
            if record.kind != "decision":
                continue
            who = proposer or (record.attempts[0].proposer if record.attempts else None)
            replies = [a.raw_reply for a in record.attempts if a.proposer == who and a.raw_reply is not None]
            self.replies.setdefault(record.evaluation_index, []).extend(replies)

    def _propose(self, snapshot: TelemetrySnapshot, menu: ActionSpace, feedback: str | None) -> Proposal:
        queue = self.replies.get(snapshot.position.evaluation_index, [])
        if not queue:
            return Proposal(reply=NoAction(reason="nothing recorded for this evaluation"))
        return Proposal(reply=queue.pop(0))
