"""The 1F1B pipeline schedule: the order each stage runs, and its timeline from op durations.

The engine runs exactly `one_f_one_b` (axon.parallel.pipeline imports it); `simulate`
replays that order with per-stage forward and backward times, so the bubble the model
predicts comes from the same schedule, including uneven stages (the first holds the
embedding, the last the head and the loss) and the point-to-point latency between them.
"""

from __future__ import annotations

from dataclasses import dataclass


def one_f_one_b(stage: int, stages: int, micro_batches: int) -> list[tuple[str, int]]:
    """The order of ("F", j) forwards and ("B", j) backwards stage `stage` of `stages` runs.

    Stage s runs min(p - s - 1, m) forwards ahead, then alternates one forward and one
    backward, then drains the remaining backwards: at most p - s micro-batches in flight.
    """
    warmup = min(stages - stage - 1, micro_batches)
    order = [("F", j) for j in range(warmup)]
    for j in range(micro_batches - warmup):
        order += [("F", warmup + j), ("B", j)]
    order += [("B", j) for j in range(micro_batches - warmup, micro_batches)]
    return order


@dataclass(frozen=True)
class Timeline:
    step_s: float  # from the first forward's start to the last backward's end
    busy_s: tuple[float, ...]  # per stage: seconds computing

    @property
    def idle_fraction(self) -> tuple[float, ...]:
        """Per stage: the share of the step it waits (the bubble, plus any imbalance)."""
        return tuple(1.0 - busy / self.step_s for busy in self.busy_s)


def simulate(forward_s: list[float], backward_s: list[float], micro_batches: int, p2p_s: float = 0.0) -> Timeline:
    """Replay 1F1B: stage s's ("F", j) starts once the stage is free and stage s-1's ("F", j)
    has arrived; ("B", j) once stage s+1's ("B", j) has (the last stage: its own ("F", j))."""
    stages = len(forward_s)
    orders = [one_f_one_b(s, stages, micro_batches) for s in range(stages)]
    done: dict[tuple[int, str, int], float] = {}
    position, free = [0] * stages, [0.0] * stages
    remaining = sum(len(order) for order in orders)
    while remaining:
        progressed = False
        for s in range(stages):
            while position[s] < len(orders[s]):
                kind, j = orders[s][position[s]]
                source = s - 1 if kind == "F" else s + 1
                if 0 <= source < stages:
                    if (source, kind, j) not in done:
                        break  # waits on a neighbour; try the other stages
                    ready = done[(source, kind, j)] + p2p_s
                else:
                    ready = 0.0
                start = max(free[s], ready)
                free[s] = start + (forward_s[s] if kind == "F" else backward_s[s])
                done[(s, kind, j)] = free[s]
                position[s] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise RuntimeError("1F1B schedule deadlocked")  # cannot happen for one_f_one_b orders
    busy = tuple(micro_batches * (f + b) for f, b in zip(forward_s, backward_s))
    return Timeline(max(free), busy)
