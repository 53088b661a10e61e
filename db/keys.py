"""The LUT key: what one latency number is the latency *of*.

A :class:`ConvFamily` is the fixed geometry of a convolution (input feature map, kernel, stride,
padding, dilation, grouping); a pruner changes only the channel counts. A :class:`ConvConfig` is one
point of a LUT: a family plus (cin, cout) and the execution settings (batch, dtype, layout, op).
Both are frozen dataclasses, so they are hashable and safe as dictionary keys.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, fields, replace
from typing import Any

from db.errors import InvalidKeyError

DTYPES = ("fp32", "fp16", "bf16")
LAYOUTS = ("nchw", "nhwc")
OPS = ("conv", "conv_bn_relu")

_FAMILY_RE = re.compile(
    r"^f(?P<in_h>\d+)x(?P<in_w>\d+)_k(?P<kernel_h>\d+)x(?P<kernel_w>\d+)"
    r"_s(?P<stride_h>\d+)x(?P<stride_w>\d+)_p(?P<pad_h>\d+)x(?P<pad_w>\d+)"
    r"_d(?P<dil_h>\d+)x(?P<dil_w>\d+)_g(?P<groups>\d+|dw)$"
)


def check_exec_settings(dtype: str, layout: str, op: str = "conv") -> None:
    """Raise :class:`InvalidKeyError` for an unknown dtype, layout or op."""
    if dtype not in DTYPES:
        raise InvalidKeyError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    if layout not in LAYOUTS:
        raise InvalidKeyError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    if op not in OPS:
        raise InvalidKeyError(f"unknown op {op!r}; choose from {', '.join(OPS)}")


@dataclass(frozen=True, order=True)
class ConvFamily:
    """Geometry of a 2-D convolution that stays fixed while channels are pruned.

    ``groups`` is the fixed number of conv groups (1 for a dense conv, 32 for ResNeXt); for a
    depthwise conv ``depthwise`` is True and the group count equals the channel count.
    """

    in_h: int
    in_w: int
    kernel_h: int
    kernel_w: int
    stride_h: int = 1
    stride_w: int = 1
    pad_h: int = 0
    pad_w: int = 0
    dil_h: int = 1
    dil_w: int = 1
    groups: int = 1
    depthwise: bool = False

    def __post_init__(self) -> None:
        for name in ("in_h", "in_w", "kernel_h", "kernel_w", "stride_h", "stride_w", "dil_h", "dil_w"):
            if int(getattr(self, name)) < 1:
                raise InvalidKeyError(f"conv family field {name} must be >= 1, got {getattr(self, name)}")
        if self.pad_h < 0 or self.pad_w < 0:
            raise InvalidKeyError("conv family padding must be >= 0")
        if self.groups < 1:
            raise InvalidKeyError(f"conv family groups must be >= 1, got {self.groups}")
        if self.depthwise and self.groups != 1:
            raise InvalidKeyError("a depthwise family stores groups=1 (the group count is the channel count)")

    @classmethod
    def square(
        cls, fmap: int, k: int, stride: int = 1, padding: int | None = None, dilation: int = 1,
        groups: int = 1, depthwise: bool = False,
    ) -> ConvFamily:
        """A square family; padding defaults to 'same'-style ``dilation * (k // 2)``."""
        pad = dilation * (k // 2) if padding is None else padding
        return cls(fmap, fmap, k, k, stride, stride, pad, pad, dilation, dilation, groups, depthwise)

    @property
    def key(self) -> str:
        """Canonical text form, e.g. ``f56x56_k3x3_s1x1_p1x1_d1x1_g1`` (``gdw`` for depthwise)."""
        g = "dw" if self.depthwise else str(self.groups)
        return (
            f"f{self.in_h}x{self.in_w}_k{self.kernel_h}x{self.kernel_w}_s{self.stride_h}x{self.stride_w}"
            f"_p{self.pad_h}x{self.pad_w}_d{self.dil_h}x{self.dil_w}_g{g}"
        )

    @classmethod
    def from_key(cls, key: str) -> ConvFamily:
        """Parse :attr:`key`; raises :class:`InvalidKeyError` on anything else."""
        m = _FAMILY_RE.match(key.strip())
        if m is None:
            raise InvalidKeyError(f"not a conv family key: {key!r} (expected e.g. f56x56_k3x3_s1x1_p1x1_d1x1_g1)")
        d: dict[str, Any] = m.groupdict()
        dw = d.pop("groups") == "dw"
        fields = {k: int(v) for k, v in d.items()}
        return cls(**fields, groups=1 if dw else int(m.group("groups")), depthwise=dw)

    @property
    def out_h(self) -> int:
        return (self.in_h + 2 * self.pad_h - self.dil_h * (self.kernel_h - 1) - 1) // self.stride_h + 1

    @property
    def out_w(self) -> int:
        return (self.in_w + 2 * self.pad_w - self.dil_w * (self.kernel_w - 1) - 1) // self.stride_w + 1

    @property
    def is_square(self) -> bool:
        return (
            self.in_h == self.in_w and self.kernel_h == self.kernel_w and self.stride_h == self.stride_w
            and self.pad_h == self.pad_w and self.dil_h == self.dil_w
        )

    def conv_groups(self, cin: int) -> int:
        """The ``groups`` argument of the conv at input width ``cin``."""
        return cin if self.depthwise else self.groups

    def check_channels(self, cin: int, cout: int) -> None:
        """Raise :class:`InvalidKeyError` if (cin, cout) is impossible for this family."""
        if cin < 1 or cout < 1:
            raise InvalidKeyError(f"channel counts must be >= 1, got cin={cin}, cout={cout} for {self.key}")
        if self.depthwise and cin != cout:
            raise InvalidKeyError(f"depthwise family {self.key} needs cin == cout, got {cin} and {cout}")
        if not self.depthwise and (cin % self.groups or cout % self.groups):
            raise InvalidKeyError(
                f"family {self.key} has {self.groups} groups; cin={cin} and cout={cout} must be multiples"
            )

    def macs(self, cin: int, cout: int, batch: int = 1) -> int:
        """Multiply-accumulates of one forward pass."""
        per_out = (cin // self.conv_groups(cin)) * self.kernel_h * self.kernel_w
        return batch * cout * self.out_h * self.out_w * per_out


_FAMILY_FIELDS = tuple(f.name for f in fields(ConvFamily))


@dataclass(frozen=True, order=True)
class ConvConfig:
    """One LUT point: a family at (cin, cout) with batch, dtype, memory layout and timed op."""

    family: ConvFamily
    cin: int
    cout: int
    batch: int = 1
    dtype: str = "fp32"
    layout: str = "nchw"
    op: str = "conv"

    def __post_init__(self) -> None:
        self.family.check_channels(self.cin, self.cout)
        if self.batch < 1:
            raise InvalidKeyError(f"batch must be >= 1, got {self.batch}")
        check_exec_settings(self.dtype, self.layout, self.op)

    def with_channels(self, cin: int, cout: int) -> ConvConfig:
        """This configuration at other channel counts."""
        return replace(self, cin=cin, cout=cout)

    def describe(self) -> str:
        """Human-readable name used in error messages and logs."""
        return (
            f"{self.family.key} cin={self.cin} cout={self.cout} batch={self.batch} "
            f"dtype={self.dtype} layout={self.layout} op={self.op}"
        )

    def legacy_key(self, with_groups: bool = True) -> str:
        """HALP/MDP pickle key ``bs_cin_cout_fmap_k_stride[_groups]`` (square families only)."""
        f = self.family
        if not f.is_square:
            raise InvalidKeyError(f"legacy keys describe square convs only; {f.key} is not square")
        key = f"{self.batch}_{self.cin}_{self.cout}_{f.in_h}_{f.kernel_h}_{f.stride_h}"
        return f"{key}_{f.conv_groups(self.cin)}" if with_groups else key

    def as_row(self) -> dict[str, Any]:
        """Flat column values for the ``measurements`` table."""
        row = {name: getattr(self.family, name) for name in _FAMILY_FIELDS}  # flat ints: no asdict deep copy
        row.update(family=self.family.key, cin=self.cin, cout=self.cout, batch=self.batch,
                   dtype=self.dtype, layout=self.layout, op=self.op)
        return row


@functools.lru_cache(maxsize=1 << 18)  # an import parses each key several times
def parse_legacy_key(key: str) -> tuple[int, int, int, int, int, int, int | None]:
    """Split a HALP/MDP key into (batch, cin, cout, fmap, k, stride, groups or None)."""
    parts = str(key).split("_")
    if len(parts) not in (6, 7):
        raise InvalidKeyError(f"legacy LUT key {key!r} must have 6 or 7 '_'-separated integers")
    if not all(p.isascii() and p.isdigit() and p == str(int(p)) for p in parts):  # no signs, spaces, leading 0s
        raise InvalidKeyError(f"legacy LUT key {key!r} has a token that is not a plain non-negative integer")
    nums = [int(p) for p in parts]
    if any(n >= 2**31 for n in nums):
        raise InvalidKeyError(f"legacy LUT key {key!r} has a token too large for a conv shape")
    bs, cin, cout, fmap, k, stride = nums[:6]
    return bs, cin, cout, fmap, k, stride, (nums[6] if len(nums) == 7 else None)
