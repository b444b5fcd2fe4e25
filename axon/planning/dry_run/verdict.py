"""Does each rehearsed rank fit its device? The dry run's peak against a machine profile's memory.

The peak is what the dry run measured for the rank (each kind of memory at its own peak,
summed: meter.py), the limit the profile's usable memory (memory_gb x usable_memory_fraction,
the limit perfmodel plan and `layout: auto` hold every stage to).
"""

from __future__ import annotations

from perfmodel.machine import MACHINES_DIR, load_machine
from perfmodel.memory import GIB

SHIPPED = ", ".join(sorted(p.stem for p in MACHINES_DIR.glob("*.yaml")))
NO_MACHINE = (f"memory: no verdict, as no machine is named: give --machine NAME ({SHIPPED}) or a profile YAML "
              f"to check each rank's peak against the device's memory")


def machine_for(named: str, config):
    """--machine, else the config's layout_machine (layout: auto); None when neither names one."""
    name = named or config.layout_machine
    return load_machine(name) if name else None


def memory_verdict(result: dict, machine) -> dict:
    """The rank's peak bytes against the machine's usable bytes: the JSON form."""
    usable = machine.usable_gib * GIB
    peak = result["memory_bytes"]["total"]
    return {"machine": machine.name, "peak_bytes": peak, "usable_bytes": round(usable), "fits": peak <= usable}


def size_text(nbytes: float) -> str:
    """Bytes in GiB, or MiB or KiB below one GiB (a test model's rank holds a few MiB)."""
    for unit, size in (("GiB", GIB), ("MiB", 2.0 ** 20)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes / 1024:.1f} KiB"


def verdict_line(result: dict) -> str:
    """e.g. "rank 3 (stage 1): peak 61.2 GiB of 72.0 GiB usable on dgx-h100: fits"."""
    v = result["memory_verdict"]
    return (f"rank {result['rank']} (stage {result['stage']}): peak {size_text(v['peak_bytes'])} of "
            f"{size_text(v['usable_bytes'])} usable on {v['machine']}: {'fits' if v['fits'] else 'does not fit'}")


def summary(results: list[dict]) -> str | None:
    """One line for the ranks that do not fit (None when every rank fits)."""
    over = [r for r in results if not r["memory_verdict"]["fits"]]
    if not over:
        return None
    v = over[0]["memory_verdict"]
    worst = max(over, key=lambda r: r["memory_bytes"]["total"])
    return (f"{len(over)} of {len(results)} rank(s) rehearsed do not fit in {v['machine']}'s "
            f"{size_text(v['usable_bytes'])} usable: " + ", ".join(f"rank {r['rank']} (stage {r['stage']})" for r in over)
            + f"; the fullest, rank {worst['rank']}, peaks at {size_text(worst['memory_bytes']['total'])}")
