"""Device names for `--device`: `cpu`, `cuda`, `cuda:N`, or a bare GPU index `N` (systemd's `worker@N`)."""

from __future__ import annotations

import re

_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+|mps)$")


def normalise_device(value: str) -> str:
    value = value.strip().lower()
    if value.isdigit():
        return f"cuda:{int(value)}"
    if not _DEVICE.match(value):
        raise ValueError(f"unknown device {value!r}: use cpu, cuda, cuda:N or a GPU index N")
    return value
