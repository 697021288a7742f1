"""Builds edlcm_ext._C: CPU kernels always; CUDA kernels, as torchvision decides, when torch is a CUDA
build, a toolkit (nvcc) is found and either a GPU is visible or FORCE_CUDA=1 is set.

A CPU-only machine with nvcc on the PATH builds in minutes instead of compiling kernels it can never
run; FORCE_CUDA=1 builds them anyway (a wheel for GPU machines, or CI checking that they compile).
"""

import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(ROOT, "csrc")


def shared_libstdcxx():
    """The link argument that makes the module use the shared libstdc++ libtorch runs on.

    A module with its own static copy of libstdc++ formats numbers with that copy's functions on the
    process's locale data: kernel error messages were cut at the first number (the CPU machine, linked
    with -static-libstdc++) or crashed the process (the GPU machine). The GPU machine's compiler
    (/opt/gcc/bin/g++, 2026-12-04) has only a static libstdc++, so even an explicit -lstdc++ gave a
    private copy (2,249 std:: symbols defined, no libstdc++ in ldd). Naming the very file this process
    (torch imported) has mapped links it dynamically with any toolchain; -lstdc++ where none is mapped.
    """
    if not sys.platform.startswith("linux"):
        return []
    import torch  # noqa: F401  (libtorch loads libstdc++)

    with open("/proc/self/maps") as maps:
        mapped = sorted({line.split()[-1] for line in maps if "/libstdc++.so" in line})
    return mapped[:1] or ["-lstdc++"]


# CUDA 13 builds nothing older than sm_75; A100 (8.0) and H100 (9.0, plus PTX for newer GPUs).
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"


def _is_toolkit(path):
    return (
        bool(path)
        and os.path.isfile(os.path.join(path, "bin", "nvcc"))
        and os.path.isfile(os.path.join(path, "include", "cuda_runtime.h"))
    )


def find_cuda_home():
    """The directory holding bin/nvcc and include/cuda_runtime.h, or None.

    `nvcc` on the PATH may be a wrapper script outside the toolkit, which makes torch's own guess
    (two levels above nvcc) wrong, so candidates are checked for the headers too.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    return next((c for c in candidates if _is_toolkit(c)), None)


def want_cuda(torch_cuda_version, cuda_home, gpu_visible):
    force = os.environ.get("FORCE_CUDA", "0").strip()
    if force not in ("0", "1"):
        raise ValueError(f"FORCE_CUDA must be 0 or 1, got {force!r}")
    if force == "1" and (torch_cuda_version is None or cuda_home is None):
        raise RuntimeError("FORCE_CUDA=1 but torch is not a CUDA build or no CUDA toolkit (nvcc) was found")
    return torch_cuda_version is not None and cuda_home is not None and (gpu_visible or force == "1")


def cuda_library_include_dirs():
    """cuBLAS/cuSPARSE headers that ATen's CUDA headers include; torch's nvidia wheels ship them."""
    try:
        import nvidia
    except ImportError:
        return []
    return sorted(
        os.path.dirname(header)
        for base in nvidia.__path__
        for header in glob.glob(os.path.join(base, "*", "include", "cusparse.h"))
    )


def _sources(*patterns):
    # setuptools wants source paths relative to setup.py.
    return sorted(path for pattern in patterns for path in glob.glob(pattern, root_dir=ROOT))


def get_extensions():
    cuda_home = find_cuda_home()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = _sources("csrc/*.cpp", "csrc/cpu/*.cpp")
    # at::parallel_for runs on one thread unless OpenMP is on at compile and link time.
    extra_compile_args = {"cxx": ["-O3", "-fopenmp"]}
    kwargs = dict(extra_link_args=["-fopenmp"] + shared_libstdcxx(), include_dirs=[CSRC])
    if want_cuda(torch.version.cuda, cuda_home, torch.cuda.is_available()):
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
        sources += _sources("csrc/cuda/*.cu")
        extra_compile_args["cxx"].append("-DWITH_CUDA")
        extra_compile_args["nvcc"] = ["-O3", "-DWITH_CUDA"]
        kwargs["include_dirs"] += cuda_library_include_dirs()
        extension = CUDAExtension
    else:
        extension = CppExtension
    return [extension("edlcm_ext._C", sources, extra_compile_args=extra_compile_args, **kwargs)]


def build_ext_class():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import shared_libstdcxx
    setup(ext_modules=get_extensions(), cmdclass={"build_ext": build_ext_class()})
