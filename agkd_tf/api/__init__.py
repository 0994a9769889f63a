"""The Python API: the package's defences and evaluator on a user's own Keras model.

- `wrap(model)`: a Keras model of the user's as the network a defence trains (logits, embedding,
  feature map), sharing its weights.
- `defend(network, method, ...)`: the defence as a `keras.Model` to `compile` and `fit`.
- `evaluate_model(model, images, labels, ...)`: the evaluator's report with its checks.

`agkd_tf.wrap`, `agkd_tf.defend` and `agkd_tf.evaluate_model` are these, imported on first use.
"""

from agkd_tf.api.defence import defend
from agkd_tf.api.evaluation import evaluate_model
from agkd_tf.api.evaluation import Report
from agkd_tf.api.network import wrap

__all__ = ['Report', 'defend', 'evaluate_model', 'wrap']
