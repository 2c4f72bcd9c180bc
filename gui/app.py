"""Entry point: `aecompress-gui [FILES...]` or `aecompress gui [FILES...]`."""

from __future__ import annotations

import sys

MISSING = "aecompress: the desktop app needs PySide6: install the gui extra (pip install -e '.[gui]' in the aecompress checkout)"

STYLE = """
QWidget#sidePanel { background: palette(window); }
QGroupBox { font-weight: 600; border: 1px solid palette(mid); border-radius: 6px; margin-top: 14px;
            padding: 10px 8px 8px 8px; }
QGroupBox::title { subcontrol-origin: margin; left: 8px; padding: 0 3px; }
QLabel#resultName { color: palette(placeholder-text); }
QLabel#resultValue { font-weight: 600; }
QLabel#estimate { color: #2d6cdf; font-weight: 600; }
QLabel#note { color: palette(placeholder-text); }
QPushButton { padding: 5px 12px; }
QPushButton#primary { background: #2d6cdf; color: white; border: 1px solid #2559b8; border-radius: 4px;
                      font-weight: 600; }
QPushButton#primary:hover { background: #3a78ea; }
QPushButton#primary:disabled { background: #9db5e0; border-color: #9db5e0; color: #eef2fa; }
QFrame#errorBanner { background: #fdecea; border-bottom: 1px solid #f1b7b0; }
QFrame#errorBanner QLabel { color: #8a1c12; }
QLabel#errorIcon { font-size: 16px; color: #b3261e; }
QProgressBar#fileProgress { border: 1px solid palette(mid); border-radius: 3px; text-align: center;
                            background: palette(base); }
QProgressBar#fileProgress::chunk { background: #8fb3ef; }
QProgressBar#fileProgress[state="done"]::chunk { background: #8fd19e; }
QProgressBar#fileProgress[state="failed"]::chunk { background: #f0a39c; }
QProgressBar#fileProgress[state="skipped"]::chunk { background: #d3d6da; }
QToolButton:checked { background: #2d6cdf; color: white; border-radius: 3px; }
QTabWidget::pane { border: none; }
"""


def create_app(argv: list[str] | None = None):
    """The QApplication with the app's style (one per process; reused when one exists)."""
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        app = QApplication(list(argv) if argv is not None else sys.argv[:1])
    app.setApplicationName("aecompress")
    app.setOrganizationName("aecompress")
    app.setStyle("Fusion")
    app.setStyleSheet(STYLE)
    from .qtfix import install

    install(app)
    return app


def main(argv: list[str] | None = None) -> int:
    """Open the window (and any files named on the command line); returns the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in args):
        print("usage: aecompress-gui [FILES...]\n\nOpen the aecompress desktop app; images and .aez files "
              "named here are opened (several go to the batch queue).")
        return 0
    try:
        import PySide6  # noqa: F401
    except ImportError:
        print(MISSING, file=sys.stderr)
        return 1
    from .main_window import MainWindow, show_later

    app = create_app([sys.argv[0]] + args)
    win = MainWindow()
    app.aboutToQuit.connect(win.shutdown)
    win.show()
    show_later(win, [a for a in args if not a.startswith("-")])
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
