"""core.fmt: the one duration format."""

from core.fmt import duration


def test_duration():
    assert duration(3725) == "1h02m" and duration(3725, sep=" ") == "1h 02m"
    assert duration(75) == "1m15s" and duration(59.6) == "1m00s" and duration(5) == "5s"
    for unknown in (None, float("nan"), float("inf")):
        assert duration(unknown) == "?" and duration(unknown, none="-") == "-"
