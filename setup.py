"""Thin CMake driver (after pybind11's cmake_example): Python-side facts become -D flags.

CMakeLists.txt owns the source list; this file only knows where the extension must land.
Environment knobs: PTQ_CUDA=AUTO|ON|OFF (default AUTO), CMAKE_BUILD_PARALLEL_LEVEL.

The build directory (build/temp.*/ptqengine._core) outlives one `pip install`, but the tools that
configured it may not: pip builds in a throw-away environment whose cmake, ninja and pybind11 are
gone by the next install, and CMake's cache remembers their paths. So the directory carries a
stamp of everything its cache depends on (the cmake, generator and make program, Python,
pybind11, compilers, our -D flags); when the stamp differs, the directory is configured from
scratch, and a reused directory that still fails is wiped and built once more from scratch.
"""
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
STAMP = "ptq-build-stamp.json"
log = logging.getLogger("ptqengine.setup")


def read_version() -> str:
    text = (ROOT / "pyengine" / "_version.py").read_text()
    return re.search(r'__version__\s*=\s*"([^"]+)"', text).group(1)


class CMakeExtension(Extension):
    def __init__(self, name: str, sourcedir: str = "") -> None:
        super().__init__(name, sources=[])
        self.sourcedir = os.fspath(Path(sourcedir).resolve())


def generator_args() -> List[str]:
    """Ninja (with its exact path) when the ninja package is there; else CMake's default."""
    if os.environ.get("CMAKE_GENERATOR"):
        return []  # the user's choice; it is part of the stamp through the environment
    try:
        import ninja
    except ImportError:
        return []
    bin_dir = getattr(ninja, "BIN_DIR", None)
    program = Path(bin_dir) / "ninja" if bin_dir else shutil.which("ninja")
    return ["-GNinja"] + ([f"-DCMAKE_MAKE_PROGRAM={program}"] if program else [])


def pybind11_args() -> List[str]:
    try:
        import pybind11
    except ImportError:
        return []
    return [f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"]


def build_stamp(cmake: str, cmake_args: List[str]) -> dict:
    """Everything a CMake cache depends on; a different stamp means a stale cache."""
    env = {k: os.environ.get(k) for k in ("CC", "CXX", "CUDACXX", "CXXFLAGS", "LDFLAGS", "CMAKE_GENERATOR")}
    return {"cmake": os.path.realpath(cmake), "args": cmake_args, "env": env}


def fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)


def prepare_build_dir(build_temp: Path, stamp: dict) -> bool:
    """Wipes build_temp unless its stamp matches; True when an existing configuration is reused."""
    try:
        reusable = json.loads((build_temp / STAMP).read_text()) == stamp
    except (OSError, ValueError):
        reusable = False
    if not reusable:
        if build_temp.exists():
            log.info("ptqengine: %s was configured by other tools; configuring from scratch", build_temp)
        fresh_dir(build_temp)
    return reusable


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        ext_fullpath = Path.cwd() / self.get_ext_fullpath(ext.name)
        extdir = ext_fullpath.parent.resolve()
        cfg = "Debug" if self.debug else "Release"
        cmake_args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}{os.sep}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DPTQ_VERSION={read_version()}",
            f"-DPTQ_CUDA={os.environ.get('PTQ_CUDA', 'AUTO')}",
            "-DPTQ_BUILD_TESTS=OFF",
            *pybind11_args(),
            *generator_args(),
        ]
        cmake = shutil.which("cmake") or "cmake"
        build_temp = Path(self.build_temp) / ext.name
        stamp = build_stamp(cmake, cmake_args)
        reused = prepare_build_dir(build_temp, stamp)
        try:
            self.run_cmake(cmake, ext.sourcedir, cmake_args, cfg, build_temp, stamp)
        except subprocess.CalledProcessError:
            if not reused:
                raise
            log.warning("ptqengine: the reused build directory failed; building from scratch")
            fresh_dir(build_temp)
            self.run_cmake(cmake, ext.sourcedir, cmake_args, cfg, build_temp, stamp)

    @staticmethod
    def run_cmake(cmake: str, sourcedir: str, cmake_args: List[str], cfg: str, build_temp: Path,
                  stamp: dict) -> None:
        (build_temp / STAMP).unlink(missing_ok=True)  # written again only after a clean configure
        subprocess.run([cmake, sourcedir, *cmake_args], cwd=build_temp, check=True)
        (build_temp / STAMP).write_text(json.dumps(stamp, sort_keys=True))
        subprocess.run([cmake, "--build", ".", "--config", cfg], cwd=build_temp, check=True)


# Sources ptqengine.gpu compiles at run time (NVRTC through CuPy): the same files the core is built
# from, shipped flat in ptqengine/gpu/kernels/ (pyengine/gpu/kernels.py finds them there).
GPU_KERNEL_SOURCES = ("csrc/binning.h", "csrc/cuda/stats_logic.h", "csrc/cuda/stats_kernels.cu")


class BuildPyWithKernels(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "ptqengine" / "gpu" / "kernels"
        target.mkdir(parents=True, exist_ok=True)
        for source in GPU_KERNEL_SOURCES:
            self.copy_file(str(ROOT / source), str(target / Path(source).name))


def discover_packages(package: str, directory: str) -> dict:
    """Map package names to folders for `directory` and every sub-folder with an __init__.py."""
    found = {}
    for init in sorted((ROOT / directory).rglob("__init__.py")):
        rel = init.parent.relative_to(ROOT / directory)
        name = ".".join((package, *rel.parts)) if rel.parts else package
        found[name] = init.parent.relative_to(ROOT).as_posix()
    return found


# The layout the project asked for: pyengine/ is the package `ptqengine`, cli/ is `ptqengine.cli`.
PACKAGE_DIR = {**discover_packages("ptqengine", "pyengine"), **discover_packages("ptqengine.cli", "cli")}

setup(
    version=read_version(),
    packages=list(PACKAGE_DIR),
    package_dir=PACKAGE_DIR,
    ext_modules=[CMakeExtension("ptqengine._core")],
    cmdclass={"build_ext": CMakeBuild, "build_py": BuildPyWithKernels},
    zip_safe=False,
)
