"""A network pretrained to read the season: does its own signal carry NAB? (issue 15)

Usage:
    python benchmarks/nab_seasonal_network.py pretrain --out PATH
        [--inputs value,seasonal_difference] [--series 2000] [--steps 3000] [--seed 0]
        [--window 64]
    python benchmarks/nab_seasonal_network.py replay --data ../shared/datasets/nab --dump DIR
        --network PATH [--network PATH ...] [--jobs 1] [--weights 0.6,1.0]

``nab_seasonal_input.py`` fed the seasonal difference ``x_t - x_{t-P}`` to the shipped weights,
which were pretrained on values only: alone it scored 60.59 on NAB (the value: 59.29), far
below the jump and level signals (67.11). Its docstring leaves open whether a network
*pretrained* to read the season does better. This script answers that:

``pretrain`` makes a network whose input per step has several channels (``--inputs``, any of
:data:`INPUTS`), with the shipped architecture sizes and ``streamvgan.pretrain``'s corpus,
engine replay and :class:`~streamvgan.engine.training.Trainer`. Each corpus series is replayed
through a one-channel engine exactly as ``streamvgan pretrain`` does (its normalised value and
learning weight per step, the ``value`` channel), and the other channels are computed from
the raw values the way the NAB replay computes them: the season P found online (the engine's
``find_season`` over the last 600 values, at ``season_search_due``), the difference normalised
by its own running mean and sd (``nab_seasonal_input._difference_inputs``), and 0 until a
season is found. So training reads what inference reads. ``--window`` is the length of the
training windows (``EngineConfig.window``, 64 by default, of which the first
``EngineConfig.burn_in`` = 16 steps only warm the GRU state): the windows drawn from each
replayed series for training, and from the held-out series for the forecast ratio, have that
many steps; the corpus replay (normalisation, learning weights) is the same whatever the
window, and a series shorter than the window gives none. The weights file's manifest records
the inputs and the window; the file is written where ``--out`` says (not in the package).

``replay`` runs each network over every NAB file of a ``signals=model`` dump (made by
``nab_signal_replay.py dump --params '{"signals": ["model"]}'``), without fine-tuning, beside
the control arm (the shipped weights reading the value: ``nab_seasonal_input.py``'s "value"
arm). The model signal is the engine's (surprise + reconstruction) / 2, each summed over the
channels (as the network's reconstruction error is); the rows "<channel> only" use the
surprise and reconstruction error of one channel. Each is calibrated as the engine calibrates
its model signal, scored alone at each weight and beside the dumped jump and level signals
with the dump's new-extreme rule, young rows and cooldown, and NAB's scorer, as
``nab_seasonal_input.py`` does. The network runs teacher-forced over the whole file in one
call (its GRU reads only x, so this equals the step-by-step loop up to float rounding; the
control arm is checked against ``nab_seasonal_input._model_signal`` on the first file).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from nab_seasonal_input import (  # noqa: E402
    WINDOW,
    _difference_inputs,
    _model_signal,
    dump_rows,
    score_combined,
)
from nab_signal_replay import (  # noqa: E402
    _VALUE,
    _XN,
    _summary,
    calibrate,
)

from streamvgan.engine import EngineConfig  # noqa: E402
from streamvgan.engine.stats import find_season, season_search_due  # noqa: E402
from streamvgan.eval import nab_scorer  # noqa: E402

#: what a network can read per step: the engine's normalised value; the seasonal difference
#: x_t - x_{t-P} (0 until a season is found); the first difference x_t - x_{t-1}; the
#: normalised value a season back (0 until a season is found)
INPUTS = ("value", "seasonal_difference", "first_difference", "seasonal_lag")
CONTROL = "shipped"


def _lags(values: np.ndarray, cfg: EngineConfig) -> np.ndarray:
    """The season in force at each row (0: none yet), searched for as in
    ``_difference_inputs``: a row uses the season found from the values before it."""
    lags = np.zeros(len(values), dtype=np.int64)
    period = 0
    for t in range(len(values)):
        lags[t] = period
        if season_search_due(np.array(t + 1), WINDOW):
            period = find_season(values[max(0, t + 1 - WINDOW) : t + 1], cfg.season_min_correlation)
    return lags


def channels(values: np.ndarray, xn: np.ndarray, inputs: tuple[str, ...]) -> np.ndarray:
    """The network's input (T, F) for raw ``values`` (T,) whose engine-normalised form is
    ``xn`` (T,): one column per name in ``inputs``."""
    cfg = EngineConfig()
    zeros = np.zeros(len(values))
    cols = []
    for name in inputs:
        if name == "value":
            cols.append(xn)
        elif name == "seasonal_difference":
            cols.append(_difference_inputs(values, zeros, cfg, seasonal=True, first=False))
        elif name == "first_difference":
            cols.append(_difference_inputs(values, zeros, cfg, seasonal=False, first=True))
        elif name == "seasonal_lag":
            lag = _lags(values, cfg)
            t = np.arange(len(values))
            back = np.where((lag > 0) & (t >= lag), t - lag, 0)
            cols.append(np.where((lag > 0) & (t >= lag), xn[back], 0.0))
        else:
            raise ValueError(f"unknown input {name!r}; choose from {INPUTS}")
    return np.stack(cols, axis=1).astype(np.float32)


# -- pretraining ----------------------------------------------------------------------------


def corpus_series(config, inputs: tuple[str, ...], progress: bool = True):
    """Each corpus series of ``config`` (a ``PretrainConfig``) as the network's input (n, F)
    and the engine's learning weights (n,). The engine replay is ``corpus_windows``' loop
    (a one-channel engine with a random, never-fitted network, as when the shipped weights
    were made), kept whole here because the other channels need the raw values in order."""
    from streamvgan.engine import Event, StreamEngine
    from streamvgan.nn.model import ModelConfig
    from streamvgan.pretrain.corpus import SyntheticCorpus

    engine_config = replace(
        EngineConfig(), model=ModelConfig(forecast_relative=True), init="random"
    )
    corpus = SyntheticCorpus(config.corpus, seed=config.seed)
    out = []
    done = 0
    while done < config.series:
        batch = corpus.take(min(config.chunk, config.series - done))
        cfg = replace(
            engine_config,
            replay_size=config.corpus.max_length,
            max_streams=len(batch),
            season_window=0,
        )
        engine = StreamEngine(cfg, seed=config.seed + done)
        for t in range(max(len(s.values) for s in batch)):
            engine.process(
                [
                    Event(f"s{i}", {"value": float(s.values[t])})
                    for i, s in enumerate(batch)
                    if t < len(s.values)
                ]
            )
        for i, s in enumerate(batch):
            n = len(s.values)
            slot = engine.state.streams[f"s{i}"]["value"]
            xn, w = engine.state.windows(np.array([slot]), np.array([n]), n)
            out.append((channels(s.values, xn[0, :, 0].astype(np.float64), inputs), w[0]))
        done += len(batch)
        if progress:
            print(f"  replayed {done}/{config.series} series", flush=True)
    return out


def draw_windows(series, length: int, per_series: int, seed: int):
    """``per_series`` windows of ``length`` steps from each series, ends uniform (as
    ``corpus_windows`` draws them)."""
    from streamvgan.engine.training import TrainingWindows

    rng = np.random.default_rng(seed)
    xs, ws = [], []
    for x, w in series:
        n = len(x)
        if n < length:
            continue
        ends = rng.integers(length, n + 1, size=per_series)
        idx = ends[:, None] + np.arange(-length, 0)[None, :]
        xs.append(x[idx])
        ws.append(w[idx].astype(np.float32))
    return TrainingWindows(np.concatenate(xs), np.concatenate(ws))


def pretrain_cmd(args: argparse.Namespace) -> None:
    import torch

    from streamvgan.engine.training import Trainer
    from streamvgan.nn.model import ModelConfig, RecurrentVAEGAN
    from streamvgan.nn.pretrained import save_pretrained
    from streamvgan.pretrain.train import (
        HOLDOUT_SEED_OFFSET,
        PretrainConfig,
        holdout_forecast_ratio,
    )

    torch.set_num_threads(1)
    inputs = tuple(args.inputs.split(","))
    model_config = ModelConfig(n_features=len(inputs), forecast_relative=True)
    config = PretrainConfig(
        series=args.series, steps=args.steps, seed=args.seed, model=model_config
    )
    default = EngineConfig()
    if args.window > config.corpus.max_length:
        raise ValueError(
            f"--window {args.window} is longer than every corpus series "
            f"(at most {config.corpus.max_length} steps)"
        )
    # the engine's validation: the window holds the burn-in, the horizon and the critic's
    # window, and a replay buffer holds a window
    engine = replace(default, window=args.window, replay_size=max(default.replay_size, args.window))
    start = time.perf_counter()
    series = corpus_series(config, inputs)
    windows = draw_windows(series, engine.window, config.windows_per_series, config.seed + 1)
    replay_s = time.perf_counter() - start
    active = {
        name: round(float((np.abs(windows.x[:, engine.burn_in :, j]) > 0).mean()), 3)
        for j, name in enumerate(inputs)
    }
    print(
        f"{len(windows)} windows of {engine.window} steps of {config.series} series in "
        f"{replay_s:.0f} s; share of window steps (after burn-in) where each channel is "
        f"non-zero: {active}",
        flush=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = RecurrentVAEGAN(model_config)
    trainer = Trainer(
        model,
        config.learning_rate,
        config.critic_learning_rate,
        config.batch_size,
        engine.burn_in,
        config.seed,
        torch.device("cpu"),
    )
    start = time.perf_counter()
    done, every, losses = 0, max(config.steps // 10, 1), {}
    while done < config.steps:
        part = min(every, config.steps - done)
        losses = trainer.train(windows, part) or {}
        done += part
        print(
            f"  step {done}/{config.steps} ({time.perf_counter() - start:.0f} s): "
            f"{ {k: round(v, 3) for k, v in losses.items()} }",
            flush=True,
        )
    train_s = time.perf_counter() - start
    held = replace(
        config, series=max(config.series // 10, 1), seed=config.seed + HOLDOUT_SEED_OFFSET
    )
    holdout = draw_windows(
        corpus_series(held, inputs, progress=False), engine.window, 24, held.seed + 1
    )
    ratio = holdout_forecast_ratio(trainer.model, holdout, engine.burn_in)
    print(f"held-out forecast MSE / last value's, by step (all channels): {ratio}")
    recipe = {
        "inputs": list(inputs),
        "window": engine.window,
        "burn_in": engine.burn_in,
        "pretrain_config": asdict(config),
        "command": " ".join(sys.argv),
        "replay_s": round(replay_s, 1),
        "train_s": round(train_s, 1),
        "n_windows": len(windows),
        "active_share": active,
        "losses": {k: round(v, 4) for k, v in losses.items()},
        "holdout_mse_ratio_to_last_by_step": ratio,
    }
    sha = save_pretrained(args.out, trainer.weights(), model_config, recipe)
    print(f"wrote {args.out} (sha256 {sha}); replay {replay_s:.0f} s, training {train_s:.0f} s")


# -- replay on NAB --------------------------------------------------------------------------


def _load(path: str):
    """(model, inputs) of a weights file; ``CONTROL`` is the shipped one, reading the value."""
    import torch

    from streamvgan.nn.model import RecurrentVAEGAN
    from streamvgan.nn.pretrained import load_pretrained, shipped_path

    torch.set_num_threads(1)
    config, weights, manifest = load_pretrained(shipped_path() if path == CONTROL else path)
    model = RecurrentVAEGAN(config)
    model.load_state_dict(weights)
    inputs = tuple(manifest.get("inputs", ["value"])) if path != CONTROL else ("value",)
    if len(inputs) != config.n_features:
        raise ValueError(f"{path}: inputs {inputs} but n_features={config.n_features}")
    return model.eval(), inputs


def model_signals(model, x: np.ndarray) -> np.ndarray:
    """Per row and channel (T, F), (surprise + reconstruction error) / 2 of ``model``
    reading ``x`` (T, F) from a zero state: the surprise the error of the forecast made the
    row before in units of its scale (mean 0 and scale 1 before the first row, as in the
    step loop), the reconstruction error that of the decoder at the posterior mean (what
    ``RecurrentVAEGAN.step`` returns, per channel)."""
    import torch

    with torch.inference_mode():
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]  # (1, T, F)
        hs, _ = model.rnn(xt)  # (1, T, Hd): h_1..h_T
        h_prev = torch.cat([hs.new_zeros(1, 1, hs.shape[-1]), hs[:, :-1]], dim=1)
        z_mu, _ = model.latent_posterior(h_prev, xt)
        rec_mean, rec_scale = model.decode(z_mu, h_prev)
        recon = ((xt - rec_mean).abs() / rec_scale)[0]  # (T, F)
        f_mean, f_scale = model.forecast(hs, xt)  # (1, T, H, F)
        fm, fs = f_mean[0, :-1, 0], f_scale[0, :-1, 0]  # for rows 1..T-1
        surprise = xt[0].abs()  # the first row: against a forecast of 0 with scale 1
        surprise[1:] = (xt[0, 1:] - fm).abs() / fs.clamp_min(model.config.min_scale)
    return ((surprise + recon) / 2).double().numpy()


def _arm_names(path: str, inputs: tuple[str, ...]) -> list[str]:
    label = CONTROL if path == CONTROL else Path(path).stem
    names = [f"{label} | {'+'.join(inputs)} | all channels"]
    if len(inputs) > 1:
        names += [f"{label} | {'+'.join(inputs)} | {name} only" for name in inputs]
    return names


def _file(dump: Path, rel: str, networks: list[str], check: bool):
    d = np.load(dump / (rel.replace("/", "__") + ".npy"))
    xn, v = d[:, _XN], d[:, _VALUE]
    arms: dict[str, np.ndarray] = {}
    active = {}
    for path in networks:
        model, inputs = _load(path)
        x = channels(v, xn, inputs)
        per_channel = model_signals(model, x)
        names = _arm_names(path, inputs)
        arms[names[0]] = calibrate(per_channel.sum(1), True)
        for j, name in enumerate(names[1:]):
            arms[name] = calibrate(per_channel[:, j], True)
        if path == CONTROL and check:
            loop = _model_signal(model, xn)
            gap = float(np.max(np.abs(loop - per_channel[:, 0])))
            print(f"  {rel}: control teacher-forced vs step loop, max |diff| {gap:.2e}")
        for j, name in enumerate(inputs):
            active[name] = int((np.abs(x[:, j]) > 0).sum())
    return rel, arms, active, len(v)


def replay_cmd(args: argparse.Namespace) -> None:
    weights = [float(w) for w in args.weights.split(",")]
    networks = [CONTROL, *args.network]
    params = json.loads((args.dump / "params.json").read_text())
    cfg = EngineConfig(alert_cooldown=params.get("alert_cooldown", 0))
    windows = nab_scorer.load_windows(args.data / "labels/combined_windows.json")
    profiles = nab_scorer.load_profiles(args.data / "config/profiles.json")
    files = sorted(windows)
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(
            pool.map(
                _file,
                [args.dump] * len(files),
                files,
                [networks] * len(files),
                [i == 0 for i in range(len(files))],
            )
        )
    arms = {rel: a for rel, a, _, _ in results}
    rows_total = sum(n for *_, n in results)
    active: dict[str, int] = {}
    for *_, act, _ in results:
        for k, n in act.items():
            active[k] = active.get(k, 0) + n
    print(
        f"networks over {len(files)} files ({rows_total} rows) in "
        f"{time.perf_counter() - start:.0f} s; rows where each input is non-zero: "
        f"{ {k: round(n / rows_total, 3) for k, n in active.items()} }",
        flush=True,
    )
    per_file = dump_rows(args.data, args.dump, files)

    def corpus(combine) -> str:
        result = score_combined(per_file, arms, combine, cfg, windows, profiles)
        s = _summary(result)
        art = result.per_category.get("artificialWithAnomaly", {}).get("standard", np.nan)
        known = np.nan if s["realKnownCause"] is None else s["realKnownCause"]
        return (
            f"{s['standard']:.2f} / {s['reward_low_FP_rate']:.2f} / {s['reward_low_FN_rate']:.2f}"
            f" | {art:.2f} / {known:.2f}"
        )

    print(
        "| network | reads | signal | weight | alone: standard / low FP / low FN "
        "| alone: artificialWithAnomaly / realKnownCause | beside jump, level: standard / "
        "low FP / low FN | beside: artificialWithAnomaly / realKnownCause |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for arm in arms[files[0]]:
        for w in weights:
            alone = corpus(lambda a, jl, arm=arm, w=w: w * a[arm])
            beside = corpus(lambda a, jl, arm=arm, w=w: np.maximum(w * a[arm], jl))
            print(f"| {arm} | {w} | {alone} | {beside} |", flush=True)
    print(f"| (none: jump and level) | | | | | | {corpus(lambda a, jl: jl)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="pretrain a network reading several input channels")
    p.add_argument("--out", type=Path, required=True, help="weights file, e.g. /work/out/s2.pt")
    p.add_argument("--inputs", default="value,seasonal_difference", help=f"from {INPUTS}")
    p.add_argument("--series", type=int, default=2000)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--window",
        type=int,
        default=EngineConfig().window,
        help="length of the training windows (EngineConfig.window)",
    )
    p.set_defaults(func=pretrain_cmd)
    r = sub.add_parser("replay", help="replay networks on NAB beside the shipped one")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--dump", type=Path, required=True)
    r.add_argument("--network", action="append", default=[], help="a weights file (repeatable)")
    r.add_argument("--jobs", type=int, default=1)
    r.add_argument("--weights", default="0.6,1.0")
    r.set_defaults(func=replay_cmd)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
