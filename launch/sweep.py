#!/usr/bin/env python
"""Ray Tune + Optuna sweep over two-stage ISTA-NAS searches, then retraining of the top-k genotypes.

With no arguments: a small real sweep (6 two-stage searches on scikit-learn's digits, 2 at a time, ASHA, the two
best distinct genotypes retrained over 2 seeds) on an embedded local Ray; it ends with the path of the results
table and the best genotype.  Everything lands in STORAGE/NAME (default runs/sweeps/istanas-sweep): Tune's
experiment (trial checkpoints, searcher state), results/sweep_results.{csv,parquet}, results/report.{md,html}.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import yaml

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # run from a checkout without installation
    sys.path.insert(0, _ROOT)

from istanas import cli  # noqa: E402
from istanas.config import ConfigError, read_yaml  # noqa: E402
from orchestrator.sweep import load_saved_config, run_sweep  # noqa: E402
from orchestrator.sweep_config import OBJECTIVES, SweepConfig, load_sweep_config  # noqa: E402

# Keys that may change when a sweep is resumed (how and where it runs, and the post-processing); the search
# space, objective and search settings are the experiment's own.
RESUMABLE_KEYS = ("address", "num_cpus", "num_gpus", "dashboard", "dashboard_host", "dashboard_port", "verbose",
                  "retrain", "results_dir", "max_failures", "unplaceable_timeout_s")

EPILOG = """\
precedence: built-in defaults < --config YAML < the flags above < --set KEY=VALUE (dotted keys, YAML values).

examples:
  # the small default sweep on a local Ray (dashboard on http://127.0.0.1:8265)
  python launch/sweep.py
  # a bigger sweep from a YAML file, 4 trials at a time, each on half a GPU
  python launch/sweep.py --config configs/sweep.yaml --num-samples 32 --max-concurrent 4 \\
      --set resources_per_trial.gpu=0.5 --set search.data.dataset=cifar10
  # change a range, search m_j per node, also search the learning rates
  python launch/sweep.py --set space.lam.low=1e-6 --set space.m_per_node=true \\
      --set space.lr='{low: 0.01, high: 0.1}'
  # on a running cluster (ray start --head ...); RAY_ADDRESS works too
  python launch/sweep.py --address auto --storage-path s3://bucket/sweeps --max-concurrent auto
  # the driver died: continue the same sweep (searcher state and trial checkpoints included)
  python launch/sweep.py --resume          # the latest sweep (or the one of --name / --storage-path)
  # rank genotypes by their TE-NAS score instead of the search's validation accuracy
  python launch/sweep.py --objective tenas
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="launch/sweep.py", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="PATH", help="YAML sweep config (see configs/sweep.yaml)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="set",
                   help="override one config value, parsed as YAML; dotted keys reach nested values "
                        "(space.lam.high=0.01, search.epochs=10, retrain.top_k=3); repeatable, applied last")
    p.add_argument("--name", help="experiment name (default: the config's, istanas-sweep)")
    p.add_argument("--storage-path", metavar="PATH_OR_URI",
                   help="where experiments live: a local folder (default runs/sweeps) or a URI (s3://, gs://, ...)")
    p.add_argument("--num-samples", type=int, metavar="N", help="number of trials (searches)")
    p.add_argument("--max-concurrent", type=_concurrency, metavar="N|auto",
                   help="trials suggested at a time (default 2); auto: twice the trials the cluster holds at once "
                        "(resources_per_trial against its CPUs / GPUs when the sweep starts), which keeps every "
                        "slot busy when trials last seconds")
    p.add_argument("--seed", type=int, metavar="N", help="seed of Optuna's TPE sampler")
    p.add_argument("--objective", choices=OBJECTIVES, help="val_acc (search validation accuracy) or tenas")
    p.add_argument("--address", help="a running Ray cluster ('auto', host:port, ray://host:port); default: "
                                     "RAY_ADDRESS, else an embedded local Ray")
    p.add_argument("--num-cpus", type=int, metavar="N", help="CPUs of the embedded local Ray (default: all)")
    p.add_argument("--resume", action="store_true",
                   help="restore the sweep NAME in STORAGE after its driver died and finish it")
    p.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard (local Ray)")
    p.add_argument("--dashboard-host", metavar="HOST",
                   help="interface the dashboard binds (default 127.0.0.1; 0.0.0.0 exposes it to the network)")
    p.add_argument("--no-progress", action="store_true", help="no Tune status tables (per-trial lines remain)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    return p


def _concurrency(text: str):
    """``--max-concurrent``: a positive integer or ``auto``."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def _explicit(args: argparse.Namespace) -> dict:
    return {"name": args.name, "storage_path": args.storage_path, "num_samples": args.num_samples,
            "max_concurrent": args.max_concurrent, "seed": args.seed, "objective": args.objective,
            "address": args.address, "num_cpus": args.num_cpus,
            "dashboard": False if args.no_dashboard else None, "dashboard_host": args.dashboard_host,
            "verbose": 0 if args.no_progress else None}


def _name_given(args: argparse.Namespace) -> bool:
    if args.name or any(s.split("=", 1)[0].strip() == "name" for s in args.set):
        return True
    if args.config:
        return "name" in read_yaml(args.config)
    return False


def _experiments(cfg: SweepConfig) -> list[str]:
    """Local experiments named ``<name>`` or ``<name>-<stamp>`` under the storage path, oldest first."""
    root = cfg.storage
    if cfg.is_uri or not os.path.isdir(root):
        return []
    found = [d for d in os.listdir(root) if (d == cfg.name or d.startswith(cfg.name + "-"))
             and os.path.isfile(os.path.join(root, d, "sweep_config.json"))]
    return sorted(found, key=lambda d: os.path.getmtime(os.path.join(root, d, "sweep_config.json")))


def resolve_config(args: argparse.Namespace) -> SweepConfig:
    """The validated config: for --resume the experiment's saved config with only runtime keys changed.

    Without a name from the user a fresh sweep whose default folder exists gets a time stamp
    (``istanas-sweep-YYYYmmdd-HHMMSS``), and ``--resume`` picks the latest such sweep, so that the bare command
    can be run again and again."""
    extra = _explicit(args)
    if not args.resume:
        cfg = load_sweep_config(args.config, args.set, extra)
        if not _name_given(args) and _experiments(cfg):
            cfg.name = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        return cfg
    probe = load_sweep_config(args.config, args.set, extra, validate=False)
    if not _name_given(args):
        found = _experiments(probe)
        if found:
            probe.name = found[-1]
            extra["name"] = found[-1]
    saved = load_saved_config(probe.storage_path, probe.name)
    if saved is None:
        raise ConfigError(f"--resume: no sweep_config.json in {probe.experiment_path}; is --name / "
                          f"--storage-path the first run's?")
    saved["storage_path"] = probe.storage_path
    original = SweepConfig.from_dict(saved).to_dict()
    merged = load_sweep_config(args.config, args.set, extra, base=saved, validate=False).to_dict()
    bad = sorted(k for k, v in merged.items()
                 if v != original.get(k) and k not in RESUMABLE_KEYS and k not in ("name", "storage_path"))
    if bad:
        raise ConfigError(f"--resume: {bad} cannot change when resuming (the search space and settings are the "
                          f"experiment's); only {list(RESUMABLE_KEYS)} can")
    cfg = SweepConfig.from_dict(merged)
    cfg.validate()
    return cfg


def _at_a_time(max_concurrent) -> str:
    return ("twice as many at a time as the cluster holds" if max_concurrent == "auto"
            else f"{max_concurrent} at a time")


def _run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    print(f"sweep {cfg.name}: {cfg.num_samples} {cfg.method} searches, {_at_a_time(cfg.max_concurrent)}, objective "
          f"{cfg.objective}, -> {cfg.experiment_path}" + (" (resuming)" if args.resume else ""), flush=True)
    out = run_sweep(cfg, resume=args.resume, validate=False)
    if out.interrupted:
        print(f"\nsweep INTERRUPTED after {out.wall_time_s:.1f} s: {out.num_trials - out.num_unfinished} of "
              f"{cfg.num_samples} trials ended ({out.num_errors} errors), {out.num_unfinished} cut short, "
              f"{out.num_not_started} not started; nothing retrained, no report", file=sys.stderr)
        print(f"partial table (true statuses): {out.partial_table}", file=sys.stderr)
        print(f"finish it with: python launch/sweep.py --resume --name {cfg.name} --storage-path "
              f"{cfg.storage_path}", file=sys.stderr)
        return 130
    print(f"\nsweep done in {out.wall_time_s:.1f} s ({out.num_trials} trials, {out.num_errors} errors)")
    print(f"results table: {out.table_csv}")
    print(f"               {out.table_parquet}")
    if out.report_md:
        print(f"report:        {out.report_md}  ({out.report_html})")
    best = out.best
    if best:
        acc = best.get("retrain_acc_mean")
        acc_s = f"retrain test acc {acc:.4f}" if isinstance(acc, float) else "not retrained"
        print(f"best genotype: trial {best['trial_id']}, digest {best['genotype_digest']}, search objective "
              f"{best['objective']:.4f}, {acc_s}")
        print(f"               {out.best_genotype_path}")
        print(best["genotype"])
    else:
        print("best genotype: none (no search finished)")
    if out.all_failed:
        reasons: dict[str, list[str]] = {}
        for tid, why in out.errors:
            reasons.setdefault(str(why), []).append(str(tid))
        print(f"error: all {out.num_trials} trials failed:", file=sys.stderr)
        for why, tids in reasons.items():
            print(f"  {len(tids)} trial(s) ({', '.join(tids[:4])}{', ...' if len(tids) > 4 else ''}): {why}",
                  file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.launch(build_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
