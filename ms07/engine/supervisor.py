"""``ms07 run --workers N``: one supervisor process, N engine processes sharing the HTTP port.

One engine process uses one core; a host with several gets them used by several engines.
In Kubernetes, run one engine per container (``--workers 1``, the default) and scale the
pods: the kubelet restarts and drains them. On a VM or a bare host, ``--workers N`` does
the same for N engines on one port:

- the supervisor resolves the embedded PostgreSQL/Redis once (so N children do not race to
  start them) and binds the HTTP port once; each child is a ``fork()`` of it and accepts
  on the inherited listening socket (the kernel hands each connection to one of them; a
  connection waiting while a child restarts is accepted by another);
- each child is a complete engine with its own worker id (its own consumer in the group,
  its own heartbeat row), so what one child held when it died is reclaimed by the others
  exactly as a dead pod's is;
- a child that exits while the supervisor is not stopping is restarted after a backoff
  (0.5 s doubling to 30 s; back to 0.5 s after a child has run 10 s). A child that dies
  within 10 s of its start 5 times in a row (a bad config, a dependency refusing it) makes
  the supervisor give up: it stops the other children, says why in one line, exits non-zero;
- SIGTERM or SIGINT to the supervisor is forwarded to every child as SIGTERM: each drains
  within ``service.drain_grace_seconds``; the supervisor exits 0 when every child did,
  else with the first non-zero exit code (and SIGKILLs a child still running a bounded
  time past the grace).

The supervisor is synchronous and single-threaded: it blocks SIGCHLD/SIGTERM/SIGINT and
takes them with ``sigtimedwait``, so no signal is lost between a check and a wait, and
no event loop ever runs in it (a ``fork()`` of a process with a running loop or threads
is unsafe).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

from ms07 import logs
from ms07.config import Settings
from ms07.errors import ConfigError, Ms07Error

log = logs.get("supervisor")

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
STABLE_SECONDS = 10.0  # a child that ran this long did not "die at once"
MAX_QUICK_DEATHS = 5  # in a row, for one child: the supervisor gives up
KILL_AFTER_GRACE = 15.0  # past drain_grace_seconds: the final commit, closing (~1-6 s)
BACKLOG = 1024
_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}
_STOP = (signal.SIGTERM, signal.SIGINT)


class WorkersFailed(Ms07Error):
    """A child engine kept dying at once: the supervisor gave up."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclasses.dataclass
class _Child:
    index: int
    pid: int | None = None
    started: float = 0.0
    quick_deaths: int = 0
    backoff: float = BACKOFF_FIRST
    restart_at: float | None = None
    last_code: int = 0


ChildMain = Callable[[Settings, int, "socket.socket | None"], int]


def listen_socket(settings: Settings) -> socket.socket | None:
    """The HTTP port, bound once for every child; None when the server is off."""
    port = settings.service.http_port
    if port is None or port < 0:
        return None
    _, host = settings.api_listen()
    try:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
            sock.listen(BACKLOG)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason += " (a second `ms07 run`?)"
        raise ConfigError(f"cannot listen on {host}:{port}: {reason}; choose another port with --http-port, "
                          "MS07_HTTP_PORT or service.http_port (0: any free port)") from None
    sock.set_inheritable(True)
    return sock


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell says


class Supervisor:
    def __init__(self, settings: Settings, workers: int, child_main: ChildMain) -> None:
        self.settings = settings
        self.children = [_Child(i) for i in range(workers)]
        self.child_main = child_main
        self.sock: socket.socket | None = None
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code = 0
        self.gave_up: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        self.sock = listen_socket(self.settings)
        port = self.sock.getsockname()[1] if self.sock is not None else None
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            log.info("supervisor started", pid=os.getpid(), workers=len(self.children), http_port=port)
            for child in self.children:
                self._spawn(child, old_mask)
            while self._alive() or not self.stopping:
                self._wait_signal()
                self._reap()
                if not self.stopping:
                    self._restart_due(old_mask)
                elif time.monotonic() > self.stop_deadline:
                    self._kill_stragglers()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            if self.sock is not None:
                self.sock.close()
        log.info("supervisor stopped", exit_code=self.exit_code)
        if self.gave_up is not None:
            raise WorkersFailed(self.gave_up, self.exit_code or 1)
        return self.exit_code

    def _alive(self) -> bool:
        return any(c.pid is not None for c in self.children)

    def _wait_signal(self) -> None:
        now = time.monotonic()
        due = [c.restart_at for c in self.children if c.restart_at is not None and not self.stopping]
        timeout = max(0.01, min([1.0, *(t - now for t in due)]))
        info = signal.sigtimedwait(_SIGNALS, timeout)
        signos = {info.si_signo} if info is not None else set()
        signos |= signal.sigpending() & set(_STOP)  # a stop always wins over a restart
        for signo in signos & set(_STOP):
            signal.sigtimedwait([signo], 0)  # consume it
            self._stop(signal.Signals(signo).name)

    def _stop(self, reason: str) -> None:
        if not self.stopping:
            log.info("stopping every worker", reason=reason, workers=sum(c.pid is not None for c in self.children))
            self.stopping = True
            self.stop_deadline = time.monotonic() + self.settings.service.drain_grace_seconds + KILL_AFTER_GRACE
        for child in self.children:
            child.restart_at = None
            if child.pid is not None:
                _signal(child.pid, signal.SIGTERM)

    # ------------------------------------------------------------------ children

    def _spawn(self, child: _Child, old_mask: set[signal.Signals]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the supervisor's code
            code = 1
            try:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
                for signo in _STOP:
                    signal.signal(signo, signal.SIG_DFL)
                code = self.child_main(self.settings, child.index, self.sock)
            except Ms07Error as exc:
                sys.stderr.write(f"error: worker {child.index}: {exc}\n")
                code = exc.exit_code
            except BaseException:  # noqa: BLE001 - the child must end here, whatever happened
                import traceback

                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        child.pid, child.started, child.restart_at = pid, time.monotonic(), None
        log.info("worker started", worker=child.index, pid=pid)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = next((c for c in self.children if c.pid == pid), None)
            if child is None:
                continue
            self._exited(child, _exit_code(status))

    def _exited(self, child: _Child, code: int) -> None:
        uptime = time.monotonic() - child.started
        child.pid, child.last_code = None, code
        if self.stopping:
            log.info("worker stopped", worker=child.index, exit_code=code)
            if code != 0 and self.exit_code == 0:
                self.exit_code = code
            return
        if uptime >= STABLE_SECONDS:
            child.quick_deaths, child.backoff = 0, BACKOFF_FIRST
        else:
            child.quick_deaths += 1
        if child.quick_deaths >= MAX_QUICK_DEATHS:
            self.gave_up = (f"worker {child.index} died within {STABLE_SECONDS:g} s of its start "
                            f"{child.quick_deaths} times in a row (last exit code {code}); giving up: "
                            "its log lines above say why")
            log.error("giving up on a worker that keeps dying", worker=child.index, exit_code=code,
                      deaths=child.quick_deaths)
            self.exit_code = code or 1
            self._stop("a worker keeps dying")
            return
        delay = child.backoff
        child.backoff = min(BACKOFF_MAX, child.backoff * 2)
        child.restart_at = time.monotonic() + delay
        log.warning("worker exited; restarting it", worker=child.index, exit_code=code,
                    uptime_seconds=round(uptime, 1), restart_in=delay)

    def _restart_due(self, old_mask: set[signal.Signals]) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.pid is None and child.restart_at is not None and child.restart_at <= now:
                self._spawn(child, old_mask)

    def _kill_stragglers(self) -> None:
        for child in self.children:
            if child.pid is not None:
                log.warning("worker still running past the drain grace; killing it", worker=child.index,
                            pid=child.pid)
                _signal(child.pid, signal.SIGKILL)
        self.stop_deadline = float("inf")  # once: the reap follows


def _signal(pid: int, signo: signal.Signals) -> None:
    try:
        os.kill(pid, signo)
    except ProcessLookupError:
        pass  # exited already: the reap sees it
