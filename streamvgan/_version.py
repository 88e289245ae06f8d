"""The package version, in one place: setuptools reads it for the wheel's metadata
(``[tool.setuptools.dynamic]`` in pyproject.toml) and ``streamvgan --version`` prints it.
Kept free of imports so that reading it costs nothing."""

__version__ = "0.1.0"
