"""The report of a study: runs read back from MLflow, statistics over seeds, typed blocks
rendered to Markdown, HTML, CSV and LaTeX, plots, the protocol card, the search and
confirmation sections, and the pseudo-label overlays (also written by each trial).

Names are imported from their module on first use (as in :mod:`bench.run`), so a trial that
writes its overlays (:mod:`bench.report.overlay`) does not import the plotting and statistics
stack (seaborn, scipy) of the report. The report itself is :func:`bench.report.build.build`
(a module and its function of one name: import it from the module).
"""

from __future__ import annotations

from ..lazy import lazy_exports

_HOME = {
    "power_advice": "build",
    "ReportError": "runs",
    **dict.fromkeys(("SearchInfo", "search_study"), "search_sections"),
}
__getattr__, __all__ = lazy_exports(__name__, _HOME)
