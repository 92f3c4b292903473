"""Rolling behavioural features: declarative spec, event time, batched Numba kernels.

Modules: :mod:`~intentflow.features.spec` (the ``[features]`` spec),
:mod:`~intentflow.features.state` (:class:`FeatureState`, one per shard),
:mod:`~intentflow.features.program` (spec -> kernel layout),
:mod:`~intentflow.features.encode` (events -> kernel input),
:mod:`~intentflow.features.kernels` (the compiled kernels). See docs/features.md.
"""
