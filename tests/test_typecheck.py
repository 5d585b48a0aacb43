"""mypy checks the TensorRT code against the tensorrt-stubs package (TensorRT itself cannot be installed here).

The stubs are installed as ``tensorrt/__init__.pyi`` and ``tensorrt_bindings/*.pyi`` without a ``py.typed`` marker,
so mypy treats them as an untyped package, and with the project's ``ignore_missing_imports`` every TensorRT call
would silently be ``Any``. They also contain a few lines that are not valid Python (parameters named ``in``, a
parameter without default after defaulted ones). The test copies them into a temporary stub folder, repairs those
lines mechanically, points ``MYPYPATH`` at it and runs mypy on our TensorRT modules, so a misspelt TensorRT method or
a wrong argument type fails CI. A second test proves the stubs are really used by type-checking a deliberately
wrong snippet.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["python/resunet_trt/engine.py", "python/resunet_trt/backends/tensorrt.py"]


def _stub_dirs() -> list[Path]:
    spec = importlib.util.find_spec("tensorrt_stubs")
    if spec is None or spec.origin is None:
        pytest.skip("tensorrt-stubs is not installed (pip install tensorrt-stubs)")
    site = Path(spec.origin).parent.parent
    dirs = [site / "tensorrt", site / "tensorrt_bindings"]
    if not all((d / "__init__.pyi").is_file() for d in dirs):
        pytest.skip(
            "tensorrt-stubs layout not recognised (expected tensorrt/__init__.pyi, tensorrt_bindings/)"
        )
    return dirs


def _split_params(text: str) -> list[str]:
    """Split a parameter list on commas at bracket depth 0."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    return out


_DEF = re.compile(r"^(\s*def \w+\()(.*)(\)\s*->.*)$")


def repair_stub_line(line: str) -> str:
    """Make one stub line valid Python: rename parameters called ``in``; default params that follow defaults."""
    m = _DEF.match(line)
    if not m:
        return line
    params = _split_params(m.group(2))
    seen_default = False
    fixed = []
    for p in params:
        name = p.strip()
        name = re.sub(r"^in(\s*:)", r"in_\1", name)
        if name.startswith("*"):
            seen_default = False
        elif "=" in name:
            seen_default = True
        elif seen_default:
            name += " = ..."
        fixed.append(name)
    return m.group(1) + ", ".join(fixed) + m.group(3)


def test_repair_stub_line_cases():
    assert repair_stub_line("    def f(self, in: list[int], out: int) -> None:") == (
        "    def f(self, in_: list[int], out: int) -> None:"
    )
    assert (
        repair_stub_line("    def g(self, a: W = None, b: int) -> X:")
        == "    def g(self, a: W = None, b: int = ...) -> X:"
    )
    assert repair_stub_line("    def h(self, a: dict[str, int], inside: int) -> X:") == (
        "    def h(self, a: dict[str, int], inside: int) -> X:"
    )
    assert repair_stub_line("x: int = 3") == "x: int = 3"


@pytest.fixture(scope="module")
def stub_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trt_stubs")
    for src in _stub_dirs():
        dst = root / src.name
        dst.mkdir()
        for f in src.glob("*.pyi"):
            lines = f.read_text().splitlines()
            # tensorrt_libs (the shared-library wheel) has no stubs and nothing to type.
            lines = [repair_stub_line(ln) for ln in lines if not ln.startswith("import tensorrt_libs")]
            (dst / f.name).write_text("\n".join(lines) + "\n")
    return root


def _mypy(stub_path: Path, *targets: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run mypy with the repaired stubs; errors inside the stubs themselves and in modules we only import
    (other parts of the package) are not ours to report here. One cache folder serves both tests."""
    config = stub_path / "mypy.ini"
    config.write_text(
        "[mypy]\npython_version = 3.11\nignore_missing_imports = True\nfollow_imports = silent\n"
        f"cache_dir = {stub_path / '.mypy_cache'}\n"
        "[mypy-tensorrt.*]\nignore_errors = True\n[mypy-tensorrt_bindings.*]\nignore_errors = True\n"
        # Heavy libraries the TensorRT modules do not type against: skip them to keep the check fast.
        "[mypy-torch.*,onnx.*,onnxruntime.*,onnxscript.*,cupy.*,scipy.*,nibabel.*]\nfollow_imports = skip\n"
    )
    env = dict(os.environ, MYPYPATH=str(stub_path))
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), *targets],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.slow
def test_tensorrt_modules_typecheck_against_stubs(stub_path):
    pytest.importorskip("mypy")
    result = _mypy(stub_path, *CHECKED)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_stubs_are_really_used(stub_path, tmp_path):
    """A misspelt TensorRT method and a wrong argument type must be reported, or the check above proves nothing."""
    pytest.importorskip("mypy")
    bad = tmp_path / "bad_trt.py"
    bad.write_text(
        "import tensorrt as trt\n"
        "builder = trt.Builder(trt.Logger())\n"
        "network = builder.create_network('strongly typed')\n"
        "builder.build_serialized_networkk(network)\n"
    )
    result = _mypy(stub_path, str(bad), cwd=tmp_path)
    assert result.returncode != 0
    assert "build_serialized_networkk" in result.stdout
    assert "create_network" in result.stdout
