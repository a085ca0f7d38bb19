"""Shared fixtures. One torch thread: two threads on a busy 2-core machine can be 100x slower."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "offline"))
import network_guard  # noqa: E402

network_guard.install()  # the whole suite runs with the network switched off (loopback still works)

from . import shared_refs  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Tell tests/shared_refs.py which test is running (it refuses tests without the ``shared`` marker)."""
    shared_refs.set_current_item(item)
    try:
        yield
    finally:
        shared_refs.set_current_item(None)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny SD1.x-shaped diffusers folder, built once per test session."""
    from trainer.models.tiny import build_tiny_sd1

    out = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_sd1(out, seed=0)
    return out


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory):
    """The built-in demo (model, dataset, job.toml), built once per test session."""
    from trainer.models.demo import build_demo

    out = tmp_path_factory.mktemp("demo")
    build_demo(out)
    return out


@pytest.fixture(scope="session")
def sdxl_demo_dir(tmp_path_factory):
    """The demo built for SDXL: the tiny SDXL folder (model/), its single file (model.safetensors), data, job."""
    from trainer.models.demo import build_demo

    out = tmp_path_factory.mktemp("sdxl_demo")
    build_demo(out, family="sdxl")
    return out


@pytest.fixture(scope="session")
def sd2_demo_dir(tmp_path_factory):
    """The demo built for SD2.x (v-prediction, like SD2.x-768-v)."""
    from trainer.models.demo import build_demo

    out = tmp_path_factory.mktemp("sd2_demo")
    build_demo(out, family="sd2")
    return out


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium for the browser tests of one module."""
    from tests.browser_page import chromium

    with chromium() as opened:
        yield opened
