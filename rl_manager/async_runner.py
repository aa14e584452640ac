"""Asynchronous decisions: a request never blocks training.

:class:`AsyncDecider` runs one decision request at a time (a callable, usually
``lambda: decide(snapshot, manager, ...)``) on a daemon thread (:func:`run_detached`: a request
stuck on a dead endpoint never holds up the process's exit); the training loop submits a request at
a boundary (an evaluation) and polls the :class:`~concurrent.futures.Future` at the following
boundaries:

- :meth:`AsyncDecider.poll` returns the finished result once, with its age in boundaries; a
  result older than ``max_age`` boundaries is marked ``stale`` (the caller discards and logs it);
- a fresh result must be re-validated against the *current* menu before it is applied, since the
  run moved on while the request was pending: :func:`revalidate`;
- :meth:`AsyncDecider.close` abandons a request not collected yet (the caller logs it). A request
  already running finishes on its thread (an LLM call has its own timeout); its result is dropped.

It knows nothing about SB3 or PyTorch; :class:`~rl_manager.controller.Controller` drives it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Any

from rl_manager.core import Outcome
from rl_manager.guard import Guard, Review
from rl_manager.menu import GateConfig, build_action_space
from rl_manager.schema import TelemetrySnapshot

logger = logging.getLogger(__name__)


def run_detached(request: Callable[[], Any], name: str = "rl_manager-decider") -> Future:
    """Run ``request`` on a new daemon thread; its result (or exception) lands in the returned future."""
    future: Future = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(request())
        except BaseException as exc:  # captured for the caller, as an executor would
            future.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


@dataclass
class AsyncResult:
    """A finished request.

    :param value: what the request returned (an :class:`~rl_manager.core.Outcome`), ``None`` on error.
    :param error: the exception the request raised, if any.
    :param submitted_at: boundary index at which it was submitted.
    :param polled_at: boundary index at which it was collected.
    :param max_age: the decider's ``max_age`` at collection.
    """

    value: Any
    error: BaseException | None
    submitted_at: int
    polled_at: int
    max_age: int

    @property
    def age(self) -> int:
        """Boundaries between submission and collection."""
        return self.polled_at - self.submitted_at

    @property
    def stale(self) -> bool:
        """Whether the result is older than ``max_age`` boundaries and must be discarded."""
        return self.age > self.max_age

    @property
    def ok(self) -> bool:
        """Whether the request finished without an exception."""
        return self.error is None


class AsyncDecider:
    """Runs at most one decision request at a time on a background thread.

    Meant to be driven from one thread (the training loop).

    :param max_age: results collected more than this many boundaries after submission are stale.
    :param name: name prefix of the worker thread.
    """

    def __init__(self, max_age: int = 2, name: str = "rl_manager-decider") -> None:
        if max_age < 0:
            raise ValueError(f"max_age must be >= 0, got {max_age}")
        self.max_age, self.name = max_age, name
        self._future: Future | None = None
        self._submitted_at = 0
        self._closed = False

    @property
    def busy(self) -> bool:
        """Whether a request was submitted and its result not yet collected."""
        return self._future is not None

    @property
    def pending(self) -> bool:
        """Whether a request is still running (submitted, not finished)."""
        return self._future is not None and not self._future.done()

    @property
    def submitted_at(self) -> int | None:
        """The boundary of the request not collected yet (``None``: none)."""
        return self._submitted_at if self._future is not None else None

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, request: Callable[[], Any], boundary_index: int) -> bool:
        """Start ``request`` in the background without waiting for it.

        :param request: a callable taking no argument (exceptions it raises are captured).
        :param boundary_index: the current boundary (evaluation index).
        :return: ``False`` (nothing submitted) while another request is not collected yet.
        :raises RuntimeError: after :meth:`close`.
        """
        if self._closed:
            raise RuntimeError("AsyncDecider is closed")
        if self._future is not None:
            return False
        self._future, self._submitted_at = run_detached(request, self.name), boundary_index
        return True

    def poll(self, boundary_index: int) -> AsyncResult | None:
        """Collect the finished result, if any; never blocks.

        :param boundary_index: the current boundary.
        :return: the result (once), possibly marked stale, or ``None`` if none is ready.
        """
        future = self._future
        if future is None or not future.done():
            return None
        self._future = None
        error = future.exception()
        value = None if error else future.result()
        result = AsyncResult(value, error, self._submitted_at, boundary_index, self.max_age)
        if result.stale:
            logger.info("decision submitted at %d collected at %d is stale", result.submitted_at, boundary_index)
        return result

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the current request has finished (for the end of a run and tests).

        :param timeout: seconds to wait at most (``None``: no limit).
        :return: whether a finished result is ready.
        """
        if self._future is None:
            return False
        wait_futures([self._future], timeout)
        return self._future.done()

    def close(self) -> int | None:
        """Stop the worker; a request not collected yet is abandoned (its result will be dropped).

        :return: the boundary at which the abandoned request was submitted, or ``None``.
        """
        if self._closed:
            return None
        self._closed = True
        abandoned = self._submitted_at if self._future is not None else None
        if self._future is not None:
            self._future.cancel()
        self._future = None
        if abandoned is not None:
            logger.info("decision request submitted at %d abandoned", abandoned)
        return abandoned

    def __enter__(self) -> AsyncDecider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def revalidate(
    outcome: Outcome,
    current_snapshot: TelemetrySnapshot,
    gates: GateConfig | None = None,
    guard: Guard | None = None,
) -> Review:
    """Review an outcome's decision again against the menu of the *current* snapshot.

    A decision taken on an older snapshot may no longer be allowed (a gate closed, a knob moved
    or entered a cooldown, a value is no longer offered); it is applied only if this review is ok,
    and then with the changes of this review (their ``before`` values are the current ones).

    :param outcome: the outcome computed in the background.
    :param current_snapshot: telemetry at the boundary where it would be applied.
    :param gates: the gate configuration used for menus.
    :param guard: the guard (a default one if ``None``).
    :return: the new review.
    """
    guard = guard or Guard()
    return guard.review(outcome.decision, build_action_space(current_snapshot, gates))
