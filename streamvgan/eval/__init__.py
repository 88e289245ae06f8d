"""Evaluation against public benchmarks: the NAB runner and scorer, prequential forecast
metrics, TimeGAN's scores for generated continuations, ablations and plots.

Entry points: ``streamvgan evaluate nab | forecast | generation | all``
(:mod:`streamvgan.eval.commands`)."""
