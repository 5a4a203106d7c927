"""The ``scrubber`` processor: applies the scrubbing rules (:mod:`collector.scrubbing`, where
each default rule is described) to every batch, in place, and counts what each rule changed.

Configured rules add to the defaults: ``drop_keys`` (keys removed outright), ``filter_keys``
(regexes on keys, value filtered), ``filter_values`` (regexes on string values, each match
filtered); ``disable`` turns default rules off by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from collector.component import Consumer, Kind, Processor
from collector.scrubbing import LABELS, RULE_NAMES, Rules
from collector.settings import ConfigError, setting
from collector.signals import Batch, Signal
from collector.telemetry import SCRUBBED


@dataclass(frozen=True)
class ScrubberSettings:
    drop_keys: tuple[str, ...] = setting(())  # keys removed outright (case-insensitive)
    filter_keys: tuple[str, ...] = setting(())  # regexes searched in keys: value filtered
    filter_values: tuple[str, ...] = setting(())  # regexes: each match in a string filtered
    disable: tuple[str, ...] = setting(())  # default rules turned off, by name

    def check(self, path: str) -> None:
        """Refuse unknown rule names and bad regexes at config load, naming the YAML path."""
        self.rules(path)

    def rules(self, path: str = "scrubber") -> Rules:
        """The compiled rules; :class:`ConfigError` naming the YAML path of a bad one."""
        for index, name in enumerate(self.disable):
            if name not in RULE_NAMES:
                raise ConfigError(
                    f"{path}.disable[{index}]: unknown rule {name!r} "
                    f"(known: {', '.join(RULE_NAMES)})"
                )
        return Rules(
            disable=frozenset(self.disable),
            drop_keys=self.drop_keys,
            filter_keys=_compile_all(self.filter_keys, f"{path}.filter_keys", re.IGNORECASE),
            filter_values=_compile_all(self.filter_values, f"{path}.filter_values", 0),
        )


def _compile_all(patterns: tuple[str, ...], path: str, flags: int) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for index, pattern in enumerate(patterns):
        try:
            regex = re.compile(pattern, flags)
        except re.error as error:
            raise ConfigError(f"{path}[{index}]: invalid regular expression ({error})") from None
        # An empty match would filter every key, or put [Filtered] between every character.
        if regex.search("") is not None:
            raise ConfigError(f"{path}[{index}]: {pattern!r} matches the empty string")
        compiled.append(regex)
    return tuple(compiled)


class Scrubber(Processor):
    """Scrubs each batch in place, counts per rule, hands the batch on. One set of rules
    serves traces and logs alike."""

    def __init__(
        self, name: str, settings: ScrubberSettings, signal: Signal, next: Consumer
    ) -> None:
        super().__init__(name, signal, next)
        self.rules = settings.rules(f"processors.{name}")
        self._counters = {label: SCRUBBED.labels(label) for label in LABELS}

    async def consume(self, batch: Batch) -> None:
        for label, count in self.rules.scrub_batch(batch).items():
            self._counters[label].inc(count)
        await self._next.consume(batch)


KIND = Kind(ScrubberSettings, Scrubber)  # registered as an entry point (pyproject.toml)
