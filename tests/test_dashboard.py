"""The Dask dashboard of a cluster the package starts works (bokeh, the ``dashboard`` extra)."""

from __future__ import annotations

import urllib.request

import pytest

from xr_unmix.cluster import dask_scheduler

pytestmark = pytest.mark.slow


def test_dashboard_serves_status_page():
    with dask_scheduler(workers=1) as client:
        link = client.dashboard_link
        assert link.startswith("http://127.0.0.1:") and link.endswith("/status")
        with urllib.request.urlopen(link, timeout=30) as r:
            body = r.read().decode("utf-8", "replace")
        assert r.status == 200 and "bokeh" in body.lower()
