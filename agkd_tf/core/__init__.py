"""The bottom layer: maths and errors that every layer above it shares.

- `errors`: `UserError` and the binaries' one-line failure (`run_main`).
- `losses`: label-smoothed CE, KL, MART's boosted CE, the angular triplet and the attention
  distillation distances used by the attacks and the methods.
- `ot`: the entropic optimal-transport solver of Feature Scattering.

Nothing here imports another part of the package: data, models, attacks and methods sit above it.
"""
