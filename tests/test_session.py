"""Inference sessions: device choice, the provider that really ran, the cpu/gpu extras clash."""

import sys

import pytest

import aecompress.session as session
from aecompress.errors import AecError
from aecompress.package import load_package


def test_cpu_device_reports_cpu_provider():
    pkg = load_package("photo", "cpu", 1)
    assert pkg.session("analysis").provider == "CPUExecutionProvider"
    assert pkg.provider == "CPUExecutionProvider"


def test_auto_falls_back_to_a_provider_that_works():
    pkg = load_package("photo", "auto", 1)
    prov = pkg.session("synthesis").provider
    assert prov in session.available_providers()


def test_cuda_request_without_cuda_is_a_clear_error():
    if "CUDAExecutionProvider" in session.available_providers():
        pytest.skip("this machine has a CUDA provider")
    with pytest.raises(AecError, match="CUDA was requested"):
        load_package("photo", "cuda", 1).session("analysis")


def test_unknown_device():
    with pytest.raises(AecError, match="unknown device"):
        load_package("photo", "tpu").session("analysis")


def test_installed_runtime_is_found():
    assert session.installed_runtimes() == ["onnxruntime"]      # the test environment installs [cpu]


def test_both_runtime_distributions_installed_is_refused(monkeypatch, tmp_path):
    (tmp_path / "onnxruntime_gpu-1.32.0.dist-info").mkdir()
    monkeypatch.setattr(sys, "path", [str(tmp_path)] + sys.path)
    assert session.installed_runtimes() == ["onnxruntime", "onnxruntime-gpu"]
    with pytest.raises(AecError, match="both onnxruntime and onnxruntime-gpu"):
        session.open_session("whatever.onnx")
