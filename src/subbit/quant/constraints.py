"""User constraints on an allocation, keyed like rules: which bit depths each kernel may take.

Keys take the forms of :class:`~subbit.quant.rules.QuantConfig` (exact parameter FQN, module
FQN, ``re:regex``, module type) so a constraint names a kernel the way a rule would.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from subbit.quant.inventory import BITS, Kernel, parse_bits
from subbit.quant.rules import check_regex_key


def _matches(key: str, kernel: Kernel) -> bool:
    """Does rule key ``key`` select ``kernel``? The key forms of :class:`~subbit.quant.rules.QuantConfig`:
    exact parameter FQN, exact module FQN, ``re:`` fullmatch on either, or a module type name."""
    if key.startswith("re:"):
        rx = re.compile(key[3:])
        return any(rx.fullmatch(n) for n in kernel.names()) or bool(rx.fullmatch(kernel.module_name))
    mods = {n.rpartition(".")[0] for n in kernel.names()}
    return key in kernel.names() or (key in mods and key != "") or key in kernel.type_names



@dataclass
class Constraints:
    """User constraints, keyed like rules (exact FQN, module FQN, ``re:regex``, module type).

    Every constraint that matches a kernel holds (they intersect): ``fix`` pins the bit depth,
    ``min_bits`` / ``max_bits`` bound it. A key that matches no kernel is an error.
    """

    fix: dict[str, int] = field(default_factory=dict)
    min_bits: dict[str, int] = field(default_factory=dict)
    max_bits: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind in ("fix", "min_bits", "max_bits"):
            table = getattr(self, kind)
            if not isinstance(table, Mapping):
                raise ValueError(f"{kind}: expected a mapping NAME -> bits, got {type(table).__name__}")
            clean = {}
            for key, bits in table.items():
                if not isinstance(key, str) or not key:
                    raise ValueError(f"{kind}: a constraint name must be a non-empty string, got {key!r}")
                check_regex_key(key, f"{kind} {key!r}")
                clean[key] = parse_bits(bits, f"{kind} {key!r}")
            setattr(self, kind, clean)

    @classmethod
    def from_strings(cls, fix: Iterable[str] = (), min_bits: Iterable[str] = (),
                     max_bits: Iterable[str] = ()) -> Constraints:
        """From ``NAME=BITS`` strings (the CLI's ``--fix``, ``--min-bits``, ``--max-bits``); the
        last ``=`` splits, so a regex may contain ``=``."""
        def parse(items: Iterable[str], flag: str) -> dict[str, int]:
            out: dict[str, int] = {}
            for item in items:
                name, sep, bits = str(item).rpartition("=")
                if not sep or not name:
                    raise ValueError(f"{flag}: expected NAME=BITS, got {item!r}")
                out[name] = parse_bits(bits, f"{flag} {name}")
            return out

        return cls(parse(fix, "--fix"), parse(min_bits, "--min-bits"), parse(max_bits, "--max-bits"))

    def is_empty(self) -> bool:
        return not (self.fix or self.min_bits or self.max_bits)

    def allowed(self, kernels: Sequence[Kernel], bits: Sequence[int] = BITS) -> dict[str, tuple[int, ...]]:
        """Bit depths each kernel may take. ValueError for a name matching no kernel, or a kernel
        whose constraints cannot all hold (naming them)."""
        table = [("fix", k, b) for k, b in self.fix.items()] + [("min_bits", k, b) for k, b in self.min_bits.items()] \
            + [("max_bits", k, b) for k, b in self.max_bits.items()]  # fmt: skip
        for kind, key, _ in table:
            if not any(_matches(key, kn) for kn in kernels):
                some = ", ".join(k.name for k in kernels[:6]) + (", ..." if len(kernels) > 6 else "")
                raise ValueError(f"{kind.replace('_', '-')} {key!r} matches no kernel of the model (kernels: {some})")
        out: dict[str, tuple[int, ...]] = {}
        for kn in kernels:
            ok = set(int(b) for b in bits)
            why = []
            for kind, key, b in table:
                if not _matches(key, kn):
                    continue
                why.append(f"{kind.replace('_', '-')} {key}={b}")
                if kind == "fix":
                    ok &= {b}
                elif kind == "min_bits":
                    ok = {x for x in ok if x >= b}
                else:
                    ok = {x for x in ok if x <= b}
            if not ok:
                raise ValueError(f"constraints on {kn.name} cannot all hold: {', '.join(why)} "
                                 f"(candidate bit depths {sorted(set(bits))})")  # fmt: skip
            out[kn.name] = tuple(sorted(ok))
        return out

