"""Evaluation that checks itself: the attack runner, the evaluator, masking diagnostics, reports.

- `runner`: attacks batch by batch on fixed images, each batch checked against the threat model
  (`AttackRunner`, `IntegrityError`); a training run's held-out accuracy counts through it too.
- `loading`: a training run of ours or any SavedModel returning logits, as a `LoadedModel`.
- `evaluator`: `evaluate(EvalConfig)` for `python -m agkd_tf.evaluate`, and `assess`, which the
  Python API's `evaluate_model` shares: the attacks, AutoAttack, the masking checks, eval.json.
- `masking`: the gradient-masking diagnostics and the eps-sweep plot.
- `report`: Table 1's row layout, eval.md and TensorBoard scalars.
- `analysis`: k-NN and t-SNE of the embeddings, attention figures (the paper's supplementary).
"""

from agkd_tf.evaluation.evaluator import assess
from agkd_tf.evaluation.evaluator import check_config
from agkd_tf.evaluation.evaluator import EvalConfig
from agkd_tf.evaluation.evaluator import evaluate
from agkd_tf.evaluation.loading import check_logits
from agkd_tf.evaluation.loading import load_model
from agkd_tf.evaluation.runner import AttackRunner
from agkd_tf.evaluation.runner import IntegrityError
from agkd_tf.evaluation.runner import LoadedModel
