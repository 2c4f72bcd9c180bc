"""The desktop app (gui/), offscreen with pytest-qt: drops, the quality slider, the compare view,
the batch queue, errors shown in the window, settings, and closing during work.

Screenshots of the main states go to $AECOMPRESS_GUI_SCREENSHOTS when set (else the test's tmp dir).
Tests use the default codec package `photo` and small crops so the module runs in seconds.
"""

import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import threading  # noqa: E402
import warnings  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QMimeData, QPoint, QPointF, QSettings, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QFont, QGuiApplication  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox, QPushButton  # noqa: E402

from aecompress.compress import decode_bytes, encode_file, encode_picture, open_codec  # noqa: E402
from aecompress import container  # noqa: E402
from aecompress.imageio import read_image  # noqa: E402
from aecompress.ladder import resolution_name  # noqa: E402
from gui.app import create_app  # noqa: E402
from gui.batch_queue import CANCELLED, DONE, FAILED, SKIPPED, WAITING  # noqa: E402
from gui.compare import CompareView, from_qimage, to_qimage  # noqa: E402
from gui.main_window import MainWindow  # noqa: E402
from gui.runtime import Runtime  # noqa: E402
from gui.settings import Settings  # noqa: E402
from gui.workers import WorkQueue  # noqa: E402

from .conftest import SAMPLE, smooth_image  # noqa: E402

WAIT = 60_000


# -- fixtures --------------------------------------------------------------------------------------

def big_images(folder: Path, n: int, height: int, width: int) -> list[Path]:
    """n smooth PNGs img0.png ... in folder, large enough that a batch of them takes a while."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img{k}.png" for k in range(n)]
    for k, p in enumerate(paths):
        Image.fromarray(smooth_image(height, width, seed=k)).save(p)
    return paths

@pytest.fixture
def shots(tmp_path):
    d = Path(os.environ.get("AECOMPRESS_GUI_SCREENSHOTS") or tmp_path / "screenshots")
    d.mkdir(parents=True, exist_ok=True)

    def shot(widget, name: str) -> Path:
        QApplication.processEvents()
        p = d / f"{name}.png"
        assert widget.grab().save(str(p))
        return p

    return shot


@pytest.fixture
def settings(tmp_path, monkeypatch):
    ini = tmp_path / "settings" / "aecompress-gui.ini"
    monkeypatch.setenv("AECOMPRESS_GUI_SETTINGS", str(ini))     # nothing is written to the user's home
    return Settings(QSettings(str(ini), QSettings.Format.IniFormat))


def stop_and_quit(win: MainWindow) -> None:
    """Work a test leaves running when its window is closed after it: the answer is "Stop and quit"."""
    win.ask_to_stop = lambda work: True


def make_window(qtbot, settings, size=(1100, 700)) -> MainWindow:
    create_app()
    win = MainWindow(settings, Runtime("cpu", threads=2))
    qtbot.addWidget(win, before_close_func=stop_and_quit)
    win.resize(*size)
    win.show()
    qtbot.waitExposed(win)
    return win


@pytest.fixture(autouse=True)
def no_unexpected_dialogs(monkeypatch):
    """A modal question box would wait forever offscreen: fail instead (tests that expect one patch it)."""
    def question(*args, **kwargs):
        raise AssertionError(f"unexpected dialog: {args[1:3]}")
    monkeypatch.setattr("gui.batch_queue.QMessageBox.question", question)
    monkeypatch.setattr("gui.main_window.MainWindow.ask_to_stop", question, raising=False)


@pytest.fixture
def window(qtbot, settings):
    win = make_window(qtbot, settings)
    yield win
    win.close()


@pytest.fixture
def crops(tmp_path):
    """Small photo crops (128x96) of the sample image, as PNG files."""
    im = Image.open(SAMPLE).convert("RGB")
    out = []
    for k, (x, y) in enumerate([(150, 60), (40, 150), (280, 120), (300, 10), (10, 10), (200, 190)]):
        p = tmp_path / "in" / f"crop{k}.png"
        p.parent.mkdir(exist_ok=True)
        im.crop((x, y, x + 128, y + 96)).save(p)
        out.append(p)
    return out


def drop(win, paths) -> None:
    """What a file manager's drag and drop delivers: a drag entering the window, then the drop."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    pos = QPoint(win.width() // 2, win.height() // 2)
    args = (Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        enter = QDragEnterEvent(pos, *args)
    QApplication.sendEvent(win, enter)
    assert enter.isAccepted()
    ev = QDropEvent(QPointF(pos), *args)
    QApplication.sendEvent(win, ev)
    assert ev.isAccepted()


def wait_result(qtbot, tab, previous=None):
    qtbot.waitUntil(lambda: tab.result is not None and tab.result is not previous and not tab.work.busy, timeout=WAIT)
    return tab.result


def run_batch(qtbot, tab) -> None:
    """Press the batch queue's Start and wait until the queue has run to its end."""
    tab.start()
    qtbot.waitUntil(lambda: not tab.running, timeout=WAIT)


# -- compress --------------------------------------------------------------------------------------

@pytest.fixture
def cat_png(tmp_path):
    p = tmp_path / "cat.png"
    p.write_bytes(SAMPLE.read_bytes())
    return p


def test_drop_image_compresses_and_reports(qtbot, window, cat_png, tmp_path, shots):
    shots(window, "empty")
    drop(window, [cat_png])
    assert window.tabs.currentWidget() is window.compress
    r = wait_result(qtbot, window.compress)
    w, h = Image.open(cat_png).size
    g = window.compress.grid
    assert g.text("bpp") == f"{len(r.data) * 8 / (w * h):.3f}"
    assert "dB" in g.text("psnr") and g.text("msssim").startswith("0.")
    assert "vs raw" in g.text("ratio") and "PNG" in g.text("ratio")
    assert "CPUExecutionProvider" in g.text("provider")
    assert window.provider.text() == "Provider: CPU" and "CPUExecutionProvider" in window.provider.toolTip()
    view = window.compress.panel.view
    assert view.before is not None and view.after is not None
    assert (view.before.width(), view.before.height()) == (w, h)
    # the GUI makes the same file as the CLI's encode_picture at that quality
    codec = open_codec("photo", "cpu", 2)
    ref = encode_picture(read_image(cat_png), codec, quality=window.compress.quality.value())
    assert r.data == ref.data
    np.testing.assert_array_equal(r.recon, ref.recon)
    shots(window, "compress-split")
    # save both outputs; the .aez decodes to the reconstruction shown
    out = window.compress.save_aez(tmp_path / "out" / "cat.aez")
    img = window.compress.save_image(tmp_path / "out" / "cat-compressed.png")
    qtbot.waitUntil(lambda: out.exists() and img.exists() and not window.work.busy, timeout=WAIT)
    pixels, header, _ = decode_bytes(out.read_bytes(), device="cpu")
    np.testing.assert_array_equal(pixels, r.recon)
    np.testing.assert_array_equal(np.asarray(Image.open(img)), r.recon)
    assert window.banner.text == ""


def test_a_tiny_image_shows_its_compression_ratio(qtbot, window, tmp_path):
    """A 1x1 image codes to a file larger than its 3 bytes of pixels: the Compress tab and the batch
    queue said "0.0 : 1 vs raw" where `aecompress encode` says 0.032:1."""
    p = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (200, 10, 10)).save(p)
    window.open_paths([p])
    r = wait_result(qtbot, window.compress)
    raw, vs_file = 3 / len(r.data), p.stat().st_size / len(r.data)
    assert raw < 1 and vs_file < 1
    assert window.compress.grid.text("ratio") == f"{raw:.3f} : 1 vs raw\n{vs_file:.3f} : 1 vs the PNG file"
    window.batch.add_paths([p])
    run_batch(qtbot, window.batch)
    assert window.batch.items[0].status == DONE
    assert f" bpp, {raw:.3f}:1, PSNR " in window.batch.items[0].message


def test_quality_slider_changes_the_result(qtbot, window, crops, shots):
    tab = window.compress
    tab.open_path(crops[1])
    r75 = wait_result(qtbot, tab)
    calls = []
    orig = tab.prepared.codec.analyse
    tab.prepared.codec.analyse = lambda px, *a, **k: calls.append(px.shape) or orig(px, *a, **k)
    tab.quality.setValue(10)
    r10 = wait_result(qtbot, tab, r75)
    tab.quality.setValue(12)
    r12 = wait_result(qtbot, tab, r10)
    tab.quality_spin.setValue(95)
    r95 = wait_result(qtbot, tab, r12)
    # moving the slider never re-runs the full-resolution analysis; the other resolutions of the
    # ladder (half for the low qualities, 5/3 for the high ones) are analysed once each, then reused
    assert (96, 128, 3) not in calls and len(calls) == len(set(calls)) <= 2, calls
    assert len(r10.data) < len(r75.data) < len(r95.data)
    assert r10.psnr < r95.psnr
    assert tab.estimate.text().endswith("bpp")
    assert tab.grid.text("quality") == "95"
    assert window.settings.quality == 95
    # a target bits-per-pixel: the largest file not above it
    tab.rate_mode.setCurrentIndex(1)
    tab.bpp.setValue(0.8)
    r_bpp = wait_result(qtbot, tab, r95)
    assert len(r_bpp.data) * 8 / (128 * 96) <= 0.8
    # side by side with the difference map
    tab.panel.side_btn.click()
    tab.panel.diff_btn.click()
    assert tab.panel.view.mode == "side" and tab.panel.view.show_diff
    shots(window, "compress-side-diff")


def test_paste_image_from_clipboard(qtbot, window):
    a = smooth_image(96, 128, seed=3)
    QGuiApplication.clipboard().setImage(to_qimage(a))
    window.paste()
    r = wait_result(qtbot, window.compress)
    assert window.compress.source.path is None and r.recon.shape == (96, 128, 3)
    np.testing.assert_array_equal(window.compress.prepared.picture.pixels, a)      # the pixels pasted
    assert "vs raw" in window.compress.grid.text("ratio")


@pytest.mark.parametrize("width", [128, 127])
def test_pixels_taken_from_a_qimage_are_their_own(width):
    """from_qimage copies: when a row had no padding (width x 3 a multiple of 4) it returned a view
    of the converted QImage's memory, freed on return (a pasted image, a screenshot compared in a
    test, came out with garbage pixels now and then)."""
    create_app()
    a = smooth_image(64, width, seed=4)
    got = from_qimage(to_qimage(a))
    assert got.flags.owndata and got.base is None
    np.testing.assert_array_equal(got, a)


# -- decompress and errors -------------------------------------------------------------------------

def test_drop_aez_shows_image_and_header(qtbot, window, cat_png, tmp_path, shots):
    aez = tmp_path / "cat.aez"
    rep = encode_file(cat_png, aez, open_codec("photo", "cpu", 2), quality=60)
    drop(window, [aez])
    tab = window.decompress
    assert window.tabs.currentWidget() is tab
    qtbot.waitUntil(lambda: tab.decoded is not None, timeout=WAIT)
    scale = container.read_header(aez.read_bytes()).scale
    assert tab.grid.text("dims") == "451 \u00d7 300" + (f", coded at {resolution_name(scale)} resolution" if scale != 1 else "")
    grid_right = tab.grid.mapTo(window, tab.grid.rect().topRight()).x()
    assert grid_right < window.width()                     # long values wrap: the side panel is not clipped
    assert tab.grid.text("model") == "photo"
    assert tab.grid.text("quality") == "60"
    assert tab.grid.text("bpp") == f"{rep['bpp']:.3f}"
    assert "CPUExecutionProvider" in tab.grid.text("provider")
    assert tab.panel.view.before.size().width() == 451
    tab.compare_with(cat_png)
    qtbot.waitUntil(lambda: tab.panel.view.after is not None and not window.work.busy, timeout=WAIT)
    assert tab.metrics.text("psnr") == f"{rep['psnr']:.2f} dB"
    shots(window, "decompress")
    said = []
    tab.statusMessage.connect(said.append)
    out = tab.save_image(tmp_path / "decoded.png")
    qtbot.waitUntil(lambda: out.exists(), timeout=WAIT)
    assert np.asarray(Image.open(out)).shape == (300, 451, 3)
    qtbot.waitUntil(lambda: f"Saved {out}" in said, timeout=WAIT)          # a PNG keeps every colour: no note
    gif = tab.save_image(tmp_path / "decoded.gif")                         # a GIF's palette: said, as decode says it
    qtbot.waitUntil(lambda: any(m.startswith(f"Saved {gif}") for m in said), timeout=WAIT)
    assert "a GIF holds 256 colours at most" in said[-1] and Image.open(gif).mode == "P"


@pytest.mark.parametrize("name,content,expect", [
    ("broken.aez", b"this is not an aez file at all", "broken.aez"),
    ("truncated.aez", None, "truncated.aez"),
    ("broken.png", b"\x89PNG\r\n\x1a\n garbage", "cannot read image"),
])
def test_drop_corrupt_file_shows_message(qtbot, window, crops, tmp_path, shots, name, content, expect):
    bad = tmp_path / name
    if content is None:                  # a real .aez cut short
        good = tmp_path / "good.aez"
        encode_file(crops[0], good, open_codec("photo", "cpu", 2))
        content = good.read_bytes()[: len(good.read_bytes()) // 2]
    bad.write_bytes(content)
    drop(window, [bad])
    qtbot.waitUntil(lambda: window.banner.text != "" and not window.work.busy, timeout=WAIT)
    assert expect in window.banner.text
    assert window.isVisible()
    assert window.windowTitle() == "aecompress"            # not the name of a file that is not shown
    if name == "broken.aez":
        shots(window, "error")
    # the window still works afterwards
    drop(window, [crops[0]])
    assert window.banner.text == ""
    wait_result(qtbot, window.compress)
    assert window.windowTitle() == "crop0.png \u2014 aecompress"


def test_a_damaged_file_is_named_by_its_name_on_every_tab(qtbot, window, crops, tmp_path):
    """The Decompress tab named a damaged .aez by its full path (a .aez that failed to decode by its
    name), the Compress and Denoise tabs an unreadable image by its full path, the batch queue by its
    name. Every tab names it by its name now, the full path in the banner's tooltip."""
    folder = tmp_path / "some" / "folder"
    folder.mkdir(parents=True)
    good = folder / "good.aez"
    encode_file(crops[0], good, open_codec("photo", "cpu", 2))
    cut = folder / "cut.aez"
    cut.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    (folder / "magic.aez").write_bytes(b"this is not an aez file at all")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")

    def fails(action, path, words):
        window.banner.hide()
        action()
        qtbot.waitUntil(lambda: window.banner.text != "" and not window.work.busy, timeout=WAIT)
        assert window.banner.text.startswith(path.name + words), window.banner.text
        assert str(path.parent) not in window.banner.text + window.statusBar().currentMessage()
        assert window.banner.label.toolTip() == window.banner.text.replace(path.name, str(path), 1)

    broken = folder / "broken.png"
    fails(lambda: drop(window, [folder / "magic.aez"]), folder / "magic.aez", ": not an .aez file")   # its header
    fails(lambda: drop(window, [cut]), cut, ": ")                                                    # its decoding
    fails(lambda: drop(window, [broken]), broken, ": cannot read image")                           # Compress
    window.tabs.setCurrentWidget(window.denoise)
    fails(lambda: drop(window, [broken]), broken, ": cannot read image")                           # Denoise
    drop(window, [good])
    qtbot.waitUntil(lambda: window.decompress.decoded is not None and not window.work.busy, timeout=WAIT)
    fails(lambda: window.decompress.compare_with(broken), broken, ": cannot read image")
    fails(lambda: window.decompress.compare_with(SAMPLE), SAMPLE, " is 451")                # another size


def test_an_unreadable_folder_dropped_is_a_message(qtbot, window, crops, tmp_path, monkeypatch):
    """A folder the user may not list (no read permission) raised PermissionError out of the drop:
    a traceback on standard error and nothing in the window. It is a one-line message now, as the
    CLI's, and the files dropped with it are opened all the same."""
    locked = tmp_path / "locked"
    locked.mkdir()
    iterdir = Path.iterdir

    def refuse(self):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", refuse)
    drop(window, [locked])
    assert window.banner.text == f"{locked}: cannot read this folder (Permission denied)"
    drop(window, [locked, crops[0], crops[1]])
    assert "cannot read this folder" in window.banner.text
    assert window.tabs.currentWidget() is window.batch
    assert [it.path for it in window.batch.items] == [crops[0], crops[1]]


def test_missing_model_is_a_message(qtbot, window, crops, tmp_path):
    window.add_model_folder(tmp_path)              # not a model package
    assert "not a model package" in window.banner.text
    window.compress.model.refresh()
    window.compress.model._current = "no-such-model"
    window.compress.open_path(crops[0])
    qtbot.waitUntil(lambda: "unknown model" in window.banner.text, timeout=WAIT)


# -- compare view ----------------------------------------------------------------------------------

def test_compare_view_split_side_zoom_and_pan(qtbot, shots):
    create_app()
    view = CompareView()
    qtbot.addWidget(view)
    view.resize(640, 400)
    view.show()
    qtbot.waitExposed(view)
    a = smooth_image(96, 128, seed=1)
    img = to_qimage(a)
    view.set_images(img, img, to_qimage(np.zeros_like(a)))
    assert view.scale == pytest.approx(min((640 - 16) / 128, (400 - 16) / 96))
    # split: dragging the divider moves it
    x0 = int(view.width() * view.divider)
    qtbot.mousePress(view, Qt.MouseButton.LeftButton, pos=QPoint(x0, 200))
    qtbot.mouseMove(view, QPoint(160, 200))
    qtbot.mouseRelease(view, Qt.MouseButton.LeftButton, pos=QPoint(160, 200))
    assert view.divider == pytest.approx(160 / 640, abs=0.01)
    shots(view, "compare-split")
    # side by side: zoom and pan apply to both panes, so identical images render identically
    view.set_mode("side")
    view.fit()
    s = view.scale
    view.zoom_by(2.0, QPointF(100, 150))
    assert view.scale == pytest.approx(2 * s)
    qtbot.mousePress(view, Qt.MouseButton.LeftButton, pos=QPoint(150, 200))
    qtbot.mouseMove(view, QPoint(120, 170))
    qtbot.mouseRelease(view, Qt.MouseButton.LeftButton, pos=QPoint(120, 170))
    g = from_qimage(view.grab().toImage())
    half = (g.shape[1] - 2) // 2
    left, right = g[60:, :half], g[60:, half + 2: half + 2 + half]
    assert np.abs(left.astype(int) - right.astype(int)).mean() < 1.0
    assert left.std() > 10                       # the image really is drawn
    view.actual_size()
    assert view.scale == pytest.approx(1.0 / view.devicePixelRatioF())
    view.fit()
    assert view.scale == pytest.approx(s)
    view.set_show_diff(True)
    g = from_qimage(view.grab().toImage())
    assert g[80:, half + 40: half + 200].mean() < g[80:, 40:200].mean()    # the zero error map is dark
    shots(view, "compare-side-diff")


# -- batch -----------------------------------------------------------------------------------------

def test_batch_completes_with_errors_listed_per_file(qtbot, window, crops, tmp_path, shots):
    aez = tmp_path / "in" / "packed.aez"
    encode_file(crops[3], aez, open_codec("photo", "cpu", 2))
    bad = tmp_path / "in" / "bad.png"
    bad.write_bytes(b"not a png")
    files = [crops[0], crops[1], bad, aez]
    drop(window, files)
    tab = window.batch
    assert window.tabs.currentWidget() is tab and len(tab.items) == 4
    out = tmp_path / "out"
    tab.out_edit.setText(str(out))
    assert window.statusBar().currentMessage() == "4 files added to the batch queue: press Start"
    tab.start()
    assert window.statusBar().currentMessage() == "Batch: working on 4 files\u2026"
    qtbot.waitUntil(lambda: not tab.running, timeout=WAIT)
    st = [it.status for it in tab.items]
    assert st == [DONE, DONE, FAILED, DONE]
    assert "bad.png" in tab.items[2].message
    assert (out / "crop0.aez").exists() and (out / "crop1.aez").exists() and (out / "packed.png").exists()
    assert "bpp" in tab.items[0].message
    assert [tab.table.item(r, 2).text() for r in range(4)] == st       # the progress column's text
    assert tab.overall.value() == 4
    assert "3 done" in tab.summary.text() and "1 failed" in tab.summary.text()
    shots(window, "batch")
    # again, skipping what exists: only the failed file is retried
    (out / "crop1.aez").unlink()
    tab.items[1].status = "Waiting"
    run_batch(qtbot, tab)
    assert [it.status for it in tab.items] == [DONE, DONE, FAILED, DONE]
    assert (out / "crop1.aez").exists()
    tab.clear_finished()
    assert [it.path.name for it in tab.items] == ["bad.png"]
    tab.items[0].status = "Waiting"
    tab.out_edit.setText("")
    tab.skip.setChecked(True)
    tab.add_paths([crops[2]])
    (crops[2].with_suffix(".aez")).write_bytes(b"x")
    run_batch(qtbot, tab)
    assert [it.status for it in tab.items] == [FAILED, SKIPPED]


def test_batch_asks_before_overwriting_and_never_writes_one_name_twice(qtbot, window, crops, tmp_path, monkeypatch):
    tab = window.batch
    srcs = []
    for k, sub in enumerate(("a", "b")):                     # a/pic.png and b/pic.png: one output name
        p = tmp_path / sub / "pic.png"
        p.parent.mkdir()
        Image.fromarray(smooth_image(64, 80, seed=k)).save(p)
        srcs.append(p)
    out = tmp_path / "out"
    out.mkdir()
    (out / "pic.aez").write_bytes(b"the user's file")
    asked = []
    monkeypatch.setattr(tab, "confirm_overwrite", lambda existing: asked.append(existing) or False)
    tab.add_paths(srcs)
    tab.out_edit.setText(str(out))
    tab.skip.setChecked(False)                               # (on by default: existing outputs are kept)
    tab.start()                                              # the user says no: nothing runs
    assert asked == [[out / "pic.aez"]] and not tab.running
    assert (out / "pic.aez").read_bytes() == b"the user's file"
    assert [it.status for it in tab.items] == ["Waiting", "Waiting"]
    monkeypatch.setattr(tab, "confirm_overwrite", lambda existing: asked.append(existing) or True)
    run_batch(qtbot, tab)                                              # yes: replaced, and b/pic.png does not overwrite it
    assert [it.status for it in tab.items] == [DONE, FAILED]
    assert "also the output of pic.png" in tab.items[1].message
    assert container.read_header((out / "pic.aez").read_bytes()).width == 80
    assert "1 done" in tab.summary.text() and "1 failed" in tab.summary.text()


def test_batch_can_be_cancelled(qtbot, window, crops, tmp_path):
    tab = window.batch
    big = big_images(tmp_path / "big", 6, 256, 320)
    tab.add_paths(big)
    tab.out_edit.setText(str(tmp_path / "out"))
    shown = tab._progress

    def progress(payload):                       # the user presses Cancel when the first file is done
        shown(payload)
        if payload[1] == DONE and tab.cancel_btn.isEnabled():
            tab.cancel_btn.click()

    tab._progress = progress
    run_batch(qtbot, tab)
    del tab._progress
    st = [it.status for it in tab.items]
    assert CANCELLED in st and st.count(DONE) < 6
    assert "Cancelled" in tab.summary.text()
    done = {it.output.name for it in tab.items if it.status == DONE}
    assert {p.name for p in (tmp_path / "out").iterdir()} == done      # no partial files
    # the rest can be finished later
    run_batch(qtbot, tab)
    assert all(it.status == DONE for it in tab.items)


# -- denoise ---------------------------------------------------------------------------------------

@pytest.fixture
def blur_denoiser(tmp_path):
    """A stand-in denoiser package: a 3x3 box blur as an ONNX graph (needs the onnx package)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                            count_include_pad=0)
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, None, None]) for n in ("x", "y")]
    graph = helper.make_graph([node], "blur", io[:1], io[1:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    d = tmp_path / "blur-denoiser"
    d.mkdir()
    onnx.save(model, str(d / "denoise.onnx"))
    import json
    (d / "manifest.json").write_text(json.dumps({
        "format": "aecompress-model/1", "name": "blur", "kind": "denoiser", "channels": 3,
        "graphs": {"denoise": "denoise.onnx"}, "align": 8, "receptive_radius": 1, "blind": True,
        "sigma_input": False, "description": "test stand-in: 3x3 box blur"}))
    return d


def test_denoise_tab(qtbot, window, blur_denoiser, tmp_path, shots, monkeypatch):
    clean = smooth_image(96, 128, seed=5, channels=3)
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
    src = tmp_path / "noisy.png"
    Image.fromarray(noisy).save(src)
    window.add_model_folder(blur_denoiser)
    tab = window.denoise
    assert tab.model.key() == str(blur_denoiser.resolve())
    assert window.settings.extra_models == [str(blur_denoiser.resolve())]
    window.tabs.setCurrentWidget(tab)
    drop(window, [src])
    assert window.tabs.currentWidget() is tab
    r = wait_result(qtbot, tab)
    assert r.output.shape == noisy.shape and not np.array_equal(r.output, noisy)
    assert "\u2192" in tab.grid.text("noise") and "CPUExecutionProvider" in tab.grid.text("provider")
    est = r.info["sigma_estimate"]
    assert 10 < est < 30 and r.sigma_after < est
    # the level is estimated: the note gives it; the manual value, kept for later, is not shown beside it
    assert tab.auto.isChecked() and tab._sigma_row.isHidden() and f"\u2248 {est:.1f}" in tab.sigma_note.text()
    shots(window, "denoise")
    tab.strength.setValue(0)
    qtbot.waitUntil(lambda: np.array_equal(tab.result.shown, noisy), timeout=WAIT)
    tab.strength.setValue(50)
    qtbot.waitUntil(lambda: not np.array_equal(tab.result.shown, noisy) and not window.work.busy, timeout=WAIT)
    out = tab.save_image(tmp_path / "den.png")
    qtbot.waitUntil(lambda: out.exists(), timeout=WAIT)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), tab.result.shown)
    assert "frame" not in tab.grid.text("dims")
    # an animated image: the tab works on its first frame and says so
    gif = tmp_path / "anim.gif"
    frames = [Image.fromarray(noisy).convert("P"), Image.fromarray(255 - noisy).convert("P")]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    drop(window, [gif])
    qtbot.waitUntil(lambda: tab.result is not None and tab.source.name == "anim.gif", timeout=WAIT)
    assert tab.grid.text("dims").endswith("frame 1 of 2")
    # averaging over flipped/rotated runs (--ensemble): chosen in the tab, kept in the settings, used by the batch
    drop(window, [src])
    qtbot.waitUntil(lambda: tab.result is not None and tab.source.name == "noisy.png", timeout=WAIT)
    assert tab.result.info["ensemble"] == 1
    tab.ensemble.setCurrentIndex(tab.ensemble.findData(8))
    qtbot.waitUntil(lambda: tab.result is not None and tab.result.info["ensemble"] == 8, timeout=WAIT)
    assert window.settings.denoise_ensemble == 8 and window._batch_options()["ensemble"] == 8
    import aecompress.denoise as den
    seen, real = [], den.denoise_array
    monkeypatch.setattr(den, "denoise_array", lambda *a, **k: (seen.append(k.get("ensemble")), real(*a, **k))[1])
    # a batch of images to denoise goes through aecompress.batch.run_batch
    window.batch.action.setCurrentIndex(1)
    assert "averaged over 8 runs" in window.batch.settings_note.text()
    window.batch.add_paths([src])
    run_batch(qtbot, window.batch)
    assert window.batch.items[0].status == DONE, window.batch.items[0].message
    assert (tmp_path / "noisy.denoised.png").exists() and seen == [8]


# -- settings, threads, closing --------------------------------------------------------------------

def test_settings_persist_between_runs(qtbot, settings, crops):
    win = make_window(qtbot, settings)
    win.compress.quality.setValue(42)
    win.device.setCurrentIndex(win.device.findData("auto"))
    assert win.runtime.device == "auto" and settings.device == "auto"
    win.device.setCurrentIndex(win.device.findData("cpu"))
    win.batch.skip.setChecked(False)
    win.settings.set_folder("open", crops[0])
    win.side_action.trigger()
    win.compress.size_kb.setValue(12.5)
    win.compress.bpp.setValue(0.8)
    win.compress.rate_mode.setCurrentIndex(2)
    win.denoise.strength.setValue(70)
    win.batch.action.setCurrentIndex(1)
    win.threads.setValue(1)                                  # CPU threads per model (--threads)
    assert win.runtime.threads == 1 and win.runtime.codec("photo").pkg.threads == 1
    win.close()
    again = Settings(QSettings(settings.qs.fileName(), QSettings.Format.IniFormat))
    assert again.quality == 42 and again.device == "cpu" and again.skip_existing is False
    assert again.folder("open") == str(crops[0].parent) and again.model == "photo"
    win2 = MainWindow(again, Runtime(again.device, again.extra_models))
    qtbot.addWidget(win2)
    assert win2.compress.quality.value() == 42
    assert win2.device.currentData() == "cpu" and win2.compress.panel.view.mode == "side"
    assert not win2.batch.skip.isChecked()
    assert win2.compress.rate_mode.currentIndex() == 2 and win2.compress.rate() == ("size", 12500.0)
    assert win2.compress.bpp.value() == 0.8 and win2.compress.rate_stack.currentIndex() == 2
    assert win2.denoise.strength.value() == 70 and win2.denoise.strength_label.text() == "70%"
    assert win2.batch.action.currentIndex() == 1
    assert again.threads == 1
    win2.close()
    win3 = MainWindow(again)                                 # the runtime the app makes itself
    qtbot.addWidget(win3)
    assert win3.runtime.threads == 1 and win3.threads.value() == 1
    win3.threads.setValue(0)
    assert win3.runtime.threads is None and win3.threads.text() == "auto"
    win3.close()


def test_work_runs_off_the_ui_thread_and_can_be_cancelled(qtbot):
    create_app()
    q = WorkQueue(threads=1)
    seen = {}
    started, release = threading.Event(), threading.Event()

    def slow(token, emit):
        seen["worker"] = threading.current_thread()
        emit("step")
        started.set()
        release.wait(5)
        token.check()
        return "finished"

    got = []
    job = q.submit(slow, progress=lambda p: got.append(("progress", threading.current_thread())),
                   done=lambda r: got.append(("done", r)), cancelled=lambda: got.append(("cancelled", None)))
    queued = q.submit(lambda t, e: "never", done=lambda r: got.append(("done2", r)),
                      cancelled=lambda: got.append(("cancelled2", None)))
    assert started.wait(5)
    ticks = []
    qtbot.waitUntil(lambda: ticks.append(1) or len(ticks) > 3, timeout=2000)   # the UI thread is free
    assert seen["worker"] is not threading.main_thread()
    q.cancel_all()
    release.set()
    assert q.shutdown(5000)
    qtbot.waitUntil(lambda: ("cancelled", None) in got and ("cancelled2", None) in got, timeout=5000)
    assert ("progress", threading.main_thread()) in got
    assert not any(k.startswith("done") for k, _ in got) and job.cancelled and queued.cancelled


def test_closing_during_work_cancels_cleanly(qtbot, settings, tmp_path):
    win = make_window(qtbot, settings)
    p = tmp_path / "large.png"
    Image.fromarray(smooth_image(768, 1024, seed=9)).save(p)
    win.open_paths([p])
    qtbot.waitUntil(lambda: win.compress.panel.view.before is not None, timeout=WAIT)
    assert win.work.busy                         # analysing, then coding: at least a second of work
    asked = []
    win.ask_to_stop = lambda work: asked.append(work) or True       # "Stop and quit"
    t0 = time.perf_counter()
    win.close()
    assert time.perf_counter() - t0 < 60
    assert asked == [["compressing large.png"]]
    assert not win.isVisible() and win.work.pool.activeThreadCount() == 0
    before = win.compress.result
    qtbot.wait(300)                              # nothing is delivered to the closed window
    assert win.compress.result is before and not win.work.busy


def test_closing_while_work_runs_asks_first(qtbot, settings, tmp_path, blur_denoiser):
    """Closing the window while a batch ran (or a tab's denoising, coding, decoding) stopped it
    without a word. It asks: Keep running leaves the window and the work as they are; Stop and quit
    cancels the work, waits for it, and leaves no partial or temporary file of the file in flight."""
    win = make_window(qtbot, settings)
    asked, answer = [], []
    win.ask_to_stop = lambda work: asked.append(work) or answer.pop()
    big = big_images(tmp_path / "big", 4, 768, 1024)
    out = tmp_path / "out"
    tab = win.batch
    tab.add_paths(big)
    tab.out_edit.setText(str(out))
    tab.start()
    qtbot.waitUntil(lambda: tab.items[0].status != WAITING, timeout=WAIT)
    answer.append(False)                         # Keep running
    win.close()
    assert asked[-1] == [f"a batch ({tab._ended_count} of 4 files done)"]
    assert win.isVisible() and tab.running and win.batch_work.busy
    qtbot.waitUntil(lambda: tab.items[0].status == DONE, timeout=WAIT)
    qtbot.waitUntil(lambda: tab.items[1].status != WAITING, timeout=WAIT)
    flight = tab.items[1]                        # working on the second file: Stop and quit
    answer.append(True)
    win.close()
    assert asked[-1] == ["a batch (1 of 4 files done)"]
    assert not win.isVisible() and win.batch_work.pool.activeThreadCount() == 0
    qtbot.wait(100)                              # the files that ended before the cancel report it
    assert flight.status == CANCELLED and not tab.running
    assert [it.status for it in tab.items] == [DONE, CANCELLED, CANCELLED, CANCELLED]
    assert sorted(p.name for p in out.iterdir()) == ["img0.aez"]     # no temporary file either
    assert container.read_header((out / "img0.aez").read_bytes()).width == 1024
    # a denoising in flight is asked about; once it has ended, closing asks nothing
    win2 = make_window(qtbot, settings)
    win2.ask_to_stop = win.ask_to_stop
    win2.add_model_folder(blur_denoiser)
    gate = hold(win2.work)
    win2.tabs.setCurrentWidget(win2.denoise)
    win2.open_paths([big[0]])
    answer.append(False)
    win2.close()
    assert asked[-1] == ["denoising img0.png"] and win2.isVisible()
    gate.set()
    wait_result(qtbot, win2.denoise)
    n = len(asked)
    win2.close()
    assert len(asked) == n and not win2.isVisible()


def test_cuda_not_available_is_a_message(qtbot, window, crops):
    from aecompress.session import available_providers

    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("this onnxruntime has CUDA")
    window.device.setCurrentIndex(window.device.findData("cuda"))
    window.open_paths([crops[0]])
    qtbot.waitUntil(lambda: "CUDA" in window.banner.text, timeout=WAIT)
    window.device.setCurrentIndex(window.device.findData("cpu"))     # and back: it works again
    window.open_paths([crops[0]])
    wait_result(qtbot, window.compress)
    assert window.provider.text() == "Provider: CPU" and "CPUExecutionProvider" in window.provider.toolTip()


def test_a_result_that_fails_to_be_redone_leaves_no_numbers_behind(qtbot, window, crops):
    """Switching to a device that fails (CUDA without its provider) dropped the result shown (Save
    greyed) but the Compress tab kept its file size, bpp, PSNR and provider, and the Denoise tab its
    denoised image and noise figures: numbers of a result that was gone, beside the error. Both
    panels are cleared of it now; the image opened stays."""
    from aecompress.session import available_providers

    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("this onnxruntime has CUDA")
    window.open_paths([crops[0]])
    wait_result(qtbot, window.compress)
    window.tabs.setCurrentWidget(window.denoise)
    window.open_paths([crops[1]])
    wait_result(qtbot, window.denoise)
    assert window.compress.grid.text("size") != "\u2013" and window.denoise.grid.text("time") != "\u2013"
    window.device.setCurrentIndex(window.device.findData("cuda"))
    qtbot.waitUntil(lambda: "CUDA" in window.banner.text and not window.work.busy, timeout=WAIT)
    c, d = window.compress, window.denoise
    assert c.result is None and d.result is None and not c.save_aez_btn.isEnabled() and not d.save_btn.isEnabled()
    assert all(c.grid.text(k) == "\u2013" for k in ("size", "bpp", "psnr", "msssim", "provider"))
    assert c.estimate.text() == "" and c.panel.view.after is None and c.panel.view.before is not None
    assert all(d.grid.text(k) == "\u2013" for k in ("noise", "time", "provider"))
    assert d.grid.text("dims").startswith("128 \u00d7 96")
    assert d.panel.view.after is None and d.panel.view.before is not None and not d.panel.diff_btn.isEnabled()
    window.device.setCurrentIndex(window.device.findData("cpu"))     # and back: both are redone
    wait_result(qtbot, c)
    wait_result(qtbot, d)
    assert c.grid.text("size") != "\u2013" and d.panel.view.after is not None


def test_many_qt_calls_do_not_exhaust_none(qtbot):
    """PySide6 6.12.0 on Python < 3.12 leaks a reference to None per void call (see gui/qtfix.py)."""
    import sys

    from PySide6.QtCore import QRectF

    from gui import qtfix

    create_app()
    r = QRectF()
    for _ in range(30_000):               # more than None's references at start: aborts without the guard
        r.adjust(0, 0, 0, 0)
    qtfix.top_up()
    assert sys.getrefcount(None) > 100_000 or not qtfix.affected()


def test_cli_and_script_without_pyside(monkeypatch, capsys):
    import sys

    from typer.testing import CliRunner

    from aecompress.cli import app
    from aecompress.errors import AecError
    from gui.app import main

    monkeypatch.setitem(sys.modules, "PySide6", None)
    assert main([]) == 1
    assert "pip install -e '.[gui]'" in capsys.readouterr().err
    res = CliRunner().invoke(app, ["gui"])
    assert isinstance(res.exception, AecError) and "pip install -e '.[gui]'" in str(res.exception)


@pytest.mark.parametrize("env_change, words", [
    ({"QT_QPA_PLATFORM": None, "DISPLAY": None, "WAYLAND_DISPLAY": None}, "no display to open the desktop app on"),
    # a display that is named but cannot be used: Qt's fatal error, which aborted with exit 134 and
    # half a dozen lines of plugin messages
    ({"QT_QPA_PLATFORM": "xcb", "DISPLAY": ":97", "WAYLAND_DISPLAY": None}, "cannot open the desktop app: "),
])
def test_no_usable_display_is_one_line(tmp_path, env_change, words):
    import subprocess

    env = dict(os.environ)
    for k, v in env_change.items():
        env.pop(k, None) if v is None else env.__setitem__(k, v)
    p = subprocess.run([sys.executable, "-m", "aecompress", "gui", str(tmp_path / "nothing.png")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("aecompress: error: ") and words in p.stderr, p.stderr


# -- what a QA pass found: bad model folders, inputs in the queue, stale results, save names ---------

def hold(queue: WorkQueue) -> threading.Event:
    """Occupy a one-thread work queue until the returned event is set: jobs submitted meanwhile wait."""
    gate = threading.Event()
    queue.submit(lambda token, emit: gate.wait(WAIT / 1000), name="hold")
    return gate


def test_malformed_model_folder_is_refused_and_added_folders_can_be_removed(qtbot, window, blur_denoiser, tmp_path):
    import json
    bad = tmp_path / "bad-model"
    bad.mkdir()
    (bad / "manifest.json").write_text(json.dumps({"format": "aecompress-model/1", "name": "lg", "kind": "codec",
                                                    "graphs": ["a.onnx"]}))
    window.add_model_folder(bad)
    assert "malformed manifest" in window.banner.text and window.settings.extra_models == []
    assert "lg" not in [window.compress.model.itemText(i) for i in range(window.compress.model.count())]
    missing = tmp_path / "missing-graph"
    missing.mkdir()
    (missing / "manifest.json").write_text(json.dumps({"format": "aecompress-model/1", "name": "mg", "kind": "denoiser",
                                                        "graphs": {"denoise": "denoise.onnx"}}))
    window.add_model_folder(missing)
    assert "denoise.onnx is missing" in window.banner.text and window.settings.extra_models == []
    # a good folder is added, then removed again (File > Remove added model folder)
    assert not window.remove_models_action.isEnabled()
    window.add_model_folder(blur_denoiser)
    assert window.denoise.model.key() == str(blur_denoiser.resolve()) and window.remove_models_action.isEnabled()
    window.remove_model_folder()
    assert window.settings.extra_models == [] and window.runtime.extra_folders == []
    assert window.denoise.model.key() != str(blur_denoiser.resolve())
    assert not window.remove_models_action.isEnabled()


def test_batch_never_writes_over_a_file_of_the_queue(qtbot, window, crops, tmp_path):
    d = tmp_path / "pair"
    d.mkdir()
    png = d / "cat.png"
    png.write_bytes(crops[0].read_bytes())
    aez = d / "cat.aez"
    encode_file(crops[1], aez, open_codec("photo", "cpu", 2))
    before = {p: p.read_bytes() for p in (png, aez)}
    tab = window.batch
    tab.skip.setChecked(False)
    tab.add_paths([png, aez])                  # cat.png -> cat.aez and cat.aez -> cat.png: each the other's input
    run_batch(qtbot, tab)                                # (no overwrite question: nothing that may be replaced exists)
    assert [it.status for it in tab.items] == [FAILED, FAILED]
    assert all("inputs are never overwritten" in it.message for it in tab.items)
    assert {p: p.read_bytes() for p in (png, aez)} == before


def test_results_being_replaced_are_not_saved(qtbot, window, crops, blur_denoiser, tmp_path):
    # compress: moving the quality makes the result on screen stale until the new one arrives
    tab = window.compress
    tab.open_path(crops[0])
    first = wait_result(qtbot, tab)
    qtbot.waitUntil(lambda: not window.work.busy, timeout=WAIT)
    gate = hold(window.work)
    tab.quality.setValue(10 if tab.quality.value() > 50 else 90)
    assert not tab.save_aez_btn.isEnabled() and not tab.save_img_btn.isEnabled()
    assert tab.save_aez(tmp_path / "stale.aez") is None and not (tmp_path / "stale.aez").exists()
    tab._encoded(first)                        # a job for the old value finishing now does not count
    assert tab.result is first and not tab.save_aez_btn.isEnabled()
    gate.set()
    second = wait_result(qtbot, tab, first)
    assert tab.save_aez_btn.isEnabled() and len(second.data) != len(first.data)
    # another model or device: the result shown was made with the one before
    qtbot.waitUntil(lambda: not window.work.busy, timeout=WAIT)
    gate = hold(window.work)
    tab.reload()
    assert not tab.save_aez_btn.isEnabled() and tab.save_aez(tmp_path / "old-model.aez") is None
    gate.set()
    wait_result(qtbot, tab, second)
    qtbot.waitUntil(lambda: tab.save_aez_btn.isEnabled() and not window.work.busy, timeout=WAIT)
    # denoise: Strength moved while the model runs is applied to the result when it arrives
    window.add_model_folder(blur_denoiser)
    den = window.denoise
    clean = smooth_image(64, 80, seed=3, channels=3)
    noisy = np.clip(clean + np.random.default_rng(1).normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
    src = tmp_path / "noisy.png"
    Image.fromarray(noisy).save(src)
    qtbot.waitUntil(lambda: not window.work.busy, timeout=WAIT)
    gate = hold(window.work)
    den.open_path(src)
    den.strength.setValue(30)
    qtbot.wait(300)                            # the blend timer fires while nothing is finished yet
    gate.set()
    qtbot.waitUntil(lambda: den.result is not None and den.result.strength == 0.3 and not window.work.busy,
                    timeout=WAIT)
    from gui.denoise_tab import blend
    np.testing.assert_array_equal(den.result.shown, blend(noisy, den.result.output, 0.3))
    out = den.save_image(tmp_path / "den.png")
    qtbot.waitUntil(lambda: out.exists() and not window.work.busy, timeout=WAIT)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), den.result.shown)
    # another ensemble: the result shown is not saved while the new one is made
    gate = hold(window.work)
    done = den.result
    den.ensemble.setCurrentIndex(den.ensemble.findData(2))
    assert not den.save_btn.isEnabled() and den.save_image(tmp_path / "stale.png") is None
    gate.set()
    qtbot.waitUntil(lambda: den.result is not done and den.result is not None and not window.work.busy, timeout=WAIT)
    assert den.save_btn.isEnabled() and den.result.info["ensemble"] == 2


def test_denoise_tab_saves_like_the_cli(qtbot, window, blur_denoiser, tmp_path):
    rgb = smooth_image(48, 64, seed=4, channels=3)
    src = tmp_path / "pal.png"
    Image.fromarray(rgb).quantize(32).save(src)
    window.add_model_folder(blur_denoiser)
    window.tabs.setCurrentWidget(window.denoise)
    window.denoise.open_path(src)
    qtbot.waitUntil(lambda: window.denoise.result is not None and not window.work.busy, timeout=WAIT)
    out = window.denoise.save_image(tmp_path / "pal.denoised.png")
    qtbot.waitUntil(lambda: out.exists() and not window.work.busy, timeout=WAIT)
    from aecompress.batch import denoise_file
    cli = denoise_file(src, tmp_path / "cli.png", window.runtime.denoiser(str(blur_denoiser.resolve())))
    assert cli is not None
    with Image.open(out) as a, Image.open(tmp_path / "cli.png") as b:
        assert a.mode == b.mode == "P"
        np.testing.assert_array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def test_compare_from_a_previous_file_is_dropped(qtbot, window, crops, tmp_path):
    codec = open_codec("photo", "cpu", 2)
    files = []
    for k in (0, 1):
        f = tmp_path / f"f{k}.aez"
        encode_file(crops[k], f, codec)
        files.append(f)
    tab = window.decompress
    tab.open_path(files[0])
    qtbot.waitUntil(lambda: tab.decoded is not None and not window.work.busy, timeout=WAIT)
    gate = hold(window.work)
    tab.compare_with(crops[0])
    tab.open_path(files[1])                    # before the comparison is done
    gate.set()
    qtbot.waitUntil(lambda: tab.decoded is not None and tab.decoded.path == files[1] and not window.work.busy,
                    timeout=WAIT)
    assert tab.metrics.text("psnr") in ("", "\u2013") and tab.panel.view.after is None


def test_file_from_an_added_model_decodes_once_its_folder_is_added(qtbot, window, crops, tmp_path):
    import json
    import shutil
    from aecompress.package import find_package_dir
    pkg = tmp_path / "photo-copy"
    shutil.copytree(find_package_dir("photo"), pkg)
    man = json.loads((pkg / "manifest.json").read_text())
    man["name"] = "photo-copy"                 # a coding field: another model id
    (pkg / "manifest.json").write_text(json.dumps(man))
    from aecompress.package import load_package
    from aecompress.codec import Codec
    f = tmp_path / "x.aez"
    encode_file(crops[0], f, Codec(load_package(pkg, "cpu", 2)))
    tab = window.decompress
    tab.open_path(f)
    qtbot.waitUntil(lambda: "no installed model package" in window.banner.text, timeout=WAIT)
    assert "Add model folder" in window.banner.text and "-m" not in window.banner.text
    window.add_model_folder(pkg)               # the failed file is decoded at once
    qtbot.waitUntil(lambda: tab.decoded is not None and not window.work.busy, timeout=WAIT)
    assert tab.decoded.model == "photo-copy" and tab.grid.text("model") == "photo-copy"
    assert tab.grid.text("quality") != "" and not tab.grid.text("quality").startswith("level")
    # the batch queue finds it among the added folders too
    window.batch.add_paths([f])
    window.batch.out_edit.setText(str(tmp_path / "out"))
    run_batch(qtbot, window.batch)
    assert window.batch.items[0].status == DONE, window.batch.items[0].message
    assert (tmp_path / "out" / "x.png").exists()


def test_save_dialog_names_without_extension(qtbot, window, crops, tmp_path, monkeypatch):
    tab = window.compress
    tab.open_path(crops[0])
    wait_result(qtbot, tab)
    qtbot.waitUntil(lambda: not window.work.busy, timeout=WAIT)
    keep = tmp_path / "keep.png"
    keep.write_bytes(b"the user's picture")
    answers = []
    monkeypatch.setattr("gui.widgets.QFileDialog.getSaveFileName", lambda *a, **k: (str(tmp_path / "keep"), ""))
    monkeypatch.setattr("gui.widgets.QMessageBox.question",
                        lambda *a, **k: answers.append(a[2]) or QMessageBox.StandardButton.No)
    assert tab.save_image() is None                       # asked about keep.png, and told no
    assert answers and "keep.png" in answers[0] and keep.read_bytes() == b"the user's picture"
    monkeypatch.setattr("gui.widgets.QFileDialog.getSaveFileName", lambda *a, **k: (str(tmp_path / "packed"), ""))
    out = tab.save_aez()
    assert out == tmp_path / "packed.aez"
    qtbot.waitUntil(lambda: out.exists() and not window.work.busy, timeout=WAIT)
    assert container.read_header(out.read_bytes()).width == 128


def test_target_search_and_decode_can_be_cancelled(crops, tmp_path):
    codec = open_codec("photo", "cpu", 2)
    pic = read_image(crops[0])
    calls = []

    def check():
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode_picture(pic, codec, target_bpp=0.3, check=check)
    assert len(calls) == 4
    data = encode_picture(pic, codec).data
    with pytest.raises(KeyboardInterrupt):
        decode_bytes(data, device="cpu", check=lambda: (_ for _ in ()).throw(KeyboardInterrupt))


def test_a_blind_model_greys_the_manual_noise_level(qtbot, window, blur_denoiser, tmp_path):
    """No shipped model takes a noise level: with the automatic level off, the manual one is shown
    greyed, with a note and a tooltip saying why (moving it re-ran the model for nothing)."""
    src = tmp_path / "n.png"
    Image.fromarray(smooth_image(48, 64, seed=2, channels=3)).save(src)
    window.add_model_folder(blur_denoiser)
    tab = window.denoise
    tab.auto.setChecked(False)
    assert not tab._sigma_row.isHidden()
    assert not tab.sigma.isEnabled() and not tab.sigma_spin.isEnabled()
    assert "finds the noise level itself" in tab.sigma.toolTip() and "takes none" in tab.sigma_note.text()
    tab.open_path(src)
    qtbot.waitUntil(lambda: tab.result is not None and not window.work.busy, timeout=WAIT)
    assert "not used by this blind model" in tab.grid.text("noise")
    tab.auto.setChecked(True)
    assert tab._sigma_row.isHidden()


def test_short_window_scrolls_the_side_panel_instead_of_hiding_lines(qtbot, settings, cat_png, shots):
    create_app()
    win = MainWindow(settings, Runtime("cpu", threads=2))
    qtbot.addWidget(win, before_close_func=stop_and_quit)
    win.show()
    win.resize(600, 500)                         # below the minimum width: 684 x 500
    win.compress.open_path(cat_png)
    r = wait_result(qtbot, win.compress)
    qtbot.waitUntil(lambda: r.ms_ssim is not None or win.compress.result.ms_ssim is not None, timeout=WAIT)
    qtbot.wait(50)
    grid = win.compress.grid
    for key in ("ratio", "time"):                # two lines each: vs raw / vs the PNG; encode / decode
        v = grid.values[key]
        assert "\n" in v.text() and v.height() >= v.heightForWidth(v.width()) > v.fontMetrics().height() * 1.5
    side = grid.parentWidget()
    while type(side).__name__ != "SidePanel":
        side = side.parentWidget()
    assert side.verticalScrollBar().maximum() > 0
    shots(win, "compress-short-window")
    win.close()


# -- a second QA pass: saves on quit, drops per tab, settings kept, large fonts, save names ----------

def test_saves_do_not_wait_for_measurements_and_finish_before_the_app_quits(qtbot, settings, crops, tmp_path,
                                                                             capsys):
    win = make_window(qtbot, settings)
    tab = win.compress
    tab.open_path(crops[0])
    r = wait_result(qtbot, tab)
    gate = hold(win.work)                      # a slow step in flight (MS-SSIM of a large image)
    first = tab.save_aez(tmp_path / "first.aez")
    qtbot.waitUntil(first.exists, timeout=10_000)          # written at once, not after the measurement
    assert win.work.busy
    gate.set()
    # saves still waiting when the window closes are written before the app quits, not dropped
    qtbot.waitUntil(lambda: not win.work.busy and not win.saves.busy, timeout=WAIT)
    gate = hold(win.saves)
    img = tab.save_image(tmp_path / "queued.png")
    (tmp_path / "notdir").write_bytes(b"x")
    tab.save_aez(tmp_path / "notdir" / "fails.aez")
    threading.Timer(0.3, gate.set).start()
    win.close()
    np.testing.assert_array_equal(np.asarray(Image.open(img)), r.recon)
    assert decode_bytes(first.read_bytes(), device="cpu")[0].shape == r.recon.shape
    assert "notdir is not a folder" in capsys.readouterr().err     # no window left to show it in


def test_drops_go_to_the_batch_queue_like_the_tab_showing(qtbot, window, crops, tmp_path, shots):
    batch = window.batch
    window.tabs.setCurrentWidget(window.denoise)
    drop(window, [crops[0].parent])            # a folder dropped on Denoise: its images are to be denoised
    assert window.tabs.currentWidget() is batch and len(batch.items) == len(crops)
    assert batch.action.currentText() == "Denoise images" and window.settings.batch_action == 1
    assert {batch.table.item(r, 1).text() for r in range(len(crops))} == {"Denoise"}
    aez = tmp_path / "one.aez"
    encode_file(crops[0], aez, open_codec("photo", "cpu", 2))
    extra = tmp_path / "extra.png"
    extra.write_bytes(crops[1].read_bytes())
    for k, p in enumerate((extra, aez)):       # one file dropped on the Batch tab joins the queue
        drop(window, [p])
        assert window.tabs.currentWidget() is batch and len(batch.items) == len(crops) + k + 1
        assert batch.items[-1].path == p and window.statusBar().currentMessage().startswith("1 file added")
    assert batch.table.item(len(batch.items) - 1, 1).text() == "Decompress"
    assert window.compress.source is None and window.decompress.path is None and not window.work.busy
    # from Compress while images wait to be denoised: they are not switched behind the user's back
    window.tabs.setCurrentWidget(window.compress)
    more = [tmp_path / "more1.png", tmp_path / "more2.png"]
    for p in more:
        p.write_bytes(crops[2].read_bytes())
    drop(window, more + [crops[0]])
    assert batch.action.currentText() == "Denoise images" and len(batch.items) == len(crops) + 4
    msg = window.statusBar().currentMessage()
    assert msg == "2 files added to the batch queue (1 already in it); the queue denoises its images: press Start"
    shots(window, "batch-drop-joins")
    # with no image waiting, the tab the files are dropped on picks the action again
    batch.table.selectAll()
    batch.remove_selected()
    window.tabs.setCurrentWidget(window.compress)
    drop(window, more)
    assert batch.action.currentText() == "Compress images"


def test_denoiser_model_is_kept_between_runs(qtbot, settings, blur_denoiser):
    win = make_window(qtbot, settings)
    installed = win.denoise.model.key()
    win.add_model_folder(blur_denoiser)
    added = str(blur_denoiser.resolve())
    assert win.denoise.model.key() == added != installed
    win.close()
    again = Settings(QSettings(settings.qs.fileName(), QSettings.Format.IniFormat))
    win2 = MainWindow(again, Runtime("cpu", again.extra_models, 2))
    qtbot.addWidget(win2)
    assert win2.denoise.model.key() == added
    picker = win2.denoise.model
    picker.activated.emit(picker.findData(installed))       # the user picks the installed one again
    assert again.denoise_model == installed
    win2.close()


def test_noise_level_set_just_before_closing_is_kept(qtbot, settings):
    win = make_window(qtbot, settings)
    win.denoise.auto.setChecked(False)
    win.denoise.sigma_spin.setValue(50)        # typed: saved when the value rests, or when the window closes
    win.close()
    again = Settings(QSettings(settings.qs.fileName(), QSettings.Format.IniFormat))
    assert again.denoise_sigma == 50 and again.denoise_auto is False


def test_numbers_that_are_not_finite_in_the_settings_file_are_defaults(settings):
    for raw in ("nan", "inf", "-inf", "NaN"):
        settings.qs.setValue("compress/target_kb", raw)
        settings.qs.setValue("compress/target_bpp", raw)
        assert settings.target_kb == 20.0 and settings.target_bpp == 0.5, raw
    settings.qs.setValue("compress/target_kb", "5e9")
    assert settings.target_kb == 1_000_000.0               # a finite number out of range is still clamped


def test_side_panel_follows_the_font_size(qtbot, settings, crops):
    def side_panel(tab):
        side = tab.grid.parentWidget()
        while type(side).__name__ != "SidePanel":
            side = side.parentWidget()
        return side

    win = make_window(qtbot, settings)
    width = side_panel(win.compress).width()
    win.close()
    app = QApplication.instance()
    normal = app.font()
    big = QFont(normal)
    big.setPointSizeF(normal.pointSizeF() * 1.5)           # a desktop with a larger font
    app.setFont(big)
    try:
        win = make_window(qtbot, settings)
        tab = win.compress
        tab.open_path(crops[0])
        qtbot.waitUntil(lambda: tab.result is not None and tab.result.ms_ssim is not None and not win.work.busy,
                        timeout=WAIT)
        qtbot.wait(50)
        side = side_panel(tab)
        assert side.width() > 1.4 * width
        assert side.inner.minimumSizeHint().width() <= side.inner.width() <= side.viewport().width()    # none cut off
        assert tab.grid.text("provider") == "CPUExecutionProvider"
        win.close()
    finally:
        app.setFont(normal)


def test_save_names_with_a_dot_get_an_image_extension(qtbot, window, crops, blur_denoiser, tmp_path, monkeypatch):
    answer = []
    monkeypatch.setattr("gui.widgets.QFileDialog.getSaveFileName", lambda *a, **k: (str(tmp_path / answer[-1]), ""))
    tab = window.compress
    tab.open_path(crops[0])
    wait_result(qtbot, tab)
    aez = tmp_path / "in.aez"
    encode_file(crops[1], aez, open_codec("photo", "cpu", 2))
    window.decompress.open_path(aez)
    window.add_model_folder(blur_denoiser)
    window.denoise.open_path(crops[2])
    qtbot.waitUntil(lambda: window.decompress.decoded is not None and window.denoise.result is not None
                    and not window.work.busy, timeout=WAIT)
    saved = []
    for save, typed, expect in ((tab.save_image, "rgb_v1.2", "rgb_v1.2.png"),
                                (tab.save_image, "kept.jpg", "kept.jpg"),
                                (window.decompress.save_image, "decoded.v2", "decoded.v2.png"),
                                (window.denoise.save_image, "crop2.denoised", "crop2.denoised.png"),
                                (window.denoise.save_image, "icon.denoised.ico", "icon.denoised.ico"),
                                (window.decompress.save_image, "old.pcx", "old.pcx")):
        answer.append(typed)
        saved.append(save())
        assert saved[-1] == tmp_path / expect
    qtbot.waitUntil(lambda: not window.saves.busy, timeout=WAIT)
    assert window.banner.text == "" and all(p.exists() for p in saved)
    assert Image.open(saved[-2]).format == "ICO" and Image.open(saved[-1]).format == "PCX"


def test_file_dialog_filters_list_every_image_type():
    from aecompress.imageio import IMAGE_SUFFIXES
    from gui.compress_tab import IMAGE_FILTER
    from gui.main_window import OPEN_FILTER

    for s in IMAGE_SUFFIXES:
        assert f"*{s} " in IMAGE_FILTER[:-1] + " " and f"*{s} " in OPEN_FILTER
    assert "*.pnm" in IMAGE_FILTER and "*.pbm" in IMAGE_FILTER and "*.aez)" in OPEN_FILTER


def test_pictures_in_another_rgb_space_show_in_srgb(qtbot, window, tmp_path):
    """The original is shown converted to sRGB, as its reconstruction (coded in sRGB) is: a photo
    tagged with another profile would otherwise show one colour left of the divider and another
    right of it."""
    from .conftest import linear_rgb_profile

    src = tmp_path / "lin.png"
    Image.fromarray(np.full((48, 64, 3), 128, np.uint8)).save(src, icc_profile=linear_rgb_profile())
    drop(window, [src])
    wait_result(qtbot, window.compress)
    view = window.compress.panel.view
    assert abs(view.before.pixelColor(10, 10).red() - 188) <= 1
    assert abs(view.after.pixelColor(10, 10).red() - 188) <= 3
    # Decompress > Compare with the original: measured in sRGB, as the encoder's report is
    aez = window.compress.save_aez(tmp_path / "lin.aez")
    qtbot.waitUntil(lambda: aez.exists() and not window.saves.busy, timeout=WAIT)
    tab = window.decompress
    tab.open_path(aez)
    qtbot.waitUntil(lambda: tab.decoded is not None and not window.work.busy, timeout=WAIT)
    tab.compare_with(src)
    qtbot.waitUntil(lambda: tab.metrics.text("psnr") not in ("", "-", "\u2013") and not window.work.busy,
                    timeout=WAIT)
    assert float(tab.metrics.text("psnr").split()[0]) > 35


def test_batch_compresses_at_the_target_set_in_the_compress_tab(qtbot, window, crops, tmp_path):
    """A target file size in the Compress tab is each batch file's target, as `encode --size` does
    (the batch used the quality slider's value whatever the mode)."""
    window.compress.rate_mode.setCurrentIndex(2)                # target file size
    window.compress.size_kb.setValue(1.5)
    drop(window, crops[:2])
    tab = window.batch
    assert "1.5 kB (each file)" in tab.settings_note.text()
    tab.out_edit.setText(str(tmp_path / "out"))
    run_batch(qtbot, tab)
    assert [it.status for it in tab.items] == [DONE, DONE]
    codec = open_codec("photo", "cpu", 2)
    for crop in crops[:2]:
        got = (tmp_path / "out" / crop.with_suffix(".aez").name).read_bytes()
        want = encode_picture(read_image(crop), codec, target_size=1500).data
        assert got == want and len(got) <= 1500


def test_escape_stops_the_work_in_progress(qtbot, window, cat_png):
    from PySide6.QtTest import QTest

    gate = hold(window.work)                     # the image's analysis waits behind this
    drop(window, [cat_png])
    tab = window.compress
    assert window.work.busy and tab.panel.view._busy
    QTest.keyClick(window, Qt.Key.Key_Escape)
    gate.set()
    qtbot.waitUntil(lambda: not window.work.busy, timeout=WAIT)
    assert tab.result is None and tab.panel.view._busy == ""
    assert window.statusBar().currentMessage() == "Stopped"
    tab.quality.setValue(60)                     # the image is still there: a new setting runs again
    qtbot.waitUntil(lambda: tab.result is not None and not window.work.busy, timeout=WAIT)


def test_escape_stops_only_the_work_of_the_tab_showing(qtbot, window, blur_denoiser, crops):
    """Esc on the Compress tab stopped a Denoise running behind it too, which was then left without a
    result and without a word. Esc stops the work of the tab showing, and the Denoise tab says when
    its own run was stopped."""
    window.add_model_folder(blur_denoiser)
    den, comp = window.denoise, window.compress
    gate = hold(window.work)                     # what the tabs start waits behind this
    den.open_path(crops[0])
    window.tabs.setCurrentWidget(comp)
    comp.open_path(crops[1])
    QTest.keyClick(window, Qt.Key.Key_Escape)
    assert window.statusBar().currentMessage() == "Stopped" and comp.panel.view._busy == ""
    assert den.panel.view._busy and den.stopped_note.isHidden()
    gate.set()
    first = wait_result(qtbot, den)              # the denoising behind the Compress tab went on
    assert comp.result is None and comp.prepared is None
    # on the Denoise tab, Esc stops its run, says so, and the Compress tab's work goes on
    window.tabs.setCurrentWidget(den)
    gate = hold(window.work)
    den.ensemble.setCurrentIndex(1)              # a new run for new settings
    comp.quality.setValue(60)                    # the stopped analysis runs again
    QTest.keyClick(window, Qt.Key.Key_Escape)
    assert window.statusBar().currentMessage() == "Stopped" and den.panel.view._busy == ""
    assert not den.stopped_note.isHidden() and "earlier settings" in den.stopped_note.text()
    gate.set()
    wait_result(qtbot, comp)
    assert den.result is first and den._stale and not den.save_btn.isEnabled()
    den.ensemble.setCurrentIndex(0)              # a change runs it again
    wait_result(qtbot, den, first)
    assert den.stopped_note.isHidden() and den.save_btn.isEnabled()


def test_batch_cancel_stops_a_target_search_within_the_file(qtbot, window, crops, tmp_path, monkeypatch):
    """Cancel during a file's target search stops it there (the search took the whole file before):
    the file is cancelled, not written."""
    import gui.batch_queue as bq

    pressed = threading.Event()
    real = bq.encode_file

    def encode_after_cancel(*a, **k):                 # the search starts once Cancel was pressed
        pressed.wait(WAIT / 1000)
        return real(*a, **k)

    monkeypatch.setattr(bq, "encode_file", encode_after_cancel)
    window.compress.rate_mode.setCurrentIndex(1)       # target bits per pixel
    tab = window.batch
    tab.add_paths([crops[0]])
    tab.out_edit.setText(str(tmp_path / "out"))
    shown = tab._progress

    def progress(payload):
        shown(payload)
        if payload[1] == bq.WORKING and tab.cancel_btn.isEnabled():
            tab.cancel_btn.click()
            pressed.set()

    tab._progress = progress
    run_batch(qtbot, tab)
    assert [it.status for it in tab.items] == [CANCELLED]
    assert not (tmp_path / "out" / crops[0].with_suffix(".aez").name).exists()


def test_refinement_set_in_the_compress_tab_codes_the_preview_and_the_batch(qtbot, window, crops, tmp_path, shots):
    """The Compress tab's refine steps (encode --refine) code what it shows, persist, and the batch
    queue compresses with them as the CLI does."""
    tab = window.compress
    tab.open_path(crops[1])
    plain = wait_result(qtbot, tab)
    tab.refine.setValue(20)
    refined = wait_result(qtbot, tab, plain)
    assert window.settings.refine == 20
    codec = open_codec("photo", "cpu", 2)
    pic = read_image(crops[1])
    want, _ = codec.code(codec.analyse(pic.pixels), refined.position, pic.mode, pic.bits, pic.has_alpha, refine=20)
    assert refined.data == want != plain.data
    shots(window, "compress-refine")
    drop(window, crops[2:4])
    batch = window.batch
    assert "refined in 20 steps" in batch.settings_note.text()
    batch.out_edit.setText(str(tmp_path / "out"))
    run_batch(qtbot, batch)
    assert [it.status for it in batch.items] == [DONE, DONE]
    for crop in crops[2:4]:
        got = (tmp_path / "out" / crop.with_suffix(".aez").name).read_bytes()
        assert got == encode_picture(read_image(crop), open_codec("photo", "cpu", 2, refine=20), quality=75).data


def test_controls_the_model_has_nothing_behind_are_greyed(qtbot, window, crops, monkeypatch):
    """A model of one quality level (a dense codec) codes every image at it, and one without a
    refinement graph cannot refine: the quality, target and refinement controls say so, greyed,
    instead of showing a quality the result does not have."""
    from aecompress.codec import Codec

    tab = window.compress
    tab.open_path(crops[0])
    first = wait_result(qtbot, tab)
    assert tab.rate_mode.isEnabled() and tab.rate_stack.isEnabled() and tab.refine.isEnabled()
    monkeypatch.setattr(Codec, "span", property(lambda self: 0.0))
    monkeypatch.setattr(Codec, "refine_problem", lambda self: "model photo has no refinement graph")
    tab.reload()
    wait_result(qtbot, tab, first)
    assert not tab.rate_mode.isEnabled() and not tab.rate_stack.isEnabled()
    assert "one quality level" in tab.rate_stack.toolTip()
    assert not tab.refine.isEnabled() and tab.refine.toolTip() == "model photo has no refinement graph"
    monkeypatch.undo()
    tab.reload()
    qtbot.waitUntil(lambda: tab.refine.isEnabled() and tab.rate_stack.isEnabled(), timeout=WAIT)
    assert "encode --refine" in tab.refine.toolTip()


def test_finished_files_keep_their_action_and_run_again_when_added_again(qtbot, window, crops, blur_denoiser,
                                                                         tmp_path):
    """After a compress batch, choosing denoise relabelled the finished rows 'Denoise' beside their
    .aez results, and dropping them again added nothing while Start stayed off; the last run's
    summary also stayed after the queue changed."""
    window.add_model_folder(blur_denoiser)
    tab = window.batch
    tab.add_paths(crops[:2])
    tab.out_edit.setText(str(tmp_path / "out"))
    run_batch(qtbot, tab)
    assert [it.status for it in tab.items] == [DONE, DONE] and "Finished: 2 done" in tab.summary.text()
    tab.action.setCurrentIndex(1)                              # denoise images
    assert [tab.table.item(r, 1).text() for r in range(2)] == ["Compress", "Compress"]
    assert not tab.start_btn.isEnabled()
    assert tab.add_paths(crops[:2]) == 2                       # added again: to be run again
    assert [it.status for it in tab.items] == [WAITING, WAITING] and tab.start_btn.isEnabled()
    assert [tab.table.item(r, 1).text() for r in range(2)] == ["Denoise", "Denoise"]
    assert "Finished" not in tab.summary.text() and "2 of 2 files to run" in tab.summary.text()
    run_batch(qtbot, tab)
    assert [it.status for it in tab.items] == [DONE, DONE]
    assert (tmp_path / "out" / "crop0.denoised.png").exists() and (tmp_path / "out" / "crop0.aez").exists()
    tab.clear_finished()
    assert tab.summary.text() == "Drop several files on the window, or add them here."


def test_stopping_a_new_result_says_the_one_shown_is_older(qtbot, window, crops):
    """Esc while the result for a new setting is being made: Save stays off (the result shown is for
    the setting before) and says so, instead of 'still compressing' when nothing runs."""
    tab = window.compress
    tab.open_path(crops[1])
    first = wait_result(qtbot, tab)
    said = []
    tab.statusMessage.connect(said.append)
    tab.refine.setValue(60)
    qtbot.waitUntil(lambda: tab._enc_job is not None and window.work.busy, timeout=WAIT)
    window.stop()
    qtbot.waitUntil(lambda: not window.work.busy, timeout=WAIT)
    assert tab.result is first and not tab.save_aez_btn.isEnabled()
    assert tab.save_aez(crops[1].with_suffix(".aez")) is None
    assert said[-1].startswith("stopped before the result for the new setting was made"), said[-3:]
    assert "stopped" in tab.estimate.text()
    tab.refine.setValue(0)                                     # a change makes it again
    wait_result(qtbot, tab, first)
    assert tab.save_aez_btn.isEnabled()


def test_escape_while_a_setting_settles_stops_the_run_it_was_about_to_start(qtbot, window, crops, blur_denoiser):
    """Esc just after the quality moved (the coding waits 150 ms for it to rest) or a noise level was
    typed (400 ms) stopped nothing: the run started after it. Esc stops it and says so; a strength
    still settling goes back to the strength shown."""
    tab = window.compress
    tab.open_path(crops[1])
    first = wait_result(qtbot, tab)
    submitted = []
    submit = window.work.submit
    window.work.submit = lambda fn, **kw: submitted.append(kw.get("name")) or submit(fn, **kw)
    tab.quality.setValue(40)
    assert tab._debounce.isActive() and not window.work.busy
    QTest.keyClick(window, Qt.Key.Key_Escape)
    assert window.statusBar().currentMessage() == "Stopped"
    qtbot.wait(400)
    assert submitted == [] and not window.work.busy
    assert tab.result is first and not tab.save_aez_btn.isEnabled() and "stopped" in tab.estimate.text()
    tab.quality.setValue(45)                     # a change makes it again
    wait_result(qtbot, tab, first)
    assert submitted == ["encode"] and tab.save_aez_btn.isEnabled()
    # the Denoise tab: a noise level typed, and a strength, still settling
    window.add_model_folder(blur_denoiser)
    den = window.denoise
    window.tabs.setCurrentWidget(den)
    den.open_path(crops[0])
    shown = wait_result(qtbot, den)
    submitted.clear()
    den.auto.setChecked(False)                   # runs at once
    shown = wait_result(qtbot, den, shown)
    submitted.clear()
    den.sigma_spin.setValue(den.sigma.value() + 10)
    assert den._noise_timer.isActive()
    QTest.keyClick(window, Qt.Key.Key_Escape)
    assert window.statusBar().currentMessage() == "Stopped"
    qtbot.wait(600)
    assert submitted == [] and den.result is shown and not den.save_btn.isEnabled()
    assert not den.stopped_note.isHidden() and "earlier settings" in den.stopped_note.text()
    assert window.settings.denoise_sigma == den.sigma.value()      # the level set is kept
    den.sigma_spin.setValue(den.sigma.value() - 5)
    shown = wait_result(qtbot, den, shown)
    assert den.save_btn.isEnabled() and den.stopped_note.isHidden()
    submitted.clear()
    den.strength.setValue(40)
    QTest.keyClick(window, Qt.Key.Key_Escape)
    qtbot.wait(300)
    assert submitted == [] and den.strength.value() == 100 and den.strength_label.text() == "100%"
    assert window.settings.denoise_strength == 100 and den._current()


# -- what a keyboard and small-screen audit found ----------------------------------------------------

def test_a_long_unbroken_file_name_wraps_instead_of_widening(qtbot, settings, crops, tmp_path, shots):
    """A 200-character name without spaces could not wrap: the Decompress side panel grew to 1637 px
    inside a 322 px viewport and cut its buttons off, and an error naming such a path widened the
    window to 1404 px. Both wrap inside the width they have now."""
    from aecompress.compress import encode_file, open_codec
    from gui.widgets import SidePanel

    win = make_window(qtbot, settings, (1024, 480))          # short: the side panel scrolls
    stem = ("holiday_photo_from_the_mountains_" * 8)[:196]
    aez = tmp_path / f"{stem}.aez"
    encode_file(crops[0], aez, open_codec(None, "cpu"))
    win.tabs.setCurrentWidget(win.decompress)
    drop(win, [aez])
    qtbot.waitUntil(lambda: win.decompress.decoded is not None and not win.work.busy, timeout=WAIT)
    QApplication.processEvents()
    assert win.decompress.grid.text("file") == aez.name            # the text itself is whole
    panel = win.decompress.findChild(SidePanel)
    # once the layout has settled (the wrapped name makes the panel scroll, and the viewport narrows
    # by the scroll bar a moment before the contents follow): the contents fit (they were 1637 px)
    qtbot.waitUntil(lambda: panel.inner.width() <= panel.viewport().width() + 1, timeout=WAIT)
    shots(win, "long-name-decompress")
    bad = tmp_path / f"{stem}_broken.aez"
    bad.write_bytes(b"garbage" * 10)
    drop(win, [bad])
    qtbot.waitUntil(lambda: bool(win.banner.text), timeout=WAIT)
    QApplication.processEvents()
    assert panel.verticalScrollBar().isVisible()
    assert bad.name in win.banner.text and win.width() == 1024 and win.minimumSizeHint().width() < 1024
    shots(win, "long-name-error")
    win.close()


def test_batch_queue_by_keyboard(window, qtbot, crops):
    """Tab leaves the queue's table (it moved from cell to cell forever, a keyboard trap) and Delete
    removes the selected files."""
    batch = window.batch
    window.tabs.setCurrentWidget(batch)
    batch.add_paths(crops[:3])
    batch.table.setFocus()
    batch.table.selectRow(1)
    qtbot.waitUntil(batch.table.hasFocus, timeout=WAIT)
    QTest.keyClick(batch.table, Qt.Key.Key_Delete)
    assert [it.path for it in batch.items] == [crops[0], crops[2]]
    QTest.keyClick(batch.table, Qt.Key.Key_Tab)
    assert batch.out_edit.hasFocus()


def test_compare_view_by_keyboard(window, qtbot, cat_png):
    """The arrow keys pan a zoomed view and Shift+Left/Right move the split (the keyboard could zoom
    but not look anywhere else); the focused view shows a focus frame."""
    drop(window, [cat_png])
    wait_result(qtbot, window.compress)
    view = window.compress.panel.view
    view.setFocus()
    qtbot.waitUntil(view.hasFocus, timeout=WAIT)
    focused = view.grab().toImage()
    window.compress.panel.fit_btn.setFocus()
    qtbot.waitUntil(lambda: not view.hasFocus(), timeout=WAIT)
    assert view.grab().toImage() != focused
    view.setFocus()
    qtbot.waitUntil(view.hasFocus, timeout=WAIT)
    QTest.keyClick(view, Qt.Key.Key_1)
    centre = QPointF(view._center)
    QTest.keyClick(view, Qt.Key.Key_Right)
    QTest.keyClick(view, Qt.Key.Key_Down)
    assert view._center.x() > centre.x() and view._center.y() > centre.y()
    before = view.divider
    QTest.keyClick(view, Qt.Key.Key_Left, Qt.KeyboardModifier.ShiftModifier)
    assert view.divider == pytest.approx(before - 0.05)
    # the original alone: no divider on screen, none moved behind the user's back
    view.set_images(window.compress.panel.view.before)
    QTest.keyClick(view, Qt.Key.Key_Left, Qt.KeyboardModifier.ShiftModifier)
    assert view.divider == pytest.approx(before - 0.05)


def test_a_long_status_message_is_shortened_before_the_device_controls(window, qtbot, tmp_path):
    """A long message ran into "Device:", cut mid-letter; it is shortened in the middle to the room
    left, with the whole of it in the tooltip."""
    long = "Error: " + "/very/long/folder" * 20 + "/photo.aez: not an .aez file"
    window.show_status(long)
    shown = window.statusBar().currentMessage()
    assert shown != long and "\u2026" in shown and shown.endswith("not an .aez file")
    assert window.statusBar().fontMetrics().horizontalAdvance(shown) < window.device.mapTo(window.statusBar(), QPoint(0, 0)).x()
    assert window.statusBar().toolTip() == long
    window.show_status("Ready")
    assert window.statusBar().currentMessage() == "Ready" and window.statusBar().toolTip() == ""


def test_copying_a_wrapped_value_gives_the_text_without_break_points(qtbot):
    """breakable() puts zero-width spaces into long words so they wrap; what a user copies must not
    hold them (a pasted path would name no file, a pasted number would not parse)."""
    from gui.main_window import ErrorBanner
    from gui.widgets import ZWSP, ResultGrid, breakable

    assert breakable("1.560") == "1.560" and breakable("11945ee191e7220f") == "11945ee191e7220f"
    long = "/photos/" + "holiday_photo_from_the_mountains_" * 4 + ".aez"
    assert ZWSP in breakable(long) and breakable(long).replace(ZWSP, "") == long
    g = ResultGrid([("file", "File"), ("bpp", "Bits per pixel")])
    qtbot.addWidget(g)
    b = ErrorBanner()
    qtbot.addWidget(b)
    g.set("file", long)
    g.set("bpp", "1.560")
    b.show_message(f"{long}: not an .aez file")
    g.show()
    b.show()
    for lab, want in ((g.values["file"], long), (g.values["bpp"], "1.560"), (b.label, f"{long}: not an .aez file")):
        lab.setSelection(0, len(lab.text()))
        QGuiApplication.clipboard().clear()
        QTest.keyClick(lab, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier)
        assert QGuiApplication.clipboard().text() == want


def test_the_primary_button_shows_keyboard_focus(window, qtbot, cat_png):
    """The blue Save button's focus ring was barely visible: a focused one looks different."""
    window.compress.open_path(cat_png)
    wait_result(qtbot, window.compress)
    btn = next(b for b in window.compress.findChildren(QPushButton) if b.objectName() == "primary")
    qtbot.waitUntil(btn.isEnabled, timeout=WAIT)
    window.compress.panel.fit_btn.setFocus()
    qtbot.waitUntil(lambda: not btn.hasFocus(), timeout=WAIT)
    plain = btn.grab().toImage()
    btn.setFocus()
    qtbot.waitUntil(btn.hasFocus, timeout=WAIT)
    focused = btn.grab().toImage()
    d = np.abs(from_qimage(plain).astype(int) - from_qimage(focused).astype(int)).max(axis=2)
    assert (d > 60).sum() > 100, int((d > 60).sum())        # a frame round it (there was no change at all)


# -- life cycle and concurrency: memory kept by finished jobs, a folder of thousands of files -------

def test_finished_jobs_let_go_of_what_they_hold(qtbot, window, crops):
    """PySide keeps every started QRunnable that is not auto-deleted: each job's function stayed in
    memory with what it held (the picture, its analysis), so opening image after image grew the app
    by the images' size each time (6 MB per 1.3-megapixel image, 1.5 GB after 20 photos of 24 MP)."""
    import gc
    import weakref

    class Payload:
        pass

    q = WorkQueue(threads=1)
    held = [Payload(), Payload()]
    refs = [weakref.ref(p) for p in held]
    gate = hold(q)
    q.submit(lambda token, emit, p=held[0]: p, name="runs", done=lambda _r: None)
    q.submit(lambda token, emit, p=held[1]: p, name="never runs", cancelled=lambda: None)
    q.cancel_all()                              # the second is taken off the queue before it starts
    gate.set()
    assert q.shutdown(10_000)
    qtbot.waitUntil(lambda: not q.busy, timeout=10_000)
    del held
    gc.collect()
    assert [r() for r in refs] == [None, None]
    # in the window: the picture opened before is gone once another is opened
    tab = window.compress
    tab.open_path(crops[0])
    wait_result(qtbot, tab)
    first = weakref.ref(tab.prepared.picture)
    tab.open_path(crops[1])
    wait_result(qtbot, tab)
    gc.collect()
    assert first() is None


def test_a_folder_of_a_thousand_files_drops_at_once(qtbot, window, tmp_path):
    """With the Batch tab showing, each file's row was inserted on its own, moving every row's progress
    bar below it: a folder of 1,200 files took 5.4 s to drop, 2,000 took 13 s and 3,000 took 37 s, the
    window frozen all along."""
    d = tmp_path / "many"
    d.mkdir()
    for k in range(1600):
        (d / f"img{k:04d}.png").write_bytes(b"")
    window.tabs.setCurrentWidget(window.batch)
    QApplication.processEvents()
    t0 = time.perf_counter()
    drop(window, [d])
    took = time.perf_counter() - t0
    tab = window.batch
    assert tab.table.rowCount() == len(tab.items) == 1600
    assert tab.table.item(1599, 0).text() == "img1599.png" and tab.items[1599].status == WAITING
    assert tab.table.item(1599, 2).text() == WAITING
    assert took < 2.5, f"{took:.1f} s"          # 0.2 s here (it took 6 to 9 s, then 0.5 s with a bar per row)


def test_escape_while_ms_ssim_is_measured_does_not_leave_it_computing(qtbot, window, crops, monkeypatch):
    """Esc while the result's MS-SSIM was measured (measured last: seconds on a large photo) stopped
    the measurement, but the Result panel said "computing…" for good. It says it was not measured;
    the result itself stays current (Save works) and a new setting measures again."""
    import gui.compress_tab as ct

    gate, measuring = threading.Event(), threading.Event()
    real = ct.ms_ssim

    def slow(a, b, check=None):
        measuring.set()
        while not gate.wait(0.02):
            check()
        return real(a, b, check)

    monkeypatch.setattr(ct, "ms_ssim", slow)
    tab = window.compress
    window.open_paths([crops[0]])
    qtbot.waitUntil(lambda: measuring.is_set() and tab.result is not None, timeout=WAIT)
    assert tab.grid.text("msssim") == "computing\u2026"
    window.stop()                                # Esc
    qtbot.waitUntil(lambda: not window.work.busy, timeout=WAIT)
    assert tab.grid.text("msssim") == "not measured (stopped)"
    assert tab.save_aez_btn.isEnabled() and tab.grid.text("psnr").endswith("dB")
    gate.set()
    tab.quality.setValue(40)
    r = wait_result(qtbot, tab, tab.result)
    qtbot.waitUntil(lambda: tab.result.ms_ssim is not None, timeout=WAIT)
    assert tab.grid.text("msssim") == f"{tab.result.ms_ssim:.4f}" and r.rate == ("quality", 40.0)


def test_a_coding_replaced_by_a_newer_one_does_not_say_stopped(qtbot, window, crops, tmp_path):
    """Moving the quality (or changing the model) while a coding ran cancelled it, and its end said
    "stopped: the result shown is the earlier one" (0.2 s to seconds, until the new result came) as
    if Esc had been pressed; Save said "stopped before the result ... was made" meanwhile."""
    tab = window.compress
    tab.open_path(crops[0])
    first = wait_result(qtbot, tab)
    shown, said = [], []
    set_text = tab.estimate.setText
    tab.estimate.setText = lambda text: (shown.append(text), set_text(text))
    tab.statusMessage.connect(said.append)
    for change in ("quality", "model"):
        gate = hold(window.work)
        tab.quality.setValue(tab.quality.value() - 20)
        tab.encode()                           # a coding at that quality waits behind the step in flight
        if change == "quality":
            tab.quality.setValue(tab.quality.value() - 20)     # the user moves on before it ends
        else:
            tab.reload()                       # the model (or the device) changed
        try:
            assert tab.save_aez(tmp_path / "early.aez") is None
            assert said[-1].startswith("still compressing at the new setting"), said[-1]
        finally:
            gate.set()
        first = wait_result(qtbot, tab, first)
        assert first.rate == tab.rate() and not tab._stale
        assert not [t for t in shown if "stopped" in t], shown


def progress_colour(tab, row: int):
    """The colour a row's progress bar is painted with, a sixth of the way into it (clear of its text)."""
    QApplication.processEvents()
    img = tab.table.viewport().grab().toImage()
    rect = tab.table.visualRect(tab.table.model().index(row, 2))
    return img.pixelColor(rect.left() + rect.width() // 6, rect.center().y()).name()


def test_batch_progress_is_painted_by_the_table(qtbot, window, tmp_path, shots):
    """Each row's progress is its item in the table (its text is what the view's keyboard and
    accessibility read), painted as the style sheet's file progress bar for its state; a busy bar moves."""
    from gui.batch_queue import WORKING

    tab = window.batch
    window.tabs.setCurrentWidget(tab)
    files = [tmp_path / f"f{k}.png" for k in range(6)]
    for f in files:
        f.write_bytes(b"")
    tab.add_paths(files)
    for r, (status, message) in enumerate([(DONE, "1.0 s"), (FAILED, "f1.png: broken"), (SKIPPED, "f2.aez exists"),
                                           (WORKING, "")]):
        tab._progress((r, status, message))
    tab.items[4].status = CANCELLED
    tab._show(4)
    model = tab.table.model()
    assert [tab.table.item(r, 2).text() for r in range(6)] == [DONE, FAILED, SKIPPED, "Working", CANCELLED, WAITING]
    assert all(tab.table.indexWidget(model.index(r, c)) is None for r in range(6) for c in range(4))
    base = tab.table.palette().base().color().name()
    assert [progress_colour(tab, r) for r in (0, 1, 2, 4, 5)] == ["#8fd19e", "#f0a39c", "#d3d6da", base, base]
    shots(window, "batch-states")
    first = tab.table.viewport().grab(tab.table.visualRect(model.index(3, 2))).toImage()
    qtbot.waitUntil(lambda: tab.table.viewport().grab(tab.table.visualRect(model.index(3, 2))).toImage() != first,
                    timeout=5000)
    tab._progress((3, DONE, "0.5 s"))
    assert progress_colour(tab, 3) == "#8fd19e"


def test_thousands_of_rows_drop_paint_and_go_at_once(qtbot, window, tmp_path):
    """A QProgressBar in every row (setCellWidget) made a folder of 10,000 files take 4.2 s to drop and
    26 s more to paint, and removing them 3.2 s, the window frozen all along; the rows are the
    table's own items now."""
    from PySide6.QtCore import QItemSelection, QItemSelectionModel

    d = tmp_path / "many"
    d.mkdir()
    n = 4000
    for k in range(n):
        (d / f"img{k:04d}.png").write_bytes(b"")
    tab = window.batch
    window.tabs.setCurrentWidget(tab)
    QApplication.processEvents()
    t0 = time.perf_counter()
    drop(window, [d])
    window.repaint()                            # the first paint, there and then
    took = time.perf_counter() - t0
    assert len(tab.items) == tab.table.rowCount() == n
    assert tab.table.indexWidget(tab.table.model().index(n - 1, 2)) is None
    assert took < 3.0, f"{took:.1f} s"          # 0.4 s here (2.25 s for 3,000 files with a bar per row)
    sel = QItemSelection()                      # every other file, then the rest
    model = tab.table.model()
    for r in range(0, n, 2):
        sel.select(model.index(r, 0), model.index(r, 3))
    tab.table.selectionModel().select(sel, QItemSelectionModel.SelectionFlag.ClearAndSelect)
    t0 = time.perf_counter()
    tab.remove_selected()
    window.repaint()
    took = time.perf_counter() - t0
    assert [it.path.name for it in tab.items[:2]] == ["img0001.png", "img0003.png"] and len(tab.items) == n // 2
    assert [tab.table.item(r, 0).text() for r in (0, n // 2 - 1)] == ["img0001.png", f"img{n - 1:04d}.png"]
    assert took < 2.0, f"{took:.1f} s"
    tab.table.selectAll()
    tab.remove_selected()
    assert tab.items == [] and tab.table.rowCount() == 0


def test_a_failed_analysis_is_tried_again_when_the_quality_moves(qtbot, window, crops, monkeypatch):
    """When the analysis of an opened image failed (out of memory, say), moving the quality did
    nothing until the image was opened again; it now runs the analysis again."""
    from aecompress.codec import Codec
    from aecompress.errors import AecError

    real = Codec.analyse
    calls = []

    def analyse(self, *a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise AecError("not enough memory to analyse this image")
        return real(self, *a, **k)

    monkeypatch.setattr(Codec, "analyse", analyse)
    tab = window.compress
    tab.open_path(crops[0])
    qtbot.waitUntil(lambda: "not enough memory" in window.banner.text and not window.work.busy, timeout=WAIT)
    assert tab.result is None and tab.prepared is None
    tab.quality.setValue(tab.quality.value() - 10)
    wait_result(qtbot, tab)
    assert len(calls) == 2 and tab.save_aez_btn.isEnabled()
