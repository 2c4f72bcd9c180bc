"""Inference sessions: device choice, the provider that really ran, the cpu/gpu extras clash."""

import json
import sys

import numpy as np
import pytest

import aecompress.session as session
from aecompress.errors import AecError
from aecompress.package import load_package

from .conftest import ROOT


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


def test_ctrl_c_while_onnxruntime_loads_is_an_interrupt(monkeypatch, tmp_path):
    """onnxruntime's C module turns a Ctrl-C during its initialisation into ImportError
    ("initialization failed"), which read as "onnxruntime is not installed" and let a batch go on.
    The signal is now held until the import is over and then delivered as itself."""
    import signal

    fake = tmp_path / "onnxruntime"
    fake.mkdir()
    (fake / "__init__.py").write_text(        # what the C module does with a Ctrl-C during its set-up
        "import signal\n"
        "try:\n"
        "    signal.raise_signal(signal.SIGINT)\n"
        "except KeyboardInterrupt:\n"
        "    raise ImportError('initialization failed') from None\n")
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            session._ort()
    finally:
        signal.signal(signal.SIGINT, old)
        sys.modules.pop("onnxruntime", None)


def test_decoding_many_files_opens_their_model_once(tmp_path, monkeypatch):
    """Without -m, each file's model is found by id: once per batch, with its sessions kept (it was
    found, hashed and opened again for every file, at half the speed)."""
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    import aecompress.package as package
    from aecompress.cli import app

    for k in range(3):
        Image.fromarray(np.full((32, 48, 3), 40 * k, np.uint8)).save(tmp_path / f"i{k}.png")
    assert CliRunner().invoke(app, ["encode", *[str(tmp_path / f"i{k}.png") for k in range(3)],
                                    "-o", str(tmp_path / "z") + "/", "--quiet"]).exit_code == 0
    opened = []
    real = package.open_session
    monkeypatch.setattr(package, "open_session", lambda *a, **k: opened.append(a[0]) or real(*a, **k))
    r = CliRunner().invoke(app, ["decode", *[str(tmp_path / "z" / f"i{k}.aez") for k in range(3)],
                                 "-o", str(tmp_path / "back") + "/", "--quiet"])
    assert r.exit_code == 0, r.output
    assert len(opened) == 1 and opened[0].name == "synthesis.onnx"
    assert len(list((tmp_path / "back").iterdir())) == 3


@pytest.fixture
def cuda_that_does_not_start(monkeypatch):
    """onnxruntime-gpu on a machine where CUDA cannot start (no driver, a library missing): the
    provider is listed, but sessions come up on the CPU. Counts the sessions tried."""
    import onnxruntime as ort

    real, tried = ort.InferenceSession, []

    def session_on_cpu(path, sess_options=None, providers=None):
        tried.append(providers)
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", session_on_cpu)
    return tried


@pytest.mark.parametrize("value, tries_cuda", [(None, True), ("", True), ("0", True), ("1", False), ("yes", False)])
def test_no_cuda_variable_reads_as_debug_does(cuda_that_does_not_start, monkeypatch, value, tries_cuda):
    """AECOMPRESS_NO_CUDA=0 turned CUDA off (any non-empty value did) while AECOMPRESS_DEBUG=0 is off:
    both read '' and '0' as off now."""
    if value is None:
        monkeypatch.delenv("AECOMPRESS_NO_CUDA", raising=False)
    else:
        monkeypatch.setenv("AECOMPRESS_NO_CUDA", value)
    session.open_session(ROOT / "models" / "denoise" / "denoise.onnx", "auto")
    assert (cuda_that_does_not_start[0][0] == "CUDAExecutionProvider") == tries_cuda


def test_cuda_that_does_not_start_stops_a_run_at_the_first_file(cuda_that_does_not_start, tmp_path):
    """--device cuda where CUDA cannot start failed once per file (each trying CUDA again); every
    file would fail alike, so encode, decode and denoise stop at the first."""
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from aecompress.cli import app
    from aecompress.compress import encode_file, open_codec
    from aecompress.errors import DeviceError

    from .conftest import smooth_image

    imgs = []
    for k in range(3):
        imgs.append(tmp_path / f"p{k}.png")
        Image.fromarray(np.roll(smooth_image(48, 64), k * 5, axis=1)).save(imgs[-1])
    tried = cuda_that_does_not_start
    res = CliRunner().invoke(app, ["encode", *map(str, imgs), "-o", f"{tmp_path / 'enc'}/", "--device", "cuda"])
    assert isinstance(res.exception, DeviceError) and "could not start" in str(res.exception)
    assert len(tried) == 1 and not list(tmp_path.glob("enc/*.aez"))
    cpu = open_codec(None, "cpu")
    for p in imgs:
        encode_file(p, p.with_suffix(".aez"), cpu)
    tried.clear()
    res = CliRunner().invoke(app, ["decode", *[str(p.with_suffix(".aez")) for p in imgs], "-o", f"{tmp_path / 'dec'}/",
                                   "--device", "cuda"])
    assert isinstance(res.exception, DeviceError) and len(tried) == 1
    tried.clear()
    res = CliRunner().invoke(app, ["denoise", *map(str, imgs), "-o", str(tmp_path / "dn"), "--device", "cuda",
                                   "-j", "2", "--json"])
    assert res.exit_code == 1 and "interrupted" not in res.output
    summary = json.loads(res.output.strip().splitlines()[-1])["summary"]
    assert summary["done"] == 0 and summary["failed"] >= 1 and summary["failed"] + summary["not_started"] == 3
    assert len(tried) <= 2                       # one a worker at most, not one a file


def test_a_failed_run_is_one_line_and_onnxruntime_logs_nothing(capfd):
    """onnxruntime's own failure while running a graph reached users as 'unexpected
    RuntimeException ... (a bug)' after onnxruntime had logged it in colour on standard error:
    one line now (MemoryError when an allocation failed), and nothing logged."""
    s = session.open_session(ROOT / "models" / "photo" / "analysis.onnx", "cpu")
    capfd.readouterr()
    with pytest.raises(AecError) as exc:
        s.run(np.zeros((1, 3, 0, 64), np.float32))          # a shape no Conv takes
    assert str(exc.value) == "onnxruntime could not run analysis.onnx of model photo (Invalid input shape: {0,64})"
    assert not isinstance(exc.value, session.ModelError)     # one image's failure: a batch goes on
    assert capfd.readouterr().err == ""

    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    class OutOfMemory:
        def __init__(self, real):
            self.real = real

        def get_inputs(self):
            return self.real.get_inputs()

        def run(self, *args):
            raise RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned "
                                   "while running Conv node. Name:'c' Status Message: Failed to allocate memory "
                                   "for requested buffer of size 5368709120")

    s._sess = OutOfMemory(s._sess)
    with pytest.raises(MemoryError, match="Failed to allocate memory"):
        s.run(np.zeros((1, 3, 64, 64), np.float32))
