"""Broken or hostile model packages (from an audit of them): each is refused as a model problem,
in one line, before it can cost memory, hide a good package or be blamed on a file."""

import json
import shutil

import numpy as np
import pytest

from aecompress.errors import ModelError
from aecompress.package import load_package, manifest_problem, read_manifest

from .conftest import ROOT


def copy_package(tmp_path, name="photo", folder=None):
    dst = tmp_path / (folder or f"{name}_copy")
    shutil.copytree(ROOT / "models" / name, dst)
    return dst


DROP = object()          # edit_manifest: remove the key


def edit_manifest(pkg, **change):
    m = json.loads((pkg / "manifest.json").read_text())
    for k, v in change.items():
        if v is DROP:
            del m[k]
        else:
            m[k] = v
    (pkg / "manifest.json").write_text(json.dumps(m))
    return m


@pytest.mark.parametrize("name, change, words", [
    ("denoise", {"align": 4096}, "align must be a whole number from 1 to 64, not 4096"),
    ("denoise", {"align": 0}, "align must be"),
    ("denoise", {"align": 8.5}, "align must be"),
    ("denoise", {"receptive_radius": 10**6}, "receptive_radius must be"),
    ("photo", {"pad_multiple": 4096}, "pad_multiple must be a whole number from 1 to 256"),
    ("photo", {"pad_multiple": 32}, "pad_multiple must be a multiple of 64"),
    ("photo", {"pad_multiple": DROP}, "pad_multiple must be a multiple of 64, not missing"),
    ("photo", {"downsample": 8}, "downsample is 16"),
    ("photo", {"latent_channels": 10**9}, "latent_channels must be"),
    ("photo", {"levels": 100000}, "levels must be a whole number from 1 to 64"),
    ("photo", {"levels": True}, "levels must be"),
    ("photo", {"overlap": {"analysis": 100000, "synthesis": 4}}, "overlap.analysis must be"),
    ("photo", {"overlap": {"analysis": 64, "synthesis": -1}}, "overlap.synthesis must be"),
    ("photo", {"overlap": 64}, "overlap is not a table"),
    ("photo", {"codec": "factorized", "graphs": {"analysis": "analysis.onnx", "synthesis": "synthesis.onnx"},
               "latent_shape": [1 << 30]}, "latent_shape must be"),
    ("photo", {"codec": "factorized", "graphs": {"analysis": "analysis.onnx", "synthesis": "synthesis.onnx"},
               "input_size": [28, 10**6]}, "input_size must be"),
])
def test_manifest_numbers_that_size_the_work_are_bounded(tmp_path, name, change, words):
    """A denoiser's align of 4096 padded a 192x128 image to 4096x4096 (GBs); a codec's pad_multiple,
    overlaps, latent_channels and levels were taken as they came too: refused when the manifest is read."""
    pkg = copy_package(tmp_path, name)
    edit_manifest(pkg, **change)
    with pytest.raises(ModelError, match="malformed manifest") as exc:
        load_package(pkg)
    assert words in str(exc.value) and "\n" not in str(exc.value)


FACTORIZED = {"codec": "factorized", "graphs": {"analysis": "analysis.onnx", "synthesis": "synthesis.onnx"}}


@pytest.mark.parametrize("change, words", [
    ({"encoder": {"rdoq_lambda": "abc"}}, "encoder.rdoq_lambda must be a number of at least 0, not 'abc'"),
    ({"encoder": {"rdoq_lambda": float("nan")}}, "encoder.rdoq_lambda must be a number of at least 0, not nan"),
    ({"encoder": {"rdoq_lambda": -1}}, "encoder.rdoq_lambda must be"),
    ({"encoder": {"rdoq_lambda": True}}, "encoder.rdoq_lambda must be"),
    ({"quality_anchor": {"position": 1}}, "quality_anchor is not a table of a quality and a position"),
    ({"quality_anchor": {"quality": "75", "position": 5}}, "quality_anchor is not a table"),
    ({"quality_anchor": {"quality": 75, "position": float("nan")}}, "quality_anchor is not a table"),
    ({"quality_anchor": {"quality": 75, "position": 100}}, "quality_anchor: quality 75 anchored at position 100, "
                                                           "outside the ladder"),
    ({"quality_anchor": {"quality": 100, "position": 5}}, "outside the ladder"),
    ({"resolution_ladder": {"scale": 1, "lo": 0, "hi": 8}}, "resolution_ladder is not a list of rungs"),
    ({"resolution_ladder": [{"scale": 1, "lo": 0}]}, "resolution_ladder is not a list of rungs"),
    ({"resolution_ladder": [{"scale": 1, "lo": 0, "hi": float("inf")}]}, "resolution_ladder is not a list"),
    ({"resolution_ladder": [{"scale": 5, "lo": 0, "hi": 8}]}, "resolution_ladder: unsupported resolution scale 5"),
    ({"resolution_ladder": [{"scale": "x", "lo": 0, "hi": 8}]}, "resolution_ladder: invalid resolution scale 'x'"),
    ({"resolution_ladder": [{"scale": 1, "lo": 0, "hi": 12}]}, "resolution_ladder: rung 1 runs from level 0 to 12"),
    ({"resolution_ladder": [{"scale": 2, "lo": 0, "hi": 3}, {"scale": 1, "lo": 5, "hi": 2}]},
     "rung 2 runs from level 5 to 2: its levels must rise within the model's 0 to 8"),
    ({"levels": 4}, "resolution_ladder: rung 2 runs from level 0.9672 to 3.1238"),   # the shipped ladder, 4 levels
    ({**FACTORIZED, "input_size": [28, 28], "latent_shape": [32]},
     "resolution_ladder: only hyperprior codecs can change resolution"),
])
def test_the_encoders_manifest_fields_are_checked_when_the_manifest_is_read(tmp_path, change, words):
    """encoder.rdoq_lambda, resolution_ladder and quality_anchor were read only when the codec was
    built: `models` listed such a package as good, and encode failed with a line like "malformed
    manifest ('quality')" (a NaN rdoq_lambda was not refused at all: every value rounded down). They
    are refused with the other manifest problems, when the manifest is read."""
    pkg = copy_package(tmp_path)
    edit_manifest(pkg, **change)
    with pytest.raises(ModelError, match="malformed manifest") as exc:
        load_package(pkg)
    assert words in str(exc.value) and "\n" not in str(exc.value)


def _architecture(**change) -> dict:
    """The shipped photo codec's architecture with some fields changed."""
    return {**json.loads((ROOT / "models" / "photo" / "manifest.json").read_text())["architecture"], **change}


@pytest.mark.parametrize("change, words", [
    ({"architecture": _architecture(lambdas=["abc"] * 9)},
     "architecture.lambdas must be a list of numbers above 0 (one a level), not ['abc', 'abc', "),
    ({"architecture": _architecture(lambdas=[-0.001] + [0.01] * 8)}, "architecture.lambdas must be a list of numbers"),
    ({"architecture": _architecture(lambdas=[0] + [0.01] * 8)}, "architecture.lambdas must be"),
    ({"architecture": _architecture(lambdas=[float("nan")] * 9)}, "architecture.lambdas must be"),
    ({"architecture": _architecture(lambdas=[True] * 9)}, "architecture.lambdas must be"),
    ({"architecture": _architecture(lambdas=[0.01] * 8 + ["0.18"])}, "architecture.lambdas must be"),
    ({"architecture": _architecture(lambdas=0.01)}, "architecture.lambdas must be a list of numbers above 0 "
                                                    "(one a level), not 0.01"),
    ({"architecture": [0.01] * 9}, "architecture is not a table"),
])
def test_the_training_lambdas_are_checked_when_the_manifest_is_read(tmp_path, change, words):
    """architecture.lambdas (the training lambda of each level: encode --refine's rate-distortion
    weight) was read only when the codec was built: `models` listed such a package as good, a
    non-number failed every encode with "malformed manifest (could not convert ...)" and a zero or
    negative lambda gave the refinement a weight of 0 or NaN. Refused when the manifest is read."""
    pkg = copy_package(tmp_path)
    edit_manifest(pkg, **change)
    with pytest.raises(ModelError, match="malformed manifest") as exc:
        load_package(pkg)
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_a_codec_without_training_lambdas_for_its_levels_loads_and_codes_without_refine(tmp_path):
    """None or [] (none recorded), no lambdas at all, or another number than the levels: the package
    loads and the codec builds and codes; only --refine is refused, saying why."""
    from aecompress.codec import Codec

    from .conftest import smooth_image

    for arch in (_architecture(lambdas=None), _architecture(lambdas=[]),
                 {k: v for k, v in _architecture().items() if k != "lambdas"}, _architecture(lambdas=[0.01] * 8)):
        pkg = copy_package(tmp_path, folder="ok")
        edit_manifest(pkg, architecture=arch)
        c = Codec(load_package(pkg, "cpu", 1))
        assert "records no training lambda per level" in c.refine_problem()
        c.code(c.analyse(smooth_image(32, 32)), c.quality_to_position(50))
        shutil.rmtree(pkg)


def test_the_encoders_manifest_fields_accept_what_the_exporter_writes(tmp_path):
    """No ladder (full resolution, quality linear), an empty one, a scale written as a number, an
    anchor without its calibration PSNR, plain rounding (0): all still load and build a codec."""
    from aecompress.codec import Codec

    for change in ({"resolution_ladder": DROP, "quality_anchor": DROP}, {"resolution_ladder": [], "quality_anchor": {}},
                   {"resolution_ladder": [{"scale": 2.0, "lo": 0, "hi": 3}, {"scale": 0.75, "lo": 2, "hi": 8}],
                    "quality_anchor": {"quality": 75, "position": 4}},
                   {"encoder": {"rdoq_lambda": 0}}):
        pkg = copy_package(tmp_path, folder="ok")
        edit_manifest(pkg, **change)
        Codec(load_package(pkg))
        shutil.rmtree(pkg)


def test_models_names_a_package_with_a_broken_ladder_and_commands_refuse_it_in_one_line(tmp_path):
    """`models` skips it with the reason, like the other manifest problems (it listed it as good),
    and encode, decode and info -m refuse it with the model error's exit code, 4."""
    import os
    import subprocess
    import sys

    models = tmp_path / "models"
    bad = copy_package(models, folder="bad")
    edit_manifest(bad, quality_anchor={"position": 1})
    env = {**os.environ, "AECOMPRESS_MODELS": str(models)}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "aecompress", *map(str, args)], capture_output=True, text=True,
                              timeout=120, env=env)

    r = run("models", "--json")
    assert r.returncode == 0 and str(bad) not in r.stdout, r.stdout
    assert r.stderr.count("\n") == 1 and "skipped" in r.stderr and "quality_anchor is not a table" in r.stderr, r.stderr
    cat, aez = ROOT / "docs" / "samples" / "cat.png", tmp_path / "cat.aez"
    assert run("encode", cat, "-q", "10", "-o", aez).returncode == 0
    for args in (("encode", cat, "-o", tmp_path / "x.aez"), ("decode", aez, "-o", tmp_path / "x.png"), ("info", aez)):
        r = run(*args, "-m", bad)
        assert r.returncode == 4 and r.stderr.count("\n") == 1, (args, r.stderr)
        assert "malformed manifest (quality_anchor is not a table" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.aez").exists() and not (tmp_path / "x.png").exists()


def test_the_shipped_and_the_trainings_manifests_are_within_the_bounds():
    for name in ("photo", "denoise"):
        read_manifest(ROOT / "models" / name)
    # as aecompress.train.export_dense and train.denoiser write them
    dense = {"format": "aecompress-model/1", "name": "d", "kind": "codec", "codec": "factorized", "channels": 1,
             "input_size": [28, 28], "latent_shape": [32], "levels": 1,
             "graphs": {"analysis": "analysis.onnx", "synthesis": "synthesis.onnx"}, "tables": "tables.npz"}
    assert manifest_problem(dense) is None
    den = {"format": "aecompress-model/1", "name": "dn", "kind": "denoiser", "channels": 3,
           "graphs": {"denoise": "denoise.onnx"}, "align": 8, "receptive_radius": 43}
    assert manifest_problem(den) is None


def test_tables_that_decompress_to_absurd_sizes_are_refused_before_loading(tmp_path, monkeypatch):
    """Every array of tables.npz was decompressed on load: 1 GiB of zeros compresses to 1 MB. The zip
    directory's sizes and each array's header are read first (here with the bound lowered, so the test
    stays small: 4 MiB of zeros against 3 MiB)."""
    import zipfile

    import aecompress.package as package

    monkeypatch.setattr(package, "MAX_TABLES_BYTES", 3 << 20)
    assert load_package("photo").tables                       # the shipped tables are well inside
    pkg = copy_package(tmp_path)
    t = dict(np.load(pkg / "tables.npz"))
    np.savez_compressed(pkg / "tables.npz", **t, pad=np.zeros(1 << 20, np.float32))
    assert (pkg / "tables.npz").stat().st_size < 1 << 20
    loaded, real_load = [], np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: loaded.append(a) or real_load(*a, **k))
    with pytest.raises(ModelError, match=r"cannot read tables.npz \(its arrays hold 5 MiB, more than 3 MiB\)"):
        load_package(pkg).tables
    assert not loaded
    # an array header that names far more than its entry holds (np.load makes the array first)
    liar = copy_package(tmp_path, folder="liar")
    with zipfile.ZipFile(liar / "tables.npz", "a") as z, z.open("big.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (1 << 40,)})
        f.write(bytes(64))
    with pytest.raises(ModelError, match="big.npy names an array of shape"):
        load_package(liar).tables


def retype_input(path, elem):
    """The graph's input as another element type, cast to float inside (what a float16 export does)."""
    import onnx
    from onnx import TensorProto, helper

    g = onnx.load(path)
    name = g.graph.input[0].name
    g.graph.input[0].type.tensor_type.elem_type = elem
    for n in g.graph.node:
        n.input[:] = [name + "_f" if x == name else x for x in n.input]
    g.graph.node.insert(0, helper.make_node("Cast", [name], [name + "_f"], to=TensorProto.FLOAT))
    onnx.save(g, path)


def add_second_input(path):
    import onnx
    from onnx import TensorProto, helper

    g = onnx.load(path)
    name = g.graph.input[0].name
    for n in g.graph.node:
        n.input[:] = [name + "_s" if x == name else x for x in n.input]
    g.graph.node.insert(0, helper.make_node("Add", [name, "extra"], [name + "_s"]))
    g.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))
    onnx.save(g, path)


@pytest.mark.parametrize("graph, damage, words", [
    ("denoise", "float16", "input 'input' is float16, not float32"),
    ("denoise", "int32", "input 'input' is int32, not float32"),
    ("denoise", "two", "takes 2 inputs (input, extra), not 1"),
    ("synthesis", "float16", "synthesis.onnx input 'input' is float16"),
    ("analysis", "two", "analysis.onnx takes 2 inputs"),
])
def test_a_graph_that_takes_the_wrong_input_is_a_model_error_when_opened(tmp_path, graph, damage, words):
    """A graph whose input is float16 or an integer, or that takes a second input, failed at its first
    run as 'unexpected ... (a bug)' (exit 1): the session checks what it takes when it opens."""
    from onnx import TensorProto

    pkg = copy_package(tmp_path, "denoise" if graph == "denoise" else "photo")
    path = pkg / f"{graph}.onnx"
    if damage == "two":
        add_second_input(path)
    else:
        retype_input(path, getattr(TensorProto, damage.upper()))
    with pytest.raises(ModelError) as exc:
        load_package(pkg, "cpu").session(graph)
    assert words in str(exc.value) and "\n" not in str(exc.value)


def test_the_shipped_graphs_pass_the_session_checks():
    for graph in ("analysis", "hyper_analysis", "synthesis"):
        load_package("photo", "cpu").session(graph)
    load_package("photo", "cpu").encoder_session("refine_graph")
    load_package("denoise", "cpu").session("denoise")


def test_encoding_with_a_two_input_analysis_exits_4(tmp_path):
    from .test_cli_codec import run

    pkg = copy_package(tmp_path)
    add_second_input(pkg / "analysis.onnx")
    r = run("encode", ROOT / "docs" / "samples" / "cat.png", "-m", pkg, "-o", tmp_path / "x.aez")
    assert r.returncode == 4 and "analysis.onnx takes 2 inputs" in r.stderr and "unexpected" not in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and not (tmp_path / "x.aez").exists()


def test_a_graph_in_onnxruntimes_own_format_still_serves(tmp_path):
    """onnxruntime runs its ORT format (a flatbuffer, .ort) as well as ONNX: the check that a graph
    is a protobuf (below) refused such a package (encode exit 4) that worked before it."""
    pytest.importorskip("onnx")
    import subprocess
    import sys

    pkg = copy_package(tmp_path)
    r = subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(pkg)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and (pkg / "synthesis.ort").exists(), r.stderr
    edit_manifest(pkg, graphs={**json.loads((pkg / "manifest.json").read_text())["graphs"],
                               "synthesis": "synthesis.ort"})
    png = tmp_path / "x.png"
    from PIL import Image

    Image.open(ROOT / "docs" / "samples" / "cat.png").crop((0, 0, 96, 64)).save(png)
    for args in (["encode", str(png), "-o", str(tmp_path / "x.aez")],
                 ["decode", str(tmp_path / "x.aez"), "-o", str(tmp_path / "back.png")]):
        r = subprocess.run([sys.executable, "-m", "aecompress", *args, "-m", str(pkg)], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "back.png").size == (96, 64)


def test_models_does_not_list_a_package_whose_graph_is_not_onnx(tmp_path):
    """A text file named analysis.onnx (or a graph cut short) was listed by `models` as a good package:
    the graphs hashed for the model id are checked to be protobuf messages with a graph in them (no
    graph is loaded for the listing)."""
    import os
    import subprocess
    import sys

    from aecompress.package import onnx_problem

    for f in sorted((ROOT / "models").glob("*/*.onnx")):
        assert onnx_problem(f.read_bytes()) is None, f
    models = tmp_path / "models"
    copy_package(models, folder="text")
    (models / "text" / "analysis.onnx").write_text("this is not a graph\n")
    copy_package(models, folder="cut")
    data = (models / "cut" / "synthesis.onnx").read_bytes()
    (models / "cut" / "synthesis.onnx").write_bytes(data[: len(data) // 2])
    r = subprocess.run([sys.executable, "-m", "aecompress", "models", "--json"], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "AECOMPRESS_MODELS": str(models)})
    assert r.returncode == 0, r.stderr
    assert sorted(row["path"] for row in json.loads(r.stdout)) == sorted(
        str(ROOT / "models" / n) for n in ("denoise", "photo"))
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and all(w.startswith("aecompress: warning: skipped") for w in lines), r.stderr
    assert "analysis.onnx is not an ONNX model" in r.stderr
    assert "synthesis.onnx is not an ONNX model (cut short)" in r.stderr


def nan_output(path):
    """The graph's output times NaN (a diverged model)."""
    import onnx
    from onnx import helper, numpy_helper

    g = onnx.load(path)
    out = g.graph.output[0].name
    for n in g.graph.node:
        n.output[:] = [out + "_pre" if x == out else x for x in n.output]
    g.graph.initializer.append(numpy_helper.from_array(np.array(np.nan, dtype=np.float32), "nan_c"))
    g.graph.node.append(helper.make_node("Mul", [out + "_pre", "nan_c"], [out]))
    onnx.save(g, path)


@pytest.mark.parametrize("damage", ["nan", "two_inputs"])
@pytest.mark.parametrize("jobs", [1, 2])
def test_a_broken_denoiser_stops_the_batch_at_the_first_file_with_exit_4(tmp_path, damage, jobs):
    """A denoiser that gives NaN, or whose graph takes two inputs, failed every file in turn, each
    with its own error line, and the batch ended with exit 1: every file would fail alike, so it
    stops as for a device that cannot start, with the model error's exit code."""
    from PIL import Image
    from typer.testing import CliRunner

    from aecompress.cli import app

    from .conftest import smooth_image

    pkg = copy_package(tmp_path, "denoise")
    (nan_output if damage == "nan" else add_second_input)(pkg / "denoise.onnx")
    src = tmp_path / "in"
    src.mkdir()
    for k in range(4):
        Image.fromarray(smooth_image(32, 48, seed=k)).save(src / f"p{k}.png")
    r = CliRunner().invoke(app, ["denoise", str(src), "-m", str(pkg), "-o", str(tmp_path / "out") + "/",
                                 "-j", str(jobs)])
    assert r.exit_code == 4, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("aecompress: error:")]
    assert 1 <= len(errors) <= jobs and "unexpected" not in r.output and "denoise.onnx" in errors[0], r.output
    assert "0 denoised" in r.output and "not started" in r.output
    assert not list((tmp_path / "out").glob("*.png")) if (tmp_path / "out").exists() else True
    r = CliRunner().invoke(app, ["denoise", str(src / "p0.png"), "-m", str(pkg), "-o", str(tmp_path / "one.png")])
    assert r.exit_code == 4 and r.output.count("aecompress: error:") == 1, r.output


def test_a_broken_denoiser_stops_a_ray_batch_too(tmp_path):
    """On Ray workers: a graph that gives NaN stops the batch after its first file (exit 4), and one
    that cannot open is one model error before any worker starts (each file failed as a dead worker)."""
    pytest.importorskip("ray")
    from PIL import Image
    from typer.testing import CliRunner

    from aecompress.cli import app

    from .conftest import smooth_image

    src = tmp_path / "in"
    src.mkdir()
    for k in range(3):
        Image.fromarray(smooth_image(32, 48, seed=k)).save(src / f"p{k}.png")
    nan = copy_package(tmp_path, "denoise", "nan")
    nan_output(nan / "denoise.onnx")
    two = copy_package(tmp_path, "denoise", "two")
    add_second_input(two / "denoise.onnx")
    r = CliRunner().invoke(app, ["denoise", str(src), "-m", str(two), "-o", str(tmp_path / "o2") + "/",
                                 "--engine", "ray"])
    assert isinstance(r.exception, ModelError) and "takes 2 inputs" in str(r.exception), (r.exception, r.output)
    assert not (tmp_path / "o2").exists()
    r = CliRunner().invoke(app, ["denoise", str(src), "-m", str(nan), "-o", str(tmp_path / "o1") + "/",
                                 "--engine", "ray"])
    assert r.exit_code == 4 and r.output.count("aecompress: error:") == 1 and "2 not started" in r.output, r.output


def test_a_synthesis_that_gives_nan_on_an_ordinary_file_is_the_models_fault(tmp_path):
    """A package whose synthesis gives NaN (one that says it decodes the shipped model's files) made
    every file it decoded 'damaged' (exit 3). A file whose values all lie inside their tables' ranges
    (no escapes) is ordinary: the NaN is the model's (exit 4), as it is when the synthesis gives NaN
    for a latent of zeros; a file whose escaped value overflows a sound synthesis is still damaged."""
    from aecompress import container
    from aecompress.compress import decode_bytes, open_codec
    from aecompress.errors import CorruptFileError, NonFiniteOutput

    from .conftest import coded_with_escape

    codec = open_codec(None, "cpu", 1)
    ordinary, escaped = coded_with_escape(codec)
    assert container.split_payload(container.unpack(ordinary)[1])[1] == b""       # no escapes

    pkg = copy_package(tmp_path)
    nan_output(pkg / "synthesis.onnx")
    edit_manifest(pkg, decodes=[codec.pkg.model_id.hex()])
    broken = load_package(pkg, "cpu", 1)
    for data in (ordinary, escaped):
        with pytest.raises(NonFiniteOutput, match="synthesis.onnx gave NaN"):
            decode_bytes(data, broken)
    with pytest.raises(CorruptFileError, match="far out of the model's range"):
        decode_bytes(escaped, codec.pkg)
    assert decode_bytes(ordinary, codec.pkg)[0].shape == (48, 64, 3)


def test_a_broken_copy_with_the_same_model_id_does_not_hide_the_good_package(tmp_path, monkeypatch):
    """A copy of the shipped codec whose manifest is broken where the model id does not look (its
    quality_anchor), earlier on the search path, made every file of that model fail to decode (exit
    4) and `info` name no model: such a manifest is now refused when it is read (the copy is skipped),
    and a package that cannot serve a file (here one that claims the id in `decodes` but whose
    tables do not fit it) makes way for the next package with the id."""
    from aecompress.compress import decode_bytes, file_info, open_codec
    from aecompress.package import find_by_id

    from .conftest import smooth_image

    codec = open_codec(None, "cpu", 1)
    data, _ = codec.code(codec.analyse(smooth_image(48, 64, seed=3)), codec.quality_to_position(75))
    models = tmp_path / "models"
    broken = copy_package(models, folder="aphoto")
    edit_manifest(broken, quality_anchor={"position": 1})
    # and one that claims the id in `decodes` but whose tables do not fit it
    claimer = copy_package(models, folder="bclaims")
    edit_manifest(claimer, levels=3, decodes=[codec.pkg.model_id.hex()], resolution_ladder=DROP, quality_anchor=DROP)
    monkeypatch.setenv("AECOMPRESS_MODELS", str(models))
    with pytest.raises(ModelError, match="malformed manifest"):
        load_package(broken)
    pixels, _, used = decode_bytes(data, device="cpu", threads=1)
    assert used.pkg.path == ROOT / "models" / "photo" and pixels.shape == (48, 64, 3)
    aez = tmp_path / "x.aez"
    aez.write_bytes(data)
    assert file_info(aez)["model"] == "photo"
    # when none can serve, the first one's error is what the user reads; exact ids come first
    tried = []

    def refuse(pkg):
        tried.append(pkg.path)
        raise ModelError(f"{pkg.path.name} refused")

    with pytest.raises(ModelError, match="photo refused"):
        find_by_id(codec.pkg.model_id[:8], usable=refuse)
    assert tried == [ROOT / "models" / "photo", claimer]          # the broken copy was never a candidate
