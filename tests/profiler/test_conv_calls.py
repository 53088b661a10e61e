"""profiler.conv_calls: a saved program's convs are recorded as torch.fx records the module they came from."""

from __future__ import annotations

import torch
from torch import nn

from profiler.conv_calls import recorded_convs
from profiler.plan import trace_network


class _Padded(nn.Module):
    """Convs that pad on their own (reflect, circular), one after an explicit ReflectionPad2d, one called twice, and
    a functional conv."""

    def __init__(self) -> None:
        super().__init__()
        self.reflect = nn.Conv2d(3, 8, 3, padding=1, padding_mode="reflect")
        self.pad = nn.ReflectionPad2d(2)
        self.after_pad = nn.Conv2d(8, 8, 3)
        self.circular = nn.Conv2d(8, 8, 3, stride=2, padding=(1, 2), padding_mode="circular")
        self.twice = nn.Conv2d(8, 8, 3, padding=1)
        self.kernel = nn.Parameter(torch.randn(8, 8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.circular(self.after_pad(self.pad(self.reflect(x))))
        return nn.functional.conv2d(self.twice(torch.relu(self.twice(x))), self.kernel)  # not planned


def test_an_exported_program_records_the_convs_the_module_traces() -> None:
    model = _Padded().eval()
    traced = [(layer.name, layer.family, layer.cin, layer.cout) for layer in trace_network(model, (20, 24)).layers]
    program = torch.export.export(model, (torch.zeros(1, 3, 20, 24),)).module()
    recorded = [(c.name, c.family, c.cin, c.cout) for c in recorded_convs(program, (20, 24))]
    assert recorded == traced
    assert [name for name, *_ in recorded] == ["reflect", "after_pad", "circular", "twice", "twice#2"]
    assert (recorded[0][1].in_h, recorded[0][1].pad_h) == (20, 1)  # before its own padding
    assert (recorded[1][1].in_h, recorded[1][1].pad_h) == (24, 0)  # the explicit pad is its input
