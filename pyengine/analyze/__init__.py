"""`ptqengine analyze`: which layers hurt in INT8, which calibration algorithm to use, what to keep in float.

    result = analyze("model.onnx", "images/", stats="model.ptqs", samples=32, target_cosine=0.99)
    result.write_html("report.html"); result.write_json("analysis.json")

Steps (each module's docstring has the details):
1. Statistics: loaded (`stats=`) or collected by `calibrate` once; every candidate algorithm's amax
   comes from them without inference (auto_algo.candidate_amax).
2. Samples: `samples` inputs preprocessed once and kept; the FP32 reference outputs computed once.
3. Algorithms: the fully quantised model scored with each algorithm; `algo="auto"` then refines per
   tensor (auto_algo.py).
4. Sensitivity: each quantised node alone, and everything but it (sensitivity.py).
5. Advice: the fewest nodes to keep out of INT8 to reach `target_cosine` (advice.py), checked once more
   on the real export (`ptqengine.qdq.quantize_model` with the advised `--exclude`).
Every configuration is the Q/DQ export restricted to some nodes (simulate.py), run by onnxruntime.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..algorithms import AUTO
from ..atomic import write_text_atomic
from ..errors import OptionError
from ..collect import CPU, Device, RunOptions, check_device
from ..collect.statistics import statistics_for
from ..loader_script import LoaderScript
from ..model import ModelInfo, inspect_model
from ..statsfile import StatsBundle
from .advice import Advice, advise, check_target, escape_pattern
from .auto_algo import CANDIDATES, AlgoChoice, candidate_amax, choose_algorithms, refine_per_tensor, score_algorithms
from ..collect.feed import sample_batches
from .measure import Bench, Score, check_metric, goodness
from .sensitivity import NodeSensitivity, node_sensitivity, select_nodes
from .simulate import QuantSimulator

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
StageProgress = Callable[[str, int, Optional[int]], None]
ALGO_CHOICES = CANDIDATES + (AUTO,)
DIGITS = 7  # significant digits written: onnxruntime's float sums may differ in the last bits between runs

__all__ = ["ALGO_CHOICES", "AlgoChoice", "Advice", "AnalysisResult", "NodeSensitivity", "Score", "analyze",
           "choose_algorithms", "escape_pattern"]


@dataclass
class AnalysisResult:
    model: str
    model_sha256: str
    data: str
    samples: int
    seed: int
    metric: str
    target_cosine: float
    algo: str  # as requested ("auto" or one algorithm)
    best_single: str
    algorithm_scores: Dict[str, Score]  # fully quantised model per algorithm (+ "auto" when requested)
    per_tensor_algo: Dict[str, str]  # quantised activation tensor -> algorithm used
    candidates: Dict[str, Dict[str, float]]  # algorithm -> quantised activation tensor -> amax
    amax: Dict[str, float]  # used, every tensor of the statistics
    overall: Score  # the model fully quantised with `amax`
    sensitivity: List[NodeSensitivity]  # ranked
    advice: Advice
    advice_check: Optional[Score]  # the real Q/DQ export with the advised exclusions
    fp32_bytes: int
    int8_bytes: int
    nodes_total: int
    runs: int
    seconds: float
    auto_changes: List[Tuple[str, str, str, float]] = field(default_factory=list)  # tried on the fit half
    auto_mode: str = ""  # "per_tensor" or "global" (algo="auto" only)
    auto_held_out: Dict[str, float] = field(default_factory=dict)  # metric on the check half
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # tensors without Q/DQ (no usable range)
    notes: List[str] = field(default_factory=list)
    stats: Optional[StatsBundle] = field(default=None, repr=False)  # for the report's histograms

    def to_dict(self) -> Dict[str, Any]:
        return _rounded({
            "model": self.model, "model_sha256": self.model_sha256, "data": self.data, "samples": self.samples,
            "seed": self.seed, "metric": self.metric, "target_cosine": self.target_cosine, "algo": self.algo,
            "best_single": self.best_single,
            "algorithm_scores": {k: v.to_dict() for k, v in self.algorithm_scores.items()},
            "per_tensor_algo": self.per_tensor_algo, "auto_changes": [list(c) for c in self.auto_changes],
            "auto_mode": self.auto_mode, "auto_held_out": self.auto_held_out,
            "candidates": self.candidates, "overall": self.overall.to_dict(),
            "sensitivity": [s.to_dict() for s in self.sensitivity], "advice": self.advice.to_dict(),
            "advice_check": None if self.advice_check is None else self.advice_check.to_dict(),
            "size_bytes": {"fp32": self.fp32_bytes, "int8": self.int8_bytes}, "nodes_total": self.nodes_total,
            "skipped": [list(s) for s in self.skipped], "notes": self.notes,
        })

    def write_json(self, path: PathLike) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2, allow_nan=True) + "\n")

    def write_html(self, path: PathLike, histograms: int = 6) -> None:
        from .report import render_html

        write_text_atomic(path, render_html(self, histograms=histograms))


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.{DIGITS}g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def _check_coverage(info: ModelInfo, bundle: StatsBundle, notes: List[str]) -> None:
    """Statistics must name this model's node outputs (graph inputs are too often just "x" to tell)."""
    inputs = {s.name for s in info.inputs}
    outputs = [a for a in info.activations if a not in inputs]
    missing = [a for a in outputs if a not in bundle.tensors]
    if outputs and 2 * len(missing) > len(outputs):
        raise OptionError(f"--stats: the statistics lack {len(missing)} of the {len(outputs)} activations of "
                          f"{info.path} (e.g. {missing[0]}); were they collected on another model?")
    if missing:
        notes.append(f"{len(missing)} activation(s) have no statistics (e.g. {missing[0]}) and get no Q/DQ")


def _unnamed(simulator: QuantSimulator) -> List[str]:
    graph = simulator.prepared.graph
    return [n.label for n in simulator.nodes if not graph.node[n.index].name]


def _real_export(model: Path, amax: Mapping[str, float], exclude: Sequence[str], per_channel: bool):
    from ..qdq import quantize_model

    return quantize_model(model, calibration=dict(amax), per_channel=per_channel,
                          exclude=[escape_pattern(n) for n in exclude])


def analyze(model: PathLike, data: Any, *, stats: Union[PathLike, StatsBundle, None] = None, samples: int = 32,
            seed: int = 0, target_cosine: float = 0.99, metric: str = "cosine", algo: str = AUTO,
            preprocess: Any = None, batch_size: int = 8, limit: Optional[int] = None,
            threads: Optional[int] = None, per_channel: bool = True, nodes: Optional[Sequence[str]] = None,
            device: Union[str, Device] = CPU, progress: Optional[StageProgress] = None) -> AnalysisResult:
    """Sensitivity, algorithm choice and mixed-precision advice for `model` on `samples` of `data`.

    stats: saved statistics (path or bundle) to reuse; without them the model is calibrated on `data`
        (`limit` samples, seeded) first. algo: one of ALGO_CHOICES. nodes: fnmatch patterns restricting
        the per-node runs (and so the advice) to some nodes. progress(stage, done, total) with stages
        calibrating / algorithms / auto / sensitivity / advice.
    """
    start = time.perf_counter()
    check_metric(metric)
    check_target(target_cosine)
    if algo not in ALGO_CHOICES:
        raise OptionError(f"--algo: expected one of {', '.join(ALGO_CHOICES)}, got {algo!r}")
    model_path = Path(model)
    info = inspect_model(model_path)
    notes: List[str] = []
    options = RunOptions(batch_size=batch_size, limit=limit, seed=seed, threads=threads, preprocess=preprocess,
                         device=device)
    check_device(options.device, statistics=stats is None)
    report = None if progress is None else (lambda done, total: progress("calibrating", done, total))
    bundle = statistics_for(model_path, data, stats, options, notes=notes, progress=report)
    _check_coverage(info, bundle, notes)
    candidates = candidate_amax(bundle, threads=threads)
    simulator = QuantSimulator(model_path, candidates["max"], per_channel=per_channel, device=options.device)
    positions = select_nodes(simulator.nodes, nodes)
    workers = max(1, threads or os.cpu_count() or 1)
    bench = Bench(simulator, sample_batches(info, data, samples, seed, preprocess, batch_size, threads, within=limit),
                  workers)
    bench.target_cosine = target_cosine

    scores = score_algorithms(bench, candidates, progress)
    best = max(candidates, key=lambda a: (goodness(scores[a], metric), -list(candidates).index(a)))
    changes: List[Tuple[str, str, str, float]] = []
    mode, held_out = "", {}
    if algo == AUTO:
        choice = refine_per_tensor(bench, candidates, scores, metric, progress)
        amax, per_tensor, overall, changes = choice.amax, choice.per_tensor, choice.score, choice.changes
        scores, mode, held_out = choice.scores, choice.mode, choice.held_out
    else:
        amax, per_tensor, overall = dict(candidates[algo]), {t: algo for t in simulator.tensors}, scores[algo]

    ranking = node_sensitivity(bench, amax, metric, positions, progress)
    advice = advise(bench, ranking, amax, target_cosine, overall, _unnamed(simulator), progress)
    check = None
    if advice.nodes:
        check = bench.score_model(_real_export(model_path, amax, advice.nodes, per_channel).model)
    int8_bytes = _real_export(model_path, amax, (), per_channel).report.output_bytes
    quantised = set(simulator.tensors)
    return AnalysisResult(
        model=str(model_path), model_sha256=info.sha256,
        data=str(data) if isinstance(data, (str, Path, LoaderScript)) else type(data).__name__,
        samples=bench.samples, seed=seed, metric=metric, target_cosine=target_cosine, algo=algo, best_single=best,
        algorithm_scores=scores, per_tensor_algo=per_tensor,
        candidates={a: {t: v for t, v in c.items() if t in quantised} for a, c in candidates.items()},
        amax=amax, overall=overall, sensitivity=ranking, advice=advice, advice_check=check,
        fp32_bytes=model_path.stat().st_size, int8_bytes=int8_bytes, nodes_total=len(simulator.nodes),
        runs=bench.runs, seconds=time.perf_counter() - start, auto_changes=changes, auto_mode=mode,
        auto_held_out=held_out, skipped=simulator.skipped,
        notes=notes, stats=bundle)
