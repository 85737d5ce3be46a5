"""The ``anomstream`` command line (the front door; imports training lazily).

Every command answers ``--help``.  Bad arguments or unusable input exit with
code 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

__all__ = ["cli", "main"]

log = logging.getLogger("anomstream")
#: The contract's (§4) algorithm names, for help text; the zoo itself is read lazily.
CONTRACT_ALGORITHMS = ("iforest", "ecod", "copod", "hbos", "knn", "lof", "ocsvm", "pca", "mcd", "loda", "cblof",
                       "autoencoder", "vae")


def __getattr__(name: str) -> Any:
    if name == "ALGORITHM_NAMES":  # the zoo's names, read lazily (the zoo imports scikit-learn)
        return _algorithm_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class UsageFailure(Exception):
    """A user error: printed as one line, exit code 2."""


def _fail(message: str) -> NoReturn:
    raise UsageFailure(message)


def _setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if fmt == "json":
        from stream.logformat import JsonFormatter

        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    for noisy in ("aiokafka", "kafka", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="anomstream")
def cli() -> None:
    """anomstream: streaming anomaly detection (AutoML to ONNX, scored live from Kafka)."""


# --------------------------------------------------------------------------- train
@cli.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--name", default="default", show_default=True, help="Model name in the registry.")
@click.option("--label-column", default=None, help="Column with 1 = anomaly, 0 = normal, empty = unknown.")
@click.option("--time-column", default=None, help="Rows are sorted by it; the validation split is the latest 30%.")
@click.option("--budget", "budget_s", type=click.FloatRange(min=1), default=60.0, show_default=True, help="Search time in seconds.")
@click.option("--trials", type=click.IntRange(min=1), default=None, help="Stop after this many trials.")
@click.option("--algorithms", default=None,
              help=f"Comma-separated subset of the zoo: {', '.join(CONTRACT_ALGORITHMS)} (and any added since).")
@click.option("--space", "space_file", type=click.Path(path_type=Path), default=None,
              help="Search-space YAML (see configs/search.yaml): algorithms, ranges, fixed values, preprocessing.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Trials run in parallel (threads); only --jobs 1 is reproducible.")
@click.option("--max-score-us", "max_score_us", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Reject candidates whose ONNX scoring costs more µs per row (batch 256, 1 thread).")
@click.option("--metric", type=click.Choice(["roc_auc", "aucpr"]), default="roc_auc", show_default=True)
@click.option("--label-free", "label_free", type=click.Choice(["ensemble", "routed", "iforest", "centrality"]),
              default=None, help="Without labels: a fixed measured strategy, or `centrality` (a search); "
              "default: see the README's benchmark.")
@click.option("--contamination", type=click.FloatRange(min=0, max=0.5, min_open=True), default=None,
              help="Expected anomaly fraction; sets the threshold (default 0.01, or chosen on labels).")
@click.option("--storage", default=None, help="Optuna storage URL (default: SQLite beside the registry).")
@click.option("--study", default=None, help="Study name to share or resume.")
@click.option("--registry", type=click.Path(path_type=Path), default=Path("./var/models"), show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--promote/--no-promote", default=True, show_default=True, help="Make the new version current.")
def train(data: Path, name: str, label_column: str | None, time_column: str | None, budget_s: float,
          trials: int | None, algorithms: str | None, space_file: Path | None, jobs: int,
          max_score_us: float | None, metric: str, label_free: str | None, contamination: float | None,
          storage: str | None, study: str | None, registry: Path, seed: int, promote: bool) -> None:
    """AutoML on DATA (.csv, .parquet, .jsonl, .npz), export to ONNX, register a version."""
    algos = _parse_algorithms(algorithms)
    from training.automl import train as run_training
    from training.data import load_dataset, profile
    from training.errors import TrainingError
    from training.space import SearchSpace

    _quiet_optuna()
    try:
        space = SearchSpace.from_yaml(space_file) if space_file is not None else None
        ds = load_dataset(data, label_column=label_column, time_column=time_column)
    except TrainingError as exc:
        _fail(str(exc))
    _print_profile(ds, profile(ds))
    _check_writable(registry)  # before the search, not after its budget is spent
    progress, finish = _progress_bar(budget_s, trials)
    try:
        result = run_training(
            ds, name=name, algorithms=algos, space=space, budget_s=budget_s, trials=trials, jobs=jobs,
            max_score_us=max_score_us, metric="aucpr" if metric == "aucpr" else "roc_auc",
            contamination=contamination, storage=storage, study=study, seed=seed,
            registry_root=registry, promote=promote, progress=progress,
            **({"label_free": label_free} if label_free else {}),  # type: ignore[arg-type]
        )
    except TrainingError as exc:
        _fail(str(exc))
    finally:
        finish()
    _print_leaderboard(result.leaderboard)
    card = result.artifact.card
    m = card.metrics
    shown = ", ".join(f"{k}={v:.4f}" for k, v in m.items() if isinstance(v, float)) or "no labels: metrics null"
    cost = card.training.get("score_us")
    click.echo(f"model {card.ref} ({card.detector.get('algorithm')}): {shown}; threshold {card.threshold:.4f}; "
               f"parity {card.parity:.2e}" + (f"; {cost:.2f} µs/row" if isinstance(cost, float) else ""))
    click.echo(f"artifact: {result.artifact.path}")


def _print_leaderboard(board: Any, rows: int = 10) -> None:
    """The top of the leaderboard as a plain table (it goes to logs and pipes too)."""
    cols = [c for c in ("rank", "trial", "algorithm", "scaler", "onehot", "value", "fit_s", "score_us", "params", "note")
            if c in board.columns]
    top = board[cols].head(rows).copy()
    if "params" in top.columns:
        top["params"] = top["params"].map(lambda p: p if len(p) <= 60 else p[:57] + "...")
    click.echo(top.to_string(index=False, na_rep=""))
    if len(board) > rows:
        click.echo(f"... {len(board) - rows} more trials in leaderboard.csv")


def _check_writable(registry: Path) -> None:
    import os

    try:
        registry.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"registry {str(registry)!r} cannot be created: {exc.strerror or exc}")
    if not os.access(registry, os.W_OK | os.X_OK):
        _fail(f"registry {str(registry)!r} is not writable")


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _algorithm_names() -> tuple[str, ...]:
    """The zoo's algorithm names (imported lazily: the zoo pulls in scikit-learn)."""
    from models.zoo import ALGORITHMS

    return tuple(ALGORITHMS)


def _parse_algorithms(text: str | None) -> list[str] | None:
    if text is None:
        return None
    known = _algorithm_names()
    names = [a.strip().lower() for a in text.split(",") if a.strip()]
    unknown = [a for a in names if a not in known]
    if unknown or not names:
        _fail(f"unknown algorithm {', '.join(unknown) or repr(text)}; choose from {', '.join(known)}")
    return names


def _print_profile(ds: Any, columns: Any) -> None:
    """Rows, labels and a compact per-column table (type, missing, distinct values, flags)."""
    from rich.console import Console
    from rich.table import Table

    labels = ""
    if ds.y is not None:
        import numpy as np

        known = ~np.isnan(ds.y)
        labels = (f", labels: {int((ds.y[known] == 1).sum())} anomalies / {int((ds.y[known] == 0).sum())} normal"
                  f" / {int((~known).sum())} unknown")
    click.echo(f"data: {ds.path} — {ds.X.shape[0]} rows × {ds.X.shape[1]} features{labels}")
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for col in ("feature", "type", "missing", "distinct", "note"):
        table.add_column(col, justify="right" if col in ("missing", "distinct") else "left")
    shown = 20
    for c in columns[:shown]:
        notes = []
        if c.constant:
            notes.append("constant")
        if c.kind == "int" and 3 <= c.distinct <= 10:
            notes.append("low cardinality: one-hot candidate")
        table.add_row(c.name, c.kind, f"{c.missing_fraction:.1%}", str(c.distinct), ", ".join(notes))
    console = Console(soft_wrap=True, highlight=False, width=max(100, Console().width))
    console.print(table)
    rest = columns[shown:]
    if rest:
        constant = sum(c.constant for c in rest)
        missing = sum(c.missing_fraction > 0 for c in rest)
        click.echo(f"  ... {len(rest)} more columns ({constant} constant, {missing} with missing values)")


def _progress_bar(budget_s: float, trials: int | None) -> tuple[Any, Any]:
    """A rich bar on a terminal: trials done, best so far, time left of the budget."""
    if not sys.stdout.isatty():
        return None, lambda: None
    import math
    import time

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    started = time.monotonic()
    bar = Progress(
        TextColumn("[bold]search"), BarColumn(), TextColumn("{task.fields[trials]}"),
        TextColumn("best {task.fields[best]}"), TimeElapsedColumn(), TextColumn("{task.fields[left]} left"),
        transient=True,
    )
    task = bar.add_task("search", total=budget_s, trials="0 trials", best="-", left=f"{budget_s:.0f}s")
    bar.start()
    done = [0]

    def update(trial: int, best: float) -> None:
        done[0] += 1
        elapsed = time.monotonic() - started
        fraction = max(elapsed / budget_s, done[0] / trials if trials else 0.0)
        shown_best = f"{best:.4f}" if math.isfinite(best) else "-"  # NaN: nothing ranked yet
        bar.update(task, completed=min(fraction, 1.0) * budget_s, best=shown_best,
                   trials=f"{done[0]}{f'/{trials}' if trials else ''} trials",
                   left=f"{max(budget_s - elapsed, 0.0):.0f}s")

    return update, bar.stop


# --------------------------------------------------------------------------- score
@cli.command()
@click.option("--model", "model_ref", required=True, help="NAME, NAME@VERSION or a model directory.")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="CSV to write (default stdout).")
@click.option("--registry", type=click.Path(path_type=Path), default=Path("./var/models"), show_default=True)
def score(model_ref: str, data: Path, output: Path | None, registry: Path) -> None:
    """Score DATA with a model through the same ONNX core as the service."""
    import numpy as np

    from models.artifact import Artifact
    from models.errors import ModelError
    from models.registry import Registry
    from stream.core import Scorer
    from training.data import load_dataset
    from training.errors import TrainingError

    try:
        path = Path(model_ref)
        artifact = Artifact.load(path) if path.is_dir() else Registry(registry).load(model_ref)
    except ModelError as exc:
        _fail(str(exc))
    try:
        ds = load_dataset(data)
    except TrainingError as exc:
        _fail(str(exc))
    features = artifact.card.features
    index = {f: i for i, f in enumerate(ds.features)}
    missing = [f for f in features if f not in index]
    if missing:
        _fail(f"{data}: lacks {len(missing)} of model {artifact.card.ref}'s features: {', '.join(missing[:5])}")
    X = np.ascontiguousarray(ds.X[:, [index[f] for f in features]], dtype=np.float32)
    scorer = Scorer(artifact, providers="auto")
    parts = [scorer.score(X[i:i + 4096]) for i in range(0, X.shape[0], 4096)]
    raw = np.concatenate([p.raw for p in parts]) if parts else np.empty(0)
    cal = np.concatenate([p.score for p in parts]) if parts else np.empty(0)
    flag = np.concatenate([p.anomaly for p in parts]) if parts else np.empty(0, dtype=bool)
    lines = ["score,raw_score,anomaly"] + [f"{c:.6f},{r:.8g},{int(a)}" for c, r, a in zip(cal.tolist(), raw.tolist(), flag.tolist())]
    text = "\n".join(lines) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        try:
            output.write_text(text)
        except OSError as exc:
            _fail(f"cannot write {str(output)!r}: {exc.strerror or exc}")
        click.echo(f"{len(lines) - 1} rows scored with {artifact.card.ref}: {int(flag.sum())} anomalies -> {output}", err=True)


# --------------------------------------------------------------------------- serve
@cli.command()
@click.option("--config", "config", type=click.Path(path_type=Path), default=None,
              help="YAML configuration (default: built-in defaults, see configs/service.yaml).")
@click.option("--log-level", default="INFO", show_default=True, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.option("--log-format", "log_format", default="text", show_default=True, type=click.Choice(["text", "json"]),
              help="json: one JSON object per line (ts, time, level, logger, message).")
def serve(config: Path | None, log_level: str, log_format: str) -> None:
    """Run the service until SIGINT/SIGTERM (graceful: in-flight batches are published and committed)."""
    from stream.errors import StreamError
    from stream.service import Service
    from stream.settings import Settings

    try:
        settings = Settings.load(config)
    except StreamError as exc:
        _fail(str(exc))
    _setup_logging(log_level, log_format)

    async def _run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with Service(settings) as svc:
            log.info("serving model %s", svc.live.scorer.ref if svc.live else "?")
            await svc.run(stop)

    try:
        asyncio.run(_run())
    except StreamError as exc:
        _fail(str(exc))


# --------------------------------------------------------------------------- trainer
@cli.command()
@click.option("--config", "config", type=click.Path(path_type=Path), default=None,
              help="YAML configuration (the service's: model, kafka and drift.retrain sections are used).")
@click.option("--algorithms", default=None, help="Comma-separated subset of the zoo to search (default: all).")
@click.option("--label-free", "label_free", type=click.Choice(["ensemble", "routed", "iforest", "centrality"]),
              default=None, help="Label-free strategy of the AutoML (default: as `train`).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--log-level", default="INFO", show_default=True, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.option("--log-format", "log_format", default="text", show_default=True, type=click.Choice(["text", "json"]),
              help="json: one JSON object per line (ts, time, level, logger, message).")
def trainer(config: Path | None, algorithms: str | None, label_free: str | None, seed: int, log_level: str,
            log_format: str) -> None:
    """Retraining worker: serve retrain requests from the control topic until SIGINT/SIGTERM.

    Reads recent events back from the input topics, trains a candidate within
    drift.retrain.budget_s, validates it against the current model on a recent
    hold-out, and promotes it only if it passes.
    """
    from stream.broker import resolve_bootstrap
    from stream.errors import StreamError
    from stream.settings import Settings
    from stream.trainer import Trainer

    algos = _parse_algorithms(algorithms)
    try:
        settings = Settings.load(config)
    except StreamError as exc:
        _fail(str(exc))
    if not settings.kafka.enabled:
        _fail("the trainer needs Kafka (kafka.enabled is false)")
    _setup_logging(log_level, log_format)
    _quiet_optuna()

    async def _run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        bootstrap, embedded = await asyncio.to_thread(resolve_bootstrap, settings.kafka.bootstrap_servers)
        try:
            await Trainer(settings, bootstrap=bootstrap, algorithms=algos, label_free=label_free, seed=seed).run(stop)
        finally:
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)

    try:
        asyncio.run(_run())
    except StreamError as exc:
        _fail(str(exc))


# --------------------------------------------------------------------------- demo
@cli.command()
@click.option("--duration", type=click.FloatRange(min=1), default=None, help="Seconds to run (default: until Ctrl-C).")
@click.option("--rate", type=click.IntRange(min=1), default=2000, show_default=True, help="Events per second offered.")
@click.option("--registry", type=click.Path(path_type=Path), default=Path("./var/models"), show_default=True)
def demo(duration: float | None, rate: int, registry: Path) -> None:
    """Embedded broker + first model + service + producer, with a live summary."""
    from stream.demo import run_demo
    from stream.errors import StreamError

    _setup_logging("WARNING")
    try:
        run_demo(duration_s=duration, rate=rate, registry=registry)
    except StreamError as exc:
        _fail(str(exc))


# --------------------------------------------------------------------------- models
@cli.group()
def models() -> None:
    """List, inspect, promote and roll back registered models."""


_registry_option = click.option("--registry", type=click.Path(path_type=Path), default=Path("./var/models"), show_default=True)


@models.command("list")
@click.argument("name", required=False)
@_registry_option
def models_list(name: str | None, registry: Path) -> None:
    """Models and their versions (* marks the current one)."""
    from models.artifact import Artifact
    from models.registry import Registry

    reg = Registry(registry)
    names = [name] if name else reg.names()
    if name and not reg.versions(name):
        _fail(f"no model named {name!r} in registry {str(registry)!r}")
    if not names:
        click.echo(f"no models in {registry}")
    for n in names:
        cur = reg.current(n)
        for v in reg.versions(n):
            card = Artifact.load(reg.path(n, v)).card
            metric = card.metrics.get("roc_auc")
            m = f"roc_auc={metric:.4f}" if isinstance(metric, float) else "roc_auc=null"
            click.echo(f"{'*' if v == cur else ' '} {n}@{v}  {card.created_at}  {card.detector.get('algorithm', '?'):<10} "
                       f"{m}  trigger={card.lineage.get('trigger')}")


@models.command("show")
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1), required=False)
@_registry_option
def models_show(name: str, version: int | None, registry: Path) -> None:
    """Print a model card (the current version unless VERSION)."""
    from models.errors import ModelError
    from models.registry import Registry

    try:
        art = Registry(registry).load(name if version is None else f"{name}@{version}")
    except ModelError as exc:
        _fail(str(exc))
    click.echo(art.card.to_json().decode())


@models.command("promote")
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1))
@_registry_option
def models_promote(name: str, version: int, registry: Path) -> None:
    """Make VERSION the current (served) version."""
    from models.errors import ModelError
    from models.registry import Registry

    try:
        Registry(registry).promote(name, version)
    except ModelError as exc:
        _fail(str(exc))
    click.echo(f"{name}@{version} is current")


@models.command("rollback")
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1), required=False)
@_registry_option
def models_rollback(name: str, version: int | None, registry: Path) -> None:
    """Go back to VERSION, or to the version current before the last promotion."""
    from models.errors import ModelError
    from models.registry import Registry

    try:
        v = Registry(registry).rollback(name, version)
    except ModelError as exc:
        _fail(str(exc))
    click.echo(f"{name}@{v} is current")


# --------------------------------------------------------------------------- broker
@cli.command()
@click.option("--port", type=click.IntRange(min=1, max=65535), default=9092, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
def broker(port: int, host: str) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, in memory) in the foreground."""
    from stream.broker import EmbeddedBroker
    from stream.errors import StreamError

    _setup_logging("INFO")
    b = EmbeddedBroker(host=host, port=port)
    try:
        b.start()
    except StreamError as exc:
        _fail(str(exc))
    click.echo(f"embedded broker on {b.bootstrap} (topics live in memory; Ctrl-C stops it)")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        b.wait()
    except KeyboardInterrupt:
        pass
    finally:
        b.stop()


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point: run the CLI, turn user errors into one line and exit code 2."""
    prog = "anomstream"
    try:
        cli.main(args=argv, prog_name=prog, standalone_mode=False)
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare group: show its help
            click.echo(exc.ctx.get_help() if exc.ctx else "", err=True)
            sys.exit(2)
        cmd = exc.ctx.command_path if exc.ctx else prog
        click.echo(f"{cmd}: error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(2)
    except click.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"{prog}: error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(2)
    except UsageFailure as exc:
        click.echo(f"{prog}: error: {' '.join(str(exc).split())}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
