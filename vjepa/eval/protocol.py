"""The probe protocol of the experiment table: numbers that can be compared across encoders.

- **Held-out selection.** For every probe seed the labelled train set is split (seeded) into a fit part and a
  held-out part (`heldout_fraction`, default 20%). Every candidate head (a logistic-regression C, a k of the
  k-NN, an (lr, wd) attentive head, and with `attentive_select_epochs` the same head after fewer epochs) is trained
  on the fit part; per label the candidate with the best held-out top-1 is chosen (`select_heads`), and only that
  head is evaluated on the validation split. The validation split never reaches training or selection.
- **Families**, on token features [N, L, D] extracted once per encoder (`extract_features`): `linear`
  (standardised logistic regression on mean-pooled tokens, `vjepa.eval.linear.fit_linear`), `knn` (cosine
  k-NN on mean-pooled tokens, `vjepa.eval.knn.knn_predict`) and `attentive` (the head grid of
  `vjepa.eval.probe`, trained with `train_heads` on the cached tokens).
- **Seeds.** A probe seed sets the fit / held-out split, the shuffle order and the head initialisation. Each
  (family, label) reports the mean over seeds and its standard error (`mean_se`), the validation size and the
  binomial standard error of an accuracy at the mean on that many items (`binomial_se`): the val split's own
  sampling noise, which no number of seeds removes.
- **Baselines.** `probe_encoders` runs every encoder on the same decoded clips (`ClipSet`: each loader is
  decoded once); the experiment adds a random-init encoder and `vjepa.eval.baselines.PixelEncoder` rows.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from vjepa.eval.probe import (
    FeatureStore,
    ProbeSettings,
    cached_batches,
    extract,
    head_threads,
    normalize_tokens,
    predict_views,
    train_heads,
)

log = logging.getLogger(__name__)

FAMILIES = ("linear", "knn", "attentive")


@dataclass
class ProtocolSettings:
    families: tuple = FAMILIES
    seeds: int = 3                     # probe seeds: seed, seed + 1, ...
    seed: int = 0
    heldout_fraction: float = 0.2      # of the labelled train set, to choose heads on
    linear_cs: tuple = (0.01, 0.1, 1.0)
    linear_max_iter: int = 1000
    knn_ks: tuple = (5, 20)
    knn_temperature: float = 0.07
    attentive: ProbeSettings = field(default_factory=lambda: ProbeSettings(depth=1, epochs=45, lrs=(1e-3, 3e-3, 1e-2),
                                                                           wds=(0.01,)))
    # attentive: the heads are also candidates at these epochs (besides the last), so the held-out part chooses the
    # training length like it chooses the learning rate (early stopping on held-out, never on val); None: after a
    # third and two thirds of the epochs; (): the last epoch only
    attentive_select_epochs: tuple | None = None
    feature_dtype: str = "float16"     # the cached tokens
    # attentive probe seeds trained at once, in Python threads (each grid runs on `attentive.cpu_threads` torch
    # threads; the numbers are those of running the seeds one by one): the heads' small ops leave cores idle.
    # 3 seeds on 2 cores: 24.5 s one by one, 14.1 s two at a time, 12.7 s all three (quiet machine)
    seed_workers: int = 3

    def check(self) -> None:
        """Each error starts with the field it names (the experiment prefixes `experiment.probe.`)."""
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ValueError(f"families: {list(self.families)} (each one of {list(FAMILIES)})")
        if self.seeds < 1:
            raise ValueError(f"seeds: {self.seeds} is not >= 1")
        if self.seed_workers < 1:
            raise ValueError(f"seed_workers: {self.seed_workers} is not >= 1")
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction: {self.heldout_fraction} is not in (0, 1)")
        if not self.linear_cs or not self.knn_ks:
            raise ValueError("linear_cs / knn_ks: give at least one value")
        try:
            self.attentive.check()
        except ValueError as e:
            raise ValueError(f"depth/epochs/batch_size/lrs/wds: {e}") from None
        bad = [e for e in self.attentive_select_epochs or () if not 1 <= int(e) <= self.attentive.epochs]
        if bad:
            raise ValueError(f"select_epochs: {bad} not within 1..epochs ({self.attentive.epochs})")
        if self.attentive.augment:
            raise ValueError("augment: the protocol probes cached features, attentive augment must be false")

    def candidate_epochs(self) -> list[int]:
        """The epochs at which the attentive heads are candidates: the chosen ones and the last."""
        last = self.attentive.epochs
        chosen = self.attentive_select_epochs
        if chosen is None:
            chosen = [max(1, round(last * k / 3)) for k in (1, 2)]
        return sorted({int(e) for e in chosen} | {last})

    def describe(self) -> dict:
        """What a table's reader needs to know (json-ready)."""
        a = self.attentive
        return {"families": list(self.families), "seeds": self.seeds, "seed": self.seed,
                "heldout_fraction": self.heldout_fraction,
                "selection": f"per label, the head with the best top-1 on a held-out {self.heldout_fraction:.0%} of "
                             "train (fit on the rest); only that head is evaluated on val",
                "linear": {"cs": list(self.linear_cs), "max_iter": self.linear_max_iter, "features": "mean-pooled"},
                "knn": {"ks": list(self.knn_ks), "temperature": self.knn_temperature, "features": "mean-pooled"},
                "attentive": {"depth": a.depth, "num_heads": a.num_heads, "epochs": a.epochs,
                              "select_epochs": self.candidate_epochs(),
                              "batch_size": a.batch_size, "lrs": list(a.lrs), "wds": list(a.wds)},
                "feature_dtype": self.feature_dtype}


# ---- statistics -------------------------------------------------------------------------------------------------

def mean_se(values) -> tuple[float, float]:
    """(mean, standard error of the mean) = (mean, sample std with ddof=1 / sqrt(n)); the SE is nan for n = 1."""
    x = np.asarray(list(values), dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan")
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")
    return float(x.mean()), se


def binomial_se(top1: float, n: int) -> float:
    """Standard error, in points, of an accuracy of `top1` % measured on n items: 100 sqrt(p (1 - p) / n)."""
    if not n or math.isnan(top1):
        return float("nan")
    p = min(max(top1 / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1 - p) / n)


def top1(pred: torch.Tensor, y: torch.Tensor) -> float:
    """% of the labelled (y >= 0) items whose prediction is right; nan without any."""
    y = torch.as_tensor(y)
    keep = y >= 0
    if not keep.any():
        return float("nan")
    return float((torch.as_tensor(pred)[keep] == y[keep]).double().mean() * 100)


def heldout_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit rows, held-out rows) of n items, both sorted: a seeded random round(fraction * n) rows (at least 1,
    at most n - 1) are held out. Disjoint, together all of range(n)."""
    if n < 2:
        raise ValueError(f"a fit / held-out split needs at least 2 items, got {n}")
    k = min(max(int(round(fraction * n)), 1), n - 1)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    return order[k:].sort().values, order[:k].sort().values


def select_best(scores) -> int:
    """Index of the highest score (the first on ties; a nan never wins unless all are nan, then 0)."""
    s = [(-math.inf if math.isnan(v) else v) for v in scores]
    return max(range(len(s)), key=lambda i: (s[i], -i))


# ---- features ---------------------------------------------------------------------------------------------------

@dataclass
class Features:
    """Tokens [N, L, D] (kept in float16 by default) and labels {name: [N]} (-1 = missing)."""
    tokens: torch.Tensor
    labels: dict
    _pooled: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.tokens)

    def pooled(self) -> torch.Tensor:
        """Mean over the tokens, float32 [N, D] (computed once)."""
        if self._pooled is None:
            self._pooled = torch.cat([c.float().mean(dim=1) for c in self.tokens.split(256)]) if len(self) else \
                self.tokens.new_zeros((0, self.tokens.shape[-1]), dtype=torch.float32)
        return self._pooled

    def label(self, name: str) -> torch.Tensor:
        return self.labels[name] if name in self.labels else torch.full((len(self),), -1, dtype=torch.long)

    def subset(self, rows: torch.Tensor) -> "Features":
        rows = torch.as_tensor(rows, dtype=torch.long)
        return Features(self.tokens[rows], {n: y[rows] for n, y in self.labels.items()},
                        None if self._pooled is None else self._pooled[rows])


class ClipSet:
    """A loader's batches decoded once and kept in memory, to feed several encoders: uint8 when the loader can
    hand them out so (a `ClipLoader`: normalised again, exactly as it does, for every pass), else as given.
    Iterates like the loader ({"video", "labels", "index"} batches on `device`)."""

    def __init__(self, loader, device=None):
        self.device = torch.device(device) if device is not None else getattr(loader, "device", torch.device("cpu"))
        raw = getattr(loader, "normalize", None) is True
        if raw:
            loader.normalize = False
        self.batches, offset = [], 0
        try:
            for batch in loader:
                video = batch["video"]
                video = [v.cpu() for v in video] if isinstance(video, (list, tuple)) else video.cpu()
                n = len(video[0] if isinstance(video, list) else video)
                index = batch.get("index", torch.arange(offset, offset + n))
                self.batches.append({"video": video, "labels": {k: torch.as_tensor(v).cpu() for k, v in
                                                                batch["labels"].items()},
                                     "index": torch.as_tensor(index).cpu()})
                offset += n
        finally:
            if raw:
                loader.normalize = True
        self.uint8 = raw
        dataset = getattr(loader, "dataset", None)
        self.num_items = len(dataset) if dataset is not None else offset
        if not self.batches:
            raise ValueError("the loader gave no batch")

    def __len__(self) -> int:
        return len(self.batches)

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for b in self.batches
                   for v in (b["video"] if isinstance(b["video"], list) else [b["video"]]))

    def _video(self, v: torch.Tensor) -> torch.Tensor:
        v = v.to(self.device, non_blocking=True)
        if self.uint8:
            from data.transforms import normalize

            v = normalize(v)
        return v

    def __iter__(self):
        for b in self.batches:
            video = [self._video(v) for v in b["video"]] if isinstance(b["video"], list) else self._video(b["video"])
            yield {"video": video, "labels": b["labels"], "index": b["index"]}


def extract_features(encoder, clips, device: torch.device, dtype: str = "float16") -> Features:
    """The frozen encoder over every clip once (one view, one segment): Features with the tokens in `dtype`,
    rows ordered by the items' dataset index (items the loader skipped are left out)."""
    encoder = encoder.to(device).eval()
    store = extract(encoder, clips, ProbeSettings(num_segments=1, num_views=1, cache_dtype=dtype), device, 1)
    rows = store.indices()
    tokens = store.data[:, 0] if len(rows) == store.num_items else store.data[rows, 0]
    return Features(tokens, {n: y[rows] for n, y in store.labels.items()})


# ---- families: fit on the fit part, predict any part ------------------------------------------------------------

class _Constant:
    def __init__(self, value: int):
        self.value = value

    def predict(self, x):
        return np.full(len(x), self.value)


class LinearFit:
    """One standardised logistic regression per (label, C) on mean-pooled tokens."""

    def __init__(self, fit: Features, settings: ProtocolSettings):
        from sklearn.exceptions import ConvergenceWarning

        from vjepa.eval.linear import fit_linear

        self.candidates = [{"c": float(c)} for c in settings.linear_cs]
        x = fit.pooled().numpy()
        self.models = {}
        for name, y in fit.labels.items():
            keep = (y >= 0).numpy()
            yk = y.numpy()[keep]
            if len(np.unique(yk)) < 2:  # one class (or none) to learn: predict it
                self.models[name] = [_Constant(int(yk[0]) if len(yk) else 0) for _ in self.candidates]
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                self.models[name] = [fit_linear(x[keep], yk, c["c"], settings.linear_max_iter)
                                     for c in self.candidates]

    def predict(self, feats: Features, heads: dict | None = None) -> dict:
        x = feats.pooled().numpy()
        if heads is not None:
            return {n: torch.as_tensor(self.models[n][i].predict(x)) for n, i in heads.items()}
        return {n: torch.stack([torch.as_tensor(m.predict(x)) for m in ms]) for n, ms in self.models.items()}


class KnnFit:
    """Cosine k-NN (exp(sim / T)-weighted votes) over the fit part's mean-pooled tokens, one candidate per k."""

    def __init__(self, fit: Features, settings: ProtocolSettings):
        self.candidates = [{"k": int(k)} for k in settings.knn_ks]
        self.temperature = settings.knn_temperature
        self.x, self.labels = fit.pooled(), fit.labels

    def _predict(self, name: str, x: torch.Tensor, k: int) -> torch.Tensor:
        from vjepa.eval.knn import knn_predict

        if not (self.labels[name] >= 0).any():  # no labelled fit row: nothing to vote
            return torch.zeros(len(x), dtype=torch.long)
        return knn_predict(self.x, self.labels[name], x, k, self.temperature)

    def predict(self, feats: Features, heads: dict | None = None) -> dict:
        x = feats.pooled()
        if heads is not None:
            return {n: self._predict(n, x, self.candidates[i]["k"]) for n, i in heads.items()}
        return {n: torch.stack([self._predict(n, x, c["k"]) for c in self.candidates]) for n in self.labels}


class AttentiveFit:
    """The head grid of vjepa.eval.probe (one attentive head per (label, lr, wd), trained together) on the fit
    part's cached tokens; `settings.seed` sets the heads' initialisation and the shuffle order. With `epochs`
    (sorted, the last = settings.epochs) the grid's weights after each of those epochs are kept, and every
    (lr, wd, epoch) is a candidate: the held-out part chooses how long the heads train."""

    def __init__(self, fit: Features, num_classes: dict[str, int], settings: ProbeSettings, device: torch.device,
                 timing: dict | None = None, epochs: list[int] | None = None):
        self.settings, self.device = settings, device
        self.epochs = list(epochs or [settings.epochs])
        if self.epochs[-1] != settings.epochs or self.epochs != sorted(set(self.epochs)):
            raise ValueError(f"candidate epochs {self.epochs} must be increasing and end at {settings.epochs}")
        self.candidates = [{"lr": lr, "wd": wd, **({"epoch": e} if len(self.epochs) > 1 else {})}
                           for e in self.epochs for lr, wd in settings.grid]
        self.snapshots: list[dict] = []  # the heads' weights at each candidate epoch (a few MB each)

        def keep(done: int, grid) -> None:
            if done in self.epochs:
                self.snapshots.append({k: v.detach().clone() for k, v in grid.heads.state_dict().items()})

        store = FeatureStore.of(fit.tokens.unsqueeze(1), fit.labels)  # [N, 1 view, L, D], not copied
        gen = torch.Generator().manual_seed(settings.seed)
        steps = math.ceil(len(fit) / settings.batch_size)
        self.grid, self.losses = train_heads(lambda epoch: cached_batches(store, settings.batch_size, gen), steps,
                                             fit.tokens.shape[-1], num_classes, settings, device, timing, keep)
        self.grid.eval()

    def _batches(self, feats: Features):
        step = 4 * self.settings.batch_size
        for i in range(0, len(feats), step):
            yield feats.tokens[i:i + step].unsqueeze(1).to(self.device).float()  # [B, 1, L, D]

    @torch.no_grad()
    def predict(self, feats: Features, heads: dict | None = None) -> dict:
        """Predictions of every candidate ({label: [candidates, N]}), or of the candidate `heads[label]` of each
        label ({label: [N]})."""
        per_grid = len(self.settings.grid)
        out = {}
        with head_threads(self.settings, self.device):
            for k, snapshot in enumerate(self.snapshots):
                wanted = {n: i % per_grid for n, i in (heads or {}).items() if i // per_grid == k}
                if heads is not None and not wanted:
                    continue
                self.grid.heads.load_state_dict(snapshot)
                for x in self._batches(feats):
                    if heads is None:
                        for n, p in self.grid.predict(x).items():  # [heads of the grid, B, C]
                            out.setdefault(n, {}).setdefault(k, []).append(p.argmax(dim=-1).cpu())
                        continue
                    x_hat = normalize_tokens(x.flatten(0, 1), self.grid.eps).unflatten(0, x.shape[:2])
                    for n, i in wanted.items():
                        pred = predict_views(self.grid.heads[n][i], x, x_hat).argmax(dim=-1).cpu()
                        out.setdefault(n, {}).setdefault(k, []).append(pred)
        if heads is not None:
            return {n: torch.cat(next(iter(parts.values()))) for n, parts in out.items()}
        return {n: torch.cat([torch.cat(parts[k], dim=-1) for k in sorted(parts)]) for n, parts in out.items()}


# ---- the protocol -----------------------------------------------------------------------------------------------

def select_heads(fitted, heldout: Features) -> dict[str, dict]:
    """The selection: {label: {"index": the candidate with the best top-1 on the held-out rows, "heldout_top1":
    every candidate's}}. It sees the fitted candidates and the held-out rows only."""
    chosen = {}
    for name, preds in fitted.predict(heldout).items():
        scores = [top1(p, heldout.label(name)) for p in preds]
        chosen[name] = {"index": select_best(scores), "heldout_top1": scores}
    return chosen


def fit_family(family: str, fit: Features, seed: int, settings: ProtocolSettings, device: torch.device,
               num_classes: dict[str, int], num_heads: int, timing: dict | None = None):
    """A family's candidate heads trained on the fit rows only."""
    if family == "linear":
        return LinearFit(fit, settings)
    if family == "knn":
        return KnnFit(fit, settings)
    if family == "attentive":
        probe = replace(settings.attentive, seed=seed, num_heads=settings.attentive.num_heads or num_heads)
        return AttentiveFit(fit, num_classes, probe, device, timing, settings.candidate_epochs())
    raise ValueError(f"probe family {family!r} is not one of {list(FAMILIES)}")


def probe_seed(family: str, train: Features, val: Features, seed: int, settings: ProtocolSettings,
               device: torch.device, num_classes: dict[str, int], num_heads: int = 1,
               timing: dict | None = None) -> dict[str, dict]:
    """One seed of one family: split train (seeded), fit on the fit part, choose per label on the held-out part,
    evaluate the chosen head on val. {label: {"top1" (val), "chosen" (its hyperparameters), "heldout_top1"}}."""
    fit_rows, held_rows = heldout_split(len(train), settings.heldout_fraction, seed)
    fitted = fit_family(family, train.subset(fit_rows), seed, settings, device, num_classes, num_heads, timing)
    chosen = select_heads(fitted, train.subset(held_rows))
    val_pred = fitted.predict(val, {n: c["index"] for n, c in chosen.items()})  # only the chosen heads see val
    return {n: {"top1": top1(val_pred[n], val.label(n)), "chosen": fitted.candidates[c["index"]],
                "heldout_top1": c["heldout_top1"][c["index"]]} for n, c in chosen.items()}


def _r(v: float, nd: int = 4) -> float:
    return v if math.isnan(v) else round(v, nd)


def run_protocol(train: Features, val: Features, settings: ProtocolSettings, device: torch.device | None = None,
                 num_heads: int = 1, timing: dict | None = None) -> dict:
    """Every family x seed on ready features. {family: {label: {"mean", "se", "seeds": [val top-1 per seed],
    "n_val", "binomial_se", "chosen": [per seed], "heldout_top1": [per seed]}}} (accuracies in %)."""
    settings.check()
    device = device or torch.device("cpu")
    timing = timing if timing is not None else {}
    # class counts from the train labels only (the val split stays out of everything but the final evaluation)
    num_classes = {n: int(y.max()) + 1 for n, y in sorted(train.labels.items()) if (y >= 0).any()}
    if not num_classes:
        raise ValueError("the train features have no labels to probe")
    train = Features(train.tokens, {n: train.labels[n] for n in num_classes}, train._pooled)
    if {"linear", "knn"} & set(settings.families):  # mean-pooled once; the parts slice it
        train.pooled(), val.pooled()
    results = {}
    for family in settings.families:
        t = time.perf_counter()

        def one_seed(i: int, family: str = family) -> dict:
            return probe_seed(family, train, val, settings.seed + i, settings, device, num_classes, num_heads)

        workers = min(settings.seed_workers, settings.seeds) if family == "attentive" else 1
        if workers > 1:
            # the head grids' steps are small torch ops that release the GIL: seeds in threads fill the cores
            with head_threads(settings.attentive, device), ThreadPoolExecutor(workers) as pool:
                runs = list(pool.map(one_seed, range(settings.seeds)))
        else:
            runs = [one_seed(i) for i in range(settings.seeds)]
        timing[f"{family}_s"] = timing.get(f"{family}_s", 0.0) + time.perf_counter() - t
        out = {}
        for name in num_classes:
            accs = [r[name]["top1"] for r in runs]
            mean, se = mean_se(accs)
            n_val = int((val.label(name) >= 0).sum())
            out[name] = {"mean": _r(mean), "se": _r(se), "seeds": [_r(a) for a in accs], "n_val": n_val,
                         "binomial_se": _r(binomial_se(mean, n_val)), "chosen": [r[name]["chosen"] for r in runs],
                         "heldout_top1": [_r(r[name]["heldout_top1"]) for r in runs]}
        results[family] = out
    return results


def probe_encoders(encoders: dict, train_loader, val_loader, settings: ProtocolSettings, device: torch.device,
                   timing: dict | None = None) -> dict:
    """{row: run_protocol(...)} for every encoder (a module, or a function that builds one), on clips decoded
    once (`ClipSet`) and features extracted once per encoder (train and val) and shared by every family and
    seed. `timing` gets {row: {"extract_s", "<family>_s"}, "decode_s"}."""
    settings.check()
    timing = timing if timing is not None else {}
    t = time.perf_counter()
    train_clips, val_clips = ClipSet(train_loader), ClipSet(val_loader)
    timing["decode_s"] = time.perf_counter() - t
    log.info("probe clips decoded once: %d train / %d val batches, %.0f MB, %.1f s", len(train_clips),
             len(val_clips), (train_clips.nbytes() + val_clips.nbytes()) / 2**20, timing["decode_s"])
    results = {}
    for name, encoder in encoders.items():
        row_timing = timing.setdefault(name, {})
        t = time.perf_counter()
        encoder = encoder if isinstance(encoder, torch.nn.Module) else encoder()
        train = extract_features(encoder, train_clips, device, settings.feature_dtype)
        val = extract_features(encoder, val_clips, device, settings.feature_dtype)
        heads = getattr(encoder, "num_heads", None) or 1
        encoder = encoder.cpu()
        row_timing["extract_s"] = time.perf_counter() - t
        results[name] = run_protocol(train, val, settings, device, heads, row_timing)
        log.info("probe %s: %s (%s)", name, {f: {n: f"{r['mean']:.1f}±{r['se']:.1f}" for n, r in labels.items()}
                                             for f, labels in results[name].items()},
                 {k: round(v, 1) for k, v in row_timing.items()})
        del encoder, train, val
    return results


# ---- the table --------------------------------------------------------------------------------------------------

ROW_NAMES = {"random-init": "random-init", "raw-pixels": "raw pixels"}


def _cell(r: dict | None) -> str:
    if not r or r.get("mean") is None or math.isnan(r["mean"]):
        return "-"
    se = r.get("se")
    return f"{r['mean']:.1f} ± {se:.1f}" if se is not None and not math.isnan(se) else f"{r['mean']:.1f} ± -"


def format_tables(probe: dict, settings: dict | None = None) -> list[str]:
    """One table per family: rows = the encoders in `probe`'s order (random-init, raw pixels, the stages),
    columns = labels as `mean ± se` (val top-1 %), under a header that says how heads were chosen."""
    settings = settings or {}
    families = [f for f in FAMILIES if any(f in row for row in probe.values())]
    frac = settings.get("heldout_fraction", 0.2)
    lines = []
    for family in families:
        labels = sorted({n for row in probe.values() for n in row.get(family, {})})
        cells = {model: row.get(family, {}) for model, row in probe.items()}
        seeds = max((len(r.get("seeds", [])) for c in cells.values() for r in c.values()), default=0)
        n_val = {n: next((c[n]["n_val"] for c in cells.values() if n in c), None) for n in labels}
        noise = [c[n].get("binomial_se") for c in cells.values() for n in c if c[n].get("binomial_se") is not None]
        noise = [v for v in noise if not math.isnan(v)]
        lines += ["", f"{family} probe: val top-1 % (mean ± se over {seeds} seed{'s' * (seeds != 1)}); "
                      f"heads chosen on a held-out {frac:.0%} of train, never on val",
                  "n_val " + ", ".join(f"{n} {v}" for n, v in n_val.items())
                  + (f"; val sampling noise (binomial se) up to {max(noise):.1f} points" if noise else "")]
        width = max([14] + [len(label) + 2 for label in labels])
        lines.append("encoder".ljust(14) + "".join(f"{label:>{width}}" for label in labels))
        for model, c in cells.items():
            lines.append(f"{ROW_NAMES.get(model, model):<14}"
                         + "".join(f"{_cell(c.get(label)):>{width}}" for label in labels))
    return lines


def family_means(probe_row: dict, family: str = "attentive") -> dict[str, float]:
    """{label: mean val top-1 %} of one row of `probe_encoders`' results for one family."""
    return {name: r["mean"] for name, r in probe_row.get(family, {}).items()}
