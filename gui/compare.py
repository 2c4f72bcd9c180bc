"""The compare view: before/after split with a draggable divider, or side by side with zoom and
pan kept in step (mouse wheel, drag, 1:1 and fit), and a difference-map toggle.

CompareView paints everything itself from one view state (scale and the image point at the centre
of each pane), so both sides always show the same region. Large images are drawn from a small
pyramid of downscaled copies so that panning a 24-megapixel photo stays smooth.
"""

from __future__ import annotations

from typing import List, Union

import numpy as np
from PySide6.QtCore import QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import (QColor, QFont, QImage, QPainter, QPainterPath, QPalette, QPen, QPolygonF)
from PySide6.QtWidgets import (QButtonGroup, QHBoxLayout, QLabel, QSizePolicy, QToolButton, QVBoxLayout,
                               QWidget)

MIN_SCALE, MAX_SCALE = 1 / 64, 32.0
DIFF_GAIN = 8            # |error| x 8, clipped: an error of 32 levels reaches the top of the colour map
BACKGROUND = QColor("#26282b")


# -- numpy <-> QImage ----------------------------------------------------------------------------

def to_qimage(pixels: np.ndarray) -> QImage:
    """(H, W, C) uint8/uint16 array -> an independent QImage (greyscale, RGB or RGBA)."""
    a = np.asarray(pixels)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.dtype == np.uint16:
        a = ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    c = a.shape[2]
    if c == 2:                   # LA: show the grey, ignore alpha
        a, c = a[:, :, :1], 1
    fmt = {1: QImage.Format.Format_Grayscale8, 3: QImage.Format.Format_RGB888,
           4: QImage.Format.Format_RGBA8888}[c]
    a = np.ascontiguousarray(a)
    h, w = a.shape[:2]
    return QImage(a.data, w, h, w * c, fmt).copy()


def from_qimage(img: QImage) -> np.ndarray:
    """QImage -> (H, W, 3 or 4) uint8 array (RGBA only when the image has an alpha channel)."""
    alpha = img.hasAlphaChannel()
    img = img.convertToFormat(QImage.Format.Format_RGBA8888 if alpha else QImage.Format.Format_RGB888)
    c = 4 if alpha else 3
    h, w, bpl = img.height(), img.width(), img.bytesPerLine()
    buf = np.frombuffer(img.constBits(), np.uint8, count=bpl * h).reshape(h, bpl)
    # a copy, always: the converted QImage is freed on return, and when its rows have no padding
    # (width x channels a multiple of 4) ascontiguousarray returned a view of its freed memory
    return buf[:, : w * c].reshape(h, w, c).copy()


def _colormap() -> np.ndarray:
    """256-entry perceptual map (black -> purple -> orange -> pale yellow), like matplotlib's magma."""
    stops = np.array([[0, 0, 4], [59, 15, 112], [140, 41, 129], [222, 73, 104], [254, 159, 109],
                      [252, 253, 191]], np.float64)
    x = np.linspace(0, len(stops) - 1, 256)
    i = np.minimum(x.astype(int), len(stops) - 2)
    f = (x - i)[:, None]
    return np.round(stops[i] * (1 - f) + stops[i + 1] * f).astype(np.uint8)


_CMAP = _colormap()


def difference_image(a: np.ndarray, b: np.ndarray, gain: float = DIFF_GAIN) -> QImage:
    """Error map of two same-sized images: mean absolute difference over channels, amplified."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    d = d.mean(axis=2) if d.ndim == 3 else d
    idx = np.clip(d * gain, 0, 255).astype(np.uint8)
    return to_qimage(_CMAP[idx])


def pyramid(img: QImage) -> list[QImage]:
    """The image and halved copies down to about 512 pixels: what the view draws when zoomed out.

    Safe to build on a worker thread (QImage, unlike QPixmap, is not tied to the UI thread), so a
    24-megapixel result reaches the screen without a pause; pass the list to CompareView.set_images.
    """
    levels = [img]
    while max(levels[-1].width(), levels[-1].height()) > 512 and len(levels) < 9:
        prev = levels[-1]
        levels.append(prev.scaled(max(prev.width() // 2, 1), max(prev.height() // 2, 1),
                                  Qt.AspectRatioMode.IgnoreAspectRatio, Qt.TransformationMode.SmoothTransformation))
    return levels


Displayable = Union[QImage, List[QImage], None]     # an image, its pyramid, or nothing


# -- the view ------------------------------------------------------------------------------------

class CompareView(QWidget):
    """Paints one image, or a before/after pair as a split or side by side; owns zoom and pan."""

    zoomChanged = Signal(float)
    modeChanged = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(240, 180)
        self._before: QImage | None = None
        self._after: QImage | None = None
        self._diff: QImage | None = None
        self._labels = ("Original", "Result")
        self.diff_label = f"Difference (|error| \u00d7 {DIFF_GAIN})"
        self._mode = "split"
        self._show_diff = False
        self._scale = 1.0
        self._center = QPointF(0, 0)
        self._fitting = True
        self._divider = 0.5
        self._drag: str | None = None
        self._last = QPointF()
        self._pyramids: dict[int, list[QImage]] = {}
        self._busy = ""
        self.placeholder = ("Drop a photo or an .aez file here",
                            "or use File \u203a Open (Ctrl+O) or paste an image (Ctrl+V)")

    # -- content ---------------------------------------------------------------------------------
    def set_images(self, before: Displayable, after: Displayable = None, diff: Displayable = None,
                   labels: tuple[str, str] | None = None) -> None:
        """Show `before` (and `after`, the result). The view is kept when the image size is unchanged.

        Each image is a QImage or a list from pyramid() (built on a worker for large images)."""
        old = self._before.size() if self._before is not None else None
        self._pyramids = {}
        before, after, diff = (self._take(x) for x in (before, after, diff))
        self._before, self._after, self._diff = before, after, diff
        if labels:
            self._labels = labels
        if before is None or old != before.size():
            self._fitting = True
        if self._fitting:
            self.fit()
        self.update()

    def _take(self, x) -> QImage | None:
        if isinstance(x, list):
            self._pyramids[x[0].cacheKey()] = x
            return x[0]
        return x

    def set_after(self, after: Displayable, diff: Displayable = None) -> None:
        before = self._pyramids.get(self._before.cacheKey(), self._before) if self._before is not None else None
        self.set_images(before, after, diff)

    @property
    def before(self) -> QImage | None:
        return self._before

    @property
    def after(self) -> QImage | None:
        return self._after

    def set_busy(self, text: str) -> None:
        self._busy = text
        self.update()

    # -- view state ------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        if mode not in ("split", "side") or mode == self._mode:
            return
        self._mode = mode
        if self._fitting:
            self.fit()
        self.modeChanged.emit(mode)
        self.update()

    @property
    def show_diff(self) -> bool:
        return self._show_diff

    def set_show_diff(self, on: bool) -> None:
        self._show_diff = bool(on)
        self.update()

    @property
    def scale(self) -> float:
        return self._scale

    @property
    def divider(self) -> float:
        return self._divider

    def set_divider(self, fraction: float) -> None:
        self._divider = min(max(fraction, 0.0), 1.0)
        self.update()

    def _paired(self) -> bool:
        return self._after is not None

    def _panes(self) -> list[QRectF]:
        r = QRectF(self.rect())
        if self._mode == "side" and self._paired():
            half = (r.width() - 2) / 2
            return [QRectF(r.left(), r.top(), half, r.height()), QRectF(r.left() + half + 2, r.top(), half, r.height())]
        return [r]

    def fit(self) -> None:
        """Whole image in view; stays fitted through resizes until the user zooms or pans."""
        self._fitting = True
        if self._before is None:
            return
        pane = self._panes()[0]
        w, h = self._before.width(), self._before.height()
        s = min((pane.width() - 16) / w, (pane.height() - 16) / h)
        self._set_scale(min(max(s, MIN_SCALE), MAX_SCALE))
        self._center = QPointF(w / 2, h / 2)
        self.update()

    def actual_size(self) -> None:
        """One image pixel per screen pixel, keeping the centre of the view."""
        self._fitting = False
        self._set_scale(1.0 / max(self.devicePixelRatioF(), 1e-6))
        self.update()

    def zoom_by(self, factor: float, anchor: QPointF | None = None) -> None:
        """Zoom keeping the image point under `anchor` (widget coordinates) in place."""
        if self._before is None:
            return
        pane = self._pane_at(anchor) if anchor is not None else self._panes()[0]
        anchor = anchor if anchor is not None else pane.center()
        img_pt = self._to_image(anchor, pane)
        self._fitting = False
        self._set_scale(min(max(self._scale * factor, MIN_SCALE), MAX_SCALE))
        self._center = img_pt - (anchor - pane.center()) / self._scale
        self.update()

    def _set_scale(self, s: float) -> None:
        if s != self._scale:
            self._scale = s
            self.zoomChanged.emit(s)

    def _pane_at(self, pos: QPointF) -> QRectF:
        for p in self._panes():
            if p.contains(pos):
                return p
        return self._panes()[0]

    def _to_image(self, pos: QPointF, pane: QRectF) -> QPointF:
        return self._center + (pos - pane.center()) / self._scale

    def _image_rect(self, pane: QRectF) -> QRectF:
        """Where the whole image lands in widget coordinates for this pane."""
        w, h = self._before.width(), self._before.height()
        top_left = pane.center() - self._center * self._scale
        return QRectF(top_left.x(), top_left.y(), w * self._scale, h * self._scale)

    def _divider_x(self) -> float:
        return self.width() * self._divider

    # -- painting --------------------------------------------------------------------------------
    def _pyramid(self, img: QImage) -> list[QImage]:
        key = img.cacheKey()
        if key not in self._pyramids:
            self._pyramids[key] = pyramid(img)
        return self._pyramids[key]

    def _draw_image(self, p: QPainter, img: QImage, pane: QRectF, clip: QRectF) -> None:
        full = self._image_rect(pane)
        target = full.intersected(clip)
        if target.isEmpty():
            return
        # the smallest pyramid level that still has at least one texel per screen pixel
        level, factor = 0, 1.0
        if self._scale < 0.5:
            levels = self._pyramid(img)
            while level + 1 < len(levels) and self._scale * factor * 2 <= 1.0:
                level += 1
                factor *= 2
            img = levels[level]
        sx = img.width() / full.width()
        sy = img.height() / full.height()
        source = QRectF((target.left() - full.left()) * sx, (target.top() - full.top()) * sy,
                        target.width() * sx, target.height() * sy)
        smooth = self._scale * factor < 2.0 and abs(self._scale * self.devicePixelRatioF() - 1.0) > 1e-6
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, smooth)
        p.drawImage(target, img, source)

    def _chip(self, p: QPainter, text: str, anchor: QPointF, align: str = "left") -> None:
        f = QFont(self.font())
        f.setPointSizeF(max(f.pointSizeF() * 0.95, 8))
        f.setBold(True)
        p.setFont(f)
        fm = p.fontMetrics()
        w, h = fm.horizontalAdvance(text) + 16, fm.height() + 8
        x = anchor.x() if align == "left" else anchor.x() - w if align == "right" else anchor.x() - w / 2
        r = QRectF(x, anchor.y(), w, h)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor(0, 0, 0, 150))
        p.drawRoundedRect(r, h / 2, h / 2)
        p.setPen(QColor("white"))
        p.drawText(r, Qt.AlignmentFlag.AlignCenter, text)

    def _right(self) -> QImage | None:
        return self._diff if (self._show_diff and self._diff is not None) else self._after

    def _right_label(self) -> str:
        return self.diff_label if (self._show_diff and self._diff is not None) else self._labels[1]

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), BACKGROUND)
        if self._before is None:
            self._paint_placeholder(p)
            p.end()
            return
        panes = self._panes()
        right = self._right()
        if right is None:
            self._draw_image(p, self._before, panes[0], panes[0])
            self._chip(p, self._labels[0], QPointF(12, 12))
        elif self._mode == "side":
            self._draw_image(p, self._before, panes[0], panes[0])
            self._draw_image(p, right, panes[1], panes[1])
            p.fillRect(QRectF(panes[0].right(), 0, 2, self.height()), QColor("#111214"))
            self._chip(p, self._labels[0], QPointF(panes[0].left() + 12, 12))
            self._chip(p, self._right_label(), QPointF(panes[1].left() + 12, 12))
        else:
            x = self._divider_x()
            pane = panes[0]
            self._draw_image(p, self._before, pane, QRectF(pane.left(), pane.top(), x - pane.left(), pane.height()))
            self._draw_image(p, right, pane, QRectF(x, pane.top(), pane.right() - x, pane.height()))
            self._paint_divider(p, x)
            self._chip(p, self._labels[0], QPointF(12, 12))
            self._chip(p, self._right_label(), QPointF(self.width() - 12, 12), "right")
        if self._busy:
            self._chip(p, self._busy, QPointF(self.width() / 2, self.height() - 40), "center")
        if self.hasFocus():          # where the keys go (zoom, pan, divider): shown, as other widgets show it
            p.setPen(QPen(self.palette().color(QPalette.ColorRole.Highlight), 2))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawRect(QRectF(self.rect()).adjusted(1, 1, -1, -1))
        p.end()

    def focusInEvent(self, event) -> None:
        super().focusInEvent(event)
        self.update()

    def focusOutEvent(self, event) -> None:
        super().focusOutEvent(event)
        self.update()

    def _paint_divider(self, p: QPainter, x: float) -> None:
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        p.setPen(QPen(QColor(0, 0, 0, 90), 4))
        p.drawLine(QPointF(x, 0), QPointF(x, self.height()))
        p.setPen(QPen(QColor("white"), 2))
        p.drawLine(QPointF(x, 0), QPointF(x, self.height()))
        c = QPointF(x, self.height() / 2)
        p.setPen(QPen(QColor(0, 0, 0, 60), 1))
        p.setBrush(QColor("white"))
        p.drawEllipse(c, 16, 16)
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor("#3b3f45"))
        for d in (-1, 1):
            tip = QPointF(c.x() + d * 11, c.y())
            p.drawPolygon(QPolygonF([tip, QPointF(c.x() + d * 4, c.y() - 6), QPointF(c.x() + d * 4, c.y() + 6)]))

    def _paint_placeholder(self, p: QPainter) -> None:
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        r = QRectF(self.rect()).adjusted(24, 24, -24, -24)
        pen = QPen(QColor("#5b6068"), 2, Qt.PenStyle.DashLine)
        p.setPen(pen)
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRoundedRect(r, 14, 14)
        # a simple "picture" glyph
        c = r.center() - QPointF(0, 46)
        g = QRectF(c.x() - 30, c.y() - 22, 60, 44)
        p.setPen(QPen(QColor("#8a9099"), 3))
        p.drawRoundedRect(g, 6, 6)
        path = QPainterPath()
        path.moveTo(g.left() + 8, g.bottom() - 8)
        path.lineTo(g.left() + 24, g.top() + 20)
        path.lineTo(g.left() + 36, g.bottom() - 16)
        path.lineTo(g.left() + 44, g.top() + 26)
        path.lineTo(g.right() - 8, g.bottom() - 8)
        p.drawPath(path)
        p.drawEllipse(QPointF(g.right() - 14, g.top() + 12), 4, 4)
        title, sub = self.placeholder
        f = QFont(self.font())
        f.setPointSizeF(f.pointSizeF() * 1.35)
        f.setBold(True)
        p.setFont(f)
        p.setPen(QColor("#d5d8dc"))
        p.drawText(QRectF(r.left(), c.y() + 40, r.width(), 30), Qt.AlignmentFlag.AlignCenter, title)
        f.setPointSizeF(self.font().pointSizeF())
        f.setBold(False)
        p.setFont(f)
        p.setPen(QColor("#9aa0a8"))
        p.drawText(QRectF(r.left(), c.y() + 72, r.width(), 24), Qt.AlignmentFlag.AlignCenter, sub)

    # -- interaction -----------------------------------------------------------------------------
    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if self._fitting:
            self.fit()

    def wheelEvent(self, event) -> None:
        steps = event.angleDelta().y() / 120
        if steps:
            self.zoom_by(1.25 ** steps, event.position())
        event.accept()

    def _near_divider(self, pos: QPointF) -> bool:
        return (self._mode == "split" and self._right() is not None
                and abs(pos.x() - self._divider_x()) <= 10)

    def mousePressEvent(self, event) -> None:
        if event.button() != Qt.MouseButton.LeftButton or self._before is None:
            return super().mousePressEvent(event)
        self._drag = "divider" if self._near_divider(event.position()) else "pan"
        self._last = event.position()
        self.setCursor(Qt.CursorShape.SplitHCursor if self._drag == "divider" else Qt.CursorShape.ClosedHandCursor)

    def mouseMoveEvent(self, event) -> None:
        pos = event.position()
        if self._drag == "divider":
            self.set_divider(pos.x() / max(self.width(), 1))
        elif self._drag == "pan":
            self._fitting = False
            self._center -= (pos - self._last) / self._scale
            self.update()
        else:
            self.setCursor(Qt.CursorShape.SplitHCursor if self._near_divider(pos) else
                           Qt.CursorShape.OpenHandCursor if self._before is not None else Qt.CursorShape.ArrowCursor)
        self._last = pos

    def mouseReleaseEvent(self, event) -> None:
        self._drag = None
        near = self._near_divider(event.position())
        self.setCursor(Qt.CursorShape.SplitHCursor if near else Qt.CursorShape.OpenHandCursor)

    def mouseDoubleClickEvent(self, event) -> None:
        if self._fitting:
            self.zoom_by(1.0 / self._scale / max(self.devicePixelRatioF(), 1e-6), event.position())
        else:
            self.fit()

    PAN_KEYS = {Qt.Key.Key_Left: (-1, 0), Qt.Key.Key_Right: (1, 0), Qt.Key.Key_Up: (0, -1), Qt.Key.Key_Down: (0, 1)}

    def keyPressEvent(self, event) -> None:
        """+ and - zoom, F fits, 1 shows pixels 1:1, the arrow keys pan (an eighth of the view a press)
        and, with Shift, Left and Right move the split's divider: what the mouse does, by keyboard."""
        k = event.key()
        if k in self.PAN_KEYS and self._before is not None:
            dx, dy = self.PAN_KEYS[k]
            if event.modifiers() & Qt.KeyboardModifier.ShiftModifier and dy == 0:
                if self._mode == "split" and self._right() is not None:     # a divider on screen
                    self.set_divider(self._divider + 0.05 * dx)
            else:
                self._fitting = False
                self._center += QPointF(dx * self.width(), dy * self.height()) / 8 / self._scale
                self.update()
            return
        if k in (Qt.Key.Key_Plus, Qt.Key.Key_Equal):
            self.zoom_by(1.25)
        elif k == Qt.Key.Key_Minus:
            self.zoom_by(0.8)
        elif k == Qt.Key.Key_F:
            self.fit()
        elif k == Qt.Key.Key_1:
            self.actual_size()
        else:
            super().keyPressEvent(event)


class ComparePanel(QWidget):
    """CompareView with its toolbar: Split / Side by side, Difference, Fit, 1:1."""

    def __init__(self, parent: QWidget | None = None, labels: tuple[str, str] = ("Original", "Result")):
        super().__init__(parent)
        self.view = CompareView(self)
        self.view._labels = labels
        bar = QHBoxLayout()
        bar.setContentsMargins(6, 4, 6, 4)
        bar.setSpacing(4)

        def button(text: str, tip: str, checkable: bool = False) -> QToolButton:
            b = QToolButton(self)
            b.setText(text)
            b.setToolTip(tip)
            b.setCheckable(checkable)
            b.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
            b.setAutoRaise(False)
            return b

        self.split_btn = button("Split", "Before and after with a draggable divider", True)
        self.side_btn = button("Side by side", "Before and after next to each other, zoom and pan in step", True)
        group = QButtonGroup(self)
        group.setExclusive(True)
        group.addButton(self.split_btn)
        group.addButton(self.side_btn)
        self.split_btn.setChecked(True)
        self.diff_btn = button("Difference", "Show the error map of the result (D)", True)
        self.diff_btn.setShortcut("D")
        self.fit_btn = button("Fit", "Fit the image in the window (F)")
        self.one_btn = button("1:1", "One image pixel per screen pixel (1)")
        self.zoom_label = QLabel("", self)
        self.zoom_label.setMinimumWidth(48)
        self.zoom_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        for w in (self.split_btn, self.side_btn):
            bar.addWidget(w)
        bar.addSpacing(8)
        bar.addWidget(self.diff_btn)
        bar.addStretch(1)
        bar.addWidget(self.zoom_label)
        bar.addWidget(self.fit_btn)
        bar.addWidget(self.one_btn)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(0)
        lay.addLayout(bar)
        lay.addWidget(self.view, 1)

        self.split_btn.clicked.connect(lambda: self.view.set_mode("split"))
        self.side_btn.clicked.connect(lambda: self.view.set_mode("side"))
        self.diff_btn.toggled.connect(self.view.set_show_diff)
        self.fit_btn.clicked.connect(self.view.fit)
        self.one_btn.clicked.connect(self.view.actual_size)
        self.view.zoomChanged.connect(self._zoom_text)
        self.view.modeChanged.connect(self._mode_buttons)
        self._zoom_text(self.view.scale)
        self.set_pair_controls(False)

    def set_mode(self, mode: str) -> None:
        self.view.set_mode(mode)
        self._mode_buttons(self.view.mode)

    def _mode_buttons(self, mode: str) -> None:
        (self.split_btn if mode == "split" else self.side_btn).setChecked(True)

    def _zoom_text(self, s: float) -> None:
        shown = self.view.before is not None
        self.zoom_label.setText(f"{s * self.view.devicePixelRatioF() * 100:.0f}%" if shown else "")

    def set_pair_controls(self, paired: bool, diff: bool | None = None) -> None:
        """Enable the before/after controls only when there is a result to compare."""
        for b in (self.split_btn, self.side_btn):
            b.setEnabled(paired)
        self.diff_btn.setEnabled(paired if diff is None else diff)
        has = self.view.before is not None
        self.fit_btn.setEnabled(has)
        self.one_btn.setEnabled(has)
        self._zoom_text(self.view.scale)

    def sizeHint(self) -> QSize:
        return QSize(720, 520)
