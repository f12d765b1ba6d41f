"""The price table (``prices.json``, shipped in the package) and ``Price``, what a call costs.

Prices are USD per million tokens, grouped in sections named after the provider that
bills them (``openai``, ``anthropic``, ``gemini``, ``groq``...).  ``lookup(section, model)``
finds a model's price (a dated name such as ``gpt-4o-2024-08-06`` or
``claude-sonnet-4-20250514`` uses its base name's); every backend takes ``price_per_mtok``
to override it.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from rlm.errors import ConfigError

__all__ = ["Price", "PriceSpec", "checked", "entries", "lookup", "price_of", "sections"]

#: Suffixes that name a dated snapshot of a model: its price is the base name's.
_SNAPSHOT = re.compile(r"(-\d{4}-\d{2}-\d{2}|-\d{8}|-latest)$")


@dataclass(frozen=True)
class Price:
    """USD per million tokens: input, output, cache writes and cache reads.

    ``cache_write`` and ``cache_read`` default to the input price (a provider without a
    cache discount).  ``cost`` takes ``input_tokens`` as every prompt token, the cached and
    the newly cached ones included, as the rest of rlm counts them.
    """

    input: float
    output: float
    cache_write: float | None = None
    cache_read: float | None = None

    def __post_init__(self) -> None:
        for name in ("input", "output", "cache_write", "cache_read"):
            value = getattr(self, name)
            if value is None and name.startswith("cache"):
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value) or value < 0:
                raise ConfigError(f"price {name} must be a finite USD amount >= 0 per million "
                                  f"tokens, got {value!r}")

    @property
    def write_price(self) -> float:
        return self.input if self.cache_write is None else self.cache_write

    @property
    def read_price(self) -> float:
        return self.input if self.cache_read is None else self.cache_read

    def cost(self, input_tokens: int, output_tokens: int, *, cache_read_tokens: int = 0,
             cache_write_tokens: int = 0) -> float:
        """The USD cost of one call (cache counts are clamped into ``input_tokens``)."""
        cache_read_tokens = min(max(cache_read_tokens, 0), input_tokens)
        cache_write_tokens = min(max(cache_write_tokens, 0), input_tokens - cache_read_tokens)
        plain = input_tokens - cache_read_tokens - cache_write_tokens
        return (plain * self.input + cache_read_tokens * self.read_price
                + cache_write_tokens * self.write_price + output_tokens * self.output) / 1e6

    def to_dict(self) -> dict[str, float | None]:
        return {"input": self.input, "output": self.output, "cache_write": self.cache_write,
                "cache_read": self.cache_read}


#: What ``price_per_mtok`` accepts: a ``Price``, ``(input, output[, cache_write,
#: cache_read])`` or a mapping with those keys.
PriceSpec = Price | Sequence[float] | Mapping[str, float]


def price_of(spec: PriceSpec) -> Price:
    """The ``Price`` a ``price_per_mtok`` value names (``ConfigError`` if it names none)."""
    if isinstance(spec, Price):
        return spec
    try:
        if isinstance(spec, Mapping):
            unknown = set(spec) - {"input", "output", "cache_write", "cache_read"}
            if unknown:
                raise ConfigError(f"unknown price fields {sorted(unknown)}")
            return Price(**spec)
        if isinstance(spec, Sequence) and not isinstance(spec, str) and 2 <= len(spec) <= 4:
            return Price(*spec)
    except TypeError:
        pass
    except ConfigError as exc:
        raise ConfigError(f"bad price_per_mtok {spec!r}: {exc}") from None
    raise ConfigError("price_per_mtok must be (input_usd, output_usd[, cache_write_usd, "
                      "cache_read_usd]) per million tokens or a mapping with those keys, got "
                      f"{spec!r}")


@functools.cache
def _table() -> dict[str, Any]:
    text = resources.files("rlm.backends").joinpath("prices.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


@functools.cache
def _section(name: str) -> dict[str, Price]:
    return {model: Price(**fields)
            for model, fields in _table()["sections"].get(name, {}).items()}


def checked() -> str:
    """The date the table's prices were checked (ISO 8601)."""
    return str(_table()["checked"])


def sections() -> list[str]:
    """The names of the table's sections."""
    return list(_table()["sections"])


def entries(section: str) -> Iterator[tuple[str, Price]]:
    """``(model, price)`` of every model in ``section``."""
    yield from _section(section).items()


def lookup(section: str | None, model: str) -> Price | None:
    """The price of ``model`` in ``section``, ``None`` if the table has none.

    ``section=None`` reads a ``"vendor/model"`` name (OpenRouter's) as the model of the
    vendor's section (``openai/gpt-4o``, ``anthropic/claude-sonnet-4``, ``google/...``).
    """
    if section is None:
        vendor, _, rest = model.partition("/")
        if not rest:
            return None
        return lookup({"google": "gemini"}.get(vendor, vendor), rest)
    table = _section(section)
    name = model.removeprefix("models/")  # Gemini's full resource names
    for candidate in (name, _SNAPSHOT.sub("", name)):
        if candidate in table:
            return table[candidate]
    return None
