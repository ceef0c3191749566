from __future__ import annotations

import pytest

from proxystore_stream.filters import AllOf
from proxystore_stream.filters import AnyOf
from proxystore_stream.filters import MetadataFilter
from proxystore_stream.filters import Not
from proxystore_stream.filters import NullFilter
from proxystore_stream.filters import SamplingFilter
from proxystore_stream.protocols import Filter


def test_null_filter_keeps_everything() -> None:
    assert NullFilter()({}) is False
    assert isinstance(NullFilter(), Filter)


@pytest.mark.parametrize("p", [-0.1, 1.5, "0.5", True])
def test_sampling_filter_rejects_bad_probability(p: object) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SamplingFilter(p)  # type: ignore[arg-type]


def test_sampling_filter_drops_with_probability_p() -> None:
    f = SamplingFilter(0.3, seed=1)
    dropped = sum(f({}) for _ in range(10_000))
    assert 2700 < dropped < 3300
    assert not any(SamplingFilter(0)({}) for _ in range(100))
    assert all(SamplingFilter(1)({}) for _ in range(100))


def test_metadata_filter_keeps_only_matches() -> None:
    f = MetadataFilter({"kind": "frame", "i": lambda i: i % 2 == 0})
    assert f({"kind": "frame", "i": 2}) is False
    assert f({"kind": "frame", "i": 3}) is True
    assert f({"kind": "other", "i": 2}) is True
    assert f({"i": 2}) is True, "a missing key never matches"
    with pytest.raises(TypeError):
        MetadataFilter({1: 2})  # type: ignore[dict-item]


def test_composition() -> None:
    detector3 = MetadataFilter({"detector": 3})
    calibration = Not(MetadataFilter({"calibration": True}))
    drop = AnyOf(detector3, calibration)
    assert drop({"detector": 3}) is False
    assert drop({"detector": 3, "calibration": True}) is True
    assert drop({"detector": 4}) is True
    both = AllOf(detector3, calibration)
    assert both({"detector": 4}) is False, "only one of the two drops it"
    assert both({"detector": 4, "calibration": True}) is True
    with pytest.raises(ValueError, match="at least one"):
        AllOf()
    with pytest.raises(TypeError):
        AnyOf(3)  # type: ignore[arg-type]
