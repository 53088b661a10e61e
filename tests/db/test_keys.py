"""LUT keys: families, configs and legacy key strings."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from db import ConvConfig, ConvFamily, InvalidKeyError
from db.keys import parse_legacy_key


def test_family_key_roundtrip_and_geometry() -> None:
    f = ConvFamily.square(56, 3, 2)
    assert f.key == "f56x56_k3x3_s2x2_p1x1_d1x1_g1"
    assert ConvFamily.from_key(f.key) == f
    assert (f.out_h, f.out_w) == (28, 28)
    dw = ConvFamily.square(112, 3, 1, depthwise=True)
    assert dw.key.endswith("_gdw") and ConvFamily.from_key(dw.key) == dw
    assert f.macs(64, 128, batch=2) == 2 * 128 * 28 * 28 * 64 * 9


def test_legacy_keys() -> None:
    c = ConvConfig(ConvFamily.square(56, 3, 1), 64, 64, batch=256)
    assert c.legacy_key() == "256_64_64_56_3_1_1"
    assert c.legacy_key(with_groups=False) == "256_64_64_56_3_1"
    dw = ConvConfig(ConvFamily.square(14, 3, 1, depthwise=True), 96, 96, batch=256)
    assert dw.legacy_key() == "256_96_96_14_3_1_96"
    assert parse_legacy_key("256_1024_1024_14_1_2") == (256, 1024, 1024, 14, 1, 2, None)


@pytest.mark.parametrize("bad", ["", "1_2_3", "a_b_c_d_e_f", "1_2_3_4_5_6_7_8", "1_-2_3_4_5_6", "+1_2_3_4_5_6",
                                 " 1_2_3_4_5_6", "256_064_64_56_3_1",
                                 "256_99999999999999999999_64_56_3_1"])
def test_bad_legacy_keys(bad: str) -> None:
    with pytest.raises(InvalidKeyError):
        parse_legacy_key(bad)


@pytest.mark.parametrize("kwargs", [
    {"cin": 0, "cout": 4}, {"cin": 4, "cout": 4, "dtype": "fp8"}, {"cin": 4, "cout": 4, "layout": "nchwc"},
    {"cin": 4, "cout": 4, "op": "gemm"}, {"cin": 4, "cout": 4, "batch": 0},
])
def test_invalid_configs(kwargs: dict) -> None:
    with pytest.raises(InvalidKeyError):
        ConvConfig(ConvFamily.square(7, 1), **kwargs)


def test_grouped_and_depthwise_channel_rules() -> None:
    with pytest.raises(InvalidKeyError, match="multiples"):
        ConvConfig(ConvFamily.square(7, 3, groups=32), 48, 64)
    with pytest.raises(InvalidKeyError, match="cin == cout"):
        ConvConfig(ConvFamily.square(7, 3, depthwise=True), 32, 64)
    with pytest.raises(InvalidKeyError):
        ConvFamily.from_key("f7x7_k3")


@given(fmap=st.integers(1, 512), k=st.sampled_from([1, 3, 5, 7]), s=st.integers(1, 4),
       g=st.integers(1, 64), dw=st.booleans())
def test_family_key_roundtrip_property(fmap: int, k: int, s: int, g: int, dw: bool) -> None:
    f = ConvFamily.square(fmap, k, s, groups=1 if dw else g, depthwise=dw)
    assert ConvFamily.from_key(f.key) == f
