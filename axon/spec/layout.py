"""A layout: how the world of ranks is factored into the five parallel axes."""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from axon.spec.sections import integer, reject_unknown

AXES = ("data", "pipe", "depth", "row", "col")
# Outermost first: `col` varies fastest, so col (then row) groups sit inside a node.
DEFAULT_ORDER = ("data", "pipe", "depth", "row", "col")
# What a layout mapping may say: the five sizes, the rank order, interleaved 1F1B's chunks per stage.
LAYOUT_KEYS = AXES + ("order", "virtual_stages")


@dataclass(frozen=True)
class Layout:
    data: int = 1
    pipe: int = 1
    depth: int = 1
    row: int = 1
    col: int = 1
    order: tuple[str, ...] = DEFAULT_ORDER
    # Interleaved 1F1B: each pipeline stage holds this many non-adjacent chunks of the layers.
    # Not an axis: it changes no rank's coordinates, only what a stage holds and its schedule.
    virtual_stages: int = 1

    def __post_init__(self):
        _check(self.__dict__, self.order, "layout")

    @classmethod
    def from_mapping(cls, mapping: dict, where: str = "layout") -> Layout:
        """A layout from its YAML form, e.g. {data: 8, depth: 4, order: "data,pipe,depth,row,col",
        virtual_stages: 2}: axes left out are 1, the order is a comma string or a list. Every
        mistake is a ValueError naming `where`.key."""
        if not isinstance(mapping, dict):
            raise ValueError(f"{where} must be a mapping of {', '.join(LAYOUT_KEYS)}, got {mapping!r}")
        reject_unknown(mapping, LAYOUT_KEYS, where)
        order = mapping.get("order", DEFAULT_ORDER)
        order = tuple(part.strip() for part in order.split(",")) if isinstance(order, str) else order
        sizes = {key: mapping.get(key, 1) for key in AXES + ("virtual_stages",)}
        _check(sizes, order, where)
        return cls(**sizes, order=tuple(order))

    @property
    def world_size(self) -> int:
        return prod(self.sizes().values())

    def sizes(self) -> dict[str, int]:
        return {axis: getattr(self, axis) for axis in AXES}

    def strides(self) -> dict[str, int]:
        """Rank stride of each axis: rank = sum(coord[a] * stride[a])."""
        strides, step = {}, 1
        for axis in reversed(self.order):
            strides[axis] = step
            step *= getattr(self, axis)
        return strides

    def coords(self, rank: int) -> dict[str, int]:
        strides = self.strides()
        return {axis: (rank // strides[axis]) % getattr(self, axis) for axis in AXES}

    def rank_of(self, coords: dict[str, int]) -> int:
        strides = self.strides()
        return sum(coords[axis] * strides[axis] for axis in AXES)

    def groups(self, axes: tuple[str, ...]) -> list[list[int]]:
        """Every group of ranks that differ only in `axes`, ordered by their first rank.

        Each group is in ascending rank order, which along one axis is coordinate order.
        """
        strides = self.strides()
        offsets = [0]
        for axis in axes:
            offsets = [o + i * strides[axis] for o in offsets for i in range(getattr(self, axis))]
        offsets.sort()
        firsts = [r for r in range(self.world_size)
                  if not any((r // strides[axis]) % getattr(self, axis) for axis in axes)]
        return [[first + o for o in offsets] for first in firsts]

    def __str__(self) -> str:
        sizes = " x ".join(f"{axis} {getattr(self, axis)}" for axis in AXES)
        chunks = f", {self.virtual_stages} virtual stages" if self.virtual_stages > 1 else ""
        return f"{sizes} (order {','.join(self.order)}{chunks})"


def _check(sizes: dict, order, where: str) -> None:
    for key in AXES + ("virtual_stages",):
        integer(sizes[key], f"{where}.{key}")
    if not isinstance(order, (tuple, list)) or sorted(map(str, order)) != sorted(AXES):
        shown = ", ".join(map(str, order)) if isinstance(order, (tuple, list)) else repr(order)
        raise ValueError(f"{where}.order must name each of {', '.join(AXES)} once, got {shown}")


def layout_or_auto(value, where: str = "layout") -> Layout | None:
    """A config's or a scaling study's `layout:`, 'auto' (None: perfmodel picks it) or a mapping."""
    if value == "auto":
        return None
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be 'auto' or a mapping of {', '.join(AXES)}, got {value!r}")
    return Layout.from_mapping(value, where)


def parse_layout_text(text: str, flag: str = "--layout") -> Layout:
    """A layout from its command-line form, e.g. "data=8,depth=16,row=4,col=8,virtual_stages=2,
    order=data/pipe/depth/row/col" (the order outermost first, separated by '/'), by the rules
    of `Layout.from_mapping`."""
    mapping: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key not in LAYOUT_KEYS or (key != "order" and not value.isdigit()):
            raise ValueError(f"{flag} part {part!r} must be AXIS=N with AXIS one of {', '.join(AXES)} "
                             f"(or virtual_stages=N, interleaved 1F1B, or order=AXIS/AXIS/...)")
        mapping[key] = value.split("/") if key == "order" else int(value)
    return Layout.from_mapping(mapping)


def sizes_text(layout: Layout) -> str:
    """The axes larger than 1, e.g. "data=8 depth=16 row=4" (or "1 rank"), and v when interleaved."""
    text = " ".join(f"{axis}={getattr(layout, axis)}" for axis in AXES if getattr(layout, axis) > 1) or "1 rank"
    return text + (f" v={layout.virtual_stages}" if layout.virtual_stages > 1 else "")


def factorizations(world_size: int, axes: tuple[str, ...] = AXES) -> list[Layout]:
    """Every Layout whose sizes over `axes` multiply to world_size (other axes 1)."""

    def split(n: int, k: int):
        if k == 1:
            yield (n,)
            return
        for d in range(1, n + 1):
            if n % d == 0:
                for rest in split(n // d, k - 1):
                    yield (d,) + rest

    return [Layout(**dict(zip(axes, sizes))) for sizes in split(world_size, len(axes))]
