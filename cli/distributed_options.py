"""Scale-out options of `calibrate`: --engine --ray-address --workers --gpus-per-worker --shard-size
--max-retries --resume --shards-dir, and --shard i/N for external schedulers.

`ScaleOut` holds the parsed values; `run()` calibrates with them (sharded engines), `run_shard()`
computes one part for `merge`. Without any of these options `calibrate` is the plain single-process run.
"""
from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Dict, Optional

import typer

from ptqengine.errors import OptionError

if TYPE_CHECKING:  # pragma: no cover
    from ptqengine.result import CalibrationResult

SCALE_OUT = "Scale-out (processes, Ray, shards)"


class Engine(str, Enum):
    local = "local"
    ray = "ray"


EngineOpt = Annotated[Optional[Engine], typer.Option(
    "--engine", case_sensitive=False, rich_help_panel=SCALE_OUT,
    help="Shard the data over --workers local processes (local) or Ray actors (ray: pip install \".[ray]\"). "
         "Results are byte-identical to the plain run (the default, no --engine).")]
RayAddressOpt = Annotated[Optional[str], typer.Option(
    "--ray-address", metavar="auto|HOST:PORT", rich_help_panel=SCALE_OUT,
    help="Join a running Ray cluster (default: start a local one for this run). Every node must see the "
         "model and --data at the same paths.")]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", min=1, rich_help_panel=SCALE_OUT, help="Worker processes or Ray actors (default: 2).")]
GpusPerWorkerOpt = Annotated[float, typer.Option(
    "--gpus-per-worker", min=0.0, rich_help_panel=SCALE_OUT,
    help="With --device cuda: GPUs per worker (1: each worker its own GPU; 0.5: two workers per GPU). Ray "
         "reserves them for each actor.")]
ShardSizeOpt = Annotated[Optional[int], typer.Option(
    "--shard-size", min=1, rich_help_panel=SCALE_OUT,
    help="Images per shard, a multiple of the batch size (default: about 16 shards, at most 64 batches each).")]
MaxRetriesOpt = Annotated[int, typer.Option(
    "--max-retries", min=0, rich_help_panel=SCALE_OUT, help="Retries of a shard whose worker died.")]
ResumeOpt = Annotated[bool, typer.Option(
    "--resume", rich_help_panel=SCALE_OUT,
    help="Keep each finished shard in --shards-dir and skip the shards already there (after an interrupted "
         "run). The directory is removed after success.")]
ShardsDirOpt = Annotated[Optional[Path], typer.Option(
    "--shards-dir", metavar="DIR", rich_help_panel=SCALE_OUT,
    help="Where --resume keeps finished shards (default: OUTPUT.shards beside -o).")]
ShardOpt = Annotated[Optional[str], typer.Option(
    "--shard", metavar="i/N", rich_help_panel=SCALE_OUT,
    help="Compute only shard i of N (0-based) into --save-stats, for any scheduler; combine the parts with "
         "'ptqengine merge'.")]

DEFAULT_WORKERS = 2
DEFAULT_MAX_RETRIES = 2


@dataclasses.dataclass(frozen=True)
class ScaleOut:
    engine: Optional[Engine] = None
    ray_address: Optional[str] = None
    workers: Optional[int] = None
    gpus_per_worker: float = 0.0
    shard_size: Optional[int] = None
    max_retries: int = DEFAULT_MAX_RETRIES
    resume: bool = False
    shards_dir: Optional[Path] = None
    shard: Optional[str] = None

    def check(self) -> "ScaleOut":
        """Refuse contradicting options before any work."""
        sharded_only = {"--workers": self.workers is not None, "--shard-size": self.shard_size is not None,
                        "--resume": self.resume, "--shards-dir": self.shards_dir is not None,
                        "--ray-address": self.ray_address is not None, "--gpus-per-worker": bool(self.gpus_per_worker)}
        given = [name for name, on in sharded_only.items() if on]
        if self.shard is not None and (self.engine is not None or given):
            raise OptionError(f"--shard runs one shard in this process; it does not combine with "
                              f"{'--engine' if self.engine is not None else given[0]}")
        if self.engine is None and given:
            raise OptionError(f"{given[0]} needs --engine local or --engine ray")
        if self.engine is Engine.local and self.ray_address is not None:
            raise OptionError("--ray-address needs --engine ray")
        if self.shards_dir is not None and not self.resume:
            raise OptionError("--shards-dir is where --resume keeps shards; add --resume")
        return self

    @property
    def sharded(self) -> bool:
        return self.engine is not None

    def resume_dir(self, output: Path) -> Optional[Path]:
        if not self.resume:
            return None
        return self.shards_dir or output.with_name(output.name + ".shards")

    def library_options(self, output: Path) -> Optional[Dict[str, Any]]:
        """ptqengine.api.calibrate's `scale_out` (None for the plain single-process run)."""
        if not self.sharded:
            return None
        return dict(engine=self.engine.value, workers=self.workers or DEFAULT_WORKERS,
                    ray_address=self.ray_address, gpus_per_worker=self.gpus_per_worker,
                    shard_size=self.shard_size, max_retries=self.max_retries, resume_dir=self.resume_dir(output))

    def cleanup(self, output: Path, result: "CalibrationResult") -> None:
        """After the outputs are written: the shard checkpoints are no longer needed."""
        from ptqengine.distributed import remove_shard_files

        directory = self.resume_dir(output)
        if directory is not None:
            remove_shard_files(directory, getattr(result.report, "shard_count", 0))


def _current_context() -> Any:
    """click's current context, from whichever click typer runs on: recent typer vendors it (typer._click)
    and does not install the click package, so `import click` fails on a plain install."""
    import importlib

    import typer

    for cls in typer.Context.__mro__:
        try:
            package = cls.__module__.rsplit(".", 1)[0]  # click.core -> click, typer._click.core -> typer._click
            return importlib.import_module(f"{package}.globals").get_current_context(silent=True)
        except (ImportError, AttributeError):
            continue
    return None


def _given_on_command_line(name: str) -> bool:
    ctx = _current_context()
    if ctx is None:
        return False
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def write_shard(scale_out: ScaleOut, model: Path, data: str, save_stats: Optional[Path],
                scales_json: Optional[Path], quiet: bool, **run_args: Any) -> None:
    """--shard i/N: statistics of that shard only, into --save-stats (no scale tables: a part has none)."""
    from ptqengine.distributed import calibrate_shard, parse_shard_spec
    from ptqengine.statsfile import save_stats as write_stats

    from .console import stdout_console
    from .options import check_writable

    index, count = parse_shard_spec(scale_out.shard or "")
    if save_stats is None:
        raise OptionError("--shard writes the shard's statistics: give --save-stats PART.ptqs")
    if scales_json is not None or _given_on_command_line("output"):
        raise OptionError("--shard writes only --save-stats; scale tables come from 'ptqengine merge' then 'export'")
    check_writable(save_stats, "--save-stats")
    bundle = calibrate_shard(model, data, index, count, **run_args)
    write_stats(save_stats, bundle)
    if not quiet:
        samples = bundle.metadata.get("samples", 0)
        stdout_console().print(f"shard {index}/{count}: statistics of {samples} samples in {save_stats}")
