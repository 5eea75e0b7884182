"""Applications built on both ends: the ``fedsqueeze`` command, the local simulation, the load generator, plots.

They sit above ``server`` and ``client`` and may import either; nothing in
``common``, ``server`` or ``client`` imports them.
"""
