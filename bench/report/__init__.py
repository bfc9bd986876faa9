"""The report of a study: runs read back from MLflow, statistics over seeds, typed blocks
rendered to Markdown, HTML, CSV and LaTeX, plots, the protocol card, the search and
confirmation sections, and the pseudo-label overlays (also written by each trial)."""

from .build import build, power_advice
from .runs import ReportError
from .search_sections import SearchInfo, search_study

__all__ = ["ReportError", "SearchInfo", "build", "power_advice", "search_study"]
