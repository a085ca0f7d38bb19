"""Issue 6: nothing touches a model hub. With the network switched off in the process (sockets refuse every
host but this machine) and without the HF offline variables, every loading path still works: building the
demo of each family, loading it as a diffusers folder and as a single original-layout file, with a
separate VAE, and tokenizing with the offline CLIP tokenizers. The whole suite also runs with the guard on
(tests/conftest.py, and the trainer subprocesses through tests/offline/sitecustomize.py)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from network_guard import MARK, NetworkBlocked  # the instance tests/conftest.py installed
from tests.trainer_helpers import ROOT

LOAD_EVERY_FAMILY = textwrap.dedent("""
    import socket, sys, torch
    from trainer.models.demo import DEMO_FAMILIES, build_demo
    from trainer.models.loading import load_base_model
    try:
        socket.create_connection(("huggingface.co", 443), timeout=5)
        sys.exit("the network guard is not on")
    except OSError:
        pass
    for family in DEMO_FAMILIES:
        demo = build_demo(sys.argv[1] + "/" + family, family=family)
        for source in (demo / "model", demo / "model.safetensors"):
            base = load_base_model(source, vae=demo / "model")
            assert base.family == family, (source, base.family)
            ids = base.tokenizer("shapes, red circle", return_tensors="pt").input_ids
            with torch.no_grad():
                base.text_encoder(ids)
        print("loaded", family, flush=True)
""")


def test_every_family_loads_with_the_network_switched_off(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT / "tests" / "offline"), str(ROOT)]))
    result = subprocess.run([sys.executable, "-c", LOAD_EVERY_FAMILY, str(tmp_path)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded sd1" in result.stdout and "loaded sd2" in result.stdout
    blocked = [line for line in result.stderr.splitlines() if line.startswith(MARK)]
    assert blocked == [f"{MARK}: name lookup 'huggingface.co'"]  # only the guard's own probe


def test_the_guard_is_on_in_the_suite_and_spares_loopback():
    with pytest.raises(NetworkBlocked):
        socket.getaddrinfo("huggingface.co", 443)
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("203.0.113.7", 443), timeout=1)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        socket.create_connection(server.getsockname(), timeout=5).close()
    finally:
        server.close()
