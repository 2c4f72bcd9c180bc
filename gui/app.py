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
QPushButton#primary:focus { border: 2px solid #0f2f6b; }
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
QToolButton:checked:disabled { background: #d3d6da; color: #f4f5f6; }
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


def display_problem() -> str | None:
    """Why no window can open here, when that is plain before Qt tries (Linux without a display)."""
    import os

    if (sys.platform.startswith("linux") and not os.environ.get("QT_QPA_PLATFORM")
            and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY")):
        return ("no display to open the desktop app on (DISPLAY and WAYLAND_DISPLAY are unset; "
                "QT_QPA_PLATFORM=offscreen runs it without one)")
    return None


def _fail_in_one_line():
    """Until the application is up, Qt's fatal error (no platform plugin could start: no display, or
    the xcb plugin's libxcb-cursor0 missing) is one line and exit status 1, not half a dozen lines
    and an abort (134). The plugin warnings before it are kept for the line. Returns the undo."""
    import os

    from PySide6.QtCore import QtMsgType, qInstallMessageHandler

    held: list[str] = []

    def handler(kind, context, message):
        if kind == QtMsgType.QtFatalMsg:
            first = message.strip().splitlines()[0].split(". ")[0] if message.strip() else "Qt could not start"
            hint = next((m for m in held if "needed" in m), None)
            print(f"aecompress: error: cannot open the desktop app: {first}" + (f" ({hint})" if hint else ""),
                  file=sys.stderr, flush=True)
            os._exit(1)                 # nothing is written yet; Qt would abort() right after this
        held.append(message.strip())

    qInstallMessageHandler(handler)
    return lambda: qInstallMessageHandler(None)


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
    problem = display_problem()
    if problem:
        print(f"aecompress: error: {problem}", file=sys.stderr)
        return 1
    from aecompress.entrypoint import configure_process

    from .main_window import MainWindow, show_later

    configure_process()             # Pillow's limit, quiet library logs: the program's, not the library's
    undo = _fail_in_one_line()
    app = create_app([sys.argv[0]] + args)
    undo()
    win = MainWindow()
    app.aboutToQuit.connect(win.shutdown)
    win.show()
    show_later(win, [a for a in args if not a.startswith("-")])
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
