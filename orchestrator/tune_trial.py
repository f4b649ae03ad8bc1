"""One Tune trial = one plain two-stage search, reporting through Tune.

:func:`make_trainable` returns the function trainable the Tuner runs.  A trial builds its
:class:`istanas.ista.twostage.TwoStageConfig` (preset < ``sweep.search`` < the values Optuna sampled), restores the
search state from Tune's checkpoint when the trial is resumed, and calls ``search(cfg, report=..., checkpoint=...,
resume=...)``.  The search calls ``checkpoint(state)`` and then ``report(metrics)`` once per epoch; the adapter
turns each pair into one ``tune.report(metrics, checkpoint=Checkpoint)`` (the state saved with
:func:`istanas.checkpoint.save`, every ``checkpoint_every`` epochs).

Every epoch's report carries the current genotype when the search's metrics hold one (``genotype`` JSON and its
``genotype_digest``).  The last epoch's report (its checkpoint state says ``done``) is held back and merged with the
search's result, so that the trial's final report carries the final genotype, ``search_done = 1`` and the
objective: the searcher and the post-processing actor read it from the trial's last result, and ASHA cannot stop a
trial between its last epoch and its genotype.  A non-finite loss in the metrics (training or validation) raises
``NonFiniteLossError``.  Every report carries ``objective`` (the searcher's
metric): the validation accuracy for ``objective: val_acc``; for ``objective: tenas`` NaN until the final report,
which carries the TE-NAS score of the genotype.  A search that raises (e.g. a NaN loss,
``istanas.engine.NonFiniteLossError``) ends the trial as an error with that reason; the sweep goes on.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from typing import Any, Callable, Mapping, Optional

from .sweep_config import SweepConfig, build_search_config, build_tenas_config

STATE_FILE = "search_state.pt"
SearchFn = Callable[..., dict]


# --------------------------------------------------------------------------------------------------- genotypes
def genotype_record(genotype: Any) -> tuple[Optional[str], Optional[str]]:
    """(canonical JSON text, 12-hex digest) of a genotype object, a JSON-able dict, or JSON text."""
    if genotype is None:
        return None, None
    if hasattr(genotype, "to_json") and hasattr(genotype, "digest"):
        return genotype.to_json(), genotype.digest()
    if isinstance(genotype, str):
        try:
            genotype = json.loads(genotype)
        except json.JSONDecodeError:
            text = genotype
            return text, hashlib.sha256(text.encode()).hexdigest()[:12]
    if hasattr(genotype, "to_dict"):
        genotype = genotype.to_dict()
    text = json.dumps(genotype, sort_keys=True, separators=(",", ":"))
    try:  # the project's own digest when the spaces package can parse it (same hash as Genotype.digest)
        from spaces.genotype import load_genotype

        g = load_genotype(text)
        return g.to_json(), g.digest()
    except Exception:
        return text, hashlib.sha256(text.encode()).hexdigest()[:12]


def tenas_score(genotype: Any, sweep: SweepConfig, search_cfg: Any) -> dict[str, float]:
    """TE-NAS indicators of the found genotype and the scalar objective ``log R - log kappa`` (higher is better:
    few-regions / ill-conditioned networks score low), on images of the search's own data."""
    import torch

    from istanas.data import get_loaders
    from istanas.tenas.search import score_genotype

    if isinstance(genotype, (str, dict)):
        from spaces.genotype import load_genotype

        genotype = load_genotype(genotype if isinstance(genotype, str) else json.dumps(genotype))
    loaders = get_loaders(search_cfg.data, "search", seed=int(getattr(search_cfg, "seed", 0)))
    tcfg = build_tenas_config(sweep, image_size=loaders.image_size, num_classes=loaders.num_classes)
    need = max(int(tcfg.ntk_batch or 14), 32)
    xs = []
    for x, _ in loaders.train:
        xs.append(x.float().cpu())
        if sum(t.shape[0] for t in xs) >= need:
            break
    images = torch.cat(xs)[:max(need, 64)]
    s = score_genotype(genotype, images, tcfg)
    kappa, regions = float(s["ntk_cond"]), float(s["linear_regions"])
    score = math.log(max(regions, 1e-12)) - math.log(max(kappa, 1e-12))
    return {"tenas_ntk_cond": kappa, "tenas_linear_regions": regions, "tenas_score": score}


# ------------------------------------------------------------------------------------------------ reporting
def _scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Numbers (floats, ints, bools as 0/1) and strings of a metrics dict; anything else is dropped."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            out[k] = int(v)
        elif isinstance(v, (int, float, str)):
            out[k] = v
        elif hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
            out[k] = v.item()
    return out


class TrialReporter:
    """The search's ``checkpoint`` and ``report`` hooks, turned into ``tune.report`` calls (see module doc)."""

    def __init__(self, sweep: SweepConfig, report_fn: Optional[Callable] = None,
                 checkpoint_cls: Optional[Any] = None):
        if report_fn is None or checkpoint_cls is None:
            from ray import tune

            report_fn = report_fn or tune.report
            checkpoint_cls = checkpoint_cls or tune.Checkpoint
        self.sweep = sweep
        self._report = report_fn
        self._ckpt_cls = checkpoint_cls
        self._state: Optional[dict] = None
        self._held: Optional[tuple[dict, Optional[dict]]] = None
        self.last: dict[str, Any] = {}
        self.reports = 0

    def checkpoint(self, state: dict) -> None:
        self._state = state

    def report(self, metrics: dict) -> None:
        from istanas.engine import check_finite

        state, self._state = self._state, None
        m = _scalar_metrics(metrics)
        # a NaN validation loss ends the trial as well (the engine checks the training loss)
        check_finite(m, f"search epoch {m.get('epoch', '?')}")
        if m.get("genotype"):
            m["genotype"], m["genotype_digest"] = genotype_record(m["genotype"])
        self.last = m
        if state is not None and state.get("done"):
            self._held = (m, state)  # the final report adds the genotype (see finish)
            return
        every = self.sweep.checkpoint_every
        epoch = int(m.get("epoch", 0) or 0)
        keep = state if state is not None and (epoch % every == 0) else None
        self._emit({**m, "search_done": 0, "objective": self._objective(m)}, keep)

    def _objective(self, m: Mapping[str, Any]) -> float:
        if self.sweep.objective == "val_acc":
            v = m.get("val_acc")
            return float(v) if isinstance(v, (int, float)) else float("nan")
        return float("nan")

    def _emit(self, metrics: dict, state: Optional[dict]) -> None:
        self.reports += 1
        if state is None:
            self._report(metrics)
            return
        from istanas.checkpoint import save

        with tempfile.TemporaryDirectory(prefix="istanas-ckpt-") as d:
            save(state, os.path.join(d, STATE_FILE))
            self._report(metrics, checkpoint=self._ckpt_cls.from_directory(d))

    def finish(self, result: Mapping[str, Any], search_cfg: Any, wall_s: float,
               node_id: Optional[str] = None) -> dict:
        """The final report: the last epoch's metrics + the search's ``final`` + genotype + objective."""
        held_m, held_state = self._held if self._held is not None else (None, None)
        history = list(result.get("history") or [])
        m = dict(held_m or (_scalar_metrics(history[-1]) if history else self.last))
        m.update({f"final_{k}" if k in m else k: v for k, v in _scalar_metrics(result.get("final") or {}).items()})
        text, digest = genotype_record(result.get("genotype"))
        m["genotype"] = text or ""
        m["genotype_digest"] = digest or ""
        m["search_done"] = 1
        m["search_epochs"] = len(history)
        m["search_session_s"] = float(wall_s)
        if node_id:
            m["node_id"] = node_id
        if self.sweep.objective == "tenas" and text:
            m.update(tenas_score(text, self.sweep, search_cfg))
            m["objective"] = m["tenas_score"]
        else:
            m["objective"] = self._objective(m)
        self._emit(m, held_state)
        return m


def _node_id() -> Optional[str]:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:
        return None


def _load_resume() -> Optional[dict]:
    from ray import tune

    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return None
    from istanas.checkpoint import load

    with ckpt.as_directory() as d:
        path = os.path.join(d, STATE_FILE)
        return load(path) if os.path.isfile(path) else None


def default_search_fn(method: str) -> SearchFn:
    """The plain search function of ``method`` (``twostage`` -> :func:`istanas.ista.twostage.search`)."""
    if method == "twostage":
        from istanas.ista.twostage import search

        return search
    raise ValueError(f"method: unknown method {method!r}")


def run_trial(config: dict, sweep_dict: dict, search_fn: Optional[SearchFn] = None) -> dict:
    """Body of one trial (runs in a Tune worker): build the config, resume, search, report."""
    import torch

    sweep = SweepConfig.from_dict(sweep_dict)
    threads = max(1, int(sweep.resources_per_trial.cpu))
    torch.set_num_threads(threads)
    search_cfg = build_search_config(sweep, config, validate=True)
    fn = search_fn or default_search_fn(sweep.method)
    reporter = TrialReporter(sweep)
    resume = _load_resume()
    t0 = time.perf_counter()
    result = fn(search_cfg, report=reporter.report, checkpoint=reporter.checkpoint, resume=resume,
                progress=False)
    return reporter.finish(result, search_cfg, time.perf_counter() - t0, node_id=_node_id())


def make_trainable(sweep: SweepConfig, search_fn: Optional[SearchFn] = None) -> Callable[[dict], None]:
    """The function trainable of ``sweep``: ``istanas_trial(config)``.  ``search_fn`` replaces the method's
    search function (same signature as :func:`istanas.ista.twostage.search`; e.g. a short stand-in for orchestration
    benchmarks); it must be importable or picklable by value on the workers."""
    sweep_dict = sweep.to_dict()

    def istanas_trial(config: dict) -> None:
        run_trial(config, sweep_dict, search_fn)

    return istanas_trial


__all__ = ["make_trainable", "run_trial", "TrialReporter", "genotype_record", "tenas_score", "default_search_fn",
           "STATE_FILE"]
