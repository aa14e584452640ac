"""Append-only JSONL audit log: one self-contained :class:`~rl_manager.schema.AuditRecord` a line.

Every record is flushed and fsynced before :meth:`AuditLog.append` returns, so a killed run loses
at most the line being written. :func:`read_audit` tolerates such a torn last line, and
:class:`AuditLog` cuts it off before appending, so a resumed run continues the sequence.

``python -m rl_manager.audit show RUN_DIR`` prints the decisions as a ``rich`` table;
``python -m rl_manager.audit verify RUN_DIR`` re-judges every recorded reply with the guard against
the menu recorded beside it and reports any verdict that differs from the log;
``python -m rl_manager.audit redecide RUN_DIR --manager rule`` asks a manager again on every recorded
snapshot and menu and lists the boundaries where it would decide otherwise (a changed rule manager that
repeats every decision of a run would repeat the run, whose training is seeded).
"""

from __future__ import annotations

import argparse
import gzip
import io
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rl_manager.schema import AuditRecord, Decision, knob_changes

logger = logging.getLogger(__name__)

AUDIT_FILENAME = "audit.jsonl"


class AuditLogError(ValueError):
    """An audit log is corrupt somewhere other than its last line."""


def _path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p / AUDIT_FILENAME if p.is_dir() else p


def read_audit(path: str | os.PathLike) -> list[AuditRecord]:
    """Read every record of an audit log (a file, or a run folder holding ``audit.jsonl``).

    A torn or unparseable *last* line (a run killed mid-write) is skipped with a warning;
    corruption anywhere else raises :class:`AuditLogError`. An archived log (``audit.jsonl.gz``, as
    the committed experiment runs keep it) is read when the plain file is absent.
    """
    p = _path(path)
    packed = p.with_name(p.name + ".gz")
    if not p.exists() and packed.exists():
        lines = gzip.decompress(packed.read_bytes()).split(b"\n")
    elif not p.exists():
        return []
    else:
        lines = p.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    records: list[AuditRecord] = []
    for i, line in enumerate(lines):
        try:
            records.append(AuditRecord.model_validate_json(line))
        except (ValidationError, ValueError) as exc:
            if i == len(lines) - 1:
                logger.warning("%s: skipping a torn last line (%d bytes)", p, len(line))
                break
            raise AuditLogError(f"{p}: line {i + 1} is not a valid audit record: {exc}") from exc
    return records


class AuditLog:
    """Writer of an append-only audit log.

    :param path: the log file, or a run folder (``audit.jsonl`` inside it).
    :param run_id: run identifier written into every record.
    """

    def __init__(self, path: str | os.PathLike, run_id: str) -> None:
        p = Path(path)
        self.path = p / AUDIT_FILENAME if p.is_dir() or p.suffix == "" else p
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        self._repair_tail()
        existing = read_audit(self.path)
        #: the last record of the log (``None``: empty)
        self.last: AuditRecord | None = existing[-1] if existing else None
        self.next_seq = self.last.seq + 1 if self.last is not None else 0

    def _repair_tail(self) -> None:
        """Cut a torn last line so the next record starts on a line of its own."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        logger.warning("%s: removing a torn last line (%d bytes)", self.path, len(data) - keep)
        with open(self.path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())

    def append(self, **fields) -> AuditRecord:
        """Write one record (``run_id``, ``seq`` and ``time`` are filled in) and fsync it.

        :param fields: the other :class:`~rl_manager.schema.AuditRecord` fields.
        :return: the record written.
        """
        record = AuditRecord(
            run_id=self.run_id,
            seq=self.next_seq,
            time=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            **fields,
        )
        line = record.model_dump_json() + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.next_seq += 1
        self.last = record
        return record


def _describe(record: AuditRecord) -> str:
    if record.decision is None:
        return record.message or "-"
    return ", ".join(f"{c.knob}={c.value:.4g}" for c in knob_changes(record.decision))


#: columns of ``audit show``
COLUMNS = ("seq", "step", "eval", "kind", "proposer", "action", "changes", "applied", "errors", "fallback", "latency_s")


def table_rows(records: list[AuditRecord]) -> list[tuple[str, ...]]:
    """One row of :data:`COLUMNS` a record."""
    return [
        (
            str(r.seq),
            str(r.step),
            str(r.evaluation_index),
            r.kind,
            r.proposer or "-",
            r.decision.action if r.decision else "-",
            _describe(r),
            "yes" if r.applied else "no",
            str(len(r.validation_errors)),
            r.fallback or "-",
            f"{r.latency_s:.3f}",
        )
        for r in records
    ]


def _table(records: list[AuditRecord], **kwargs: Any) -> Any:
    from rich.table import Table

    table = Table(*COLUMNS, **kwargs)
    for row in table_rows(records):
        table.add_row(*row)
    return table


def format_table(records: list[AuditRecord], width: int = 200) -> str:
    """Render records as a plain-text table (``rich``, one row a record)."""
    from rich import box
    from rich.console import Console

    console = Console(width=width, no_color=True, file=io.StringIO(), record=True)
    console.print(_table(records, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False))
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()).strip("\n")


def verify(records: list[AuditRecord]) -> list[str]:
    """Re-run the guard on every recorded attempt; return the mismatches (empty: the log replays)."""
    from rl_manager.guard import Guard

    guard, problems = Guard(), []
    for r in records:
        if r.kind != "decision" or r.menu is None:
            continue
        for i, a in enumerate(r.attempts):
            if a.raw_reply is None or a.proposer == "guard":
                continue
            review = guard.review(a.raw_reply, r.menu)
            truncated = a.finish_reason == "length"
            if review.ok == bool(a.errors) and not truncated:
                problems.append(
                    f"seq {r.seq} attempt {i}: recorded errors {a.errors} but the guard now says {review.errors}"
                )
        if r.applied and r.decision is not None and r.decision.action in ("adjust", "rollback_and_consolidate"):
            review = guard.review(r.decision, r.menu)
            if not review.ok and r.requested_at is None:  # an async reply was judged on its request's menu
                problems.append(f"seq {r.seq}: applied decision fails the guard now: {review.errors}")
    return problems


def _signature(decision: Decision | None) -> tuple[Any, ...]:
    """A decision's action and knob changes (reasons aside), comparable across runs."""
    if decision is None:
        return ("-",)
    return decision.action, tuple(sorted((c.knob, round(c.value, 9)) for c in knob_changes(decision)))


def _redecidable(records: list[AuditRecord]) -> list[AuditRecord]:
    """The decision records that carry the snapshot and menu they were decided on."""
    return [r for r in records if r.kind == "decision" and r.snapshot is not None and r.menu is not None]


def redecide(records: list[AuditRecord], manager: Any) -> list[tuple[AuditRecord, Any]]:
    """Ask ``manager`` again on every decision record's snapshot and menu, its reply judged by the guard;
    return the records whose decision it would not repeat, each with its own decision (``None``: rejected)."""
    from rl_manager.guard import Guard

    guard, differ = Guard(), []
    for r in _redecidable(records):
        review = guard.review(manager.propose(r.snapshot, r.menu).reply, r.menu)
        mine = review.decision if review.ok else None
        if _signature(mine) != _signature(r.decision):
            differ.append((r, mine))
    return differ


def main(argv: list[str] | None = None) -> int:
    """``python -m rl_manager.audit show|verify|redecide RUN_DIR``."""
    parser = argparse.ArgumentParser(prog="python -m rl_manager.audit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print the decisions of a run as a table")
    show.add_argument("run_dir", help="run folder (or an audit.jsonl file)")
    check = sub.add_parser("verify", help="re-judge every recorded reply with the guard")
    check.add_argument("run_dir", help="run folder (or an audit.jsonl file)")
    again = sub.add_parser("redecide", help="ask a manager again on every recorded snapshot; list what it changes")
    again.add_argument("run_dir", help="run folder (or an audit.jsonl file)")
    again.add_argument("--manager", default="rule", help="an offline manager (default: rule)")
    args = parser.parse_args(argv)
    p = _path(args.run_dir)
    if not p.exists() and not p.with_name(p.name + ".gz").exists():
        print(f"error: no audit log at {p}", file=sys.stderr)
        return 2
    try:
        records = read_audit(p)
    except AuditLogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "redecide":
        from rl_manager.managers import make_manager

        differ = redecide(records, make_manager(args.manager))
        for r, mine in differ:
            before, now = _signature(r.decision), _signature(mine)
            print(f"evaluation {r.evaluation_index} (step {r.step}): recorded {before}, now {now}")
        print(f"{len(_redecidable(records))} decisions, {len(differ)} differ")
        return 1 if differ else 0
    if args.command == "verify":
        problems = verify(records)
        for p in problems:
            print(p)
        print(f"{len(records)} records, {len(problems)} mismatches")
        return 1 if problems else 0
    if sys.stdout.isatty():
        from rich.console import Console

        Console().print(_table(records, title=f"{p} ({len(records)} records)"))
    else:
        print(format_table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
