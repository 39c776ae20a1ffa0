"""Figures for people: byte sizes in IEC units, the one format the CLI and the viewer show.

The API itself always reports bytes (integers); only what is printed goes through here.
"""

from __future__ import annotations

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def iec_bytes(size: int | float) -> str:
    """``size`` bytes as ``"512 B"``, ``"1.5 KiB"``, ``"5.1 MiB"``, ``"2.0 GiB"``... (powers of
    1024, one decimal). Negative sizes keep their sign. Never raises for a finite number."""
    sign, value = ("-" if size < 0 else ""), abs(float(size))
    if value < 1024:
        return f"{sign}{value:.0f} B"
    for unit in _UNITS:
        value /= 1024
        if round(value, 1) < 1024 or unit == _UNITS[-1]:
            return f"{sign}{value:,.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


__all__ = ["iec_bytes"]
