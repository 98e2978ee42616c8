"""Thin CMake driver (after pybind11's cmake_example): Python-side facts become -D flags.

CMakeLists.txt owns the source list; this file only knows where the extension must land.
Environment knobs: PTQ_CUDA=AUTO|ON|OFF (default AUTO), CMAKE_BUILD_PARALLEL_LEVEL.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def read_version() -> str:
    text = (ROOT / "pyengine" / "_version.py").read_text()
    return re.search(r'__version__\s*=\s*"([^"]+)"', text).group(1)


class CMakeExtension(Extension):
    def __init__(self, name: str, sourcedir: str = "") -> None:
        super().__init__(name, sources=[])
        self.sourcedir = os.fspath(Path(sourcedir).resolve())


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
        ]
        try:
            import pybind11

            cmake_args.append(f"-Dpybind11_DIR={pybind11.get_cmake_dir()}")
        except ImportError:
            pass
        try:
            import ninja  # noqa: F401

            cmake_args.append("-GNinja")
        except ImportError:
            pass
        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cmake", ext.sourcedir, *cmake_args], cwd=build_temp, check=True)
        subprocess.run(["cmake", "--build", ".", "--config", cfg], cwd=build_temp, check=True)


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
