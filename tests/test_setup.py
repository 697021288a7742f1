"""setup.py links the module to the shared libstdc++ that libtorch runs on, whatever the toolchain.

A private static copy of libstdc++ in the module broke number formatting in kernel error messages
(cut at the first number on the CPU machine, a crash on the GPU machine, whose compiler has only a
static libstdc++). Here a toolchain like that is emulated with -static-libstdc++ on a probe library.
"""

import ctypes
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
import torch

import edlcm_ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPILER = shutil.which(os.environ.get("CXX", "c++"))
pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or COMPILER is None, reason="needs Linux and a C++ compiler"
)

# A kernel's error path in miniature: TORCH_CHECK formats numbers into the message.
PROBE_SOURCE = r"""
#include <c10/util/Exception.h>
#include <cstring>
extern "C" void format_probe(char* out, std::size_t size) {
  try {
    TORCH_CHECK(false, "probe: ", int64_t{80}, " members need ", std::size_t{51200}, " bytes");
  } catch (const c10::Error& e) {
    std::strncpy(out, e.what_without_backtrace(), size - 1);
  }
}
"""
WHOLE_MESSAGE = "probe: 80 members need 51200 bytes"


def setup_module_functions():
    spec = importlib.util.spec_from_file_location("edlcm_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() itself runs only as __main__
    return module


def probe_message(directory, link_args):
    """Builds the probe with a toolchain that links libstdc++ statically, plus link_args; its message."""
    directory.mkdir()
    source, library = directory / "probe.cpp", directory / "probe.so"
    source.write_text(PROBE_SOURCE)
    torch_dir = os.path.dirname(torch.__file__)
    torch_lib = os.path.join(torch_dir, "lib")
    compile_args = ["-shared", "-fPIC", "-std=c++17", "-I", os.path.join(torch_dir, "include"), str(source)]
    torch_link = ["-L", torch_lib, "-lc10", f"-Wl,-rpath,{torch_lib}"]
    command = [COMPILER, *compile_args, "-o", str(library), "-static-libstdc++", *link_args, *torch_link]
    built = subprocess.run(command, capture_output=True, text=True)
    if built.returncode != 0 and "static" in built.stderr + built.stdout:
        pytest.skip(f"this toolchain cannot link libstdc++ statically: {built.stderr[-300:]}")
    assert built.returncode == 0, built.stderr
    buffer = ctypes.create_string_buffer(512)
    ctypes.CDLL(str(library)).format_probe(buffer, ctypes.c_size_t(len(buffer)))
    return buffer.value.decode()


def test_a_static_libstdcxx_toolchain_still_links_the_shared_one(tmp_path):
    static_message = probe_message(tmp_path / "static", [])
    if static_message == WHOLE_MESSAGE:
        pytest.skip("a static libstdc++ formats numbers correctly here: the emulation shows nothing")
    assert static_message == "probe: "  # the defect, as the kernels showed it
    assert probe_message(tmp_path / "linked", setup_module_functions().shared_libstdcxx()) == WHOLE_MESSAGE


def test_the_built_module_needs_the_shared_libstdcxx():
    if shutil.which("ldd") is None:
        pytest.skip("needs ldd")
    needed = subprocess.run(["ldd", edlcm_ext._C.__file__], capture_output=True, text=True, check=True).stdout
    assert "libstdc++.so" in needed, needed
