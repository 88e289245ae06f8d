"""Prints the figures behind tests/engine/test_behaviour.py: forecast MAE against last value,
band coverage, injected-anomaly scores against the normal 99th percentile, continuation stats.

Usage: python benchmarks/core_figures.py
"""
from pathlib import Path
import sys
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "engine"))
import torch; torch.set_num_threads(1)
import numpy as np
import test_behaviour as tb
engine, series, scores, forecasts = tb.run.__wrapped__()
y = series["clean"]
me, ne, cov = [], [], []
for t, fc in forecasts:
    truth = y[t+1:t+13]
    me.append(np.abs(fc.mean[:,0]-truth).mean()); ne.append(np.abs(y[t]-truth).mean())
    cov.append(((fc.quantiles[0.1][:,0] <= truth) & (truth <= fc.quantiles[0.9][:,0])).mean())
print(f"12-step MAE model {np.mean(me):.3f} last-value {np.mean(ne):.3f} ratio {np.mean(me)/np.mean(ne):.3f}; 10-90 coverage {np.mean(cov):.3f}")
sp = scores["spike"]; mask = np.ones(len(sp)-1000, bool)
for s in tb.SPIKES: mask[s-1000:s-1000+8] = False
print("spike p99 normal", np.percentile(sp[1000:][mask], 99).round(4), "spikes", sp[tb.SPIKES].round(4))
print("shift p99", np.percentile(scores["shift"][1000:tb.SHIFT_AT], 99).round(4), "at shift", scores["shift"][tb.SHIFT_AT].round(4))
print("flat p99", np.percentile(scores["flat"][1000:tb.FLAT.start], 99).round(4), "max in flat", scores["flat"][tb.FLAT].max().round(4))
hb = y[tb.N:tb.N+tb.PERIOD]; s = engine.generate("clean", horizon=tb.PERIOD, n_samples=64)[:,:,0]
print(f"continuations mean {s.mean():.3f} vs {hb.mean():.3f}; sd {s.std():.3f} vs {hb.std():.3f}; lag1 {np.mean([tb._lag1(p) for p in s]):.3f} vs {tb._lag1(hb):.3f}")
