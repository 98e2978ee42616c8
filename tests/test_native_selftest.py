"""The C++ core's own test (csrc/selftest.cpp), built with CMake into a temporary directory and run
by ctest: without Python or pybind11, under AddressSanitizer and UndefinedBehaviorSanitizer when the
compiler has them."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def _sanitizers_work(cxx: str, tmp: Path) -> bool:
    """True when the compiler can build and link a program with ASan + UBSan."""
    src = tmp / "probe.cpp"
    src.write_text("int main() { return 0; }\n")
    probe = subprocess.run([cxx, "-fsanitize=address,undefined", str(src), "-o", str(tmp / "probe")],
                           capture_output=True)
    return probe.returncode == 0 and subprocess.run([str(tmp / "probe")]).returncode == 0


def _run(cmd, cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"


def test_core_selftest(tmp_path):
    cmake, cxx = shutil.which("cmake"), _compiler()
    if cmake is None or cxx is None:
        pytest.skip("needs cmake and a C++ compiler (both are installed in CI)")
    sanitize = "address,undefined" if _sanitizers_work(cxx, tmp_path) else ""
    build = tmp_path / "build"
    _run([cmake, "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Debug", "-DPTQ_BUILD_PYTHON=OFF",
          "-DPTQ_BUILD_TESTS=ON", "-DPTQ_CUDA=OFF", f"-DPTQ_SANITIZE={sanitize}"], tmp_path)
    _run([cmake, "--build", build, "--parallel", "2"], tmp_path)
    ctest = shutil.which("ctest") or str(Path(cmake).with_name("ctest"))
    _run([ctest, "--output-on-failure", "--timeout", "600"], build)
