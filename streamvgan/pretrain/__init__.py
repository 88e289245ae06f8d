"""Pretraining one network for every stream on synthetic series (see :mod:`.corpus`)."""
