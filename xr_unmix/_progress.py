"""Progress bars that suit both a terminal and Jupyter, and leave nothing behind in a saved notebook.

:func:`progress_bar` is ``tqdm.auto.tqdm``: a widget in Jupyter (with ``ipywidgets``, the
``notebook`` extra), a text bar elsewhere. In Jupyter the widget is displayed under a display id and
that display is emptied when the bar closes (``leave=False``): a saved notebook keeps neither the
widget's text fallback (``0%|          | 0/7``) nor the carriage-return updates that a text bar
written ten times a second leaves as hundreds of lines. :class:`DaskProgress` is a Dask callback
(local schedulers) that drives one such bar over the tasks of a computation.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

from dask.callbacks import Callback


def in_notebook() -> bool:
    """Whether ``tqdm.auto`` picks the notebook (widget) bar: a Jupyter kernel with ipywidgets."""
    from tqdm.auto import tqdm

    with contextlib.suppress(ImportError):
        from tqdm.notebook import tqdm as notebook_tqdm

        return issubclass(tqdm, notebook_tqdm)
    return False


class _Bar:
    """A tqdm bar; in Jupyter, shown under a display id that is emptied on close."""

    def __init__(self, **kwargs: Any) -> None:
        from tqdm.auto import tqdm

        self.handle = None
        if in_notebook() and kwargs.get("disable") is not True:
            from IPython.display import display

            self.tqdm = tqdm(display=False, **{**kwargs, "leave": False})
            self.handle = display(self.tqdm.container, display_id=True)
        else:
            self.tqdm = tqdm(**kwargs)

    def update(self, n: int = 1) -> None:
        self.tqdm.update(n)

    def set_postfix_str(self, text: str) -> None:
        self.tqdm.set_postfix_str(text)

    def write(self, line: str) -> None:
        """Print ``line`` on stderr above a text bar (in Jupyter: as a plain line, kept)."""
        self.tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        self.tqdm.close()
        if self.handle is not None:
            self.handle.update({}, raw=True)  # the saved notebook keeps an empty output
            self.handle = None


def progress_bar(**kwargs: Any) -> _Bar:
    """A bar with ``tqdm`` keyword arguments (``total``, ``desc``, ``unit``, ``disable``, ...)."""
    return _Bar(**kwargs)


class DaskProgress(Callback):
    """One bar over the tasks of each computation on a local Dask scheduler."""

    def __init__(self, desc: str = "xr_unmix", **kwargs: Any) -> None:
        super().__init__()
        self.kwargs = {"desc": desc, "unit": "task", "leave": False, "mininterval": 0.5, **kwargs}
        self.bar: _Bar | None = None

    def _start_state(self, dsk: Any, state: Any) -> None:
        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self.bar = progress_bar(total=total, **self.kwargs)

    def _posttask(self, *_: Any, **__: Any) -> None:
        if self.bar is not None:
            self.bar.update()

    def _finish(self, *_: Any, **__: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
