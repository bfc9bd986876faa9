"""The error of a bad study file (light: no heavy import, so a bad file fails fast)."""


class StudyError(ValueError):
    """A study file is unreadable or invalid; the message is one line naming the YAML path."""


def input_error_types() -> tuple[type[Exception], ...]:
    """The exceptions that mean bad input: :class:`StudyError`, and the data, weights and report
    errors once their (heavy) modules are imported: one never imported was not raised."""
    import sys

    found: list[type[Exception]] = [StudyError]
    for module, name in (
        ("tkp_pcl.data", "DataError"),
        ("tkp_pcl.model.weights", "WeightsError"),
        ("bench.report", "ReportError"),
    ):
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None:
            found.append(cls)
    return tuple(found)
