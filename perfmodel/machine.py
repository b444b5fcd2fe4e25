"""Machine profiles: what one device and the links between devices can do.

A profile is a YAML file (perfmodel/machines/*.yaml, or one `calibrate` wrote). Numbers
from vendors' data sheets sit in the shipped profiles with their sources in comments;
`calibrate` replaces the guesses (GEMM efficiency, overlap, collective fits) by
measurements. Loading checks every key and names the one that is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from axon.spec import sections

MACHINES_DIR = Path(__file__).parent / "machines"
PLACEMENTS = ("intra", "inter")  # a group inside one node, or spread over nodes
COLLECTIVE_OPS = ("all_reduce", "all_gather", "reduce_scatter")


class ProfileError(ValueError):
    """A machine profile that cannot be used, said in one sentence naming the key."""


@dataclass(frozen=True)
class Link:
    bandwidth_gbs: float  # GB/s one way, per device (intra) or per NIC (inter)
    latency_us: float


@dataclass(frozen=True)
class CollectiveFit:
    """A measured collective: seconds = alpha + bytes / bandwidth, for one op, size, placement.
    `bytes` is the full buffer (all-reduce: the tensor; all-gather: the output; reduce-scatter:
    the input), the same count axon's trace records."""

    alpha_us: float
    bandwidth_gbs: float


@dataclass(frozen=True)
class Machine:
    name: str
    devices_per_node: int
    memory_gb: float  # per device
    peak_tflops: dict[str, float]  # dense peak per device, by compute dtype ("float32", "bfloat16")
    memory_bandwidth_gbs: float  # per device; prices elementwise work and the optimizer
    intra_node: Link
    inter_node: Link  # per NIC
    nics_per_node: int
    # Fraction of peak a GEMM reaches, by its FLOPs: (flops, efficiency) points, interpolated
    # in log(flops) and held flat outside.
    gemm_efficiency: tuple[tuple[float, float], ...]
    # The same by FLOPs and the GEMM's smallest dimension (a skinny GEMM is slower than a square
    # one of the same FLOPs): smallest dimension -> (flops, efficiency) points. Empty: the curve above.
    gemm_efficiency_by_min_dim: dict[int, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    # Causal SDPA (flash) attention, phase -> (flops, efficiency) points with flops counted as
    # 4 b s^2 d heads (no causal discount, as axon.spec.flops). Empty: priced like a GEMM.
    attention_efficiency: dict[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    # Memory-bound work, kind (norm, rope, swiglu, residual, loss, optimizer) -> (bytes, efficiency)
    # points: the fraction of memory_bandwidth_gbs reached on the bytes perfmodel.workload counts.
    # A kind not listed moves at the full memory bandwidth.
    memory_efficiency: dict[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    # The three defaults below apply only to a profile that omits the key (every shipped profile sets all
    # three; calibrate measures the first two). Where they come from:
    # share of overlappable communication compute really hides. Estimate with no measurement behind it,
    # set with the schema (8bcc1e9), a little above the shipped profiles' 0.8-0.85; calibrate measures it
    # (calibrate.measure.overlap_efficiency: a GEMM and an all-reduce timed alone and together).
    overlap_efficiency: float = 0.9
    # fixed cost of one kernel launch / framework op. Estimate: the order of an eager PyTorch op's host
    # cost on a CUDA GPU (the shipped NVIDIA profiles' 5-6 us); calibrate measures it
    # (calibrate.reference.measure_op_overhead_us: a tiny step's time beyond its work, over the ops counted).
    op_overhead_us: float = 5.0
    # the rest goes to the runtime (CUDA/HIP context), NCCL/RCCL buffers and allocator slack. Estimate, the
    # same in every shipped profile and in calibrate's output; not measured: a run's own peak memory
    # (torch.cuda.max_memory_reserved against the device's total) would replace it.
    usable_memory_fraction: float = 0.9
    # A whole step's compute over the sum of its ops' prices from the curves above (operands
    # evicted between ops, fresh pages, the interpreter): calibrate measures it on a reference
    # step (perfmodel.calibrate.reference); every compute time is multiplied by it.
    in_context_slowdown: float = 1.0
    # Compute threads of a node's ranks per core: 1 where each rank owns a device; more when
    # CPU ranks share cores, so a rank idle in a pipeline bubble gives its share to busy ones.
    oversubscription: float = 1.0
    # Asynchronous collectives one process group progresses at once: gloo's worker threads (2 by
    # default), NCCL's one stream (1). Prefetched gathers and pending reduce-scatters in flight
    # together wait out their fixed costs side by side, that many at a time.
    concurrent_collectives: int = 1
    # Spread of speed between identical GPUs of the machine (the range over a cluster's GPUs
    # as a fraction of the median) and how many GPUs it was measured over: a synchronous step
    # waits for the slowest GPU of the job (perfmodel.scale_losses). 0: not priced.
    gpu_speed_variation: float = 0.0
    variation_measured_over_gpus: int = 0
    # Dragonfly networks (Slingshot): nodes per group, and the one-way bandwidth in GB/s a
    # group's traffic to other groups gets at most. Rings that leave a group share it
    # (perfmodel.collectives). 0: not priced (a flat network, or no figure at hand).
    dragonfly_group_nodes: int = 0
    dragonfly_group_egress_gbs: float = 0.0
    # The collective library also runs all-reduce as a double binary tree and picks the faster
    # (NCCL since 2.4, RCCL): perfmodel.collectives. gloo's all-reduce is priced as a ring.
    tree_all_reduce: bool = False
    # Measured fits, op -> placement -> group size -> fit; missing ones fall back to the links.
    collectives: dict[str, dict[str, dict[int, CollectiveFit]]] = field(default_factory=dict)
    # Measured latency of a small all-reduce between bursts of compute, placement -> group
    # size -> us: what a blocking collective of a step pays at least (ranks arrive apart).
    blocking_latency_us: dict[str, dict[int, float]] = field(default_factory=dict)
    source: str = ""  # where the numbers come from (a file path, or "calibrated on ...")
    # Which published runs set which levels: a level key (gemm_efficiency, attention_efficiency,
    # memory_efficiency) -> the keys of the rows of perfmodel.published it was fitted to. Every
    # other published row of this machine is a check. Empty for a calibrated profile (measured).
    fitted_to: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def usable_gib(self) -> float:
        """What a rank may hold per device: the memory less the runtime's share (usable_memory_fraction)."""
        return self.memory_gb * self.usable_memory_fraction

    def peak_flops(self, dtype: str) -> float:
        if dtype not in self.peak_tflops:
            raise ProfileError(f"machine {self.name!r} has no peak_tflops for dtype {dtype!r}; "
                               f"it lists {', '.join(self.peak_tflops)}")
        return self.peak_tflops[dtype] * 1e12


def load_machine(name_or_path: str | Path) -> Machine:
    """A shipped profile by name (perlmutter, frontier, alps, dgx-h100) or a YAML path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = MACHINES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in MACHINES_DIR.glob("*.yaml")))
        raise ProfileError(f"machine {str(name_or_path)!r} is neither a shipped profile ({known}) nor a YAML file")
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ProfileError(f"machine profile {path} must hold a mapping")
    return machine_from_dict(raw, str(path))


def machine_from_dict(raw: dict, where: str = "profile") -> Machine:
    try:  # unknown and missing keys: the rule every YAML section follows (axon.spec.sections)
        sections.reject_unknown(raw, tuple(Machine.__dataclass_fields__))
        sections.require(raw, sections.required_fields(Machine))
    except ValueError as err:
        raise ProfileError(f"{where}: {err}") from None

    def number(key: str, value, positive=True) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (positive and value <= 0):
            raise ProfileError(f"{where}: {key} must be a positive number, got {value!r}")
        return float(value)

    def link(key: str) -> Link:
        value = raw[key]
        if not isinstance(value, dict):
            raise ProfileError(f"{where}: {key} must map bandwidth_gbs and latency_us")
        return Link(number(f"{key}.bandwidth_gbs", value.get("bandwidth_gbs")),
                    number(f"{key}.latency_us", value.get("latency_us")))

    peaks = raw["peak_tflops"]
    if not isinstance(peaks, dict) or not peaks:
        raise ProfileError(f"{where}: peak_tflops must map dtype names to TFLOP/s")
    def curve(key: str, value, most: float = 1.0) -> tuple[tuple[float, float], ...]:
        if not isinstance(value, list) or not value or not all(isinstance(p, (list, tuple)) and len(p) == 2
                                                               for p in value):
            raise ProfileError(f"{where}: {key} must be a list of [size, efficiency] pairs")
        points = tuple(sorted((number(f"{key} size", f), number(f"{key} efficiency", e)) for f, e in value))
        if any(e > most for _, e in points):
            raise ProfileError(f"{where}: {key} values are fractions of peak and must be <= {most:g}")
        return points

    def curves(key: str, keys_are_sizes: bool, most: float = 1.0) -> dict:
        value = raw.get(key) or {}
        if not isinstance(value, dict):
            raise ProfileError(f"{where}: {key} must map names to lists of [size, efficiency] pairs")
        if keys_are_sizes and not all(isinstance(k, int) and k > 0 for k in value):
            raise ProfileError(f"{where}: {key} must be keyed by positive integer dimensions")
        return {k: curve(f"{key}.{k}", v, most) for k, v in sorted(value.items())}

    points = curve("gemm_efficiency", raw["gemm_efficiency"])
    # Causal attention does half the FLOPs it is credited with (no causal discount), so up to 2.
    attention = curves("attention_efficiency", False, most=2.0)
    if set(attention) - {"forward", "backward"}:
        raise ProfileError(f"{where}: attention_efficiency keys are forward and backward, got {', '.join(attention)}")
    fits: dict[str, dict[str, dict[int, CollectiveFit]]] = {}
    for op, by_place in (raw.get("collectives") or {}).items():
        if op not in COLLECTIVE_OPS:
            raise ProfileError(f"{where}: collectives.{op} is not one of {', '.join(COLLECTIVE_OPS)}")
        for place, by_size in (by_place or {}).items():
            if place not in PLACEMENTS:
                raise ProfileError(f"{where}: collectives.{op}.{place} must be 'intra' or 'inter'")
            for size, fit in (by_size or {}).items():
                key = f"collectives.{op}.{place}.{size}"
                if not isinstance(size, int) or size < 2 or not isinstance(fit, dict):
                    raise ProfileError(f"{where}: {key} must be a group size >= 2 mapping alpha_us and bandwidth_gbs")
                fits.setdefault(op, {}).setdefault(place, {})[size] = CollectiveFit(
                    number(f"{key}.alpha_us", fit.get("alpha_us"), positive=False),
                    number(f"{key}.bandwidth_gbs", fit.get("bandwidth_gbs")))
    blocking: dict[str, dict[int, float]] = {}
    for place, by_size in (raw.get("blocking_latency_us") or {}).items():
        if place not in PLACEMENTS or not isinstance(by_size, dict):
            raise ProfileError(f"{where}: blocking_latency_us.{place} must be 'intra' or 'inter' mapping sizes to us")
        for size, us in by_size.items():
            if not isinstance(size, int) or size < 2:
                raise ProfileError(f"{where}: blocking_latency_us.{place}.{size} must be keyed by a group size >= 2")
            blocking.setdefault(place, {})[size] = number(f"blocking_latency_us.{place}.{size}", us, positive=False)
    # The fallbacks here and below are the dataclass defaults of Machine (their sources are there).
    overlap = number("overlap_efficiency", raw.get("overlap_efficiency", 0.9), positive=False)
    if overlap > 1:
        raise ProfileError(f"{where}: overlap_efficiency is a fraction in [0, 1], got {overlap}")
    oversubscription = number("oversubscription", raw.get("oversubscription", 1.0))
    if oversubscription < 1:
        raise ProfileError(f"{where}: oversubscription counts compute threads per core and is at least 1, "
                           f"got {oversubscription}")
    return Machine(
        name=str(raw["name"]),
        devices_per_node=int(number("devices_per_node", raw["devices_per_node"])),
        memory_gb=number("memory_gb", raw["memory_gb"]),
        peak_tflops={str(k): number(f"peak_tflops.{k}", v) for k, v in peaks.items()},
        memory_bandwidth_gbs=number("memory_bandwidth_gbs", raw["memory_bandwidth_gbs"]),
        intra_node=link("intra_node"),
        inter_node=link("inter_node"),
        nics_per_node=int(number("nics_per_node", raw["nics_per_node"])),
        gemm_efficiency=points,
        gemm_efficiency_by_min_dim=curves("gemm_efficiency_by_min_dim", True),
        attention_efficiency=attention,
        memory_efficiency=curves("memory_efficiency", False),
        overlap_efficiency=overlap,
        op_overhead_us=number("op_overhead_us", raw.get("op_overhead_us", 5.0), positive=False),
        usable_memory_fraction=number("usable_memory_fraction", raw.get("usable_memory_fraction", 0.9)),
        in_context_slowdown=number("in_context_slowdown", raw.get("in_context_slowdown", 1.0)),
        oversubscription=oversubscription,
        concurrent_collectives=int(number("concurrent_collectives", raw.get("concurrent_collectives", 1))),
        gpu_speed_variation=number("gpu_speed_variation", raw.get("gpu_speed_variation", 0.0), positive=False),
        variation_measured_over_gpus=int(number("variation_measured_over_gpus",
                                                raw.get("variation_measured_over_gpus", 0), positive=False)),
        dragonfly_group_nodes=int(number("dragonfly_group_nodes", raw.get("dragonfly_group_nodes", 0), positive=False)),
        dragonfly_group_egress_gbs=number("dragonfly_group_egress_gbs", raw.get("dragonfly_group_egress_gbs", 0.0),
                                          positive=False),
        tree_all_reduce=_flag("tree_all_reduce", raw.get("tree_all_reduce", False), where),
        collectives=fits,
        blocking_latency_us=blocking,
        source=str(raw.get("source", where)),
        fitted_to=_fitted_to(raw.get("fitted_to", {}), where),
    )


def _flag(key: str, value, where: str) -> bool:
    if not isinstance(value, bool):
        raise ProfileError(f"{where}: {key} must be true or false, got {value!r}")
    return value


FITTED_LEVELS = ("gemm_efficiency", "attention_efficiency", "memory_efficiency")


def _fitted_to(value, where: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict) or any(key not in FITTED_LEVELS for key in value) or \
            any(not isinstance(rows, list) or not all(isinstance(r, str) for r in rows) for rows in value.values()):
        raise ProfileError(f"{where}: fitted_to must map some of {', '.join(FITTED_LEVELS)} to lists of "
                           f"published row keys, got {value!r}")
    return {key: tuple(rows) for key, rows in value.items()}


def machine_to_dict(machine: Machine) -> dict:
    """The YAML form `load_machine` reads back (calibrate writes it)."""
    return {
        "name": machine.name,
        "source": machine.source,
        "devices_per_node": machine.devices_per_node,
        "memory_gb": machine.memory_gb,
        "peak_tflops": dict(machine.peak_tflops),
        "memory_bandwidth_gbs": machine.memory_bandwidth_gbs,
        "intra_node": {"bandwidth_gbs": machine.intra_node.bandwidth_gbs, "latency_us": machine.intra_node.latency_us},
        "inter_node": {"bandwidth_gbs": machine.inter_node.bandwidth_gbs, "latency_us": machine.inter_node.latency_us},
        "nics_per_node": machine.nics_per_node,
        "gemm_efficiency": [[f, e] for f, e in machine.gemm_efficiency],
        **{key: {name: [[f, e] for f, e in points] for name, points in value.items()}
           for key, value in (("gemm_efficiency_by_min_dim", machine.gemm_efficiency_by_min_dim),
                              ("attention_efficiency", machine.attention_efficiency),
                              ("memory_efficiency", machine.memory_efficiency)) if value},
        "overlap_efficiency": machine.overlap_efficiency,
        "op_overhead_us": machine.op_overhead_us,
        "usable_memory_fraction": machine.usable_memory_fraction,
        "in_context_slowdown": machine.in_context_slowdown,
        "oversubscription": machine.oversubscription,
        "concurrent_collectives": machine.concurrent_collectives,
        "gpu_speed_variation": machine.gpu_speed_variation,
        "variation_measured_over_gpus": machine.variation_measured_over_gpus,
        "dragonfly_group_nodes": machine.dragonfly_group_nodes,
        "dragonfly_group_egress_gbs": machine.dragonfly_group_egress_gbs,
        "tree_all_reduce": machine.tree_all_reduce,
        "collectives": {op: {place: {size: {"alpha_us": fit.alpha_us, "bandwidth_gbs": fit.bandwidth_gbs}
                                     for size, fit in sorted(by_size.items())}
                             for place, by_size in by_place.items()}
                        for op, by_place in machine.collectives.items()},
        "blocking_latency_us": {place: dict(sorted(by_size.items()))
                                for place, by_size in machine.blocking_latency_us.items()},
        **({"fitted_to": {key: list(rows) for key, rows in machine.fitted_to.items()}} if machine.fitted_to else {}),
    }
