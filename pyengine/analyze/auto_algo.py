"""`--algo auto`: the calibration algorithm (globally or per tensor) that minimises the output error.

1. Every candidate algorithm (max, percentile, entropy, mse) gives its amax for every tensor from the
   same statistics (no inference). The fully quantised model is scored with each: the best of these is
   the best single algorithm.
2. Per tensor, starting from the best single algorithm: in graph order, each quantised activation
   tensor tries the other algorithms' amax (those differing by more than MIN_CHANGE) with everything
   else held, and keeps the one that scores best if it beats the current score. One sweep.
3. Per tensor or globally, measured: with 32 samples a per-tensor choice can fit the samples rather
   than the data (measured on PP-OCRv6 rec with 16 samples: better than the best single algorithm on
   the samples it was chosen on, worse on others). So step 2 runs on every other batch of samples (the
   "fit" half) and the per-tensor choice is kept only if it ALSO beats the best single algorithm on the
   other half and on all samples; otherwise the choice is the best single algorithm ("global").
   Either way the result is never worse than the best single algorithm on the samples, and step 2
   costs half the runs. With a single batch of samples there is no second half: step 2 uses them all.
Tensors the Q/DQ plan does not cover (no consumer that TensorRT's placement quantises) keep the best
single algorithm's amax, so a TensorRT cache written from the choice still has every tensor.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..collect import CPU, Device, parse_device
from ..result import CalibrationResult, result_from_stats
from ..statsfile import StatsBundle
from .measure import Bench, Score, goodness

log = logging.getLogger(__name__)

CANDIDATES = ("max", "percentile", "entropy", "mse")
MIN_CHANGE = 0.005  # relative amax difference below which another algorithm is not worth a run
StageProgress = Callable[[str, int, Optional[int]], None]


@dataclass
class AlgoChoice:
    """What `--algo auto` picked and the scores behind it."""

    metric: str
    mode: str  # "global": one algorithm for all tensors; "per_tensor": some tensors use another
    best_single: str
    scores: Dict[str, Score]  # algorithm -> fully quantised model; plus "auto"
    per_tensor: Dict[str, str]  # tensor -> algorithm, for the tensors the Q/DQ plan quantises
    amax: Dict[str, float]  # every tensor of the statistics (graph order)
    changes: List[Tuple[str, str, str, float]] = field(default_factory=list)  # (tensor, from, to, fit score after)
    held_out: Dict[str, float] = field(default_factory=dict)  # metric on the check half: per_tensor vs best single

    @property
    def score(self) -> Score:
        return self.scores["auto"]

    def to_dict(self) -> Dict[str, Any]:
        return {"metric": self.metric, "mode": self.mode, "best_single": self.best_single,
                "scores": {k: v.to_dict() for k, v in self.scores.items()}, "per_tensor": dict(self.per_tensor),
                "changes": [list(c) for c in self.changes], "held_out": dict(self.held_out)}


def candidate_amax(bundle: StatsBundle, algos: Sequence[str] = CANDIDATES,
                   threads: Optional[int] = None) -> Dict[str, Dict[str, float]]:
    """algorithm -> tensor -> amax, from saved statistics (default options of each algorithm)."""
    return {a: result_from_stats(bundle, a, threads=threads).amax for a in algos}


def _stage(progress: Optional[StageProgress], name: str):
    if progress is None:
        return None
    return lambda done, total: progress(name, done, total)


def score_algorithms(bench: Bench, candidates: Mapping[str, Mapping[str, float]],
                     progress: Optional[StageProgress] = None) -> Dict[str, Score]:
    """The fully quantised model scored with each algorithm's amax."""
    names = list(candidates)
    everything = bench.simulator.all_nodes
    scores = bench.score_many([(everything, candidates[a]) for a in names], _stage(progress, "algorithms"))
    return dict(zip(names, scores))


def _differs(a: float, b: float) -> bool:
    return abs(a - b) > MIN_CHANGE * max(abs(a), abs(b), 1e-30)


Change = Tuple[str, str, str, float]


def _greedy(bench: Bench, candidates: Mapping[str, Mapping[str, float]], start: str, metric: str,
            tensors: Sequence[str], report) -> Tuple[Dict[str, float], Dict[str, str], List[Change]]:
    """Step 2 on `bench`: (amax, tensor -> algorithm, accepted changes)."""
    amax = dict(candidates[start])
    per_tensor = {t: start for t in bench.simulator.tensors}
    everything = bench.simulator.all_nodes
    current = bench.score(everything, amax)
    changes: List[Tuple[str, str, str, float]] = []
    for i, tensor in enumerate(tensors):
        if report is not None:
            report(i, len(tensors))
        options = [a for a in candidates if a != per_tensor[tensor]
                   and _differs(candidates[a].get(tensor, 0.0), amax.get(tensor, 0.0))]
        trials = [{**amax, tensor: candidates[a][tensor]} for a in options]
        results = bench.score_many([(everything, t) for t in trials])
        for algo, trial, score in zip(options, trials, results):
            if goodness(score, metric) > goodness(current, metric):
                changes.append((tensor, per_tensor[tensor], algo, score.value(metric)))
                per_tensor[tensor], amax, current = algo, trial, score
    if report is not None:
        report(len(tensors), len(tensors))
    return amax, per_tensor, changes


def refine_per_tensor(bench: Bench, candidates: Mapping[str, Mapping[str, float]], scores: Mapping[str, Score],
                      metric: str, progress: Optional[StageProgress] = None,
                      tensors: Optional[Sequence[str]] = None) -> AlgoChoice:
    """Steps 2 and 3 of the module docstring, from the scores of step 1 (`tensors`: only these are tried)."""
    best = max(candidates, key=lambda a: (goodness(scores[a], metric), -list(candidates).index(a)))
    wanted = None if tensors is None else set(tensors)
    tried = [t for t in bench.simulator.tensors if wanted is None or t in wanted]
    halves = bench.halves()
    fit, check = halves if halves is not None else (bench, None)
    amax, per_tensor, changes = _greedy(fit, candidates, best, metric, tried, _stage(progress, "auto"))
    everything = bench.simulator.all_nodes
    held_out: Dict[str, float] = {}
    if changes:
        full = bench.score(everything, amax)
        keep = goodness(full, metric) > goodness(scores[best], metric)
        if check is not None:
            held = check.score(everything, amax)
            held_best = check.score(everything, candidates[best])
            held_out = {"per_tensor": held.value(metric), best: held_best.value(metric)}
            keep = keep and goodness(held, metric) > goodness(held_best, metric)
        if keep:
            return AlgoChoice(metric, "per_tensor", best, {**scores, "auto": full}, per_tensor, amax, changes, held_out)
        log.info("--algo auto: the per-tensor choice does not beat %s on the held-out half (%s); keeping %s",
                 best, held_out, best)
    return AlgoChoice(metric, "global", best, {**scores, "auto": scores[best]},
                      {t: best for t in bench.simulator.tensors}, dict(candidates[best]), changes, held_out)


def choose_algorithms(model: Union[str, Path], stats: StatsBundle, data: Any, *, samples: int = 32, seed: int = 0,
                      metric: str = "cosine", per_tensor: bool = True, preprocess: Any = None, batch_size: int = 8,
                      threads: Optional[int] = None, per_channel: bool = True, device: Union[str, Device] = CPU,
                      progress: Optional[StageProgress] = None, limit: Optional[int] = None) -> AlgoChoice:
    """`--algo auto` for calibrate / quantize: amax for every tensor of `stats`, chosen on `samples` of `data`.

    data: anything `calibrate` accepts (a directory is sampled with `seed`, like `--limit`; with `limit`, from
    among the samples a run with that --limit read).
    per_tensor=False stops after the best single algorithm. Returns the choice; `choice.amax` is what a
    CalibrationResult takes.
    """
    from ..collect.feed import sample_batches
    from .measure import check_metric
    from .simulate import QuantSimulator
    from ..model import inspect_model

    check_metric(metric)
    candidates = candidate_amax(stats, threads=threads)
    simulator = QuantSimulator(model, candidates["max"], per_channel=per_channel, device=parse_device(device))
    bench = Bench(simulator, sample_batches(inspect_model(model), data, samples, seed, preprocess, batch_size, threads,
                                            within=limit), workers=_workers(threads))
    scores = score_algorithms(bench, candidates, progress)
    if not per_tensor:
        best = max(candidates, key=lambda a: (goodness(scores[a], metric), -list(candidates).index(a)))
        return AlgoChoice(metric, "global", best, {**scores, "auto": scores[best]},
                          {t: best for t in simulator.tensors}, dict(candidates[best]))
    return refine_per_tensor(bench, candidates, scores, metric, progress)


def _workers(threads: Optional[int]) -> int:
    import os

    return max(1, threads or os.cpu_count() or 1)


def auto_result(model: Union[str, Path], result: CalibrationResult, data: Any, *, samples: int = 32, seed: int = 0,
                metric: str = "cosine", preprocess: Any = None, batch_size: int = 8, threads: Optional[int] = None,
                per_channel: bool = True, device: Union[str, Device] = CPU,
                progress: Optional[StageProgress] = None, limit: Optional[int] = None) -> CalibrationResult:
    """A CalibrationResult (any algorithm: statistics do not depend on it) turned into `--algo auto`'s.

    This is the one call `calibrate(algo="auto")` and the CLI's `--algo auto` need: algo becomes "auto",
    algo_options record the choice (best single algorithm, mode, per-tensor algorithms), amax the choice's.
    """
    choice = choose_algorithms(model, result.stats, data, samples=samples, seed=seed, metric=metric,
                               preprocess=preprocess, batch_size=batch_size, threads=threads,
                               per_channel=per_channel, device=device, progress=progress, limit=limit)
    options = {"metric": metric, "samples": samples, "mode": choice.mode, "best_single": choice.best_single,
               "per_tensor": dict(choice.per_tensor)}
    log.info("--algo auto: %s", describe_choice(options))
    return CalibrationResult(result.stats, "auto", options, dict(choice.amax), result.report)


def describe_choice(options: Mapping[str, Any]) -> str:
    """'per tensor: 80 mse, 25 entropy, 8 max (best single: mse)' from an auto result's algo_options."""
    counts: Dict[str, int] = {}
    for algo in options.get("per_tensor", {}).values():
        counts[algo] = counts.get(algo, 0) + 1
    spread = ", ".join(f"{n} {a}" for a, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    if options.get("mode") == "per_tensor":
        return f"per tensor: {spread} (best single: {options.get('best_single')})"
    return f"{options.get('best_single')} for every tensor (a per-tensor choice did not win on held-out samples)"
